"""How long the store keeps rows, changed on a store that already exists (``maskwatch store ttl``).

Migrations read ``MASKWATCH_TTL_DAYS_<TABLE>`` only when they create a table, so a store keeps the TTLs it
was made with until they are changed here. ClickHouse drops expired rows as it merges parts.
"""

from __future__ import annotations

import re

from maskwatch.config import Settings
from maskwatch.store.client import command, query_rows

# Table -> (retention setting, the time its TTL counts from).
TTL_TABLES: dict[str, tuple[str, str]] = {
    "frames": ("frames", "toDateTime(scheduled_at)"),
    "detections": ("detections", "toDateTime(scheduled_at)"),
    "alerts": ("alerts", "toDateTime(triggered_at)"),
    "alert_events": ("alerts", "toDateTime(at)"),
    "camera_health": ("camera_health", "toDateTime(scheduled_at)"),
    "camera_health_events": ("camera_health", "toDateTime(changed_at)"),
    "compliance_hourly": ("rollup_hourly", "hour"),
    "compliance_daily": ("rollup_daily", "day"),
}
_DAYS = re.compile(r"\bTTL\b.*?toIntervalDay\((\d+)\)")


def current_ttls(settings: Settings | None = None) -> dict[str, int | None]:
    """Days each table keeps its rows now (None: the table has no TTL, or does not exist)."""
    rows = query_rows("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() "
                      "AND has({names:Array(String)}, name)", {"names": list(TTL_TABLES)}, settings)
    found = {r["name"]: _DAYS.search(r["engine_full"]) for r in rows}
    return {name: int(m[1]) if (m := found.get(name)) else None for name in TTL_TABLES}


def set_ttls(days: dict[str, int], settings: Settings | None = None) -> dict[str, int]:
    """Give every table whose retention setting is in ``days`` (``frames``, ``rollup_hourly``, ...) that
    many days; returns the tables changed with their days."""
    unknown = set(days) - {setting for setting, _ in TTL_TABLES.values()}
    if unknown:
        raise ValueError(f"unknown retention setting(s) {sorted(unknown)}")
    changed = {}
    for table, (setting, since) in TTL_TABLES.items():
        if setting in days:
            if not 1 <= days[setting] <= 36500:
                raise ValueError(f"{setting}: days must be between 1 and 36500, got {days[setting]}")
            command(f"ALTER TABLE {table} MODIFY TTL {since} + INTERVAL {int(days[setting])} DAY", None,
                    settings)
            changed[table] = days[setting]
    return changed
