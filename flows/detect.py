"""The detection dataflow, top to bottom:

    ticks (Kafka) -> parse/validate -> dead letters (Kafka)
                  -> resolve camera in the registry (unknown/disabled dropped, counted)
                  -> micro-batch per shard (op.collect) -> fetch concurrently -> two-stage inference
                  -> frames, detections, camera health -> ClickHouse
                  -> event-time buckets per camera (and zone/site) -> rules -> alerts
                  -> alerts to ClickHouse and the alert topic

Run it with ``maskwatch flow run`` (or ``python -m bytewax.run flows.detect:flow``). Everything is read
from ``MASKWATCH_*`` variables (``maskwatch.config.Settings`` and ``flows.options.FlowOptions``).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaError, KafkaSink, KafkaSinkMessage, KafkaSource, KafkaSourceMessage
from bytewax.dataflow import Dataflow
from prometheus_client import Counter as PromCounter

from flows.batching import BatchProcessor, TickOutcome, micro_batches
from flows.fetch import Fetcher
from flows.options import FlowOptions
from flows.registry_cache import RegistryCache, store_loader
from flows.rules import AlertDecision, Observation, RuleConfig, parse_scope, scope_keys
from flows.sinks import AlertTopicSink, StoreItem, StoreSink, store_writer
from flows.windows import windowed_alerts
from maskwatch import metrics
from maskwatch.config import Settings
from maskwatch.redact import redact_text
from schemas.events import Alert, Camera, DeadLetter, Tick
from schemas.parse import SchemaError, parse_event

log = logging.getLogger(__name__)

LATE_TICKS = PromCounter("maskwatch_flow_late_ticks_total", "Ticks that arrived after their bucket closed")
DEAD_LETTERS = PromCounter("maskwatch_flow_dead_letters_total", "Tick records sent to the dead-letter topic",
                           ["stage"])
# A tick is ~200 bytes of JSON; anything much bigger is not a tick, and is not parsed or copied whole.
MAX_TICK_BYTES = 64 * 1024
DEAD_LETTER_PAYLOAD_BYTES = 4096
RawMessage = KafkaSourceMessage[bytes | None, bytes | None] | KafkaError[bytes | None, bytes | None]


def _text(raw: bytes | None) -> str:
    if raw is None:
        return ""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()


def parse_tick(msg: RawMessage) -> Tick | DeadLetter:
    """A valid tick, or a dead letter naming what is wrong and keeping the raw record."""
    metrics.TICKS_IN.inc()
    record = msg.msg if isinstance(msg, KafkaError) else msg
    value = record.value or b""
    oversized = len(value) > MAX_TICK_BYTES
    where: dict[str, Any] = {
        "topic": record.topic or "", "partition": record.partition if record.partition is not None else -1,
        "offset": record.offset if record.offset is not None else -1,
        "key": _text(record.key[:DEAD_LETTER_PAYLOAD_BYTES] if record.key else record.key),
        # An oversized record keeps its head only; topic/partition/offset still point at all of it.
        "payload": _text(value[:DEAD_LETTER_PAYLOAD_BYTES] if oversized else record.value),
    }
    dead: DeadLetter | None = None
    if isinstance(msg, KafkaError):
        dead = DeadLetter(stage="consume_tick", error=str(msg.err), occurred_at=datetime.now(UTC), **where)
    elif oversized:
        dead = DeadLetter(stage="parse_tick", occurred_at=datetime.now(UTC), **where,
                          error=f"tick of {len(value)} bytes is over the {MAX_TICK_BYTES}-byte limit; "
                                f"payload truncated to its first {DEAD_LETTER_PAYLOAD_BYTES} bytes")
    else:
        try:
            return parse_event(Tick, value)
        except SchemaError as exc:
            dead = DeadLetter(stage="parse_tick", error=str(exc), occurred_at=datetime.now(UTC), **where)
    DEAD_LETTERS.labels(dead.stage).inc()
    return dead


def _is_tick(item: Tick | DeadLetter) -> TypeGuard[Tick]:
    return isinstance(item, Tick)


def dead_letter_message(dead: DeadLetter) -> KafkaSinkMessage[bytes | None, bytes | None]:
    return KafkaSinkMessage(key=dead.key.encode() or None, value=dead.model_dump_json().encode())


def observations(outcome: TickOutcome, scopes: tuple[str, ...]) -> list[tuple[str, Observation]]:
    """The tick as the rules see it, once per scope it counts towards (camera, zone, site)."""
    f = outcome.frame
    return [(key, Observation(key, f.scheduled_at, 1 if f.status == "ok" else 0, f.faces, f.nomask_faces,
                              f.tick_id, f.snapshot_path))
            for key in scope_keys(f.camera_id, f.site, f.zone, scopes)]


def health_state(failures: int, degraded_after: int = 1, down_after: int = 3) -> str:
    """ok / degraded / down from the failures in a row (thresholds: MASKWATCH_FLOW_HEALTH_*)."""
    if failures >= down_after:
        return "down"
    return "degraded" if failures >= degraded_after else "ok"


def count_health(failures: int | None, outcome: TickOutcome, degraded_after: int = 1,
                 down_after: int = 3) -> tuple[int, StoreItem]:
    failures = 0 if outcome.fetched_status == "ok" else (failures or 0) + 1
    state = health_state(failures, degraded_after, down_after)
    return failures, ("camera_health", outcome.health(failures, state))


def to_alert(camera: Camera | None, config: RuleConfig, d: AlertDecision) -> Alert:
    """The alert event. A zone/site alert is filed under the camera that saw its latest no-mask face
    (the schema keys alerts by camera) and its rule text names the scope."""
    kind, site, zone = parse_scope(d.scope)
    camera_id = d.scope if kind == "camera" else d.tick_ids[-1].split(":")[0]
    if kind == "camera" and camera is not None:
        site, zone = camera.site, camera.zone
    rule = config.describe(d.rule)
    if kind != "camera":
        rule = f"{kind} {site}{'/' + zone if zone else ''}: {rule}"
    where = camera.name if kind == "camera" and camera is not None and camera.name else camera_id
    ratio = d.nomask_frames / d.frames if d.frames else 0.0
    return Alert(
        alert_id=d.alert_id, camera_id=camera_id, site=site, zone=zone, rule=rule, triggered_at=d.window_end,
        window_start=d.window_start, window_end=d.window_end, faces=d.faces, nomask_faces=d.nomask_faces,
        nomask_ratio=min(1.0, ratio), tick_ids=list(d.tick_ids), snapshot_path=d.snapshot_path,
        message=f"{where}: {rule} ({d.nomask_faces} no-mask faces on {d.nomask_frames}/{d.frames} frames)",
    )


class _Runtime:
    """Per-process registry cache, per-worker (thread) fetcher and engine: built on first use, so
    importing this module or building the flow touches no network, store or model."""

    def __init__(self, settings: Settings, opts: FlowOptions):
        self.settings, self.opts = settings, opts
        self._lock = threading.Lock()
        self._registry: RegistryCache | None = None
        self._local = threading.local()

    @property
    def registry(self) -> RegistryCache:
        with self._lock:
            if self._registry is None:
                self._registry = RegistryCache(store_loader(self.settings), self.opts.registry_refresh_s)
            return self._registry

    def processor(self) -> BatchProcessor:
        proc: BatchProcessor | None = getattr(self._local, "processor", None)
        if proc is None:
            from inference.engine import InferenceEngine
            from inference.session import cpu_count

            engine = InferenceEngine.default(self.opts.detector or None, self.opts.classifier or None,
                                             models_dir=self.settings.models_dir,
                                             threads=max(1, cpu_count() // self.opts.workers))
            snapshots = self.settings.home / "snapshots" if self.opts.snapshots else None
            proc = BatchProcessor(
                Fetcher(self.opts.fetch), engine, snapshots, detector_model=engine.detector_spec.name,
                classifier_model=engine.classifier_spec.name, snapshot_max_width=self.opts.snapshot_max_width,
                blur_faces=self.opts.snapshot_blur_faces,
            )
            self._local.processor = proc
        return proc

    def process(self, ticks: list[Tick]) -> list[TickOutcome]:
        proc = self.processor()
        now = time.monotonic()
        if now - getattr(self._local, "retained_at", 0.0) > self.opts.registry_refresh_s:
            # Close stream connections of cameras that were removed or disabled.
            proc.fetcher.retain(self.registry.enabled_ids())
            self._local.retained_at = now
        # The camera (with its source URL) is looked up only here, never carried in operator state, so
        # credentials do not end up in recovery snapshots. A camera removed meanwhile drops its tick.
        batch = [(t, c) for t in ticks if (c := self.registry.resolve(t.camera_id)[0]) is not None]
        return proc.process(batch)

    def rule_config(self, scope: str) -> tuple[Camera | None, RuleConfig]:
        """A camera's rule config with its overrides; zones and sites use the defaults."""
        if parse_scope(scope)[0] != "camera":
            return None, self.opts.rule
        camera_id = scope
        camera = self.registry.get(camera_id)
        if camera is None:
            return None, self.opts.rule
        try:
            overrides = camera.rules.model_dump(exclude_none=True)
            return camera, self.opts.rule.with_overrides(overrides, self.opts.bucket_s)
        except ValueError as exc:
            log.error("camera %s: invalid rule overrides, using the defaults: %s", camera_id, exc)
            return camera, self.opts.rule


def build_flow(settings: Settings | None = None, opts: FlowOptions | None = None) -> Dataflow:
    settings = settings or Settings()
    opts = opts or FlowOptions.from_env()
    rt = _Runtime(settings, opts)
    kafka_conf = settings.kafka_config()
    brokers = [kafka_conf.pop("bootstrap.servers")]
    flow = Dataflow("maskwatch-detect")

    # 1. Ticks in; anything that is not a valid tick goes to the dead-letter topic with its reason.
    # One consumer poll brings at most one micro-batch worth of ticks.
    raw = op.input("ticks", flow, KafkaSource(brokers, [settings.topic_ticks], add_config=kafka_conf,
                                              batch_size=opts.batch_max, raise_on_errors=False))
    parsed = op.map("parse_tick", raw, parse_tick)
    split = op.branch("valid_tick", parsed, _is_tick)
    dead = op.map("dead_letter_message", split.falses, lambda d: dead_letter_message(d))  # type: ignore[arg-type]
    op.output("dead_letters", dead, KafkaSink(brokers, settings.topic_dead_letter, add_config=kafka_conf))

    # 2. Resolve each tick's camera from the registry (the URL never comes from the event).
    def known(tick: Tick) -> bool:
        return rt.registry.resolve(tick.camera_id)[0] is not None

    resolved = op.filter("known_camera", split.trues, known)

    # 3. Micro-batches that mix cameras, fetched concurrently and inferred together.
    batches = micro_batches(resolved, opts.shards, timedelta(seconds=opts.batch_timeout_s), opts.batch_max)
    inferred = op.flat_map_value("fetch_infer", batches, rt.process)
    outcomes = op.key_rm("unshard", inferred)

    # 4. Rows for the store: frames, detections and per-camera health (failures in a row are state).
    by_camera = op.key_on("by_camera", outcomes, lambda o: o.frame.camera_id)
    frames = op.flat_map("frame_rows", outcomes, lambda o: [("frames", o.frame)]
                         + [("detections", d) for d in o.faces])
    def track_health(failures: int | None, outcome: TickOutcome) -> tuple[int, StoreItem]:
        return count_health(failures, outcome, opts.health_degraded_after, opts.health_down_after)

    health = op.key_rm("health_rm", op.stateful_map("health", by_camera, track_health))

    # 5. Rules: event-time buckets per scope (camera, and zone/site if enabled), then the pure decision
    #    with per-camera overrides.
    scoped = op.flat_map("observe", outcomes, lambda o: observations(o, opts.rule_scopes))
    decisions, late = windowed_alerts(scoped, opts.bucket_s, opts.lateness_s,
                                      lambda scope: rt.rule_config(scope)[1])
    op.inspect("late_ticks", late, lambda _step, item: _count_late(item))

    def alert(decision: AlertDecision) -> Alert:
        camera, config = rt.rule_config(decision.scope)
        metrics.ALERTS.inc()  # a replay after a crash may count an alert again; its id is not repeated
        return to_alert(camera, config, decision)

    alerts = op.map("alerts", op.key_rm("alerts_rm", decisions), alert)

    # 6. Sinks: every row to the store (buffered on disk while it is down), alerts also to Kafka.
    rows = op.merge("rows", frames, health, op.map("alert_rows", alerts, lambda a: ("alerts", a)))
    op.output("store", rows, StoreSink(store_writer(settings), settings.home / "buffer" / "store",
                                       opts.buffer_max_bytes, opts.store_retry_max_s))
    op.output("alert_topic", alerts, AlertTopicSink(dict(settings.kafka_config()), settings.topic_alerts,
                                                    opts.alert_dedup_horizon_s))
    return flow


def _count_late(item: tuple[str, tuple[int, Observation]]) -> None:
    scope, (_window, obs) = item
    LATE_TICKS.inc()
    log.warning("late tick %s for %s: its %s bucket already closed; not counted by the rules",
                redact_text(obs.tick_id), scope, obs.ts.isoformat())


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.detect:flow` builds the flow from the environment on first access.
    if name == "flow":
        return build_flow()
    raise AttributeError(name)
