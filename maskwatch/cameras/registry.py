"""The camera registry: which cameras exist, where their frames come from, how often to look.

Stored in the ``cameras`` table (ReplacingMergeTree by ``updated_at``); removal writes a tombstone row
(``deleted = 1``) so every reader sees the same history. Source URLs are stored as given because the
flow needs them, in a table of their own (``camera_sources``), so that the dashboard's store identity
can read and edit cameras without reading any source: it reads with ``sources=False`` (the masked
``display_url`` stands in for the source) and writes a source only when an operator types a new one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from maskwatch import metrics, store
from maskwatch.config import Settings
from maskwatch.netpolicy import SourcePolicyError, check_source_url
from maskwatch.schemas.events import Camera, CountingArea, Schedule, Site
from maskwatch.schemas.parse import SchemaError, validate_event
from maskwatch.schemas.redaction import redact_text

log = logging.getLogger(__name__)

_COLUMNS = ["id", "name", "site", "zone", "source_url", "display_url", "interval_s", "enabled", "rules",
            "area", "schedule", "allow_private_network", "updated_at", "deleted"]


class RegistryError(ValueError):
    """A registry request that cannot be done (unknown camera, bad import file); says which and why."""


def _row(camera: Camera, deleted: bool = False) -> list[Any]:
    # The cameras table's own source_url column is blanked (migration 010): sources live in camera_sources.
    return [camera.id, camera.name, camera.site, camera.zone, "", camera.display_url,
            camera.interval_s, camera.enabled, camera.rules.model_dump_json(exclude_none=True),
            camera.area.model_dump_json(), camera.schedule.model_dump_json(exclude_none=True),
            camera.allow_private_network, camera.updated_at, int(deleted)]


def _from_row(row: dict[str, Any]) -> Camera:
    row = {"source_url": row["display_url"], **row}  # a source-blind read (see _select)
    data = {key: row[key] for key in _COLUMNS if key not in ("display_url", "deleted")}
    data["rules"] = json.loads(data["rules"] or "{}")
    data["area"] = json.loads(data["area"] or "{}")
    data["schedule"] = json.loads(data["schedule"] or "{}")
    return validate_event(Camera, data)


def _cameras(rows: list[dict[str, Any]]) -> list[Camera]:
    """The rows that are cameras. Anyone with write access to the store can write a row that is not (a
    NUL in a name, broken rules JSON, a placeholder for another service's password): that camera is
    skipped with an error in the log, and every other camera stays usable."""
    cameras = []
    for row in rows:
        try:
            cameras.append(_from_row(row))
        except (SchemaError, ValueError, TypeError, KeyError) as exc:
            metrics.REGISTRY_ROWS_SKIPPED.inc()
            log.error("camera registry: skipping the row of camera %s, it is not a valid camera: %s",
                      ascii(str(row.get("id", "?"))[:80]), redact_text(str(exc))[:500])
    return cameras


def _write(camera: Camera, settings: Settings | None, deleted: bool = False, source: bool = False) -> None:
    """The camera's row; with ``source`` its source first, so no reader finds the camera without it."""
    client = store.client(settings)
    if source:
        client.insert("camera_sources", [[camera.id, camera.source_url, camera.updated_at]],
                      column_names=["id", "source_url", "updated_at"])
    client.insert("cameras", [_row(camera, deleted)], column_names=_COLUMNS)


def _select(where: str, sources: bool) -> str:
    """The registry's query. With ``sources`` each camera's newest source (a camera written before
    camera_sources existed, by an older release, still has its own); without, the masked display URL
    stands in for it, for a reader that may not read sources (the dashboard)."""
    columns = [f"c.{c} AS {c}" for c in _COLUMNS if c != "source_url"]
    if not sources:  # (not even the word: the embedded store refuses it to the dashboard's user)
        return f"SELECT {', '.join(columns)} FROM cameras AS c FINAL WHERE {where} ORDER BY c.id"
    return (f"SELECT {', '.join(columns)}, coalesce(nullIf(s.source_url, ''), c.source_url) AS source_url "
            "FROM cameras AS c FINAL LEFT JOIN (SELECT id, argMax(source_url, updated_at) AS source_url "
            f"FROM camera_sources GROUP BY id) AS s ON s.id = c.id WHERE {where} ORDER BY c.id")


def next_version(previous: Camera | Site | None) -> datetime:
    """Now, but strictly after the previous row's version (ms precision), so the newest write wins (the
    cameras and sites tables are both ReplacingMergeTrees by ``updated_at``)."""
    now = datetime.now(UTC)
    if previous is not None and now <= previous.updated_at:
        now = previous.updated_at + timedelta(milliseconds=1)
    return now


def list_cameras(settings: Settings | None = None, enabled_only: bool = False, sources: bool = True
                 ) -> list[Camera]:
    """Every camera; ``sources=False`` for a reader that may not read sources (see ``_select``)."""
    where = "c.deleted = 0" + (" AND c.enabled" if enabled_only else "")
    return _cameras(store.query_rows(_select(where, sources), settings=settings))


def get_camera(camera_id: str, settings: Settings | None = None, sources: bool = True) -> Camera | None:
    sql = _select("c.id = {id:String} AND c.deleted = 0", sources)
    cameras = _cameras(store.query_rows(sql, {"id": camera_id}, settings=settings))
    return cameras[0] if cameras else None


def require_camera(camera_id: str, settings: Settings | None = None, sources: bool = True) -> Camera:
    camera = get_camera(camera_id, settings, sources)
    if camera is None:
        raise RegistryError(f"no camera with id {camera_id!r}")
    return camera


def put_camera(camera: Camera, settings: Settings | None = None, source: bool = True) -> Camera:
    """Add or replace a camera (by id); returns it as stored. ``source=False`` keeps the stored source
    (``camera.source_url`` is then only the masked display URL a source-blind reader got)."""
    previous = get_camera(camera.id, settings, sources=False)
    if previous is None and not source:
        raise RegistryError(f"camera {camera.id}: a new camera needs its source URL")
    stored = camera.model_copy(update={"updated_at": next_version(previous)})
    _write(stored, settings, source=source)
    log.info("camera %s saved, source %s", stored.id, stored.display_url)
    return stored


def remove_camera(camera_id: str, settings: Settings | None = None) -> Camera:
    camera = require_camera(camera_id, settings, sources=False)
    _write(camera.model_copy(update={"updated_at": next_version(camera)}), settings, deleted=True)
    log.info("camera %s removed", camera_id)
    return camera


def set_enabled(camera_id: str, enabled: bool, settings: Settings | None = None) -> Camera:
    camera = require_camera(camera_id, settings, sources=False)
    if camera.enabled == enabled:
        return camera
    updated = camera.model_copy(update={"enabled": enabled, "updated_at": next_version(camera)})
    _write(updated, settings)
    log.info("camera %s %s", camera_id, "enabled" if enabled else "disabled")
    return updated


def set_area(camera_id: str, area: CountingArea, settings: Settings | None = None) -> Camera:
    """Replace a camera's counting area (which of its faces count); the flow applies it within its
    registry refresh."""
    camera = require_camera(camera_id, settings, sources=False)
    updated = camera.model_copy(update={"area": area, "updated_at": next_version(camera)})
    _write(updated, settings)
    log.info("camera %s: counting area set (%d include, %d exclude polygons, min face %d px)", camera_id,
             len(area.include), len(area.exclude), area.min_face_px)
    return updated


def set_schedule(camera_id: str, schedule: Schedule, settings: Settings | None = None) -> Camera:
    """Replace a camera's own schedule (its site's applies as well)."""
    camera = require_camera(camera_id, settings, sources=False)
    updated = camera.model_copy(update={"schedule": schedule, "updated_at": next_version(camera)})
    _write(updated, settings)
    log.info("camera %s: schedule set (%s)", camera_id, schedule.model_dump_json(exclude_none=True))
    return updated


def check_source(camera: Camera) -> None:
    """Refuse a camera whose source the fetch policy forbids (``maskwatch.netpolicy``), as a RegistryError."""
    try:
        check_source_url(camera.source_url, camera.allow_private_network)
    except SourcePolicyError as exc:
        raise RegistryError(f"camera {camera.id}: {exc}") from None


def parse_camera(data: dict[str, Any], base_dir: Path | None = None, check: bool = True) -> Camera:
    """A camera from user input (CLI, YAML, dashboard); a relative ``file://`` path is resolved against
    ``base_dir``. Every user-facing way to register a camera comes through here, so the source policy
    (no SSRF: private addresses only with ``allow_private_network``, files only under the allowed roots)
    is enforced here; ``check=False`` only validates the fields (the caller checks later)."""
    source = data.get("source_url")
    if isinstance(source, str) and source.startswith("file://") and not source.startswith("file:///"):
        relative = source[len("file://"):]
        data = {**data, "source_url": (base_dir or Path.cwd()).joinpath(relative).resolve().as_uri()}
    camera = validate_event(Camera, data)
    if check:
        check_source(camera)
    return camera


@dataclass
class ImportResult:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def load_yaml(path: Path) -> list[Camera]:
    """Every camera in a YAML file (``cameras: [...]``); all entries are checked before any is written."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"{path}: cannot read camera file: {redact_text(str(exc))}") from None
    entries = document.get("cameras") if isinstance(document, dict) else None
    if entries is None and isinstance(document, dict) and "sites" in document:
        return []  # a file of sites only (maskwatch.cameras.sites reads them)
    if not isinstance(entries, list):
        raise RegistryError(f"{path}: expected a top-level 'cameras:' list")
    cameras, problems, seen = [], [], set()
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            problems.append(f"camera #{number}: expected a mapping")
            continue
        label = f"camera #{number} ({entry.get('id', 'no id')})"
        try:
            camera = parse_camera(entry, base_dir=path.resolve().parent, check=False)
        except SchemaError as exc:
            problems.extend(f"{label}: {problem}" for problem in exc.problems)
            continue
        if camera.id in seen:
            problems.append(f"{label}: duplicate id")
        seen.add(camera.id)
        try:
            check_source(camera)
        except RegistryError as exc:
            problems.append(f"{label}: {str(exc).removeprefix(f'camera {camera.id}: ')}")
        cameras.append(camera)
    if problems:
        raise RegistryError(f"{path}: nothing imported, fix these first:\n  " + "\n  ".join(problems))
    return cameras


def import_yaml(path: Path, settings: Settings | None = None) -> ImportResult:
    """Add/update the file's cameras; idempotent: a camera whose settings did not change is not rewritten."""
    result = ImportResult()
    current = {camera.id: camera for camera in list_cameras(settings)}
    for camera in load_yaml(path):
        existing = current.get(camera.id)
        if existing is not None and existing.content_hash() == camera.content_hash():
            result.unchanged.append(camera.id)
            continue
        put_camera(camera, settings)
        (result.updated if existing else result.added).append(camera.id)
    return result
