"""The flow's options: what ``build_flow`` is given, built from ``MASKWATCH_FLOW_*`` settings
(:class:`maskwatch.config.FlowSettings`) and the cluster's shape; no step reads the environment."""

from __future__ import annotations

from dataclasses import dataclass, field

from maskwatch.cameras.capture.fetcher import FetchOptions
from maskwatch.config import FlowSettings
from maskwatch.flows.people import TrackingConfig
from maskwatch.flows.rules import RuleConfig


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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Where rules apply: each camera (with its overrides), and optionally each zone and site as a whole
    # (default thresholds), e.g. to catch a crowd spread over cameras that each stay under the threshold.
    rule_scopes: tuple[str, ...] = ("camera",)
    # Ticks scheduled outside [now - tick_max_age_s, now + tick_max_ahead_s] are dead-lettered.
    tick_max_age_s: float = 7 * 86400
    tick_max_ahead_s: float = 120
    registry_refresh_s: float = 30.0
    # Camera health state from failures in a row: ok below degraded_after, down from down_after on.
    health_degraded_after: int = 1
    health_down_after: int = 3
    health_recover_after: int = 2  # good ticks in a row back to ok: a flapping camera is not news each tick
    # Store writes: failures go to an on-disk buffer, retried with backoff up to this cap.
    store_retry_max_s: float = 30.0
    buffer_max_bytes: int = 512 * 1024**2
    # Annotated snapshots of frames with a no-mask face.
    snapshots: bool = True
    snapshot_max_width: int = 640
    snapshot_blur_faces: bool = False
    snapshot_keep_days: float = 30
    snapshot_max_bytes: int = 10 * 1024**3
    # Alerts already on the alert topic within this horizon are not published again after a replay.
    alert_dedup_horizon_s: int = 7 * 86400

    @classmethod
    def from_settings(
        cls, s: FlowSettings | None = None, *, workers: int = 1, cluster_workers: int = 1
    ) -> FlowOptions:
        """Options from the settings; ``workers`` engines share this host's cores, ``cluster_workers`` is
        every worker of the cluster (the default shard count: one micro-batch shard per worker)."""
        s = s or FlowSettings()
        return cls(
            detector=s.detector.strip(),
            classifier=s.classifier.strip(),
            batch_max=s.batch_max,
            batch_timeout_s=s.batch_timeout_s,
            shards=s.shards or cluster_workers,
            workers=workers,
            fetch=FetchOptions(
                concurrency=s.fetch_concurrency,
                deadline_s=s.fetch_deadline_s,
                connect_timeout_s=s.fetch_connect_timeout_s,
                read_timeout_s=s.fetch_read_timeout_s,
                max_bytes=s.fetch_max_bytes,
                backoff_after=s.fetch_backoff_after,
                backoff_max_s=s.fetch_backoff_max_s,
                ca_file=str(s.fetch_ca_file or ""),
            ),
            bucket_s=s.bucket_s,
            lateness_s=s.lateness_s,
            rule=RuleConfig(
                window_s=s.rule_window_s,
                min_people=s.rule_min_people,
                min_people_in_frame=s.rule_min_people_in_frame,
                min_dwell_s=s.rule_min_dwell_s,
                nomask_ratio=s.rule_nomask_ratio,
                min_frames=s.rule_min_frames,
                cooldown_s=s.rule_cooldown_s,
            ),
            tracking=TrackingConfig(max_gap_s=s.track_max_gap_s, max_move=s.track_max_move),
            rule_scopes=tuple(s.rule_scopes),
            tick_max_age_s=s.tick_max_age_s, tick_max_ahead_s=s.tick_max_ahead_s,
            registry_refresh_s=s.registry_refresh_s,
            health_degraded_after=s.health_degraded_after,
            health_down_after=s.health_down_after,
            health_recover_after=s.health_recover_after,
            store_retry_max_s=s.store_retry_max_s,
            buffer_max_bytes=s.buffer_max_bytes,
            snapshots=s.snapshots,
            snapshot_max_width=s.snapshot_max_width,
            snapshot_blur_faces=s.snapshot_blur_faces,
            snapshot_keep_days=s.snapshot_keep_days,
            snapshot_max_bytes=s.snapshot_max_bytes,
            alert_dedup_horizon_s=s.alert_dedup_horizon_s,
        )
