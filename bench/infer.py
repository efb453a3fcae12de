"""Inference-only benchmark: our two-stage engine (detector, classifier, both) at batch sizes, and the
chandrikadeb7-style baseline on the same frames.

Needs only numpy, OpenCV and onnxruntime (plus the inference package), so the GPU script runs it too.
Every figure is frames (or faces) per second of wall time on one process, after a warm-up call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskwatch.inference.serving.engine import InferenceEngine
from maskwatch.inference.session import Device

from bench.timing import rate

log = logging.getLogger(__name__)


def tile(frames: Sequence[np.ndarray], n: int) -> list[np.ndarray]:
    """``n`` frames, repeating the given ones in order."""
    return [frames[i % len(frames)] for i in range(n)]


def make_engine(
    models_dir: Path | None, device: Device, max_batch: int, threads: int | None = None
) -> InferenceEngine:
    return InferenceEngine.default(models_dir=models_dir, device=device, max_batch=max_batch, threads=threads)


def bench_engine(
    engine: InferenceEngine,
    frames: Sequence[np.ndarray],
    size: str,
    batches: Sequence[int],
    min_s: float,
    stages: Sequence[str] = ("detector", "detector_model", "classifier", "classifier_model", "together"),
) -> list[dict[str, Any]]:
    """One row per (batch, stage): frames/s, faces/s and ms per call.

    ``detector``/``classifier``/``together`` are the engine's own calls (CPU resize and normalise,
    NMS, crops included); ``*_model`` time the ONNX session alone on a ready float32 tensor, which is
    what a GPU sees when preprocessing is not the bottleneck.
    """
    rows: list[dict[str, Any]] = []
    margin = engine.classifier_spec.crop_margin
    for batch in batches:
        # Every frame is used: consecutive calls take consecutive chunks of `batch` frames (cycling).
        pool = tile(frames, math.ceil(len(frames) / batch) * batch)
        chunks = [pool[i : i + batch] for i in range(0, len(pool), batch)]
        boxes = [[b for b, _ in engine.detect(c)] for c in chunks]
        counts = [sum(len(b) for b in bs) for bs in boxes]
        faces = sum(counts) / len(chunks)  # per call
        # The session the engine picks for this frame size (on the CPU, the input fitted to its aspect).
        h, w = frames[0].shape[:2]
        det_model, det_pre, _ = engine._sizes.at(engine._sizes.size_for(w, h))
        det_tensors = [(det_pre.frames(c)[0].copy(),) for c in chunks]
        crops = [
            (engine._cls_pre.crops(c, b, margin).copy(),)
            for c, b, n in zip(chunks, boxes, counts, strict=True)
            if n
        ]
        calls: dict[str, Callable[[], object]] = {
            "detector": Cycle(engine.detect, [(c,) for c in chunks]),
            "detector_model": Cycle(det_model.run, det_tensors),
            "classifier": Cycle(engine.classify, list(zip(chunks, boxes, strict=True))),
            "together": Cycle(engine.infer, [(c,) for c in chunks]),
        }
        if crops:
            calls["classifier_model"] = Cycle(engine.classifier.run, crops)
            faces_model = sum(len(c[0]) for c in crops) / len(crops)
        for stage in stages:
            if stage not in calls:
                continue
            sec, n = rate(calls[stage], min_s)
            per_call = faces_model if stage == "classifier_model" else faces
            row = {
                "size": size,
                "batch": batch,
                "stage": stage,
                "provider": _provider(engine, stage),
                "ms_per_call": round(sec * 1e3, 2),
                "frames_per_s": round(batch / sec, 1) if stage != "classifier_model" else None,
                "faces_per_s": round(per_call / sec, 1) if stage != "detector_model" else None,
                "faces_per_frame": round(faces / batch, 2),
                "calls": n,
            }
            rows.append(row)
            log.info("%s", row)
    return rows


class Cycle:
    """A call of ``fn`` on the next argument tuple, round-robin (so timing covers every frame)."""

    def __init__(self, fn: Callable[..., object], args: Sequence[tuple[Any, ...]]) -> None:
        self.fn, self.args, self.i = fn, args, 0

    def __call__(self) -> object:
        args = self.args[self.i % len(self.args)]
        self.i += 1
        return self.fn(*args)


def _provider(engine: InferenceEngine, stage: str) -> str:
    model = engine.classifier if stage.startswith("classifier") else engine.detector
    return model.provider.replace("ExecutionProvider", "")


def baseline_pipeline(models_dir: Path) -> Any:
    """D's ``maskwatch.inference.evaluation.baseline.Baseline``. OpenCV 5 dropped cv2.dnn's Caffe importer,
    so where it is
    missing the res10 detector runs from its ONNX conversion (same weights, ``models pull`` writes it)
    on ONNX Runtime, batch 1, with Caffe's DetectionOutput steps (confidence 0.5, NMS 0.45)."""
    import cv2

    from maskwatch.inference.evaluation.baseline import Baseline
    from maskwatch.inference.models.manifest import DEFAULT_CLASSIFIER, get_spec

    classifier = get_spec(DEFAULT_CLASSIFIER, models_dir)
    if hasattr(cv2.dnn, "readNetFromCaffe"):
        return Baseline.from_models_dir(classifier, models_dir)
    return _OnnxRes10Baseline(classifier, models_dir)


def _onnx_res10_class() -> type:
    from maskwatch.inference.evaluation.baseline import Baseline
    from maskwatch.inference.postprocess import decode_detector, select_faces
    from maskwatch.inference.preprocess import BatchPreprocessor
    from maskwatch.inference.session import OrtModel

    class OnnxRes10Baseline(Baseline):
        def __init__(self, classifier: Any, models_dir: Path, confidence: float = 0.5) -> None:
            from maskwatch.inference.models.manifest import get_spec

            self.det_spec = get_spec("res10-ssd", models_dir)
            self.det = OrtModel(
                Path(self.det_spec.file), device="cpu", max_batch=1, output_names=self.det_spec.outputs
            )
            self.det_pre = BatchPreprocessor(self.det_spec.preprocess)
            self.classifier_spec = classifier.model_copy(update={"crop_margin": 0.0})
            self.classifier = OrtModel(
                classifier.path(models_dir), device="cpu", output_names=classifier.outputs
            )
            self.pre = BatchPreprocessor(classifier.preprocess)
            self.confidence = confidence

        def describe(self) -> str:
            return (
                f"res10 SSD 300x300 (ONNX of the Caffe weights, ORT CPU, confidence {self.confidence}) "
                f"+ {self.classifier_spec.name} one face at a time"
            )

        def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            batch, (t,) = self.det_pre.frames([frame])
            ((boxes, scores),) = decode_detector(self.det.run(batch), self.det_spec)
            return select_faces(
                boxes,
                scores,
                t,
                score_threshold=self.confidence,
                nms_iou=self.det_spec.nms_iou,
                max_faces=200,
            )

    return OnnxRes10Baseline


def _OnnxRes10Baseline(classifier: Any, models_dir: Path) -> Any:
    return _onnx_res10_class()(classifier, models_dir)


def bench_baseline(
    frames: Sequence[np.ndarray], size: str, min_s: float, models_dir: Path | None = None
) -> dict[str, Any]:
    """The chandrikadeb7 pipeline (res10 SSD via cv2.dnn, then one face at a time), one frame per call."""
    from maskwatch.inference.serving.engine import _models_dir

    baseline = baseline_pipeline(models_dir or _models_dir())
    faces = sum(len(b) for b in baseline.run(frames).boxes)
    sec, n = rate(lambda: baseline.run(frames), min_s, min_calls=1)
    row = {
        "size": size,
        "batch": 1,
        "stage": "baseline",
        "provider": "CPU, batch 1",
        "ms_per_call": round(sec * 1e3 / len(frames), 2),
        "frames_per_s": round(len(frames) / sec, 1),
        "faces_per_s": round(faces / sec, 1),
        "faces_per_frame": round(faces / len(frames), 2),
        "calls": n * len(frames),
        "method": baseline.describe(),
    }
    log.info("%s", row)
    return row
