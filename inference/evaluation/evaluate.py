"""`maskwatch eval DATASET`: accuracy of a detector + classifier pair on a labelled dataset.

Figures (JSON report + PR-curve PNG in OUT_DIR):
- face AP at IoU 0.5 and 0.3: detections of any class against all ground-truth faces (VOC all-point AP);
  0.3 beside 0.5 because datasets draw face boxes in their own styles (hairline-to-chin, eyebrows-to-chin),
  and a detector right about the face but not the style only shows at the looser IoU;
- per-class AP for mask / no_mask at both IoUs: each detection takes the classifier's label, ranked by
  det_score * p(label), and must match a ground-truth face of that class;
- recall and precision at the operating point (the spec's thresholds, what the flow serves) at both
  IoUs, marked as dots on the PR plot (one panel per IoU);
- on ground-truth crops (detector out of the loop): classifier accuracy and no-mask recall/precision at
  the operating threshold, the threshold that reaches no-mask recall >= 0.90 with the best precision;
- speed: detector ms/frame and classifier ms/face on this machine;
- optionally the chandrikadeb7-style baseline (inference/baseline.py) on the same images.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from maskwatch.inference.datasets import Sample, Split, load_dataset
from maskwatch.inference.evaluation.metrics import (
    IOUS,
    Curve,
    Detections,
    crop_metrics,
    detection_metrics,
    iou_key,
)
from maskwatch.inference.preprocess import decode_image
from maskwatch.inference.serving.engine import InferenceEngine
from maskwatch.inference.session import Device
from maskwatch.progress import Progress

log = logging.getLogger(__name__)

# Detections down to this score feed the AP curves (the operating point is higher): AP integrates the whole
# PR curve, and 0.1 cut its tail (-0.008 face AP50 held-out against 0.01).
AP_SCORE_FLOOR = 0.01
IMAGE_BATCH = 16
# Said in every report: a figure on images the models were tuned on is not a held-out figure.
SPLIT_MEANS = {
    "test": "the held-out split: images no fine-tuning, calibration or threshold fit saw",
    "train": "the train split: for the dataset the models were tuned on, images they were trained on",
    "all": "every image: for the dataset the models were tuned on, this includes their train split",
}
SPEED_IMAGES = 64  # images timed through engine.infer at the operating point


def _load(sample: Sample) -> np.ndarray:
    return decode_image(sample.image.read_bytes())


def run_engine(engine: InferenceEngine, samples: Sequence[Sample]) -> tuple[Detections, np.ndarray]:
    """Detections on every image, plus no-mask probs of every ground-truth crop (in dataset order)."""
    det = Detections([], [], [])
    gt_probs = []
    progress = Progress("eval: image", len(samples), log)
    for i in range(0, len(samples), IMAGE_BATCH):
        chunk = samples[i : i + IMAGE_BATCH]
        frames = [_load(s) for s in chunk]
        t0 = time.perf_counter()
        found = engine.detect(frames)
        t1 = time.perf_counter()
        probs = engine.classify(frames, [b for b, _ in found])
        t2 = time.perf_counter()
        det.seconds_detect += t1 - t0
        det.seconds_classify += t2 - t1
        for (b, s), q in zip(found, probs, strict=True):
            det.boxes.append(b)
            det.scores.append(s)
            det.nomask.append(q)
        gt_probs.extend(engine.classify(frames, [s.boxes for s in chunk]))
        progress.step(n=len(chunk))
    return det, np.concatenate(gt_probs) if gt_probs else np.zeros(0, np.float32)


def _speed(det: Detections, n_images: int) -> dict[str, float]:
    faces = sum(len(b) for b in det.boxes)
    return {
        "detect_ms_per_frame": 1e3 * det.seconds_detect / max(n_images, 1),
        "classify_ms_per_face": 1e3 * det.seconds_classify / max(faces, 1),
        "frames_per_s": n_images / max(det.seconds_detect + det.seconds_classify, 1e-9),
    }


def draw_pr_png(path: Path, panels: dict[str, dict[str, Curve]], title: str) -> None:
    """PR curves (precision vs recall) drawn with OpenCV, one panel per entry of `panels` side by side,
    one colour per curve, each curve's operating point a filled dot, legend bottom-left (the corner PR
    curves stay out of: low recall at low precision)."""
    pw, h, m = 720, 580, 60
    img = np.full((h, pw * max(len(panels), 1), 3), 255, np.uint8)
    colours = [(200, 80, 0), (0, 160, 0), (0, 0, 220), (160, 0, 160), (0, 140, 200), (100, 100, 100)]
    font = cv2.FONT_HERSHEY_SIMPLEX
    for p, (heading, curves) in enumerate(panels.items()):
        x0, y0, x1, y1 = p * pw + m, h - m, (p + 1) * pw - 20, 60
        for k in range(11):  # grid every 0.1
            gx = int(x0 + (x1 - x0) * k / 10)
            gy = int(y0 + (y1 - y0) * k / 10)
            cv2.line(img, (gx, y0), (gx, y1), (225, 225, 225), 1)
            cv2.line(img, (x0, gy), (x1, gy), (225, 225, 225), 1)
            cv2.putText(img, f"{k / 10:.1f}", (gx - 12, y0 + 18), font, 0.4, (0, 0, 0), 1)
            cv2.putText(img, f"{k / 10:.1f}", (x0 - 32, gy + 4), font, 0.4, (0, 0, 0), 1)
        cv2.rectangle(img, (x0, y1), (x1, y0), (0, 0, 0), 1)
        cv2.putText(img, "recall", ((x0 + x1) // 2 - 20, h - 15), font, 0.5, (0, 0, 0), 1)
        cv2.putText(img, "precision", (p * pw + 5, 50), font, 0.5, (0, 0, 0), 1)
        cv2.putText(img, heading[:60], (x0 + 60, 45), font, 0.5, (0, 0, 0), 1)
        for n, (name, curve) in enumerate(curves.items()):
            colour = colours[n % len(colours)]
            if len(curve.precision):
                pts = np.stack(
                    [x0 + curve.recall * (x1 - x0), y0 + curve.precision * (y1 - y0)], axis=1
                ).astype(np.int32)
                cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
            if curve.operating is not None:
                prec, rec = curve.operating
                centre = (int(x0 + rec * (x1 - x0)), int(y0 + prec * (y1 - y0)))
                cv2.circle(img, centre, 6, colour, -1, cv2.LINE_AA)
                cv2.circle(img, centre, 6, (0, 0, 0), 1, cv2.LINE_AA)
            ly = y0 - 15 - 20 * (len(curves) - n)
            cv2.line(img, (x0 + 15, ly - 4), (x0 + 40, ly - 4), colour, 3)
            cv2.putText(img, name, (x0 + 45, ly), font, 0.45, (0, 0, 0), 1)
        ly = y0 - 15
        cv2.circle(img, (x0 + 27, ly - 4), 6, (90, 90, 90), -1, cv2.LINE_AA)
        cv2.putText(img, "operating point (served thresholds)", (x0 + 45, ly), font, 0.45, (0, 0, 0), 1)
    cv2.putText(img, title[:150], (m, 22), font, 0.55, (0, 0, 0), 1)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def _nomask_pr_curve(labels: np.ndarray, probs: np.ndarray, threshold: float) -> Curve:
    y = labels == "no_mask"
    order = np.argsort(-probs, kind="stable")
    tps = np.cumsum(y[order])
    chosen = probs >= threshold
    hits = int((chosen & y).sum())
    point = (hits / max(int(chosen.sum()), 1), hits / max(int(y.sum()), 1))
    return Curve(tps / np.arange(1, len(order) + 1), tps / max(int(y.sum()), 1), point)


def hot_path_speed(
    engine: InferenceEngine, frames: Sequence[np.ndarray], batch: int = IMAGE_BATCH
) -> dict[str, float]:
    """engine.infer at the operating thresholds, as the flow calls it: frames/s and ms per stage."""
    t0 = time.perf_counter()
    faces = 0
    for i in range(0, len(frames), batch):
        faces += sum(len(r.faces) for r in engine.infer(frames[i : i + batch]))
    seconds = time.perf_counter() - t0
    return {
        "frames": len(frames),
        "faces": faces,
        "batch": batch,
        "frames_per_s": len(frames) / seconds,
        "ms_per_frame": 1e3 * seconds / max(len(frames), 1),
    }


def main(
    dataset: Path,
    out_dir: Path,
    detector: str | None = None,
    classifier: str | None = None,
    limit: int | None = None,
    split: Split = "all",
    baseline: bool = False,
    score_threshold: float | None = None,
    nomask_threshold: float | None = None,
    device: Device = "auto",
    resize: Literal["stretch", "letterbox"] | None = None,
) -> dict[str, Any]:
    """Evaluate a pair (default: `engine.default_models`) on DATASET; write report.json and pr.png
    into OUT_DIR and return the report. `resize` overrides the detector spec's resize mode."""
    from maskwatch.inference.serving.engine import default_models, resolve_spec

    samples = load_dataset(Path(dataset), split=split, limit=limit)
    default_detector, default_classifier = default_models()
    det_spec = resolve_spec(detector or default_detector)
    cls_spec = resolve_spec(classifier or default_classifier)
    if resize is not None:
        det_spec = det_spec.model_copy(
            update={"preprocess": det_spec.preprocess.model_copy(update={"resize": resize})}
        )
    threshold = det_spec.score_threshold if score_threshold is None else score_threshold
    nm_threshold = cls_spec.score_threshold if nomask_threshold is None else nomask_threshold
    engine = InferenceEngine(
        det_spec,
        cls_spec,
        device=device,
        score_threshold=min(threshold, AP_SCORE_FLOOR),
        nomask_threshold=nm_threshold,
    )
    # Warm-up run so one-off session start costs do not count as speed.
    engine.classify([_load(samples[0])], [samples[0].boxes[:1]])
    engine.detect([_load(samples[0])])
    log.info("evaluating %s + %s on %d images of %s", det_spec.name, cls_spec.name, len(samples), dataset)

    det, gt_probs = run_engine(engine, samples)
    labels = np.asarray([lab for s in samples for lab in s.labels])
    metrics, curves = detection_metrics(samples, det, threshold, nm_threshold)
    engine.score_threshold = threshold
    speed_frames = [_load(s) for s in samples[:SPEED_IMAGES]]
    report: dict[str, Any] = {
        "dataset": str(dataset),
        "split": split,
        "split_means": SPLIT_MEANS[split],
        "images": len(samples),
        "detector": det_spec.name,
        "detector_input": det_spec.preprocess.model_dump(include={"width", "height", "resize"}),
        "classifier": cls_spec.name,
        "providers": engine.providers,
        "detection": metrics,
        "classification_on_gt_crops": crop_metrics(labels, gt_probs, nm_threshold),
        "speed": hot_path_speed(engine, speed_frames),
    }
    gt_crops = _nomask_pr_curve(labels, gt_probs, nm_threshold)
    panels: dict[str, dict[str, Curve]] = {}
    for iou in IOUS:
        k = iou_key(iou)
        panels[f"IoU {iou}"] = {
            f"{cls.replace('_', '-')} AP{k}={metrics[f'{cls}_ap{k}']:.3f}": curves[f"{cls}@{k}"]
            for cls in ("face", "mask", "no_mask")
        } | {"no-mask on GT crops": gt_crops}
    if baseline:
        from maskwatch.inference.evaluation.baseline import Baseline

        base = Baseline.from_models_dir(cls_spec)
        bdet = base.run([_load(s) for s in samples])
        bmetrics, bcurves = detection_metrics(samples, bdet, base.confidence, 0.5)
        report["baseline"] = {
            "method": base.describe(),
            "detection": bmetrics,
            "speed": _speed(bdet, len(samples)),
        }
        for iou in IOUS:
            k = iou_key(iou)
            panels[f"IoU {iou}"][f"baseline face AP{k}={bmetrics[f'face_ap{k}']:.3f}"] = bcurves[f"face@{k}"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    title = f"{det_spec.name} + {cls_spec.name}, {len(samples)} images, split {split} of {Path(dataset).name}"
    draw_pr_png(out_dir / "pr.png", panels, title)
    return report
