"""An alert's life: opened when a rule first holds, updated while it holds with a higher figure, resolved
once no rule has held for a whole window, re-opened (the same alert) when one holds again within the
cool-down after that. Pure logic over what :func:`maskwatch.flows.rules.evaluate` says of each closed
bucket; acknowledgements come from people (the dashboard), not from here.

Every step is derived from event time, so a replay after a crash yields the same steps with the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from maskwatch.flows.rules import AlertDecision, Incident, RuleConfig

StepKind = Literal["opened", "updated", "resolved", "reopened"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    at: datetime  # the bucket end it happened at
    decision: AlertDecision  # the figures it reports (for resolved: the last ones reported)
    opened_at: datetime  # when the alert first opened (its store row is filed under it)


def advance(incident: Incident | None, held: AlertDecision | None, end: datetime, config: RuleConfig,
            bucket_s: int = 10) -> tuple[Incident | None, list[Step]]:
    """The incident after the bucket ending at ``end`` (``bucket_s`` long), in which ``held`` held (or
    nothing did). Buckets with no ticks at all never close, so a gap of a whole window before ``end``
    (a camera that was off, a flow that was down) resolved the incident at its end.

    >>> from datetime import UTC
    >>> t = datetime(2026, 1, 1, tzinfo=UTC)
    >>> def holds(s, people):
    ...     start = t + timedelta(seconds=s - 60)
    ...     return AlertDecision("id", "cam", "nomask_people", start, t + timedelta(seconds=s), 6, 3, 3, 6,
    ...                          3.0, float(people), (), "", people)
    >>> cfg = RuleConfig(window_s=60, min_people=3, cooldown_s=300)
    >>> inc, steps = advance(None, holds(10, 3), t + timedelta(seconds=10), cfg)
    >>> inc, more = advance(inc, holds(20, 4), t + timedelta(seconds=20), cfg)
    >>> inc, done = advance(inc, None, t + timedelta(seconds=80), cfg)
    >>> inc, again = advance(inc, holds(200, 3), t + timedelta(seconds=200), cfg)
    >>> [s.kind for s in steps + more + done + again]
    ['opened', 'updated', 'resolved', 'reopened']
    """
    if incident is not None and incident.resolved_at is None \
            and end - timedelta(seconds=bucket_s) - incident.last_held >= timedelta(seconds=config.window_s):
        resolved_at = incident.last_held + timedelta(seconds=config.window_s)
        incident = replace(incident, resolved_at=resolved_at)
        gone = Step("resolved", resolved_at, incident.decision, incident.opened_at)
        incident, after = advance(incident, held, end, config, bucket_s)
        return incident, [gone, *after]
    if incident is not None and incident.resolved_at is None:
        if held is None:
            if end - incident.last_held >= timedelta(seconds=config.window_s):
                return (replace(incident, resolved_at=end),
                        [Step("resolved", end, incident.decision, incident.opened_at)])
            return incident, []
        grown = held.rule == incident.decision.rule and held.value > incident.decision.value
        figures = replace(held, alert_id=incident.decision.alert_id) if grown else incident.decision
        return (replace(incident, decision=figures, last_held=end),
                [Step("updated", end, figures, incident.opened_at)] if grown else [])
    if held is None:
        return incident, []
    if incident is not None and incident.resolved_at is not None \
            and end - incident.resolved_at <= timedelta(seconds=config.cooldown_s):
        figures = replace(held, alert_id=incident.decision.alert_id)
        return (Incident(figures, end, incident.opened_at),
                [Step("reopened", end, figures, incident.opened_at)])
    return Incident(held, end, end), [Step("opened", end, held, end)]
