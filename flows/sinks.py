"""Where the flow's results go: ClickHouse (through ``maskwatch.store``) and the Kafka alert topic.

Both sinks are safe under Bytewax replay (after a crash the last epoch's items come again):

* store rows carry deterministic keys (tick id, face index, alert id) in ReplacingMergeTree tables, so a
  repeated row merges away; when the store is down, rows go to a
  :class:`~maskwatch.flows.buffer.DiskBuffer` and
  are retried with backoff, so nothing is lost and the flow keeps running;
* the alert topic is read back on start-up (within a horizon) and an alert id already there is not
  published again, so each alert reaches the topic once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import BaseModel

from maskwatch import metrics
from maskwatch.config import Settings
from maskwatch.flows.buffer import BufferFullError, DiskBuffer, Row
from maskwatch.schemas.events import Alert
from maskwatch.schemas.redaction import redact_text

log = logging.getLogger(__name__)

StoreItem = tuple[str, BaseModel]  # (table, event)
Writer = Callable[[str, list[Row]], None]

# Rows buffered per store partition (worker); the gauge is their sum for this process.
_buffered: dict[int, int] = {}
_buffered_lock = threading.Lock()


def _set_buffered(partition: object, rows: int) -> None:
    with _buffered_lock:
        _buffered[id(partition)] = rows
        metrics.BUFFER_DEPTH.set(sum(_buffered.values()))


def _record_lag(rows: list[Row]) -> None:
    """Sink lag: now minus the newest scheduled time among rows that just reached the store."""
    times = [t for r in rows if isinstance(t := r.get("scheduled_at"), datetime)]
    if times:
        metrics.SINK_LAG.set((datetime.now(UTC) - max(times)).total_seconds())


def store_writer(settings: Settings) -> Writer:
    def write(table: str, rows: list[Row]) -> None:
        from maskwatch.store import insert_rows

        insert_rows(table, rows, settings)

    return write


class StorePartition(StatelessSinkPartition[StoreItem]):
    """One worker's store writer. A retry thread drains the buffer once the store is back, also when no
    new rows arrive; a lock keeps it and the worker from writing at the same time, so rows stay in order."""

    def __init__(self, write: Writer, buffer: DiskBuffer, retry_max_s: float):
        self._write = write
        self._buffer = buffer
        self._retry_max_s = retry_max_s
        self._backoff = 0.0
        self._next_try = 0.0
        self._lock = threading.RLock()
        self._buffered = buffer.row_count()
        self._pending = self._buffered > 0
        _set_buffered(self, self._buffered)
        self._closed = threading.Event()
        self._retry = threading.Thread(target=self._retry_loop, name="store-retry", daemon=True)
        self._retry.start()

    def _failed(self, exc: Exception) -> None:
        self._backoff = min(self._retry_max_s, max(0.5, self._backoff * 2))
        self._next_try = time.monotonic() + self._backoff
        log.warning("store write failed (retry in %.1fs, rows kept in %s): %s", self._backoff,
                    self._buffer.directory, redact_text(str(exc)))

    def _drain(self) -> bool:
        """Write buffered rows first so the store sees rows in order; True when the buffer is empty."""
        with self._lock:
            if not self._pending:
                return True
            if time.monotonic() < self._next_try:
                return False
            try:
                n = self._buffer.drain(self._write)
            except Exception as exc:
                self._failed(exc)
                self._buffered = self._buffer.row_count()
                _set_buffered(self, self._buffered)
                return False
            log.info("store is back: wrote %d buffered batches", n)
            self._pending, self._backoff, self._buffered = False, 0.0, 0
            _set_buffered(self, 0)
            return True

    def _retry_loop(self) -> None:
        while not self._closed.wait(0.5):
            if self._pending and time.monotonic() >= self._next_try:
                self._drain()

    def write_batch(self, items: Sequence[StoreItem]) -> None:
        by_table: dict[str, list[Row]] = defaultdict(list)
        for table, event in items:
            by_table[table].append(dict(event))
        with self._lock:
            ready = self._drain()
            for table, rows in by_table.items():
                if ready:
                    try:
                        self._write(table, rows)
                        _record_lag(rows)
                        continue
                    except Exception as exc:
                        self._failed(exc)
                        ready = False
                self._append(table, rows)

    def _append(self, table: str, rows: list[Row]) -> None:
        while True:
            try:
                self._buffer.append(table, rows)
                self._pending = True
                self._buffered += len(rows)
                _set_buffered(self, self._buffered)
                return
            except BufferFullError as exc:
                # Full: hold the flow (backpressure) until the store takes the buffer, never drop rows.
                log.error("%s", exc)
                time.sleep(max(0.5, self._next_try - time.monotonic()))
                self._next_try = 0.0
                self._drain()

    def close(self) -> None:
        self._closed.set()
        self._retry.join(timeout=5)
        self._drain()


class StoreSink(DynamicSink[StoreItem]):
    """Rows to ClickHouse in one insert per table per epoch; a disk buffer per worker for outages."""

    def __init__(self, write: Writer, buffer_dir: Path, buffer_max_bytes: int, retry_max_s: float):
        self._write = write
        self._buffer_dir = buffer_dir
        self._max_bytes = buffer_max_bytes
        self._retry_max_s = retry_max_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StorePartition:
        buffer = DiskBuffer(self._buffer_dir / f"worker-{worker_index}", max_bytes=self._max_bytes)
        return StorePartition(self._write, buffer, self._retry_max_s)


def alert_payload(alert: Alert) -> bytes:
    return alert.model_dump_json().encode()


def published_alert_ids(
    config: dict[str, str], topic: str, horizon_s: int, timeout_s: float = 30.0
) -> set[str]:
    """Alert ids already on ``topic`` since ``now - horizon_s`` (read with a throwaway consumer)."""
    consumer = Consumer({**config, "group.id": "maskwatch-flow-alert-dedup", "enable.auto.commit": False,
                         "enable.partition.eof": True, "auto.offset.reset": "earliest"})
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"cannot read alert topic {topic!r}: {meta.error if meta else 'missing'}")
        since_ms = int((time.time() - horizon_s) * 1000)
        wanted = [TopicPartition(topic, p, since_ms) for p in meta.partitions]
        starts = consumer.offsets_for_times(wanted, timeout=timeout_s)
        ends: dict[int, int] = {}
        for tp in starts:
            _, high = consumer.get_watermark_offsets(tp, timeout=timeout_s)
            if tp.offset >= 0 and tp.offset < high:
                ends[tp.partition] = high
        seen: set[str] = set()
        if not ends:
            return seen
        consumer.assign([tp for tp in starts if tp.partition in ends])
        deadline = time.monotonic() + timeout_s
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                # A record that is not an alert is not ours to judge here; the topic's consumers do.
                # Brokers without timestamp lookup (Tansu) start at the beginning: filter here too.
                if msg.timestamp()[1] >= since_ms:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        seen.add(json.loads(msg.value() or b"")["alert_id"])
                part, offset = msg.partition() or 0, msg.offset() or 0
                if offset + 1 >= ends.get(part, 0):
                    ends.pop(part, None)
        if ends:
            raise RuntimeError(f"timed out reading alert topic {topic!r} for de-duplication")
        return seen
    finally:
        consumer.close()


class AlertPartition(StatelessSinkPartition[Alert]):
    def __init__(self, producer: Producer, topic: str, seen: set[str]):
        self._producer = producer
        self._topic = topic
        self._seen = seen

    def write_batch(self, items: Sequence[Alert]) -> None:
        fresh = [a for a in items if a.alert_id not in self._seen]
        for alert in fresh:
            self._producer.produce(self._topic, key=alert.camera_id.encode(), value=alert_payload(alert),
                                   headers=[("schema_version", str(alert.schema_version).encode())])
        if fresh:
            left = self._producer.flush(30)
            if left:
                raise RuntimeError(f"{left} alerts not acknowledged by Kafka within 30s")
            self._seen.update(a.alert_id for a in fresh)
            log.info("published %d alert(s) to %s", len(fresh), self._topic)

    def close(self) -> None:
        self._producer.flush(30)


class AlertTopicSink(DynamicSink[Alert]):
    """JSON alerts (``maskwatch.schemas.events.Alert``) keyed by camera id; each alert id published once."""

    def __init__(self, config: dict[str, str], topic: str, horizon_s: int):
        self._config = config
        self._topic = topic
        self._horizon_s = horizon_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> AlertPartition:
        from maskwatch.kafka import PRODUCER_DEFAULTS

        seen = published_alert_ids(self._config, self._topic, self._horizon_s)
        log.info("alert topic %s holds %d recent alert(s); those are not published again",
                 self._topic, len(seen))
        producer = Producer({**PRODUCER_DEFAULTS, **self._config})
        return AlertPartition(producer, self._topic, seen)
