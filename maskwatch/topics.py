"""The Kafka topics maskwatch needs, created idempotently on whatever broker Settings point at."""

from __future__ import annotations

import logging
import time

from maskwatch.config import Settings

log = logging.getLogger(__name__)


class TopicError(RuntimeError):
    pass


def wanted_topics(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions. Ticks are spread over partitions (one flow worker per partition at most);
    alerts, camera health changes and dead letters are low-volume and keep one partition for total order."""
    return {settings.topic_ticks: settings.tick_partitions, settings.topic_alerts: 1,
            settings.topic_dead_letter: 1, settings.topic_camera_health: 1}


def ensure_topics(settings: Settings, timeout: float = 30.0) -> dict[str, int]:
    """Create missing topics; returns name -> partition count as the broker reports it.

    An existing topic is left alone. If it has fewer partitions than wanted a warning is logged: the
    embedded Tansu broker cannot add partitions (no CreatePartitions), so recreate it to change that.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(dict(settings.kafka_config()))
    wanted = wanted_topics(settings)
    existing = admin.list_topics(timeout=timeout).topics
    missing = [NewTopic(name, num_partitions=n, replication_factor=1)
               for name, n in wanted.items() if name not in existing]
    if missing:
        for name, future in admin.create_topics(missing, operation_timeout=timeout,
                                                request_timeout=timeout).items():
            try:
                future.result(timeout)
                log.info("created topic %s", name)
            except KafkaException as ex:
                if ex.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # lost a race with another creator
                    raise TopicError(f"cannot create topic {name}: {ex.args[0].str()}") from ex
    deadline = time.monotonic() + timeout
    while True:
        topics = admin.list_topics(timeout=timeout).topics
        found = {name: len(topics[name].partitions) for name in wanted if name in topics}
        if len(found) == len(wanted) and all(found.values()):
            break
        if time.monotonic() > deadline:
            raise TopicError(f"topics not visible on {settings.kafka_bootstrap} after {timeout:.0f}s: "
                             f"{sorted(set(wanted) - set(found))}")
        time.sleep(0.2)
    for name, count in found.items():
        if count < wanted[name]:
            log.warning("topic %s has %d partitions, %d wanted; the broker cannot add partitions, "
                        "delete and recreate the topic to change it", name, count, wanted[name])
    return found
