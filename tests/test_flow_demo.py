"""`maskwatch up` runs the flow too: the sample cameras replaying dataset photos raise alerts within a
minute of the flow starting, in the store and on the alert topic; `maskwatch down` stops it cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.services.process import free_port, pid_alive
from tests.flowkit import read_topic

REPO_ROOT = Path(__file__).resolve().parents[1]


def _maskwatch(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "maskwatch.cli", *args], cwd=REPO_ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_up_raises_alerts_within_a_minute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          dataset_dir: Path) -> None:
    home = tmp_path / "home"
    suffix = uuid.uuid4().hex[:8]
    monkeypatch.setenv("MASKWATCH_HOME", str(home))
    monkeypatch.setenv("MASKWATCH_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("MASKWATCH_STORE_URL", f"http://127.0.0.1:{free_port()}/?database=maskwatch")
    monkeypatch.setenv("MASKWATCH_TOPIC_TICKS", f"demo.ticks.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_ALERTS", f"demo.alerts.{suffix}")
    monkeypatch.setenv("MASKWATCH_TOPIC_DEAD_LETTER", f"demo.dead.{suffix}")
    monkeypatch.setenv("MASKWATCH_DASHBOARD_PORT", str(free_port()))
    settings = Settings()
    flow_pid = None
    try:
        up = _maskwatch("up")
        assert up.returncode == 0, up.stdout + up.stderr
        assert "flow: started" in up.stdout
        flow_pid = int((home / "run" / "flow.pid").read_text())
        started = time.monotonic()
        alerts: list = []
        while time.monotonic() - started < 60 and not alerts:
            time.sleep(2)
            alerts = store.query_rows("SELECT camera_id, rule, snapshot_path FROM alerts FINAL",
                                      settings=settings)
        log = (home / "logs" / "flow.log").read_text()
        assert alerts, f"no alert within a minute; flow log:\n{log[-3000:]}"
        frames = store.query_rows("SELECT count() AS n FROM frames FINAL WHERE status = 'ok'",
                                  settings=settings)
        assert frames[0]["n"] > 0
        assert {a["camera_id"] for a in alerts} <= {"hq-lobby", "hq-cafeteria", "depot-gate"}
        assert all(Path(a["snapshot_path"]).is_file() for a in alerts)
        on_topic = read_topic(settings, settings.topic_alerts, len(alerts))
        assert {json.loads(m.value())["camera_id"] for m in on_topic} >= {a["camera_id"] for a in alerts}
    finally:
        down = _maskwatch("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "flow: stopped" in down.stdout
    assert flow_pid is not None and not pid_alive(flow_pid)
    assert "Traceback" not in (home / "logs" / "flow.log").read_text()
