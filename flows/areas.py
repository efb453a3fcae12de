"""Which faces count: a camera's :class:`~maskwatch.schemas.events.CountingArea` applied to face boxes.

A face is judged by the centre of its box, so a face half across a polygon's edge counts on the side
where most of it is. Faces that do not count are kept (stored, flagged) but neither rules nor compliance
see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from maskwatch.schemas.events import CountingArea

Ignored = Literal["", "outside", "excluded", "small"]


def inside(x: float, y: float, polygon: Sequence[tuple[float, float]]) -> bool:
    """Whether (x, y) lies inside ``polygon`` (even-odd rule, so a self-crossing outline still answers).

    >>> inside(0.5, 0.5, [(0, 0), (1, 0), (1, 1), (0, 1)])
    True
    >>> inside(0.5, 0.5, [(0, 0), (1, 0), (0, 1)])
    False
    """
    result = False
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            result = not result
    return result


def ignored(area: CountingArea, box: tuple[float, float, float, float], height_px: int) -> Ignored:
    """Why a face with ``box`` (x1, y1, x2, y2 as fractions of a frame ``height_px`` high) does not count,
    or ``""`` when it does.

    >>> door = CountingArea(include=[[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]], min_face_px=20)
    >>> ignored(door, (0.1, 0.1, 0.2, 0.2), 480), ignored(door, (0.7, 0.1, 0.8, 0.2), 480)
    ('', 'outside')
    >>> ignored(door, (0.1, 0.1, 0.12, 0.12), 480)
    'small'
    """
    x1, y1, x2, y2 = box
    if (y2 - y1) * height_px < area.min_face_px:
        return "small"
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    if area.include and not any(inside(cx, cy, p) for p in area.include):
        return "outside"
    if any(inside(cx, cy, p) for p in area.exclude):
        return "excluded"
    return ""
