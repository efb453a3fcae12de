"""The detection dataflow, top to bottom:

    ticks (Kafka) -> parse/validate -> dead letters (Kafka)
                  -> resolve camera in the registry (unknown/disabled dropped, counted)
                  -> micro-batch per shard (op.collect) -> fetch concurrently -> two-stage inference
                  -> faces outside the camera's counting area flagged; faces associated into people
                  -> frames, detections, camera health -> ClickHouse
                  -> camera health changes (down, back up, ...) -> ClickHouse and the camera-health topic
                  -> event-time buckets per camera (and zone/site) -> rules -> an alert's life
                     (opened, updated, resolved, re-opened) within the camera's and site's schedule
                  -> alert rows and events to ClickHouse, events (contract v2) to the alert topic

Run it with ``maskwatch flow run`` (or ``python -m bytewax.run maskwatch.flows.detect:flow``). Everything
is read
from ``MASKWATCH_*`` variables (``maskwatch.config.Settings`` and ``maskwatch.flows.options.FlowOptions``).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

import bytewax.operators as op
from bytewax.connectors.kafka import KafkaSink, KafkaSinkMessage, KafkaSource
from bytewax.dataflow import Dataflow

from maskwatch import metrics
from maskwatch.config import Settings
from maskwatch.flows.alerts import observations, to_alert, to_event
from maskwatch.flows.batching import FetchInfer, TickOutcome, micro_batches
from maskwatch.flows.cluster import running
from maskwatch.flows.health import HealthState, HealthThresholds, track
from maskwatch.flows.lifecycle import Step
from maskwatch.flows.options import FlowOptions
from maskwatch.flows.people import PeopleState, associate
from maskwatch.flows.rules import Observation
from maskwatch.flows.runtime import FlowRuntime
from maskwatch.flows.sinks import AlertTopicSink, StoreItem, StoreSink, dead_letter_rows, store_writer
from maskwatch.flows.ticks import dead_letter_message, first_delivery, is_tick, parse_tick
from maskwatch.flows.windows import windowed_alerts
from maskwatch.schemas.events import Alert, AlertEvent, CameraHealthEvent, Tick
from maskwatch.schemas.redaction import redact_text

log = logging.getLogger(__name__)


def build_flow(settings: Settings | None = None, opts: FlowOptions | None = None) -> Dataflow:
    """The detection dataflow. ``maskwatch flow run`` passes both arguments. Called with none, as Bytewax's
    own runner does (``python -m bytewax.run "maskwatch.flows.dataflow:build_flow()"``), it reads the
    settings from the environment, takes one micro-batch shard per worker of the cluster bytewax.run was
    started with, and serves maskwatch's /metrics on ``MASKWATCH_METRICS_PORT``."""
    if opts is None:
        cluster = running()
        opts = FlowOptions.from_settings(workers=cluster.workers_on_this_host,
                                         cluster_workers=cluster.total_workers)
        metrics.serve_metrics()
    settings = settings or Settings()
    rt = FlowRuntime(settings, opts)
    kafka_conf = settings.kafka_config()
    brokers = [kafka_conf.pop("bootstrap.servers")]
    flow = Dataflow("maskwatch-detect")

    # 1. Ticks in; anything that is not a valid tick goes to the dead-letter topic with its reason.
    # One consumer poll brings at most one micro-batch worth of ticks.
    raw = op.input("ticks", flow, KafkaSource(brokers, [settings.topic_ticks], add_config=kafka_conf,
                                              batch_size=opts.batch_max, raise_on_errors=False))
    parsed = op.map("parse_tick", raw, lambda m: parse_tick(m, opts.tick_max_age_s, opts.tick_max_ahead_s))
    split = op.branch("valid_tick", parsed, is_tick)
    dead = op.map("dead_letter_message", split.falses, lambda d: dead_letter_message(d))  # type: ignore[arg-type]
    op.output("dead_letters", dead, KafkaSink(brokers, settings.topic_dead_letter, add_config=kafka_conf))

    # 2. Resolve each tick's camera from the registry (the URL never comes from the event).
    def known(tick: Tick) -> bool:
        return rt.registry.resolve(tick.camera_id)[0] is not None

    resolved = op.filter("known_camera", split.trues, known)
    # A tick delivered twice (a producer retry, a second ticker) goes on once.
    by_camera_tick = op.key_on("tick_camera", resolved, lambda t: t.camera_id)
    unique = op.key_rm("unique_rm", op.stateful_flat_map("first_delivery", by_camera_tick, first_delivery))

    # 3. Micro-batches that mix cameras, fetched concurrently and inferred together.
    batches = micro_batches(unique, opts.shards, timedelta(seconds=opts.batch_timeout_s), opts.batch_max)
    # A suspect camera's tick does not hold its batch: its outcome follows when its own fetch ends.
    inferred = op.stateful("fetch_infer", batches,
                           lambda resume: FetchInfer(rt.process_detaching, rt.finish, resume))
    outcomes = op.key_rm("unshard", inferred)

    # 4. People: each camera's counted faces associated across its consecutive ticks (per-camera state).
    by_camera = op.key_on("by_camera", outcomes, lambda o: o.frame.camera_id)

    def people(state: PeopleState | None, o: TickOutcome) -> tuple[PeopleState, TickOutcome]:
        state, faces, sightings = associate(state, o.frame, o.faces, opts.tracking)
        return state, replace(o, faces=faces, sightings=tuple(sightings))

    tracked = op.key_rm("people_rm", op.stateful_map("people", by_camera, people))

    # 5. Rows for the store: frames, detections and per-camera health (failures in a row are state).
    # A frame's faces before the frame itself: once a frame row is in, so are its faces (a crash
    # between the two replays the tick, whose newer row then wins).
    frames = op.flat_map("frame_rows", tracked, lambda o: [("detections", d) for d in o.faces]
                         + [("frames", o.frame)])
    thresholds = HealthThresholds(opts.health_degraded_after, opts.health_down_after,
                                  opts.health_recover_after)

    def track_health(state: HealthState | None, outcome: TickOutcome
                     ) -> tuple[HealthState, tuple[StoreItem, CameraHealthEvent | None]]:
        camera = rt.registry.get(outcome.frame.camera_id)
        return track(state, outcome, thresholds, camera.name if camera is not None else "")

    healthy = op.key_rm("health_rm", op.stateful_map("health", by_camera, track_health))
    health = op.map("health_rows", healthy, lambda pair: pair[0])
    changes = op.filter_map("health_changes", healthy, lambda pair: pair[1])

    # 6. Rules: event-time buckets per scope (camera, and zone/site if enabled), then the pure decision
    #    with per-camera overrides; outside a camera's or site's schedule no alert is raised.
    scoped = op.flat_map("observe", tracked, lambda o: observations(o, opts.rule_scopes))
    steps, late = windowed_alerts(scoped, opts.bucket_s, opts.lateness_s,
                                  lambda scope: rt.rule_config(scope)[1], rt.suppressed)
    op.inspect("late_ticks", late, lambda _step, item: _count_late(item))

    # 7. Each step of an alert's life (opened, updated, resolved, re-opened): its event (contract v2, with
    #    a signed snapshot link) and the alert's row in the store with its state.
    def alert(step: Step) -> tuple[Alert, AlertEvent]:
        camera, config = rt.rule_config(step.decision.scope)
        if step.kind in ("opened", "reopened"):
            metrics.ALERTS.inc()  # a replay after a crash may count one again; its event id is not repeated
        row = to_alert(camera, config, step.decision, step.kind, step.opened_at, step.at)
        return row, to_event(step, camera, config, rt.site_timezone(row.site),
                             rt.snapshot_link(step.decision.snapshot_path))

    alerts = op.map("alerts", op.key_rm("alerts_rm", steps), alert)
    events = op.map("alert_events", alerts, lambda pair: pair[1])

    # 8. Sinks: every row to the store (buffered on disk while it is down), alert events also to Kafka.
    rows = op.merge("rows", frames, health,
                    op.flat_map("alert_rows", alerts, lambda p: [("alert_events", p[1]), ("alerts", p[0])]),
                    op.map("health_change_rows", changes, lambda c: ("camera_health_events", c)))
    buffer_dir = settings.home / "buffer" / "store"
    refused = dead_letter_rows(settings.kafka_config(), settings.topic_dead_letter,
                               buffer_dir / "refused-rows.jsonl")
    op.output("store", rows, StoreSink(store_writer(settings), buffer_dir, opts.buffer_max_bytes,
                                       opts.store_retry_max_s, refused))
    op.output("alert_topic", events, AlertTopicSink(dict(settings.kafka_config()), settings.topic_alerts,
                                                    opts.alert_dedup_horizon_s))
    # Health changes: at least once (a replay may publish one again; its event_id says it is the same).
    health_messages = op.map("health_message", changes, lambda c: KafkaSinkMessage(
        c.camera_id.encode(), c.model_dump_json().encode()))
    op.output("camera_health_topic", health_messages,
              KafkaSink(brokers, settings.topic_camera_health, add_config=kafka_conf))
    return flow


def _count_late(item: tuple[str, tuple[int, Observation]]) -> None:
    scope, (_window, obs) = item
    metrics.FLOW_LATE_TICKS.inc()
    log.warning("late tick %s for %s: its %s bucket already closed; not counted by the rules",
                redact_text(obs.tick_id), scope, obs.ts.isoformat())
