"""The GPU path (pre-processing graphs, one upload, both stages chained on the device), run here on ONNX
Runtime's CPU provider: the same graphs and code, on real photos through the served models. On a GPU host
tests/test_inference_gpu.py checks the engine picks it, pinned and in fp16, and agrees with the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest

from maskwatch.inference.datasets import Sample, load_dataset
from maskwatch.inference.fp16 import to_fp16
from maskwatch.inference.gpu.device_graphs import crop_model, crop_rois, frame_input_model
from maskwatch.inference.gpu.device_pipeline import DevicePipeline, supported
from maskwatch.inference.postprocess import iou_matrix
from maskwatch.inference.preprocess import BatchPreprocessor, crop_boxes, decode_image, fit
from maskwatch.inference.serving.engine import InferenceEngine
from maskwatch.inference.session import OrtModel
from maskwatch.inference.spec import Preprocess

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "kaggle-face-mask"


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    assert DATASET.is_dir(), f"shared dataset missing at {DATASET}"
    return load_dataset(DATASET, split="test", limit=24)


@pytest.fixture(scope="module")
def engine() -> InferenceEngine:
    return InferenceEngine.default(device="cpu", max_batch=8)


def _pipeline(engine: InferenceEngine, classify_batch: int = 64) -> DevicePipeline:
    return DevicePipeline(
        engine.detector,
        engine.classifier,
        engine.detector_spec,
        engine.classifier_spec,
        max_batch=engine.max_batch,
        max_faces=engine.max_faces,
        classify_batch=classify_batch,
    )


def _frames(samples: list[Sample]) -> list[np.ndarray]:
    """The photos at their own sizes (several), interleaved with 1024x1024 upscales and a blank frame."""
    photos = [decode_image(s.image.read_bytes()) for s in samples]
    big = [cv2.resize(f, (1024, 1024)) for f in photos[:6]]
    mixed: list[np.ndarray] = []
    for i, f in enumerate(photos):
        mixed.append(f)
        if i < len(big):
            mixed.append(big[i])
    mixed.insert(3, np.full((480, 640, 3), 90, np.uint8))
    return mixed


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize(("layout", "color"), [("NCHW", "RGB"), ("NHWC", "BGR")])
def test_frame_graph_matches_host_preprocessing(
    samples: list[Sample], resize: str, layout: str, color: str
) -> None:
    pre = Preprocess.model_validate(
        {"width": 160, "height": 120, "layout": layout, "color": color, "resize": resize}
        | {"mean": (10, 20, 30), "std": (50, 60, 70)}
    )
    frames = [cv2.resize(decode_image(s.image.read_bytes()), (300, 220)) for s in samples[:3]]
    host, _ = BatchPreprocessor(pre).frames(frames)
    tw, th, _ = fit(300, 220, pre)
    graph = OrtModel(frame_input_model(pre), device="cpu")
    (got,) = graph.run_bound(
        {
            "frames": np.stack(frames),
            "sizes": np.array([3, 3, th, tw], np.int64),
            "pads": np.array([0, 0, 0, 0, 0, 0, 120 - th, 160 - tw], np.int64),
        }
    )
    assert got.shape == host.shape
    levels = np.abs(got - host) * 50  # in pixel levels (std >= 50)
    # OpenCV rounds its bilinear result to uint8, the graph keeps floats: under one level apart.
    assert levels.max() < 1.0 and levels.mean() < 0.3
    if resize == "letterbox":  # 300x220 into 160x120: content 160x117, black rows below
        assert th < 120
        pad = got[:, :, th:] if layout == "NCHW" else got[:, th:]
        np.testing.assert_array_equal(pad, host[:, :, th:] if layout == "NCHW" else host[:, th:])


@pytest.mark.parametrize("scale", [1, 5])
def test_crop_graph_matches_host_crops(samples: list[Sample], engine: InferenceEngine, scale: int) -> None:
    # scale 1: faces of 15-50 px enlarged to 128; scale 5: 70-240 px, most shrunk (INTER_AREA on the host).
    spec = engine.classifier_spec
    chosen = [s for s in samples if len(s.boxes)][:3]
    first = decode_image(chosen[0].image.read_bytes())
    h, w = first.shape[0] * scale, first.shape[1] * scale
    frames, boxes = [], []
    for s in chosen:
        f = decode_image(s.image.read_bytes())
        frames.append(cv2.resize(f, (w, h)))
        boxes.append(s.boxes * np.array([w / f.shape[1], h / f.shape[0]] * 2, np.float32))
    host = BatchPreprocessor(spec.preprocess).crops(frames, boxes, spec.crop_margin)
    rois = crop_rois(np.concatenate([crop_boxes(b, w, h, spec.crop_margin) for b in boxes]))
    index = np.repeat(np.arange(len(frames), dtype=np.int64), [len(b) for b in boxes])
    (got,) = OrtModel(crop_model(spec.preprocess), device="cpu").run_bound(
        {"frames": np.stack(frames), "rois": rois, "index": index}
    )
    assert got.shape == host.shape
    levels = np.abs(got - host) * spec.preprocess.std[0]
    # Same sampling points; the crop's outermost samples differ (RoiAlign reads the frame beyond the box
    # edge, OpenCV replicates the crop's edge), and averaging differs from INTER_AREA when shrinking.
    assert levels.mean() < 0.6
    assert levels.mean(axis=(1, 2, 3)).max() < 2.0


def test_crop_graph_refuses_letterbox_classifiers() -> None:
    with pytest.raises(ValueError, match="stretch"):
        crop_model(Preprocess(width=64, height=64, resize="letterbox"))


def test_pipeline_agrees_with_host_path(samples: list[Sample], engine: InferenceEngine) -> None:
    frames = _frames(samples)
    assert len({f.shape for f in frames}) >= 4  # several sizes: grouped on the device, order kept
    host = engine.infer(frames)
    device, spent = _pipeline(engine).run(frames, engine.score_threshold)
    assert len(device) == len(frames) and set(spent) == {"upload_ms", "detect_ms", "classify_ms"}
    assert len(device[3][0]) == 0  # the blank frame
    faces = matched = agree = 0
    gaps = []
    thr = engine.score_threshold
    for frame, r, (boxes, scores, probs) in zip(frames, host, device, strict=True):
        assert len(boxes) == len(scores) == len(probs)
        ref = np.array([f.box for f in r.faces], np.float32).reshape(-1, 4)
        ref_p = np.array([f.nomask_prob for f in r.faces])
        ref_s = np.array([f.det_score for f in r.faces])
        # Every clear face found on one path is found on the other (near-threshold ones may not be), but
        # for faces cut by the frame's edge: there the host path's own-aspect input and the device's
        # letterbox pad differently, and a re-trained detector may find such a face on one path only.
        # The two inputs (own aspect, letterboxed) move a face's score by up to about 0.1 (0.754 vs 0.659
        # for one held-out face), so "clear" means 0.1 above the threshold.
        h, w = frame.shape[:2]
        for a, a_s, b in ((ref, ref_s, boxes), (boxes, scores, ref)):
            inside = (a[:, 0] > 1) & (a[:, 1] > 1) & (a[:, 2] < w - 1) & (a[:, 3] < h - 1)
            for i in np.where((a_s >= thr + 0.1) & inside)[0]:
                assert len(b) and iou_matrix(a[i : i + 1], b).max() >= 0.5
        faces += len(ref)
        if len(ref) and len(boxes):
            iou = iou_matrix(ref, boxes)
            for i, j in enumerate(iou.argmax(1)):
                # Same box (NMS may keep a neighbour where two candidates score alike): same verdict.
                if iou[i, j] >= 0.9:
                    matched += 1
                    gaps.append(abs(ref_p[i] - probs[j]))
                    agree += (ref_p[i] >= engine.nomask_threshold) == (probs[j] >= engine.nomask_threshold)
    assert faces >= 60 and matched >= 0.9 * faces
    # The crops' edges and shrinking differ a little (test_crop_graph_matches_host_crops). The tuned
    # classifier is rebuilt on every machine (not bit-identical), and the single worst crop's gap moved
    # from under 0.1 to 0.12 between two builds, and to 0.20 once the served detector's boxes carried a
    # box_adjust (other crops at the same faces); the 95th percentile and the verdicts are what hold. That
    # percentile was at most 0.03 while the classifier's stem was re-trained too; 0.032 with it as shipped.
    assert np.quantile(gaps, 0.95) <= 0.05 and max(gaps) <= 0.25
    assert agree >= 0.97 * matched


def test_engine_stages_take_the_device_pipeline_when_it_has_one(samples: list[Sample]) -> None:
    # What `InferenceEngine.detect/classify` (eval's calls) do on a GPU, here on the CPU provider.
    engine = InferenceEngine.default(device="cpu", max_batch=8)
    pipeline = engine.device_pipeline = _pipeline(engine)
    frames = _frames(samples)
    both, _ = pipeline.run(frames, engine.score_threshold)
    found = engine.detect(frames)
    probs = engine.classify(frames, [b for b, _ in found])
    for (b, s, p), (fb, fs), q in zip(both, found, probs, strict=True):
        np.testing.assert_array_equal(b, fb)
        np.testing.assert_array_equal(s, fs)
        np.testing.assert_allclose(p, q, atol=1e-6)
    # Ground-truth boxes (what eval classifies) go through the same crops.
    gt = [s.boxes for s in samples[:6]]
    photos = [decode_image(s.image.read_bytes()) for s in samples[:6]]
    on_device = engine.classify(photos, gt)
    engine.device_pipeline = None
    on_host = engine.classify(photos, gt)
    assert [len(x) for x in on_device] == [len(b) for b in gt]
    gaps = np.abs(np.concatenate(on_device) - np.concatenate(on_host))
    # Under 0.03 while the classifier's stem was re-trained too; 0.043 with it as shipped (a build's own).
    assert np.quantile(gaps, 0.95) <= 0.06 and gaps.max() <= 0.1


def test_classifier_chunks_are_padded_and_trimmed(samples: list[Sample], engine: InferenceEngine) -> None:
    frames = [decode_image(s.image.read_bytes()) for s in samples[:8]]
    one, _ = _pipeline(engine, classify_batch=128).run(frames, engine.score_threshold)
    # Chunks of 8 faces; the last one is padded with dummy boxes whose results are dropped.
    many, _ = _pipeline(engine, classify_batch=8).run(frames, engine.score_threshold)
    assert sum(len(p) for _, _, p in one) > 8
    for (b1, _, p1), (b2, _, p2) in zip(one, many, strict=True):
        np.testing.assert_allclose(b1, b2)
        np.testing.assert_allclose(p1, p2, atol=1e-5)


def test_each_model_sees_one_input_shape(samples: list[Sample], engine: InferenceEngine) -> None:
    pipeline = _pipeline(engine, classify_batch=16)
    shapes: dict[str, set[tuple[int, ...]]] = {"detector": set(), "classifier": set()}
    for name in shapes:
        model = getattr(pipeline, name)
        run = model.run_bound

        def record(feeds: dict[str, Any], run: Any = run, name: str = name, **kw: Any) -> list[Any]:
            shapes[name].add(tuple(next(iter(feeds.values())).shape()))
            return run(feeds, **kw)

        model.run_bound = record
    frames = _frames(samples)
    # Calls of 1, 3 and 8+ frames of several sizes, with 0 to dozens of faces each.
    for part in (frames[:1], frames[1:4], frames):
        pipeline.run(part, engine.score_threshold)
    assert shapes["detector"] == {(engine.max_batch, 3, 480, 640)}
    assert shapes["classifier"] == {(16, 3, 128, 128)}


def test_engine_uses_the_device_pipeline_only_on_a_gpu(engine: InferenceEngine) -> None:
    assert engine.device_pipeline is None  # CPU provider: OpenCV pre-processing is faster there
    det, cls = engine.detector_spec, engine.classifier_spec
    assert supported(det, cls)
    assert not supported(det.model_copy(update={"flip": True}), cls)
    letterboxed = cls.preprocess.model_copy(update={"resize": "letterbox"})
    assert not supported(det, cls.model_copy(update={"preprocess": letterboxed}))


def test_fp16_copy_keeps_float32_io_and_the_answers(samples: list[Sample], engine: InferenceEngine) -> None:
    spec = engine.classifier_spec
    model = onnx.load(str(_models_path(engine)))
    half = to_fp16(model)
    onnx.checker.check_model(half)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    frames = [decode_image(s.image.read_bytes()) for s in samples[:6]]
    boxes = [s.boxes for s in samples[:6]]
    crops = BatchPreprocessor(spec.preprocess).crops(frames, boxes, spec.crop_margin).copy()
    (full,) = engine.classifier.run(crops)
    (halved,) = OrtModel(half, device="cpu").run(crops)
    gap = np.abs(full - halved)
    assert gap.max() < 0.1 and gap.mean() < 0.01


def _models_path(engine: InferenceEngine) -> Path:
    from maskwatch.config import Settings

    return engine.classifier_spec.path(Settings().models_dir)
