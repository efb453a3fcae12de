"""Acknowledging an alert: the person's acknowledgement is stored (``alert_acks``) and published as the
alert's ``acknowledged`` event (contract v2) on the alert topic, so chat and the services that follow
alerts learn who took it on."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from maskwatch import kafka, store
from maskwatch.config import Settings
from maskwatch.dashboards import queries
from maskwatch.notify.messages import from_v1
from maskwatch.schemas.events import Alert, AlertEvent, epoch_ms
from maskwatch.schemas.parse import validate_event

log = logging.getLogger(__name__)
PUBLISH_TIMEOUT_S = 10.0


def _latest_step(settings: Settings, alert_id: str) -> AlertEvent:
    """The alert's newest step as stored, or a version 1 alert's row as its opened event."""
    rows = store.query_rows("SELECT * FROM alert_events FINAL WHERE alert_id = {a:String} "
                            "ORDER BY at DESC, event_id DESC LIMIT 1", {"a": alert_id}, settings)
    if rows:
        return validate_event(AlertEvent, {**rows[0], "rule": json.loads(rows[0]["rule"])})
    alerts = store.query_rows("SELECT * EXCEPT (status, people, severity, updated_at) FROM alerts FINAL "
                              "WHERE alert_id = {a:String} LIMIT 1", {"a": alert_id}, settings)
    if not alerts:
        raise LookupError(f"no alert with id {alert_id!r}")
    return from_v1(validate_event(Alert, alerts[0]))


def acknowledge(settings: Settings, alert_id: str, by: str, note: str = "") -> tuple[AlertEvent, str]:
    """Store the acknowledgement and publish its event; (the event, '' or why it could not be published:
    the acknowledgement is stored either way)."""
    queries.acknowledge(settings, alert_id, by, note)
    now = datetime.now(UTC)
    who = by.strip() or "dashboard"
    event = _latest_step(settings, alert_id).model_copy(update={
        "event_id": f"{alert_id}:acknowledged:{epoch_ms(now)}", "kind": "acknowledged", "at": now,
        "acknowledged_by": who, "note": note.strip(),
        "message": f"acknowledged by {who}" + (f": {note.strip()}" if note.strip() else "")})
    event = AlertEvent.model_validate(event.model_dump())  # checked as any producer's event would be
    store.insert_models("alert_events", [event], settings)
    errors: list[str] = []
    try:
        producer = kafka.producer(settings, linger_ms=0)
        producer.produce(settings.topic_alerts, key=event.camera_id.encode(),
                         value=event.model_dump_json().encode(),
                         headers=[("schema_version", b"2"), ("kind", b"acknowledged")],
                         on_delivery=lambda err, _msg: errors.append(str(err)) if err else None)
        if producer.flush(PUBLISH_TIMEOUT_S):
            errors.append(f"the broker did not take it within {PUBLISH_TIMEOUT_S:.0f}s")
    except Exception as exc:  # the store has it; the page says the topic does not
        errors.append(f"{type(exc).__name__}: {exc}")
    if errors:
        log.warning("acknowledgement of %s stored, not published: %s", alert_id, errors[0])
    return event, errors[0] if errors else ""
