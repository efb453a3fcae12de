"""Back-off for cameras that keep failing: a dead camera costs no fetch while it is down.

After ``after`` failed ticks in a row a camera is *backed off*: its ticks are skipped (and recorded as
``skipped``, with when it will be tried again) until a probe time; the tick at or after it is fetched as a
probe. A failed probe doubles the wait, up to ``max_s``; a good one ends the back-off.

Example::

    backoff = Backoff(after=3, base_s=10, max_s=300)
    if (why := backoff.skip("cam-1", time.monotonic())) is None:
        ...  # fetch, then
        backoff.record("cam-1", ok=False, now=time.monotonic())
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class _Failing:
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""


class Backoff:
    """Per-camera failures in a row and the next probe time (monotonic seconds)."""

    def __init__(self, after: int = 3, base_s: float = 10.0, max_s: float = 300.0):
        if after < 1 or base_s <= 0 or max_s < base_s:
            raise ValueError("Backoff needs after >= 1 and 0 < base_s <= max_s")
        self.after, self.base_s, self.max_s = after, base_s, max_s
        self._cameras: dict[str, _Failing] = {}
        self._lock = threading.Lock()

    def skip(self, camera_id: str, now: float) -> str | None:
        """Why this camera's tick is not fetched now, or None to fetch it."""
        with self._lock:
            state = self._cameras.get(camera_id)
            if state is None or state.failures < self.after or now >= state.retry_at:
                return None
            return (f"backed off after {state.failures} failures in a row (last: {state.last_error}); "
                    f"next try in {state.retry_at - now:.0f}s")

    def record(self, camera_id: str, ok: bool, now: float, error: str = "") -> None:
        with self._lock:
            if ok:
                self._cameras.pop(camera_id, None)
                return
            state = self._cameras.setdefault(camera_id, _Failing())
            state.failures += 1
            state.last_error = error[:200]
            if state.failures >= self.after:
                wait = min(self.max_s, self.base_s * 2 ** (state.failures - self.after))
                state.retry_at = now + wait

    def failing(self, camera_id: str) -> bool:
        """Did the camera's last fetch fail?"""
        with self._lock:
            return camera_id in self._cameras

    def forget(self, keep: set[str]) -> None:
        with self._lock:
            self._cameras = {c: s for c, s in self._cameras.items() if c in keep}

    def backed_off(self, now: float) -> int:
        """How many cameras are backed off at ``now`` (a gauge)."""
        with self._lock:
            return sum(1 for s in self._cameras.values() if s.failures >= self.after and now < s.retry_at)
