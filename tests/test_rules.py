"""The alert rules' decision logic: examples plus hypothesis properties over random tick sequences."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskwatch.flows.rules import (
    RULE_COUNT,
    RULE_RATIO,
    Bucket,
    Observation,
    RuleConfig,
    RuleState,
    alert_id,
    bucket_start,
    evaluate,
)

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
B = 10


def run(observations: list[Observation], config: RuleConfig, bucket_s: int = B) -> list:
    """Fold observations into buckets (what the flow's fold_window does) and evaluate in order."""
    buckets: dict[datetime, Bucket] = {}
    for obs in observations:
        start = bucket_start(obs.ts, bucket_s)
        buckets.setdefault(start, Bucket(start)).add(obs)
    state, alerts = RuleState(), []
    for start in sorted(buckets):
        state, decision = evaluate(state, buckets[start], bucket_s, config, "cam")
        if decision:
            alerts.append(decision)
    return alerts


def obs(second: float, faces: int = 1, nomask: int = 0, frames: int = 1) -> Observation:
    ts = T0 + timedelta(seconds=second)
    return Observation("cam", ts, frames, faces, nomask, f"cam:{int(second * 1000)}")


def test_count_rule_fires_once_per_incident_with_cooldown() -> None:
    config = RuleConfig(window_s=30, min_nomask_faces=3, nomask_ratio=1.0, min_frames=100, cooldown_s=60)
    masked = [obs(s, faces=2) for s in range(0, 30, 2)]
    unmasked = [obs(s, faces=1, nomask=1) for s in range(30, 90, 2)]
    alerts = run(masked + unmasked, config)
    # 30 s of no-mask frames from t=30: the 3rd no-mask face is in bucket [30,40) -> one alert, then
    # quiet for 60 s (until bucket end 100) although every later bucket would also trigger.
    assert [a.rule for a in alerts] == [RULE_COUNT]
    assert alerts[0].window_end == T0 + timedelta(seconds=40)
    assert alerts[0].nomask_faces >= 3
    assert alerts[0].tick_ids and all(t.startswith("cam:") for t in alerts[0].tick_ids)
    # After the cool-down the continuing incident alerts again.
    alerts = run(masked + unmasked + [obs(s, faces=1, nomask=1) for s in range(90, 120, 2)], config)
    assert len(alerts) == 2 and alerts[1].window_end > alerts[0].window_end + timedelta(seconds=60)


def test_ratio_rule_and_masked_people_never_alert() -> None:
    config = RuleConfig(window_s=20, min_nomask_faces=50, nomask_ratio=0.5, min_frames=4, cooldown_s=0)
    assert run([obs(s, faces=3) for s in range(0, 200, 2)], config) == []
    half = [obs(s, faces=2, nomask=1 if (s // 2) % 2 else 0) for s in range(0, 20, 2)]
    alerts = run(half, config)
    assert alerts and alerts[0].rule == RULE_RATIO and alerts[0].value >= 0.5


def test_failed_fetches_move_time_but_never_count() -> None:
    config = RuleConfig(window_s=10, min_nomask_faces=1, nomask_ratio=0.1, min_frames=1, cooldown_s=0)
    assert run([obs(s, faces=0, nomask=0, frames=0) for s in range(0, 60, 2)], config) == []


def test_overrides_apply_and_reject_unknown_keys() -> None:
    base = RuleConfig()
    got = base.with_overrides({"min_nomask_faces": 1, "window_s": 25.0, "nomask_ratio": None}, bucket_s=10)
    assert got.min_nomask_faces == 1 and got.window_s == 30 and got.nomask_ratio == base.nomask_ratio
    with pytest.raises(ValueError, match="unknown rule override"):
        base.with_overrides({"threshold": 3}, bucket_s=10)
    with pytest.raises(ValueError, match="nomask_ratio"):
        RuleConfig(nomask_ratio=0.0)


def test_alert_ids_are_deterministic_and_distinct() -> None:
    a = alert_id("cam1", RULE_COUNT, T0)
    assert a == alert_id("cam1", RULE_COUNT, T0.astimezone(UTC))
    assert len({a, alert_id("cam2", RULE_COUNT, T0), alert_id("cam1", RULE_RATIO, T0),
                alert_id("cam1", RULE_COUNT, T0 + timedelta(seconds=10))}) == 4


tick = st.tuples(st.integers(0, 600), st.integers(0, 4), st.integers(0, 4), st.booleans())
configs = st.builds(RuleConfig, window_s=st.sampled_from([10, 30, 60]), min_nomask_faces=st.integers(1, 6),
                    nomask_ratio=st.floats(0.05, 1.0), min_frames=st.integers(1, 10),
                    cooldown_s=st.sampled_from([0, 30, 120]))


def _observations(raw: list[tuple[int, int, int, bool]]) -> list[Observation]:
    return [obs(s, faces=max(f, n), nomask=n if ok else 0, frames=1 if ok else 0) for s, f, n, ok in raw]


@settings(max_examples=150, deadline=None)
@given(st.lists(tick, max_size=80), configs)
def test_property_every_alert_meets_its_threshold(raw: list, config: RuleConfig) -> None:
    observations = _observations(raw)
    for a in run(observations, config):
        inside = [o for o in observations if a.window_start <= o.ts < a.window_end]
        assert a.window_end - a.window_start == timedelta(seconds=config.window_s)
        assert a.nomask_faces == sum(o.nomask_faces for o in inside)
        assert a.frames == sum(o.frames for o in inside)
        if a.rule == RULE_COUNT:
            assert a.nomask_faces >= config.min_nomask_faces
        else:
            assert a.frames >= config.min_frames
            assert a.nomask_frames / a.frames >= config.nomask_ratio


@settings(max_examples=150, deadline=None)
@given(st.lists(tick, max_size=80), configs)
def test_property_cooldown_separates_alerts_and_replay_is_identical(raw: list, config: RuleConfig) -> None:
    observations = _observations(raw)
    alerts = run(observations, config)
    for prev, nxt in itertools.pairwise(alerts):
        assert nxt.window_end > prev.window_end + timedelta(seconds=config.cooldown_s)
    # Replaying the same ticks, in any arrival order, gives the same alert ids.
    assert [a.alert_id for a in run(list(reversed(observations)), config)] == [a.alert_id for a in alerts]
    assert len({a.alert_id for a in alerts}) == len(alerts)


@settings(max_examples=100, deadline=None)
@given(st.lists(tick, max_size=60), configs)
def test_property_no_nomask_faces_means_no_alert(raw: list, config: RuleConfig) -> None:
    observations = [obs(s, faces=f, nomask=0, frames=1 if ok else 0) for s, f, _n, ok in raw]
    assert run(observations, config) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(tick, min_size=1, max_size=60), configs)
def test_property_an_overwhelming_incident_always_alerts(raw: list, config: RuleConfig) -> None:
    # Every frame of a full window unmasked with enough faces: some rule must fire.
    start = 1000
    incident = [obs(start + s, faces=config.min_nomask_faces, nomask=config.min_nomask_faces)
                for s in range(0, config.window_s, 1)]
    assert run(_observations(raw) + incident, config)


def _windowed(observations: list[Observation], configs: dict[str, RuleConfig], lateness_s: int = 0) -> tuple[
    list, list
]:
    """Run the flow's windowing + rules operators over ``observations`` in arrival order."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from maskwatch.flows.windows import windowed_alerts

    decisions: list = []
    late: list = []
    flow = Dataflow("rules")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(observations)), lambda o: o.scope)
    down, late_stream = windowed_alerts(keyed, B, lateness_s, lambda key: configs[key])
    op.output("decisions", down, TestingSink(decisions))
    op.output("late", late_stream, TestingSink(late))
    run_main(flow)
    return [d for _, d in decisions], [o for _, (_, o) in late]


def _cam(scope: str, second: float, nomask: int) -> Observation:
    ts = T0 + timedelta(seconds=second)
    return Observation(scope, ts, 1, max(1, nomask), nomask, f"{scope}:{int(ts.timestamp() * 1000)}")


def test_windowed_rules_per_camera_overrides_and_late_ticks() -> None:
    strict = RuleConfig(window_s=20, min_nomask_faces=6, nomask_ratio=1.0, min_frames=100, cooldown_s=600)
    lenient = strict.with_overrides({"min_nomask_faces": 2}, bucket_s=B)
    seq = [_cam(cam, s, 1 if s >= 20 else 0) for s in range(0, 60, 2) for cam in ("a", "b")]
    late_tick = _cam("a", 1, 5)  # 5 no-mask faces, but its bucket [0, 10) closed long ago
    decisions, late = _windowed([*seq[:40], late_tick, *seq[40:]], {"a": strict, "b": lenient})
    by_scope = {d.scope: d for d in decisions}
    assert len(decisions) == 2 and set(by_scope) == {"a", "b"}
    # b (override: 2 faces) fires on the first bucket with no-mask faces; a needs 6, two such buckets.
    assert by_scope["b"].window_end == T0 + timedelta(seconds=30)
    assert by_scope["a"].window_end == T0 + timedelta(seconds=40) and by_scope["a"].nomask_faces == 10
    assert late == [late_tick]  # counted as late, not added to any bucket
    # Same ticks again, as a replay would deliver them: identical decisions.
    again, _ = _windowed([*seq[:40], late_tick, *seq[40:]], {"a": strict, "b": lenient})
    assert [d.alert_id for d in again] == [d.alert_id for d in decisions]


def test_zone_scope_catches_a_crowd_spread_over_cameras(monkeypatch: pytest.MonkeyPatch) -> None:
    from maskwatch.config import ConfigError, FlowSettings
    from maskwatch.flows.alerts import to_alert
    from maskwatch.flows.rules import parse_scope, scope_keys

    scopes = ("camera", "zone", "site")
    assert scope_keys("c1", "hq", "lobby", scopes) == ["c1", "zone:hq/lobby", "site:hq"]
    assert scope_keys("c1", "", "", scopes) == ["c1"]
    assert parse_scope("zone:hq/lobby") == ("zone", "hq", "lobby") and parse_scope("c1") == ("camera", "", "")
    with pytest.raises(ConfigError, match="MASKWATCH_FLOW_RULE_SCOPES='floor'"):
        monkeypatch.setenv("MASKWATCH_FLOW_RULE_SCOPES", "camera,floor")
        FlowSettings()
    # Two cameras of one zone each see 3 no-mask faces in the window: under the per-camera threshold
    # (4), over it for the zone as a whole.
    config = RuleConfig(window_s=20, min_nomask_faces=4, nomask_ratio=1.0, min_frames=100, cooldown_s=600)
    seq = []
    for s in range(0, 60, 2):
        for cam in ("c1", "c2"):
            nomask = 1 if s in (20, 22, 24) else 0
            seq += [Observation(k, _cam(cam, s, nomask).ts, 1, 1, nomask, _cam(cam, s, nomask).tick_id)
                    for k in scope_keys(cam, "hq", "lobby", ("camera", "zone"))]
    decisions, _ = _windowed(seq, {"c1": config, "c2": config, "zone:hq/lobby": config})
    assert [d.scope for d in decisions] == ["zone:hq/lobby"]
    alert = to_alert(None, config, decisions[0])
    assert alert.camera_id in ("c1", "c2") and alert.zone == "lobby" and alert.site == "hq"
    assert alert.rule.startswith("zone hq/lobby: ") and alert.nomask_faces == 6
