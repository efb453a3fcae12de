"""Faces into people (``maskwatch.flows.people``) and counting areas (``maskwatch.flows.areas``): examples,
the modules' own docstring examples, and a property: a person who drifts stays one person."""

from __future__ import annotations

import doctest
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from maskwatch.flows import areas, people
from maskwatch.flows.areas import ignored, inside
from maskwatch.flows.people import PeopleState, TrackingConfig, associate
from maskwatch.schemas.events import CountingArea, FaceDetection, FrameResult

pytestmark = pytest.mark.without_models

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CONFIG = TrackingConfig(max_gap_s=30, max_move=1.5)


def tick(n: int, boxes: list[tuple[float, float, float, float]], nomask: bool = True, every: float = 5,
         skip: set[int] | None = None) -> tuple[FrameResult, list[FaceDetection]]:
    """Tick ``n`` of camera "door" (640x480) with a face per box (fractions of the frame)."""
    at = T0 + timedelta(seconds=every * n)
    common: dict[str, Any] = {"camera_id": "door", "tick_id": f"door:{n}", "scheduled_at": at,
                              "processed_at": T0}
    frame = FrameResult(**common, status="ok", width=640, height=480, faces=len(boxes),
                        nomask_faces=len(boxes) if nomask else 0)
    faces = [FaceDetection(**common, face_index=i, x1=b[0], y1=b[1], x2=b[2], y2=b[3], detection_score=0.9,
                           nomask_prob=0.9 if nomask else 0.1, nomask=nomask, detector_model="d",
                           classifier_model="c", ignored="outside" if i in (skip or set()) else "")
             for i, b in enumerate(boxes)]
    return frame, faces


def run(ticks: list[tuple[FrameResult, list[FaceDetection]]]) -> tuple[list[list[str]], list[list[float]]]:
    state: PeopleState | None = None
    ids, dwell = [], []
    for frame, faces in ticks:
        state, out, seen = associate(state, frame, faces, CONFIG)
        ids.append([f.person_id for f in out])
        dwell.append([s.dwell_s for s in seen])
    return ids, dwell


def test_docstring_examples() -> None:
    for module in (people, areas):
        assert doctest.testmod(module).failed == 0


def test_two_people_stay_two_and_a_newcomer_is_new() -> None:
    a, b = (0.10, 0.20, 0.20, 0.40), (0.60, 0.20, 0.70, 0.40)
    ticks = [tick(0, [a, b]), tick(1, [b, a]), tick(2, [a, b, (0.35, 0.6, 0.45, 0.8)])]
    ids, dwell = run(ticks)
    assert ids[0] == ["door:0.0", "door:0.1"]
    assert ids[1] == ["door:0.1", "door:0.0"]  # order on the frame does not matter, place does
    assert ids[2] == ["door:0.0", "door:0.1", "door:2.2"]
    assert dwell[2] == [10.0, 10.0, 0.0]


def test_gone_too_long_too_far_or_another_size_is_someone_else() -> None:
    a = (0.10, 0.20, 0.20, 0.40)
    far = (0.60, 0.20, 0.70, 0.40)  # 0.5 of 640 px away: over 3 face heights
    bigger = (0.05, 0.10, 0.25, 0.50)  # twice the height, same centre
    assert len({i for t in run([tick(0, [a]), tick(1, [far])])[0] for i in t}) == 2
    assert len({i for t in run([tick(0, [a]), tick(1, [bigger])])[0] for i in t}) == 2
    assert len({i for t in run([tick(0, [a]), tick(7, [a])])[0] for i in t}) == 2  # 35 s > max_gap_s
    assert len({i for t in run([tick(0, [a]), tick(6, [a])])[0] for i in t}) == 1  # 30 s: still here


def test_masking_up_ends_the_dwell_and_ignored_faces_belong_to_nobody() -> None:
    a = (0.10, 0.20, 0.20, 0.40)
    ids, dwell = run([tick(0, [a]), tick(1, [a]), tick(2, [a], nomask=False), tick(3, [a])])
    assert len({i for t in ids for i in t}) == 1
    assert dwell == [[0.0], [5.0], [], [0.0]]  # the run of no-mask sightings starts again
    ids, dwell = run([tick(0, [a, (0.6, 0.2, 0.7, 0.4)], skip={1})])
    assert ids == [["door:0.0", ""]] and dwell == [[0.0]]


def test_a_late_or_repeated_tick_changes_nobody() -> None:
    a = (0.10, 0.20, 0.20, 0.40)
    state, _, _ = associate(None, *tick(0, [a]), CONFIG)
    state, _, _ = associate(state, *tick(2, [(0.15, 0.2, 0.25, 0.4)]), CONFIG)
    before = [(p.person_id, p.box, p.last_seen) for p in state.people]
    late, out, _ = associate(state, *tick(1, [a, (0.7, 0.2, 0.8, 0.4)]), CONFIG)
    assert [f.person_id for f in out] == ["door:0.0", "door:1.1"]  # matched, and a stranger
    assert [(p.person_id, p.box, p.last_seen) for p in late.people] == before
    assert late.latest == state.latest
    _, out, _ = associate(late, *tick(2, [(0.15, 0.2, 0.25, 0.4)]), CONFIG)
    assert [f.person_id for f in out] == ["door:0.0"]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-0.01, 0.01), st.floats(-0.01, 0.01)), min_size=2, max_size=20),
       st.floats(0.1, 0.8), st.floats(0.1, 0.6))
def test_property_a_drifting_person_stays_one(steps: list[tuple[float, float]], x: float, y: float) -> None:
    ticks = []
    for n, (dx, dy) in enumerate(steps):
        x, y = min(0.85, max(0.0, x + dx)), min(0.75, max(0.0, y + dy))
        ticks.append(tick(n, [(x, y, x + 0.1, y + 0.2)]))
    ids, _ = run(ticks)
    assert len({i for t in ids for i in t}) == 1


def test_counting_area() -> None:
    square = [(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8)]
    assert inside(0.5, 0.5, square) and not inside(0.1, 0.5, square) and not inside(0.9, 0.9, square)
    area = CountingArea(include=[square], exclude=[[(0.4, 0.4), (0.6, 0.4), (0.6, 0.6), (0.4, 0.6)]],
                        min_face_px=30)
    assert ignored(area, (0.25, 0.25, 0.35, 0.35), 480) == ""
    assert ignored(area, (0.45, 0.45, 0.55, 0.55), 480) == "excluded"
    assert ignored(area, (0.0, 0.0, 0.1, 0.1), 480) == "outside"
    assert ignored(area, (0.25, 0.25, 0.3, 0.3), 480) == "small"  # 24 px high
    assert ignored(CountingArea(), (0.9, 0.9, 1.0, 1.0), 480) == ""  # no polygons: the whole frame
    with pytest.raises(ValueError, match="at least 3"):
        CountingArea(include=[[(0, 0), (1, 1)]])
