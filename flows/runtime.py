"""What the flow's steps share in one process: the registry cache, and a fetcher and engine per worker."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from maskwatch import metrics
from maskwatch.cameras.capture.fetcher import Fetcher
from maskwatch.config import Settings, SnapshotLinkSettings
from maskwatch.flows.batching import BatchProcessor, Pending, TickOutcome
from maskwatch.flows.options import FlowOptions
from maskwatch.flows.registry_cache import RegistryCache, store_loader, store_site_loader
from maskwatch.flows.rules import RuleConfig, parse_scope
from maskwatch.flows.schedules import Suppressed, suppressed
from maskwatch.flows.snapshots import SnapshotPruner
from maskwatch.schemas.events import Camera, Tick
from maskwatch.snapshots.links import signed_link

log = logging.getLogger(__name__)
T = TypeVar("T")


class FlowRuntime:
    """Per-process registry cache, per-worker (thread) fetcher and engine: built on first use, so
    importing this module or building the flow touches no network, store or model."""

    def __init__(self, settings: Settings, opts: FlowOptions):
        self.settings, self.opts = settings, opts
        self._lock = threading.Lock()
        self._registry: RegistryCache | None = None
        self._pruner: SnapshotPruner | None = None
        self._links: SnapshotLinkSettings | None = None
        self._local = threading.local()

    @property
    def registry(self) -> RegistryCache:
        with self._lock:
            if self._registry is None:
                self._registry = RegistryCache(store_loader(self.settings), self.opts.registry_refresh_s,
                                               store_site_loader(self.settings))
            return self._registry

    def _start_pruner(self, root: Path) -> None:
        """One snapshot pruner per process (the first worker to need snapshots starts it)."""
        with self._lock:
            if self._pruner is None:
                self._pruner = SnapshotPruner(root, self.opts.snapshot_keep_days,
                                              self.opts.snapshot_max_bytes)
                self._pruner.start()

    def wanted_models(self) -> tuple[str, str]:
        """The detector and classifier this flow should serve now: the ones the options name, else the
        defaults, which become the tuned ones once `maskwatch models tune` has built them."""
        from maskwatch.inference.serving.engine import default_models

        detector, classifier = default_models(self.settings.models_dir)
        return self.opts.detector or detector, self.opts.classifier or classifier

    def _engine(self, detector: str, classifier: str) -> Any:
        from maskwatch.inference.serving.engine import InferenceEngine
        from maskwatch.inference.session import cpu_count

        return InferenceEngine.default(detector, classifier, models_dir=self.settings.models_dir,
                                       threads=max(1, cpu_count() // self.opts.workers))

    def processor(self) -> BatchProcessor:
        proc: BatchProcessor | None = getattr(self._local, "processor", None)
        if proc is None:
            engine = self._engine(*self.wanted_models())
            snapshots = self.settings.home / "snapshots" if self.opts.snapshots else None
            if snapshots is not None:
                self._start_pruner(snapshots)
            proc = BatchProcessor(
                Fetcher(self.opts.fetch), engine, snapshots, detector_model=engine.detector_spec.name,
                classifier_model=engine.classifier_spec.name, snapshot_max_width=self.opts.snapshot_max_width,
                blur_faces=self.opts.snapshot_blur_faces,
            )
            self._local.processor = proc
        return proc

    def _swap_models(self, proc: BatchProcessor) -> None:
        """Serve newly built models without a restart: the first run serves the shipped models at once and
        `maskwatch models tune` builds the tuned ones beside them; each worker loads them when they appear
        (a frame's row says which models saw it)."""
        wanted = self.wanted_models()
        if wanted == (proc.detector_model, proc.classifier_model):
            return
        try:
            engine = self._engine(*wanted)
        except Exception as exc:  # a model half-written or broken: keep serving the current pair
            log.warning("models %s + %s not loadable yet (%s); still serving %s + %s", *wanted, exc,
                        proc.detector_model, proc.classifier_model)
            return
        log.info("serving new models: detector %s -> %s, classifier %s -> %s", proc.detector_model,
                 engine.detector_spec.name, proc.classifier_model, engine.classifier_spec.name)
        proc.engine = engine
        proc.detector_model, proc.classifier_model = engine.detector_spec.name, engine.classifier_spec.name

    def process(self, ticks: list[Tick]) -> list[TickOutcome]:
        """Fetch and infer a micro-batch, waiting for every tick."""
        return self._resolved(ticks, lambda proc, batch: proc.process(batch))

    def process_detaching(self, ticks: list[Tick], behind: Collection[str] = ()
                          ) -> tuple[list[TickOutcome], list[Pending]]:
        """Fetch and infer a micro-batch; suspect cameras' ticks come back pending (see ``finish``)."""
        return self._resolved(ticks, lambda proc, batch: proc.process_detaching(batch, behind))

    def finish(self, pending: list[Pending], wait: bool) -> tuple[list[TickOutcome], list[Pending]]:
        return self.processor().finish(pending, wait)

    def _resolved(self, ticks: list[Tick],
                  run: Callable[[BatchProcessor, list[tuple[Tick, Camera]]], T]) -> T:
        proc = self.processor()
        now = time.monotonic()
        if now - getattr(self._local, "retained_at", 0.0) > self.opts.registry_refresh_s:
            # Close stream connections of cameras that were removed or disabled.
            proc.fetcher.retain(self.registry.enabled_ids())
            self._swap_models(proc)
            self._local.retained_at = now
        # The camera (with its source URL) is looked up only here, never carried in operator state, so
        # credentials do not end up in recovery snapshots. A camera removed meanwhile drops its tick.
        batch = [(t, c) for t in ticks if (c := self.registry.resolve(t.camera_id)[0]) is not None]
        if ticks:
            newest = max(t.scheduled_at for t in ticks)
            metrics.TICK_LAG.set(max(0.0, (datetime.now(UTC) - newest).total_seconds()))
        return run(proc, batch)

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

    def suppressed(self, scope: str, at: datetime) -> Suppressed:
        """Why the scope may raise no alert at ``at`` (event time): its camera's schedule, then its site's,
        read in the site's timezone (UTC for a site nobody registered); '' when it may."""
        kind, site_id, _zone = parse_scope(scope)
        schedules = []
        if kind == "camera":
            camera = self.registry.get(scope)
            if camera is None:
                return ""
            site_id = camera.site
            schedules.append(camera.schedule)
        site = self.registry.site(site_id) if site_id else None
        if site is not None:
            schedules.append(site.schedule)
        timezone = site.timezone if site is not None else "UTC"
        for schedule in schedules:
            if reason := suppressed(schedule, timezone, at):
                return reason
        return ""

    def site_timezone(self, site_id: str) -> str:
        site = self.registry.site(site_id) if site_id else None
        return site.timezone if site is not None else "UTC"

    def snapshot_link(self, snapshot_path: str) -> tuple[str, datetime] | None:
        """A signed, expiring link to a snapshot for the alert event, when links are set up
        (``MASKWATCH_SNAPSHOT_LINK_*``); never the host path."""
        return signed_link(self.links, self.settings.home / "snapshots", snapshot_path)

    @property
    def links(self) -> SnapshotLinkSettings:
        with self._lock:
            if self._links is None:
                self._links = SnapshotLinkSettings()
            return self._links
