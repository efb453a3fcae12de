"""Raw model outputs -> face boxes in original pixels and no-mask probabilities (vectorised numpy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from maskwatch.inference.preprocess import Transform
from maskwatch.inference.spec import ModelSpec


def _scores_2d(scores: np.ndarray) -> np.ndarray:
    # Ultra-Light exports give [B, N, 2] (background, face); the contract is [B, N] face prob.
    if scores.ndim == 3:
        return scores[..., -1]
    return scores


def decode_detector(outputs: Sequence[np.ndarray], spec: ModelSpec) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per batch item: boxes [N, 4] x1,y1,x2,y2 in model-input pixels and scores [N]."""
    w, h = spec.preprocess.width, spec.preprocess.height
    if spec.decoder == "boxes_scores":
        boxes, scores = outputs[0], _scores_2d(outputs[1])
        if boxes.ndim != 3 or boxes.shape[-1] != 4:
            raise ValueError(f"{spec.name}: boxes output has shape {boxes.shape}, expected [B, N, 4]")
        scale = np.array([w, h, w, h], np.float32)
        return [(boxes[i] * scale, scores[i]) for i in range(boxes.shape[0])]
    if spec.decoder == "yolov8":
        out = outputs[0]  # [B, 5 (+ landmarks), N]: cx, cy, w, h, conf
        if out.ndim != 3 or out.shape[1] < 5:
            raise ValueError(f"{spec.name}: yolov8 output has shape {out.shape}, expected [B, 5+, N]")
        result = []
        for i in range(out.shape[0]):
            cx, cy, bw, bh, conf = out[i, :5]
            boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
            result.append((boxes, conf))
        return result
    raise ValueError(f"{spec.name}: decoder {spec.decoder!r} is not a detector decoder")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a [N,4] against every box in b [M,4]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9), np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best first, at most `limit`."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[iou_matrix(boxes[i : i + 1], boxes[rest])[0] <= iou]
    return np.asarray(keep, dtype=np.int64)


def mirror_boxes(boxes: np.ndarray, t: Transform) -> np.ndarray:
    """Model-input boxes found on the mirrored frame -> the same faces' boxes on the unmirrored frame."""
    span = t.width * t.scale_x + 2 * t.pad_x  # x_in -> span - x_in mirrors the frame inside the input
    out = boxes.copy()
    out[:, 0], out[:, 2] = span - boxes[:, 2], span - boxes[:, 0]
    return out


def vote(boxes: np.ndarray, scores: np.ndarray, keep: np.ndarray, iou: float) -> np.ndarray:
    """Each kept box replaced by the score-weighted mean of the boxes overlapping it by more than `iou`
    (itself included): several passes' boxes of one face average out their jitter."""
    weights = (iou_matrix(boxes[keep], boxes) > iou) * scores[None, :]
    weights[np.arange(len(keep)), keep] = scores[keep]
    return np.asarray((weights @ boxes) / weights.sum(axis=1, keepdims=True), np.float32)


def to_original(boxes: np.ndarray, t: Transform) -> np.ndarray:
    """Model-input pixel boxes -> original-frame pixel boxes, clipped to the frame."""
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, 0] = (boxes[:, 0] - t.pad_x) / t.scale_x
    out[:, 2] = (boxes[:, 2] - t.pad_x) / t.scale_x
    out[:, 1] = (boxes[:, 1] - t.pad_y) / t.scale_y
    out[:, 3] = (boxes[:, 3] - t.pad_y) / t.scale_y
    out[:, 0] = np.clip(out[:, 0], 0, t.width)
    out[:, 2] = np.clip(out[:, 2], 0, t.width)
    out[:, 1] = np.clip(out[:, 1], 0, t.height)
    out[:, 3] = np.clip(out[:, 3], 0, t.height)
    return out


def adjust_boxes(boxes: np.ndarray, adjust: tuple[float, float, float, float]) -> np.ndarray:
    """Boxes [N,4] with centres moved by (dx * w, dy * h) and sizes scaled by (sw, sh), each box by its own
    size. Relative to the box, so the same numbers hold before and after any per-axis resize."""
    dx, dy, sw, sh = adjust
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + dx * w
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + dy * h
    half_w, half_h = sw * w / 2, sh * h / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1).astype(np.float32)


def select_faces(
    boxes: np.ndarray,
    scores: np.ndarray,
    t: Transform,
    *,
    score_threshold: float,
    nms_iou: float,
    max_faces: int,
    min_size: float = 2.0,
    box_adjust: tuple[float, float, float, float] | None = None,
    box_vote: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Threshold, box-adjust, un-letterbox and NMS one frame's raw detections -> (boxes [K,4] pixels,
    scores [K])."""
    mask = scores >= score_threshold
    boxes, scores = boxes[mask], scores[mask].astype(np.float32)
    if boxes.shape[0] == 0:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)
    if box_adjust is not None:
        boxes = adjust_boxes(boxes, box_adjust)
    boxes = to_original(boxes, t)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    boxes, scores = boxes[ok], scores[ok]
    keep = nms(boxes, scores, nms_iou, max_faces)
    if box_vote and len(keep):
        return vote(boxes, scores, keep, nms_iou), scores[keep]
    return boxes[keep], scores[keep]


def nomask_probability(output: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Classifier output [B, C] (softmax) or [B, 1] (sigmoid) -> no-mask probability [B]."""
    out = np.asarray(output, np.float32)
    if spec.decoder == "softmax":
        if out.ndim != 2 or out.shape[1] <= spec.nomask_index:
            raise ValueError(f"{spec.name}: output shape {out.shape} has no class {spec.nomask_index}")
        if spec.logits:
            z = out - out.max(axis=1, keepdims=True)
            e = np.exp(z)
            out = e / e.sum(axis=1, keepdims=True)
        return out[:, spec.nomask_index]
    if spec.decoder == "sigmoid":
        p = out.reshape(out.shape[0], -1)[:, 0]
        return 1.0 / (1.0 + np.exp(-p)) if spec.logits else p
    raise ValueError(f"{spec.name}: decoder {spec.decoder!r} is not a classifier decoder")
