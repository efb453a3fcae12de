"""Two-stage inference: a face detector batched over frames, then a mask classifier batched over all
faces of all frames of the micro-batch."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from maskwatch.inference.gpu.device_pipeline import DevicePipeline, supported
from maskwatch.inference.postprocess import decode_detector, mirror_boxes, nomask_probability, select_faces
from maskwatch.inference.preprocess import BatchPreprocessor, InvalidImageError, check_frame, decode_image
from maskwatch.inference.serving.detector_sizes import DetectorSizes
from maskwatch.inference.session import Device, OrtModel
from maskwatch.inference.spec import ModelSpec

__all__ = [
    "Face",
    "FrameResult",
    "InferenceEngine",
    "InvalidImageError",
    "decode_image",
]

Label = Literal["mask", "no_mask"]
Detection = tuple[np.ndarray, np.ndarray]  # boxes [K, 4] in frame pixels, detector scores [K]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-frame pixels
    det_score: float
    nomask_prob: float
    label: Label


@dataclass
class FrameResult:
    faces: list[Face]
    width: int
    height: int
    # Milliseconds spent on the micro-batch this frame was part of, by stage.
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def nomask_count(self) -> int:
        return sum(f.label == "no_mask" for f in self.faces)


def _models_dir() -> Path:
    from maskwatch.config import Settings

    return Settings().models_dir


def resolve_spec(name: str, models_dir: Path | None = None) -> ModelSpec:
    """A model by name: a pulled one from the manifest, else a local `<models_dir>/<name>.yaml` (what
    `python -m maskwatch.inference.training.classifier` writes), else a path to a user's spec YAML."""
    from maskwatch.inference.models.manifest import ModelNotPulledError, get_spec
    from maskwatch.inference.spec import load_spec

    base = models_dir or _models_dir()
    try:
        return get_spec(name, base)
    except ModelNotPulledError:
        for candidate in (base / f"{name}.yaml", Path(name)):
            if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
                return load_spec(candidate)
        raise


def default_models(models_dir: Path | None = None) -> tuple[str, str]:
    """Names of the default detector and classifier: the shipped ones, replaced by those re-trained on a
    dataset's train split once built (`maskwatch models finetune-detector`, `maskwatch models finetune`);
    a detector with its box style fitted (`maskwatch models calibrate`) is preferred to the same one
    without."""
    from maskwatch.inference.models.manifest import (
        CALIBRATED_SUFFIX,
        DEFAULT_CLASSIFIER,
        DEFAULT_DETECTOR,
        FINETUNED_SUFFIX,
    )

    base = models_dir or _models_dir()
    names = []
    for name, suffixes in (
        (DEFAULT_DETECTOR, (FINETUNED_SUFFIX + CALIBRATED_SUFFIX, FINETUNED_SUFFIX, CALIBRATED_SUFFIX)),
        (DEFAULT_CLASSIFIER, (FINETUNED_SUFFIX,)),
    ):
        names.append(next((name + s for s in suffixes if (base / f"{name}{s}.yaml").is_file()), name))
    return names[0], names[1]


class InferenceEngine:
    def __init__(
        self,
        detector: ModelSpec,
        classifier: ModelSpec,
        *,
        models_dir: Path | None = None,
        device: Device = "auto",
        max_batch: int = 32,
        max_faces: int = 64,
        score_threshold: float | None = None,
        nomask_threshold: float | None = None,
        threads: int | None = None,
    ) -> None:
        if detector.kind != "detector" or classifier.kind != "classifier":
            raise ValueError(
                f"expected a detector and a classifier, got {detector.name} ({detector.kind}) and "
                f"{classifier.name} ({classifier.kind})"
            )
        base = models_dir or _models_dir()
        self.detector_spec, self.classifier_spec = detector, classifier
        self.detector = OrtModel(
            detector.path(base),
            device=device,
            max_batch=max_batch,
            threads=threads,
            output_names=detector.outputs,
        )
        self.classifier = OrtModel(
            classifier.path(base),
            device=device,
            max_batch=max_batch * 4,
            threads=threads,
            output_names=classifier.outputs,
        )
        self._sizes = DetectorSizes(self.detector, detector, detector.path(base), threads)
        self._cls_pre = BatchPreprocessor(classifier.preprocess)
        self.max_batch = max_batch
        self.max_faces = max_faces
        self.score_threshold = detector.score_threshold if score_threshold is None else score_threshold
        # The classifier's own operating point (fine-tuning fits it), unless the caller overrides it.
        self.nomask_threshold = classifier.score_threshold if nomask_threshold is None else nomask_threshold
        # On a GPU, frames go up once as uint8 and are resized/cropped there; on the CPU OpenCV does that
        # faster than ONNX Runtime's Resize/RoiAlign kernels (the host path below).
        self.device_pipeline = (
            DevicePipeline(
                self.detector,
                self.classifier,
                detector,
                classifier,
                max_batch=max_batch,
                max_faces=max_faces,
                classify_batch=self.classifier.max_batch,
            )
            if self.detector._gpu and self.classifier._gpu and supported(detector, classifier)
            else None
        )

    @classmethod
    def default(
        cls, detector: str | None = None, classifier: str | None = None, **kwargs: Any
    ) -> InferenceEngine:
        """The engine for the shipped models (`maskwatch models pull`), tuned where that was built (see
        `default_models`)."""
        base = kwargs.get("models_dir")
        default_detector, default_classifier = default_models(base)
        detector, classifier = detector or default_detector, classifier or default_classifier
        log.info("inference engine: detector %s, classifier %s", detector, classifier)
        return cls(resolve_spec(detector, base), resolve_spec(classifier, base), **kwargs)

    @property
    def providers(self) -> dict[str, str]:
        return {"detector": self.detector.provider, "classifier": self.classifier.provider}

    def detect(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per frame: face boxes [K, 4] (x1,y1,x2,y2 original pixels) and detector scores [K]."""
        if self.device_pipeline is not None:
            return self.device_pipeline.detect(frames, self.score_threshold)
        # Frames go to the detector grouped by the input size that fits their aspect (one size on a GPU).
        groups: dict[tuple[int, int], list[int]] = {}
        for i, f in enumerate(frames):
            groups.setdefault(self._sizes.size_for(f.shape[1], f.shape[0]), []).append(i)
        found: dict[int, Detection] = {}
        for size, idx in groups.items():
            found.update(zip(idx, self._detect_at(size, [frames[i] for i in idx]), strict=True))
        return [found[i] for i in range(len(frames))]

    def _detect_at(self, size: tuple[int, int], frames: Sequence[np.ndarray]) -> list[Detection]:
        model, pre, spec = self._sizes.at(size)
        result: list[tuple[np.ndarray, np.ndarray]] = []
        step = max(1, self.max_batch // 2) if spec.flip else self.max_batch
        for i in range(0, len(frames), step):
            chunk = list(frames[i : i + step])
            if spec.flip:  # mirrored copies ride in the same batch, second half
                chunk += [cv2.flip(f, 1) for f in chunk]
            batch, transforms = pre.frames(chunk)
            raw = decode_detector(model.run(batch), spec)
            if spec.flip:
                n = len(chunk) // 2
                raw = [
                    (np.concatenate([b, mirror_boxes(mb, t)]), np.concatenate([s, ms]))
                    for (b, s), (mb, ms), t in zip(raw[:n], raw[n:], transforms[:n], strict=True)
                ]
            for (boxes, scores), t in zip(raw, transforms[: len(raw)], strict=True):
                result.append(
                    select_faces(
                        boxes,
                        scores,
                        t,
                        score_threshold=self.score_threshold,
                        nms_iou=spec.nms_iou,
                        max_faces=self.max_faces,
                        box_adjust=spec.box_adjust,
                        box_vote=spec.flip,
                    )
                )
        return result

    def classify(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """No-mask probability of every box of every frame, classified in one batch."""
        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return [np.zeros((0,), np.float32) for _ in boxes]
        if self.device_pipeline is not None:
            return self.device_pipeline.classify(frames, boxes)
        batch = self._cls_pre.crops(frames, boxes, self.classifier_spec.crop_margin)
        (out, *_) = self.classifier.run(batch)
        probs = nomask_probability(out, self.classifier_spec)
        return np.split(probs, np.cumsum(counts)[:-1])

    def infer(self, frames: Sequence[np.ndarray]) -> list[FrameResult]:
        """Faces with no-mask probabilities for each frame (BGR uint8, any size)."""
        if not frames:
            return []
        frames = [check_frame(f, i) for i, f in enumerate(frames)]
        t0 = time.perf_counter()
        if self.device_pipeline is not None:
            found, timings = self.device_pipeline.run(frames, self.score_threshold)
        else:
            detections = self.detect(frames)
            t1 = time.perf_counter()
            probs = self.classify(frames, [b for b, _ in detections])
            found = [(b, s, p) for (b, s), p in zip(detections, probs, strict=True)]
            timings = {"detect_ms": (t1 - t0) * 1e3, "classify_ms": (time.perf_counter() - t1) * 1e3}
        timings |= {"total_ms": (time.perf_counter() - t0) * 1e3, "batch": float(len(frames))}
        results = []
        for frame, (boxes, scores, p) in zip(frames, found, strict=True):
            faces = [
                Face(
                    box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                    det_score=float(s),
                    nomask_prob=float(q),
                    label="no_mask" if q >= self.nomask_threshold else "mask",
                )
                for b, s, q in zip(boxes, scores, p, strict=True)
            ]
            results.append(FrameResult(faces, frame.shape[1], frame.shape[0], dict(timings)))
        return results
