"""kill -9 in the middle of the stream, restart from the Bytewax recovery directory: the store and the
alert topic end up exactly as after a clean run of the same ticks (no tick lost, no duplicate row or alert).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from maskwatch import store
from maskwatch.config import Settings

from tests.flowkit import (
    alert_steps,
    build_scenario,
    has_frames,
    kill_at_first_frame,
    opened,
    produce,
    read_topic,
    scenario_base_ms,
    start_flow,
    stop,
    store_summary,
    variant,
    wait_for,
)

# Should a slow machine let the whole first part through before the kill, that run is started over.
CRASH_ATTEMPTS = 3


def _run(tmp_path: Path, mw_env: Settings, dataset_dir: Path, hanging_camera: str, base_ms: int,
         name: str, crash: bool) -> tuple[Settings, dict[str, object], list[Any]] | None:
    """One run of the scenario's ticks in two parts; None when a crash came too late to test recovery."""
    settings = variant(mw_env, name)
    sc = build_scenario(tmp_path / name, settings, dataset_dir, hanging_camera, base_ms)
    cut = len(sc.ticks) * 3 // 5
    produce(settings, sc.ticks[:cut])
    log_path = tmp_path / f"{name}.log"
    recovery = ["-r", str(tmp_path / name / "recovery")]
    env = {**sc.env, "MASKWATCH_FLOW_BATCH_MAX": "3",  # small batches: many epochs to die between
           # Back-off depends on wall-clock time, which a killed and restarted run does not share with a
           # clean one; its skipped ticks would make the two runs' health rows differ.
           "MASKWATCH_FLOW_FETCH_BACKOFF_AFTER": "1000"}
    proc = start_flow(env, log_path, *recovery)
    try:
        if crash and kill_at_first_frame(settings, proc, log_path) >= sc.frames_for(sc.ticks[:cut]):
            return None  # the whole first part was stored before the kill
        produce(settings, sc.ticks[cut:])
        if crash:
            proc = start_flow(env, log_path, *recovery)
        wait_for("every tick's frame row", has_frames(settings, sc.expected_frames), 150, proc, log_path)
        has_alert = lambda: bool(store.query_rows("SELECT 1 FROM alerts", settings=settings))  # noqa: E731
        wait_for("the alert row", has_alert, 30, proc, log_path)
        topic = read_topic(settings, settings.topic_alerts, 1)
    finally:
        stop(proc)
    return settings, store_summary(settings), topic


def _failures_alike(summary: dict[str, object]) -> dict[str, object]:
    """The summary with the hanging camera's failed fetches counted as one kind: whether one ends as a
    `timeout` (its deadline) or a `fetch_error` (the server dropping the connection after 5 s) depends on
    timing that a killed and restarted run does not share with a clean one (seen once: a clean run had
    a `fetch_error` where the restarted one had a `timeout`). Every other row compares exactly."""
    health: dict[tuple[str, str], dict[str, int]] = {}
    for row in summary["health"]:  # type: ignore[attr-defined]
        status = "failed" if row["camera_id"] == "hang" and row["status"] != "ok" else row["status"]
        agg = health.setdefault((row["camera_id"], status), {"n": 0, "f": 0})
        agg["n"] += row["n"]
        agg["f"] = max(agg["f"], row["f"])
    return {**summary, "health": sorted(health.items())}


@pytest.mark.slow
def test_kill_9_and_restart_matches_a_clean_run(tmp_path: Path, mw_env: Settings, dataset_dir: Path,
                                                  hanging_camera: str) -> None:
    base_ms = scenario_base_ms()
    clean = _run(tmp_path, mw_env, dataset_dir, hanging_camera, base_ms, "clean", crash=False)
    assert clean is not None
    for attempt in range(CRASH_ATTEMPTS):
        crash = _run(tmp_path, mw_env, dataset_dir, hanging_camera, base_ms, f"crash{attempt}", crash=True)
        if crash is not None:
            break
    assert crash is not None, f"the flow finished the first part before each of {CRASH_ATTEMPTS} kills"

    (clean_settings, clean_store, clean_topic), (crash_settings, crash_store, crash_topic) = clean, crash
    assert _failures_alike(crash_store) == _failures_alike(clean_store)
    # The alert's life reached the topic step by step, each event once, the same in both runs (the
    # snapshot link, when set up, names each run's own file; none is set up here).
    clean_steps, crash_steps = alert_steps(clean_topic), alert_steps(crash_topic)
    assert len(opened(clean_topic)) == 1 and len(opened(crash_topic)) == 1
    by_id = lambda steps: sorted(steps, key=lambda p: p["event_id"])  # noqa: E731
    assert by_id(crash_steps) == by_id(clean_steps)
    assert all(p["snapshot_url"] == "" for p in clean_steps)
    assert clean_settings.home != crash_settings.home
