"""GPU inference (run on a CUDA machine with `pip install maskwatch[gpu]`; skipped without a GPU provider).

pytest -m gpu -s tests/test_inference_gpu.py
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from maskwatch.inference.datasets import load_dataset
from maskwatch.inference.models.manifest import DEFAULT_CLASSIFIER, DEFAULT_DETECTOR
from maskwatch.inference.preprocess import decode_image
from maskwatch.inference.serving.engine import Face, FrameResult, InferenceEngine, resolve_spec
from maskwatch.inference.session import OrtModel

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
    # The served pair (fine-tuned where built), as the flow loads it.
    engine = InferenceEngine.default(device=device)
    if device == "cpu":
        # The CPU runs the detector at each frame's aspect (inference/detector_sizes.py), a GPU at its one
        # input size: the reference takes that size too, so only fp16 and device pre-processing differ.
        engine._sizes.grid = None
    return engine


def _gap(a: Face, b: Face) -> float:
    return float(np.abs(np.subtract(a.box, b.box)).max())


def _assert_close(a: list[FrameResult], b: list[FrameResult], box_px: float, prob: float) -> None:
    """Every confident face of one run has a twin in the other: same place, near-equal no-mask probability.
    (Faces near the score threshold may come and go: fp16 and device pre-processing move scores a little.)"""
    pairs = 0
    for ra, rb in zip(a, b, strict=True):
        for x_faces, y_faces in ((ra.faces, rb.faces), (rb.faces, ra.faces)):
            for x in (f for f in x_faces if f.det_score > 0.85):
                assert y_faces, f"face {x.box} missing from the other run"
                twin = min(y_faces, key=partial(_gap, x))
                size = max(x.box[2] - x.box[0], x.box[3] - x.box[1])
                # fp16 moves a box edge by up to ~3 % of the face (3.2 px on a 120 px face, seen on an H200).
                assert _gap(x, twin) <= box_px + 0.03 * size, (x.box, twin.box)
                assert abs(x.nomask_prob - twin.nomask_prob) <= prob
                pairs += 1
    assert pairs >= 20


def test_cuda_runs_the_device_pipeline_in_fp16_and_matches_cpu(frames: list[np.ndarray]) -> None:
    gpu = _engine("cuda")
    assert gpu.providers == {"detector": "CUDAExecutionProvider", "classifier": "CUDAExecutionProvider"}
    assert gpu.detector.fp16 and gpu.classifier.fp16
    assert gpu.device_pipeline is not None  # frames go up once as uint8, pre-processed on the GPU
    assert gpu.device_pipeline.frame_input.provider == "CUDAExecutionProvider"
    assert gpu._sizes.grid is None  # one detector input shape on the GPU
    assert gpu.device_pipeline.crops.provider == "CUDAExecutionProvider"
    got = gpu.infer(frames)
    assert gpu.device_pipeline.pinned  # the staging buffer is page-locked
    cpu = _engine("cpu")
    assert cpu.providers["detector"] == "CPUExecutionProvider" and cpu.device_pipeline is None
    _assert_close(got, cpu.infer(frames), box_px=3.0, prob=0.1)


def test_cuda_host_path_still_matches_cpu(frames: list[np.ndarray]) -> None:
    gpu = _engine("cuda")
    gpu.device_pipeline = None  # the path for specs the device pipeline does not take (mirrored detection)
    assert gpu.detector.fixed_batch and gpu.classifier.fixed_batch  # one input shape per session
    _assert_close(gpu.infer(frames), _engine("cpu").infer(frames), box_px=3.0, prob=0.1)


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
    # ORT lists TensorRT even where it cannot load: the fallback to CUDA still gets the fp16 copy.
    assert auto.detector.fp16


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


def _device_memory_mib() -> int | None:
    """This process's GPU memory as nvidia-smi reports it (None where it cannot say)."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return int(used.strip())
    return None


def test_engine_device_memory_stays_flat_over_many_calls(frames: list[np.ndarray]) -> None:
    # A flow worker calls the engine for days: once warm, its device memory must not grow per call (the
    # GPU bench's raw sessions once filled an 80 GB H100 within a minute).
    big = [cv2.resize(f, (1024, 1024)) for f in (frames * 2)[:32]]
    engine = _engine("cuda")
    for n in (32, 5, 32, 1):  # every chunk shape the flow sends, warm
        engine.infer(big[:n])
    before = _device_memory_mib()
    if before is None:
        pytest.skip("nvidia-smi does not report this process's GPU memory here")
    for i in range(40):
        engine.infer(big[: (32, 7, 1)[i % 3]])
    after = _device_memory_mib()
    assert after is not None and after - before <= 256, (before, after)
