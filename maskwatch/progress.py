"""Progress of a long step (training, evaluation) as log lines with the time left, so a person watching
`bin/dev up`'s logs or a CI log sees how far it is and when it will be done.

>>> p = Progress("train", total=4, clock=iter([0.0, 10.0, 20.0]).__next__)
>>> p.step("loss 0.52")
'train 1/4 (25%), 10 s so far, about 30 s left: loss 0.52'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _span(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class Progress:
    """``step()`` after each of ``total`` units of work: logs done/total, elapsed and the time left at the
    pace so far."""

    def __init__(self, what: str, total: int, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total = what, max(1, total)
        self.done = 0
        self._clock = clock
        self._log = logger or log
        self._started = clock()

    def step(self, detail: str = "", n: int = 1) -> str:
        self.done = min(self.total, self.done + n)
        elapsed = self._clock() - self._started
        left = elapsed / self.done * (self.total - self.done)
        share = self.done / self.total
        line = (f"{self.what} {self.done}/{self.total} ({share:.0%}), {_span(elapsed)} so far"
                + (f", about {_span(left)} left" if self.done < self.total else ", done")
                + (f": {detail}" if detail else ""))
        self._log.info("%s", line)
        return line
