"""The dashboard's read-mostly store identity (maskwatch.store.identities), against the real embedded store
server: it reads what the dashboard shows, writes acknowledgements and camera/site edits, and can neither
change the schema nor read a camera's source. The ClickHouse grants that give a real server the same
rules are parsed by the real ClickHouse parser (chdb)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import clickhouse_connect
import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.exceptions import DatabaseError
from pydantic import SecretStr

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.cli import main
from maskwatch.config import Settings
from maskwatch.store.identities import (
    DASHBOARD_CAMERA_COLUMNS,
    DASHBOARD_READS,
    DASHBOARD_USER,
    DASHBOARD_WRITES,
    NOT_READ,
    grant_statements,
)

from tests.flowkit import dashboard_identity

pytestmark = pytest.mark.without_models

SECRET = "rtsp://guard:topsecret-42@10.9.9.9:554/live"


@pytest.fixture
def admin(monkeypatch: pytest.MonkeyPatch, db: str, tmp_path: Path) -> Settings:
    monkeypatch.setenv("MASKWATCH_HOME", str(tmp_path / "home"))
    settings = Settings(store_url=db)
    store.migrate(settings)
    return settings


@pytest.fixture
def dashboard(admin: Settings) -> Settings:
    env = dashboard_identity(admin.store_url)
    return Settings(store_url=env["MASKWATCH_STORE_URL"],
                    store_password=SecretStr(Path(env["MASKWATCH_STORE_PASSWORD_FILE"]).read_text().strip()))


def as_dashboard(settings: Settings, **kwargs: object) -> clickhouse_connect.driver.Client:
    from tests.test_store_server import connect

    url = settings.store_url.replace(f"{DASHBOARD_USER}@", "")
    return connect(url, username=DASHBOARD_USER, password=settings.store_password_value(), **kwargs)


def test_every_table_is_either_granted_to_the_dashboard_or_withheld_on_purpose(admin: Settings) -> None:
    names = {r["name"] for r in store.query_rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase()", settings=admin)}
    placed = set(DASHBOARD_READS) | set(NOT_READ) | {"cameras"}
    assert names - placed == set(), "decide whether the dashboard may read these tables"
    assert set(DASHBOARD_WRITES) <= names and not set(DASHBOARD_READS) & set(NOT_READ)
    columns = {r["name"] for r in store.query_rows(
        "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'cameras'",
        settings=admin)}
    assert columns - set(DASHBOARD_CAMERA_COLUMNS) == {"source_url"}


def test_the_dashboard_user_reads_and_edits_but_cannot_drop_or_read_sources(
    admin: Settings, dashboard: Settings
) -> None:
    registry.put_camera(registry.parse_camera(
        {"id": "gate", "source_url": SECRET, "allow_private_network": True}), admin)
    client = as_dashboard(dashboard)
    assert client.command("SELECT count() FROM frames") == 0
    # The registry without sources: the masked URL stands in for the source.
    seen = registry.get_camera("gate", dashboard, sources=False)
    assert seen is not None and seen.source_url == "rtsp://***@10.9.9.9:554/live"
    # An edit made with it keeps the stored source; a typed one replaces it.
    registry.put_camera(seen.model_copy(update={"name": "Main gate"}), dashboard, source=False)
    kept = registry.get_camera("gate", admin)
    assert kept is not None and kept.name == "Main gate" and kept.source_url == SECRET
    registry.put_camera(seen.model_copy(update={"source_url": "https://10.9.9.10/snap.jpg"}), dashboard)
    replaced = registry.get_camera("gate", admin)
    assert replaced is not None and replaced.source_url == "https://10.9.9.10/snap.jpg"
    client.insert("alert_acks", [["a1", True, "ana", datetime.now(UTC), "seen"]],
                  column_names=["alert_id", "acknowledged", "acknowledged_by", "acknowledged_at", "note"])
    assert store.query_rows("SELECT acknowledged_by FROM alert_acks", settings=admin) == [
        {"acknowledged_by": "ana"}]

    refused = [
        "SELECT source_url FROM camera_sources",
        "SELECT * FROM `camera_sources`",
        f"SELECT * FROM {store.database_name(admin)}.camera_sources",
        "SELECT source_url FROM cameras",
        r"SELECT * FROM `camera\x5fsources`",  # the name ClickHouse reads, escapes decoded
        r"SELECT `source\x5furl` FROM cameras",
        "SELECT * FROM mergeTreeIndex(currentDatabase(), 'camera_sources', with_marks = true)",
        "DROP TABLE frames",
        "TRUNCATE TABLE alerts",
        "ALTER TABLE frames DELETE WHERE 1",
        "CREATE TABLE x (a UInt8) ENGINE = Memory",
        "OPTIMIZE TABLE cameras FINAL",
        "RENAME TABLE frames TO f2",
        "INSERT INTO frames (camera_id) VALUES ('x')",
        "INSERT INTO alert_acks (alert_id, note) SELECT id, source_url FROM camera_sources",
        "INSERT INTO alert_acks (alert_id, note) VALUES ((SELECT any(source_url) FROM camera_sources), '')",
        "INSERT INTO FUNCTION null('a String') VALUES ('x')",
    ]
    for sql in refused:
        with pytest.raises(DatabaseError, match=r"ACCESS_DENIED|497"):
            client.command(sql)
    assert client.command("EXISTS TABLE frames") == 1  # still there
    with pytest.raises(DatabaseError, match="cannot read camera_sources"):
        registry.get_camera("gate", dashboard)  # the registry with sources is not for this user
    # Whatever a read sets, it cannot write.
    with pytest.raises(DatabaseError):
        client.command("SELECT 1 SETTINGS readonly = 0")


def test_the_dashboard_user_needs_its_own_password(admin: Settings, dashboard: Settings) -> None:
    with pytest.raises(DatabaseError, match=r"516|AUTHENTICATION"):
        as_dashboard(admin.replace(store_url=dashboard.store_url))  # the store's own password
    with pytest.raises(DatabaseError, match=r"516|AUTHENTICATION"):
        as_dashboard(dashboard.replace(store_password="wrong"))
    from tests.test_store_server import connect

    with pytest.raises(DatabaseError, match=r"516|AUTHENTICATION"):  # its password is not the store's own
        connect(admin.store_url, username="default", password=dashboard.store_password_value())


def test_grants_for_a_clickhouse_server_parse_and_never_print_the_password(admin: Settings) -> None:
    statements = grant_statements("maskwatch", "pa'ss\\word")
    script = ("import chdb, sys\n"
              "for s in sys.stdin.read().split('\\x00'):\n"
              "    print(chdb.query('EXPLAIN AST ' + s, 'TSV').bytes().decode().splitlines()[0])\n")
    parsed = subprocess.run([sys.executable, "-c", script], input="\x00".join(statements), text=True,
                            capture_output=True, timeout=120, check=True).stdout.split("\n")
    assert parsed[:3] == ["CreateUserQuery (children 1)"] * 2 + ["GrantQuery"]  # (ALTER USER parses so)
    assert all(line == "GrantQuery" for line in parsed[2:len(statements)])
    assert len([s for s in statements if s.startswith("GRANT SELECT ON")]) == len(DASHBOARD_READS)
    assert not any("camera_sources TO" in s and "SELECT" in s for s in statements)

    printed = CliRunner().invoke(main, ["store", "grant-dashboard", "--print"],
                                 env={"MASKWATCH_STORE_URL": admin.store_url})
    assert printed.exit_code == 0 and "GRANT INSERT ON `" in printed.output
    assert os.environ["MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE"]
    password = Path(os.environ["MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE"]).read_text().strip()
    assert password not in printed.output and "BY '***'" in printed.output
    # The embedded store has no users to create: a clear refusal, no traceback, no password.
    applied = CliRunner().invoke(main, ["store", "grant-dashboard"],
                                 env={"MASKWATCH_STORE_URL": admin.store_url})
    assert applied.exit_code == 1 and "cannot set up maskwatch_dashboard" in applied.output
    assert password not in applied.output and "Traceback" not in applied.output


def test_migration_moves_existing_sources_out_of_the_cameras_table(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MASKWATCH_HOME", str(tmp_path / "home"))
    settings = Settings(store_url=db)
    before = tmp_path / "sql"
    before.mkdir()
    for version, path in store.migrations():
        if version < "010":
            (before / path.name).write_text(path.read_text())
    store.migrate(settings, before)
    store.client(settings).insert("cameras", [["old", "", "", "", SECRET, "rtsp://***@10.9.9.9:554/live",
                                              5.0, True, "{}", datetime.now(UTC), 0]],
                                  column_names=["id", "name", "site", "zone", "source_url", "display_url",
                                                "interval_s", "enabled", "rules", "updated_at", "deleted"])
    assert store.migrate(settings) == [v for v, _ in store.migrations() if v >= "010"]
    assert store.query_rows("SELECT source_url FROM cameras", settings=settings) == [{"source_url": ""}]
    assert store.query_rows("SELECT id, source_url FROM camera_sources", settings=settings) == [
        {"id": "old", "source_url": SECRET}]
    camera = registry.get_camera("old", settings)
    assert camera is not None and camera.source_url == SECRET
