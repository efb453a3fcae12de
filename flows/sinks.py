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
import os
import re
import struct
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Consumer, Producer, TopicPartition
from pydantic import BaseModel

from maskwatch import metrics
from maskwatch.config import Settings
from maskwatch.flows.buffer import BufferFullError, DiskBuffer, Row
from maskwatch.schemas.events import AlertEvent, DeadLetter
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


# ClickHouse error codes that are about the data sent, not about the store's state: parse, type and range
# errors. Anything else (a store down, overloaded or mid-migration) is retried, never dead-lettered.
_DATA_ERROR_CODES = frozenset({6, 26, 27, 32, 38, 41, 53, 69, 70, 72, 117, 131, 321, 395, 432, 457, 473, 499})
_CODE = re.compile(r"\bCode:\s*(\d+)")
RejectedRow = Callable[[str, Row, Exception], None]


def is_data_error(exc: BaseException) -> bool:
    """True when ``exc`` says the rows themselves cannot be stored (so retrying them can never work)."""
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

    if isinstance(exc, OperationalError | OSError):
        return False
    # Client-side: a value the column cannot hold (DataError), text that is not UTF-8 (a lone surrogate).
    if isinstance(exc, DataError | UnicodeError | OverflowError | struct.error):
        return True
    if isinstance(exc, DatabaseError):
        code = _CODE.search(str(exc))
        return code is not None and int(code[1]) in _DATA_ERROR_CODES
    return False


def isolating(write: Writer, rejected: RejectedRow) -> Writer:
    """``write``, but a batch the store refuses for its data is split until the refused rows are alone:
    those go to ``rejected`` (with the reason) and every other row is written. A row that cannot be stored
    would otherwise be retried forever at the head of the buffer, and every later row behind it."""

    def split(table: str, rows: list[Row], refused: list[tuple[Row, Exception]]) -> None:
        try:
            write(table, rows)
            return
        except Exception as exc:
            if not is_data_error(exc):
                raise
            if len(rows) == 1:
                refused.append((rows[0], exc))
                return
        half = len(rows) // 2
        split(table, rows[:half], refused)
        split(table, rows[half:], refused)

    def write_apart(table: str, rows: list[Row]) -> None:
        refused: list[tuple[Row, Exception]] = []
        split(table, rows, refused)
        if len(refused) == len(rows) > 1:
            # Every row alone is refused: that is the table or the store, not the rows; keep them all.
            raise refused[0][1]
        for row, exc in refused:
            rejected(table, row, exc)

    return write_apart


def dead_letter_rows(kafka_config: dict[str, str], topic: str, fallback: Path) -> RejectedRow:
    """Refused rows as dead letters on ``topic``; when Kafka does not take one either, a line in
    ``fallback`` (JSON), so a refused row is never only a log line. The producer is made on first use."""
    producers: list[Producer] = []
    lock = threading.Lock()

    def reject(table: str, row: Row, exc: Exception) -> None:
        metrics.FLOW_DEAD_LETTERS.labels("store_sink").inc()
        payload = json.dumps({"table": table, "row": row}, default=str, ensure_ascii=True)
        dead = DeadLetter(stage="store_sink", error=f"{table}: the store refused the row: {exc}",
                          key=str(row.get("tick_id") or row.get("alert_id") or ""), payload=payload[:4096],
                          occurred_at=datetime.now(UTC))
        log.error("store refused a %s row (%s); sent to the dead-letter topic", table, dead.error[:300])
        value = dead.model_dump_json().encode()
        try:
            with lock:
                if not producers:
                    from maskwatch.kafka import PRODUCER_DEFAULTS

                    producers.append(Producer({**PRODUCER_DEFAULTS, **kafka_config}))
                producer = producers[0]
            outcome: list[object] = []
            producer.produce(topic, key=dead.key.encode() or None, value=value,
                             on_delivery=lambda err, _msg: outcome.append(err))
            producer.flush(30)
            if outcome == [None]:  # acknowledged by the broker
                return
            log.error("dead-letter topic did not take the row (%s); keeping it in %s",
                      outcome[0] if outcome else "no answer", fallback)
        except Exception as produce_exc:
            log.error("dead-letter topic unavailable (%s); keeping the row in %s", produce_exc, fallback)
        fallback.parent.mkdir(parents=True, exist_ok=True)
        with open(fallback, "ab") as f:
            f.write(value + b"\n")
            f.flush()
            os.fsync(f.fileno())

    return reject


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
            # A nested record (an alert event's rule) is one JSON column, as the store and the disk
            # buffer both take it.
            by_table[table].append({k: v.model_dump_json() if isinstance(v, BaseModel) else v
                                    for k, v in dict(event).items()})
        with self._lock:
            ready = self._drain()
            # Faces before their frames: a frame row in the store means its faces are too.
            for table, rows in sorted(by_table.items(), key=lambda kv: kv[0] != "detections"):
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

    def __init__(self, write: Writer, buffer_dir: Path, buffer_max_bytes: int, retry_max_s: float,
                 rejected: RejectedRow | None = None):
        self._write = isolating(write, rejected) if rejected is not None else write
        self._buffer_dir = buffer_dir
        self._max_bytes = buffer_max_bytes
        self._retry_max_s = retry_max_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StorePartition:
        buffer = DiskBuffer(self._buffer_dir / f"worker-{worker_index}", max_bytes=self._max_bytes)
        # Buffers of workers a smaller cluster no longer has: each goes to exactly one of today's workers.
        for orphan in sorted(self._buffer_dir.glob("worker-*")):
            index = orphan.name.removeprefix("worker-")
            if index.isdigit() and int(index) >= worker_count and int(index) % worker_count == worker_index:
                moved = buffer.adopt(orphan)
                if moved:
                    log.info("store buffer: worker %d took over %d segment(s) of %s (the cluster has %d "
                             "workers now)", worker_index, moved, orphan.name, worker_count)
        return StorePartition(self._write, buffer, self._retry_max_s)


def alert_payload(event: AlertEvent) -> bytes:
    return event.model_dump_json().encode()


def published_event_ids(
    config: dict[str, str], topic: str, horizon_s: int, timeout_s: float = 30.0
) -> set[str]:
    """Ids of the alert events already on ``topic`` since ``now - horizon_s`` (read with a throwaway
    consumer); a version 1 alert counts by its alert id."""
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
                    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                        record = json.loads(msg.value() or b"")
                        seen.add(record.get("event_id") or record["alert_id"])
                part, offset = msg.partition() or 0, msg.offset() or 0
                if offset + 1 >= ends.get(part, 0):
                    ends.pop(part, None)
        if ends:
            raise RuntimeError(f"timed out reading alert topic {topic!r} for de-duplication")
        return seen
    finally:
        consumer.close()


# The alert producer is idempotent: a retry after a lost acknowledgement does not write the alert twice.
ALERT_PRODUCER = {"enable.idempotence": True, "acks": "all", "max.in.flight.requests.per.connection": 5}


class AlertPartition(StatelessSinkPartition[AlertEvent]):
    def __init__(self, make_producer: Callable[[], Producer], topic: str, seen: set[str]):
        self._make_producer = make_producer
        self._producer = make_producer()
        self._topic = topic
        self._seen = seen

    def _publish(self, events: list[AlertEvent]) -> list[Any]:
        errors: list[Any] = []
        for event in events:
            self._producer.produce(self._topic, key=event.camera_id.encode(), value=alert_payload(event),
                                   headers=[("schema_version", str(event.schema_version).encode()),
                                            ("kind", event.kind.encode())],
                                   on_delivery=lambda err, _msg: errors.append(err) if err else None)
        left = self._producer.flush(30)
        if left:
            raise RuntimeError(f"{left} alerts not acknowledged by Kafka within 30s")
        return errors

    def write_batch(self, items: Sequence[AlertEvent]) -> None:
        fresh = [e for e in items if e.event_id not in self._seen]
        if not fresh:
            return
        errors = self._publish(fresh)
        if any(e.fatal() for e in errors):
            # An idempotent producer's session can end for good (a broker that lost its state, e.g. an
            # in-memory one restarted): start a new session and send the batch again. A consumer may
            # then see an alert twice; its id says so.
            log.warning("alert producer: %s; starting a new producer session", errors[0])
            self._producer = self._make_producer()
            errors = self._publish(fresh)
        if errors:
            raise RuntimeError(f"alerts not published to {self._topic}: {errors[0]}")
        self._seen.update(e.event_id for e in fresh)
        log.info("published %d alert event(s) to %s", len(fresh), self._topic)

    def close(self) -> None:
        self._producer.flush(30)


class AlertTopicSink(DynamicSink[AlertEvent]):
    """Alert events (``maskwatch.schemas.events.AlertEvent``, contract v2) as JSON keyed by camera id;
    each event id published once."""

    def __init__(self, config: dict[str, str], topic: str, horizon_s: int):
        self._config = config
        self._topic = topic
        self._horizon_s = horizon_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> AlertPartition:
        from maskwatch.kafka import PRODUCER_DEFAULTS

        seen = published_event_ids(self._config, self._topic, self._horizon_s)
        log.info("alert topic %s holds %d recent alert event(s); those are not published again",
                 self._topic, len(seen))
        config = {**PRODUCER_DEFAULTS, **ALERT_PRODUCER, **self._config}
        return AlertPartition(lambda: Producer(config), self._topic, seen)
