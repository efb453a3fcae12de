"""Camera health per tick: failures in a row, and the state they put the camera in."""

from __future__ import annotations

from maskwatch.flows.batching import TickOutcome
from maskwatch.flows.sinks import StoreItem


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
