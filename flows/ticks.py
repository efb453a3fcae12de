"""Ticks as they come off the topic: parsed and checked, or turned into a dead letter with the reason."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, TypeGuard

from bytewax.connectors.kafka import KafkaError, KafkaSinkMessage, KafkaSourceMessage

from maskwatch import metrics
from maskwatch.schemas.events import DeadLetter, Tick
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


def parse_tick(msg: RawMessage) -> Tick | DeadLetter:
    """A valid tick, or a dead letter naming what is wrong and keeping the raw record."""
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
            return parse_event(Tick, value)
        except SchemaError as exc:
            dead = DeadLetter(stage="parse_tick", error=str(exc), occurred_at=datetime.now(UTC), **where)
    metrics.FLOW_DEAD_LETTERS.labels(dead.stage).inc()
    return dead


def is_tick(item: Tick | DeadLetter) -> TypeGuard[Tick]:
    return isinstance(item, Tick)


def dead_letter_message(dead: DeadLetter) -> KafkaSinkMessage[bytes | None, bytes | None]:
    return KafkaSinkMessage(key=dead.key.encode() or None, value=dead.model_dump_json().encode())
