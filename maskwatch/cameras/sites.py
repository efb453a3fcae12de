"""Sites: each site's timezone (its cameras' schedules and the dashboard's local times are read in it) and
its schedule, in the ``sites`` table (ReplacingMergeTree by ``updated_at``, removal a tombstone row), next
to the camera registry. A camera's ``site`` names one; a site nobody registered is UTC, always open.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from maskwatch import store
from maskwatch.cameras.registry import RegistryError, next_version
from maskwatch.config import Settings
from maskwatch.schemas.events import Schedule, Site
from maskwatch.schemas.parse import SchemaError, validate_event
from maskwatch.schemas.redaction import redact_text

log = logging.getLogger(__name__)

_COLUMNS = ["id", "name", "timezone", "schedule", "updated_at", "deleted"]


def _row(site: Site, deleted: bool = False) -> list[Any]:
    return [site.id, site.name, site.timezone, site.schedule.model_dump_json(exclude_none=True),
            site.updated_at, int(deleted)]


def _sites(rows: list[dict[str, Any]]) -> list[Site]:
    """The rows that are sites; a row that is not (written around this module) is skipped with an error."""
    sites = []
    for row in rows:
        try:
            data = {k: row[k] for k in _COLUMNS if k != "deleted"}
            data["schedule"] = json.loads(data["schedule"] or "{}")
            sites.append(validate_event(Site, data))
        except (SchemaError, ValueError, TypeError, KeyError) as exc:
            log.error("sites: skipping the row of site %s, it is not a valid site: %s",
                      ascii(str(row.get("id", "?"))[:80]), redact_text(str(exc))[:500])
    return sites


def list_sites(settings: Settings | None = None) -> list[Site]:
    sql = f"SELECT {', '.join(_COLUMNS)} FROM sites FINAL WHERE deleted = 0 ORDER BY id"
    return _sites(store.query_rows(sql, settings=settings))


def get_site(site_id: str, settings: Settings | None = None) -> Site | None:
    sql = f"SELECT {', '.join(_COLUMNS)} FROM sites FINAL WHERE id = {{id:String}} AND deleted = 0"
    found = _sites(store.query_rows(sql, {"id": site_id}, settings=settings))
    return found[0] if found else None


def require_site(site_id: str, settings: Settings | None = None) -> Site:
    site = get_site(site_id, settings)
    if site is None:
        raise RegistryError(f"no site with id {site_id!r} (create it with `maskwatch sites set {site_id}`)")
    return site


def put_site(site: Site, settings: Settings | None = None) -> Site:
    """Add or replace a site (by id); returns it as stored."""
    stored = site.model_copy(update={"updated_at": next_version(get_site(site.id, settings))})
    store.client(settings).insert("sites", [_row(stored)], column_names=_COLUMNS)
    log.info("site %s saved (timezone %s)", stored.id, stored.timezone)
    return stored


def set_schedule(site_id: str, schedule: Schedule, settings: Settings | None = None) -> Site:
    """Replace a site's schedule, creating the site (UTC) if it is not registered yet."""
    site = get_site(site_id, settings) or Site(id=site_id)
    return put_site(site.model_copy(update={"schedule": schedule}), settings)


def remove_site(site_id: str, settings: Settings | None = None) -> Site:
    site = require_site(site_id, settings)
    store.client(settings).insert("sites", [_row(site.model_copy(update={"updated_at": next_version(site)}),
                                                 deleted=True)], column_names=_COLUMNS)
    log.info("site %s removed", site_id)
    return site


def import_yaml(path: Path, settings: Settings | None = None) -> tuple[list[str], list[str]]:
    """Add/update the ``sites:`` of a camera file (optional; all checked before any is written): the ids
    written and those unchanged."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"{path}: cannot read the file: {redact_text(str(exc))}") from None
    entries = document.get("sites", []) if isinstance(document, dict) else []
    if not isinstance(entries, list):
        raise RegistryError(f"{path}: 'sites:' must be a list")
    found: list[Site] = []
    problems: list[str] = []
    for number, entry in enumerate(entries, start=1):
        label = f"site #{number} ({entry.get('id', 'no id') if isinstance(entry, dict) else '?'})"
        try:
            found.append(validate_event(Site, entry if isinstance(entry, dict) else {}))
        except SchemaError as exc:
            problems.extend(f"{label}: {problem}" for problem in exc.problems)
    if problems:
        raise RegistryError(f"{path}: nothing imported, fix these first:\n  " + "\n  ".join(problems))
    current = {site.id: site for site in list_sites(settings)}
    written, unchanged = [], []
    for site in found:
        old = current.get(site.id)
        same = old is not None and old.model_dump(exclude={"updated_at"}) == site.model_dump(
            exclude={"updated_at"})
        if same:
            unchanged.append(site.id)
        else:
            put_site(site, settings)
            written.append(site.id)
    return written, unchanged
