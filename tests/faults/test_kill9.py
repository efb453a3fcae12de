"""kill -9 of the flow process mid-stream (while ticks keep arriving), restart from the recovery
directory: every tick's rows land once, the alert reaches the topic once, and the figures say how long
the restart took to catch up. (``tests/test_flow_recovery.py`` also compares such a run with a clean one.)"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from maskwatch import store
from maskwatch.config import Settings

from tests.flowkit import (
    assert_rows_once,
    build_scenario,
    has_frames,
    kill_at_first_frame,
    produce,
    read_topic,
    start_flow,
    stop,
    wait_for,
)


@pytest.mark.slow
def test_kill_9_mid_stream(tmp_path: Path, mw_env: Settings, dataset_dir: Path, hanging_camera: str,
                           fault_figures: Callable[..., None]) -> None:
    sc = build_scenario(tmp_path, mw_env, dataset_dir, hanging_camera)
    cut = len(sc.ticks) // 2
    produce(mw_env, sc.ticks[:cut])
    env = {**sc.env, "MASKWATCH_FLOW_BATCH_MAX": "3"}  # small batches: many epochs to die between
    log_path = tmp_path / "flow.log"
    recovery = ("-r", str(tmp_path / "recovery"))
    proc = start_flow(env, log_path, *recovery)
    try:
        at_kill = kill_at_first_frame(mw_env, proc, log_path)
        assert at_kill < sc.frames_for(sc.ticks[:cut]), "killed too late to test recovery"
        produce(mw_env, sc.ticks[cut:])  # ticks keep coming while the flow is dead
        restarted = time.monotonic()
        proc = start_flow(env, log_path, *recovery)
        wait_for("every tick's frame row", has_frames(mw_env, sc.expected_frames), 150, proc, log_path)
        recovery_s = time.monotonic() - restarted
        has_alert = lambda: bool(store.query_rows("SELECT 1 FROM alerts", settings=mw_env))  # noqa: E731
        wait_for("the alert row", has_alert, 30, proc, log_path)
        on_topic = read_topic(mw_env, mw_env.topic_alerts, 1)
    finally:
        stop(proc)
    dups, rows = assert_rows_once(mw_env, sc.expected_frames)
    assert len(on_topic) == 1
    fault_figures(fault="kill -9 flow mid-stream", ticks=len(sc.ticks), frames_at_kill=at_kill,
                  frames=rows, recovery_s=round(recovery_s, 1), alerts_on_topic=len(on_topic),
                  duplicates=sum(dups.values()))
