"""Every query the dashboard runs. Aggregation happens in ClickHouse, with bound parameters; polars only
shapes the (small) results. Every read is bounded by a time range and a LIMIT.

Functions take the ``Settings`` (which store) and a ``Scope`` (time range + site/zone/camera filters) and
return polars DataFrames; ``maskwatch.dashboards.data`` wraps them in a short-TTL ``st.cache_data``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import polars as pl

from maskwatch import store
from maskwatch.config import Settings

# Event tables are ReplacingMergeTrees; a replayed event is a duplicate row until a merge, so readers use
# FINAL. Duplicates share their partition (partitioned by event time), so FINAL need not merge across them.
_FINAL_SETTINGS = "SETTINGS do_not_merge_across_partitions_select_final = 1"
MAX_BUCKETS = 2000
DOWNLOAD_LIMIT = 200_000
FEED_LIMIT = 200
TABLES = ("frames", "detections", "alerts", "camera_health", "camera_health_events", "alert_acks",
          "cameras", "sites")


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


@dataclass(frozen=True)
class Scope:
    """What the analyst selected: [start, end) in UTC and optional site/zone/camera filters (empty = all)."""

    start: datetime
    end: datetime
    sites: tuple[str, ...] = ()
    zones: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("scope times must be timezone-aware")
        if self.end <= self.start:
            raise ValueError(f"time range is empty: {self.start:%Y-%m-%d %H:%M} >= {self.end:%Y-%m-%d %H:%M}")

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def previous(self) -> Scope:
        """The period of the same length just before this one (for KPI deltas)."""
        return replace(self, start=self.start - self.span, end=self.start)

    def params(self) -> dict[str, Any]:
        return {
            "start_ms": _ms(self.start),
            "end_ms": _ms(self.end),
            "sites": list(self.sites),
            "zones": list(self.zones),
            "cameras": list(self.cameras),
        }


def where(time_column: str) -> str:
    """The scope as a WHERE clause on a table with site/zone/camera_id and the given event-time column."""
    return (
        f"{time_column} >= fromUnixTimestamp64Milli({{start_ms:Int64}}, 'UTC') "
        f"AND {time_column} < fromUnixTimestamp64Milli({{end_ms:Int64}}, 'UTC') "
        "AND (empty({sites:Array(String)}) OR has({sites:Array(String)}, site)) "
        "AND (empty({zones:Array(String)}) OR has({zones:Array(String)}, zone)) "
        "AND (empty({cameras:Array(String)}) OR has({cameras:Array(String)}, camera_id))"
    )


# The faces of each frame's current row in the scope's time range (schemas/sql/005): a tick processed
# twice keeps only its newest attempt's faces, so face counts agree with the frames.
CURRENT_DETECTIONS = (
    "current_detections(since = fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC'), "
    "until = fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC'))"
)


# Estimated distinct people among faces: those the flow associated across a camera's ticks count once
# (maskwatch.flows.people); faces stored before people were tracked have no person and are not counted.
PEOPLE = "uniqExactIf(person_id, person_id != '')"
# Ranges longer than this are read from the hourly rollups (schemas/sql/008), which outlive the raw rows'
# TTL, to the hour; shorter ones from the raw rows, to the millisecond.
ROLLUP_AFTER = timedelta(days=2)


def uses_rollups(scope: Scope) -> bool:
    return scope.span > ROLLUP_AFTER


def _df(settings: Settings, sql: str, params: dict[str, Any]) -> pl.DataFrame:
    return store.query_df(sql, params, settings)


# --- store state -------------------------------------------------------------------------------------------


def missing_tables(settings: Settings) -> list[str]:
    """Dashboard tables absent from the store's database (all of them before `maskwatch store migrate`)."""
    present = _df(
        settings,
        "SELECT name FROM system.tables "
        "WHERE database = currentDatabase() AND has({names:Array(String)}, name)",
        {"names": list(TABLES)},
    )["name"].to_list()
    return [name for name in TABLES if name not in present]


def cameras(settings: Settings) -> pl.DataFrame:
    """The registry as displayed: never the source URL (it may hold credentials), only its redacted form."""
    return _df(
        settings,
        "SELECT id, name, site, zone, display_url, interval_s, enabled, rules, updated_at "
        "FROM cameras FINAL WHERE NOT deleted ORDER BY site, zone, id LIMIT 10000",
        {},
    )


def latest_snapshot(settings: Settings, camera_id: str) -> str:
    """Path of the camera's newest stored snapshot (of the last 30 days), or ''."""
    rows = _df(settings, "SELECT snapshot_path FROM frames WHERE camera_id = {camera:String} "
               "AND snapshot_path != '' AND scheduled_at >= now64(3) - INTERVAL 30 DAY "
               "ORDER BY scheduled_at DESC LIMIT 1", {"camera": camera_id})
    return str(rows["snapshot_path"][0]) if rows.height else ""


def sites(settings: Settings) -> pl.DataFrame:
    """Registered sites: id, name, timezone (their schedules are read through the registry)."""
    return _df(settings,
               "SELECT id, name, timezone FROM sites FINAL WHERE NOT deleted ORDER BY id LIMIT 1000",
               {})


# --- overview -------------------------------------------------------------------------------------------


def serving_models(settings: Settings) -> pl.DataFrame:
    """The models that processed the newest frames of the last hour, newest first (one row per pair)."""
    return _df(
        settings,
        "SELECT detector_model, classifier_model, max(processed_at) AS last_seen FROM frames "
        "WHERE processed_at >= now64(3) - INTERVAL 1 HOUR AND status = 'ok' "
        "GROUP BY detector_model, classifier_model ORDER BY last_seen DESC LIMIT 3",
        {},
    )


def kpis(settings: Settings, scope: Scope) -> pl.DataFrame:
    """One row per period ('current', 'previous'): frames, faces, nomask_faces (sightings), nomask_people
    (estimated, see ``PEOPLE``), compliance, alerts."""
    both = replace(scope, start=scope.previous().start)
    params = both.params() | {"split_ms": _ms(scope.start)}
    period = "if(toUnixTimestamp64Milli({col}) >= {{split_ms:Int64}}, 'current', 'previous')"
    if uses_rollups(scope):
        faces = _df(
            settings,
            f"SELECT {period.format(col='toDateTime64(hour, 3)')} AS period, "
            "uniqExactMerge(frames) AS frames, "
            "sum(faces) AS faces, sum(nomask_faces) AS nomask_faces, "
            "uniqMerge(nomask_people) AS nomask_people "
            f"FROM compliance_hourly WHERE {where('hour')} GROUP BY period LIMIT 2",
            params,
        )
    else:
        faces = _df(
            settings,
            f"SELECT {period.format(col='scheduled_at')} AS period, countIf(status = 'ok') AS frames, "
            "sum(faces) AS faces, sum(nomask_faces) AS nomask_faces "
            f"FROM frames FINAL WHERE {where('scheduled_at')} GROUP BY period LIMIT 2 {_FINAL_SETTINGS}",
            params,
        ).join(_df(
            settings,
            f"SELECT {period.format(col='scheduled_at')} AS period, {PEOPLE} AS nomask_people "
            f"FROM {CURRENT_DETECTIONS} WHERE nomask AND ignored = '' AND {where('scheduled_at')} "
            f"GROUP BY period LIMIT 2 {_FINAL_SETTINGS}",
            params,
        ), on="period", how="left")
    alerts = _df(
        settings,
        f"SELECT {period.format(col='triggered_at')} AS period, count() AS alerts "
        f"FROM alerts FINAL WHERE {where('triggered_at')} GROUP BY period LIMIT 2 {_FINAL_SETTINGS}",
        params,
    )
    base = pl.DataFrame({"period": ["current", "previous"]})
    out = (
        base.join(faces, on="period", how="left")
        .join(alerts, on="period", how="left")
        .with_columns(pl.col("frames", "faces", "nomask_faces", "alerts", "nomask_people").fill_null(0)
                      .cast(pl.Int64))
    )
    return out.with_columns(
        pl.when(pl.col("faces") > 0)
        .then((pl.col("faces") - pl.col("nomask_faces")) / pl.col("faces"))
        .otherwise(None)
        .alias("compliance")
    )


GRANULARITIES: dict[str, int] = {
    "5 minutes": 300,
    "15 minutes": 900,
    "hour": 3600,
    "6 hours": 6 * 3600,
    "day": 86400,
}


def auto_bucket(scope: Scope, target: int = 48) -> int:
    """The coarsest listed granularity giving at least ``target`` points (or the finest that fits)."""
    seconds = scope.span.total_seconds()
    fitting = [s for s in GRANULARITIES.values() if seconds / s <= MAX_BUCKETS]
    return next((s for s in reversed(fitting) if seconds / s >= target), fitting[0] if fitting else 86400)


def timeseries(settings: Settings, scope: Scope, bucket_s: int) -> pl.DataFrame:
    """Per time bucket: faces, nomask_faces (sightings), nomask_people (estimated), compliance, alerts;
    empty buckets filled with zeros."""
    if scope.span.total_seconds() / bucket_s > MAX_BUCKETS:
        raise ValueError(f"{bucket_s}s buckets over {scope.span} exceed {MAX_BUCKETS} points; pick coarser")
    params = scope.params() | {"bucket_s": bucket_s}
    bucket = "toStartOfInterval({col}, toIntervalSecond({{bucket_s:UInt32}}))"
    if uses_rollups(scope) and bucket_s >= 3600:
        faces = _df(
            settings,
            f"SELECT toUnixTimestamp({bucket.format(col='hour')}) AS bucket, sum(faces) AS faces, "
            "sum(nomask_faces) AS nomask_faces, uniqMerge(nomask_people) AS nomask_people "
            f"FROM compliance_hourly WHERE {where('hour')} GROUP BY bucket ORDER BY bucket "
            f"LIMIT {MAX_BUCKETS + 1}",
            params,
        )
    else:
        faces = _df(
            settings,
            f"SELECT toUnixTimestamp({bucket.format(col='scheduled_at')}) AS bucket, "
            "sum(faces) AS faces, sum(nomask_faces) AS nomask_faces "
            f"FROM frames FINAL WHERE {where('scheduled_at')} GROUP BY bucket ORDER BY bucket "
            f"LIMIT {MAX_BUCKETS + 1} {_FINAL_SETTINGS}",
            params,
        ).join(_df(
            settings,
            f"SELECT toUnixTimestamp({bucket.format(col='scheduled_at')}) AS bucket, "
            f"{PEOPLE} AS nomask_people FROM {CURRENT_DETECTIONS} "
            f"WHERE nomask AND ignored = '' AND {where('scheduled_at')} "
            f"GROUP BY bucket ORDER BY bucket LIMIT {MAX_BUCKETS + 1} {_FINAL_SETTINGS}",
            params,
        ), on="bucket", how="left")
    alerts = _df(
        settings,
        f"SELECT toUnixTimestamp({bucket.format(col='triggered_at')}) AS bucket, count() AS alerts "
        f"FROM alerts FINAL WHERE {where('triggered_at')} GROUP BY bucket ORDER BY bucket "
        f"LIMIT {MAX_BUCKETS + 1} {_FINAL_SETTINGS}",
        params,
    )
    first = datetime.fromtimestamp(math.floor(scope.start.timestamp() / bucket_s) * bucket_s, UTC)
    last = datetime.fromtimestamp(math.ceil(scope.end.timestamp() / bucket_s) * bucket_s - bucket_s, UTC)
    axis = pl.DataFrame(
        {"bucket": pl.datetime_range(first, last, timedelta(seconds=bucket_s), time_zone="UTC", eager=True)}
    )
    # Buckets travel as epoch seconds: Arrow output would turn a DateTime into a bare UInt32.
    shaped = [
        frame.with_columns(pl.from_epoch(pl.col("bucket").cast(pl.Int64), time_unit="s")
                           .dt.replace_time_zone("UTC").dt.cast_time_unit("us"))
        for frame in (faces, alerts)
    ]
    axis = axis.with_columns(pl.col("bucket").dt.cast_time_unit("us"))
    out = (
        axis.join(shaped[0], on="bucket", how="left")
        .join(shaped[1], on="bucket", how="left")
        .with_columns(pl.col("faces", "nomask_faces", "alerts", "nomask_people").fill_null(0).cast(pl.Int64))
    )
    return out.with_columns(
        pl.when(pl.col("faces") > 0)
        .then((pl.col("faces") - pl.col("nomask_faces")) / pl.col("faces"))
        .otherwise(None)
        .alias("compliance")
    )


# --- patterns -------------------------------------------------------------------------------------------


def heatmap(settings: Settings, scope: Scope) -> pl.DataFrame:
    """No-mask face detections by weekday (1 = Monday) × hour of day (UTC); only non-zero cells."""
    return _df(
        settings,
        "SELECT toDayOfWeek(scheduled_at) AS weekday, toHour(scheduled_at) AS hour, count() AS nomask_faces "
        f"FROM {CURRENT_DETECTIONS} WHERE nomask AND {where('scheduled_at')} "
        f"GROUP BY weekday, hour ORDER BY weekday, hour LIMIT 168 {_FINAL_SETTINGS}",
        scope.params(),
    )


def leaderboard(
    settings: Settings, scope: Scope, by: Literal["camera", "zone"], min_faces: int = 20, limit: int = 10
) -> pl.DataFrame:
    """Worst cameras (or site/zones) first: highest share of no-mask faces among those with ``min_faces``."""
    # A camera's site/zone are denormalised onto its rows (a moved camera shows once per place).
    keys = "camera_id, site, zone" if by == "camera" else "site, zone"
    group = "camera_id" if by == "camera" else "site, zone"
    # Aggregate each side first, then join the (small) aggregates.
    return _df(
        settings,
        f"SELECT f.*, f.nomask_faces / f.faces AS nomask_rate, a.alerts AS alerts "
        f"FROM (SELECT {keys}, sum(faces) AS faces, sum(nomask_faces) AS nomask_faces "
        f"FROM frames FINAL WHERE {where('scheduled_at')} GROUP BY {keys} "
        f"HAVING faces >= {{min_faces:UInt32}} {_FINAL_SETTINGS}) AS f "
        f"LEFT JOIN (SELECT {group}, count() AS alerts FROM alerts FINAL WHERE {where('triggered_at')} "
        f"GROUP BY {group} {_FINAL_SETTINGS}) AS a USING ({group}) "
        "ORDER BY nomask_rate DESC, f.nomask_faces DESC LIMIT {limit:UInt32}",
        scope.params() | {"min_faces": min_faces, "limit": limit},
    )


# --- cameras --------------------------------------------------------------------------------------------


def camera_status(settings: Settings, scope: Scope) -> pl.DataFrame:
    """Registry joined with health over the range: last frame, last error, uptime %, compliance."""
    health = _df(
        settings,
        "SELECT camera_id, count() AS checks, countIf(status = 'ok') AS ok_checks, "
        "nullIf(maxIf(scheduled_at, status = 'ok'), toDateTime64(0, 3, 'UTC')) AS last_frame_at, "
        "nullIf(maxIf(observed_at, status != 'ok'), toDateTime64(0, 3, 'UTC')) AS last_error_at, "
        "argMaxIf(error, observed_at, status != 'ok') AS last_error, "
        "argMax(status, scheduled_at) AS last_status "
        f"FROM camera_health FINAL WHERE {where('scheduled_at')} GROUP BY camera_id LIMIT 10000 "
        + _FINAL_SETTINGS,
        scope.params(),
    )
    faces = _df(
        settings,
        "SELECT camera_id, sum(faces) AS faces, sum(nomask_faces) AS nomask_faces "
        f"FROM frames FINAL WHERE {where('scheduled_at')} GROUP BY camera_id LIMIT 10000 {_FINAL_SETTINGS}",
        scope.params(),
    )
    registry = cameras(settings).rename({"id": "camera_id"})
    if scope.sites:
        registry = registry.filter(pl.col("site").is_in(scope.sites))
    if scope.zones:
        registry = registry.filter(pl.col("zone").is_in(scope.zones))
    if scope.cameras:
        registry = registry.filter(pl.col("camera_id").is_in(scope.cameras))
    out = registry.join(health, on="camera_id", how="left").join(faces, on="camera_id", how="left")
    return out.with_columns(
        (pl.col("ok_checks") / pl.col("checks")).alias("uptime"),
        pl.when(pl.col("faces") > 0)
        .then((pl.col("faces") - pl.col("nomask_faces")) / pl.col("faces"))
        .otherwise(None)
        .alias("compliance"),
    )


def health_changes(settings: Settings, scope: Scope, limit: int = 200) -> pl.DataFrame:
    """Cameras' health changes in the range (down, back up, degraded, recovered), newest first."""
    return _df(
        settings,
        "SELECT changed_at, camera_id, camera_name, site, zone, kind, state, previous_state, "
        "consecutive_failures, status, error "
        f"FROM camera_health_events FINAL WHERE {where('changed_at')} ORDER BY changed_at DESC "
        f"LIMIT {int(limit)} {_FINAL_SETTINGS}",
        scope.params(),
    )


# --- alerts ---------------------------------------------------------------------------------------------

_ALERT_COLUMNS = (
    "a.alert_id AS alert_id, a.triggered_at AS triggered_at, a.camera_id AS camera_id, a.site AS site, "
    "a.zone AS zone, a.rule AS rule, a.faces AS faces, a.nomask_faces AS nomask_faces, "
    "a.nomask_ratio AS nomask_ratio, a.window_start AS window_start, a.window_end AS window_end, "
    "a.message AS message, a.snapshot_path AS snapshot_path, a.tick_ids AS tick_ids, "
    "a.status AS status, a.people AS people, a.severity AS severity, "
    "k.acknowledged AS acknowledged, k.acknowledged_by AS acknowledged_by, "
    "k.acknowledged_at AS acknowledged_at, k.note AS note"
)
_ACKS = "(SELECT alert_id, acknowledged, acknowledged_by, acknowledged_at, note FROM alert_acks FINAL)"


def alerts(settings: Settings, scope: Scope, unacknowledged_only: bool = False,
           limit: int = FEED_LIMIT) -> pl.DataFrame:
    """Newest alerts first, with their acknowledgement (if any)."""
    return _df(
        settings,
        f"SELECT {_ALERT_COLUMNS} FROM (SELECT * FROM alerts FINAL WHERE {where('triggered_at')}) AS a "
        f"LEFT JOIN {_ACKS} AS k ON a.alert_id = k.alert_id "
        "WHERE NOT ({unacked:Bool} AND k.acknowledged) "
        "ORDER BY a.triggered_at DESC, a.alert_id LIMIT {limit:UInt32} " + _FINAL_SETTINGS,
        scope.params() | {"unacked": unacknowledged_only, "limit": limit},
    )


def alert(settings: Settings, alert_id: str) -> pl.DataFrame:
    """One alert (0 or 1 row) with its acknowledgement."""
    return _df(
        settings,
        f"SELECT {_ALERT_COLUMNS} FROM (SELECT * FROM alerts FINAL WHERE alert_id = {{id:String}}) AS a "
        f"LEFT JOIN {_ACKS} AS k ON a.alert_id = k.alert_id LIMIT 1",
        {"id": alert_id},
    )


def alert_life(settings: Settings, alert_id: str) -> pl.DataFrame:
    """The steps of one alert's life (opened, updated, resolved, re-opened, acknowledged), oldest first."""
    return _df(
        settings,
        "SELECT at, kind, people, nomask_faces, severity, acknowledged_by, note FROM alert_events FINAL "
        "WHERE alert_id = {id:String} ORDER BY at, event_id LIMIT 500",
        {"id": alert_id},
    )


def alert_frames(settings: Settings, alert_id: str, limit: int = 12) -> pl.DataFrame:
    """The frames inside the alert's window that had no-mask faces, newest first (their snapshots)."""
    found = alert(settings, alert_id)
    if found.is_empty():
        return pl.DataFrame(schema={"tick_id": pl.String, "scheduled_at": pl.Datetime("ms", "UTC"),
                                    "faces": pl.UInt32, "nomask_faces": pl.UInt32,
                                    "snapshot_path": pl.String})
    row = found.row(0, named=True)
    # Camera and window as literals, so the read uses the primary key and the day partitions.
    return _df(
        settings,
        "SELECT tick_id, scheduled_at, faces, nomask_faces, snapshot_path FROM frames FINAL "
        "WHERE camera_id = {camera:String} "
        "AND scheduled_at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') "
        "AND scheduled_at <= fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') "
        "AND (has({ticks:Array(String)}, tick_id) OR nomask_faces > 0) "
        f"ORDER BY scheduled_at DESC LIMIT {{limit:UInt32}} {_FINAL_SETTINGS}",
        {"camera": row["camera_id"], "start_ms": _ms(row["window_start"]), "end_ms": _ms(row["window_end"]),
         "ticks": list(row["tick_ids"]), "limit": limit},
    )


def acknowledge(settings: Settings, alert_id: str, by: str, note: str = "") -> None:
    """Record that a person has seen the alert (latest acknowledgement wins)."""
    if not alert(settings, alert_id).height:
        raise LookupError(f"no alert with id {alert_id!r}")
    store.insert_rows(
        "alert_acks",
        [{"alert_id": alert_id, "acknowledged": True, "acknowledged_by": by.strip() or "dashboard",
          "acknowledged_at": datetime.now(UTC), "note": note.strip()}],
        settings,
    )


# --- downloads ------------------------------------------------------------------------------------------

# Columns offered for download (never a camera source URL).
DOWNLOADS: dict[str, tuple[str, str]] = {
    "frames": ("scheduled_at", "camera_id, site, zone, tick_id, scheduled_at, captured_at, processed_at, "
               "status, width, height, faces, nomask_faces, detector_model, classifier_model, fetch_ms, "
               "inference_ms, snapshot_path, error"),
    "detections": ("scheduled_at", "camera_id, site, zone, tick_id, face_index, scheduled_at, processed_at, "
                   "x1, y1, x2, y2, detection_score, nomask_prob, nomask, detector_model, classifier_model"),
    "alerts": ("triggered_at", "alert_id, camera_id, site, zone, rule, triggered_at, window_start, "
               "window_end, faces, nomask_faces, nomask_ratio, tick_ids, snapshot_path, message"),
    "camera_health": ("scheduled_at", "camera_id, site, zone, tick_id, scheduled_at, observed_at, status, "
                      "latency_ms, consecutive_failures, error"),
}


def download(settings: Settings, scope: Scope, table: str, limit: int = DOWNLOAD_LIMIT) -> pl.DataFrame:
    """Rows of one table in the scope, oldest first; ``limit + 1`` rows are fetched to detect truncation."""
    if table not in DOWNLOADS:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(DOWNLOADS)}")
    time_column, columns = DOWNLOADS[table]
    source = CURRENT_DETECTIONS if table == "detections" else f"{table} FINAL"
    return _df(
        settings,
        f"SELECT {columns} FROM {source} WHERE {where(time_column)} "
        f"ORDER BY {time_column}, camera_id LIMIT {{limit:UInt32}} {_FINAL_SETTINGS}",
        scope.params() | {"limit": limit + 1},
    )
