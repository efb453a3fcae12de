"""No-mask alert rules: pure decision logic over event-time buckets, no I/O.

The flow folds each tick's observation into fixed event-time buckets per scope (a camera, a zone or a
site) with Bytewax windowing; every closed bucket is handed to :func:`evaluate` with the scope's
:class:`RuleState`. A rule looks at the buckets inside its window ``[end - window_s, end)``:

* ``nomask_count``: at least ``min_nomask_faces`` no-mask faces in the window;
* ``nomask_ratio``: at least ``min_frames`` frames and the share of frames with a no-mask face
  at least ``nomask_ratio``.

The first rule that holds fires one alert, then the scope is quiet for ``cooldown_s`` so one incident
is one alert. Alert ids hash (scope, rule, window start), so replaying the same ticks yields the same
ids and sinks can drop the repeats.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

RULE_COUNT = "nomask_count"
RULE_RATIO = "nomask_ratio"
MAX_EVIDENCE = 20
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class RuleConfig:
    window_s: int = 60
    min_nomask_faces: int = 3
    nomask_ratio: float = 0.5
    min_frames: int = 3
    cooldown_s: int = 300

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.cooldown_s < 0:
            raise ValueError(f"rule window_s must be > 0 and cooldown_s >= 0, got {self}")
        if self.min_nomask_faces < 1 or self.min_frames < 1:
            raise ValueError(f"rule min_nomask_faces and min_frames must be >= 1, got {self}")
        if not 0.0 < self.nomask_ratio <= 1.0:
            raise ValueError(f"rule nomask_ratio must be in (0, 1], got {self.nomask_ratio}")

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
        if rule == RULE_COUNT:
            return f">={self.min_nomask_faces} no-mask faces in {self.window_s}s"
        return (f">={self.nomask_ratio:.0%} of >={self.min_frames} frames with a no-mask face"
                f" in {self.window_s}s")


@dataclass(frozen=True)
class Observation:
    """One tick's outcome as the rules see it; a failed fetch still moves event time (frames=0)."""

    scope: str
    ts: datetime
    frames: int
    faces: int
    nomask_faces: int
    tick_id: str = ""
    snapshot_path: str = ""


@dataclass
class Bucket:
    """Counts of one event-time bucket ``[start, start + bucket_s)`` of one scope."""

    start: datetime
    frames: int = 0
    faces: int = 0
    nomask_faces: int = 0
    nomask_frames: int = 0  # frames with at least one no-mask face
    # Evidence for the alert: ticks with a no-mask face (bounded) and the latest such snapshot.
    nomask_ticks: list[str] = field(default_factory=list)
    snapshot_path: str = ""

    def add(self, obs: Observation) -> Bucket:
        self.frames += obs.frames
        self.faces += obs.faces
        self.nomask_faces += obs.nomask_faces
        if obs.frames and obs.nomask_faces:
            self.nomask_frames += 1
            if len(self.nomask_ticks) < MAX_EVIDENCE:
                self.nomask_ticks.append(obs.tick_id)
            self.snapshot_path = obs.snapshot_path or self.snapshot_path
        return self

    def merge(self, other: Bucket) -> Bucket:
        return Bucket(
            min(self.start, other.start),
            self.frames + other.frames,
            self.faces + other.faces,
            self.nomask_faces + other.nomask_faces,
            self.nomask_frames + other.nomask_frames,
            (self.nomask_ticks + other.nomask_ticks)[:MAX_EVIDENCE],
            other.snapshot_path or self.snapshot_path,
        )


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


@dataclass
class RuleState:
    """Per-scope memory kept by Bytewax (and recovered with it): recent buckets and the cool-down."""

    buckets: list[Bucket] = field(default_factory=list)
    quiet_until: datetime | None = None


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
    """Add a closed bucket to the scope's state and decide whether an alert fires now.

    Buckets may arrive out of order or with gaps; the window is always the ``window_s`` ending at the
    latest bucket's end. Buckets older than the longest window are dropped so state stays bounded.
    """
    buckets = [b for b in state.buckets if b.start != bucket.start] + [bucket]
    buckets.sort(key=lambda b: b.start)
    end = buckets[-1].start + timedelta(seconds=bucket_s)
    start = end - timedelta(seconds=config.window_s)
    buckets = [b for b in buckets if b.start >= start]
    new_state = RuleState(buckets=buckets, quiet_until=state.quiet_until)
    if bucket.start + timedelta(seconds=bucket_s) != end:
        return new_state, None  # a late bucket updates history but does not trigger
    if state.quiet_until is not None and end <= state.quiet_until:
        return new_state, None
    frames = sum(b.frames for b in buckets)
    faces = sum(b.faces for b in buckets)
    nomask_faces = sum(b.nomask_faces for b in buckets)
    nomask_frames = sum(b.nomask_frames for b in buckets)
    evidence = tuple(t for b in buckets for t in b.nomask_ticks)[-MAX_EVIDENCE:]
    snapshot = next((b.snapshot_path for b in reversed(buckets) if b.snapshot_path), "")
    decision: AlertDecision | None = None
    if nomask_faces >= config.min_nomask_faces:
        decision = AlertDecision(
            alert_id(scope, RULE_COUNT, start), scope, RULE_COUNT, start, end, frames, nomask_frames,
            nomask_faces, faces, float(config.min_nomask_faces), float(nomask_faces), evidence, snapshot,
        )
    elif frames >= config.min_frames and nomask_frames / frames >= config.nomask_ratio:
        decision = AlertDecision(
            alert_id(scope, RULE_RATIO, start), scope, RULE_RATIO, start, end, frames, nomask_frames,
            nomask_faces, faces, config.nomask_ratio, nomask_frames / frames, evidence, snapshot,
        )
    if decision is not None:
        new_state.quiet_until = end + timedelta(seconds=config.cooldown_s)
    return new_state, decision
