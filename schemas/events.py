"""Event and registry models: the one definition of every record that crosses a process boundary.

Kafka payloads are these models as JSON; ClickHouse tables (``schemas/sql``) have one column per field;
``schemas/json`` holds the JSON Schemas generated from them (``python -m maskwatch.schemas.generate``).
Every event
carries ``schema_version`` so a consumer can refuse or upgrade a payload it does not understand.
Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from maskwatch.schemas.redaction import redact_text, redact_url

SCHEMA_VERSION = 1

# Camera ids are Kafka keys, ClickHouse keys and the prefix of tick ids ("<camera>:<ms>"), so no colon.
CAMERA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SOURCE_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")


def _utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (ClickHouse returns them so); aware ones are converted."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
CameraId = Annotated[str, Field(pattern=CAMERA_ID_PATTERN, description="Registry id of the camera.")]
# "<camera id>:<scheduled epoch ms>": ASCII only, so no tick id can carry a NUL, a lone surrogate or markup.
TICK_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}:-?[0-9]{1,16}$"
TickId = Annotated[str, Field(pattern=TICK_ID_PATTERN, max_length=82, description="'<camera_id>:<ms>'")]
# Control characters (NUL among them) and lone surrogates cannot be stored or shown safely anywhere.
_UNSAFE_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029]")
MAX_TEXT = 8192  # a dead letter keeps 4 KiB of its record, base64 if binary


def clean_text(value: str) -> str:
    """Free text as every sink can take it: unsafe characters replaced, at most MAX_TEXT characters,
    credentials in URLs masked (an error message may quote a camera URL)."""
    return redact_text(_UNSAFE_CHARS.sub("\ufffd", value[: MAX_TEXT * 2]))[:MAX_TEXT]


def _printable(value: str) -> str:
    if _UNSAFE_CHARS.search(value):
        raise ValueError("must not contain control characters or unpaired surrogates")
    if value != value.strip():
        raise ValueError("must not start or end with white space")
    return value


# Redacted, cleaned free text (error messages, alert messages, dead-letter payloads).
SafeText = Annotated[str, AfterValidator(clean_text)]
# What people type and read: a camera's name. Refused (not cleaned) when it holds anything unsafe.
DisplayName = Annotated[str, Field(max_length=128), AfterValidator(_printable)]
# Site and zone are also parts of rule scope keys ("zone:<site>/<zone>"), so no '/' or ':'.
Label = Annotated[str, Field(max_length=64, pattern=r"^[^/:]*$"), AfterValidator(_printable)]


def tick_id(camera_id: str, scheduled_ms: int) -> str:
    """Deterministic, so a replayed or re-emitted tick is recognised downstream and deduplicated."""
    return f"{camera_id}:{scheduled_ms}"


def epoch_ms(ts: datetime) -> int:
    """Milliseconds since the Unix epoch of an aware datetime, as the ticker counts them."""
    return round(ts.timestamp() * 1000)


class Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=SCHEMA_VERSION)


class Tick(Event):
    """"Look at this camera now." Carries no URL: the flow resolves the source from the registry."""

    camera_id: CameraId
    tick_id: TickId = Field(description="f'{camera_id}:{scheduled epoch ms}', as the ticker writes it")
    scheduled_at: UtcDatetime
    emitted_at: UtcDatetime

    @model_validator(mode="after")
    def _tick_id_is_derived(self) -> Tick:
        # The id is the tick's identity downstream (rows, dedup, alerts): it must be the one the ticker
        # derives, never a free string a producer chose.
        if self.tick_id != tick_id(self.camera_id, epoch_ms(self.scheduled_at)):
            raise ValueError("tick_id must be '<camera_id>:<scheduled_at in epoch ms>'")
        return self


class FrameResult(Event):
    """One processed tick of one camera (also written when the frame could not be fetched)."""

    camera_id: CameraId
    tick_id: TickId
    site: Label = ""
    zone: Label = ""
    scheduled_at: UtcDatetime
    captured_at: UtcDatetime | None = None
    processed_at: UtcDatetime
    status: Literal["ok", "fetch_error", "decode_error", "inference_error"]
    width: int = Field(default=0, ge=0)
    height: int = Field(default=0, ge=0)
    faces: int = Field(default=0, ge=0, description="Faces that count: inside the camera's area and big "
                       "enough (its detections rows also hold the ignored ones, flagged).")
    nomask_faces: int = Field(default=0, ge=0, description="Of those, the faces without a mask.")
    detector_model: str = ""
    classifier_model: str = ""
    fetch_ms: float = Field(default=0.0, ge=0)
    inference_ms: float = Field(default=0.0, ge=0)
    snapshot_path: str = Field(default="", description="Saved (annotated) frame for the dashboard, or ''.")
    error: SafeText = ""


class FaceDetection(Event):
    """One face found on a frame and its mask classification. Box corners are fractions of the frame."""

    camera_id: CameraId
    tick_id: TickId
    face_index: int = Field(ge=0)
    site: Label = ""
    zone: Label = ""
    scheduled_at: UtcDatetime
    processed_at: UtcDatetime = Field(
        description="The processed_at of the frame row it was found on: a tick processed again (a replay "
        "after a crash) gets a new frame row and new faces, and readers take the faces of the newest row."
    )
    x1: float = Field(ge=0, le=1)
    y1: float = Field(ge=0, le=1)
    x2: float = Field(ge=0, le=1)
    y2: float = Field(ge=0, le=1)
    detection_score: float = Field(ge=0, le=1)
    nomask_prob: float = Field(ge=0, le=1, description="P(no mask); an incorrectly worn mask counts as none.")
    nomask: bool
    detector_model: str
    classifier_model: str
    ignored: Literal["", "outside", "excluded", "small"] = Field(
        default="", description="Why the face counts towards neither rules nor compliance: its centre is "
        "outside every include polygon, inside an exclude polygon, or it is smaller than min_face_px. "
        "'' = it counts.")
    person_id: str = Field(
        default="", max_length=100, description="The person this face was associated with across the "
        "camera's consecutive ticks (position and size): '<tick_id>.<face_index>' of the person's first "
        "sighting. '' for ignored faces.")


class Alert(Event):
    """A camera broke its no-mask rule within a window. ``triggered_at`` is event time (the tick's
    scheduled time), so a replay produces the same alert id and row."""

    alert_id: str = Field(pattern=r"^[\x21-\x7e]{1,128}$", description="Deterministic id (printable ASCII).")
    camera_id: CameraId
    site: Label = ""
    zone: Label = ""
    rule: SafeText = Field(description="Human-readable rule that fired, e.g. '>=3 no-mask faces in 60s'.")
    triggered_at: UtcDatetime
    window_start: UtcDatetime
    window_end: UtcDatetime
    faces: int = Field(ge=0)
    nomask_faces: int = Field(ge=0)
    nomask_ratio: float = Field(ge=0, le=1)
    tick_ids: list[TickId] = Field(default_factory=list, max_length=64)
    snapshot_path: str = ""
    message: SafeText = ""
    status: Literal["open", "resolved"] = Field(default="open", description="where its life is now")
    people: int = Field(default=0, ge=0, description="distinct no-mask people in the window")
    severity: Literal["warning", "critical"] = "warning"
    updated_at: UtcDatetime | None = Field(default=None, description="event time of its latest step")


ALERT_EVENT_VERSION = 2
AlertEventKind = Literal["opened", "updated", "resolved", "acknowledged", "reopened"]
RuleKind = Literal["nomask_people", "nomask_in_frame", "nomask_dwell", "nomask_ratio"]
AlertId = Annotated[str, Field(pattern=r"^[\x21-\x7e]{1,128}$",
                               description="Deterministic id (printable ASCII).")]


class RuleInfo(BaseModel):
    """The rule an alert is about, and the settings it was judged by."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    kind: RuleKind
    description: SafeText = Field(description="e.g. '>=3 no-mask people in 60s'")
    parameters: dict[Annotated[str, Field(pattern=r"^[a-z_]{1,40}$")], float] = Field(
        default_factory=dict, max_length=16, description="e.g. {'min_people': 3, 'window_s': 60}")


class AlertEvent(BaseModel):
    """One step in the life of an alert, on the alert topic (keyed by camera id); every step of one alert
    carries its ``alert_id``. ``opened``: a rule first held; ``updated``: it holds with a higher figure
    (more people); ``resolved``: no rule held for a whole window; ``reopened``: one held again within the
    cool-down after that (the same alert); ``acknowledged``: someone took it on (``acknowledged_by``).
    Times are event time (the ticks'), except an acknowledgement's, which is when it was made.
    ``event_id`` is deterministic: a replay after a crash repeats ids, and consumers drop the repeats.

    Version 2 of the alert contract; version 1 (:class:`Alert`, one message per alert) is what the topic
    carried before: see docs/alerts.md for the migration."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    schema_version: Literal[2] = 2  # ALERT_EVENT_VERSION
    event_id: str = Field(pattern=r"^[\x21-\x7e]{1,200}$", description="f'{alert_id}:{kind}:{epoch ms}'")
    kind: AlertEventKind
    alert_id: AlertId
    at: UtcDatetime
    camera_id: CameraId = Field(description="The camera (for a zone or site alert: the one that saw the "
                                            "latest no-mask face).")
    camera_name: DisplayName = ""
    site: Label = ""
    zone: Label = ""
    scope: Literal["camera", "zone", "site"] = "camera"
    site_timezone: str = Field(default="UTC", max_length=64, description="IANA name; local times use it")
    severity: Literal["warning", "critical"] = Field(
        description="critical when the rule's figure is at least twice its threshold")
    rule: RuleInfo
    window_start: UtcDatetime
    window_end: UtcDatetime
    people: int = Field(ge=0, description="distinct no-mask people in the window")
    nomask_faces: int = Field(ge=0, description="no-mask sightings in the window")
    faces: int = Field(ge=0)
    frames: int = Field(ge=0)
    value: float = Field(description="the rule's figure (people, seconds, share)")
    threshold: float
    tick_ids: list[TickId] = Field(default_factory=list, max_length=64)
    snapshot_url: str = Field(default="", max_length=4096,
                              description="signed, expiring https:// link to the annotated snapshot, or ''")
    snapshot_expires_at: UtcDatetime | None = None
    acknowledged_by: DisplayName = ""
    note: SafeText = ""
    message: SafeText = ""

    @model_validator(mode="after")
    def _link(self) -> AlertEvent:
        if self.snapshot_url and not self.snapshot_url.startswith(("https://", "http://127.0.0.1",
                                                                   "http://localhost")):
            raise ValueError("snapshot_url must be an https:// link")
        return self


class CameraHealth(Event):
    """Per tick: could the camera be read, how long it took, how many failures in a row, and the
    camera's state derived from them (``ok``, ``degraded`` after a failure, ``down`` after several)."""

    camera_id: CameraId
    tick_id: TickId
    site: Label = ""
    zone: Label = ""
    scheduled_at: UtcDatetime
    observed_at: UtcDatetime
    status: Literal[
        "ok", "fetch_error", "decode_error", "timeout", "blocked", "oversized", "skipped"
    ] = Field(
        description="This tick's outcome: blocked = the source address is refused by the network policy "
                    "(no request made); oversized = the image is over the byte or pixel limits; skipped = "
                    "not fetched: the camera is backed off after failing repeatedly (the error says until "
                    "when).")
    latency_ms: float = Field(default=0.0, ge=0)
    consecutive_failures: int = Field(default=0, ge=0)
    state: Literal["ok", "degraded", "down"] = "ok"
    error: SafeText = ""


HealthState = Literal["ok", "degraded", "down"]


class CameraHealthEvent(Event):
    """A camera's health changed: published on the camera-health topic (keyed by camera id), stored, and
    delivered by the notifier. ``kind`` says what changed: ``degraded`` (ok -> degraded), ``down``
    (-> down), ``up`` (down -> ok: back up), ``recovered`` (degraded -> ok). Changes are debounced: a camera
    goes down only after ``MASKWATCH_FLOW_HEALTH_DOWN_AFTER`` failed ticks in a row, and back to ok only
    after ``MASKWATCH_FLOW_HEALTH_RECOVER_AFTER`` good ones."""

    event_id: str = Field(max_length=400, description="f'{tick_id}:{state}': the same change is one event, "
                                                     "however often it is replayed")
    camera_id: CameraId
    camera_name: DisplayName = ""
    site: Label = ""
    zone: Label = ""
    kind: Literal["degraded", "down", "up", "recovered"]
    state: HealthState
    previous_state: HealthState
    tick_id: TickId = Field(description="the tick that changed the state")
    changed_at: UtcDatetime = Field(description="that tick's scheduled time")
    consecutive_failures: int = Field(default=0, ge=0)
    status: str = Field(default="", max_length=32, description="that tick's outcome (CameraHealth.status)")
    error: SafeText = ""


class DeadLetter(Event):
    """A record a stage could not process, kept with its reason instead of being dropped."""

    stage: str = Field(description="Where it failed, e.g. 'parse_tick', 'fetch', 'sink'.")
    error: SafeText
    topic: str = ""
    partition: int = -1
    offset: int = -1
    key: SafeText = ""
    payload: SafeText = Field(default="", description="The original record as text (bad bytes replaced).")
    occurred_at: UtcDatetime


class RuleOverrides(BaseModel):
    """Per-camera overrides of the flow's no-mask rules; unset fields use the flow's defaults. A threshold
    of 0 turns that rule off for the camera."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    min_people: int | None = Field(
        default=None, ge=0, description="distinct no-mask people within window_s that raise an alert")
    min_people_in_frame: int | None = Field(
        default=None, ge=0, description="no-mask people on one frame that raise an alert")
    min_dwell_s: float | None = Field(
        default=None, ge=0, description="seconds one no-mask person stays in view before an alert")
    nomask_ratio: float | None = Field(
        default=None, ge=0, le=1, description="share of a window's frames showing a no-mask face")
    min_frames: int | None = Field(default=None, ge=1, description="frames the ratio rule needs")
    window_s: float | None = Field(default=None, gt=0)
    cooldown_s: float | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: object) -> object:
        # Until 0.2 the count rule counted sightings as `min_nomask_faces`; rows and files written then
        # keep working, read as the people rule they now mean.
        if isinstance(data, dict) and "min_nomask_faces" in data:
            data = dict(data)
            old = data.pop("min_nomask_faces")
            data.setdefault("min_people", old)
        return data


Point = Annotated[tuple[Annotated[float, Field(ge=0, le=1)], Annotated[float, Field(ge=0, le=1)]],
                  Field(description="(x, y) as fractions of the frame's width and height, from its top left")]
Polygon = Annotated[list[Point], Field(min_length=3, max_length=64)]


POINTS_FORMAT = "'x,y x,y x,y ...' with x and y between 0 and 1"


def parse_points(text: str) -> list[tuple[float, float]]:
    """A polygon as people type it, ``'x,y x,y x,y'`` (fractions of the frame), as points; ValueError
    otherwise (the ranges are checked where the points become a :class:`CountingArea`).

    >>> parse_points("0,0 0.5,0 0.5,1")
    [(0.0, 0.0), (0.5, 0.0), (0.5, 1.0)]
    """
    try:
        return [(float(x), float(y)) for x, y in (pair.split(",") for pair in text.split())]
    except ValueError:
        raise ValueError(f"{text[:80]!r}: expected {POINTS_FORMAT}") from None


class CountingArea(BaseModel):
    """Which of a camera's faces count towards rules and compliance. A face counts when the centre of its
    box lies inside one of ``include`` (or ``include`` is empty), inside none of ``exclude``, and its box
    is at least ``min_face_px`` pixels high. Other faces are still stored, flagged with why they were
    ignored.

    Example (a doorway on the left half, without the poster at its top)::

        CountingArea(include=[[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]],
                     exclude=[[(0.1, 0), (0.4, 0), (0.4, 0.2), (0.1, 0.2)]], min_face_px=24)
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    include: list[Polygon] = Field(default_factory=list, max_length=16,
                                   description="polygons where faces count; empty = the whole frame")
    exclude: list[Polygon] = Field(default_factory=list, max_length=16,
                                   description="polygons where faces never count (posters, screens, mirrors)")
    min_face_px: int = Field(default=0, ge=0, le=4096,
                             description="smaller faces (box height, pixels) are ignored as too far away")


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HOURS = re.compile(r"^(?:(?P<days>[a-z,-]+) +)?(?P<start>\d\d:\d\d)-(?P<end>\d\d:\d\d)$")


def parse_hours(spec: str) -> tuple[frozenset[int], int, int]:
    """``'[days ]HH:MM-HH:MM'`` as (weekdays, 0 = Monday; start and end minute of the day). Days are names
    (``mon`` .. ``sun``), ranges (``mon-fri``, ``fri-mon``) or lists (``mon,wed,sat-sun``); none = every
    day. An end before the start runs over midnight (the range belongs to the day it starts on);
    ``24:00`` ends the day. A ValueError says what is wrong.

    >>> parse_hours("mon-fri 08:00-18:30")
    (frozenset({0, 1, 2, 3, 4}), 480, 1110)
    >>> parse_hours("22:00-06:00")[1:]
    (1320, 360)
    """
    shown = repr(spec[:40])
    m = _HOURS.match(spec.strip().lower())
    if not m:
        raise ValueError(f"{shown}: expected '[days ]HH:MM-HH:MM', e.g. 'mon-fri 08:00-18:00' or "
                         "'22:00-06:00'")
    days: set[int] = set()
    for part in (m["days"] or "mon-sun").split(","):
        first, _, last = part.partition("-")
        if first not in DAYS or (last and last not in DAYS):
            raise ValueError(f"{shown}: unknown day in {part[:20]!r}; days are {', '.join(DAYS)}")
        a, b = DAYS.index(first), DAYS.index(last or first)
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(b + 1)])
    minutes = []
    for text in (m["start"], m["end"]):
        hour, minute = int(text[:2]), int(text[3:])
        if minute > 59 or hour > 24 or (hour == 24 and minute):
            raise ValueError(f"{shown}: {text} is not a time of day")
        minutes.append(hour * 60 + minute)
    if minutes[0] == 24 * 60 or minutes[0] == minutes[1]:
        raise ValueError(f"{shown}: the range is empty")
    return frozenset(days), minutes[0], minutes[1]


def _hours(spec: str) -> str:
    parse_hours(spec)
    return " ".join(spec.strip().lower().split())


Hours = Annotated[str, Field(max_length=64), AfterValidator(_hours)]


class Schedule(BaseModel):
    """When alerts may be raised, in the site's timezone. A camera's schedule and its site's both apply:
    an alert is raised only when neither forbids it. Frames, faces and health are stored regardless.

    Example (a shop: weekdays 9 to 6, quiet over lunch, paused during a fire drill)::

        Schedule(open_hours=["mon-fri 09:00-18:00"], quiet_hours=["12:00-13:00"],
                 paused_until=datetime(2026, 12, 5, 10, 0, tzinfo=UTC))
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    open_hours: list[Hours] = Field(default_factory=list, max_length=32,
                                    description="when alerts may be raised, e.g. 'mon-fri 08:00-18:00'; "
                                                "empty = always")
    quiet_hours: list[Hours] = Field(default_factory=list, max_length=32,
                                     description="when they may not, even while open (lunch, cleaning)")
    paused_until: UtcDatetime | None = Field(default=None,
                                             description="no alerts before this time (maintenance, a drill)")


def _timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown timezone {name[:64]!r}: use an IANA name such as 'Europe/Berlin'"
                         ) from None
    return name


class Site(BaseModel):
    """A site: the timezone its schedules and the dashboard's local times are read in, and its schedule
    (which applies to all of its cameras and to its zone and site rules)."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    id: Annotated[Label, Field(min_length=1)]
    name: DisplayName = ""
    timezone: Annotated[str, Field(max_length=64), AfterValidator(_timezone)] = "UTC"
    schedule: Schedule = Field(default_factory=Schedule)
    updated_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))


# ``${NAME}`` in a camera URL: filled where the flow runs (maskwatch.cameras.sources), never stored. Only
# variables named for cameras may be used, so a URL cannot pull the store's or the broker's password (or
# any other secret of the flow's environment) out to the host it names.
SOURCE_PLACEHOLDER = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)\}")
PLACEHOLDER_PREFIX = "CAMERA_"
MAX_SOURCE_URL = 2048


def _check_source(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SOURCE_SCHEMES:
        raise ValueError(f"unsupported source {redact_url(url)!r}: expected one of "
                         + ", ".join(f"{s}://" for s in SOURCE_SCHEMES))
    if len(url) > MAX_SOURCE_URL or _UNSAFE_CHARS.search(url) or any(c.isspace() for c in url):
        raise ValueError(f"source URL must be at most {MAX_SOURCE_URL} characters, without spaces or "
                         "control characters")
    names = SOURCE_PLACEHOLDER.findall(url)
    if url.count("${") != len(names):
        raise ValueError("a '${' in the source URL must start a placeholder such as ${CAMERA_LOBBY_PASSWORD}")
    refused = sorted({n for n in names if not n.startswith(PLACEHOLDER_PREFIX) or n == PLACEHOLDER_PREFIX})
    if refused:
        raise ValueError(f"placeholder(s) {', '.join('${' + n + '}' for n in refused)} not allowed: camera "
                         f"URLs may only use variables named {PLACEHOLDER_PREFIX}<NAME> "
                         f"(e.g. ${{{PLACEHOLDER_PREFIX}LOBBY_PASSWORD}})")
    return url


class Camera(BaseModel):
    """A registered camera. ``source_url`` may hold credentials: it is kept out of repr/str and shown only
    as ``display_url``. To keep a password out of the store too, write it as ``${ENV_NAME}`` in the URL;
    ``maskwatch.cameras.sources.resolve_source_url`` fills it from the environment (or ``ENV_NAME_FILE``)
    where the flow runs."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    id: CameraId
    name: DisplayName = ""
    site: Label = ""
    zone: Label = ""
    source_url: Annotated[str, AfterValidator(_check_source)] = Field(repr=False)
    interval_s: float = Field(default=5.0, gt=0, le=86400)
    enabled: bool = True
    rules: RuleOverrides = Field(default_factory=RuleOverrides)
    area: CountingArea = Field(default_factory=CountingArea)
    schedule: Schedule = Field(default_factory=Schedule)
    allow_private_network: bool = Field(
        default=False,
        description="May fetch from loopback/private/link-local addresses (a camera on the LAN); "
                    "see maskwatch.netpolicy.")
    updated_at: UtcDatetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def display_url(self) -> str:
        return redact_url(self.source_url)

    def content_hash(self) -> str:
        """Identity of the camera's settings (not of when they were written): for idempotent imports."""
        body = self.model_dump(mode="json", exclude={"updated_at"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


EVENT_MODELS: dict[str, type[BaseModel]] = {
    "tick": Tick,
    "frame_result": FrameResult,
    "face_detection": FaceDetection,
    "alert": Alert,
    "alert_event": AlertEvent,
    "camera_health": CameraHealth,
    "camera_health_event": CameraHealthEvent,
    "dead_letter": DeadLetter,
    "camera": Camera,
    "site": Site,
}


def model_name(model: type[BaseModel]) -> str:
    for name, cls in EVENT_MODELS.items():
        if cls is model:
            return name
    return model.__name__
