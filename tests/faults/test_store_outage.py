"""The store is down for 60 s mid-stream while ticks keep arriving: rows wait in the on-disk buffer (the
buffer-depth gauge says how many), the flow keeps consuming, and once the store is back every row lands
once. Its own store server (the shared one must stay up)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.devservices.store import StoreService
from maskwatch.ports import free_port

from tests.flowkit import (
    assert_rows_once,
    build_scenario,
    frame_counts,
    has_frames,
    metric_values,
    opened,
    produce,
    read_topic,
    start_flow,
    stop,
    wait_for,
)

OUTAGE_S = 60


@pytest.mark.slow
def test_store_down_for_a_minute(tmp_path: Path, mw_env: Settings, dataset_dir: Path, hanging_camera: str,
                                 fault_figures: Callable[..., None]) -> None:
    own = StoreService(home=tmp_path / "store", port=free_port(), data_dir=tmp_path / "store" / "chdb")
    own.start()
    try:
        settings = mw_env.replace(store_url=f"{own.url}/?database=outage")
        sc = build_scenario(tmp_path / "scenario", settings, dataset_dir, hanging_camera)
        metrics_port = free_port()
        env = {**sc.env, "MASKWATCH_FLOW_STORE_RETRY_MAX_S": "2", "MASKWATCH_METRICS_PORT": str(metrics_port)}
        cut = len(sc.ticks) // 3
        produce(settings, sc.ticks[:cut])
        log_path = tmp_path / "flow.log"
        proc = start_flow(env, log_path)
        try:
            first = lambda: sum(frame_counts(settings).values()) > 0  # noqa: E731
            wait_for("the first frames", first, 120, proc, log_path)
            assert own.stop()
            down_at = time.monotonic()
            # Ticks keep arriving during the outage, in three waves.
            rest = sc.ticks[cut:]
            for i in range(3):
                produce(settings, rest[i * len(rest) // 3:(i + 1) * len(rest) // 3])
                time.sleep(OUTAGE_S / 4)
            while time.monotonic() - down_at < OUTAGE_S:
                assert proc.poll() is None, "the flow died with the store"
                time.sleep(1)
            buffered = metric_values(metrics_port)["maskwatch_buffer_depth"]
            assert buffered > 0, "nothing was buffered while the store was down"
            assert proc.poll() is None, "the flow died with the store"
            own.start()
            back_at = time.monotonic()
            wait_for("every tick's frame row", has_frames(settings, sc.expected_frames), 120, proc, log_path)
            drained_s = time.monotonic() - back_at
            buffer = sc.settings.home / "buffer" / "store"
            wait_for("the buffer drained", lambda: not any(buffer.rglob("seg-*.jsonl")), 30, proc, log_path)
            gauge_zero = lambda: metric_values(metrics_port)["maskwatch_buffer_depth"] == 0  # noqa: E731
            wait_for("the buffer gauge at 0", gauge_zero, 10, proc, log_path)
            on_topic = read_topic(settings, settings.topic_alerts, 1)
        finally:
            stop(proc)
        dups, rows = assert_rows_once(settings, sc.expected_frames)
        alerts = store.query_rows("SELECT camera_id FROM alerts FINAL", settings=settings)
        assert [a["camera_id"] for a in alerts] == ["mixed"] and len(opened(on_topic)) == 1
        fault_figures(fault=f"store down {OUTAGE_S}s mid-stream", ticks=len(sc.ticks), frames=rows,
                      rows_buffered_peak=int(buffered), store_back_to_all_rows_s=round(drained_s, 1),
                      alerts=len(alerts), duplicates=sum(dups.values()))
    finally:
        own.stop()
