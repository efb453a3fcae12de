"""Kafka clients built from ``Settings.kafka_config()``, with maskwatch's defaults in one place."""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from maskwatch.config import Settings

# Keep undelivered records queued in librdkafka for 10 minutes, so a broker restart loses nothing.
# Ticks and dead letters are not produced idempotently: a broker that restarts without its state (Tansu on
# memory storage) turns its sequence numbers into a fatal error, and every record has a deterministic id.
# The alert producer is idempotent and starts a new session on that error (maskwatch.flows.sinks).
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "message.timeout.ms": 600_000,
    "linger.ms": 20,
}
# Group joins wait session.timeout.ms / 2 on Tansu; 6 s keeps start-up and rebalances short.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "session.timeout.ms": 6000,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": True,
}


def _config(settings: Settings | None, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    # librdkafka's own messages (e.g. "connect failed" while a broker restarts) go through Python logging,
    # so they get the same format and credential redaction as everything else.
    conf: dict[str, Any] = {"logger": logging.getLogger("rdkafka"), **defaults}
    conf.update((settings or Settings()).kafka_config())
    conf.update(overrides)
    return conf


def producer(settings: Settings | None = None, **overrides: Any) -> Producer:
    """``overrides`` use librdkafka names with '_' for '.', e.g. ``linger_ms=0``."""
    return Producer(_config(settings, PRODUCER_DEFAULTS, _dotted(overrides)))


def consumer(group_id: str, settings: Settings | None = None, **overrides: Any) -> Consumer:
    return Consumer(_config(settings, CONSUMER_DEFAULTS, {"group.id": group_id, **_dotted(overrides)}))


def admin(settings: Settings | None = None) -> AdminClient:
    return AdminClient(_config(settings, {}, {}))


def _dotted(overrides: dict[str, Any]) -> dict[str, Any]:
    return {key.replace("_", "."): value for key, value in overrides.items()}
