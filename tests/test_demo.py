"""`maskwatch up` end to end: services, schema, sample cameras and ticker, then `maskwatch down`."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

from maskwatch import kafka
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.devservices.process import pid_alive
from maskwatch.schemas.events import Tick
from maskwatch.schemas.parse import parse_event

from tests.flowkit import DemoEnv, run_maskwatch

SAMPLE_IDS = {"hq-lobby", "hq-cafeteria", "depot-gate"}


def _ticks(settings: Settings, want: set[str], timeout: float = 40) -> dict[str, Tick]:
    """The first tick seen per camera, until every camera in ``want`` has one (or the timeout)."""
    consumer = kafka.consumer(f"demo-{uuid.uuid4().hex[:8]}", settings)
    consumer.subscribe([settings.topic_ticks])
    seen: dict[str, Tick] = {}
    deadline = time.monotonic() + timeout
    try:
        while not want <= set(seen) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            tick = parse_event(Tick, msg.value() or b"")
            assert (msg.key() or b"").decode() == tick.camera_id
            seen.setdefault(tick.camera_id, tick)
    finally:
        consumer.close()
    return seen


def test_up_then_down(demo_env: DemoEnv, dataset_dir: Path) -> None:
    broker_port, store_port = demo_env.broker_port, demo_env.store_port
    home = demo_env.settings.home
    try:
        up = run_maskwatch("up", timeout=180)
        assert up.returncode == 0, up.stdout + up.stderr
        credential = home / "secrets" / "store_password"
        assert credential.stat().st_mode & 0o777 == 0o600 and len(credential.read_text().strip()) >= 32
        settings = demo_env.settings
        assert settings.store_password_value() == credential.read_text().strip()
        assert f"127.0.0.1:{broker_port}" in up.stdout and f"127.0.0.1:{store_port}" in up.stdout
        assert "3 added" in up.stdout and "ticker: started" in up.stdout
        assert "maskwatch ticker tail" in up.stdout

        cameras = {camera.id: camera for camera in registry.list_cameras(settings)}
        assert set(cameras) == SAMPLE_IDS
        images = dataset_dir / "images"
        assert all(Path(c.source_url.removeprefix("file://")) == images for c in cameras.values())

        ticks = _ticks(settings, SAMPLE_IDS)
        assert set(ticks) == SAMPLE_IDS

        ticker_pid = int((home / "run" / "ticker.pid").read_text())
        assert pid_alive(ticker_pid)
        # The dashboard runs as the store's read-mostly user, with a password of its own.
        dashboard_pid = int((home / "run" / "dashboard.pid").read_text())
        environ = dict(line.split("=", 1) for line in Path(f"/proc/{dashboard_pid}/environ").read_text()
                       .split("\0") if "=" in line)
        assert environ["MASKWATCH_STORE_URL"].startswith("http://maskwatch_dashboard@127.0.0.1:")
        dashboard_credential = Path(environ["MASKWATCH_STORE_PASSWORD_FILE"])
        assert dashboard_credential == home / "secrets" / "store_dashboard_password"
        assert dashboard_credential.stat().st_mode & 0o777 == 0o600
        assert dashboard_credential.read_text() != credential.read_text()
        dashboard = settings.replace(store_url=environ["MASKWATCH_STORE_URL"],
                                     store_password=dashboard_credential.read_text().strip())
        assert {c.id for c in registry.list_cameras(dashboard, sources=False)} == SAMPLE_IDS
        again = run_maskwatch("up", timeout=180)  # idempotent: nothing started twice, cameras unchanged
        assert again.returncode == 0, again.stdout + again.stderr
        assert "ticker: already running" in again.stdout and "3 unchanged" in again.stdout

        tail = run_maskwatch("ticker", "tail", "--max", "2", "--timeout", "30", timeout=180)
        assert tail.returncode == 0, tail.stderr
        tailed = [parse_event(Tick, line) for line in tail.stdout.splitlines()]
        assert len(tailed) == 2 and {t.camera_id for t in tailed} <= SAMPLE_IDS
    finally:
        down = run_maskwatch("down", timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "ticker: stopped" in down.stdout
    assert not pid_alive(ticker_pid)
    assert not (home / "run" / "ticker.pid").exists()
    ticker_log = (home / "logs" / "ticker.log").read_text()
    assert "ticker stopped" in ticker_log and "Traceback" not in ticker_log
    for port in (broker_port, store_port):  # nothing accepts connections any more
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, port
    assert not list((home / "run").glob("*.pid"))
