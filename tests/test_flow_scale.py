"""Scale-out: the flow as a cluster of two processes (-i/-a) with two workers each (-w), ticks
partitioned by camera across them, each process with its own share of the recovery partitions."""

from __future__ import annotations

from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.ports import free_port

from tests.flowkit import (
    build_scenario,
    has_frames,
    produce,
    start_flow,
    stop,
    wait_for,
)


@pytest.mark.slow
def test_two_processes_two_workers_each(tmp_path: Path, mw_env: Settings, dataset_dir: Path,
                                        hanging_camera: str) -> None:
    sc = build_scenario(tmp_path / "scenario", mw_env, dataset_dir, hanging_camera)
    produce(mw_env, sc.ticks)
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    # Recovery partitions are created once and split between the hosts (here: two directories).
    dirs = [tmp_path / "recovery-0", tmp_path / "recovery-1"]
    for d in dirs:
        d.mkdir()
    init_db_dir(dirs[0], 2)
    (dirs[0] / "part-1.sqlite3").rename(dirs[1] / "part-1.sqlite3")
    logs = [tmp_path / "flow-0.log", tmp_path / "flow-1.log"]
    procs = [start_flow(sc.env, logs[i], "-w", "2", "-i", str(i), "-a", addresses, "-r", str(dirs[i]))
             for i in range(2)]
    try:
        wait_for("every tick's frame row", has_frames(mw_env, sc.expected_frames), 180, procs[0], logs[0])
        # Windows close, and alerts are written, up to a snapshot interval after the frames land.
        has_alert = lambda: bool(store.query_rows("SELECT 1 FROM alerts", settings=mw_env))  # noqa: E731
        wait_for("the alert row", has_alert, 60, procs[0], logs[0])
        assert procs[1].poll() is None, logs[1].read_text()[-3000:]
    finally:
        for p in procs:
            stop(p)
    alerts = store.query_rows("SELECT camera_id FROM alerts FINAL", settings=mw_env)
    assert [a["camera_id"] for a in alerts] == ["mixed"]
    # Both processes joined the cluster and ran until stopped.
    texts = [log.read_text() for log in logs]
    assert all("flow starting: 2 worker(s), process" in t for t in texts)
