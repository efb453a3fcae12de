"""The ticker: one tick per enabled camera per interval onto the tick topic (key = camera id).

Ticks sit on a fixed wall-clock grid per camera, ``k * interval + phase``, where the phase is a stable
hash of the camera id: cameras with the same interval do not all fire at once, and a restarted ticker
emits the same tick ids as the one before it. The registry is re-read every few seconds, so adding,
disabling or re-timing a camera needs no restart. If the broker is down, ticks keep being scheduled and
wait in librdkafka's queue until it is back; a ticker stalled past a slot emits only the latest tick per
camera and counts the rest as skipped (an old frame request is worth nothing). Counters (emitted, delivered,
failed, skipped ticks; registry refreshes; cameras scheduled) are Prometheus metrics (``maskwatch.metrics``)
served on ``MASKWATCH_METRICS_PORT``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from maskwatch import metrics
from maskwatch.config import Settings

log = logging.getLogger(__name__)


def phase_ms(camera_id: str, interval_ms: int) -> int:
    """Stable offset of a camera's grid within its interval (same on every host and restart)."""
    digest = hashlib.sha256(camera_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % interval_ms


@dataclass
class _Slot:
    interval_ms: int
    phase_ms: int
    next_ms: int


@dataclass
class TickSchedule:
    """Pure scheduling (time passed in, no I/O): which (camera, scheduled ms) ticks are due."""

    slots: dict[str, _Slot] = field(default_factory=dict)
    skipped: int = 0

    @staticmethod
    def _first_at_or_after(now_ms: int, interval_ms: int, phase: int) -> int:
        k = -(-(now_ms - phase) // interval_ms)  # ceil division
        return k * interval_ms + phase

    def update(self, intervals_s: Mapping[str, float], now_ms: int) -> None:
        """Set the cameras to tick (id -> interval seconds); changes apply from the next slot."""
        for camera_id in set(self.slots) - set(intervals_s):
            del self.slots[camera_id]
        for camera_id, interval_s in intervals_s.items():
            interval_ms = max(1, round(interval_s * 1000))
            current = self.slots.get(camera_id)
            if current is not None and current.interval_ms == interval_ms:
                continue
            phase = phase_ms(camera_id, interval_ms)
            first = self._first_at_or_after(now_ms, interval_ms, phase)
            self.slots[camera_id] = _Slot(interval_ms, phase, first)

    def due(self, now_ms: int) -> list[tuple[str, int]]:
        """Ticks whose time has come, oldest first; each slot is returned once."""
        ticks = []
        for camera_id, slot in self.slots.items():
            if slot.next_ms > now_ms:
                continue
            latest = slot.next_ms + (now_ms - slot.next_ms) // slot.interval_ms * slot.interval_ms
            self.skipped += (latest - slot.next_ms) // slot.interval_ms
            ticks.append((camera_id, latest))
            slot.next_ms = latest + slot.interval_ms
        ticks.sort(key=lambda tick: (tick[1], tick[0]))
        return ticks

    def next_due_ms(self) -> int | None:
        return min((slot.next_ms for slot in self.slots.values()), default=None)


@dataclass
class TickerStats:
    emitted: int = 0
    delivered: int = 0
    failed: int = 0
    skipped: int = 0


class Ticker:
    """Reads the registry, keeps the schedule, produces ticks. ``run`` returns when ``stop`` is set."""

    def __init__(self, settings: Settings | None = None, refresh_s: float = 5.0,
                 clock: Callable[[], float] = time.time, producer: Any = None):
        from maskwatch import kafka

        self.settings = settings or Settings()
        self.refresh_s = refresh_s
        self.clock = clock
        self.schedule = TickSchedule()
        self.stats = TickerStats()
        self.producer = producer or kafka.producer(self.settings)
        self._store_ok = True
        self._next_loss_log = 0.0

    def refresh(self) -> None:
        from maskwatch.cameras import registry

        try:
            cameras = registry.list_cameras(self.settings, enabled_only=True)
        except Exception as exc:  # store down: keep ticking the cameras we know
            metrics.TICKER_REFRESHES.labels(outcome="error").inc()
            if self._store_ok:
                log.warning("cannot read the camera registry (%s); keeping %d known cameras",
                            exc, len(self.schedule.slots))
            self._store_ok = False
            return
        metrics.TICKER_REFRESHES.labels(outcome="ok").inc()
        if not self._store_ok:
            log.info("camera registry readable again")
        self._store_ok = True
        before = set(self.schedule.slots)
        self.schedule.update({c.id: c.interval_s for c in cameras}, self._now_ms())
        metrics.TICKER_CAMERAS.set(len(self.schedule.slots))
        if set(self.schedule.slots) != before:
            names = ", ".join(sorted(self.schedule.slots))
            log.info("ticking %d cameras: %s", len(self.schedule.slots), names)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.stats.delivered += 1
            metrics.TICKER_TICKS_DELIVERED.inc()
        else:
            self._lost(f"tick for {msg.key().decode(errors='replace')} not delivered: {err}")

    def _lost(self, reason: str) -> None:
        # A long outage fails ticks by the thousand: one log line per 10 s, with the running count.
        self.stats.failed += 1
        metrics.TICKER_TICKS_FAILED.inc()
        if time.monotonic() >= self._next_loss_log:
            log.error("%s (%d ticks lost so far)", reason, self.stats.failed)
            self._next_loss_log = time.monotonic() + 10

    def emit_due(self) -> int:
        from maskwatch.schemas.events import Tick, tick_id

        due = self.schedule.due(self._now_ms())
        emitted_at = datetime.now(UTC)
        for camera_id, scheduled_ms in due:
            tick = Tick(camera_id=camera_id, tick_id=tick_id(camera_id, scheduled_ms),
                        scheduled_at=datetime.fromtimestamp(scheduled_ms / 1000, UTC), emitted_at=emitted_at)
            self._produce(camera_id, tick.model_dump_json().encode())
        self.stats.emitted += len(due)
        metrics.TICKER_TICKS.inc(len(due))
        metrics.TICKER_TICKS_SKIPPED.inc(self.schedule.skipped - self.stats.skipped)
        self.stats.skipped = self.schedule.skipped
        return len(due)

    def _produce(self, key: str, value: bytes) -> None:
        for attempt in range(2):
            try:
                self.producer.produce(self.settings.topic_ticks, key=key.encode(), value=value,
                                      on_delivery=self._on_delivery)
                return
            except BufferError:  # local queue full (broker down a long time): wait a little for room
                if attempt == 0:
                    self.producer.poll(0.1)
        self._lost(f"tick for {key} dropped: local producer queue full")

    def run(self, stop: threading.Event) -> TickerStats:
        next_refresh = 0.0
        next_report = time.monotonic() + 60
        while not stop.is_set():
            if time.monotonic() >= next_refresh:
                self.refresh()
                next_refresh = time.monotonic() + self.refresh_s
            self.emit_due()
            self.producer.poll(0)
            if time.monotonic() >= next_report:
                log.info("ticks: %s, queued %d", self.stats, len(self.producer))
                next_report = time.monotonic() + 60
            wake_ms = self.schedule.next_due_ms()
            until_tick = (wake_ms - self._now_ms()) / 1000 if wake_ms is not None else self.refresh_s
            stop.wait(max(0.0, min(until_tick, next_refresh - time.monotonic(), 1.0)))
        left = self.producer.flush(10)
        if left:
            log.warning("stopping with %d ticks undelivered", left)
        log.info("ticker stopped: %s", self.stats)
        return self.stats
