"""The flow's tuning knobs, from ``MASKWATCH_FLOW_*`` environment variables (``maskwatch flow run``
options set the same variables), so every worker process of a cluster reads the same values."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from maskwatch.flows.fetch import FetchOptions
from maskwatch.flows.rules import SCOPES, RuleConfig


class OptionError(ValueError):
    """A MASKWATCH_FLOW_* variable with a value the flow cannot use; the message names it."""


def _num(name: str, default: float, *, minimum: float = 0.0, integer: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number"
        raise OptionError(f"{name}={raw!r}: expected {kind}") from None
    if value < minimum:
        raise OptionError(f"{name}={raw!r}: must be >= {minimum:g}")
    return value


def _int(name: str, default: int, minimum: int = 1) -> int:
    return int(_num(name, default, minimum=minimum, integer=True))


@dataclass(frozen=True)
class FlowOptions:
    # Models by manifest name ("" = the shipped defaults), e.g. a cheaper detector such as blazeface on
    # CPU-only hosts with many cameras.
    detector: str = ""
    classifier: str = ""
    # Micro-batches: ticks of one shard are collected until batch_max or batch_timeout_s, then fetched
    # and inferred together. Shards (not cameras) are the key, so one batch mixes many cameras.
    batch_max: int = 16
    batch_timeout_s: float = 0.5
    shards: int = 1
    # Engines sharing this host's cores: `flow run -w` worker threads x the cluster's processes on this
    # host. Each worker runs its own engine, so the cores are split between them instead of every ONNX
    # Runtime session spinning a thread per core.
    workers: int = 1
    fetch: FetchOptions = field(default_factory=FetchOptions)
    # Rules: event-time buckets; a bucket closes when a tick `lateness_s` past its end arrives.
    bucket_s: int = 10
    lateness_s: int = 5
    rule: RuleConfig = field(default_factory=RuleConfig)
    # Where rules apply: each camera (with its overrides), and optionally each zone and site as a whole
    # (default thresholds), e.g. to catch a crowd spread over cameras that each stay under the threshold.
    rule_scopes: tuple[str, ...] = ("camera",)
    registry_refresh_s: float = 30.0
    # Camera health state from failures in a row: ok below degraded_after, down from down_after on.
    health_degraded_after: int = 1
    health_down_after: int = 3
    # Store writes: failures go to an on-disk buffer, retried with backoff up to this cap.
    store_retry_max_s: float = 30.0
    buffer_max_bytes: int = 512 * 1024**2
    # Annotated snapshots of frames with a no-mask face.
    snapshots: bool = True
    snapshot_max_width: int = 640
    snapshot_blur_faces: bool = False
    # Alerts already on the alert topic within this horizon are not published again after a replay.
    alert_dedup_horizon_s: int = 7 * 86400

    def __post_init__(self) -> None:
        unknown = set(self.rule_scopes) - set(SCOPES)
        if unknown or not self.rule_scopes:
            raise OptionError(f"MASKWATCH_FLOW_RULE_SCOPES={','.join(self.rule_scopes)!r}: expected a "
                              f"comma-separated subset of {', '.join(SCOPES)}")
        if self.health_down_after < self.health_degraded_after:
            raise OptionError(
                f"MASKWATCH_FLOW_HEALTH_DOWN_AFTER={self.health_down_after} must be >= "
                f"MASKWATCH_FLOW_HEALTH_DEGRADED_AFTER={self.health_degraded_after}"
            )
        if self.rule.window_s % self.bucket_s:
            raise OptionError(
                f"MASKWATCH_FLOW_RULE_WINDOW_S={self.rule.window_s} must be a multiple of "
                f"MASKWATCH_FLOW_BUCKET_S={self.bucket_s}"
            )

    @classmethod
    def from_env(cls) -> FlowOptions:
        p = "MASKWATCH_FLOW_"
        fetch = FetchOptions(
            concurrency=_int(p + "FETCH_CONCURRENCY", FetchOptions.concurrency),
            deadline_s=_num(p + "FETCH_DEADLINE_S", FetchOptions.deadline_s, minimum=0.1),
            connect_timeout_s=_num(p + "FETCH_CONNECT_TIMEOUT_S", FetchOptions.connect_timeout_s, minimum=.1),
            read_timeout_s=_num(p + "FETCH_READ_TIMEOUT_S", FetchOptions.read_timeout_s, minimum=0.1),
            max_bytes=_int(p + "FETCH_MAX_BYTES", FetchOptions.max_bytes),
        )
        try:
            rule = RuleConfig(
                window_s=_int(p + "RULE_WINDOW_S", RuleConfig.window_s),
                min_nomask_faces=_int(p + "RULE_MIN_NOMASK_FACES", RuleConfig.min_nomask_faces),
                nomask_ratio=_num(p + "RULE_NOMASK_RATIO", RuleConfig.nomask_ratio),
                min_frames=_int(p + "RULE_MIN_FRAMES", RuleConfig.min_frames),
                cooldown_s=_int(p + "RULE_COOLDOWN_S", RuleConfig.cooldown_s, minimum=0),
            )
        except ValueError as exc:
            raise OptionError(f"MASKWATCH_FLOW_RULE_*: {exc}") from None
        return cls(
            detector=os.environ.get(p + "DETECTOR", "").strip(),
            classifier=os.environ.get(p + "CLASSIFIER", "").strip(),
            batch_max=_int(p + "BATCH_MAX", cls.batch_max),
            batch_timeout_s=_num(p + "BATCH_TIMEOUT_S", cls.batch_timeout_s, minimum=0.01),
            shards=_int(p + "SHARDS", cls.shards),
            workers=_int(p + "WORKERS", cls.workers),
            fetch=fetch,
            bucket_s=_int(p + "BUCKET_S", cls.bucket_s),
            lateness_s=_int(p + "LATENESS_S", cls.lateness_s, minimum=0),
            rule=rule,
            rule_scopes=tuple(x.strip() for x in os.environ.get(p + "RULE_SCOPES", "camera").split(",")
                              if x.strip()),
            registry_refresh_s=_num(p + "REGISTRY_REFRESH_S", cls.registry_refresh_s, minimum=0.1),
            health_degraded_after=_int(p + "HEALTH_DEGRADED_AFTER", cls.health_degraded_after),
            health_down_after=_int(p + "HEALTH_DOWN_AFTER", cls.health_down_after),
            store_retry_max_s=_num(p + "STORE_RETRY_MAX_S", cls.store_retry_max_s, minimum=0.1),
            buffer_max_bytes=_int(p + "BUFFER_MAX_BYTES", cls.buffer_max_bytes),
            snapshots=os.environ.get(p + "SNAPSHOTS", "1") not in ("0", "false", "no"),
            snapshot_max_width=_int(p + "SNAPSHOT_MAX_WIDTH", cls.snapshot_max_width),
            snapshot_blur_faces=os.environ.get(p + "SNAPSHOT_BLUR_FACES", "0") in ("1", "true", "yes"),
            alert_dedup_horizon_s=_int(p + "ALERT_DEDUP_HORIZON_S", cls.alert_dedup_horizon_s),
        )
