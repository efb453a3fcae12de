"""``maskwatch notify``: alerts from the alert topic, and cameras going down or coming back up from the
camera-health topic, to Slack, Teams (Workflows), Telegram, e-mail and (HMAC-signed) generic webhooks, at
least once, with the alert's snapshot attached or linked. (Health changes to ``degraded``
and back are on the topic and the dashboard, not posted: one failed check is not worth a page.)

The consumer commits an alert's offset only after every matching destination has it (or the failure went to
the dead-letter topic), so a crash redelivers it; a SQLite record of (alert id, destination) pairs already
posted keeps a redelivered or re-published alert from being posted twice. A payload that is not a valid
alert goes to the dead-letter topic with its reason and the notifier carries on. Each destination has its
own token bucket (every HTTP try takes a token) and bounded exponential backoff.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maskwatch import metrics
from maskwatch.config import Settings, SnapshotLinkSettings
from maskwatch.notify.config import Destination, NotifyConfig, host_of
from maskwatch.notify.delivery import Attempt, DeliveryStore, TokenBucket, deliver, post_once, send_mail
from maskwatch.notify.messages import (
    Snapshot,
    attachment,
    email,
    from_v1,
    health_email,
    render,
    render_health,
    telegram,
    telegram_text,
)
from maskwatch.notify.signing import sign
from maskwatch.schemas.events import Alert, AlertEvent, CameraHealthEvent, DeadLetter
from maskwatch.schemas.parse import SchemaError, parse_event
from maskwatch.snapshots.links import linked_file, signed_link

log = logging.getLogger(__name__)

# Defined with every other metric in maskwatch.metrics (one registry, names the Grafana dashboard uses).
POSTS = metrics.NOTIFY_POSTS
DEAD_LETTERS = metrics.NOTIFY_DEAD_LETTERS

# An alert may wait on rate limits and backoff for minutes; don't let the group evict us meanwhile.
MAX_POLL_INTERVAL_MS = 1_800_000


def _alert(payload: bytes) -> tuple[AlertEvent, str]:
    """An alert event (contract v2), or a version 1 alert as its ``opened`` event, with the v1 alert's
    host path of its snapshot ('' for v2, which carries a link instead)."""
    try:
        version = json.loads(payload).get("schema_version", 1)
    except (ValueError, AttributeError, UnicodeDecodeError):
        version = 2  # let the parser say what is wrong
    if version == 1:
        alert = parse_event(Alert, payload)
        return from_v1(alert), alert.snapshot_path
    return parse_event(AlertEvent, payload), ""


class DeadLetterError(RuntimeError):
    """The dead-letter topic did not take a record: stop before committing past it."""


@dataclass
class NotifyStats:
    alerts: int = 0
    health: int = 0  # cameras down / back up
    posted: int = 0
    duplicates: int = 0  # already delivered to that destination (redelivery or a re-published alert)
    failed: int = 0  # gave up after retries or a permanent error; went to the dead-letter topic
    invalid: int = 0  # not an alert; went to the dead-letter topic
    retries: int = 0


class Notifier:
    """Consumes the alert topic in a consumer group and posts to the configured destinations."""

    def __init__(self, config: NotifyConfig, settings: Settings | None = None,
                 group_id: str = "maskwatch-notify", state_path: Path | None = None):
        from maskwatch import kafka

        self.settings = settings or Settings()
        self.config = config
        self.urls = {d.name: d.resolved_url() for d in config.destinations}
        self.secrets = {d.name: key for d in config.destinations if (key := d.hmac_secret()) is not None}
        self.links = SnapshotLinkSettings()
        self.buckets = {d.name: TokenBucket(d.rate) for d in config.destinations}
        self.store = DeliveryStore(state_path or self.settings.home / "notify" / "delivered.sqlite")
        self.stats = NotifyStats()
        self.consumer = kafka.consumer(group_id, self.settings, enable_auto_commit=False,
                                       auto_offset_reset="earliest",
                                       max_poll_interval_ms=MAX_POLL_INTERVAL_MS)
        self.producer = kafka.producer(self.settings, linger_ms=0)
        self._stop = threading.Event()

    def run(self, stop: threading.Event) -> NotifyStats:
        """Until ``stop`` is set; the alert in hand when it is set stays uncommitted unless finished."""
        self._stop = stop
        self.consumer.subscribe([self.settings.topic_alerts, self.settings.topic_camera_health])
        shown = ", ".join(f"{d.name}:{d.format}->{host_of(self.urls[d.name])}"
                          for d in self.config.destinations)
        log.info("notifier: destinations [%s], topics %s and %s", shown, self.settings.topic_alerts,
                 self.settings.topic_camera_health)
        try:
            while not stop.is_set():
                msg = self.consumer.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    log.warning("alert consumer: %s", msg.error())
                    continue
                if self.handle(msg):
                    self._commit(msg)
        finally:
            self.producer.flush(10)
            self.consumer.close()
            self.store.close()
            log.info("notifier stopped: %s", self.stats)
        return self.stats

    def _commit(self, msg: Any) -> None:
        from confluent_kafka import KafkaException

        try:
            self.consumer.commit(message=msg, asynchronous=False)
        except KafkaException as exc:
            # Typically a rebalance took the partition away meanwhile: its new owner gets the record
            # again, and the delivery record keeps it from being posted twice.
            log.warning("commit of %s[%d]@%d failed (%s); it may be redelivered", msg.topic(),
                        msg.partition(), msg.offset(), exc.args[0])

    def handle(self, msg: Any) -> bool:
        """True when the record is done with (delivered, duplicate or dead-lettered) and may be committed."""
        health = msg.topic() == self.settings.topic_camera_health
        try:
            payload = msg.value() or b""
            event = parse_event(CameraHealthEvent, payload) if health else _alert(payload)
        except SchemaError as exc:
            self.stats.invalid += 1
            log.error("invalid %s at %s[%d]@%d: %s", "camera health event" if health else "alert",
                      msg.topic(), msg.partition(), msg.offset(), exc)
            self.dead_letter(msg, "notify_parse", str(exc))
            return True
        if isinstance(event, CameraHealthEvent):
            if event.kind not in ("down", "up"):
                return True
            self.stats.health += 1
            what = f"camera {event.kind} {event.camera_id}"
            snapshot = Snapshot()
        else:
            self.stats.alerts += 1
            what = f"alert {event[0].alert_id} {event[0].kind}"
            snapshot = self._snapshot(*event)
        record = event if isinstance(event, CameraHealthEvent) else event[0]
        for destination in self.config.destinations:
            if not destination.matches(record):
                continue
            if not self._deliver(record.event_id, what, self._sender(record, destination, snapshot),
                                 destination, msg):
                return False
        return True

    def _snapshot(self, event: AlertEvent, host_path: str = "") -> Snapshot:
        """The alert's picture: its signed link, and the file when it is on this host (found from the
        link, or from a version 1 alert's path), so mail and Telegram can attach it."""
        root = self.settings.home / "snapshots"
        url = event.snapshot_url
        if not url and (made := signed_link(self.links, root, host_path)) is not None:
            url = made[0]
        path = Path(host_path) if host_path else None
        if path is None and url and self.links.key is not None:
            # Our own signed link: the file it names may be right here.
            path = linked_file(url, root, self.links.key.get_secret_value().encode())
        return Snapshot(url, path if path is not None and path.is_file() else None)

    def _sender(self, event: AlertEvent | CameraHealthEvent, destination: Destination, snapshot: Snapshot
                ) -> Callable[[], Attempt]:
        """One try at telling ``destination`` of ``event``, in its format."""
        timeout = self.config.retry.timeout_s
        if destination.smtp is not None:
            smtp = destination.smtp
            message = (health_email(event, smtp.sender, smtp.to) if isinstance(event, CameraHealthEvent)
                       else email(event, smtp.sender, smtp.to, snapshot))
            password = smtp.password()
            return lambda: send_mail(smtp, password, message, timeout)
        url = self.urls[destination.name]
        if isinstance(event, CameraHealthEvent):
            body = render_health(event, destination.format, destination.chat_id or "")
        elif destination.format == "telegram":
            picture = attachment(snapshot)
            if picture is not None:  # sendPhoto: the picture itself, the text as its caption
                photo_url = url.rsplit("/", 1)[0] + "/sendPhoto"
                form = {"chat_id": destination.chat_id or "", "caption": telegram_text(event, snapshot, 1024)}
                files = {"photo": (f"{event.camera_id}.jpg", picture, "image/jpeg")}
                return lambda: post_once(photo_url, None, timeout, form=form, files=files)
            body = telegram(event, snapshot, destination.chat_id or "")
        else:
            body = render(event, destination.format, snapshot)
        data = json.dumps(body).encode()
        secret = self.secrets.get(destination.name)
        return lambda: post_once(url, data, timeout, sign(secret, data) if secret else None)

    def _deliver(self, key: str, what: str, send: Callable[[], Attempt], destination: Destination, msg: Any
                 ) -> bool:
        name = destination.name
        if self.store.delivered(key, name):
            self.stats.duplicates += 1
            POSTS.labels(name, "duplicate").inc()
            log.info("%s already delivered to %s; not posting again", what, name)
            return True
        label = f"{what} -> {name} ({host_of(self.urls[name])})"
        result = deliver(send, self.config.retry, wait=self._wait, acquire=lambda: self._take_token(name),
                         label=label)
        self.stats.retries += max(0, result.attempts - 1)
        if result.interrupted:
            return False
        if result.ok:
            self.store.mark(key, name)
            self.stats.posted += 1
            POSTS.labels(name, "posted").inc()
            log.info("%s: delivered (%s %s, %d tries)", label, "SMTP" if destination.smtp else "HTTP",
                     result.status, result.attempts)
            return True
        self.stats.failed += 1
        POSTS.labels(name, "failed").inc()
        reason = f"destination {name}: gave up after {result.attempts} tries: {result.error}"
        log.error("%s: %s; sent to the dead-letter topic", label, reason)
        self.dead_letter(msg, f"notify:{name}", reason)
        return True

    def _wait(self, seconds: float) -> bool:
        """Sleep unless stopping; False means stop now."""
        return not self._stop.wait(seconds)

    def _take_token(self, name: str) -> bool:
        bucket = self.buckets[name]
        while (delay := bucket.wait_time()) > 0:
            if not self._wait(delay):
                return False
        bucket.take()
        return True

    def dead_letter(self, msg: Any, stage: str, error: str) -> None:
        value: bytes = msg.value() or b""
        key: bytes = msg.key() or b""
        record = DeadLetter(stage=stage, error=error, topic=msg.topic() or "", partition=msg.partition(),
                            offset=msg.offset(), key=key.decode(errors="replace"),
                            payload=value.decode(errors="replace"), occurred_at=datetime.now(UTC))
        failures: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        self.producer.produce(self.settings.topic_dead_letter, key=key or None,
                              value=record.model_dump_json().encode(), on_delivery=delivered)
        left = self.producer.flush(30)
        if left or failures:
            why = failures[0] if failures else "timed out"
            raise DeadLetterError(f"dead-letter topic {self.settings.topic_dead_letter} did not take the "
                                  f"record ({why}); stopping uncommitted")
        DEAD_LETTERS.labels(stage).inc()
