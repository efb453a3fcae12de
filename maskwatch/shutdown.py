"""Graceful stop for the long-running commands (``maskwatch ticker``, ``maskwatch notify``), and children
that stop with the process that started them."""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType


def stop_on_signals(log: logging.Logger, unit: str) -> threading.Event:
    """An event set on SIGTERM or SIGINT (logged to ``log`` as stopping after the current ``unit``)."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: stopping after the current %s", signum, unit)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child is SIGTERMed by the kernel when the thread that
    started it exits, however that process ends (a SIGKILL included)."""
    # Resolved before fork: the child only makes the one libc call (PR_SET_PDEATHSIG = 1).
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(1, signal.SIGTERM)
