"""The on-disk store buffer and the store sink's retry path, against a real chdb store."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maskwatch.flows.buffer import BufferFullError, DiskBuffer
from maskwatch.flows.sinks import StorePartition

pytestmark = pytest.mark.without_models

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


def test_a_record_cut_short_by_kill_9_neither_merges_with_later_ones_nor_wedges_the_drain(
    tmp_path: Path,
) -> None:
    buf = DiskBuffer(tmp_path)
    buf.append("a", [{"x": 1}])
    seg = next(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "ab") as f:
        f.write(b'{"table":"a","rows":[{"x"')  # the process was killed mid-write
    # The flow starts again (a new buffer on the same directory) and the outage goes on.
    again = DiskBuffer(tmp_path)
    again.append("a", [{"x": 2}])
    assert again.row_count() == 2
    seen: list[dict] = []
    assert DiskBuffer(tmp_path).drain(lambda t, rows: seen.extend(rows)) == 2
    assert seen == [{"x": 1}, {"x": 2}]


def test_a_line_that_is_not_a_record_is_set_aside_and_the_rest_drains(tmp_path: Path) -> None:
    buf = DiskBuffer(tmp_path)
    buf.append("a", [{"x": 1}])
    seg = next(tmp_path.glob("seg-*.jsonl"))
    with open(seg, "ab") as f:
        f.write(b"garbage from a damaged disk\n")
        f.write(b'{"rows": "no table"}\n')
    buf.append("a", [{"x": 2}])
    seen: list[dict] = []
    assert buf.drain(lambda t, rows: seen.extend(rows)) == 2
    assert seen == [{"x": 1}, {"x": 2}]
    assert (tmp_path / "corrupt.jsonl").read_bytes().count(b"\n") == 2
    assert buf.drain(lambda t, rows: seen.extend(rows)) == 0


def test_a_scaled_down_cluster_drains_the_buffers_of_workers_it_no_longer_has(
    tmp_path: Path, store_url: str
) -> None:
    """Four workers buffered rows during an outage; the flow comes back with two: every row lands."""
    from maskwatch import store
    from maskwatch.config import Settings
    from maskwatch.flows.sinks import StoreSink, store_writer
    from maskwatch.schemas.events import CameraHealth

    up = Settings(store_url=store_url)
    store.migrate(up)
    root = tmp_path / "buffer"
    for worker in range(4):
        health = CameraHealth(camera_id=f"cam{worker}", tick_id=f"cam{worker}:1", scheduled_at=WHEN,
                              observed_at=WHEN, status="ok")
        DiskBuffer(root / f"worker-{worker}").append("camera_health", [dict(health)])
    sink = StoreSink(store_writer(up), root, 1024**2, retry_max_s=0.1)
    parts = [sink.build("store", i, 2) for i in range(2)]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
                DiskBuffer(root / f"worker-{i}").row_count() for i in (0, 1)):
            time.sleep(0.2)
    finally:
        for part in parts:
            part.close()
    rows = store.query_rows("SELECT camera_id FROM camera_health FINAL ORDER BY camera_id", settings=up)
    assert [r["camera_id"] for r in rows] == ["cam0", "cam1", "cam2", "cam3"]
    assert sorted(p.name for p in root.iterdir()) == ["worker-0", "worker-1"]


def test_a_hung_store_times_out_in_seconds_and_rows_wait_on_disk(tmp_path: Path) -> None:
    """A store that accepts connections and never answers: the write gives up after the store timeout
    (the library's default is 300 s) and the rows go to the buffer."""
    import socket
    import threading

    from maskwatch import store
    from maskwatch.config import Settings
    from maskwatch.schemas.events import CameraHealth

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_stay_silent() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept_and_stay_silent, daemon=True).start()
    hung = Settings(store_url=f"http://127.0.0.1:{listener.getsockname()[1]}/?database=hung",
                    store_timeout_s=1.0, store_connect_timeout_s=1.0)
    def write(table: str, rows: list[dict]) -> None:
        store.insert_rows(table, rows, hung)

    part = StorePartition(write, DiskBuffer(tmp_path / "buf"),
                          retry_max_s=60)
    item = ("camera_health", CameraHealth(camera_id="cam1", tick_id="cam1:1", scheduled_at=WHEN,
                                          observed_at=WHEN, status="ok"))
    writer = threading.Thread(target=part.write_batch, args=([item],))
    try:
        writer.start()
        writer.join(60)  # liveness, not speed: with the library's default this thread waits 300 s
        assert not writer.is_alive(), "the worker is still blocked on the hung store"
        assert DiskBuffer(tmp_path / "buf").row_count() == 1
    finally:
        stop.set()
        for conn in held:
            conn.close()
        listener.close()
        part._closed.set()


def test_a_row_the_store_refuses_is_set_apart_and_every_other_row_lands(tmp_path: Path,
                                                                         store_url: str) -> None:
    """A row that can never be stored (a lone surrogate, a negative count) used to stay at the head of the
    buffer for good, every later row queued behind it. Now it is found, dead-lettered with the reason, and
    the rest lands: written live, and drained from the buffer after an outage."""
    from maskwatch import store
    from maskwatch.config import Settings
    from maskwatch.flows.sinks import dead_letter_rows, isolating
    from maskwatch.ports import free_port
    from maskwatch.schemas.events import FrameResult

    up = Settings(store_url=store_url)
    store.migrate(up)

    def frame(tick: str, **bad: object) -> tuple[str, FrameResult]:
        good = FrameResult(camera_id="cam1", tick_id="cam1:0", scheduled_at=WHEN, processed_at=WHEN,
                           status="ok")
        return ("frames", good.model_copy(update={"tick_id": tick, **bad}))  # as a bug could build it

    refused: list[tuple[str, dict, Exception]] = []
    target = {"settings": Settings(store_url=f"http://127.0.0.1:{free_port()}/?database=down")}

    def write(table: str, rows: list[dict]) -> None:
        store.insert_rows(table, rows, target["settings"])

    part = StorePartition(isolating(write, lambda t, row, exc: refused.append((t, row, exc))),
                          DiskBuffer(tmp_path / "buf"), retry_max_s=0.1)
    # During an outage a bad row is buffered with good ones ...
    part.write_batch([frame("cam1:1"), frame("cam1:\ud800"), frame("cam1:2")])
    assert DiskBuffer(tmp_path / "buf").row_count() == 3
    target["settings"] = up
    time.sleep(0.6)
    # ... and when the store is back, it is set apart while the rest drains, and live rows go on.
    part.write_batch([frame("cam1:3"), frame("cam1:4", faces=-1), frame("cam1:5")])
    part._closed.set()
    got = [r["tick_id"] for r in store.query_rows("SELECT tick_id FROM frames FINAL ORDER BY tick_id",
                                                  settings=up)]
    assert got == ["cam1:1", "cam1:2", "cam1:3", "cam1:5"]
    assert [row["tick_id"] for _, row, _ in refused] == ["cam1:\ud800", "cam1:4"]
    assert DiskBuffer(tmp_path / "buf").row_count() == 0

    # The dead letter goes to Kafka; with Kafka down too it lands in a file, never only in the log.
    fallback = tmp_path / "refused.jsonl"
    down = {"bootstrap.servers": f"127.0.0.1:{free_port()}", "message.timeout.ms": "1500"}
    reject = dead_letter_rows(down, "dead", fallback)
    reject("frames", dict(frame("cam1:6", faces=-1)[1]), ValueError("Code: 53. type mismatch"))
    letter = json.loads(fallback.read_text())
    assert letter["stage"] == "store_sink" and "type mismatch" in letter["error"]
    assert "cam1:6" in letter["payload"]


def test_an_error_every_row_gets_is_the_store_not_the_rows(tmp_path: Path) -> None:
    from clickhouse_connect.driver.exceptions import DataError

    from maskwatch.flows.sinks import isolating

    refused: list[object] = []

    def broken(table: str, rows: list[dict]) -> None:
        raise DataError("Unable to create native array for column `x`")

    with pytest.raises(DataError):
        isolating(broken, lambda *a: refused.append(a))("frames", [{"x": 1}, {"x": 2}, {"x": 3}])
    assert refused == []
