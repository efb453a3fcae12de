"""Pieces every page shares: the store check, the sidebar filters (one Scope for all pages), formatting."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl
import streamlit as st
from clickhouse_connect.driver.exceptions import ClickHouseError
from clickhouse_connect.driver.exceptions import Error as DriverError

from maskwatch.config import Settings
from maskwatch.dashboards import data
from maskwatch.dashboards.queries import Scope
from maskwatch.schemas.redaction import redact_text, redact_url
from maskwatch.store import StoreError

RANGES: dict[str, timedelta | None] = {
    "Last hour": timedelta(hours=1),
    "Last 24 hours": timedelta(days=1),
    "Last 7 days": timedelta(days=7),
    "Last 30 days": timedelta(days=30),
    "Custom dates": None,
}
DEFAULT_RANGE = "Last 24 hours"
STORE_ERRORS = (StoreError, ClickHouseError, DriverError, OSError)


def settings() -> Settings:
    return Settings()


def store_problem(exc: BaseException, settings: Settings) -> str:
    """What went wrong talking to the store, for a person: no traceback, no credentials."""
    where = redact_url(settings.store_url)
    text = redact_text(str(exc)).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"Cannot read the store at `{where}`: {text[:300]}\n\n"
        "Check that the store is running (`maskwatch services up` for the embedded one) and that "
        "`MASKWATCH_STORE_URL` points at it."
    )


@contextmanager
def store_errors(settings: Settings) -> Iterator[None]:
    """Show a store failure as a clear message and stop this page, instead of a traceback."""
    try:
        yield
    except STORE_ERRORS as exc:
        st.error(store_problem(exc, settings), icon=":material/cloud_off:")
        st.stop()


def check_store(settings: Settings) -> None:
    """Stop with a message when the store is unreachable or has not been migrated."""
    with store_errors(settings):
        missing = data.missing_tables(settings)
    if missing:
        st.warning(
            f"The store at `{redact_url(settings.store_url)}` has no maskwatch tables yet "
            f"(missing: {', '.join(missing)}). Run `maskwatch store migrate`, then start the flow.",
            icon=":material/database:",
        )
        st.stop()


def site_clocks(settings: Settings) -> None:
    """Each registered site's local time under the sidebar's UTC note (schedules run on it)."""
    with store_errors(settings):
        found = data.sites(settings)
    now = datetime.now(UTC)
    lines = [f"{plain(row['id'])} {now.astimezone(ZoneInfo(row['timezone'])):%a %H:%M} "
             f"({plain(row['timezone'])})"
             for row in found.head(12).iter_rows(named=True) if _known_zone(row["timezone"])]
    if lines:
        st.sidebar.caption("Local time: " + " · ".join(lines))


def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def range_end(now: datetime | None = None) -> datetime:
    """Ranges end at the next whole minute: the newest data is included and the cache key is stable."""
    now = now or datetime.now(UTC)
    return now.replace(second=0, microsecond=0) + timedelta(minutes=1)


def sidebar_scope(settings: Settings) -> Scope:
    """The time range and site/zone/camera filters, in the sidebar, shared by every page."""
    with store_errors(settings):
        registry = data.cameras(settings)
    side = st.sidebar
    side.header("Filters")
    choice = side.selectbox("Time range", list(RANGES), index=list(RANGES).index(DEFAULT_RANGE), key="range")
    span = RANGES[choice]
    if span is not None:
        end = range_end()
        start = end - span
    else:
        today = datetime.now(UTC).date()
        picked = side.date_input("Dates (UTC)", value=(today - timedelta(days=7), today), key="dates",
                                 max_value=today)
        days = list(picked) if isinstance(picked, tuple | list) else [picked]
        first: date = days[0] if days else today
        last: date = days[-1] if days else today
        start = datetime.combine(first, time(), UTC)
        end = datetime.combine(last, time(), UTC) + timedelta(days=1)
    sites = side.multiselect("Site", sorted(set(registry["site"].to_list())), key="sites")
    in_sites = registry.filter(pl.col("site").is_in(sites)) if sites else registry
    zones = side.multiselect("Zone", sorted(set(in_sites["zone"].to_list())), key="zones")
    in_zones = in_sites.filter(pl.col("zone").is_in(zones)) if zones else in_sites
    cams = side.multiselect("Camera", in_zones["id"].to_list(), key="cameras")
    scope = Scope(start=start, end=end, sites=tuple(sites), zones=tuple(zones), cameras=tuple(cams))
    st.session_state["mw_scope"] = scope
    return scope


def scope() -> Scope:
    """The Scope chosen in the sidebar on this run (set by the app before the page runs)."""
    value = st.session_state.get("mw_scope")
    if not isinstance(value, Scope):
        end = range_end()
        value = Scope(start=end - RANGES[DEFAULT_RANGE], end=end)  # type: ignore[operator]
    return value


def span_text(span: timedelta) -> str:
    """'24 hours', '7 days', '90 minutes': the length of a range as a person says it."""
    minutes = round(span.total_seconds() / 60)
    if minutes % 1440 == 0 and minutes > 1440:
        return f"{minutes // 1440} days"
    if minutes % 60 == 0:
        return f"{minutes // 60} hours" if minutes != 60 else "hour"
    return f"{minutes} minutes"


def describe(scope: Scope) -> str:
    parts = [f"{scope.start:%a %d %b %Y %H:%M} → {scope.end:%a %d %b %Y %H:%M} UTC"]
    for label, values in (("sites", scope.sites), ("zones", scope.zones), ("cameras", scope.cameras)):
        if values:
            parts.append(f"{label}: {', '.join(values)}")
    return " · ".join(parts)


# --- formatting -----------------------------------------------------------------------------------------


def pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def count(value: int) -> str:
    return f"{value:,}"


def pct_delta(current: float | None, previous: float | None) -> str | None:
    """Change in percentage points, for st.metric."""
    if current is None or previous is None:
        return None
    return f"{(current - previous) * 100:+.1f} pp"


def count_delta(current: int, previous: int) -> str | None:
    if previous == 0:
        return None if current == 0 else f"+{current:,} (none before)"
    return f"{current - previous:+,} ({(current - previous) / previous:+.0%})"


def snapshot_file(path: str, settings: Settings) -> Path | None:
    """A stored snapshot path as a readable file, only if it lies under MASKWATCH_HOME/snapshots."""
    if not path:
        return None
    root = (settings.home / "snapshots").resolve()
    candidate = Path(path)
    candidate = (candidate if candidate.is_absolute() else settings.home / candidate).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


_MARKDOWN_MARKS = re.compile(r"([!-/:-@\[-`{-~])")


def plain(value: object) -> str:
    """Text from the store (camera names, sites, zones, alert messages, camera errors: typed by operators
    or sent by cameras) for a Streamlit markdown string: every ASCII punctuation mark backslash-escaped
    (CommonMark allows it for all of them), so it shows as typed and never as a link, an image, a
    directive (``:red[...]``) or formatting; line breaks become spaces."""
    text = " ".join(str(value if value is not None else "").split())
    return _MARKDOWN_MARKS.sub(r"\\\1", text)


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def export(frame: pl.DataFrame, fmt: Literal["csv", "parquet"]) -> bytes:
    """A table as a downloadable file; lists become JSON text in CSV (CSV has no nested values), and text
    cells that a spreadsheet would run as a formula start with a ' (shown as text)."""
    buffer = io.BytesIO()
    if fmt == "parquet":
        frame.write_parquet(buffer)
    else:
        flat = frame.with_columns(
            pl.col(name).list.join(",") for name, dtype in frame.schema.items() if isinstance(dtype, pl.List)
        )
        flat = flat.with_columns(
            pl.when(pl.any_horizontal(pl.col(name).str.starts_with(mark) for mark in _FORMULA_START))
            .then(pl.lit("'") + pl.col(name))
            .otherwise(pl.col(name))
            .alias(name)
            for name, dtype in flat.schema.items()
            if dtype == pl.String
        )
        flat.write_csv(buffer)
    return buffer.getvalue()
