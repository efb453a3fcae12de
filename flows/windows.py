"""The rules as Bytewax operators: event-time buckets per camera, then :func:`maskwatch.flows.rules.evaluate`.

Event time moves only with ticks: the clock's "now" is frozen, so the watermark is the newest tick's
time minus the allowed lateness. A replay after a crash therefore closes the same buckets with the same
ticks as the first run, and the alert ids come out identical.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.operators import KeyedStream

from maskwatch import metrics
from maskwatch.flows.lifecycle import Step, advance
from maskwatch.flows.rules import EPOCH, Bucket, Observation, RuleConfig, RuleState, evaluate

log = logging.getLogger(__name__)
_FROZEN_NOW = datetime(2000, 1, 1, tzinfo=UTC)


def windowed_alerts(
    up: KeyedStream[Observation], bucket_s: int, lateness_s: int, config_for: Callable[[str], RuleConfig],
    suppressed: Callable[[str, datetime], str] = lambda _scope, _at: "",
) -> tuple[KeyedStream[Step], KeyedStream[tuple[int, Observation]]]:
    """The steps of each scope's alerts (opened, updated, resolved, re-opened), and the observations that
    arrived after their bucket closed.

    Where the scope's schedule forbids an alert (``suppressed`` says why) nothing is opened, updated or
    re-opened; that is counted, and an incident still going on when the schedule opens alerts then."""
    clock: win.EventClock[Observation] = win.EventClock(
        lambda o: o.ts, wait_for_system_duration=timedelta(seconds=lateness_s),
        now_getter=lambda: _FROZEN_NOW, to_system_utc=lambda _ts: None,
    )
    windower = win.TumblingWindower(length=timedelta(seconds=bucket_s), align_to=EPOCH)
    buckets = win.fold_window("rule_buckets", up, clock, windower, lambda: Bucket(EPOCH),
                              lambda b, o: b.add(o), lambda a, b: a.merge(b))

    def decide(state: RuleState | None, item: tuple[str, tuple[int, Bucket]]) -> tuple[RuleState, list[Step]]:
        key, (window_id, bucket) = item
        bucket.start = EPOCH + timedelta(seconds=window_id * bucket_s)
        metrics.RULE_EVALUATIONS.inc()
        state = _current(state)
        config = config_for(key)
        new_state, held = evaluate(state, bucket, bucket_s, config, key)
        end = bucket.start + timedelta(seconds=bucket_s)
        if end != new_state.buckets[-1].start + timedelta(seconds=bucket_s):
            return new_state, []  # a late bucket: history only
        incident, steps = advance(new_state.incident, held, end, config, bucket_s)
        if held is not None and any(s.kind != "resolved" for s in steps) \
                and (reason := suppressed(key, end)):
            metrics.ALERTS_SUPPRESSED.labels(reason=reason).inc()
            log.info("%s: %s alert not raised at %s: %s by its schedule", key, held.rule, end.isoformat(),
                     reason)
            incident, steps = advance(new_state.incident, None, end, config, bucket_s)
        new_state.incident = incident
        return new_state, steps

    with_key = op.map("rule_key", buckets.down, lambda kv: (kv[0], kv))
    decided = op.stateful_map("rule_state", with_key, decide)
    return op.flat_map_value("rule_steps", decided, lambda steps: steps), buckets.late


def _current(state: RuleState | None) -> RuleState:
    """The state as this version keeps it: one recovered from a version with cool-downs and no
    incidents (``quiet_until``) starts with no incident."""
    if state is None:
        return RuleState()
    if not hasattr(state, "incident"):
        return RuleState(buckets=list(state.buckets))
    return state
