"""``file://`` cameras: one image, a directory of images replayed in order, or a video file replayed.

The path is operator input and the directory's contents may change under the flow, so every entry is
resolved (symlinks, ``..``) and checked against ``MASKWATCH_FILE_ROOTS`` when it is listed and again when
it is opened; only regular files are read (a FIFO or a device would block a fetch or never end), opened
without blocking and without following a link swapped in since the check.

Example::

    files = FileSource(max_bytes=10 * 1024**2)
    frame = files.read("cam-1", "file:///data/replay/", scheduled_ms=1_700_000_000_000, interval_s=5)
"""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from maskwatch.cameras.capture.errors import FetchError, OversizedError
from maskwatch.cameras.capture.images import check_frame_size, decode_checked
from maskwatch.netpolicy import SourcePolicyError, check_file_path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"})
RELIST_S = 30.0  # a growing replay directory is picked up without a listing per tick


def replay_index(scheduled_ms: int, interval_s: float, count: int) -> int:
    """Which image/frame of a replay source a tick shows: consecutive ticks step through it in order."""
    return round(scheduled_ms / (interval_s * 1000.0)) % count


def _regular(path: Path) -> Path:
    """The checked, resolved path of a regular file; SourcePolicyError/FetchError otherwise."""
    real = check_file_path(path)
    try:
        mode = os.stat(real).st_mode
    except OSError as exc:
        raise FetchError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise FetchError(f"{path} is not a regular file; only files are read")
    return real


def read_bytes(path: Path, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of a checked regular file (one byte over: refused without loading it)."""
    real = _regular(path)
    try:
        # O_NONBLOCK: a FIFO swapped in after the check opens at once instead of waiting for a writer;
        # O_NOFOLLOW: a link swapped in is refused. fstat then checks what was really opened.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise FetchError(f"cannot open {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise FetchError(f"{path} is not a regular file; only files are read")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise OversizedError(f"image file {path.name} exceeds the {max_bytes}-byte limit")
    return data


class FileSource:
    """Reads ``file://`` sources; holds directory listings and open videos per camera."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._dirs: dict[str, tuple[float, list[Path]]] = {}
        self._videos: dict[str, tuple[str, cv2.VideoCapture, threading.Lock]] = {}

    def read(self, camera_id: str, url: str, scheduled_ms: int, interval_s: float) -> np.ndarray:
        path = Path(unquote(urlsplit(url).path))
        if path.is_dir():
            images = self.listing(path)
            if not images:
                raise FetchError(f"no readable images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            chosen = images[replay_index(scheduled_ms, interval_s, len(images))]
            return decode_checked(read_bytes(chosen, self.max_bytes))
        if path.suffix.lower() in VIDEO_SUFFIXES:
            frame = self._video_frame(camera_id, url, _regular(path), scheduled_ms, interval_s)
            return check_frame_size(frame)
        return decode_checked(read_bytes(path, self.max_bytes))

    def listing(self, path: Path) -> list[Path]:
        """The directory's image entries that resolve inside the roots and are regular files, sorted."""
        key = str(path)
        with self._lock:
            cached = self._dirs.get(key)
        if cached is not None and time.monotonic() - cached[0] <= RELIST_S:
            return cached[1]
        images: list[Path] = []
        try:
            entries = sorted(Path(e.path) for e in os.scandir(path))
        except OSError as exc:
            raise FetchError(f"cannot list {path}: {exc.strerror}") from None
        for entry in entries:
            if entry.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                _regular(entry)
            except (SourcePolicyError, FetchError):
                continue  # a link out of the roots, a FIFO, a directory named x.jpg: not a frame
            images.append(entry)
        with self._lock:
            self._dirs[key] = (time.monotonic(), images)
        return images

    def _video_frame(self, camera_id: str, url: str, path: Path, scheduled_ms: int, interval_s: float
                     ) -> np.ndarray:
        with self._lock:
            entry = self._videos.get(camera_id)
            if entry is None or entry[0] != url:
                if entry is not None:
                    entry[1].release()
                entry = (url, cv2.VideoCapture(str(path)), threading.Lock())
                self._videos[camera_id] = entry
        _, cap, lock = entry
        with lock:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if not cap.isOpened() or count <= 0:
                raise FetchError(f"cannot read video {path}")
            cap.set(cv2.CAP_PROP_POS_FRAMES, replay_index(scheduled_ms, interval_s, count))
            ok, frame = cap.read()
        if not ok or frame is None:
            raise FetchError(f"cannot read a frame from video {path}")
        return frame

    def retain(self, camera_ids: set[str]) -> None:
        with self._lock:
            for cam in [c for c in self._videos if c not in camera_ids]:
                self._videos.pop(cam)[1].release()
