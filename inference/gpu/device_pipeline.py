"""Both inference stages with each frame uploaded once, as uint8, and pre-processing on the device.

What `InferenceEngine` runs when its models are on a GPU. Per group of same-size frames (cameras of one
model share a size) and chunk of at most `max_batch`: frames -> a reused page-locked staging buffer -> one
upload -> `frame_input_model` -> detector (input never leaves the device) -> boxes to the host for
decode + NMS -> `crop_model` cuts every face from the frames still on the device -> classifier -> the
no-mask probabilities back. Only uint8 pixels go up and only boxes, scores and probabilities come down.

Each model session sees one input shape only: the detector's batch is padded to `max_batch` frames
(black, inside the pre-processing graph, after the upload) and the classifier's to `classify_batch`
crops. On an H200 every change of input shape between calls cost seconds (ONNX Runtime's cuDNN convolution
set-up: 128 frames split into crops of 512 + 128 ran at 16 frames/s against 564 for 64 frames in one
shape; the host path with free shapes and heuristic search fell to 33). Padding costs GPU time only on
part-full micro-batches, when the GPU has time to spare. Calls are at most 64 frames (the engine's best
frames/s there) and 128 crops (the classifier at 90 % of its best rate, with less padding than 256).

Not thread-safe (the staging buffers are reused): one instance per flow worker, like the engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from maskwatch.inference.gpu.device_graphs import crop_model, crop_rois, frame_input_feeds, frame_input_model
from maskwatch.inference.gpu.pinned import pinned_empty, unpin
from maskwatch.inference.postprocess import decode_detector, nomask_probability, select_faces
from maskwatch.inference.preprocess import crop_boxes
from maskwatch.inference.session import Device, OrtModel, cpu_count
from maskwatch.inference.spec import ModelSpec

Detection = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K, 4], detector scores [K], no-mask probs [K]
T = TypeVar("T")
_STAGING_SIZES = 4  # frame sizes whose staging buffer is kept (one per camera resolution in use)
MAX_FRAMES, MAX_CROPS = 64, 128  # per device call (module docstring)
_COPY_THREADS = 8  # one thread copies ~4 GB/s: 1024x1024 frames into the staging buffer need several


def supported(detector: ModelSpec, classifier: ModelSpec) -> bool:
    """Whether these specs can run here: mirrored detection and letterboxed crops stay on the host path."""
    return not detector.flip and classifier.preprocess.resize == "stretch"


def _above(raw: list[np.ndarray], threshold: float) -> list[np.ndarray]:
    """boxes [B, N, 4] + scores [B, N(, 2)] -> the same outputs keeping only anchors at or above the
    threshold, padded per frame with score -1 (dropped by `select_faces`): one vectorised comparison
    for the batch instead of decoding all ~17,000 anchors of every frame (the CPU's biggest cost here)."""
    boxes, scores = raw[0], raw[1][..., -1] if raw[1].ndim == 3 else raw[1]
    keep = scores >= threshold
    width = max(1, int(keep.sum(axis=1).max()))
    out_boxes = np.zeros((len(boxes), width, 4), np.float32)
    out_scores = np.full((len(boxes), width), -1.0, np.float32)
    for i in range(len(boxes)):
        idx = np.flatnonzero(keep[i])
        out_boxes[i, : len(idx)] = boxes[i, idx]
        out_scores[i, : len(idx)] = scores[i, idx]
    return [out_boxes, out_scores]


class DevicePipeline:
    def __init__(
        self,
        detector: OrtModel,
        classifier: OrtModel,
        detector_spec: ModelSpec,
        classifier_spec: ModelSpec,
        *,
        max_batch: int,
        max_faces: int,
        classify_batch: int,
    ) -> None:
        if not supported(detector_spec, classifier_spec):
            raise ValueError(
                f"{detector_spec.name} + {classifier_spec.name}: use the host pre-processing path"
            )
        self.detector, self.classifier = detector, classifier
        self.detector_spec, self.classifier_spec = detector_spec, classifier_spec
        self.max_batch, self.max_faces = min(max_batch, MAX_FRAMES), max_faces
        self.classify_batch = min(classify_batch, MAX_CROPS)
        self._copier = ThreadPoolExecutor(min(_COPY_THREADS, cpu_count()), thread_name_prefix="mw-staging")
        self.device_type = detector.device_type
        device: Device = "cuda" if self.device_type == "cuda" else "cpu"
        self.frame_input = OrtModel(frame_input_model(detector_spec.preprocess), device=device, threads=1)
        self.crops = OrtModel(crop_model(classifier_spec.preprocess), device=device, threads=1)
        self._staging: dict[tuple[int, int], tuple[np.ndarray, bool]] = {}

    @property
    def pinned(self) -> bool:
        """Whether every staging buffer in use is page-locked."""
        return bool(self._staging) and all(p for _, p in self._staging.values())

    def _upload(self, frames: Sequence[np.ndarray]) -> Any:
        h, w = frames[0].shape[:2]
        if (h, w) not in self._staging:
            if len(self._staging) >= _STAGING_SIZES:
                old, was_pinned = self._staging.pop(next(iter(self._staging)))
                if was_pinned:
                    unpin(old)
            shape = (self.max_batch, h, w, 3)
            self._staging[h, w] = (
                pinned_empty(shape) if self.device_type == "cuda" else (np.empty(shape, np.uint8), False)
            )
        staging = self._staging[h, w][0][: len(frames)]
        # numpy releases the GIL while copying, so the frames are copied in parallel.
        list(self._copier.map(np.copyto, staging, frames))
        return ort.OrtValue.ortvalue_from_numpy(staging, self.device_type, 0)

    def _detect(
        self, frames: Any, n: int, h: int, w: int, threshold: float
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        spec = self.detector_spec
        # Black frames pad the batch to its one shape; their results are dropped below.
        feeds, transform = frame_input_feeds(spec.preprocess, n, h, w, self.max_batch)
        (tensor,) = self.frame_input.run_bound({"frames": frames, **feeds}, outputs_on_device=True)
        raw = [out[:n] for out in self.detector.run_bound({self.detector.input_name: tensor})]
        if spec.decoder == "boxes_scores":
            raw = _above(raw, threshold)
        return [
            select_faces(
                boxes,
                scores,
                transform,
                score_threshold=threshold,
                nms_iou=spec.nms_iou,
                max_faces=self.max_faces,
                box_adjust=spec.box_adjust,
                box_vote=False,
            )
            for boxes, scores in decode_detector(raw, spec)
        ]

    def _classify(self, frames: Any, boxes: Sequence[np.ndarray], h: int, w: int) -> list[np.ndarray]:
        counts = [len(b) for b in boxes]
        total = sum(counts)
        if total == 0:
            return [np.zeros((0,), np.float32) for _ in boxes]
        spec = self.classifier_spec
        rois = crop_rois(np.concatenate([crop_boxes(b, w, h, spec.crop_margin) for b in boxes]))
        index = np.repeat(np.arange(len(boxes), dtype=np.int64), counts)
        probs = []
        for start in range(0, total, self.classify_batch):
            k = min(self.classify_batch, total - start)
            size = self.classify_batch
            part_rois = np.zeros((size, 4), np.float32)
            part_rois[:, 2:] = 1.0  # padding: a 1-pixel box on frame 0, its result dropped
            part_rois[:k] = rois[start : start + k]
            part_index = np.zeros((size,), np.int64)
            part_index[:k] = index[start : start + k]
            (crops,) = self.crops.run_bound(
                {"frames": frames, "rois": part_rois, "index": part_index}, outputs_on_device=True
            )
            (out, *_) = self.classifier.run_bound({self.classifier.input_name: crops})
            probs.append(nomask_probability(out[:k], spec))
        return np.split(np.concatenate(probs), np.cumsum(counts)[:-1])

    def _by_chunk(
        self,
        frames: Sequence[np.ndarray],
        work: Callable[[Any, list[int], int, int], list[T]],
        spent: dict[str, float],
    ) -> list[T]:
        """`work(uploaded, indices, h, w)` on each chunk of same-size frames, results back in frame order."""
        out: list[T | None] = [None] * len(frames)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(frame.shape[:2], []).append(i)
        for (h, w), members in groups.items():
            for start in range(0, len(members), self.max_batch):
                chunk = members[start : start + self.max_batch]
                t0 = time.perf_counter()
                value = self._upload([frames[i] for i in chunk])
                spent["upload_ms"] = spent.get("upload_ms", 0.0) + (time.perf_counter() - t0) * 1e3
                for i, result in zip(chunk, work(value, chunk, h, w), strict=True):
                    out[i] = result
        return [r for r in out if r is not None]

    def run(
        self, frames: Sequence[np.ndarray], score_threshold: float
    ) -> tuple[list[Detection], dict[str, float]]:
        """Per frame (BGR uint8, checked): boxes, detector scores (at least `score_threshold`) and no-mask
        probabilities, both stages on one upload; and the milliseconds spent uploading, detecting and
        classifying."""
        spent = {"upload_ms": 0.0, "detect_ms": 0.0, "classify_ms": 0.0}

        def both(value: Any, chunk: list[int], h: int, w: int) -> list[Detection]:
            t0 = time.perf_counter()
            found = self._detect(value, len(chunk), h, w, score_threshold)
            t1 = time.perf_counter()
            probs = self._classify(value, [b for b, _ in found], h, w)
            spent["detect_ms"] += (t1 - t0) * 1e3
            spent["classify_ms"] += (time.perf_counter() - t1) * 1e3
            return [(b, s, p) for (b, s), p in zip(found, probs, strict=True)]

        return self._by_chunk(frames, both, spent), spent

    def detect(
        self, frames: Sequence[np.ndarray], score_threshold: float
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The detector stage alone (`InferenceEngine.detect` on a GPU)."""
        return self._by_chunk(
            frames, lambda v, chunk, h, w: self._detect(v, len(chunk), h, w, score_threshold), {}
        )

    def classify(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """No-mask probabilities of given boxes (`InferenceEngine.classify` on a GPU, e.g. ground truth)."""
        return self._by_chunk(
            frames, lambda v, chunk, h, w: self._classify(v, [boxes[i] for i in chunk], h, w), {}
        )

    def close(self) -> None:
        """Release the page-locked buffers and the copy threads."""
        self._copier.shutdown()
        for array, was_pinned in self._staging.values():
            if was_pinned:
                unpin(array)
        self._staging.clear()
