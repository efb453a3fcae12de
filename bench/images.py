"""Benchmark frames: real photos with annotated faces from the Kaggle face-mask set, upscaled to a size.

Only numpy/OpenCV/stdlib here: the GPU script imports this too, from a folder of a few JPEGs.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASET_DIR = (REPO_ROOT / ".." / "shared" / "datasets" / "kaggle-face-mask").resolve()
# VOC labels; an incorrectly worn mask counts as no mask.
NOMASK_LABELS = {"sin_mascarilla", "mascarilla_mal_puesta", "without_mask", "mask_weared_incorrect"}


class NoImagesError(FileNotFoundError):
    """The dataset (or an image folder) is missing or holds no usable photo."""


def faces_in(xml: Path) -> list[str]:
    """Labels of the annotated faces of one VOC file."""
    return [o.findtext("name") or "" for o in ET.parse(xml).getroot().iter("object")]


def dataset_images(
    dataset_dir: Path = DATASET_DIR, count: int = 32, nomask_only: bool = False, min_faces: int = 1
) -> list[Path]:
    """Dataset photos with at least ``min_faces`` annotated faces (with a no-mask face if asked), in
    file order so every run picks the same ones."""
    ann = dataset_dir / "annotations"
    if not ann.is_dir():
        raise NoImagesError(
            f"face-mask dataset not found at {dataset_dir} (expected annotations/ and images/; "
            "it lives in ../shared/datasets/kaggle-face-mask beside the repo)"
        )
    chosen = []
    for xml in sorted(ann.glob("*.xml")):
        labels = faces_in(xml)
        if len(labels) < min_faces or (nomask_only and not NOMASK_LABELS & set(labels)):
            continue
        image = dataset_dir / "images" / f"{xml.stem}.jpg"
        if image.is_file():
            chosen.append(image)
        if len(chosen) == count:
            break
    if not chosen:
        raise NoImagesError(f"no photo with faces under {dataset_dir}")
    return chosen


def folder_images(folder: Path, count: int = 64) -> list[Path]:
    """JPEG/PNG files of a folder (the GPU host has no dataset, only a few copied photos)."""
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if not found:
        raise NoImagesError(f"no .jpg/.png images in {folder}")
    return found


def load_frames(paths: list[Path], width: int, height: int) -> list[np.ndarray]:
    """Decoded BGR frames, each upscaled (stretched) to exactly ``width`` x ``height``."""
    frames = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise NoImagesError(f"cannot decode {p}")
        frames.append(cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR))
    return frames


def write_jpegs(frames: list[np.ndarray], folder: Path, quality: int = 90) -> list[Path]:
    """Frames as JPEG files ``000.jpg``... (a camera's ``file://`` replay directory)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, frame in enumerate(frames):
        path = folder / f"{i:03d}.jpg"
        if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, quality]):
            raise OSError(f"cannot write {path}")
        out.append(path)
    return out
