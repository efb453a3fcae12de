"""Detection and classification metrics, pure numpy: matching, VOC AP at IoU 0.5 and 0.3, per-class AP,
recall/precision at the operating point, crop accuracy.

Shared by ``maskwatch eval``, the baseline, training's held-out checks and the benchmarks, so every figure
the project reports is computed one way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskwatch.inference.datasets import Sample
from maskwatch.inference.postprocess import iou_matrix

TARGET_RECALL = 0.90


@dataclass
class Detections:
    """One method's output on a dataset: per image boxes [K,4], det scores [K], no-mask probs [K]."""

    boxes: list[np.ndarray]
    scores: list[np.ndarray]
    nomask: list[np.ndarray]
    seconds_detect: float = 0.0
    seconds_classify: float = 0.0


@dataclass(frozen=True)
class Curve:
    """A precision-recall curve (by descending score) and, where one applies, its operating point
    (precision, recall) at the thresholds the flow serves."""

    precision: np.ndarray
    recall: np.ndarray
    operating: tuple[float, float] | None = None


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


IOUS = (0.5, 0.3)  # reported at both: 0.5 is the convention, 0.3 forgives a dataset's own box style


def iou_key(iou: float) -> str:
    """`50` for IoU 0.5: the suffix of the report's keys (`face_ap50`, `face_ap30`, `iou50`)."""
    return f"{round(iou * 100):02d}"


def face_ap(
    samples: Sequence[Sample], found: Sequence[tuple[np.ndarray, np.ndarray]], iou: float = 0.5
) -> float:
    """Face AP (any class) at `iou` of per-image detections (boxes, scores) against the samples' faces."""
    scores = np.concatenate([sc for _, sc in found])
    tp = np.concatenate([match(b, sc, s.boxes, iou) for (b, sc), s in zip(found, samples, strict=True)])
    return average_precision(scores, tp, sum(len(s.boxes) for s in samples))[0]


def face_ap50(samples: Sequence[Sample], found: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Face AP at IoU 0.5."""
    return face_ap(samples, found, 0.5)


def box_agreement(
    samples: Sequence[Sample],
    found_a: Sequence[tuple[np.ndarray, np.ndarray]],
    found_b: Sequence[tuple[np.ndarray, np.ndarray]],
    score_threshold: float,
    iou: float = 0.3,
) -> tuple[float, int]:
    """How alike two detectors' box geometry is: over the ground-truth faces both find (each one's
    best-overlapping box at `score_threshold` or above, IoU >= `iou` with the face), the mean IoU of
    the two boxes, and how many faces that is. Loose `iou` on purpose: a box style that differs from
    the labels' must still count as found, so that the figure compares the detectors, not the labels."""
    pairs: list[float] = []
    for s, (boxes_a, scores_a), (boxes_b, scores_b) in zip(samples, found_a, found_b, strict=True):
        a, b = boxes_a[scores_a >= score_threshold], boxes_b[scores_b >= score_threshold]
        if not len(s.boxes) or not len(a) or not len(b):
            continue
        overlap_a, overlap_b = iou_matrix(a, s.boxes), iou_matrix(b, s.boxes)
        best_a, best_b = overlap_a.argmax(0), overlap_b.argmax(0)
        ok_a, ok_b = overlap_a.max(0) >= iou, overlap_b.max(0) >= iou
        for j in np.flatnonzero(ok_a & ok_b):
            pairs.append(float(iou_matrix(a[best_a[j] : best_a[j] + 1], b[best_b[j] : best_b[j] + 1])[0, 0]))
    return (float(np.mean(pairs)) if pairs else float("nan")), len(pairs)


def _recall_precision(tp: np.ndarray, kept: np.ndarray, n_gt: int) -> dict[str, float | int]:
    hits, n = int(tp[kept].sum()), int(kept.sum())
    return {"recall": hits / max(n_gt, 1), "precision": hits / max(n, 1), "detections": n}


def detection_metrics(
    samples: Sequence[Sample],
    det: Detections,
    score_threshold: float,
    nomask_threshold: float,
    ious: Sequence[float] = IOUS,
) -> tuple[dict[str, Any], dict[str, Curve]]:
    """Face, mask and no-mask AP at each IoU in `ious` (keys `face_ap50`, `no_mask_ap30`, ...) and, at
    the operating point (face score >= `score_threshold`, no-mask prob >= `nomask_threshold`), face and
    mask and no-mask recall/precision at each IoU (`operating_point["iou50"]`). Curves are keyed
    `face@50`, `no_mask@30`, ..."""
    n_gt = {"face": sum(len(s.boxes) for s in samples)}
    labels = [np.asarray(s.labels) for s in samples]
    for cls in ("mask", "no_mask"):
        n_gt[cls] = sum(int((lab == cls).sum()) for lab in labels)
    scores_c = np.concatenate(det.scores) if det.scores else np.zeros(0, np.float32)
    out: dict[str, Any] = {
        "faces_gt": n_gt["face"],
        "mask_gt": n_gt["mask"],
        "no_mask_gt": n_gt["no_mask"],
        "ious": list(ious),
        "operating_point": {"score_threshold": score_threshold, "nomask_threshold": nomask_threshold},
    }
    curves: dict[str, Curve] = {}
    for iou in ious:
        k = iou_key(iou)
        per_image = zip(samples, det.boxes, det.scores, strict=True)
        tp_face = np.concatenate(
            [match(b, sc, s.boxes, iou) for s, b, sc in per_image] or [np.zeros(0, bool)]
        )
        ap, prec, rec = average_precision(scores_c, tp_face, n_gt["face"])
        out[f"face_ap{k}"] = ap
        at = _recall_precision(tp_face, scores_c >= score_threshold, n_gt["face"])
        curves[f"face@{k}"] = Curve(prec, rec, (at["precision"], at["recall"]))
        op: dict[str, Any] = {"face": at}
        for cls in ("mask", "no_mask"):
            cls_scores, cls_tp, kept = [], [], []
            per_face = zip(samples, labels, det.boxes, det.scores, det.nomask, strict=True)
            for s, lab, boxes, scores, q in per_face:
                gt = s.boxes[lab == cls] if len(lab) else s.boxes[:0]
                sel = (q >= nomask_threshold) if cls == "no_mask" else (q < nomask_threshold)
                p = q[sel] if cls == "no_mask" else 1.0 - q[sel]
                cls_scores.append(scores[sel] * p)
                cls_tp.append(match(boxes[sel], cls_scores[-1], gt, iou))
                kept.append(scores[sel] >= score_threshold)
            sc_c, tp_c = np.concatenate(cls_scores), np.concatenate(cls_tp)
            a, p_curve, r_curve = average_precision(sc_c, tp_c, n_gt[cls])
            out[f"{cls}_ap{k}"] = a
            at_cls = _recall_precision(tp_c, np.concatenate(kept), n_gt[cls])
            curves[f"{cls}@{k}"] = Curve(p_curve, r_curve, (at_cls["precision"], at_cls["recall"]))
            op[cls] = at_cls
        out["operating_point"][f"iou{k}"] = op
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
