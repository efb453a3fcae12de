"""`maskwatch models calibrate DATASET`: fit a detector's `box_adjust` to a dataset's box style.

Why: face datasets disagree on where a face box sits. RFB-640's boxes run forehead-to-chin; the Kaggle
set's sit lower and narrower, so many correct detections fall under IoU 0.5. The detectors themselves keep
one generic geometry (the re-trained one regresses toward the shipped boxes), and the style of a
dataset, a site or a user's own labels lives only here. The fit is four numbers: the median, over
detections matched to a ground-truth face on the TRAIN split, of the centre shift relative to the box and
of the log size ratio (medians, so stray matches do not pull it). The result is written as
`<detector>-cal.yaml` beside the models (the same weights; never committed) with a stamp of the dataset
it was fitted on, and the default pair then prefers it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskwatch.inference.datasets import Sample, load_dataset
from maskwatch.inference.models.manifest import CALIBRATED_SUFFIX
from maskwatch.inference.postprocess import iou_matrix
from maskwatch.inference.preprocess import decode_image
from maskwatch.inference.spec import ModelSpec, save_spec

log = logging.getLogger(__name__)

MATCH_IOU = 0.3  # loose on purpose: the boxes this fit fixes are the ones just under 0.5
IMAGE_BATCH = 16


def fit_box_adjust(
    samples: Sequence[Sample], boxes: Sequence[np.ndarray]
) -> tuple[float, float, float, float]:
    """(dx, dy, sw, sh) mapping predicted boxes onto ground truth: each prediction is matched to the
    ground-truth face it overlaps most (IoU >= MATCH_IOU); medians of the relative offsets."""
    rows = []
    for sample, pred in zip(samples, boxes, strict=True):
        if len(pred) == 0 or len(sample.boxes) == 0:
            continue
        ious = iou_matrix(pred, sample.boxes)
        ok = ious.max(axis=1) >= MATCH_IOU
        p, g = pred[ok], sample.boxes[ious.argmax(axis=1)[ok]]
        pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
        gw, gh = g[:, 2] - g[:, 0], g[:, 3] - g[:, 1]
        rows.append(
            np.stack(
                [
                    ((g[:, 0] + g[:, 2]) - (p[:, 0] + p[:, 2])) / 2 / pw,
                    ((g[:, 1] + g[:, 3]) - (p[:, 1] + p[:, 3])) / 2 / ph,
                    np.log(gw / pw),
                    np.log(gh / ph),
                ],
                axis=1,
            )
        )
    if not rows:
        raise ValueError("no detection matches a ground-truth face: nothing to calibrate on")
    dx, dy, lw, lh = (float(v) for v in np.median(np.concatenate(rows), axis=0))
    return round(dx, 4), round(dy, 4), round(float(np.exp(lw)), 4), round(float(np.exp(lh)), 4)


def calibrated_name(detector: str) -> str:
    """`rfb640-ft` -> `rfb640-ft-cal`; a calibrated detector re-fitted keeps its name."""
    return detector.removesuffix(CALIBRATED_SUFFIX) + CALIBRATED_SUFFIX


def box_style(
    detector: ModelSpec, samples: Sequence[Sample], frames: Sequence[np.ndarray] | None = None
) -> tuple[float, float, float, float]:
    """The `box_adjust` that maps `detector`'s boxes (as the model gives them, at its operating
    threshold: what the flow keeps) onto the `samples`' labels. `frames` are the decoded images when
    the caller has them."""
    from maskwatch.inference.models.manifest import DEFAULT_CLASSIFIER
    from maskwatch.inference.serving.engine import InferenceEngine, resolve_spec

    # The engine wants a classifier too; it is loaded, never run.
    raw = detector.model_copy(update={"box_adjust": None})
    engine = InferenceEngine(raw, resolve_spec(DEFAULT_CLASSIFIER))
    boxes: list[np.ndarray] = []
    for i in range(0, len(samples), IMAGE_BATCH):
        batch = (
            list(frames[i : i + IMAGE_BATCH])
            if frames is not None
            else [decode_image(s.image.read_bytes()) for s in samples[i : i + IMAGE_BATCH]]
        )
        boxes += [b for b, _ in engine.detect(batch)]
    return fit_box_adjust(samples, boxes)


def remove_style(boxes: np.ndarray, adjust: tuple[float, float, float, float]) -> np.ndarray:
    """The inverse of `adjust_boxes`: labels drawn in a dataset's box style [N,4], moved to where a
    detector with that `box_adjust` fitted puts its boxes before the adjustment."""
    dx, dy, sw, sh = adjust
    w, h = (boxes[:, 2] - boxes[:, 0]) / sw, (boxes[:, 3] - boxes[:, 1]) / sh
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 - dx * w
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 - dy * h
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)


def calibrate(dataset: Path, detector: ModelSpec, out_dir: Path, limit: int | None = None) -> ModelSpec:
    """Fit `box_adjust` for `detector` on the train split of `dataset` (its first `limit` images);
    write `<out_dir>/<name>-cal.yaml` and its stamp `<name>-cal.recipe.json`."""
    samples = load_dataset(dataset, split="train", limit=limit)
    adjust = box_style(detector, samples)
    raw = detector.model_copy(update={"box_adjust": None})
    log.info("%s: box_adjust %s from %d train images", detector.name, adjust, len(samples))
    file = Path(detector.file)
    spec = raw.model_copy(
        update={
            "name": calibrated_name(detector.name),
            "box_adjust": adjust,
            "file": file.name if file.parent == out_dir else str(file),
        }
    )
    save_spec(spec, out_dir / f"{spec.name}.yaml")
    stamp = out_dir / f"{spec.name}.recipe.json"
    stamp.write_text(json.dumps(_stamp(dataset, limit, len(samples)), indent=2) + "\n")
    return spec


def _stamp(dataset: Path, limit: int | None, images: int) -> dict[str, Any]:
    return {"dataset": str(Path(dataset).resolve()), "limit": limit, "train_images": images}


def is_current(cached: Path, detector: ModelSpec, dataset: Path | None = None) -> bool:
    """A cached calibration built from this very detector spec (a changed recipe is re-fitted) and, when
    `dataset` is given, fitted on that dataset (calibrating to one's own labels re-fits)."""
    from maskwatch.inference.spec import load_spec

    if not cached.is_file():
        return False
    if dataset is not None:
        stamp = cached.with_suffix(".recipe.json")
        try:
            fitted_on = json.loads(stamp.read_text()).get("dataset")
        except (OSError, ValueError, AttributeError):
            return False
        if fitted_on != str(Path(dataset).resolve()):
            return False
    def plain(spec: ModelSpec) -> ModelSpec:
        return spec.model_copy(
            update={"name": detector.name, "box_adjust": None, "file": str(Path(spec.file).resolve())}
        )

    return plain(load_spec(cached)) == plain(detector)
