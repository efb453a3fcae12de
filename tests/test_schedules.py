"""Schedules (``maskwatch.flows.schedules``): hours read in the site's timezone, over midnight, pauses;
and through the rules' windowing, an alert the schedule forbids is dropped without starting a cool-down."""

from __future__ import annotations

import doctest
import re
from datetime import UTC, datetime, timedelta

import pytest

from maskwatch.flows import schedules
from maskwatch.flows.rules import Observation, RuleConfig
from maskwatch.flows.schedules import suppressed
from maskwatch.schemas import events
from maskwatch.schemas.events import Schedule, Site, parse_hours

pytestmark = pytest.mark.without_models

MONDAY = datetime(2026, 12, 7, tzinfo=UTC)  # a Monday, 00:00 UTC


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return MONDAY + timedelta(days=day, hours=hour, minutes=minute)


def test_docstring_examples() -> None:
    for module in (schedules, events):
        assert doctest.testmod(module).failed == 0


def test_hours_parse_days_ranges_and_lists() -> None:
    assert parse_hours("mon-fri 08:00-18:00") == (frozenset(range(5)), 480, 1080)
    assert parse_hours("fri-mon 10:00-11:00")[0] == frozenset({4, 5, 6, 0})
    assert parse_hours("mon,wed,sat-sun 00:00-24:00") == (frozenset({0, 2, 5, 6}), 0, 1440)
    assert parse_hours("  Sat   09:00-13:00 ")[0] == frozenset({5})
    assert Schedule(open_hours=["  MON-fri  08:00-18:00"]).open_hours == ["mon-fri 08:00-18:00"]
    for bad, says in (("8-18", "expected '[days ]HH:MM-HH:MM'"), ("mon-fry 08:00-18:00", "unknown day"),
                      ("25:00-26:00", "not a time of day"), ("08:61-09:00", "not a time of day"),
                      ("09:00-09:00", "empty"), ("24:00-01:00", "empty")):
        with pytest.raises(ValueError, match=re.escape(says)):
            parse_hours(bad)
    with pytest.raises(ValueError, match="unknown timezone 'Mars/Olympus'"):
        Site(id="hq", timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="unknown timezone"):
        Site(id="hq", timezone="../../etc/passwd")


def test_open_quiet_and_paused_in_the_sites_timezone() -> None:
    shop = Schedule(open_hours=["mon-fri 09:00-18:00"], quiet_hours=["12:00-13:00"])
    assert suppressed(shop, "UTC", at(0, 8, 59)) == "closed"
    assert suppressed(shop, "UTC", at(0, 9)) == ""
    assert suppressed(shop, "UTC", at(0, 12, 30)) == "quiet"
    assert suppressed(shop, "UTC", at(0, 18)) == "closed"  # the end is not included
    assert suppressed(shop, "UTC", at(5, 10)) == "closed"  # Saturday
    # 08:30 UTC is 17:30 in Tokyo (open) and 03:30 in New York (closed).
    assert suppressed(shop, "Asia/Tokyo", at(0, 8, 30)) == ""
    assert suppressed(shop, "America/New_York", at(0, 8, 30)) == "closed"
    paused = shop.model_copy(update={"paused_until": at(0, 10)})
    assert suppressed(paused, "UTC", at(0, 9, 30)) == "paused"
    assert suppressed(paused, "UTC", at(0, 10)) == ""


def test_hours_over_midnight_belong_to_the_day_they_start() -> None:
    nights = Schedule(quiet_hours=["fri 22:00-06:00"])
    assert suppressed(nights, "UTC", at(4, 23)) == "quiet"  # Friday night
    assert suppressed(nights, "UTC", at(5, 5)) == "quiet"  # Saturday morning, still Friday's night
    assert suppressed(nights, "UTC", at(5, 6)) == ""
    assert suppressed(nights, "UTC", at(0, 5)) == ""  # Monday morning: Sunday has no such night
    assert suppressed(Schedule(), "UTC", at(3, 3)) == ""  # no schedule: always


def test_a_suppressed_alert_starts_no_cooldown() -> None:
    from tests.test_rules import T0, _cam, _windowed

    config = RuleConfig(window_s=20, min_people=2, cooldown_s=600)
    seq = [_cam("a", s, 1) for s in range(0, 80, 2)]  # a new unmasked person on every tick
    quiet_until = T0 + timedelta(seconds=40)
    decisions, _ = _windowed(seq, {"a": config},
                             suppressed=lambda _key, end: "quiet" if end <= quiet_until else "")
    # Windows ending at 10..40 s are quiet; the first one after raises the alert, the cool-down follows.
    assert [d.window_end for d in decisions] == [T0 + timedelta(seconds=50)]
    unsuppressed, _ = _windowed(seq, {"a": config})
    assert [d.window_end for d in unsuppressed] == [T0 + timedelta(seconds=10)]
    assert isinstance(seq[0], Observation)
