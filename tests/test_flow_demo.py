"""`maskwatch up` runs the flow too: the sample cameras replaying dataset photos raise alerts within a
minute of the flow starting, in the store and on the alert topic; `maskwatch down` stops it cleanly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from maskwatch import store
from maskwatch.devservices.process import pid_alive

from tests.flowkit import DemoEnv, read_topic, run_maskwatch


@pytest.mark.slow
def test_up_raises_alerts_within_a_minute(demo_env: DemoEnv, dataset_dir: Path) -> None:
    home = demo_env.settings.home
    flow_pid = None
    try:
        up = run_maskwatch("up")
        assert up.returncode == 0, up.stdout + up.stderr
        settings = demo_env.settings  # with the store password `up` made
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
        down = run_maskwatch("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "flow: stopped" in down.stdout
    assert flow_pid is not None and not pid_alive(flow_pid)
    assert "Traceback" not in (home / "logs" / "flow.log").read_text()
