"""Typed settings: bad values are named without a traceback, secrets never shown, the README's table is the
settings model's, and the command line's version, log level and JSON logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from maskwatch.config import (
    SECTIONS,
    ConfigError,
    FlowSettings,
    Settings,
    effective,
    env_name,
    variables_markdown,
)

pytestmark = pytest.mark.without_models

REPO_ROOT = Path(__file__).resolve().parents[1]


def maskwatch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MASKWATCH_")}
    return subprocess.run([sys.executable, "-m", "maskwatch.cli", *args], env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("MASKWATCH_FLOW_BATCH_MAX", "lots", "valid integer"),
    ("MASKWATCH_DEVICE", "gpu", "'auto', 'cpu', 'cuda' or 'tensorrt'"),
    ("MASKWATCH_FLOW_RULE_SCOPES", "camera,floor", "'camera', 'zone' or 'site'"),
    ("MASKWATCH_TTL_DAYS_FRAMES", "0", "greater than or equal to 1"),
    ("MASKWATCH_METRICS_PORT", "99999", "less than or equal to 65535"),
    ("MASKWATCH_DASHBOARD_SESSION_MINUTES", "nan", "less than or equal to"),
    ("MASKWATCH_FLOW_SNAPSHOTS", "maybe", "valid boolean"),
])
def test_a_bad_value_names_the_variable_what_it_got_and_what_it_expects(variable: str, value: str,
                                                                        says: str) -> None:
    # Any command: every setting is checked before the command runs.
    done = maskwatch("cameras", "list", env={variable: value})
    assert done.returncode == 2
    assert f"{variable}=" in done.stderr and says in done.stderr
    assert repr(value.split(",")[-1]) in done.stderr
    assert "Traceback" not in done.stderr and not done.stdout


def test_rules_across_variables_name_both() -> None:
    done = maskwatch("config", "show", env={"MASKWATCH_FLOW_RULE_WINDOW_S": "65"})
    assert done.returncode == 2
    assert "MASKWATCH_FLOW_RULE_WINDOW_S=65 must be a multiple of MASKWATCH_FLOW_BUCKET_S=10" in done.stderr


def test_an_unreadable_secret_file_is_named_but_no_secret_value_ever_is(tmp_path: Path) -> None:
    done = maskwatch("config", "show", env={"MASKWATCH_STORE_PASSWORD_FILE": str(tmp_path / "missing")})
    assert done.returncode == 2 and "MASKWATCH_STORE_PASSWORD_FILE=" in done.stderr
    with pytest.raises(ConfigError, match=r"MASKWATCH_TICK_PARTITIONS=0: ") as info:
        Settings(tick_partitions=0, store_password=SecretStr("hunter2"))
    assert "hunter2" not in str(info.value)


def test_config_show_prints_effective_values_with_secrets_masked(tmp_path: Path) -> None:
    secret_file = tmp_path / "s3_secret"
    secret_file.write_text("file-secret-42\n")
    done = maskwatch("config", "show", env={
        "MASKWATCH_STORE_PASSWORD": "hunter2", "MASKWATCH_S3_SECRET_KEY_FILE": str(secret_file),
        "MASKWATCH_KAFKA__SASL__PASSWORD": "kafka-pass", "MASKWATCH_KAFKA__SECURITY__PROTOCOL": "SASL_SSL",
        "MASKWATCH_FLOW_BATCH_MAX": "32", "MASKWATCH_KAFKA_SASL_PASSWORD": "sasl-pass",
    })
    assert done.returncode == 0, done.stderr
    out = done.stdout
    for secret in ("hunter2", "file-secret-42", "kafka-pass", "sasl-pass"):
        assert secret not in out
    lines = {line.split("=", 1)[0]: line for line in out.splitlines()}
    assert lines["MASKWATCH_STORE_PASSWORD"].startswith("MASKWATCH_STORE_PASSWORD=***")
    assert lines["MASKWATCH_S3_SECRET_KEY"].startswith("MASKWATCH_S3_SECRET_KEY=***")
    assert lines["MASKWATCH_S3_SECRET_KEY"].endswith("# file")
    assert lines["MASKWATCH_KAFKA__SASL__PASSWORD"].startswith("MASKWATCH_KAFKA__SASL__PASSWORD=***")
    assert "MASKWATCH_KAFKA__SECURITY__PROTOCOL=SASL_SSL" in out
    assert lines["MASKWATCH_FLOW_BATCH_MAX"].startswith("MASKWATCH_FLOW_BATCH_MAX=32 ")
    assert lines["MASKWATCH_FLOW_BATCH_MAX"].endswith("# env")
    assert lines["MASKWATCH_FLOW_BATCH_TIMEOUT_S"].endswith("# default")
    as_json = json.loads(maskwatch("config", "show", "--json", env={"MASKWATCH_STORE_PASSWORD": "x1"}).stdout)
    assert as_json["MASKWATCH_STORE_PASSWORD"] == "***"
    assert as_json["MASKWATCH_TOPIC_TICKS"] == "maskwatch.ticks"
    # Every variable of every section is listed.
    assert {env_name(s, f) for s in SECTIONS for f in s.model_fields} <= set(as_json)


def test_secrets_come_from_their_file_twin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-a-file\n")
    monkeypatch.delenv("MASKWATCH_STORE_PASSWORD", raising=False)
    monkeypatch.setenv("MASKWATCH_STORE_PASSWORD_FILE", str(tmp_path / "pw"))
    settings = Settings()
    assert settings.store_password_value() == "from-a-file"
    assert "from-a-file" not in repr(settings) and "from-a-file" not in str(dict(effective_rows()))


def effective_rows() -> list[tuple[str, str]]:
    return [(name, value) for name, value, _ in effective()]


def test_flow_settings_become_the_options_build_flow_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    from maskwatch.flows.options import FlowOptions

    monkeypatch.setenv("MASKWATCH_FLOW_FETCH_DEADLINE_S", "2.5")
    monkeypatch.setenv("MASKWATCH_FLOW_RULE_SCOPES", "camera, zone")
    opts = FlowOptions.from_settings(FlowSettings(), workers=2, cluster_workers=6)
    assert opts.fetch.deadline_s == 2.5 and opts.rule_scopes == ("camera", "zone")
    assert (opts.workers, opts.shards) == (2, 6)
    monkeypatch.setenv("MASKWATCH_FLOW_SHARDS", "3")
    assert FlowOptions.from_settings(FlowSettings(), cluster_workers=6).shards == 3


def test_the_readme_lists_every_variable_as_the_settings_model_documents_it() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert variables_markdown(compact=True) in readme, \
        "README configuration is stale: paste `maskwatch config vars --compact`"
    reference = (REPO_ROOT / "docs" / "configuration.md").read_text()
    assert variables_markdown() in reference, "docs/configuration.md is stale: paste `maskwatch config vars`"
    for section in SECTIONS:  # every variable, with its default, in both
        for field in section.model_fields:
            name = env_name(section, field)
            assert f"`{name}" in readme and f"| `{name}`" in reference, name


def test_version_and_log_level_on_the_command_line() -> None:
    from maskwatch import __version__

    done = maskwatch("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"maskwatch, version {__version__}"
    bad = maskwatch("--log-level", "loud", "config", "show")
    assert bad.returncode == 2 and "--log-level" in bad.stderr and "'loud' is not one of" in bad.stderr
    env_bad = maskwatch("config", "show", env={"MASKWATCH_LOG_LEVEL": "loud"})
    assert env_bad.returncode == 2 and "MASKWATCH_LOG_LEVEL='LOUD'" in env_bad.stderr


def test_json_logs_are_one_redacted_object_per_line() -> None:
    code = (
        "import logging\n"
        "from maskwatch.logs import setup_logging\n"
        "setup_logging('INFO', 'json')\n"
        "log = logging.getLogger('maskwatch.test')\n"
        "log.info('camera rtsp://admin:hunter2@10.0.0.5/live is up')\n"
        "try:\n"
        "    raise RuntimeError('fetch http://u:s3cret@cam/x?token=abc failed')\n"
        "except RuntimeError:\n"
        "    log.exception('boom')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["level"] for r in records] == ["INFO", "ERROR"]
    assert records[0]["logger"] == "maskwatch.test" and records[0]["message"].startswith("camera rtsp://***@")
    assert "Traceback" in records[1]["exception"]
    assert "hunter2" not in done.stderr and "s3cret" not in done.stderr and "abc" not in done.stderr
    assert {"time", "process", "thread"} <= set(records[0])
