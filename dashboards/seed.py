"""Realistic demo/test data for the dashboard: N cameras over D days, generated inside ClickHouse.

Rows are produced by ``INSERT ... SELECT FROM numbers(n)`` (vectorised in the engine, so 10 million
detections take seconds, not minutes) and are deterministic for a given seed. Shape of the data:
- a diurnal crowd (peak early afternoon, quiet nights, weekends at a third), scaled per camera;
- a per-camera no-mask propensity that rises in the evening;
- per-camera fetch failure rates, plus the first camera down for the last two hours (so the cameras page
  shows a recent error and a stale last frame);
- detections consistent with frames (``faces`` rows per frame, ``nomask_faces`` of them no-mask);
- alerts: tumbling 10-minute windows per camera with at least ``alert_min_nomask`` no-mask faces;
- older alerts mostly acknowledged;
- optionally, annotated snapshot JPEGs (real dataset images with their boxes) for the newest alerts.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.schemas.events import Camera, RuleOverrides

SITES = ("north-campus", "south-campus", "downtown")
ZONES = ("entrance", "lobby", "cafeteria", "lab")
DETECTOR = "scrfd-500m"
CLASSIFIER = "mask-mbv2"
ALERT_WINDOW_S = 600


@dataclass(frozen=True)
class Seeded:
    start: datetime
    end: datetime
    camera_ids: tuple[str, ...]
    frames: int
    detections: int
    alerts: int
    snapshots: int


def _now_minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def cameras(n_cameras: int, interval_s: float, seed: int) -> list[Camera]:
    """Registry entries: sites/zones spread evenly; some source URLs carry credentials (the flow needs
    them, nobody else may see them)."""
    rng = random.Random(seed)
    out = []
    for i in range(n_cameras):
        if i % 3 == 0:
            url = f"rtsp://admin:s3cret-{seed}-{i}@10.0.{i // 250}.{i % 250 + 2}:554/stream1"
        elif i % 3 == 1:
            url = f"http://10.1.{i // 250}.{i % 250 + 2}/snapshot.jpg?user=viewer&password=pw-{seed}-{i}"
        else:
            url = f"http://10.2.{i // 250}.{i % 250 + 2}/snapshot.jpg"
        rules = RuleOverrides(min_people=3, window_s=60, cooldown_s=300) if rng.random() < 0.2 else None
        out.append(Camera(
            id=f"cam-{i + 1:03d}",
            name=f"{ZONES[(i // len(SITES)) % len(ZONES)].title()} camera {i + 1}",
            site=SITES[i % len(SITES)],
            zone=ZONES[(i // len(SITES)) % len(ZONES)],
            source_url=url,
            interval_s=interval_s,
            rules=rules or RuleOverrides(),
        ))
    return out


def seed(
    settings: Settings,
    n_cameras: int = 6,
    days: float = 3,
    interval_s: float = 60,
    end: datetime | None = None,
    seed: int = 7,
    alert_min_nomask: int = 3,
    dataset_dir: Path | None = None,
    snapshot_alerts: int = 3,
    crowd: float = 1.0,
) -> Seeded:
    """Fill the (migrated) store with ``n_cameras`` cameras' data for ``days`` before ``end``; ``crowd``
    scales how many people pass (at most 8 faces a frame)."""
    if n_cameras < 1 or days <= 0 or interval_s <= 0:
        raise ValueError("seed needs n_cameras >= 1, days > 0 and interval_s > 0")
    end = (end or _now_minute()).astimezone(UTC)
    start = end - timedelta(days=days)
    ticks = math.floor(days * 86400 / interval_s)
    rng = random.Random(seed)
    cams = [registry.put_camera(camera, settings) for camera in cameras(n_cameras, interval_s, seed)]
    ids = [c.id for c in cams]
    params: dict[str, Any] = {
        "seed": seed,
        "n": n_cameras * ticks,
        "n_cameras": n_cameras,
        "start_ms": int(start.timestamp() * 1000),
        "end_ms": int(end.timestamp() * 1000),
        "interval_ms": int(interval_s * 1000),
        "ids": ids,
        "sites": [c.site for c in cams],
        "zones": [c.zone for c in cams],
        "display": [c.display_url for c in cams],
        # Mean faces at the afternoon peak, no-mask propensity and fetch-failure rate per camera.
        "crowd": [round(crowd * rng.uniform(0.8, 4.0), 3) for _ in cams],
        "risk": [round(rng.uniform(0.03, 0.30), 3) for _ in cams],
        "flaky": [round(rng.choice([0.0, 0.002, 0.01, 0.05]), 3) for _ in cams],
        "alert_min": alert_min_nomask,
        "window_s": ALERT_WINDOW_S,
        "detector": DETECTOR,
        "classifier": CLASSIFIER,
    }
    client = store.client(settings)
    client.command(_FRAMES_SQL, parameters=params)
    in_seed = (
        "scheduled_at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC') "
        "AND scheduled_at < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC') "
        "AND has({ids:Array(String)}, camera_id)"
    )
    client.command(_HEALTH_SQL.replace("{where}", in_seed), parameters=params)
    client.command(_HEALTH_CHANGES_SQL, parameters=params)
    client.command(_DETECTIONS_SQL.replace("{where}", in_seed), parameters=params)
    client.command(_ALERTS_SQL.replace("{where}", in_seed), parameters=params)
    client.command(_ACKS_SQL, parameters=params)
    snapshots = _snapshots(settings, params, dataset_dir, snapshot_alerts) if dataset_dir else 0
    counts = store.query_rows(
        "SELECT (SELECT count() FROM frames FINAL WHERE " + in_seed + ") AS frames, "
        "(SELECT count() FROM current_detections(since = fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC'), "
        "until = fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')) WHERE " + in_seed + ") AS detections, "
        "(SELECT count() FROM alerts FINAL WHERE has({ids:Array(String)}, camera_id) "
        "AND triggered_at >= fromUnixTimestamp64Milli({start_ms:Int64}, 'UTC')) AS alerts",
        params, settings,
    )[0]
    return Seeded(start, end, tuple(ids), int(counts["frames"]), int(counts["detections"]),
                  int(counts["alerts"]), snapshots)


# One row per camera tick. u(salt, i) is a deterministic uniform [0, 1) draw; faces ~ Binomial(8, crowd/8)
# shaped by the hour of day; each face is no-mask with the camera's (evening-boosted) propensity.
_FRAMES_SQL = """
INSERT INTO frames (schema_version, camera_id, tick_id, site, zone, scheduled_at, captured_at, processed_at,
    status, width, height, faces, nomask_faces, detector_model, classifier_model, fetch_ms, inference_ms,
    snapshot_path, error)
WITH
    number % {n_cameras:UInt32} AS cam,
    intDiv(number, {n_cameras:UInt32}) AS k,
    {start_ms:Int64} + k * {interval_ms:Int64}
        + intDiv(cam * {interval_ms:Int64}, {n_cameras:UInt32}) AS t_ms,
    fromUnixTimestamp64Milli(t_ms, 'UTC') AS ts,
    (intDiv(t_ms, 1000) % 86400) / 3600.0 AS hod,
    toDayOfWeek(ts) AS dow,
    {crowd:Array(Float64)}[cam + 1] * (0.03 + exp(-pow(hod - 13.0, 2) / 14.0))
        * if(dow >= 6, 0.35, 1.0) AS lam,
    least(1.0, lam / 8) AS p_face,
    least(0.95, {risk:Array(Float64)}[cam + 1] * (1 + exp(-pow(hod - 18.5, 2) / 6.0))) AS p_nomask,
    (cityHash64({seed:UInt64}, number, 'fail') % 1000000) / 1e6 < {flaky:Array(Float64)}[cam + 1]
        OR (cam = 0 AND t_ms >= {end_ms:Int64} - 7200000) AS failed,
    if(failed, 0, arraySum(arrayMap(
        i -> (cityHash64({seed:UInt64}, number, i, 'face') % 1000000) / 1e6 < p_face, range(8)))) AS n_faces,
    arraySum(arrayMap(
        i -> i < n_faces AND (cityHash64({seed:UInt64}, number, i, 'mask') % 1000000) / 1e6 < p_nomask,
        range(8))) AS n_nomask,
    30 + (cityHash64({seed:UInt64}, number, 'lat') % 200) AS fetch_ms
SELECT
    1, {ids:Array(String)}[cam + 1], concat({ids:Array(String)}[cam + 1], ':', toString(t_ms)),
    {sites:Array(String)}[cam + 1], {zones:Array(String)}[cam + 1], ts,
    if(failed, NULL, ts + toIntervalMillisecond(fetch_ms)), ts + toIntervalMillisecond(fetch_ms + 80),
    if(failed, 'fetch_error', 'ok'), if(failed, 0, 1280), if(failed, 0, 720), n_faces, n_nomask,
    if(failed, '', {detector:String}), if(failed, '', {classifier:String}), fetch_ms,
    if(failed, 0, 40 + n_faces * 6), '',
    if(failed, concat('connection refused: ', {display:Array(String)}[cam + 1]), '')
FROM numbers({n:UInt64})
"""

_HEALTH_SQL = """
INSERT INTO camera_health (schema_version, camera_id, tick_id, site, zone, scheduled_at, observed_at, status,
    latency_ms, consecutive_failures, error)
SELECT 1, camera_id, tick_id, site, zone, scheduled_at, processed_at,
    if(status = 'ok', 'ok', if(cityHash64(tick_id) % 3 = 0, 'timeout', 'fetch_error')),
    fetch_ms, if(status = 'ok', 0, 1), error
FROM frames WHERE {where}
"""

# The first camera fails for the last two hours (see _FRAMES_SQL): it went degraded, then down.
_HEALTH_CHANGES_SQL = """
INSERT INTO camera_health_events (schema_version, event_id, camera_id, site, zone, kind, state,
    previous_state, tick_id, changed_at, consecutive_failures, status, error)
SELECT 1, concat(tick_id, ':', state), camera_id, site, zone, kind, state, previous, tick_id, scheduled_at,
    failures, 'fetch_error', error
FROM (
    SELECT camera_id, site, zone, tick_id, scheduled_at, error,
        row_number() OVER (ORDER BY scheduled_at) AS n
    FROM frames
    WHERE camera_id = {ids:Array(String)}[1] AND status != 'ok'
        AND scheduled_at >= fromUnixTimestamp64Milli({end_ms:Int64} - 7200000, 'UTC')
        AND scheduled_at < fromUnixTimestamp64Milli({end_ms:Int64}, 'UTC')
    ORDER BY scheduled_at LIMIT 3
) ARRAY JOIN [1, 3] AS at, ['degraded', 'down'] AS state, ['ok', 'degraded'] AS previous,
    ['degraded', 'down'] AS kind, [1, 3] AS failures
WHERE n = at
"""

_DETECTIONS_SQL = """
INSERT INTO detections (schema_version, camera_id, tick_id, face_index, site, zone, scheduled_at,
    processed_at, x1, y1, x2, y2, detection_score, nomask_prob, nomask, detector_model, classifier_model,
    person_id)
WITH
    (cityHash64(tick_id, face_index, 'x') % 1000) / 1000.0 AS ux,
    (cityHash64(tick_id, face_index, 'y') % 1000) / 1000.0 AS uy,
    (cityHash64(tick_id, face_index, 'p') % 1000) / 1000.0 AS up,
    face_index < nomask_faces AS is_nomask
SELECT 1, camera_id, tick_id, face_index, site, zone, scheduled_at, processed_at,
    ux * 0.9, uy * 0.8, ux * 0.9 + 0.05, uy * 0.8 + 0.09,
    0.6 + 0.4 * up, if(is_nomask, 0.5 + 0.5 * up, 0.5 * up), is_nomask, detector_model, classifier_model,
    -- Each face slot of a camera is one person for two minutes, as the flow's association would see
    -- someone who stays: people are fewer than sightings.
    concat(camera_id, ':', toString(intDiv(toUnixTimestamp(scheduled_at), 120)), '.', toString(face_index))
FROM frames ARRAY JOIN range(faces) AS face_index
WHERE {where} AND faces > 0
"""

# Tumbling windows per camera; the id is deterministic (camera, rule, window start) like the flow's.
_ALERTS_SQL = """
INSERT INTO alerts (schema_version, alert_id, camera_id, site, zone, rule, triggered_at, window_start,
    window_end, faces, nomask_faces, nomask_ratio, tick_ids, snapshot_path, message)
SELECT 1, concat(camera_id, ':nomask_count:', toString(toUnixTimestamp64Milli(w_start))), camera_id,
    any(site), any(zone), concat('>=', toString({alert_min:UInt32}), ' no-mask faces in ',
    toString({window_s:UInt32}), 's'),
    maxIf(scheduled_at, nomask_faces > 0), w_start, w_start + toIntervalSecond({window_s:UInt32}),
    sum(faces), sum(nomask_faces), countIf(nomask_faces > 0) / count(),
    groupArrayIf(50)(tick_id, nomask_faces > 0),
    '', concat(toString(sum(nomask_faces)), ' people without a mask at ', any(zone), ' (', camera_id, ')')
FROM frames
WHERE {where}
GROUP BY camera_id,
    toDateTime64(toStartOfInterval(scheduled_at, toIntervalSecond({window_s:UInt32})), 3, 'UTC') AS w_start
HAVING sum(nomask_faces) >= {alert_min:UInt32}
"""

_ACKS_SQL = """
INSERT INTO alert_acks (alert_id, acknowledged, acknowledged_by, acknowledged_at, note)
SELECT alert_id, true, 'shift-lead', triggered_at + toIntervalMinute(5 + cityHash64(alert_id) % 40),
    'seen on patrol'
FROM alerts
WHERE has({ids:Array(String)}, camera_id)
    AND triggered_at < fromUnixTimestamp64Milli({end_ms:Int64} - 86400000, 'UTC')
    AND cityHash64(alert_id, {seed:UInt64}) % 10 < 7
"""


def _snapshots(settings: Settings, params: dict[str, Any], dataset_dir: Path, n_alerts: int) -> int:
    """Annotated JPEGs (real dataset images with their no-mask boxes) for the newest alerts' frames,
    written where the flow writes them; the rows are re-inserted with the path, as a replay would."""
    import cv2

    from maskwatch.flows.snapshots import BoxedFace, save_snapshot
    from maskwatch.inference.datasets import load_dataset

    samples = [s for s in load_dataset(dataset_dir, limit=80) if "no_mask" in s.labels][:12]
    newest = store.query_rows(
        "SELECT alert_id, camera_id, arraySlice(tick_ids, 1, 3) AS ticks FROM alerts FINAL "
        "WHERE has({ids:Array(String)}, camera_id) ORDER BY triggered_at DESC LIMIT {k:UInt32}",
        params | {"k": n_alerts}, settings,
    )
    root = settings.home / "snapshots"
    tick_ids: list[str] = []
    paths: list[str] = []
    alert_paths: dict[str, str] = {}
    for row in newest:
        for tick in row["ticks"]:
            sample = samples[len(paths) % len(samples)]
            image = cv2.imread(str(sample.image))
            if image is None:
                raise ValueError(f"{sample.image}: not a readable image")
            faces = [BoxedFace((float(box[0]), float(box[1]), float(box[2]), float(box[3])),
                               label == "no_mask", 0.9 if label == "no_mask" else 0.1)
                     for box, label in zip(sample.boxes, sample.labels, strict=True)]
            scheduled = datetime.fromtimestamp(int(tick.rsplit(":", 1)[1]) / 1000, UTC)
            path = save_snapshot(root, row["camera_id"], tick, scheduled, image, faces)
            tick_ids.append(tick)
            paths.append(str(path))
            alert_paths.setdefault(row["alert_id"], str(path))
    if not paths:
        return 0
    client = store.client(settings)
    # The same frame again, carrying the snapshot path: at an equal processed_at the row inserted last
    # wins (ReplacingMergeTree), and the frame keeps its faces (they are matched on processed_at).
    client.command(
        "INSERT INTO frames SELECT * REPLACE ("
        "transform(tick_id, {ticks:Array(String)}, {paths:Array(String)}, '') AS snapshot_path) "
        "FROM frames FINAL WHERE has({ticks:Array(String)}, tick_id)",
        parameters={"ticks": tick_ids, "paths": paths},
    )
    client.command(
        "INSERT INTO alerts SELECT * REPLACE "
        "(transform(alert_id, {ids:Array(String)}, {paths:Array(String)}, '') AS snapshot_path) "
        "FROM alerts FINAL WHERE has({ids:Array(String)}, alert_id)",
        parameters={"ids": list(alert_paths), "paths": list(alert_paths.values())},
    )
    return len(paths)
