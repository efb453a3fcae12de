"""The alert rules' decision logic: examples plus hypothesis properties over random tick sequences."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskwatch.flows.lifecycle import Step, advance
from maskwatch.flows.rules import (
    RULE_DWELL,
    RULE_IN_FRAME,
    RULE_PEOPLE,
    RULE_RATIO,
    Bucket,
    Observation,
    RuleConfig,
    RuleState,
    alert_id,
    bucket_start,
    evaluate,
)

pytestmark = pytest.mark.without_models

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
B = 10


def steps(observations: list[Observation], config: RuleConfig, bucket_s: int = B) -> list[Step]:
    """Fold observations into buckets (what the flow's fold_window does), evaluate them in order and
    follow the alert's life (what the flow's rule_state step does)."""
    buckets: dict[datetime, Bucket] = {}
    for obs in observations:
        start = bucket_start(obs.ts, bucket_s)
        buckets.setdefault(start, Bucket(start)).add(obs)
    state, out = RuleState(), []
    for start in sorted(buckets):
        state, held = evaluate(state, buckets[start], bucket_s, config, "cam")
        state.incident, made = advance(state.incident, held, start + timedelta(seconds=bucket_s), config,
                                       bucket_s)
        out += made
    return out


def run(observations: list[Observation], config: RuleConfig, bucket_s: int = B) -> list:
    """The alerts opened (each one incident)."""
    return [s.decision for s in steps(observations, config, bucket_s) if s.kind == "opened"]


def obs(second: float, faces: int = 1, nomask: int = 0, frames: int = 1,
        people: tuple[tuple[str, float], ...] | None = None) -> Observation:
    """A tick; its no-mask faces are new people unless ``people`` says who they are."""
    ts = T0 + timedelta(seconds=second)
    tick = f"cam:{int(second * 1000)}"
    if people is None:
        people = tuple((f"{tick}.{i}", 0.0) for i in range(nomask))
    return Observation("cam", ts, frames, faces, nomask, tick, "", people)


def scene(until: float, every: float = 2, **people: float) -> list[Observation]:
    """One tick every ``every`` s up to ``until``; each person (name=arrival second) unmasked in view
    from their arrival on."""
    ticks = []
    for i in range(int(until / every)):
        s = i * every
        here = tuple((name, s - since) for name, since in people.items() if since <= s)
        ticks.append(obs(s, max(1, len(here)), len(here), people=here))
    return ticks


def test_people_rule_counts_people_not_sightings() -> None:
    config = RuleConfig(window_s=30, min_people=2, cooldown_s=60)
    # One unmasked person standing in view for a minute: 30 sightings, one person, no alert.
    assert run(scene(60, p=0), config) == []
    # A second one joins at t=40: two people in the window -> one alert, in the bucket where they met.
    alerts = run(scene(60, p=0, q=40), config)
    assert [a.rule for a in alerts] == [RULE_PEOPLE]
    assert alerts[0].window_end == T0 + timedelta(seconds=50) and alerts[0].people == 2
    assert alerts[0].nomask_faces > alerts[0].people  # sightings are still reported, apart
    assert alerts[0].tick_ids and all(t.startswith("cam:") for t in alerts[0].tick_ids)


def test_one_incident_is_one_alert_through_its_life() -> None:
    config = RuleConfig(window_s=30, min_people=3, cooldown_s=60)
    masked = [obs(s, faces=2) for s in range(0, 30, 2)]
    unmasked = [obs(s, faces=1, nomask=1) for s in range(30, 90, 2)]  # someone new on each tick
    calm = [obs(s, faces=2) for s in range(90, 160, 2)]
    life = steps(masked + unmasked + calm, config)
    # Opened in bucket [30,40) with the 3rd person; updated while more people come; resolved once a
    # whole window (30 s) passed without the rule holding: the last one holding ended at 110.
    assert life[0].kind == "opened" and life[0].at == T0 + timedelta(seconds=40)
    assert {s.kind for s in life[1:-1]} == {"updated"} and life[-1].kind == "resolved"
    assert life[-1].at == T0 + timedelta(seconds=140)
    assert len({s.decision.alert_id for s in life}) == 1
    people = [s.decision.people for s in life if s.kind != "resolved"]
    assert people == sorted(people) and people[-1] > people[0]
    assert all(s.opened_at == life[0].at for s in life)
    # Back within the cool-down after resolving: the same alert, re-opened.
    again = [obs(s, faces=1, nomask=1) for s in range(160, 180, 2)]
    later = steps(masked + unmasked + calm + again, config)
    assert [s.kind for s in later if s.kind != "updated"][-2:] == ["resolved", "reopened"]
    assert len({s.decision.alert_id for s in later}) == 1
    # Back after the cool-down: a new alert.
    late = [obs(s, faces=1, nomask=1) for s in range(400, 420, 2)]
    fresh = steps(masked + unmasked + calm + late, config)
    assert [s.kind for s in fresh if s.kind in ("opened", "reopened")] == ["opened", "opened"]
    assert len({s.decision.alert_id for s in fresh}) == 2


def test_a_gap_without_ticks_resolves_the_incident() -> None:
    # Buckets without ticks never close: a camera off (or the flow down) for longer than a window ends
    # the incident at the gap, and what follows is judged afresh.
    config = RuleConfig(window_s=20, min_people=1, cooldown_s=0)
    before = [obs(s, 1, 1) for s in range(0, 20, 2)]
    after = [obs(s, 1, 1) for s in range(100, 120, 2)]
    life = steps(before + after, config)
    kinds = [s.kind for s in life if s.kind != "updated"]
    assert kinds == ["opened", "resolved", "opened"]
    resolved = next(s for s in life if s.kind == "resolved")
    assert resolved.at == T0 + timedelta(seconds=40)  # a window after it last held, not when ticks came back
    assert len({s.decision.alert_id for s in life}) == 2
    # With a cool-down longer than the gap it is the same alert, re-opened.
    again = steps(before + after, RuleConfig(window_s=20, min_people=1, cooldown_s=600))
    assert [s.kind for s in again if s.kind != "updated"] == ["opened", "resolved", "reopened"]


def test_in_frame_and_dwell_rules() -> None:
    crowd = RuleConfig(window_s=30, min_people=0, min_people_in_frame=3, cooldown_s=0)
    spread = [obs(s, 2, 2) for s in range(0, 30, 2)]  # many people, never three at once
    assert run(spread, crowd) == []
    alerts = run([*spread, obs(31, 4, 3)], crowd)
    assert [(a.rule, a.value) for a in alerts] == [(RULE_IN_FRAME, 3.0)]
    dwell = RuleConfig(window_s=30, min_people=0, min_dwell_s=20, cooldown_s=600)
    assert run(scene(20, p=0), dwell) == []  # in view 18 s
    alerts = run(scene(40, p=0), dwell)
    assert [a.rule for a in alerts] == [RULE_DWELL] and alerts[0].value >= 20
    assert alerts[0].window_end == T0 + timedelta(seconds=30)  # the bucket of its 20th second


def test_ratio_rule_and_masked_people_never_alert() -> None:
    config = RuleConfig(window_s=20, min_people=50, nomask_ratio=0.5, min_frames=4, cooldown_s=0)
    assert run([obs(s, faces=3) for s in range(0, 200, 2)], config) == []
    half = [obs(s, faces=2, nomask=1 if (s // 2) % 2 else 0) for s in range(0, 20, 2)]
    alerts = run(half, config)
    assert alerts and alerts[0].rule == RULE_RATIO and alerts[0].value >= 0.5
    assert run(half, RuleConfig(window_s=20, min_people=50)) == []  # the ratio rule is off by default


def test_a_duplicated_tick_never_counts_twice() -> None:
    config = RuleConfig(window_s=20, min_people=0, nomask_ratio=0.5, min_frames=4, cooldown_s=0)
    ticks = [obs(0, 1, 1), obs(2, 1, 0), obs(4, 1, 0)]
    assert run(ticks, config) == []  # 3 frames: fewer than min_frames
    assert run([*ticks, ticks[0], ticks[0]], config) == []  # still 3 frames, not 5
    bucket = Bucket(T0)
    for o in [*ticks, ticks[0]]:
        bucket.add(o)
    assert (bucket.frames, bucket.nomask_faces, len(bucket.people)) == (3, 1, 1)
    assert bucket.merge(bucket).frames == 3


def test_state_recovered_from_the_version_before_people_still_works() -> None:
    import pickle

    from maskwatch.flows.windows import _current

    # What a recovery snapshot of the previous version holds: buckets without people or ticks, and a
    # rule state with a cool-down instead of an incident.
    old_bucket = Bucket(T0)
    for name in ("people", "ticks", "max_in_frame"):
        del old_bucket.__dict__[name]
    bucket = pickle.loads(pickle.dumps(old_bucket))
    bucket.add(obs(1, 1, 1))
    assert (bucket.frames, len(bucket.people)) == (1, 1)
    old_state = RuleState(buckets=[bucket])
    del old_state.__dict__["incident"]
    old_state.__dict__["quiet_until"] = T0
    state = _current(pickle.loads(pickle.dumps(old_state)))
    assert state.incident is None and state.buckets == [bucket]


def test_failed_fetches_move_time_but_never_count() -> None:
    config = RuleConfig(window_s=10, min_people=1, nomask_ratio=0.1, min_frames=1, cooldown_s=0)
    assert run([obs(s, faces=0, nomask=0, frames=0) for s in range(0, 60, 2)], config) == []


def test_overrides_apply_and_reject_unknown_keys() -> None:
    from maskwatch.schemas.events import RuleOverrides

    base = RuleConfig()
    assert (base.min_people, base.min_people_in_frame, base.min_dwell_s, base.nomask_ratio) == (3, 0, 0, 0)
    got = base.with_overrides({"min_people": 1, "window_s": 25.0, "min_dwell_s": None}, bucket_s=10)
    assert got.min_people == 1 and got.window_s == 30 and got.min_dwell_s == base.min_dwell_s
    with pytest.raises(ValueError, match="unknown rule override"):
        base.with_overrides({"threshold": 3}, bucket_s=10)
    with pytest.raises(ValueError, match="nomask_ratio"):
        RuleConfig(nomask_ratio=1.5)
    # Rows and files written before people were counted keep their meaning as the people rule.
    old = RuleOverrides.model_validate({"min_nomask_faces": 2, "window_s": 30})
    assert old.min_people == 2 and "min_nomask_faces" not in old.model_dump()


def test_alert_ids_are_deterministic_and_distinct() -> None:
    a = alert_id("cam1", RULE_PEOPLE, T0)
    assert a == alert_id("cam1", RULE_PEOPLE, T0.astimezone(UTC))
    assert len({a, alert_id("cam2", RULE_PEOPLE, T0), alert_id("cam1", RULE_RATIO, T0),
                alert_id("cam1", RULE_PEOPLE, T0 + timedelta(seconds=10))}) == 4


# (second, faces, no-mask faces, fetched, who): the no-mask faces are people from a pool of 6, so some
# are seen again on later ticks.
tick = st.tuples(st.integers(0, 600), st.integers(0, 4), st.integers(0, 4), st.booleans(),
                 st.lists(st.integers(0, 5), min_size=4, max_size=4, unique=True))
configs = st.builds(RuleConfig, window_s=st.sampled_from([10, 30, 60]), min_people=st.integers(0, 6),
                    min_people_in_frame=st.integers(0, 4), min_dwell_s=st.sampled_from([0, 10, 40]),
                    nomask_ratio=st.sampled_from([0, 0.05, 0.5, 1.0]), min_frames=st.integers(1, 10),
                    cooldown_s=st.sampled_from([0, 30, 120]))


def _observations(raw: list[tuple[int, int, int, bool, list[int]]]) -> list[Observation]:
    out = []
    first = {r[0]: r for r in reversed(raw)}  # one tick per second (a tick id is its time)
    for s, f, n, ok, who in sorted(first.values(), key=lambda r: r[0]):
        people = tuple((f"p{w}", float(s % 50)) for w in who[:n]) if ok else ()
        out.append(obs(s, faces=max(f, n), nomask=n if ok else 0, frames=1 if ok else 0, people=people))
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(tick, max_size=80), configs)
def test_property_every_alert_meets_its_threshold(raw: list, config: RuleConfig) -> None:
    observations = _observations(raw)
    for a in run(observations, config):
        inside = [o for o in observations if a.window_start <= o.ts < a.window_end]
        people = {p for o in inside for p, _ in o.people}
        assert a.window_end - a.window_start == timedelta(seconds=config.window_s)
        assert a.nomask_faces == sum(o.nomask_faces for o in inside)
        assert a.frames == sum(o.frames for o in inside)
        assert a.people == len(people)  # distinct, however often each was seen
        if a.rule == RULE_PEOPLE:
            assert config.min_people and a.people >= config.min_people
        elif a.rule == RULE_IN_FRAME:
            assert config.min_people_in_frame and max(len(o.people) for o in inside) >= a.threshold
        elif a.rule == RULE_DWELL:
            assert config.min_dwell_s and max(d for o in inside for _, d in o.people) >= config.min_dwell_s
        else:
            assert config.nomask_ratio and a.frames >= config.min_frames
            assert a.nomask_frames / a.frames >= config.nomask_ratio


@settings(max_examples=150, deadline=None)
@given(st.lists(tick, max_size=80), configs)
def test_property_cooldown_separates_alerts_and_replay_is_identical(raw: list, config: RuleConfig) -> None:
    observations = _observations(raw)
    alerts = run(observations, config)
    for prev, nxt in itertools.pairwise(alerts):
        assert nxt.window_end > prev.window_end + timedelta(seconds=config.cooldown_s)
    # Replaying the same ticks, in any arrival order and each twice, gives the same alert ids.
    again = run(list(reversed(observations)) + observations, config)
    assert [a.alert_id for a in again] == [a.alert_id for a in alerts]
    assert len({a.alert_id for a in alerts}) == len(alerts)


@settings(max_examples=100, deadline=None)
@given(st.lists(tick, max_size=60), configs)
def test_property_no_nomask_faces_means_no_alert(raw: list, config: RuleConfig) -> None:
    observations = [obs(s, faces=f, nomask=0, frames=1 if ok else 0) for s, f, _n, ok, _w in raw]
    assert run(observations, config) == []


@settings(max_examples=100, deadline=None)
@given(st.lists(tick, min_size=1, max_size=60), configs)
def test_property_an_overwhelming_incident_always_alerts(raw: list, config: RuleConfig) -> None:
    # A full window of frames each with enough new unmasked people: any rule that is on must fire.
    start = 1000
    many = max(config.min_people, config.min_people_in_frame, 1)
    incident = [obs(start + s, many, many, people=tuple((f"x{s}.{i}", 60.0) for i in range(many)))
                for s in range(0, config.window_s, 1)]
    fired = run(_observations(raw) + incident, config)
    assert fired or not any((config.min_people, config.min_people_in_frame, config.min_dwell_s,
                             config.nomask_ratio))


def _windowed(observations: list[Observation], configs: dict[str, RuleConfig], lateness_s: int = 0,
              suppressed: Callable[[str, datetime], str] | None = None) -> tuple[list, list]:
    """Run the flow's windowing + rules operators over ``observations`` in arrival order."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from maskwatch.flows.windows import windowed_alerts

    decisions: list = []
    late: list = []
    flow = Dataflow("rules")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(observations)), lambda o: o.scope)
    down, late_stream = windowed_alerts(keyed, B, lateness_s, lambda key: configs[key],
                                        suppressed or (lambda _key, _at: ""))
    op.output("decisions", down, TestingSink(decisions))
    op.output("late", late_stream, TestingSink(late))
    run_main(flow)
    return [d.decision for _, d in decisions if d.kind == "opened"], [o for _, (_, o) in late]


def _cam(scope: str, second: float, nomask: int) -> Observation:
    ts = T0 + timedelta(seconds=second)
    tick = f"{scope}:{int(ts.timestamp() * 1000)}"
    people = tuple((f"{tick}.{i}", 0.0) for i in range(nomask))
    return Observation(scope, ts, 1, max(1, nomask), nomask, tick, "", people)


def test_windowed_rules_per_camera_overrides_and_late_ticks() -> None:
    strict = RuleConfig(window_s=20, min_people=6, cooldown_s=600)
    lenient = strict.with_overrides({"min_people": 2}, bucket_s=B)
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
    config = RuleConfig(window_s=20, min_people=4, cooldown_s=600)
    seq = []
    for s in range(0, 60, 2):
        for cam in ("c1", "c2"):
            nomask = 1 if s in (20, 22, 24) else 0
            one = _cam(cam, s, nomask)
            seq += [Observation(k, one.ts, 1, 1, nomask, one.tick_id, "", one.people)
                    for k in scope_keys(cam, "hq", "lobby", ("camera", "zone"))]
    decisions, _ = _windowed(seq, {"c1": config, "c2": config, "zone:hq/lobby": config})
    assert [d.scope for d in decisions] == ["zone:hq/lobby"]
    alert = to_alert(None, config, decisions[0])
    assert alert.camera_id in ("c1", "c2") and alert.zone == "lobby" and alert.site == "hq"
    assert alert.rule.startswith("zone hq/lobby: ") and alert.nomask_faces == 6
