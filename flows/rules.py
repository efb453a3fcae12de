"""No-mask alert rules: pure decision logic over event-time buckets, no I/O.

The flow folds each tick's observation into fixed event-time buckets per scope (a camera, a zone or a
site) with Bytewax windowing; every closed bucket is handed to :func:`evaluate` with the scope's
:class:`RuleState`. A rule looks at the buckets inside its window ``[end - window_s, end)`` and counts
people (faces associated across ticks by :mod:`maskwatch.flows.people`), not sightings, so one person in
view for ten ticks is one person:

* ``nomask_people``: at least ``min_people`` distinct no-mask people in the window;
* ``nomask_in_frame``: at least ``min_people_in_frame`` no-mask people on one frame;
* ``nomask_dwell``: one no-mask person in view for at least ``min_dwell_s`` seconds;
* ``nomask_ratio``: at least ``min_frames`` frames and the share of frames with a no-mask face at least
  ``nomask_ratio``.

A threshold of 0 turns its rule off; by default only ``nomask_people`` is on. The first rule that holds
is the window's decision; :mod:`maskwatch.flows.lifecycle` turns the decisions into one alert's life
(opened, updated, resolved, re-opened within ``cooldown_s``), so one incident is one alert. Alert ids hash
(scope, rule, window start), so replaying the same ticks yields the same ids and sinks can drop the
repeats. A tick counted twice (a duplicate, a replay) adds nothing: buckets remember the ticks they hold.
A zone or site counts the people of each of its cameras: one person seen by two cameras is two.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

RULE_PEOPLE = "nomask_people"
RULE_IN_FRAME = "nomask_in_frame"
RULE_DWELL = "nomask_dwell"
RULE_RATIO = "nomask_ratio"
MAX_EVIDENCE = 20
# People and ticks one bucket remembers; past that it still counts them (a site with a crowd) but no longer
# tells repeats apart, so the count can only be too high, never dropped.
MAX_REMEMBERED = 2000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RuleConfig:
    window_s: int = 60
    min_people: int = 3
    min_people_in_frame: int = 0
    min_dwell_s: float = 0.0
    nomask_ratio: float = 0.0
    min_frames: int = 3
    cooldown_s: int = 300

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.cooldown_s < 0:
            raise ValueError(f"rule window_s must be > 0 and cooldown_s >= 0, got {self}")
        if min(self.min_people, self.min_people_in_frame, self.min_dwell_s) < 0 or self.min_frames < 1:
            raise ValueError(f"rule thresholds must be >= 0 (0 = off) and min_frames >= 1, got {self}")
        if not 0.0 <= self.nomask_ratio <= 1.0:
            raise ValueError(f"rule nomask_ratio must be in [0, 1] (0 = off), got {self.nomask_ratio}")

    def with_overrides(self, overrides: Mapping[str, Any] | None, bucket_s: int) -> RuleConfig:
        """This config with a camera's overrides (unset = default) applied; unknown keys are an error.

        The window is rounded up to whole buckets, the resolution the flow counts in.
        """
        if not overrides:
            return self
        known = set(self.__dataclass_fields__)
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown rule override(s) {sorted(unknown)}; known: {sorted(known)}")
        typed: dict[str, Any] = {k: type(getattr(self, k))(v) for k, v in overrides.items() if v is not None}
        if "window_s" in overrides and overrides["window_s"] is not None:
            typed["window_s"] = max(1, math.ceil(float(overrides["window_s"]) / bucket_s)) * bucket_s
        return replace(self, **typed)

    def describe(self, rule: str) -> str:
        if rule == RULE_PEOPLE:
            return f">={self.min_people} no-mask people in {self.window_s}s"
        if rule == RULE_IN_FRAME:
            return f">={self.min_people_in_frame} no-mask people on one frame"
        if rule == RULE_DWELL:
            return f"a no-mask person in view for >={self.min_dwell_s:g}s"
        return (f">={self.nomask_ratio:.0%} of >={self.min_frames} frames with a no-mask face"
                f" in {self.window_s}s")

    def parameters(self, rule: str) -> dict[str, float]:
        """The settings the rule was judged by, for the alert."""
        if rule == RULE_PEOPLE:
            return {"min_people": self.min_people, "window_s": self.window_s}
        if rule == RULE_IN_FRAME:
            return {"min_people_in_frame": self.min_people_in_frame}
        if rule == RULE_DWELL:
            return {"min_dwell_s": self.min_dwell_s}
        return {"nomask_ratio": self.nomask_ratio, "min_frames": self.min_frames, "window_s": self.window_s}


@dataclass(frozen=True)
class Observation:
    """One tick's outcome as the rules see it; a failed fetch still moves event time (frames=0).
    ``people`` holds (person id, seconds in view unmasked) for each counted no-mask face."""

    scope: str
    ts: datetime
    frames: int
    faces: int
    nomask_faces: int
    tick_id: str = ""
    snapshot_path: str = ""
    people: tuple[tuple[str, float], ...] = ()


@dataclass
class Bucket:
    """Counts of one event-time bucket ``[start, start + bucket_s)`` of one scope."""

    start: datetime
    frames: int = 0
    faces: int = 0
    nomask_faces: int = 0
    nomask_frames: int = 0  # frames with at least one no-mask face
    max_in_frame: int = 0  # most no-mask people on one frame
    people: dict[str, float] = field(default_factory=dict)  # no-mask person -> longest dwell seen, s
    ticks: set[str] = field(default_factory=set)
    # Evidence for the alert: ticks with a no-mask face (bounded) and the latest such snapshot.
    nomask_ticks: list[str] = field(default_factory=list)
    snapshot_path: str = ""

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A bucket snapshotted by a version that counted sightings only: its people start empty.
        self.__dict__.update({"max_in_frame": 0, "people": {}, "ticks": set(), **state})

    def add(self, obs: Observation) -> Bucket:
        if obs.tick_id and obs.tick_id in self.ticks:
            return self  # the same tick again (a duplicate delivery): counted once
        if obs.tick_id and len(self.ticks) < MAX_REMEMBERED:
            self.ticks.add(obs.tick_id)
        self.frames += obs.frames
        self.faces += obs.faces
        self.nomask_faces += obs.nomask_faces
        for person, dwell in obs.people:
            if person in self.people or len(self.people) < MAX_REMEMBERED:
                self.people[person] = max(dwell, self.people.get(person, 0.0))
        if obs.frames and obs.nomask_faces:
            self.nomask_frames += 1
            self.max_in_frame = max(self.max_in_frame, len(obs.people) or obs.nomask_faces)
            if len(self.nomask_ticks) < MAX_EVIDENCE:
                self.nomask_ticks.append(obs.tick_id)
            self.snapshot_path = obs.snapshot_path or self.snapshot_path
        return self

    def merge(self, other: Bucket) -> Bucket:
        merged = Bucket(min(self.start, other.start), ticks=set(self.ticks),
                        people=dict(self.people), max_in_frame=self.max_in_frame,
                        snapshot_path=self.snapshot_path)
        merged.frames, merged.faces = self.frames, self.faces
        merged.nomask_faces, merged.nomask_frames = self.nomask_faces, self.nomask_frames
        merged.nomask_ticks = list(self.nomask_ticks)
        if other.ticks and other.ticks <= merged.ticks:
            return merged
        merged.ticks |= other.ticks
        merged.frames += other.frames
        merged.faces += other.faces
        merged.nomask_faces += other.nomask_faces
        merged.nomask_frames += other.nomask_frames
        merged.max_in_frame = max(merged.max_in_frame, other.max_in_frame)
        for person, dwell in other.people.items():
            merged.people[person] = max(dwell, merged.people.get(person, 0.0))
        merged.nomask_ticks = (merged.nomask_ticks + other.nomask_ticks)[:MAX_EVIDENCE]
        merged.snapshot_path = other.snapshot_path or merged.snapshot_path
        return merged


@dataclass(frozen=True)
class AlertDecision:
    alert_id: str
    scope: str
    rule: str
    window_start: datetime
    window_end: datetime
    frames: int
    nomask_frames: int
    nomask_faces: int
    faces: int
    threshold: float
    value: float
    tick_ids: tuple[str, ...] = ()
    snapshot_path: str = ""
    people: int = 0  # distinct no-mask people in the window


@dataclass(frozen=True)
class Incident:
    """A scope's current (or last) alert (see :mod:`maskwatch.flows.lifecycle`)."""

    decision: AlertDecision  # what opened it, or the latest figures reported
    last_held: datetime  # end of the last bucket in which a rule held
    opened_at: datetime  # end of the bucket that opened it
    resolved_at: datetime | None = None


@dataclass
class RuleState:
    """Per-scope memory kept by Bytewax (and recovered with it): recent buckets and the alert's life."""

    buckets: list[Bucket] = field(default_factory=list)
    incident: Incident | None = None


SCOPES = ("camera", "zone", "site")


def scope_keys(camera_id: str, site: str, zone: str, scopes: tuple[str, ...]) -> list[str]:
    """The rule scopes a camera's tick counts towards. Camera ids contain no ':' (schema), so the
    ``zone:``/``site:`` keys never collide with a camera's."""
    keys = [camera_id] if "camera" in scopes else []
    if "zone" in scopes and zone:
        keys.append(f"zone:{site}/{zone}")
    if "site" in scopes and site:
        keys.append(f"site:{site}")
    return keys


def parse_scope(key: str) -> tuple[str, str, str]:
    """(kind, site, zone) of a scope key; a camera's kind is "camera" and its site/zone are empty."""
    kind, sep, rest = key.partition(":")
    if not sep:
        return "camera", "", ""
    if kind == "zone":
        site, _, zone = rest.partition("/")
        return "zone", site, zone
    return kind, rest, ""


def bucket_start(ts: datetime, bucket_s: int) -> datetime:
    seconds = (ts - EPOCH) // timedelta(seconds=bucket_s) * bucket_s
    return EPOCH + timedelta(seconds=seconds)


def alert_id(scope: str, rule: str, window_start: datetime) -> str:
    raw = f"{scope}|{rule}|{window_start.astimezone(UTC).isoformat()}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def evaluate(
    state: RuleState, bucket: Bucket, bucket_s: int, config: RuleConfig, scope: str
) -> tuple[RuleState, AlertDecision | None]:
    """Add a closed bucket to the scope's state and say which rule holds in the window ending with it
    (None: none does, or the bucket came late). Whether that opens, updates or re-opens an alert is
    :func:`maskwatch.flows.lifecycle.advance`'s to say.

    Buckets may arrive out of order or with gaps; the window is always the ``window_s`` ending at the
    latest bucket's end. Buckets older than the longest window are dropped so state stays bounded.
    """
    buckets = [b for b in state.buckets if b.start != bucket.start] + [bucket]
    buckets.sort(key=lambda b: b.start)
    end = buckets[-1].start + timedelta(seconds=bucket_s)
    start = end - timedelta(seconds=config.window_s)
    buckets = [b for b in buckets if b.start >= start]
    new_state = RuleState(buckets=buckets, incident=state.incident)
    if bucket.start + timedelta(seconds=bucket_s) != end:
        return new_state, None  # a late bucket updates history but does not trigger
    frames = sum(b.frames for b in buckets)
    faces = sum(b.faces for b in buckets)
    nomask_faces = sum(b.nomask_faces for b in buckets)
    nomask_frames = sum(b.nomask_frames for b in buckets)
    dwell: dict[str, float] = {}
    for b in buckets:
        for person, seconds in b.people.items():
            dwell[person] = max(seconds, dwell.get(person, 0.0))
    in_frame = max((b.max_in_frame for b in buckets), default=0)
    longest = max(dwell.values(), default=0.0)
    ratio = nomask_frames / frames if frames else 0.0
    fired: tuple[str, float, float] | None = None  # rule, threshold, value
    if config.min_people and len(dwell) >= config.min_people:
        fired = RULE_PEOPLE, float(config.min_people), float(len(dwell))
    elif config.min_people_in_frame and in_frame >= config.min_people_in_frame:
        fired = RULE_IN_FRAME, float(config.min_people_in_frame), float(in_frame)
    elif config.min_dwell_s and longest >= config.min_dwell_s:
        fired = RULE_DWELL, config.min_dwell_s, longest
    elif config.nomask_ratio and frames >= config.min_frames and ratio >= config.nomask_ratio:
        fired = RULE_RATIO, config.nomask_ratio, ratio
    if fired is None:
        return new_state, None
    rule, threshold, value = fired
    evidence = tuple(t for b in buckets for t in b.nomask_ticks)[-MAX_EVIDENCE:]
    snapshot = next((b.snapshot_path for b in reversed(buckets) if b.snapshot_path), "")
    return new_state, AlertDecision(
        alert_id(scope, rule, start), scope, rule, start, end, frames, nomask_frames, nomask_faces, faces,
        threshold, value, evidence, snapshot, len(dwell),
    )
