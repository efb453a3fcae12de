"""Labelled face-mask datasets for evaluation: PASCAL VOC (annotations/*.xml + images/) and YOLO
(images/ + labels/*.txt + data.yaml or classes.txt) folders, with every class mapped to mask / no_mask."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from PIL import Image

Label = Literal["mask", "no_mask"]
Split = Literal["all", "train", "test"]

# A face with the mask worn incorrectly does not protect, so it counts as no-mask.
CLASS_MAP: dict[str, Label] = {
    "con_mascarilla": "mask",
    "with_mask": "mask",
    "mask": "mask",
    "sin_mascarilla": "no_mask",
    "without_mask": "no_mask",
    "no_mask": "no_mask",
    "nomask": "no_mask",
    "mascarilla_mal_puesta": "no_mask",
    "mask_weared_incorrect": "no_mask",
    "mask_worn_incorrectly": "no_mask",
    "incorrect_mask": "no_mask",
    "incorrect": "no_mask",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TEST_PERCENT = 30  # held-out share of the deterministic split


class DatasetError(ValueError):
    """A dataset folder or annotation that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Sample:
    image: Path
    boxes: np.ndarray  # [N, 4] float32 x1, y1, x2, y2 pixels
    labels: tuple[Label, ...]
    raw_labels: tuple[str, ...]


def map_label(name: str, where: Path) -> Label:
    try:
        return CLASS_MAP[name.strip().lower()]
    except KeyError:
        raise DatasetError(f"{where}: unknown class {name!r}; known: {sorted(CLASS_MAP)}") from None


def split_of(image: Path) -> Literal["train", "test"]:
    """Deterministic held-out split by file-name hash (stable across machines and orderings)."""
    h = int.from_bytes(hashlib.sha1(image.name.encode()).digest()[:4], "big")
    return "test" if h % 100 < TEST_PERCENT else "train"


def _read_voc(xml_path: Path, images_dir: Path) -> Sample:
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise DatasetError(f"{xml_path}: not valid XML ({exc})") from None
    filename = root.findtext("filename") or f"{xml_path.stem}.jpg"
    image = images_dir / filename
    if not image.is_file():
        raise DatasetError(f"{xml_path}: image {image} does not exist")
    boxes, labels, raw = [], [], []
    for obj in root.iter("object"):
        name = obj.findtext("name") or ""
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{xml_path}: object {name!r} has no bndbox")
        try:
            box = [float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise DatasetError(f"{xml_path}: object {name!r} has a non-numeric bndbox") from None
        if not (box[2] > box[0] and box[3] > box[1]):
            raise DatasetError(f"{xml_path}: object {name!r} has an empty or inverted box {box}")
        boxes.append(box)
        labels.append(map_label(name, xml_path))
        raw.append(name)
    return Sample(image, np.asarray(boxes, np.float32).reshape(-1, 4), tuple(labels), tuple(raw))


def _yolo_names(root: Path) -> list[str]:
    for name in ("data.yaml", "dataset.yaml"):
        p = root / name
        if p.is_file():
            names = (yaml.safe_load(p.read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise DatasetError(f"{p}: no `names` list or mapping")
    p = root / "classes.txt"
    if p.is_file():
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    raise DatasetError(f"{root}: YOLO folder needs data.yaml (names) or classes.txt")


def _read_yolo(txt: Path, image: Path, names: list[str]) -> Sample:
    with Image.open(image) as im:
        w, h = im.size
    boxes, labels, raw = [], [], []
    for n, line in enumerate(txt.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            cls, cx, cy, bw, bh = int(parts[0]), *map(float, parts[1:5])
        except (ValueError, TypeError):
            raise DatasetError(f"{txt}:{n}: expected `class cx cy w h`, got {line!r}") from None
        if not 0 <= cls < len(names):
            raise DatasetError(f"{txt}:{n}: class {cls} not in names {names}")
        boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
        labels.append(map_label(names[cls], txt))
        raw.append(names[cls])
    return Sample(image, np.asarray(boxes, np.float32).reshape(-1, 4), tuple(labels), tuple(raw))


def load_dataset(root: Path, split: Split = "all", limit: int | None = None) -> list[Sample]:
    """Samples sorted by image name; `split` keeps the train or held-out test part; `limit` the first N."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    images_dir = root / "images"
    samples: list[Sample] = []
    if (root / "annotations").is_dir():
        for xml in sorted((root / "annotations").glob("*.xml")):
            samples.append(_read_voc(xml, images_dir))
    elif (root / "labels").is_dir():
        names = _yolo_names(root)
        for txt in sorted((root / "labels").glob("*.txt")):
            image = next(
                (
                    images_dir / f"{txt.stem}{s}"
                    for s in IMAGE_SUFFIXES
                    if (images_dir / f"{txt.stem}{s}").is_file()
                ),
                None,
            )
            if image is None:
                raise DatasetError(f"{txt}: no image {txt.stem}.* in {images_dir}")
            samples.append(_read_yolo(txt, image, names))
    else:
        raise DatasetError(f"{root}: expected annotations/ (PASCAL VOC) or labels/ (YOLO) beside images/")
    if not samples:
        raise DatasetError(f"{root}: no annotated images found")
    samples.sort(key=lambda s: s.image.name)
    if split != "all":
        samples = [s for s in samples if split_of(s.image) == split]
    return samples[:limit] if limit else samples
