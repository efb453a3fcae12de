"""The camera registry as the flow sees it: cached per process, refreshed periodically.

Ticks carry only a camera id; the source URL (with its credentials) is looked up here, never taken
from an event. A failed refresh keeps the last good copy so a store hiccup does not stop cameras.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable

from maskwatch import metrics
from maskwatch.config import Settings
from maskwatch.schemas.events import Camera, Site

log = logging.getLogger(__name__)

Loader = Callable[[], Iterable[Camera]]
SiteLoader = Callable[[], Iterable[Site]]



def store_loader(settings: Settings | None = None) -> Loader:
    """All registered cameras, through the registry module (which reads the store)."""

    def load() -> Iterable[Camera]:
        from maskwatch.cameras.registry import list_cameras

        return list_cameras(settings)

    return load


def store_site_loader(settings: Settings | None = None) -> SiteLoader:
    """All registered sites (timezones, schedules), from the store."""

    def load() -> Iterable[Site]:
        from maskwatch.cameras.sites import list_sites

        return list_sites(settings)

    return load


class RegistryCache:
    def __init__(self, loader: Loader, refresh_s: float = 30.0, sites: SiteLoader | None = None):
        self._loader = loader
        self._site_loader = sites
        self._sites: dict[str, Site] = {}
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._cameras: dict[str, Camera] = {}
        self._loaded_at: float | None = None
        self.dropped: Counter[str] = Counter()

    def _maybe_refresh(self) -> None:
        now = time.monotonic()
        if self._loaded_at is not None and now - self._loaded_at < self._refresh_s:
            return
        backoff = 0.5
        while True:
            try:
                cameras = {c.id: c for c in self._loader()}
                break
            except Exception as exc:
                if self._loaded_at is not None:
                    log.warning("camera registry refresh failed, keeping the last copy: %s", exc)
                    self._loaded_at = now  # retry after another refresh period, not on every tick
                    return
                # Never loaded: without it every tick would look unknown, so wait (ticks stay in Kafka).
                log.error("camera registry unavailable, retrying in %.1fs: %s", backoff, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 10.0)
        self._cameras, self._loaded_at = cameras, now
        if self._site_loader is not None:
            try:
                self._sites = {s.id: s for s in self._site_loader()}
            except Exception as exc:  # schedules then stay as they were: alerts are not the tick path
                log.warning("site registry refresh failed, keeping the last copy: %s", exc)

    def site(self, site_id: str) -> Site | None:
        with self._lock:
            self._maybe_refresh()
            return self._sites.get(site_id)

    def get(self, camera_id: str) -> Camera | None:
        with self._lock:
            self._maybe_refresh()
            return self._cameras.get(camera_id)

    def enabled_ids(self) -> set[str]:
        with self._lock:
            self._maybe_refresh()
            return {c.id for c in self._cameras.values() if c.enabled}

    def resolve(self, camera_id: str) -> tuple[Camera | None, str]:
        """The camera if the flow should process its tick, else None and the counted drop reason."""
        camera = self.get(camera_id)
        reason = "unknown_camera" if camera is None else ("" if camera.enabled else "disabled_camera")
        if reason:
            with self._lock:
                self.dropped[reason] += 1
                first = self.dropped[reason] == 1
            metrics.FLOW_DROPPED_TICKS.labels(reason).inc()
            (log.warning if first else log.debug)("dropping tick of camera %s: %s", camera_id, reason)
            return None, reason
        return camera, ""
