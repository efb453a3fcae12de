"""The store goes away while the flow runs: rows wait in the on-disk buffer and all land, once each, when
the store is back; the flow never stops. Its own store server (the shared one must stay up)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.devservices.store import StoreService
from maskwatch.ports import free_port

from tests.flowkit import (
    build_scenario,
    frame_counts,
    has_frames,
    produce,
    start_flow,
    stop,
    wait_for,
)


@pytest.mark.slow
def test_store_outage_loses_nothing(tmp_path: Path, mw_env: Settings, dataset_dir: Path,
                                    hanging_camera: str, request: pytest.FixtureRequest) -> None:
    own = StoreService(home=tmp_path / "store", port=free_port(), data_dir=tmp_path / "store" / "chdb",
                       attached=True)
    request.addfinalizer(own.stop)  # the restarted server must not outlive the test
    own.start()
    settings = mw_env.replace(store_url=f"{own.url}/?database=outage")
    sc = build_scenario(tmp_path / "scenario", settings, dataset_dir, hanging_camera)
    env = {**sc.env, "MASKWATCH_FLOW_STORE_RETRY_MAX_S": "1"}
    cut = len(sc.ticks) // 3
    produce(settings, sc.ticks[:cut])
    log_path = tmp_path / "flow.log"
    proc = start_flow(env, log_path)
    try:
        wait_for("the first frames", lambda: sum(frame_counts(settings).values()) > 0, 120, proc, log_path)
        assert own.stop()
        produce(settings, sc.ticks[cut:])  # the flow keeps consuming while the store is down
        buffer = sc.settings.home / "buffer" / "store"
        deadline = time.monotonic() + 60
        while not any(buffer.rglob("seg-*.jsonl")) and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.5)
        assert any(buffer.rglob("seg-*.jsonl")), "nothing was buffered while the store was down"
        time.sleep(3)
        assert proc.poll() is None, "the flow died with the store"
        own.start()
        wait_for("every tick's frame row", has_frames(settings, sc.expected_frames), 120, proc, log_path)
        wait_for("the buffer drained", lambda: not any(buffer.rglob("seg-*.jsonl")), 30, proc, log_path)
    finally:
        stop(proc)
    store.command("OPTIMIZE TABLE frames FINAL", settings=settings)
    raw = store.query_rows("SELECT count() AS n FROM frames", settings=settings)[0]["n"]
    assert raw == sum(sc.expected_frames.values())  # once each
    alerts = store.query_rows("SELECT camera_id FROM alerts FINAL", settings=settings)
    assert [a["camera_id"] for a in alerts] == ["mixed"]
    assert "store write failed" in log_path.read_text() and "store is back" in log_path.read_text()
    own.stop()
