"""Graceful stop for the long-running commands (``maskwatch ticker``, ``maskwatch notify``)."""

from __future__ import annotations

import logging
import signal
import threading
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
