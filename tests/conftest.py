"""Shared fixtures: a real Tansu broker and a real embedded store server per test session.

Everything binds 127.0.0.1 on ports picked at run time and lives in pytest tmp dirs, because other test
runs share this machine.

- ``broker`` (session): ``.bootstrap`` = "127.0.0.1:PORT" of a running Tansu broker (memory storage).
- ``store_server`` (session): ``.url`` = "http://127.0.0.1:PORT" of a running ``maskwatch store serve``.
- ``store_url`` (function): ``{store_server.url}/?database=t_<uuid hex>``, a fresh database name per test
  (not created; the store layer's migrate() creates it).
- ``mw_env`` (function): MASKWATCH_* env for this test (home, broker, store, unique topic names) and the
  resulting ``Settings()``.
- ``dataset_dir`` (session): the Kaggle face-mask dataset next to the repo.
- ``hanging_camera`` (function): URL of a local HTTP camera that accepts the connection and never answers.
- ``recorder`` (function): a local ``tests.flowkit.RecordingServer``; ``.requests`` lists the paths it got.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from maskwatch.config import Settings
from maskwatch.devservices.broker import Broker
from maskwatch.devservices.store import StoreService
from maskwatch.ports import free_port

if TYPE_CHECKING:
    from tests.flowkit import DemoEnv, RecordingServer

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_DIR = (REPO_ROOT / ".." / "shared" / "datasets" / "kaggle-face-mask").resolve()


def _start_with_retry(service: Broker | StoreService, attempts: int = 3) -> None:
    """Start on a fresh free port; retry when another process grabbed the port in between."""
    from maskwatch.devservices.process import ServiceError

    for attempt in range(attempts):
        try:
            service.start()
            return
        except ServiceError:
            if attempt == attempts - 1:
                raise
            service.port = free_port()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    service = Broker(home=tmp_path_factory.mktemp("broker-home"), port=free_port(), attached=True)
    _start_with_retry(service)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session", autouse=True)
def store_credential(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One store password for the session, and one for its dashboard user, as `maskwatch services up`
    makes them: every store server the tests start and every process they start read them through
    MASKWATCH_STORE_PASSWORD_FILE and MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE."""
    folder = tmp_path_factory.mktemp("secrets")
    paths = {"MASKWATCH_STORE_PASSWORD_FILE": folder / "store_password",
             "MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE": folder / "store_dashboard_password"}
    previous = {name: os.environ.get(name) for name in paths}
    for name, path in paths.items():
        path.write_text(secrets.token_urlsafe(24) + "\n")
        path.chmod(0o600)
        os.environ[name] = str(path)
    try:
        yield paths["MASKWATCH_STORE_PASSWORD_FILE"]
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def store_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreService]:
    home = tmp_path_factory.mktemp("store-home")
    service = StoreService(home=home, port=free_port(), data_dir=home / "chdb", attached=True)
    _start_with_retry(service)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def store_url(store_server: StoreService) -> str:
    return f"{store_server.url}/?database=t_{uuid.uuid4().hex}"


@pytest.fixture
def db(store_server: StoreService, store_url: str) -> Iterator[str]:
    """A fresh database on the shared server, created here and dropped afterwards."""
    from urllib.parse import parse_qs, urlsplit

    from tests.test_store_server import connect

    name = parse_qs(urlsplit(store_url).query)["database"][0]
    admin = connect(store_server.url)
    admin.command(f"CREATE DATABASE {name}")
    yield store_url
    admin.command(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def mw_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, broker: Broker, store_url: str) -> Settings:
    suffix = uuid.uuid4().hex[:12]
    monkeypatch.setenv("MASKWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MASKWATCH_KAFKA_BOOTSTRAP", broker.bootstrap)
    monkeypatch.setenv("MASKWATCH_STORE_URL", store_url)
    monkeypatch.setenv("MASKWATCH_TOPIC_TICKS", f"maskwatch.ticks.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_ALERTS", f"maskwatch.alerts.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_DEAD_LETTER", f"maskwatch.dead-letter.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_CAMERA_HEALTH", f"maskwatch.camera-health.{suffix}")
    return Settings()


@pytest.fixture(scope="session")
def dataset_dir() -> Path:
    if not (DATASET_DIR / "images").is_dir():
        pytest.fail(
            f"face-mask dataset not found at {DATASET_DIR} (expected images/ and annotations/ there; "
            "it lives in ../shared/datasets/kaggle-face-mask relative to the repo root and is never copied "
            "into the repo)",
            pytrace=False,
        )
    return DATASET_DIR


@pytest.fixture
def hanging_camera() -> Iterator[str]:
    from tests.flowkit import hanging_server

    with hanging_server() as url:
        yield url


@pytest.fixture
def recorder() -> Iterator[RecordingServer]:
    from tests.flowkit import recording_server

    with recording_server() as server:
        yield server


@pytest.fixture
def demo_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> DemoEnv:
    """Environment for a private `maskwatch up`: its own home, free ports and topic names."""
    broker_port, store_port = free_port(), free_port()
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("MASKWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MASKWATCH_KAFKA_BOOTSTRAP", f"127.0.0.1:{broker_port}")
    monkeypatch.setenv("MASKWATCH_STORE_URL", f"http://127.0.0.1:{store_port}/?database=maskwatch")
    monkeypatch.setenv("MASKWATCH_TOPIC_TICKS", f"demo.ticks.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_ALERTS", f"demo.alerts.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_DEAD_LETTER", f"demo.dead.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_CAMERA_HEALTH", f"demo.health.{suffix}")
    monkeypatch.setenv("MASKWATCH_DASHBOARD_PORT", str(free_port()))
    # As a new user has it: no store password configured; `maskwatch up` makes one under the home.
    monkeypatch.delenv("MASKWATCH_STORE_PASSWORD_FILE", raising=False)
    monkeypatch.delenv("MASKWATCH_STORE_PASSWORD", raising=False)
    monkeypatch.delenv("MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE", raising=False)
    from tests.flowkit import DemoEnv

    return DemoEnv(broker_port, store_port)
