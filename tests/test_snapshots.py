"""Annotated snapshots on a real dataset photo, boxes from its VOC annotation."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from maskwatch.flows.snapshots import BoxedFace, annotate, save_snapshot, snapshot_path


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
