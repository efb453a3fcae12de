"""Ticks as they come off the topic: parsed and checked, or turned into a dead letter with the reason."""

from __future__ import annotations

import base64
import bisect
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSourceMessage

from maskwatch import metrics
from maskwatch.schemas.events import DeadLetter, Tick, epoch_ms
from maskwatch.schemas.parse import SchemaError, parse_event

# A tick is ~200 bytes of JSON; anything much bigger is not a tick, and is not parsed or copied whole.
MAX_TICK_BYTES = 64 * 1024
DEAD_LETTER_PAYLOAD_BYTES = 4096
RawMessage = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]


def _text(raw: bytes | None) -> str:
    if raw is None:
        return ""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()


def parse_tick(msg: RawMessage, max_age_s: float = 7 * 86400, max_ahead_s: float = 120,
               now: datetime | None = None) -> Tick | DeadLetter:
    """A valid tick, or a dead letter naming what is wrong and keeping the raw record.

    A tick scheduled more than ``max_ahead_s`` after ``now`` (wall clock) or more than ``max_age_s`` before
    it is refused: event time moves with ticks, so one far-future tick would make every real tick of its
    camera late, and dates near the ends of the calendar overflow the windowing arithmetic."""
    metrics.TICKS_IN.inc()
    record = msg.msg if isinstance(msg, KafkaError) else msg
    value = record.value or b""
    oversized = len(value) > MAX_TICK_BYTES
    where: dict[str, Any] = {
        "topic": record.topic or "", "partition": record.partition if record.partition is not None else -1,
        "offset": record.offset if record.offset is not None else -1,
        "key": _text(record.key[:DEAD_LETTER_PAYLOAD_BYTES] if record.key else record.key),
        # An oversized record keeps its head only; topic/partition/offset still point at all of it.
        "payload": _text(value[:DEAD_LETTER_PAYLOAD_BYTES] if oversized else record.value),
    }
    dead: DeadLetter | None = None
    if isinstance(msg, KafkaError):
        dead = DeadLetter(stage="consume_tick", error=str(msg.err), occurred_at=datetime.now(UTC), **where)
    elif oversized:
        dead = DeadLetter(stage="parse_tick", occurred_at=datetime.now(UTC), **where,
                          error=f"tick of {len(value)} bytes is over the {MAX_TICK_BYTES}-byte limit; "
                                f"payload truncated to its first {DEAD_LETTER_PAYLOAD_BYTES} bytes")
    else:
        try:
            tick = parse_event(Tick, value)
        except SchemaError as exc:
            dead = DeadLetter(stage="parse_tick", error=str(exc), occurred_at=datetime.now(UTC), **where)
        else:
            now = now or datetime.now(UTC)
            earliest, latest = now - timedelta(seconds=max_age_s), now + timedelta(seconds=max_ahead_s)
            if earliest <= tick.scheduled_at <= latest:
                return tick
            dead = DeadLetter(stage="parse_tick", occurred_at=now, **where,
                              error=f"scheduled_at {tick.scheduled_at.isoformat()} is outside the accepted "
                                    f"band {earliest.isoformat(timespec='seconds')} .. "
                                    f"{latest.isoformat(timespec='seconds')} "
                                    "(MASKWATCH_FLOW_TICK_MAX_AGE_S / _TICK_MAX_AHEAD_S)")
    metrics.FLOW_DEAD_LETTERS.labels(dead.stage).inc()
    return dead


# Tick times remembered per camera to recognise a second delivery (a producer retry, a second ticker).
# Redeliveries come within seconds; 64 ticks is minutes of a camera's history and a small recovery state.
REMEMBERED_TICKS = 64


@dataclass
class SeenTicks:
    """A camera's most recent tick times (epoch ms), oldest first, at most REMEMBERED_TICKS."""

    recent: list[int] = field(default_factory=list)


def first_delivery(seen: SeenTicks | None, tick: Tick) -> tuple[SeenTicks, list[Tick]]:
    """The tick, unless this camera's tick of the same scheduled time already came: then nothing, so the
    rules count it once and it is fetched and stored once. Kept by Bytewax per camera and recovered with
    the rest of the state, so a replay after a crash is not mistaken for a duplicate."""
    seen = seen or SeenTicks()
    ms = epoch_ms(tick.scheduled_at)
    if ms in seen.recent:
        metrics.FLOW_DROPPED_TICKS.labels("duplicate").inc()
        return seen, []
    bisect.insort(seen.recent, ms)
    del seen.recent[:-REMEMBERED_TICKS]
    return seen, [tick]


def is_tick(item: Tick | DeadLetter) -> TypeGuard[Tick]:
    return isinstance(item, Tick)


def dead_letter_message(dead: DeadLetter) -> KafkaSinkMessage[bytes | None, bytes | None]:
    return KafkaSinkMessage(key=dead.key.encode() or None, value=dead.model_dump_json().encode())
