"""The detector at each frame's aspect on the CPU: priors read back from the pulled RFB-640 graph and
regenerated for other input sizes, checked on real photos against the letterboxed full-size input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest

from maskwatch.inference.datasets import load_dataset
from maskwatch.inference.models.manifest import DEFAULT_CLASSIFIER, DEFAULT_DETECTOR
from maskwatch.inference.postprocess import iou_matrix
from maskwatch.inference.preprocess import decode_image
from maskwatch.inference.serving.detector_sizes import MAX_SIZES, DetectorSizes
from maskwatch.inference.serving.engine import InferenceEngine, resolve_spec
from maskwatch.inference.serving.prior_grid import fitted_size, prior_grid
from maskwatch.inference.session import OrtModel

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "kaggle-face-mask"


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine(resolve_spec(DEFAULT_DETECTOR), resolve_spec(DEFAULT_CLASSIFIER), device="cpu")


def _graph(name: str) -> onnx.ModelProto:
    return onnx.load(str(resolve_spec(name).path(_models())))


def _models() -> Path:
    from maskwatch.config import Settings

    return Settings().models_dir


def test_rfb_priors_are_read_back_as_ultra_light_built_them() -> None:
    grid = prior_grid(_graph("rfb640"))
    assert grid is not None and (grid.width, grid.height, grid.count) == (640, 480, 17640)
    # Ultra-Light-Fast-Generic-Face-Detector's published configuration, found in the graph's constants.
    assert [(s.stride, s.boxes) for s in grid.stages] == [
        (8, (10.0, 16.0, 24.0)), (16, (32.0, 48.0)), (32, (64.0, 96.0)), (64, (128.0, 192.0, 256.0)),
    ]
    # Graphs whose priors are not such constants keep their one input size.
    assert prior_grid(_graph("res10-ssd")) is None and prior_grid(_graph("blazeface")) is None


def test_sized_graph_takes_its_size() -> None:
    graph = _graph("rfb640")
    grid = prior_grid(graph)
    assert grid is not None
    model = OrtModel(grid.model_for(graph, 480, 480), device="cpu", output_names=["boxes", "scores"])
    assert model.input_shape[2:] == [480, 480]
    boxes, scores = model.run(np.zeros((2, 3, 480, 480), np.float32))
    # 60x60 cells x 3 + 30x30 x 2 + 15x15 x 2 + 8x8 x 3 priors.
    assert boxes.shape == (2, 13242, 4) and scores.shape[:2] == (2, 13242)
    assert grid.priors(480, 480).shape == (13242, 4) and grid.model_for(graph, 480, 480) is not graph


@pytest.mark.parametrize(
    ("frame", "size"),
    [((1024, 1024), (512, 480)), ((1920, 1080), (640, 384)), ((301, 400), (384, 480)),
     ((400, 300), (640, 480)), ((400, 267), (640, 448)), ((10000, 10), (640, 64)), ((20, 20), (512, 480))],
)
def test_fitted_size_keeps_the_letterbox_scale(frame: tuple[int, int], size: tuple[int, int]) -> None:
    w, h = fitted_size(*frame, 640, 480, 64)
    assert (w, h) == size and w <= 640 and h <= 480
    s = min(640 / frame[0], 480 / frame[1])
    assert w >= round(frame[0] * s) and h >= round(frame[1] * s)  # the content fits, unscaled


def test_frames_at_their_aspect_find_the_faces_of_the_letterboxed_input(engine: InferenceEngine) -> None:
    samples = [s for s in load_dataset(DATASET, split="test") if len(s.boxes)][:40]
    frames = [decode_image(s.image.read_bytes()) for s in samples]
    sizes = {engine._sizes.size_for(f.shape[1], f.shape[0]) for f in frames}
    assert len(sizes) >= 3 and (640, 480) in sizes  # portraits, 3:2, 16:9 and 4:3 photos
    fitted = engine.detect(frames)
    grid, engine._sizes.grid = engine._sizes.grid, None
    try:
        letterboxed = engine.detect(frames)
    finally:
        engine._sizes.grid = grid
    found = sum(len(b) for b, _ in letterboxed)
    pairs = [(a, b) for (a, _), (b, _) in zip(letterboxed, fitted, strict=True) if len(a) and len(b)]
    matched = sum(int((iou_matrix(a, b).max(axis=1) > 0.7).sum()) for a, b in pairs)
    assert found > 100 and matched >= 0.95 * found
    assert abs(sum(len(b) for b, _ in fitted) - found) <= 0.03 * found
    # One call over mixed aspects answers frame by frame, in order.
    one_by_one = [engine.detect([f])[0] for f in frames[:8]]
    for (a, sa), (b, sb) in zip(fitted[:8], one_by_one, strict=True):
        assert np.allclose(a, b, atol=1e-3) and np.allclose(sa, sb, atol=1e-5)


def test_sessions_per_size_are_bounded(engine: InferenceEngine) -> None:
    sizes = [(64 * k, 480) for k in range(1, MAX_SIZES + 3)]
    for size in sizes:
        model, pre, spec = engine._sizes.at(size)
        assert model.input_shape[2:] == [size[1], size[0]]
        assert spec.preprocess.width == pre.pre.width == size[0]
        # All CPU sessions draw on one process-wide arena, or each size would keep its own peak memory.
        options = model.session.get_session_options()
        assert options.get_session_config_entry("session.use_env_allocators") == "1"
    assert len(engine._sizes._sized) == MAX_SIZES
    assert engine._sizes.at((640, 480))[0] is engine.detector  # the full size is the engine's own session


def test_gpu_detector_keeps_its_one_input_size() -> None:
    # No GPU here: a CUDA-placed model is stood in for by its device type, all this class looks at.
    spec = resolve_spec(DEFAULT_DETECTOR)
    on_gpu: Any = SimpleNamespace(device_type="cuda", max_batch=8)
    sizes = DetectorSizes(on_gpu, spec, spec.path(_models()), threads=1)
    assert sizes.grid is None and sizes.size_for(1024, 1024) == (640, 480)
    assert sizes.at((640, 480))[0] is on_gpu
