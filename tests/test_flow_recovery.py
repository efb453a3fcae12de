"""kill -9 in the middle of the stream, restart from the Bytewax recovery directory: the store and the
alert topic end up exactly as after a clean run of the same ticks (no tick lost, no duplicate row or alert).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from maskwatch import store
from maskwatch.config import Settings
from tests.flowkit import (
    build_scenario,
    frame_counts,
    has_frames,
    produce,
    read_topic,
    scenario_base_ms,
    start_flow,
    stop,
    store_summary,
    variant,
    wait_for,
)


def _at_least(settings: Settings, n: int) -> Callable[[], bool]:
    return lambda: sum(frame_counts(settings).values()) >= n


@pytest.mark.slow
def test_kill_9_and_restart_matches_a_clean_run(tmp_path: Path, mw_env: Settings, dataset_dir: Path,
                                                  hanging_camera: str) -> None:
    base_ms = scenario_base_ms()
    stores: dict[str, dict[str, object]] = {}
    topics: dict[str, list[Any]] = {}
    for name in ("clean", "crash"):
        settings = variant(mw_env, name)
        sc = build_scenario(tmp_path / name, settings, dataset_dir, hanging_camera, base_ms)
        # The ticks arrive in two parts; the crash run dies hard while working on the first part.
        cut = len(sc.ticks) * 3 // 5
        produce(settings, sc.ticks[:cut])
        log_path = tmp_path / f"{name}.log"
        recovery = ["-r", str(tmp_path / name / "recovery")]
        env = {**sc.env, "MASKWATCH_FLOW_BATCH_MAX": "3"}  # small batches: many epochs to die between
        proc = start_flow(env, log_path, *recovery)
        try:
            if name == "crash":
                wait_for("a first part of the frames", _at_least(settings, 6), 120, proc, log_path)
                proc.kill()
                proc.wait(10)
                first_part = sum(1 for t in sc.ticks[:cut] if t.camera_id in sc.expected_frames)
                assert sum(frame_counts(settings).values()) < first_part, "killed too late to test recovery"
            produce(settings, sc.ticks[cut:])
            if name == "crash":
                proc = start_flow(env, log_path, *recovery)
            wait_for("every tick's frame row", has_frames(settings, sc.expected_frames), 150, proc, log_path)
            has_alert = lambda s=settings: bool(store.query_rows("SELECT 1 FROM alerts", settings=s))  # noqa: E731
            wait_for("the alert row", has_alert, 30, proc, log_path)
            topics[name] = read_topic(settings, settings.topic_alerts, 1)
        finally:
            stop(proc)
        stores[name] = store_summary(settings)

    assert stores["crash"] == stores["clean"]
    assert len(topics["clean"]) == 1 and len(topics["crash"]) == 1  # the alert reached the topic once
    clean_alert, crash_alert = (json.loads(topics[n][0].value()) for n in ("clean", "crash"))
    assert clean_alert.pop("snapshot_path").startswith(str(mw_env.home / "clean"))  # each run's own home
    assert crash_alert.pop("snapshot_path").startswith(str(mw_env.home / "crash"))
    assert crash_alert == clean_alert
