"""``maskwatch cameras`` (manage the registry; source URLs always shown redacted) and ``maskwatch ticker``."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from zoneinfo import ZoneInfo

import click
from pydantic import ValidationError

from maskwatch import metrics
from maskwatch.cameras import registry, sites
from maskwatch.cameras.ticker import Ticker
from maskwatch.config import Settings
from maskwatch.schemas.events import Camera, CountingArea, Schedule, Site, parse_points
from maskwatch.schemas.parse import SchemaError, validate_event
from maskwatch.schemas.redaction import redact_text, redact_url
from maskwatch.shutdown import stop_on_signals
from maskwatch.store import StoreError

log = logging.getLogger(__name__)


class _Group(click.Group):
    """Expected failures (bad input, unknown camera, store not ready) print one clear line, no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (registry.RegistryError, SchemaError, StoreError) as exc:
            raise click.ClickException(redact_text(str(exc))) from None


def _display(camera: Camera) -> dict[str, Any]:
    data = camera.model_dump(mode="json", exclude={"source_url"})
    data["source"] = camera.display_url
    data["rules"] = camera.rules.model_dump(exclude_none=True)
    return data


def _literal_credential(url: str) -> bool:
    """True when the URL carries a password or secret query value as text (not a ``${ENV}`` placeholder)."""
    stripped = re.sub(r"\$\{[A-Z_][A-Z0-9_]*\}", "", url)
    parts = urlsplit(stripped)
    # A query value counts when redact_url would mask it and something is left after the placeholders.
    query = parse_qsl(parts.query, keep_blank_values=True)
    return bool(parts.password) or any(v and redact_url(f"x://h/?{k}=v") != f"x://h/?{k}=v" for k, v in query)


@click.group(cls=_Group)
def cameras() -> None:
    """Register, list and change cameras (stored in the ClickHouse store)."""


@cameras.command("add")
@click.argument("camera_id")
@click.argument("source_url")
@click.option("--name", default="")
@click.option("--site", default="")
@click.option("--zone", default="")
@click.option("--interval", "interval_s", type=float, default=5.0, show_default=True,
              help="Seconds between ticks.")
@click.option("--disabled", is_flag=True, help="Register without ticking it yet.")
@click.option("--rules", default="{}", help='Rule overrides as JSON, e.g. \'{"min_people": 2}\'.')
@click.option("--allow-private-network", is_flag=True,
              help="The camera is on a private/loopback/link-local network (refused otherwise).")
def add(camera_id: str, source_url: str, name: str, site: str, zone: str, interval_s: float,
        disabled: bool, rules: str, allow_private_network: bool) -> None:
    """Add or replace camera CAMERA_ID reading from SOURCE_URL (rtsp://, http(s)://, file://).

    SOURCE_URL '-' reads the URL from stdin: a password on the command line is visible in `ps` and shell
    history (or write it as ${ENV_NAME}, filled where the flow runs). Network sources must resolve to
    public addresses unless --allow-private-network is given; file:// sources must be under
    MASKWATCH_FILE_ROOTS."""
    if source_url == "-":
        source_url = sys.stdin.readline().strip()
    elif _literal_credential(source_url):
        click.echo("warning: SOURCE_URL holds a credential, which `ps` and your shell history can show; "
                   "pass '-' and the URL on stdin, or use a ${ENV_NAME} placeholder", err=True)
    try:
        overrides = json.loads(rules)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON ({exc})", param_hint="--rules") from None
    camera = registry.put_camera(registry.parse_camera(
        {"id": camera_id, "name": name, "site": site, "zone": zone, "source_url": source_url,
         "interval_s": interval_s, "enabled": not disabled, "rules": overrides,
         "allow_private_network": allow_private_network}))
    click.echo(f"saved camera {camera.id} ({camera.display_url})")


@cameras.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(as_json: bool) -> None:
    """List registered cameras."""
    found = registry.list_cameras()
    if as_json:
        for camera in found:
            click.echo(json.dumps(_display(camera)))
        return
    if not found:
        click.echo("no cameras registered")
        return
    header = ("ID", "ENABLED", "INTERVAL", "SITE", "ZONE", "SOURCE")
    rows = [(c.id, "yes" if c.enabled else "no", f"{c.interval_s:g}s", c.site, c.zone, c.display_url)
            for c in found]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False))
                   + "  " + row[-1])


@cameras.command("show")
@click.argument("camera_id")
def show(camera_id: str) -> None:
    """Show one camera as JSON."""
    camera = registry.require_camera(camera_id)
    click.echo(json.dumps(_display(camera), indent=2))


@cameras.command("remove")
@click.argument("camera_id")
def remove(camera_id: str) -> None:
    """Remove a camera (the ticker stops within its refresh period)."""
    registry.remove_camera(camera_id)
    click.echo(f"removed camera {camera_id}")


@cameras.command("enable")
@click.argument("camera_id")
def enable(camera_id: str) -> None:
    """Start ticking a camera."""
    registry.set_enabled(camera_id, True)
    click.echo(f"enabled camera {camera_id}")


@cameras.command("disable")
@click.argument("camera_id")
def disable(camera_id: str) -> None:
    """Stop ticking a camera, keeping its settings."""
    registry.set_enabled(camera_id, False)
    click.echo(f"disabled camera {camera_id}")


def _polygon(text: str) -> list[tuple[float, float]]:
    try:
        return parse_points(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@cameras.command("area")
@click.argument("camera_id")
@click.option("--include", "include", multiple=True, metavar="'x,y x,y x,y ...'",
              help="A polygon where faces count (fractions of the frame from its top left); repeatable. "
                   "None: the whole frame.")
@click.option("--exclude", "exclude", multiple=True, metavar="'x,y x,y x,y ...'",
              help="A polygon where faces never count (a poster, a screen); repeatable.")
@click.option("--min-face-px", type=int, default=0, show_default=True,
              help="Faces smaller than this (box height, pixels) are ignored.")
def area_command(camera_id: str, include: tuple[str, ...], exclude: tuple[str, ...],
                 min_face_px: int) -> None:
    """Set which of CAMERA_ID's faces count towards rules and compliance (replaces its area; with no
    options, every face counts again). Ignored faces are still stored, flagged."""
    try:
        area = CountingArea(include=[_polygon(p) for p in include], exclude=[_polygon(p) for p in exclude],
                            min_face_px=min_face_px)
    except ValidationError as exc:
        raise click.BadParameter("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                           for e in exc.errors(include_url=False))) from None
    camera = registry.set_area(camera_id, area)
    click.echo(f"camera {camera.id}: {len(area.include)} include, {len(area.exclude)} exclude polygon(s), "
               f"min face {area.min_face_px} px")


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")


def _until(until: str | None, for_: str | None) -> datetime:
    """The end of a pause from --until (ISO 8601; no offset = UTC) or --for (90s, 30m, 2h, 1d)."""
    if (until is None) == (for_ is None):
        raise click.UsageError("give one of --until or --for")
    if for_ is not None:
        m = _DURATION.match(for_.strip())
        if not m:
            raise click.BadParameter(f"{for_[:40]!r}: expected a number and s, m, h or d, e.g. 2h",
                                     param_hint="--for")
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
        return datetime.now(UTC) + timedelta(seconds=float(m[1]) * unit)
    assert until is not None
    try:
        at = datetime.fromisoformat(until.strip())
    except ValueError:
        raise click.BadParameter(f"{until[:40]!r}: expected a date and time such as 2026-12-05T08:00+01:00",
                                 param_hint="--until") from None
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def _schedule(current: Schedule, open_hours: tuple[str, ...] | None, quiet_hours: tuple[str, ...] | None,
              paused_until: datetime | bool | None = False) -> Schedule:
    """``current`` with the given parts replaced (``paused_until`` False: kept), as a clear usage error."""
    update: dict[str, Any] = {}
    if open_hours is not None:
        update["open_hours"] = list(open_hours)
    if quiet_hours is not None:
        update["quiet_hours"] = list(quiet_hours)
    if paused_until is not False:
        update["paused_until"] = paused_until
    try:
        return Schedule.model_validate({**current.model_dump(), **update})
    except ValidationError as exc:
        raise click.BadParameter("; ".join(e["msg"] for e in exc.errors(include_url=False))) from None


def _hours_options(command: Any) -> Any:
    command = click.option("--quiet", "quiet_hours", multiple=True, metavar="'[DAYS ]HH:MM-HH:MM'",
                           help="Hours without alerts even while open (lunch, cleaning); repeatable."
                           )(command)
    command = click.option("--open", "open_hours", multiple=True, metavar="'[DAYS ]HH:MM-HH:MM'",
                           help="Hours when alerts may be raised, e.g. 'mon-fri 08:00-18:00' (local to the "
                                "site); repeatable. None given: unchanged.")(command)
    return click.option("--always-open", is_flag=True, help="Drop the opening hours (alerts at any hour).")(
        command)


def _pick(values: tuple[str, ...], clear: bool) -> tuple[str, ...] | None:
    return () if clear else (values or None)


@cameras.command("schedule")
@click.argument("camera_id")
@_hours_options
@click.option("--no-quiet", is_flag=True, help="Drop the quiet hours.")
def schedule_command(camera_id: str, open_hours: tuple[str, ...], quiet_hours: tuple[str, ...],
                     always_open: bool, no_quiet: bool) -> None:
    """Set when CAMERA_ID may raise alerts, in its site's timezone (its site's schedule applies too).
    Frames, faces and health are stored at any hour."""
    camera = registry.require_camera(camera_id)
    schedule = _schedule(camera.schedule, _pick(open_hours, always_open), _pick(quiet_hours, no_quiet))
    registry.set_schedule(camera_id, schedule)
    click.echo(f"camera {camera_id}: open {', '.join(schedule.open_hours) or 'always'}; quiet "
               f"{', '.join(schedule.quiet_hours) or 'never'}")


@cameras.command("pause")
@click.argument("camera_id")
@click.option("--until", help="End of the pause, e.g. 2026-12-05T08:00+01:00 (no offset: UTC).")
@click.option("--for", "for_", metavar="DURATION", help="Length of the pause: 90s, 30m, 2h, 1d.")
def pause_command(camera_id: str, until: str | None, for_: str | None) -> None:
    """Raise no alerts of CAMERA_ID until a time (frames are still analysed and stored)."""
    end = _until(until, for_)
    registry.set_schedule(camera_id, _schedule(registry.require_camera(camera_id).schedule, None, None, end))
    click.echo(f"camera {camera_id}: alerts paused until {end:%Y-%m-%d %H:%M:%S} UTC")


@cameras.command("resume")
@click.argument("camera_id")
def resume_command(camera_id: str) -> None:
    """End a pause of CAMERA_ID's alerts now."""
    registry.set_schedule(camera_id, _schedule(registry.require_camera(camera_id).schedule, None, None, None))
    click.echo(f"camera {camera_id}: alerts resumed")


@click.group("sites", cls=_Group)
def sites_command() -> None:
    """Sites: their timezone (schedules and the dashboard's local times use it) and schedule."""


@sites_command.command("set")
@click.argument("site_id")
@click.option("--name", default=None)
@click.option("--timezone", default=None, help="IANA timezone, e.g. Europe/Berlin (new sites: UTC).")
@_hours_options
@click.option("--no-quiet", is_flag=True, help="Drop the quiet hours.")
def site_set(site_id: str, name: str | None, timezone: str | None, open_hours: tuple[str, ...],
             quiet_hours: tuple[str, ...], always_open: bool, no_quiet: bool) -> None:
    """Create or change site SITE_ID (what is not given stays as it was)."""
    current = sites.get_site(site_id) or Site(id=site_id)
    schedule = _schedule(current.schedule, _pick(open_hours, always_open), _pick(quiet_hours, no_quiet))
    data = {**current.model_dump(), "schedule": schedule.model_dump()}
    data.update({k: v for k, v in {"name": name, "timezone": timezone}.items() if v is not None})
    site = sites.put_site(validate_event(Site, data))
    click.echo(f"site {site.id}: {site.timezone}; open {', '.join(site.schedule.open_hours) or 'always'}; "
               f"quiet {', '.join(site.schedule.quiet_hours) or 'never'}")


@sites_command.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def site_list(as_json: bool) -> None:
    """List sites with their timezone, local time and schedule."""
    found = sites.list_sites()
    if as_json:
        for site in found:
            click.echo(site.model_dump_json())
        return
    if not found:
        click.echo("no sites registered (cameras of unregistered sites are on UTC, always open)")
    for site in found:
        local = datetime.now(ZoneInfo(site.timezone))
        paused = site.schedule.paused_until
        click.echo(f"{site.id}  {site.timezone} (now {local:%a %H:%M})  open "
                   f"{', '.join(site.schedule.open_hours) or 'always'}  quiet "
                   f"{', '.join(site.schedule.quiet_hours) or 'never'}"
                   + (f"  paused until {paused:%Y-%m-%d %H:%M} UTC" if paused else ""))


@sites_command.command("pause")
@click.argument("site_id")
@click.option("--until", help="End of the pause, e.g. 2026-12-05T08:00+01:00 (no offset: UTC).")
@click.option("--for", "for_", metavar="DURATION", help="Length of the pause: 90s, 30m, 2h, 1d.")
def site_pause(site_id: str, until: str | None, for_: str | None) -> None:
    """Raise no alerts of SITE_ID's cameras, zones and site until a time."""
    end = _until(until, for_)
    current = sites.get_site(site_id) or Site(id=site_id)
    sites.set_schedule(site_id, _schedule(current.schedule, None, None, end))
    click.echo(f"site {site_id}: alerts paused until {end:%Y-%m-%d %H:%M:%S} UTC")


@sites_command.command("resume")
@click.argument("site_id")
def site_resume(site_id: str) -> None:
    """End a pause of SITE_ID's alerts now."""
    sites.set_schedule(site_id, _schedule(sites.require_site(site_id).schedule, None, None, None))
    click.echo(f"site {site_id}: alerts resumed")


@cameras.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_command(path: Path) -> None:
    """Add/update sites and cameras from a YAML file (``sites:`` and ``cameras:``; idempotent; nothing is
    written if any entry is invalid)."""
    registry.load_yaml(path)  # every camera checked before the sites are written
    written, unchanged = sites.import_yaml(path)
    result = registry.import_yaml(path)
    click.echo(f"imported {path}: {len(result.added)} added, {len(result.updated)} updated, "
               f"{len(result.unchanged)} unchanged"
               + (f"; sites: {len(written)} written, {len(unchanged)} unchanged"
                  if written or unchanged else ""))


@click.group("ticker", invoke_without_command=True)
@click.option("--refresh", "refresh_s", type=float, default=5.0, show_default=True,
              help="Seconds between re-reads of the camera registry.")
@click.pass_context
def ticker_command(ctx: click.Context, refresh_s: float) -> None:
    """Emit camera ticks to the tick topic until SIGTERM (`maskwatch ticker tail` shows them)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings()
    log.info("ticker: broker %s, topic %s", settings.kafka_bootstrap, settings.topic_ticks)
    metrics.serve_metrics()
    Ticker(settings, refresh_s=refresh_s).run(stop_on_signals(log, "tick"))


@ticker_command.command("tail")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest tick, not the next one.")
@click.option("--max", "max_ticks", type=int, default=0, help="Stop after this many ticks (0: run until ^C).")
@click.option("--timeout", "timeout_s", type=float, default=0.0,
              help="Stop after this many seconds (0: never).")
def tail_command(from_beginning: bool, max_ticks: int, timeout_s: float) -> None:
    """Print ticks from the tick topic, one JSON per line."""
    from maskwatch import kafka

    settings = Settings()
    consumer = kafka.consumer(f"maskwatch-tail-{uuid.uuid4().hex[:8]}", settings,
                              auto_offset_reset="earliest" if from_beginning else "latest",
                              enable_auto_commit=False)
    consumer.subscribe([settings.topic_ticks])
    stop = stop_on_signals(log, "tick")
    deadline = time.monotonic() + timeout_s if timeout_s else float("inf")
    seen = 0
    try:
        while not stop.is_set() and time.monotonic() < deadline and (not max_ticks or seen < max_ticks):
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                log.warning("consumer: %s", msg.error())
                continue
            click.echo((msg.value() or b"").decode(errors="replace"))
            seen += 1
    finally:
        consumer.close()
