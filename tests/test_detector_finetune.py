"""The re-trained face detector (`maskwatch models finetune-detector`), on the real RFB-640 graph and the
shared Kaggle set: the PyTorch tail is the graph's own network, training writes back into the same graph,
and the default detector `bin/dev` builds keeps the shipped box geometry and, with the dataset's box
style fitted, beats the calibrated shipped one on held-out photos.

The accuracy test reads the cached model `bin/dev` builds before the tests; a missing one is a failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from maskwatch.config import Settings
from maskwatch.inference.datasets import Sample, load_dataset
from maskwatch.inference.evaluation.metrics import box_agreement, face_ap
from maskwatch.inference.models.manifest import (
    CALIBRATED_SUFFIX,
    DEFAULT_DETECTOR,
    FINETUNED_SUFFIX,
    ModelNotPulledError,
)
from maskwatch.inference.preprocess import decode_image
from maskwatch.inference.serving.engine import InferenceEngine, default_models, resolve_spec
from maskwatch.inference.session import OrtModel
from maskwatch.inference.spec import ModelSpec
from maskwatch.inference.training.classifier import is_built
from maskwatch.inference.training.detector import (
    MATCH_IOU,
    NOMASK_WEIGHT,
    GraphLayout,
    augment,
    finetune_detector,
    match_priors,
    recipe,
)

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "kaggle-face-mask"
TUNED = f"{DEFAULT_DETECTOR}{FINETUNED_SUFFIX}"


@pytest.fixture(scope="module")
def layout() -> GraphLayout:
    return GraphLayout(onnx.load(resolve_spec(DEFAULT_DETECTOR).file))


def test_layout_reads_the_graphs_priors_and_variances(layout: GraphLayout) -> None:
    # Ultra-Light's 640x480 priors: 4 feature maps (80x60, 40x30, 20x15, 10x8) with 3/2/2/3 sizes each.
    assert layout.priors.shape == (80 * 60 * 3 + 40 * 30 * 2 + 20 * 15 * 2 + 10 * 8 * 3, 4)
    assert layout.variances == pytest.approx((0.1, 0.2))
    assert (layout.priors[:, :2] > 0).all() and (layout.priors[:, :2] < 1).all()


def test_encoded_targets_decode_back_to_the_face(layout: GraphLayout) -> None:
    faces = np.array([[0.30, 0.20, 0.36, 0.28], [0.60, 0.50, 0.70, 0.64]], np.float32)
    labels, loc, weight = match_priors(layout.priors, faces, np.array([False, True]), layout.variances)
    assert labels.sum() >= 2
    p = layout.priors[labels > 0]
    v_c, v_s = layout.variances
    centre = loc[labels > 0, :2] * v_c * p[:, 2:] + p[:, :2]  # the graph's own decoding
    size = np.exp(loc[labels > 0, 2:] * v_s) * p[:, 2:]
    decoded = np.concatenate([centre - size / 2, centre + size / 2], 1)
    assert all(np.abs(faces - d).max(axis=1).min() < 1e-5 for d in decoded)
    # Only priors matched to the no-mask face weigh more.
    second = np.abs(decoded - faces[1]).max(axis=1) < 1e-5
    assert (weight[labels > 0][second] == NOMASK_WEIGHT).all() and (weight[labels > 0][~second] == 1).all()
    assert (weight[labels == 0] == 1).all()
    empty = match_priors(layout.priors, np.zeros((0, 4), np.float32), np.zeros(0, bool), layout.variances)
    assert empty[0].sum() == 0
    assert MATCH_IOU < 0.5  # looser than the evaluation's IoU, as the model was trained


def test_augment_keeps_boxes_on_their_faces() -> None:
    rng = np.random.default_rng(3)
    frame = np.zeros((300, 400, 3), np.uint8)
    box = np.array([[100, 80, 160, 150]], np.float32)
    frame[80:150, 100:160] = 255
    for _ in range(30):
        f, b, nm = augment(rng, frame, box, np.array([True]))
        assert len(b) == len(nm)
        if len(b):
            x0, y0, x1, y1 = (round(float(v)) for v in b[0])
            inside = f[y0:y1, x0:x1].astype(np.float32)
            # Brightness/contrast moves the level, not where the bright square is.
            assert inside.mean() > f.astype(np.float32).mean() + 20


def test_short_training_writes_back_into_the_same_graph(tmp_path: Path) -> None:
    base = resolve_spec(DEFAULT_DETECTOR)
    spec = finetune_detector(DATASET, base, "tiny-ft", tmp_path, epochs=1, limit=16)
    assert resolve_spec("tiny-ft", tmp_path).file == spec.file and spec.box_adjust is None
    before, after = onnx.load(base.file), onnx.load(spec.file)
    changed = {
        a.name
        for a, b in zip(before.graph.initializer, after.graph.initializer, strict=True)
        if not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    }
    # The tail and every head trained; the frozen front and all BatchNorm statistics untouched.
    assert "base_net.8.0.weight" in changed and "classification_headers.0.0.weight" in changed
    assert not any(n.startswith(tuple(f"base_net.{i}." for i in range(8))) for n in changed)
    assert not any(n.endswith(("running_mean", "running_var")) for n in changed)
    assert [n.op_type for n in before.graph.node] == [n.op_type for n in after.graph.node]
    frame = decode_image(load_dataset(DATASET, split="test", limit=1)[0].image.read_bytes())
    engine = InferenceEngine(spec, resolve_spec("mobilenetv2-mask"), max_batch=2)
    (boxes, scores), _ = engine.detect([frame, frame])
    assert boxes.shape[1] == 4 and len(scores) == len(boxes)
    assert OrtModel(Path(spec.file)).run(np.zeros((3, 3, 480, 640), np.float32))[0].shape[0] == 3
    assert not is_built(tmp_path, "tiny-ft", recipe(base))  # no stamp: the CLI would build it again


# Held-out targets (docs/models.md): the re-trained detector keeps the shipped one's box geometry (mean
# IoU of their boxes on the faces both find), and with the dataset's box style fitted on the train split
# finds faces at least as well as the detector that learnt this set's box style did (AP50 0.865, AP30
# 0.894 on the same split; measured here 0.867 and 0.897). The build is deterministic on one machine but
# may differ in the last digits on another (as the classifier's does), so AP30 is held to 0.894 less 0.004.
GEOMETRY_MIN, AP50_MIN, AP30_MIN = 0.85, 0.86, 0.890


def _found(spec: ModelSpec, samples: list[Sample]) -> list[tuple[np.ndarray, np.ndarray]]:
    engine = InferenceEngine(spec, resolve_spec("mobilenetv2-mask"), score_threshold=0.01)
    found = []
    for i in range(0, len(samples), 16):
        found += engine.detect([decode_image(s.image.read_bytes()) for s in samples[i : i + 16]])
    return found


def test_default_detector_keeps_the_shipped_geometry_and_calibrated_beats_every_other_held_out() -> None:
    try:
        tuned, served = resolve_spec(TUNED), resolve_spec(TUNED + CALIBRATED_SUFFIX)
    except ModelNotPulledError as exc:
        pytest.fail(f"{TUNED}{CALIBRATED_SUFFIX} not built: run `maskwatch models tune DATASET` ({exc})")
    models_dir = Settings().models_dir
    stamp = json.loads((models_dir / f"{TUNED}.recipe.json").read_text())
    assert stamp == recipe(resolve_spec(DEFAULT_DETECTOR))
    assert default_models()[0] == served.name and tuned.box_adjust is None and served.box_adjust
    held_out = load_dataset(DATASET, split="test")  # every held-out photo: the figures docs/models.md quotes
    shipped = _found(resolve_spec(DEFAULT_DETECTOR), held_out)
    raw = _found(tuned, held_out)
    geometry, faces = box_agreement(held_out, raw, shipped, tuned.score_threshold)
    assert faces > 500 and geometry >= GEOMETRY_MIN, (geometry, faces)
    ap50, ap30 = (face_ap(held_out, _found(served, held_out), iou) for iou in (0.5, 0.3))
    assert ap50 >= AP50_MIN and ap30 >= AP30_MIN, (ap50, ap30)
    calibrated_shipped = _found(resolve_spec(f"{DEFAULT_DETECTOR}{CALIBRATED_SUFFIX}"), held_out)
    assert ap50 > face_ap(held_out, calibrated_shipped, 0.5) + 0.01


def test_an_interrupted_detector_build_resumes_and_ends_where_an_uninterrupted_one_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from maskwatch.inference.training.checkpoint import Checkpoint

    base = resolve_spec(DEFAULT_DETECTOR)
    whole = finetune_detector(DATASET, base, "tiny-ft", tmp_path / "whole", epochs=2, limit=8)
    original = Checkpoint.save

    def stop_after_the_first_epoch(self: Checkpoint, state: dict) -> None:
        original(self, state)
        raise KeyboardInterrupt("stopped")

    monkeypatch.setattr(Checkpoint, "save", stop_after_the_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        finetune_detector(DATASET, base, "tiny-ft", tmp_path / "cut", epochs=2, limit=8)
    monkeypatch.setattr(Checkpoint, "save", original)
    resumed = finetune_detector(DATASET, base, "tiny-ft", tmp_path / "cut", epochs=2, limit=8)
    assert not (tmp_path / "cut" / ".checkpoints" / "tiny-ft.pt").exists()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 480, 640)).astype(np.float32)
    a, b = OrtModel(Path(whole.file)).run(x)[0], OrtModel(Path(resumed.file)).run(x)[0]
    assert np.allclose(a, b, atol=1e-4)
