"""`maskwatch models calibrate DATASET`: fit a detector's `box_adjust` to a dataset's box style.

Why: face datasets disagree on where a face box sits. RFB-640's boxes run forehead-to-chin; the Kaggle
set's sit lower and narrower, so many correct detections fall under IoU 0.5 (face AP50 0.778 -> 0.828
held-out once adjusted). The fit is four numbers: the median, over detections matched to a ground-truth
face on the TRAIN split, of the centre shift relative to the box and of the log size ratio (medians, so
stray matches do not pull it). The result is written as `<detector>-cal.yaml` beside the pulled models
(the same weights; never committed), which `InferenceEngine.default` and `maskwatch eval` then prefer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

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


def calibrate(dataset: Path, detector: ModelSpec, out_dir: Path, limit: int | None = None) -> ModelSpec:
    """Fit `box_adjust` for `detector` on the train split of `dataset` (its first `limit` images);
    write `<out_dir>/<name>-cal.yaml`."""
    from maskwatch.inference.models.manifest import DEFAULT_CLASSIFIER
    from maskwatch.inference.serving.engine import InferenceEngine, resolve_spec

    # Fitted on the boxes as the model gives them, at its operating threshold (what the flow keeps).
    # The engine wants a classifier too; it is loaded, never run.
    raw = detector.model_copy(update={"box_adjust": None})
    engine = InferenceEngine(raw, resolve_spec(DEFAULT_CLASSIFIER))
    samples = load_dataset(dataset, split="train", limit=limit)
    boxes: list[np.ndarray] = []
    for i in range(0, len(samples), IMAGE_BATCH):
        frames = [decode_image(s.image.read_bytes()) for s in samples[i : i + IMAGE_BATCH]]
        boxes += [b for b, _ in engine.detect(frames)]
    adjust = fit_box_adjust(samples, boxes)
    log.info("%s: box_adjust %s from %d train images", detector.name, adjust, len(samples))
    file = Path(detector.file)
    spec = raw.model_copy(
        update={
            "name": f"{detector.name}{CALIBRATED_SUFFIX}",
            "box_adjust": adjust,
            "file": file.name if file.parent == out_dir else str(file),
        }
    )
    save_spec(spec, out_dir / f"{spec.name}.yaml")
    return spec


def is_current(cached: Path, detector: ModelSpec) -> bool:
    """A cached calibration built from this very detector spec (a changed recipe is re-fitted)."""
    from maskwatch.inference.spec import load_spec

    if not cached.is_file():
        return False
    def plain(spec: ModelSpec) -> ModelSpec:
        return spec.model_copy(
            update={"name": detector.name, "box_adjust": None, "file": str(Path(spec.file).resolve())}
        )

    return plain(load_spec(cached)) == plain(detector)
