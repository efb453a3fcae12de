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
from maskwatch.flows.rules import EPOCH, AlertDecision, Bucket, Observation, RuleConfig, RuleState, evaluate

log = logging.getLogger(__name__)
_FROZEN_NOW = datetime(2000, 1, 1, tzinfo=UTC)


def windowed_alerts(
    up: KeyedStream[Observation], bucket_s: int, lateness_s: int, config_for: Callable[[str], RuleConfig],
    suppressed: Callable[[str, datetime], str] = lambda _scope, _at: "",
) -> tuple[KeyedStream[AlertDecision], KeyedStream[tuple[int, Observation]]]:
    """Alert decisions per key (camera), and the observations that arrived after their bucket closed.

    A decision the scope's schedule forbids at its window's end (``suppressed`` says why) is dropped and
    counted, and starts no cool-down, so an incident still going on when the schedule opens alerts then."""
    clock: win.EventClock[Observation] = win.EventClock(
        lambda o: o.ts, wait_for_system_duration=timedelta(seconds=lateness_s),
        now_getter=lambda: _FROZEN_NOW, to_system_utc=lambda _ts: None,
    )
    windower = win.TumblingWindower(length=timedelta(seconds=bucket_s), align_to=EPOCH)
    buckets = win.fold_window("rule_buckets", up, clock, windower, lambda: Bucket(EPOCH),
                              lambda b, o: b.add(o), lambda a, b: a.merge(b))

    def decide(state: RuleState | None, item: tuple[str, tuple[int, Bucket]]) -> tuple[
        RuleState, AlertDecision | None
    ]:
        key, (window_id, bucket) = item
        bucket.start = EPOCH + timedelta(seconds=window_id * bucket_s)
        metrics.RULE_EVALUATIONS.inc()
        state = state or RuleState()
        quiet_until = state.quiet_until
        new_state, decision = evaluate(state, bucket, bucket_s, config_for(key), key)
        if decision is not None and (reason := suppressed(key, decision.window_end)):
            new_state.quiet_until = quiet_until
            metrics.ALERTS_SUPPRESSED.labels(reason=reason).inc()
            log.info("%s: %s alert not raised at %s: %s by its schedule", key, decision.rule,
                     decision.window_end.isoformat(), reason)
            return new_state, None
        return new_state, decision

    with_key = op.map("rule_key", buckets.down, lambda kv: (kv[0], kv))
    decided = op.stateful_map("rule_state", with_key, decide)
    return op.filter_map_value("rule_decisions", decided, lambda d: d), buckets.late
