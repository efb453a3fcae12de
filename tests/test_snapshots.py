"""Annotated snapshots on a real dataset photo, boxes from its VOC annotation."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskwatch.flows.snapshots import BoxedFace, annotate, save_snapshot, snapshot_path

pytestmark = pytest.mark.without_models


def _image(path: Path) -> np.ndarray:
    frame = cv2.imread(str(path))
    assert frame is not None, path
    return frame


def _faces(dataset_dir: Path, stem: str) -> list[BoxedFace]:
    root = ET.parse(dataset_dir / "annotations" / f"{stem}.xml").getroot()
    faces = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        assert bb is not None
        box = tuple(float(bb.findtext(k) or 0) for k in ("xmin", "ymin", "xmax", "ymax"))
        faces.append(BoxedFace(box, obj.findtext("name") != "con_mascarilla", 0.9))  # type: ignore[arg-type]
    return faces


def test_snapshot_is_downscaled_boxed_and_replay_overwrites(tmp_path: Path, dataset_dir: Path) -> None:
    frame = _image(dataset_dir / "images" / "maksssksksss0.jpg")
    faces = _faces(dataset_dir, "maksssksksss0")
    when = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    path = save_snapshot(tmp_path, "cam1", "cam1:1700000000000", when, frame, faces, max_width=256)
    assert path == snapshot_path(tmp_path, "cam1", "cam1:1700000000000", when)
    assert path.parent == tmp_path / "cam1" / "20261126"
    saved = _image(path)
    assert saved.shape[1] == 256 and abs(saved.shape[0] - round(frame.shape[0] * 256 / frame.shape[1])) <= 1
    # A red box edge sits at the first no-mask face's scaled corner.
    nomask = next(f for f in faces if f.nomask)
    s = 256 / frame.shape[1]
    x1, y1 = round(nomask.box[0] * s), round(nomask.box[1] * s)
    b, g, r = (int(v) for v in saved[y1, x1 + 2])
    assert r > 150 and g < 100 and b < 100
    save_snapshot(tmp_path, "cam1", "cam1:1700000000000", when, frame, faces, max_width=256)
    assert len(list(tmp_path.rglob("*.jpg"))) == 1 and not list(tmp_path.rglob("*.tmp"))


def test_blurring_hides_the_face(dataset_dir: Path) -> None:
    frame = _image(dataset_dir / "images" / "maksssksksss0.jpg")
    faces = _faces(dataset_dir, "maksssksksss0")
    x1, y1, x2, y2 = (int(v) for v in faces[1].box)
    plain = annotate(frame, faces, 10_000, blur_faces=False)
    blurred = annotate(frame, faces, 10_000, blur_faces=True)
    inner = (slice(y1 + 4, y2 - 4), slice(x1 + 4, x2 - 4))
    sharp = cv2.Laplacian(cv2.cvtColor(plain[inner], cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    soft = cv2.Laplacian(cv2.cvtColor(blurred[inner], cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
    assert soft < sharp / 3
    assert np.array_equal(plain[:5, :5], frame[:5, :5])  # outside the faces nothing changes


def test_downscaled_snapshot_keeps_the_picture(dataset_dir: Path) -> None:
    """Bilinear down to half size, area below: both stay close to an area-averaged reference."""
    frame = cv2.resize(_image(dataset_dir / "images" / "maksssksksss0.jpg"), (1024, 1024))
    for width in (640, 512, 300):
        out = annotate(frame, [], width, blur_faces=False)
        ref = cv2.resize(frame, out.shape[1::-1], interpolation=cv2.INTER_AREA)
        assert out.shape == ref.shape and out.shape[1] == width
        assert np.abs(out.astype(np.int16) - ref).mean() < 1.0, width  # nearest: 2.4-7.9


def test_snapshots_are_pruned_by_age_then_by_disk_budget(tmp_path: Path) -> None:
    import os
    import time

    from maskwatch.flows.snapshots import SnapshotPruner, prune

    now = time.time()
    files = []
    for i, (camera, days_old) in enumerate([("a", 40), ("a", 20), ("b", 10), ("b", 2), ("c", 1)]):
        path = tmp_path / camera / f"2026110{i}" / f"{camera}_{i}.jpg"
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - days_old * 86400, now - days_old * 86400))
        files.append(path)
    result = prune(tmp_path, keep_days=30, max_bytes=10_000, now=now)
    assert (result.files, result.bytes, result.kept_files) == (1, 1000, 4)
    assert not files[0].exists() and not files[0].parent.exists()  # its empty folder went too
    result = prune(tmp_path, keep_days=30, max_bytes=2500, now=now)  # the oldest go until 2 fit
    assert (result.files, result.kept_bytes) == (2, 2000)
    assert [p.exists() for p in files] == [False, False, False, True, True]
    # The flow's pruner thread does the same on its own.
    pruner = SnapshotPruner(tmp_path, keep_days=1.5, max_bytes=10**9, every_s=0.05)
    pruner.start()
    deadline = time.monotonic() + 5
    while files[3].exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    pruner.stopping.set()
    pruner.join(5)
    assert not files[3].exists() and files[4].exists()
