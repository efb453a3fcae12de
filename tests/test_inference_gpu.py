"""GPU inference (run on a CUDA machine with `pip install maskwatch[gpu]`; skipped without a GPU provider).

pytest -m gpu -s tests/test_inference_gpu.py
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from inference.datasets import load_dataset
from inference.engine import FrameResult, InferenceEngine, resolve_spec
from inference.models.manifest import DEFAULT_CLASSIFIER, DEFAULT_DETECTOR
from inference.preprocess import decode_image
from inference.session import OrtModel

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "kaggle-face-mask"
HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
HAS_TRT = "TensorrtExecutionProvider" in ort.get_available_providers()

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not HAS_CUDA, reason="CUDAExecutionProvider unavailable (needs onnxruntime-gpu + GPU)"
    ),
]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    # On a GPU host without the shared dataset, MW_GPU_IMAGES names a folder of its JPEGs (bench/gpu.sh).
    folder = os.environ.get("MW_GPU_IMAGES")
    paths = (
        sorted(Path(folder).glob("*.jpg"))[:16]
        if folder
        else [s.image for s in load_dataset(DATASET, limit=16)]
    )
    assert len(paths) >= 8, f"need real images: MW_GPU_IMAGES={folder!r} or {DATASET}"
    return [decode_image(p.read_bytes()) for p in paths]


def _engine(device: str) -> InferenceEngine:
    return InferenceEngine(resolve_spec(DEFAULT_DETECTOR), resolve_spec(DEFAULT_CLASSIFIER), device=device)  # type: ignore[arg-type]


def _assert_close(a: list[FrameResult], b: list[FrameResult], box_px: float, prob: float) -> None:
    for ra, rb in zip(a, b, strict=True):
        # Faces near the score threshold may flip; compare the confident ones.
        fa = [f for f in ra.faces if f.det_score > 0.85]
        fb = [f for f in rb.faces if f.det_score > 0.85]
        assert len(fa) == len(fb)
        for x, y in zip(sorted(fa, key=lambda f: f.box), sorted(fb, key=lambda f: f.box), strict=True):
            np.testing.assert_allclose(x.box, y.box, atol=box_px)
            assert abs(x.nomask_prob - y.nomask_prob) <= prob


def test_cuda_chosen_and_matches_cpu_with_io_binding(frames: list[np.ndarray]) -> None:
    gpu = _engine("cuda")
    assert gpu.providers == {"detector": "CUDAExecutionProvider", "classifier": "CUDAExecutionProvider"}
    assert gpu.detector._gpu and gpu.classifier._gpu  # outputs go through IO binding
    cpu = _engine("cpu")
    assert cpu.providers["detector"] == "CPUExecutionProvider"
    _assert_close(gpu.infer(frames), cpu.infer(frames), box_px=1.0, prob=0.01)


def _tensorrt_initialises() -> bool:
    """ORT lists TensorRT whenever onnxruntime-gpu is installed; it only loads where libnvinfer is present."""
    if not HAS_TRT:
        return False
    spec = resolve_spec(DEFAULT_DETECTOR)
    model = OrtModel(Path(spec.file), device="tensorrt", output_names=spec.outputs)
    return model.provider == "TensorrtExecutionProvider"


def test_auto_prefers_the_best_gpu_provider() -> None:
    auto = _engine("auto")
    want = "TensorrtExecutionProvider" if _tensorrt_initialises() else "CUDAExecutionProvider"
    assert auto.providers["detector"] == want


def test_tensorrt_fp16_close_to_fp32(frames: list[np.ndarray]) -> None:
    if not _tensorrt_initialises():
        pytest.skip("TensorRT libraries (libnvinfer) not loadable on this host")
    spec = resolve_spec(DEFAULT_CLASSIFIER)
    fp16 = OrtModel(Path(spec.file), device="tensorrt", fp16=True, output_names=spec.outputs)
    assert fp16.provider == "TensorrtExecutionProvider" and fp16.fp16
    _assert_close(_engine("tensorrt").infer(frames), _engine("cpu").infer(frames), box_px=3.0, prob=0.05)


def test_throughput_1024_batch_32(frames: list[np.ndarray]) -> None:
    big = [cv2.resize(f, (1024, 1024)) for f in (frames * 2)[:32]]
    engine = _engine("auto")
    engine.infer(big)  # warm-up (TensorRT builds its engine here)
    runs = 5
    t0 = time.perf_counter()
    for _ in range(runs):
        results = engine.infer(big)
    fps = runs * len(big) / (time.perf_counter() - t0)
    faces = sum(len(r.faces) for r in results)
    # A figure for the note, not a pass mark: speed is judged by bench/, not by timed assertions.
    print(f"\n{engine.providers}: {fps:.0f} frames/s at 1024x1024, batch 32, {faces} faces per batch")
    assert engine.providers["detector"] != "CPUExecutionProvider" and faces > 0
