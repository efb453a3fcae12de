"""Camera health per tick: failures in a row, the state they put the camera in, and its changes.

A camera is ``degraded`` after ``degraded_after`` failed ticks in a row and ``down`` after ``down_after``;
it is ``ok`` again only after ``recover_after`` good ticks in a row, so a camera that flaps between one good
and one bad tick does not flood the topic with changes. ``skipped`` ticks (the fetcher backed the camera
off) count as failures: the camera is still down.

Example::

    tracker = HealthThresholds(degraded_after=1, down_after=3, recover_after=2)
    state, (row, change) = track(None, outcome, tracker, camera_name="Entrance")
"""

from __future__ import annotations

from dataclasses import dataclass

from maskwatch import metrics
from maskwatch.flows.batching import TickOutcome
from maskwatch.flows.sinks import StoreItem
from maskwatch.schemas.events import CameraHealthEvent


@dataclass(frozen=True)
class HealthThresholds:
    degraded_after: int = 1
    down_after: int = 3
    recover_after: int = 2


@dataclass(frozen=True)
class HealthState:
    """What the flow keeps per camera (Bytewax state, so it survives a restart from a snapshot)."""

    failures: int = 0
    successes: int = 0
    state: str = "ok"


def next_state(prev: HealthState, ok: bool, t: HealthThresholds) -> HealthState:
    if ok:
        successes = prev.successes + 1
        state = "ok" if prev.state == "ok" or successes >= t.recover_after else prev.state
        return HealthState(0, successes, state)
    failures = prev.failures + 1
    if prev.state == "down" or failures >= t.down_after:
        state = "down"
    elif prev.state == "degraded" or failures >= t.degraded_after:
        state = "degraded"
    else:
        state = "ok"
    return HealthState(failures, 0, state)


def _kind(previous: str, state: str) -> str:
    if state == "ok":
        return "up" if previous == "down" else "recovered"
    return state  # degraded or down


def track(prev: HealthState | int | None, outcome: TickOutcome, t: HealthThresholds, camera_name: str = ""
          ) -> tuple[HealthState, tuple[StoreItem, CameraHealthEvent | None]]:
    """The camera's new state, its health row, and the change event if the state changed."""
    if not isinstance(prev, HealthState):  # None, or an int from a snapshot taken before changes existed
        prev = HealthState(failures=prev or 0)
    ok = outcome.fetched_status == "ok"
    new = next_state(prev, ok, t)
    f = outcome.frame
    metrics.CAMERA_DOWN.labels(camera=f.camera_id, site=f.site).set(1 if new.state == "down" else 0)
    row: StoreItem = ("camera_health", outcome.health(new.failures, new.state))
    if new.state == prev.state:
        return new, (row, None)
    change = CameraHealthEvent(
        event_id=f"{f.tick_id}:{new.state}", camera_id=f.camera_id, camera_name=camera_name, site=f.site,
        zone=f.zone, kind=_kind(prev.state, new.state),  # type: ignore[arg-type]
        state=new.state, previous_state=prev.state,  # type: ignore[arg-type]
        tick_id=f.tick_id, changed_at=f.scheduled_at, consecutive_failures=new.failures,
        status=outcome.fetched_status, error=outcome.error,
    )
    metrics.CAMERA_HEALTH_CHANGES.labels(kind=change.kind).inc()
    return new, (row, change)

