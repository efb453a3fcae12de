"""Detection and classification metrics, pure numpy: matching, VOC AP, per-class AP, crop accuracy.

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
