"""The on-disk store buffer and the store sink's retry path, against a real chdb store."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maskwatch.flows.buffer import BufferFullError, DiskBuffer
from maskwatch.flows.sinks import StorePartition

# Recent, millisecond precision: store tables expire rows by TTL, and keep DateTime64(3).
WHEN = datetime.now(UTC).replace(microsecond=123000)


def test_append_and_drain_in_order_keeping_types(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, segment_bytes=200)
    for i in range(5):
        buf.append("frames", [{"tick_id": f"c:{i}", "scheduled_at": WHEN, "faces": i, "tags": ["a"]}])
    assert len(list(tmp_path.glob("seg-*.jsonl"))) > 1  # rotated into several segments
    got: list[tuple[str, list[dict]]] = []
    assert buf.drain(lambda t, rows: got.append((t, rows))) == 5
    assert [rows[0]["tick_id"] for _, rows in got] == [f"c:{i}" for i in range(5)]
    assert got[0][1][0]["scheduled_at"] == WHEN and got[0][0] == "frames"
    assert len(buf) == 0 and not list(tmp_path.glob("seg-*"))


def test_failed_drain_keeps_rows_and_resumes(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path)
    buf.append("a", [{"x": 1}])
    buf.append("b", [{"x": 2}])

    def broken(table: str, rows: list) -> None:
        raise ConnectionError("store down")

    with pytest.raises(ConnectionError):
        buf.drain(broken)
    assert len(buf) == 2
    seen: list[str] = []
    buf.drain(lambda t, rows: seen.append(t))
    assert seen == ["a", "b"]


def test_truncated_tail_is_ignored_and_bound_enforced(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path, max_bytes=300)
    buf.append("a", [{"x": 1}])
    seg = next(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "ab") as f:
        f.write(b'{"table":"a","rows":[{"x"')  # a crash mid-write
    assert len(buf) == 1
    with pytest.raises(BufferFullError, match="full"):
        buf.append("a", [{"x": "y" * 400}])


def test_store_partition_buffers_while_store_is_down_then_catches_up(tmp_path: Path, store_url: str) -> None:
    """The real store: while its URL refuses connections rows go to disk; then all land, once each."""
    from maskwatch import store
    from maskwatch.config import Settings
    from maskwatch.ports import free_port
    from maskwatch.schemas.events import CameraHealth

    up = Settings(store_url=store_url)
    store.migrate(up)
    dead = Settings(store_url=f"http://127.0.0.1:{free_port()}/?database=nowhere")
    target = {"settings": dead}

    def write(table: str, rows: list[dict]) -> None:
        store.insert_rows(table, rows, target["settings"])

    def health(n: int) -> tuple[str, CameraHealth]:
        return ("camera_health", CameraHealth(camera_id="cam1", tick_id=f"cam1:{n}", scheduled_at=WHEN,
                                              observed_at=WHEN, status="ok"))

    part = StorePartition(write, DiskBuffer(tmp_path / "buf"), retry_max_s=0.1)
    part.write_batch([health(1), health(2)])
    part.write_batch([health(3)])
    assert len(DiskBuffer(tmp_path / "buf")) == 2  # both batches kept on disk
    target["settings"] = up
    time.sleep(0.6)  # past the backoff
    part.write_batch([health(1), health(4)])  # tick 1 again, as a replay would send it
    rows = store.query_rows("SELECT tick_id, scheduled_at FROM camera_health FINAL ORDER BY tick_id",
                            settings=up)
    assert [r["tick_id"] for r in rows] == ["cam1:1", "cam1:2", "cam1:3", "cam1:4"]
    assert rows[0]["scheduled_at"].replace(tzinfo=UTC) == WHEN
    assert len(DiskBuffer(tmp_path / "buf")) == 0
