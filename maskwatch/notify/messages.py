"""Messages for an alert or a camera health change: Slack (text + Block Kit), Microsoft Teams (an
Adaptive Card for a Workflows webhook; the Office 365 connectors' MessageCard is retired), Telegram
(plain text), e-mail (plain text, the snapshot attached), or the event's JSON."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from maskwatch.schemas.events import Alert, AlertEvent, CameraHealthEvent, RuleInfo

MAX_ATTACHMENT = 5 * 1024**2  # a snapshot is ~100 KB; anything far larger is not one


@dataclass(frozen=True)
class Snapshot:
    """What the notifier can offer of an alert's picture: a signed link; the file, if on this host."""

    url: str = ""
    path: Path | None = None

# Camera names, sites, zones and messages are typed by people who are not the channel's readers: in a
# chat they must read as text, never as a link, a mention or formatting.


def slack_text(text: str) -> str:
    """Text for Slack's mrkdwn: &, < and > escaped, so no <link|label>, <!channel> or <@user> forms."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_CARD_MARKS = re.compile(r"([\\`*_~\[\]()|])")
_LINE_START = re.compile(r"^(?:([-+#>])|(\d+)\.)")


def teams_text(text: str) -> str:
    """Text for an Adaptive Card TextBlock or fact, which render a markdown subset: HTML escaped and every
    markdown mark backslash-escaped, so no [link](url), emphasis or list comes from camera-typed text."""
    escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    inline = _CARD_MARKS.sub(r"\\\1", " ".join(escaped.split()))
    return _LINE_START.sub(lambda m: f"\\{m[1]}" if m[1] else f"{m[2]}\\.", inline)


def one_line(text: str, limit: int = 200) -> str:
    """Text for a mail header or a chat preview: one line, at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


TITLES = {"opened": "No-mask alert", "updated": "No-mask alert, more people", "resolved": "Resolved",
          "reopened": "No-mask alert again", "acknowledged": "Acknowledged"}


def from_v1(alert: Alert) -> AlertEvent:
    """A version 1 alert (one message per alert, before alerts had a life) as the ``opened`` event."""
    kind = "nomask_ratio" if "frames with a no-mask face" in alert.rule else "nomask_people"
    return AlertEvent(
        event_id=alert.alert_id, kind="opened", alert_id=alert.alert_id, at=alert.triggered_at,
        camera_id=alert.camera_id, site=alert.site, zone=alert.zone, severity="warning",
        rule=RuleInfo(kind=kind, description=alert.rule), window_start=alert.window_start,  # type: ignore[arg-type]
        window_end=alert.window_end, people=alert.people or alert.nomask_faces,
        nomask_faces=alert.nomask_faces, faces=alert.faces, frames=0, value=float(alert.nomask_faces),
        threshold=0.0, tick_ids=alert.tick_ids, message=alert.message)


def _where(event: AlertEvent) -> str:
    name = event.camera_name or event.camera_id
    return " / ".join(part for part in (event.site, event.zone, name) if part)


def _zone(event: AlertEvent) -> ZoneInfo:
    try:
        return ZoneInfo(event.site_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _local(event: AlertEvent, at: datetime) -> str:
    """``at`` in the site's local time, which is what its people read."""
    zone = _zone(event)
    return f"{at.astimezone(zone):%Y-%m-%d %H:%M:%S} {zone.key}"


def summary(event: AlertEvent) -> str:
    """One line for notification previews and plain-text fallbacks."""
    if event.kind == "acknowledged":
        return (f"Acknowledged by {event.acknowledged_by or 'someone'}: {_where(event)} — "
                f"{event.rule.description}")
    if event.kind == "resolved":
        return f"Resolved: {_where(event)} — {event.rule.description}"
    people = f"{event.people} no-mask {'person' if event.people == 1 else 'people'}"
    return f"{TITLES[event.kind]} at {_where(event)}: {people} — rule {event.rule.description}"


def _facts(event: AlertEvent) -> list[tuple[str, str]]:
    window = f"{_local(event, event.window_start)} – {event.window_end.astimezone(_zone(event)):%H:%M:%S}"
    facts = [("Camera", event.camera_id), ("Site", event.site or "—"), ("Zone", event.zone or "—"),
             ("No-mask people", str(event.people)),
             ("Sightings", f"{event.nomask_faces} no-mask of {event.faces} faces"),
             ("Rule", event.rule.description), ("Severity", event.severity), ("Window", window),
             ("Alert id", event.alert_id)]
    if event.kind == "acknowledged":
        facts.insert(0, ("Acknowledged by", event.acknowledged_by or "—"))
        if event.note:
            facts.insert(1, ("Note", event.note))
    elif event.message:
        facts.append(("Message", event.message))
    return facts


def slack(alert: AlertEvent, snapshot: Snapshot = Snapshot()) -> dict[str, Any]:
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{slack_text(value)}"} for name, value in _facts(alert)]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text",
                                    "text": one_line(f"{TITLES[alert.kind]}: {_where(alert)}", 150)}},
        {"type": "section", "fields": fields[:10]},  # Slack allows at most 10 fields per section
    ]
    if snapshot.url:
        blocks.append({"type": "image", "image_url": snapshot.url, "alt_text": "alert snapshot"})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": slack_text(f"{alert.kind} {_local(alert, alert.at)}")}]})
    return {
        "text": slack_text(summary(alert)),  # shown in notifications and by clients without Block Kit
        "blocks": blocks,
    }


def adaptive_card(title: str, subtitle: str, facts: list[tuple[str, str]], image_url: str = "",
                  attention: bool = True) -> dict[str, Any]:
    """A Teams Workflows message holding one Adaptive Card (schema 1.4)."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": teams_text(title), "weight": "Bolder", "size": "Medium", "wrap": True,
         "color": "Attention" if attention else "Good"},
        {"type": "TextBlock", "text": teams_text(subtitle), "wrap": True, "isSubtle": True},
    ]
    if facts:
        body.append({"type": "FactSet", "facts": [{"title": teams_text(n), "value": teams_text(v)}
                                                  for n, v in facts]})
    card: dict[str, Any] = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                            "type": "AdaptiveCard", "version": "1.4", "body": body}
    if image_url:
        body.append({"type": "Image", "url": image_url, "altText": "alert snapshot", "size": "Large"})
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open snapshot", "url": image_url}]
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


def teams(alert: AlertEvent, snapshot: Snapshot = Snapshot()) -> dict[str, Any]:
    return adaptive_card(f"{TITLES[alert.kind]}: {_where(alert)}",
                         f"{alert.rule.description} · {alert.kind} {_local(alert, alert.at)}",
                         _facts(alert), snapshot.url,
                         attention=alert.kind in ("opened", "updated", "reopened"))


def telegram_text(alert: AlertEvent, snapshot: Snapshot = Snapshot(), limit: int = 4096) -> str:
    """Plain text (no parse mode, so nothing in it is markup), the link last; at most ``limit`` long."""
    lines = [f"{TITLES[alert.kind]}: {_where(alert)}", *(f"{name}: {value}" for name, value in _facts(alert))]
    link = f"\nSnapshot: {snapshot.url}" if snapshot.url else ""
    text = "\n".join(one_line(line, 300) for line in lines)
    return text[: limit - len(link)] + link


def telegram(alert: AlertEvent, snapshot: Snapshot = Snapshot(), chat_id: str = "") -> dict[str, Any]:
    return {"chat_id": chat_id, "text": telegram_text(alert, snapshot),
            "link_preview_options": {"is_disabled": not snapshot.url}}


def generic(alert: AlertEvent, snapshot: Snapshot = Snapshot()) -> dict[str, Any]:
    """The event itself (contract v2), with the snapshot's link when the notifier made one."""
    if snapshot.url and not alert.snapshot_url:
        alert = alert.model_copy(update={"snapshot_url": snapshot.url})
    return alert.model_dump(mode="json")


FORMATTERS = {"slack": slack, "teams": teams, "generic": generic}


def render(alert: AlertEvent, fmt: str, snapshot: Snapshot = Snapshot()) -> dict[str, Any]:
    return FORMATTERS[fmt](alert, snapshot)


def email(alert: AlertEvent, sender: str, to: list[str], snapshot: Snapshot = Snapshot()) -> EmailMessage:
    """The alert as a plain-text mail, with the snapshot attached when it is on this host, else linked."""
    message = EmailMessage()
    message["Subject"] = one_line(f"{TITLES[alert.kind]}: {_where(alert)} ({alert.rule.description})")
    message["From"], message["To"] = sender, ", ".join(to)
    message["X-Maskwatch-Alert-Id"] = alert.alert_id
    lines = [summary(alert), "", *(f"{name}: {value}" for name, value in _facts(alert))]
    if snapshot.url:
        lines += ["", f"Snapshot (link expires): {snapshot.url}"]
    message.set_content("\n".join(lines))
    picture = attachment(snapshot)
    if picture is not None:
        message.add_attachment(picture, maintype="image", subtype="jpeg",
                               filename=f"{alert.camera_id}-{alert.at:%Y%m%d-%H%M%S}.jpg")
    return message


def attachment(snapshot: Snapshot) -> bytes | None:
    """The snapshot's bytes when the file is on this host (and plausibly a snapshot), else None."""
    path = snapshot.path
    try:
        if path is not None and path.is_file() and path.stat().st_size <= MAX_ATTACHMENT:
            return path.read_bytes()
    except OSError:
        pass
    return None


def health_summary(event: CameraHealthEvent) -> str:
    name = event.camera_name or event.camera_id
    where = " / ".join(part for part in (event.site, event.zone, name) if part)
    if event.kind == "up":
        return f"Camera back up: {where} (since {event.changed_at:%Y-%m-%d %H:%M:%S} UTC)"
    why = f": {event.error}" if event.error else f" ({event.status})"
    return (f"Camera down: {where} after {event.consecutive_failures} failed checks in a row{why} "
            f"(since {event.changed_at:%Y-%m-%d %H:%M:%S} UTC)")


def render_health(event: CameraHealthEvent, fmt: str, chat_id: str = "") -> dict[str, Any]:
    """A camera going down or back up, in the destination's format (plain text: names are typed by
    people and errors quote what the camera answered)."""
    text = health_summary(event)
    if fmt == "slack":
        return {"text": slack_text(text)}
    if fmt == "teams":
        return adaptive_card(text, event.camera_id, [], attention=event.kind == "down")
    if fmt == "telegram":
        return {"chat_id": chat_id, "text": one_line(text, 4096),
                "link_preview_options": {"is_disabled": True}}
    return event.model_dump(mode="json")


def health_email(event: CameraHealthEvent, sender: str, to: list[str]) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = one_line(health_summary(event))
    message["From"], message["To"] = sender, ", ".join(to)
    message.set_content(health_summary(event))
    return message
