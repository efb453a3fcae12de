"""When alerts may be raised: a camera's and its site's :class:`~maskwatch.schemas.events.Schedule`, read in
the site's timezone.

Outside the schedule the flow still fetches, detects and stores every frame, face and health row, and
the rules still count (so an incident that goes on past opening time alerts at once); only the alert is
not raised, and it is counted in ``maskwatch_alerts_suppressed_total{reason}``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

from maskwatch.schemas.events import Schedule, parse_hours

Suppressed = Literal["", "paused", "closed", "quiet"]


def _within(spec: str, local: datetime) -> bool:
    days, start, end = parse_hours(spec)
    minute = local.hour * 60 + local.minute
    day = local.weekday()
    if start < end:
        return day in days and start <= minute < end
    # Over midnight: the range belongs to the day it starts on.
    return (day in days and minute >= start) or ((day - 1) % 7 in days and minute < end)


def suppressed(schedule: Schedule, timezone: str, at: datetime) -> Suppressed:
    """Why no alert may be raised at ``at`` (an aware datetime) under ``schedule`` read in ``timezone``,
    or ``""`` when one may.

    >>> from datetime import UTC
    >>> shop = Schedule(open_hours=["mon-fri 09:00-18:00"], quiet_hours=["12:00-13:00"])
    >>> monday = datetime(2026, 12, 7, 11, 0, tzinfo=UTC)  # 12:00 in Berlin
    >>> suppressed(shop, "Europe/Berlin", monday), suppressed(shop, "UTC", monday)
    ('quiet', '')
    >>> suppressed(shop, "UTC", monday.replace(hour=20)), suppressed(shop, "UTC", monday.replace(day=12))
    ('closed', 'closed')
    """
    if schedule.paused_until is not None and at < schedule.paused_until:
        return "paused"
    local = at.astimezone(ZoneInfo(timezone))
    if schedule.open_hours and not any(_within(spec, local) for spec in schedule.open_hours):
        return "closed"
    if any(_within(spec, local) for spec in schedule.quiet_hours):
        return "quiet"
    return ""
