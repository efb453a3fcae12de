"""What the flow's steps share in one process: the registry cache, and a fetcher and engine per worker."""

from __future__ import annotations

import logging
import threading
import time

from maskwatch.config import Settings
from maskwatch.flows.batching import BatchProcessor, TickOutcome
from maskwatch.flows.fetch import Fetcher
from maskwatch.flows.options import FlowOptions
from maskwatch.flows.registry_cache import RegistryCache, store_loader
from maskwatch.flows.rules import RuleConfig, parse_scope
from maskwatch.schemas.events import Camera, Tick

log = logging.getLogger(__name__)


class FlowRuntime:
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
            from maskwatch.inference.serving.engine import InferenceEngine
            from maskwatch.inference.session import cpu_count

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
