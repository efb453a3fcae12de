"""Webhook bodies for an alert or a camera health change: Slack (text + Block Kit), Microsoft Teams
(MessageCard), or the event's JSON."""

from __future__ import annotations

from typing import Any

from maskwatch.schemas.events import Alert, CameraHealthEvent

# Camera names, sites, zones and messages are typed by people who are not the channel's readers: in a
# chat they must read as text, never as a link, a mention or formatting.


def slack_text(text: str) -> str:
    """Text for Slack's mrkdwn: &, < and > escaped, so no <link|label>, <!channel> or <@user> forms."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def teams_text(text: str) -> str:
    """Text for a Teams card with markdown off: HTML escaped (the card renders a subset of it)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _where(alert: Alert) -> str:
    return " / ".join(part for part in (alert.site, alert.zone, alert.camera_id) if part)


def summary(alert: Alert) -> str:
    """One line for notification previews and plain-text fallbacks."""
    return (f"No-mask alert at {_where(alert)}: {alert.nomask_faces} of {alert.faces} faces without a mask "
            f"({alert.nomask_ratio:.0%}) — rule {alert.rule}")


def _facts(alert: Alert) -> list[tuple[str, str]]:
    window = f"{alert.window_start:%Y-%m-%d %H:%M:%S} – {alert.window_end:%H:%M:%S} UTC"
    facts = [("Camera", alert.camera_id), ("Site", alert.site or "—"), ("Zone", alert.zone or "—"),
             ("No-mask faces", f"{alert.nomask_faces} of {alert.faces} ({alert.nomask_ratio:.0%})"),
             ("Rule", alert.rule), ("Window", window), ("Alert id", alert.alert_id)]
    if alert.message:
        facts.append(("Message", alert.message))
    return facts


def slack(alert: Alert) -> dict[str, Any]:
    fields = [{"type": "mrkdwn", "text": f"*{name}*\n{slack_text(value)}"} for name, value in _facts(alert)]
    return {
        "text": slack_text(summary(alert)),  # shown in notifications and by clients without Block Kit
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"No-mask alert: {_where(alert)}"}},
            {"type": "section", "fields": fields[:10]},  # Slack allows at most 10 fields per section
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"triggered {alert.triggered_at:%Y-%m-%d %H:%M:%S} UTC"}]},
        ],
    }


def teams(alert: Alert) -> dict[str, Any]:
    return {
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "summary": teams_text(summary(alert)),
        "themeColor": "D13438",
        "title": teams_text(f"No-mask alert: {_where(alert)}"),
        "sections": [{
            "activityTitle": teams_text(alert.rule),
            "activitySubtitle": f"triggered {alert.triggered_at:%Y-%m-%d %H:%M:%S} UTC",
            "facts": [{"name": name, "value": teams_text(value)} for name, value in _facts(alert)],
            "markdown": False,  # card text is plain: no links or images from camera-controlled text
        }],
    }


def generic(alert: Alert) -> dict[str, Any]:
    return alert.model_dump(mode="json")


FORMATTERS = {"slack": slack, "teams": teams, "generic": generic}


def render(alert: Alert, fmt: str) -> dict[str, Any]:
    return FORMATTERS[fmt](alert)


def health_summary(event: CameraHealthEvent) -> str:
    name = event.camera_name or event.camera_id
    where = " / ".join(part for part in (event.site, event.zone, name) if part)
    if event.kind == "up":
        return f"Camera back up: {where} (since {event.changed_at:%Y-%m-%d %H:%M:%S} UTC)"
    why = f": {event.error}" if event.error else f" ({event.status})"
    return (f"Camera down: {where} after {event.consecutive_failures} failed checks in a row{why} "
            f"(since {event.changed_at:%Y-%m-%d %H:%M:%S} UTC)")


def render_health(event: CameraHealthEvent, fmt: str) -> dict[str, Any]:
    """A camera going down or back up, in the destination's format (plain text: names are typed by
    people and errors quote what the camera answered)."""
    text = health_summary(event)
    if fmt == "slack":
        return {"text": slack_text(text)}
    if fmt == "teams":
        return {"@type": "MessageCard", "@context": "https://schema.org/extensions",
                "summary": teams_text(text), "themeColor": "D13438" if event.kind == "down" else "107C10",
                "title": teams_text(text), "sections": [{"text": teams_text(event.camera_id),
                                                         "markdown": False}]}
    return event.model_dump(mode="json")
