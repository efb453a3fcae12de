"""The RTSP reader the flow used before PyAV (kept only for ``python -m bench cameras`` to measure the new
stream beside it): OpenCV's FFmpeg capture decoding every frame of the stream to keep the newest."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np


class RtspReader:
    """One persistent connection per RTSP camera; a thread keeps only the latest frame, so a fetch never
    returns a stale buffered frame. It reconnects with exponential backoff when the stream drops."""

    def __init__(self, url: str, max_backoff_s: float = 30.0):
        self._url = url
        self._max_backoff = max_backoff_s
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_at = 0.0
        self._error = "not connected yet"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtsp-reader", daemon=True)
        self._thread.start()

    def _open(self) -> cv2.VideoCapture:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
        return cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            cap = self._open()
            if not cap.isOpened():
                self._set_error("cannot open stream")
            else:
                while not self._stop.is_set():
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        self._set_error("stream ended or dropped")
                        break
                    backoff = 0.5
                    with self._cond:
                        self._frame, self._frame_at = frame, time.monotonic()
                        self._cond.notify_all()
            cap.release()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _set_error(self, message: str) -> None:
        with self._cond:
            self._error = message

    def latest(self, max_age_s: float, deadline: float) -> np.ndarray:
        """The newest frame if fresher than ``max_age_s``; waits for one until ``deadline``."""
        with self._cond:
            while True:
                if self._frame is not None and time.monotonic() - self._frame_at <= max_age_s:
                    return self._frame.copy()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no fresh frame: {self._error}")
                self._cond.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=6)


