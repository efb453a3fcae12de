"""`maskwatch eval` on small real subsets of the shared Kaggle face-mask set (VOC and YOLO layouts)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskwatch.inference.datasets import DatasetError, Sample, load_dataset, split_of
from maskwatch.inference.evaluation.evaluate import main
from maskwatch.inference.evaluation.metrics import (
    Detections,
    average_precision,
    detection_metrics,
    face_ap50,
    match,
)
from maskwatch.inference.preprocess import decode_image

DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "kaggle-face-mask"
YOLO_NAMES = ["with_mask", "without_mask", "mask_weared_incorrect"]
VOC_TO_YOLO = {"con_mascarilla": 0, "sin_mascarilla": 1, "mascarilla_mal_puesta": 2}


def test_ap_and_matching_on_known_cases() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    tp = match(pred, scores, gt)
    assert tp.tolist() == [True, False, False, True]  # the duplicate and the stray are false positives
    ap, precision, recall = average_precision(scores, tp, len(gt))
    # precision 1 at recall 0.5, then 0.5 at recall 1.0 -> AP = 0.5*1 + 0.5*0.5
    assert ap == pytest.approx(0.75)
    assert recall[-1] == 1.0 and precision[0] == 1.0
    assert average_precision(scores[:1], tp[:1], 2)[0] == pytest.approx(0.5)
    # Over images: each image's detections match only its own faces.
    a = Sample(Path("a.jpg"), gt[:1], ("mask",), ("con_mascarilla",))
    b = Sample(Path("b.jpg"), gt[1:], ("no_mask",), ("sin_mascarilla",))
    found = [(gt[1:], np.array([0.9], np.float32)), (gt[1:], np.array([0.8], np.float32))]
    assert face_ap50([a, b], found) == pytest.approx(0.25)  # the first is a miss, the second finds b's face


def test_both_ious_and_the_operating_point_on_known_boxes() -> None:
    """A box shifted down by 12 of its 30 px (another dataset's style) overlaps its face at IoU 0.43:
    counted at 0.3, missed at 0.5; the operating point keeps only detections above the served threshold."""
    gt = np.array([[0, 0, 30, 30], [100, 100, 130, 130]], np.float32)
    sample = Sample(Path("a.jpg"), gt, ("mask", "no_mask"), ("con_mascarilla", "sin_mascarilla"))
    pred = np.array([[0, 12, 30, 42], [100, 100, 130, 130], [200, 200, 230, 230]], np.float32)
    det = Detections([pred], [np.array([0.9, 0.8, 0.3], np.float32)], [np.array([0.1, 0.9, 0.9], np.float32)])
    metrics, curves = detection_metrics([sample], det, score_threshold=0.5, nomask_threshold=0.5)
    assert metrics["face_ap30"] == pytest.approx(1.0) and metrics["face_ap50"] == pytest.approx(0.25)
    op = metrics["operating_point"]
    assert op["iou30"]["face"] == {"recall": 1.0, "precision": 1.0, "detections": 2}
    assert op["iou50"]["face"] == {"recall": 0.5, "precision": 0.5, "detections": 2}
    assert op["iou50"]["no_mask"] == {"recall": 1.0, "precision": 1.0, "detections": 1}
    assert op["iou50"]["mask"]["recall"] == 0.0 and op["iou30"]["mask"]["recall"] == 1.0
    assert curves["face@50"].operating == (0.5, 0.5) and curves["face@30"].operating == (1.0, 1.0)


def test_split_is_deterministic_and_disjoint() -> None:
    all_ = load_dataset(DATASET)
    train = load_dataset(DATASET, split="train")
    test = load_dataset(DATASET, split="test")
    assert len(all_) == 853
    assert {s.image for s in train}.isdisjoint({s.image for s in test})
    assert len(train) + len(test) == len(all_)
    assert 0.2 < len(test) / len(all_) < 0.4
    assert all(split_of(s.image) == "test" for s in test)
    assert sum(len(s.boxes) for s in all_) > 4000
    labels = [lab for s in all_ for lab in s.labels]
    assert labels.count("no_mask") == 717 + 123  # incorrect counts as no-mask


def test_bad_annotations_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    bad = tmp_path / "annotations" / "x.xml"
    bad.write_text("<annotation><filename>x.jpg</filename><object>")
    with pytest.raises(DatasetError, match=r"x\.xml: not valid XML"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="expected annotations/"):
        load_dataset(tmp_path / "images")


def _check_report(out: Path, images: int, split: str = "all") -> dict:
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == images
    assert report["split"] == split and report["split_means"]
    det = report["detection"]
    for key in ("face", "mask", "no_mask"):
        assert 0.0 <= det[f"{key}_ap50"] <= det[f"{key}_ap30"] <= 1.0, key  # looser IoU, no lower AP
    assert det["face_ap50"] > 0.4  # a working detector on real faces, not noise
    op = det["operating_point"]
    assert op["score_threshold"] > 0.1 and 0 < op["nomask_threshold"] < 1  # the served thresholds
    for k in ("iou50", "iou30"):
        for cls in ("face", "mask", "no_mask"):
            assert 0.0 <= op[k][cls]["recall"] <= 1.0 and 0.0 <= op[k][cls]["precision"] <= 1.0
    assert op["iou30"]["face"]["recall"] >= op["iou50"]["face"]["recall"] > 0
    assert op["iou30"]["face"]["detections"] == op["iou50"]["face"]["detections"]
    crops = report["classification_on_gt_crops"]
    assert crops["crops"] == det["faces_gt"] > 0
    assert 0.5 < crops["accuracy"] <= 1.0
    assert report["speed"]["frames_per_s"] > 0
    png = cv2.imread(str(out / "pr.png"))
    assert png is not None and png.shape[2] == 3 and png.std() > 10  # curves and text, not a blank canvas
    return report


def test_eval_on_a_voc_subset_writes_json_and_png(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        report = main(DATASET, tmp_path, limit=12, baseline=True, split="test")
    _check_report(tmp_path, 12, "test")
    # Progress as it goes (done/total, time so far and left, per batch of images), up to the last one.
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval: image")]
    assert steps and steps[-1].startswith("eval: image 12/12 (100%)") and "so far" in steps[-1]
    assert "held-out" in report["split_means"]
    assert 0.0 <= report["baseline"]["detection"]["face_ap30"] <= 1.0
    base = report["baseline"]
    assert 0.0 <= base["detection"]["face_ap50"] <= 1.0
    assert base["speed"]["detect_ms_per_frame"] > 0


def test_yolo_folder_gives_the_same_ground_truth_and_works(tmp_path: Path) -> None:
    voc = load_dataset(DATASET, limit=6)
    root = tmp_path / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "data.yaml").write_text("names: [" + ", ".join(YOLO_NAMES) + "]\n")
    for s in voc:
        (root / "images" / s.image.name).symlink_to(s.image)  # the shared set is never copied
        h, w = decode_image(s.image.read_bytes()).shape[:2]
        lines = []
        for b, raw in zip(s.boxes, s.raw_labels, strict=True):
            cx, cy, bw, bh = (
                (b[0] + b[2]) / 2 / w,
                (b[1] + b[3]) / 2 / h,
                (b[2] - b[0]) / w,
                (b[3] - b[1]) / h,
            )
            lines.append(f"{VOC_TO_YOLO[raw]} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
        (root / "labels" / f"{s.image.stem}.txt").write_text("\n".join(lines) + "\n")
    yolo = load_dataset(root)
    assert [s.image.name for s in yolo] == [s.image.name for s in voc]
    for a, b in zip(voc, yolo, strict=True):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=0.01)
        assert a.labels == b.labels
    main(root, tmp_path / "out", limit=6)
    _check_report(tmp_path / "out", 6)


def test_finetune_split_reproduces_the_full_model_and_local_specs_resolve(tmp_path: Path) -> None:
    import torch

    from maskwatch.config import Settings
    from maskwatch.inference.preprocess import BatchPreprocessor
    from maskwatch.inference.serving.engine import resolve_spec
    from maskwatch.inference.training.classifier import FIRST_TRAINED, _keras_graph, _Split, _TrainCrops

    base = resolve_spec("mobilenetv2-mask")
    graph = _keras_graph(base, Settings().models_dir)
    split = _Split(graph, FIRST_TRAINED)
    assert split.carried  # the cut passes real tensors across
    samples = load_dataset(DATASET, limit=3)
    faces = _TrainCrops(base, samples)
    plain = faces.plain()
    # Plain crops are the engine's crops of the annotated boxes; each face knows its label and image.
    engine_crops = BatchPreprocessor(base.preprocess).crops(
        [decode_image(s.image.read_bytes()) for s in samples], [s.boxes for s in samples], base.crop_margin
    )
    np.testing.assert_array_equal(plain, engine_crops)
    assert list(faces.nomask) == [lab == "no_mask" for s in samples for lab in s.labels]
    assert list(faces.image) == [i for i, s in enumerate(samples) for _ in s.labels]
    # Augmented crops: drawn afresh (same draw from the same seed), within the pixel range, near the plain.
    a1, a2 = faces.augmented(np.random.default_rng(1)), faces.augmented(np.random.default_rng(2))
    np.testing.assert_array_equal(a1, faces.augmented(np.random.default_rng(1)))
    assert a1.shape == a2.shape == plain.shape and not np.array_equal(a1, a2)
    assert a1.min() >= -1.0 - 1e-6 and a1.max() <= 1.0 + 1e-6  # (x - 127.5) / 127.5 of pixels 0..255
    assert np.abs(a1 - plain).mean() < np.abs(a1 - plain[::-1]).mean()  # still each face, not another
    x = torch.from_numpy(plain[:4].copy())
    with torch.no_grad():
        full = graph(x)
        parts = split.run_suffix(split.run_prefix(x), train=False)
    torch.testing.assert_close(parts, full)
    # A locally built model is found by name through `<models_dir>/<name>.yaml`.
    (tmp_path / "local-clf.yaml").write_text(
        json.dumps(base.model_copy(update={"name": "local-clf", "source": None}).model_dump(mode="json"))
    )
    assert resolve_spec("local-clf", tmp_path).file == base.file
