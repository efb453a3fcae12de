"""Detector box calibration (`maskwatch models calibrate`) and flip test-time augmentation, on the real
RFB-640 and the shared Kaggle set's photos: fitted on train images, checked on held-out ones."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from maskwatch.inference.datasets import Sample, load_dataset
from maskwatch.inference.evaluation.metrics import face_ap50
from maskwatch.inference.postprocess import adjust_boxes, iou_matrix, mirror_boxes
from maskwatch.inference.preprocess import Transform, decode_image
from maskwatch.inference.serving.engine import InferenceEngine, default_models, resolve_spec
from maskwatch.inference.spec import ModelSpec
from maskwatch.inference.training.calibrate import (
    CALIBRATED_SUFFIX,
    calibrate,
    calibrated_name,
    fit_box_adjust,
    is_current,
    remove_style,
)

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "kaggle-face-mask"
TRAIN_IMAGES, TEST_IMAGES = 80, 40


def test_fit_recovers_a_known_adjustment_and_adjust_applies_it() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (50, 2))
    wh = rng.uniform(8, 80, (50, 2))
    gt = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    truth = (0.02, 0.13, 1.05, 0.9)
    # Predictions a detector with the opposite bias would give: higher and taller than the ground truth.
    pw, ph = wh[:, 0] / truth[2], wh[:, 1] / truth[3]
    cx = (gt[:, 0] + gt[:, 2]) / 2 - truth[0] * pw
    cy = (gt[:, 1] + gt[:, 3]) / 2 - truth[1] * ph
    pred = np.stack([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2], axis=1).astype(np.float32)
    samples = [Sample(Path(f"{i}.jpg"), gt[i : i + 5], ("mask",) * 5, ("mask",) * 5) for i in range(0, 50, 5)]
    fitted = fit_box_adjust(samples, [pred[i : i + 5] for i in range(0, 50, 5)])
    assert fitted == pytest.approx(truth, abs=1e-3)
    np.testing.assert_allclose(adjust_boxes(pred, fitted), gt, atol=0.05)
    assert adjust_boxes(pred, (0.0, 0.0, 1.0, 1.0)) == pytest.approx(pred)
    # Taking a style out of labels is the inverse: what the re-trained detector learns from.
    np.testing.assert_allclose(remove_style(gt, truth), pred, atol=1e-3)
    np.testing.assert_allclose(adjust_boxes(remove_style(gt, truth), truth), gt, atol=1e-3)


def test_mirror_boxes_undo_a_mirrored_letterboxed_frame() -> None:
    # A 400x300 frame letterboxed into 640x480 (scale 1.6, content top-left): a face at x 10..50 in the
    # frame is at 10..50 from the right edge of the mirrored frame, i.e. input x 576..640 - 16*4.
    t = Transform(1.6, 1.6, 0.0, 0.0, 400, 300)
    mirrored = np.array([[(400 - 50) * 1.6, 16.0, (400 - 10) * 1.6, 80.0]], np.float32)
    np.testing.assert_allclose(mirror_boxes(mirrored, t), [[16.0, 16.0, 80.0, 80.0]], atol=1e-4)
    np.testing.assert_allclose(mirror_boxes(mirror_boxes(mirrored, t), t), mirrored, atol=1e-4)


def _ap_and_iou(engine: InferenceEngine, samples: list[Sample]) -> tuple[float, float]:
    frames = [decode_image(s.image.read_bytes()) for s in samples]
    found = engine.detect(frames)
    ap = face_ap50(samples, found)
    # Mean IoU of each ground-truth face with its best detection, over faces some detection touches.
    pairs = zip(found, samples, strict=True)
    best = np.concatenate([iou_matrix(s.boxes, b).max(axis=1) for (b, _), s in pairs if len(b)])
    return ap, float(best[best >= 0.3].mean())


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelSpec]:
    out = tmp_path_factory.mktemp("cal")
    return out, calibrate(DATASET, resolve_spec("rfb640"), out, limit=TRAIN_IMAGES)


def test_calibration_fitted_on_train_raises_held_out_iou_and_ap(calibrated: tuple[Path, ModelSpec]) -> None:
    out, spec = calibrated
    cal = resolve_spec(f"rfb640{CALIBRATED_SUFFIX}", out)
    assert cal == spec and cal.box_adjust is not None
    _, dy, _, sh = cal.box_adjust
    assert 0.08 < dy < 0.2 and 0.8 < sh < 1.0  # RFB's boxes sit higher and run taller than this set's
    assert is_current(out / f"{cal.name}.yaml", resolve_spec("rfb640"))
    assert default_models(out)[0] == cal.name  # built: it becomes the default detector
    held_out = load_dataset(DATASET, split="test", limit=TEST_IMAGES)
    classifier = resolve_spec("mobilenetv2-mask")
    raw = InferenceEngine(resolve_spec("rfb640"), classifier, score_threshold=0.05, max_batch=8)
    adjusted = InferenceEngine(cal, classifier, score_threshold=0.05, max_batch=8)
    ap_raw, iou_raw = _ap_and_iou(raw, held_out)
    ap_cal, iou_cal = _ap_and_iou(adjusted, held_out)
    assert iou_cal > iou_raw + 0.03, (iou_raw, iou_cal)
    assert ap_cal > ap_raw + 0.02, (ap_raw, ap_cal)


def test_a_changed_detector_spec_is_recalibrated(calibrated: tuple[Path, ModelSpec]) -> None:
    out, _ = calibrated
    changed = resolve_spec("rfb640").model_copy(update={"nms_iou": 0.3})
    assert not is_current(out / f"rfb640{CALIBRATED_SUFFIX}.yaml", changed)
    assert not is_current(out / "absent.yaml", changed)


def test_calibrating_on_other_labels_re_fits(calibrated: tuple[Path, ModelSpec], tmp_path: Path) -> None:
    # A user's own labelled frames: the cached fit on the Kaggle set is not theirs.
    out, _ = calibrated
    cached = out / f"rfb640{CALIBRATED_SUFFIX}.yaml"
    assert is_current(cached, resolve_spec("rfb640"), DATASET)
    assert not is_current(cached, resolve_spec("rfb640"), tmp_path)
    assert calibrated_name("rfb640-ft") == "rfb640-ft-cal" and calibrated_name("rfb640-cal") == "rfb640-cal"


def test_flip_finds_the_same_faces_on_a_mirrored_frame() -> None:
    spec = resolve_spec("rfb640").model_copy(update={"flip": True})
    engine = InferenceEngine(spec, resolve_spec("mobilenetv2-mask"), max_batch=4)
    sample = load_dataset(DATASET, split="test", limit=1)[0]
    frame = decode_image(sample.image.read_bytes())
    (boxes, scores), (mboxes, mscores) = engine.detect([frame, cv2.flip(frame, 1)])
    assert len(boxes) >= 2 and len(mboxes) == len(boxes)
    w = frame.shape[1]
    unmirrored = np.stack([w - mboxes[:, 2], mboxes[:, 1], w - mboxes[:, 0], mboxes[:, 3]], axis=1)
    # Both passes are pooled either way round: the same faces, the same boxes up to resampling.
    assert iou_matrix(boxes, unmirrored).max(axis=1).min() > 0.9
    np.testing.assert_allclose(np.sort(scores), np.sort(mscores), atol=0.02)
    assert iou_matrix(sample.boxes, boxes).max(axis=0).max() > 0.5
