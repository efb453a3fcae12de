"""Annotated snapshots: a downscaled JPEG with face boxes for each frame that has a no-mask face.

Files live under ``MASKWATCH_HOME/snapshots/<camera>/<YYYYMMDD>/<tick>.jpg``; the path is derived from
the tick, so a replay overwrites the same file instead of adding one. They are deleted by age and by a
disk budget (``MASKWATCH_FLOW_SNAPSHOT_KEEP_DAYS``, ``..._MAX_BYTES``) while the flow runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from maskwatch.inference.preprocess import resize_interpolation
from maskwatch.schemas.events import CountingArea

log = logging.getLogger(__name__)
NOMASK_COLOR = (0, 0, 255)  # BGR red
MASK_COLOR = (0, 200, 0)
IGNORED_COLOR = (160, 160, 160)  # a face outside the camera's counting area
INCLUDE_COLOR = (255, 200, 0)
EXCLUDE_COLOR = (200, 0, 200)


@dataclass(frozen=True)
class BoxedFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in frame pixels
    nomask: bool
    nomask_prob: float
    ignored: bool = False


def annotate(frame: np.ndarray, faces: Sequence[BoxedFace], max_width: int, blur_faces: bool,
             area: CountingArea | None = None) -> np.ndarray:
    """A copy of ``frame`` no wider than ``max_width`` with a box (red = no mask, grey = ignored) around
    each face, and the camera's counting area outlined."""
    scale = min(1.0, max_width / frame.shape[1])
    w = max(1, round(frame.shape[1] * scale))
    out = frame.copy() if scale == 1.0 else cv2.resize(
        frame, (w, max(1, round(frame.shape[0] * scale))),
        interpolation=resize_interpolation(frame.shape[1], w),  # the worker thread pays it per no-mask frame
    )
    if area is not None and (area.include or area.exclude):
        out = draw_area(out, area)
    h, w = out.shape[:2]
    for face in faces:
        x1, y1, x2, y2 = (round(v * scale) for v in face.box)
        x1, x2 = max(0, min(w - 1, x1)), max(0, min(w, x2))
        y1, y2 = max(0, min(h - 1, y1)), max(0, min(h, y2))
        if blur_faces and x2 > x1 and y2 > y1:
            k = max(3, ((x2 - x1) // 3) | 1)
            out[y1:y2, x1:x2] = cv2.GaussianBlur(out[y1:y2, x1:x2], (k, k), 0)
        color = IGNORED_COLOR if face.ignored else NOMASK_COLOR if face.nomask else MASK_COLOR
        cv2.rectangle(out, (x1, y1), (x2, y2), color, 2)
        cv2.putText(out, f"{face.nomask_prob:.2f}", (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    color, 1, cv2.LINE_AA)
    return out


def draw_area(image: np.ndarray, area: CountingArea) -> np.ndarray:
    """A copy of ``image`` with the camera's include (blue) and exclude (purple) polygons outlined."""
    out = image.copy()
    h, w = out.shape[:2]
    for polygons, color in ((area.include, INCLUDE_COLOR), (area.exclude, EXCLUDE_COLOR)):
        for polygon in polygons:
            points = np.array([[round(x * (w - 1)), round(y * (h - 1))] for x, y in polygon], np.int32)
            cv2.polylines(out, [points], True, color, max(1, w // 320), cv2.LINE_AA)
    return out


def snapshot_path(root: Path, camera_id: str, tick_id: str, scheduled_at: datetime) -> Path:
    safe_tick = tick_id.replace(":", "_").replace("/", "_")
    return root / camera_id / scheduled_at.strftime("%Y%m%d") / f"{safe_tick}.jpg"


def save_snapshot(
    root: Path, camera_id: str, tick_id: str, scheduled_at: datetime, frame: np.ndarray,
    faces: Sequence[BoxedFace], max_width: int = 640, blur_faces: bool = False, quality: int = 80,
    area: CountingArea | None = None,
) -> Path:
    """Write the annotated JPEG atomically (temp file + rename) and return its path."""
    path = snapshot_path(root, camera_id, tick_id, scheduled_at)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, data = cv2.imencode(".jpg", annotate(frame, faces, max_width, blur_faces, area),
                            [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise OSError(f"cannot encode snapshot for {tick_id}")
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(data.tobytes())
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Pruned:
    files: int
    bytes: int
    kept_files: int
    kept_bytes: int


def prune(root: Path, keep_days: float, max_bytes: int, now: float | None = None) -> Pruned:
    """Delete snapshots under ``root`` older than ``keep_days`` (by file time), then the oldest ones until
    the rest fit in ``max_bytes``; empty folders go too. A file that vanishes meanwhile (another process
    pruning the same folder) is skipped."""
    now = time.time() if now is None else now
    files = []
    for path in root.glob("*/*/*.jpg"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        files.append((st.st_mtime, st.st_size, path))
    files.sort()  # oldest first
    total = sum(size for _, size, _ in files)
    deleted = freed = 0
    for mtime, size, path in files:
        if mtime >= now - keep_days * 86400 and total <= max_bytes:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        total -= size
        deleted, freed = deleted + 1, freed + size
    for folder in sorted(root.glob("*/*"), reverse=True) + sorted(root.glob("*"), reverse=True):
        if folder.is_dir():
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty
    return Pruned(deleted, freed, len(files) - deleted, total)


class SnapshotPruner(threading.Thread):
    """Prunes this host's snapshots every ``every_s`` seconds while the flow runs (a daemon thread)."""

    def __init__(self, root: Path, keep_days: float, max_bytes: int, every_s: float = 600.0):
        super().__init__(name="snapshot-pruner", daemon=True)
        self.root, self.keep_days, self.max_bytes, self.every_s = root, keep_days, max_bytes, every_s
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                result = prune(self.root, self.keep_days, self.max_bytes)
                if result.files:
                    log.info("snapshots: deleted %d files (%.1f MB); %d kept (%.1f MB)", result.files,
                             result.bytes / 1e6, result.kept_files, result.kept_bytes / 1e6)
            except OSError as exc:  # a full or read-only disk must not stop the flow
                log.warning("snapshots: pruning %s failed: %s", self.root, exc)
            self.stopping.wait(self.every_s)
