"""`maskwatch eval DATASET`: accuracy of a detector + classifier pair on a labelled dataset.

Figures (JSON report + PR-curve PNG in OUT_DIR):
- face AP50: detections of any class against all ground-truth faces (VOC all-point AP, IoU >= 0.5);
- per-class AP50 for mask / no_mask: each detection takes the classifier's label, ranked by
  det_score * p(label), and must match a ground-truth face of that class;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from inference.datasets import Sample, Split, load_dataset
from inference.engine import InferenceEngine
from inference.postprocess import iou_matrix
from inference.preprocess import decode_image
from inference.session import Device

log = logging.getLogger(__name__)

# Detections down to this score feed the AP curves (the operating point is higher): AP integrates the whole
# PR curve, and 0.1 cut its tail (-0.008 face AP50 held-out against 0.01).
AP_SCORE_FLOOR = 0.01
IMAGE_BATCH = 16
TARGET_RECALL = 0.90
SPEED_IMAGES = 64  # images timed through engine.infer at the operating point


@dataclass
class Detections:
    """One method's output on a dataset: per image boxes [K,4], det scores [K], no-mask probs [K]."""

    boxes: list[np.ndarray]
    scores: list[np.ndarray]
    nomask: list[np.ndarray]
    seconds_detect: float = 0.0
    seconds_classify: float = 0.0


def match(pred: np.ndarray, scores: np.ndarray, gt: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """True positive flag per prediction: greedy by score, each ground-truth face matched once."""
    tp = np.zeros(len(pred), bool)
    if len(pred) == 0 or len(gt) == 0:
        return tp
    ious = iou_matrix(pred, gt)
    taken = np.zeros(len(gt), bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.where(taken, -1.0, ious[i])
        j = int(np.argmax(cand))
        if cand[j] >= iou:
            tp[i] = True
            taken[j] = True
    return tp


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> tuple[float, np.ndarray, np.ndarray]:
    """VOC all-point interpolated AP; also the precision and recall curves (by descending score)."""
    if n_gt == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    tps = np.cumsum(tp[order])
    fps = np.cumsum(~tp[order])
    recall = tps / n_gt
    precision = tps / np.maximum(tps + fps, 1)
    mrec = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    ap = float(np.sum((mrec[1:] - mrec[:-1]) * mpre[1:]))
    return ap, precision, recall


def face_ap50(samples: Sequence[Sample], found: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Face AP50 (any class) of per-image detections (boxes, scores) against the samples' faces."""
    scores = np.concatenate([sc for _, sc in found])
    tp = np.concatenate([match(b, sc, s.boxes) for (b, sc), s in zip(found, samples, strict=True)])
    return average_precision(scores, tp, sum(len(s.boxes) for s in samples))[0]


def detection_metrics(
    samples: Sequence[Sample], det: Detections, score_threshold: float, nomask_threshold: float
) -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Face AP50, per-class AP50 and precision/recall at the operating score threshold."""
    all_scores, all_tp = [], []
    by_class: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {"mask": ([], []), "no_mask": ([], [])}
    n_gt = {"face": 0, "mask": 0, "no_mask": 0}
    for s, boxes, scores, q in zip(samples, det.boxes, det.scores, det.nomask, strict=True):
        all_scores.append(scores)
        all_tp.append(match(boxes, scores, s.boxes))
        n_gt["face"] += len(s.boxes)
        labels = np.asarray(s.labels)
        for cls in ("mask", "no_mask"):
            gt = s.boxes[labels == cls] if len(labels) else s.boxes[:0]
            n_gt[cls] += len(gt)
            sel = (q >= nomask_threshold) if cls == "no_mask" else (q < nomask_threshold)
            p = q[sel] if cls == "no_mask" else 1.0 - q[sel]
            cls_scores = scores[sel] * p
            by_class[cls][0].append(cls_scores)
            by_class[cls][1].append(match(boxes[sel], cls_scores, gt))
    scores_c, tp_c = np.concatenate(all_scores), np.concatenate(all_tp)
    ap, prec, rec = average_precision(scores_c, tp_c, n_gt["face"])
    curves = {"face": (prec, rec)}
    at = scores_c >= score_threshold
    tp_at = int(tp_c[at].sum())
    out: dict[str, Any] = {
        "face_ap50": ap,
        "faces_gt": n_gt["face"],
        "at_score_threshold": {
            "score_threshold": score_threshold,
            "recall": tp_at / max(n_gt["face"], 1),
            "precision": tp_at / max(int(at.sum()), 1),
            "detections": int(at.sum()),
        },
    }
    for cls, (sc, tp) in by_class.items():
        a, p, r = average_precision(np.concatenate(sc), np.concatenate(tp), n_gt[cls])
        out[f"{cls}_ap50"] = a
        out[f"{cls}_gt"] = n_gt[cls]
        curves[cls] = (p, r)
    return out, curves


def crop_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Classifier on ground-truth crops: accuracy, no-mask recall/precision at `threshold`, and the
    threshold reaching no-mask recall >= TARGET_RECALL with the best precision."""
    y = labels == "no_mask"
    pred = probs >= threshold

    def pr(pred: np.ndarray) -> tuple[float, float]:
        tp = int((pred & y).sum())
        return tp / max(int(y.sum()), 1), tp / max(int(pred.sum()), 1)

    recall, precision = pr(pred)
    best: dict[str, float] | None = None
    for t in np.unique(np.round(probs, 4))[::-1]:
        r, p = pr(probs >= t)
        if r >= TARGET_RECALL:
            best = {
                "threshold": float(t),
                "recall": r,
                "precision": p,
                "accuracy": float(((probs >= t) == y).mean()),
            }
            break
    return {
        "crops": len(labels),
        "crops_no_mask": int(y.sum()),
        "threshold": threshold,
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "nomask_recall": recall,
        "nomask_precision": precision,
        f"threshold_for_recall_{TARGET_RECALL:.2f}": best,
    }


def _load(sample: Sample) -> np.ndarray:
    return decode_image(sample.image.read_bytes())


def run_engine(engine: InferenceEngine, samples: Sequence[Sample]) -> tuple[Detections, np.ndarray]:
    """Detections on every image, plus no-mask probs of every ground-truth crop (in dataset order)."""
    det = Detections([], [], [])
    gt_probs = []
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
    return det, np.concatenate(gt_probs) if gt_probs else np.zeros(0, np.float32)


def _speed(det: Detections, n_images: int) -> dict[str, float]:
    faces = sum(len(b) for b in det.boxes)
    return {
        "detect_ms_per_frame": 1e3 * det.seconds_detect / max(n_images, 1),
        "classify_ms_per_face": 1e3 * det.seconds_classify / max(faces, 1),
        "frames_per_s": n_images / max(det.seconds_detect + det.seconds_classify, 1e-9),
    }


def draw_pr_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    """PR curves (precision vs recall) drawn with OpenCV, one colour per curve, legend bottom-left (the
    corner PR curves stay out of: low recall at low precision)."""
    w, h, m = 720, 560, 60
    img = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = m, h - m, w - 20, 40
    for k in range(11):  # grid every 0.1
        gx = int(x0 + (x1 - x0) * k / 10)
        gy = int(y0 + (y1 - y0) * k / 10)
        cv2.line(img, (gx, y0), (gx, y1), (225, 225, 225), 1)
        cv2.line(img, (x0, gy), (x1, gy), (225, 225, 225), 1)
        cv2.putText(img, f"{k / 10:.1f}", (gx - 12, y0 + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
        cv2.putText(img, f"{k / 10:.1f}", (x0 - 32, gy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.rectangle(img, (x0, y1), (x1, y0), (0, 0, 0), 1)
    cv2.putText(img, "recall", ((x0 + x1) // 2 - 20, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, "precision", (5, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    cv2.putText(img, title[:80], (x0 + 60, 25), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    colours = [(200, 80, 0), (0, 160, 0), (0, 0, 220), (160, 0, 160), (0, 140, 200), (100, 100, 100)]
    for n, (name, (prec, rec)) in enumerate(curves.items()):
        colour = colours[n % len(colours)]
        if len(prec):
            pts = np.stack([x0 + rec * (x1 - x0), y0 + prec * (y1 - y0)], axis=1).astype(np.int32)
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        ly = y0 - 15 - 20 * (len(curves) - 1 - n)
        cv2.line(img, (x0 + 15, ly - 4), (x0 + 40, ly - 4), colour, 3)
        cv2.putText(img, name, (x0 + 45, ly), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write {path}")


def _nomask_pr_curve(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = labels == "no_mask"
    order = np.argsort(-probs, kind="stable")
    tps = np.cumsum(y[order])
    return tps / np.arange(1, len(order) + 1), tps / max(int(y.sum()), 1)


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
    from inference.engine import default_models, resolve_spec

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
        "images": len(samples),
        "detector": det_spec.name,
        "detector_input": det_spec.preprocess.model_dump(include={"width", "height", "resize"}),
        "classifier": cls_spec.name,
        "providers": engine.providers,
        "detection": metrics,
        "classification_on_gt_crops": crop_metrics(labels, gt_probs, nm_threshold),
        "speed": hot_path_speed(engine, speed_frames),
    }
    pr_curves = {
        f"face AP50={metrics['face_ap50']:.3f}": curves["face"],
        f"mask AP50={metrics['mask_ap50']:.3f}": curves["mask"],
        f"no-mask AP50={metrics['no_mask_ap50']:.3f}": curves["no_mask"],
        "no-mask on GT crops": _nomask_pr_curve(labels, gt_probs),
    }
    if baseline:
        from inference.baseline import Baseline

        base = Baseline.from_models_dir(cls_spec)
        bdet = base.run([_load(s) for s in samples])
        bmetrics, bcurves = detection_metrics(samples, bdet, base.confidence, 0.5)
        report["baseline"] = {
            "method": base.describe(),
            "detection": bmetrics,
            "speed": _speed(bdet, len(samples)),
        }
        pr_curves[f"baseline face AP50={bmetrics['face_ap50']:.3f}"] = bcurves["face"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, default=float))
    draw_pr_png(out_dir / "pr.png", pr_curves, f"{det_spec.name} + {cls_spec.name}, {len(samples)} images")
    return report
