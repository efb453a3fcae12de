"""Fine-tune a shipped classifier's head on the train split of a labelled dataset, reproducibly.

The base network stays frozen: its pooled features (the input of the first Gemm of the head) are
computed with ONNX Runtime on ground-truth face crops, cut the same way the engine cuts them, and a
class-balanced logistic-regression head is fitted in numpy. The result is a new ONNX model (the base
graph up to the features, then Gemm + Softmax) with a spec, cached in the models directory next to the
pulled models — never committed. The held-out `test` split of `inference.datasets.split_of` is never
seen, so `maskwatch eval --split test` measures it honestly.

    python -m inference.finetune DATASET [--base mobilenetv2-mask] [--name mobilenetv2-mask-ft]
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import click
import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from inference.datasets import Sample, load_dataset
from inference.preprocess import BatchPreprocessor, decode_image
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

FINETUNED_SUFFIX = "-ft"
L2 = 1e-3
STEPS = 600
LR = 0.05


def _feature_tensor(model: onnx.ModelProto) -> str:
    """Name of the head's input: the first Gemm's data input (conv nets have Gemm only in the head)."""
    for node in model.graph.node:
        if node.op_type in ("Gemm", "MatMul"):
            return str(node.input[0])
    raise ValueError("classifier graph has no Gemm/MatMul head to replace")


def _truncate(model: onnx.ModelProto, feature: str) -> onnx.ModelProto:
    """The graph up to `feature`, which becomes its only output."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    producers = {o: n for n in m.graph.node for o in n.output}
    needed, stack = set(), [feature]
    while stack:  # walk back from the feature tensor: keep only nodes it depends on
        t = stack.pop()
        node = producers.get(t)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        stack.extend(node.input)
    keep = [n for n in m.graph.node if id(n) in needed]
    del m.graph.node[:]
    m.graph.node.extend(keep)
    used = {i for n in keep for i in n.input}
    inits = [i for i in m.graph.initializer if i.name in used]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info(feature, onnx.TensorProto.FLOAT, None)])
    return m


def _with_head(
    features_model: onnx.ModelProto, feature: str, w: np.ndarray, b: np.ndarray
) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(features_model)
    m.graph.initializer.extend(
        [
            numpy_helper.from_array(w.astype(np.float32), "ft_head_w"),
            numpy_helper.from_array(b.astype(np.float32), "ft_head_b"),
        ]
    )
    m.graph.node.extend(
        [
            helper.make_node("Gemm", [feature, "ft_head_w", "ft_head_b"], ["ft_logits"]),
            helper.make_node("Softmax", ["ft_logits"], ["probs"], axis=1),
        ]
    )
    del m.graph.output[:]
    m.graph.output.extend([helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["batch", 2])])
    onnx.checker.check_model(m)
    return m


def crop_features(
    session: ort.InferenceSession, spec: ModelSpec, samples: list[Sample], flip: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Features of every ground-truth crop (and its mirror image when `flip`), and no-mask labels."""
    pre = BatchPreprocessor(spec.preprocess)
    name = session.get_inputs()[0].name
    feats: list[np.ndarray] = []
    labels: list[bool] = []
    for i in range(0, len(samples), 16):
        chunk = samples[i : i + 16]
        frames = [decode_image(s.image.read_bytes()) for s in chunk]
        views = [(frames, False)] + ([([f[:, ::-1] for f in frames], True)] if flip else [])
        for imgs, mirrored in views:
            boxes = []
            for s, f in zip(chunk, imgs, strict=True):
                b = s.boxes.copy()
                if mirrored:
                    w = f.shape[1]
                    b[:, [0, 2]] = w - s.boxes[:, [2, 0]]
                boxes.append(b)
            batch = pre.crops([np.ascontiguousarray(f) for f in imgs], boxes, spec.crop_margin)
            if len(batch):
                feats.append(
                    session.run(None, {name: np.ascontiguousarray(batch)})[0].reshape(len(batch), -1)
                )
                labels.extend(lab == "no_mask" for s in chunk for lab in s.labels)
    return np.concatenate(feats), np.asarray(labels)


def fit_logistic(x: np.ndarray, y: np.ndarray, nomask_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced L2 logistic regression (Adam, full batch, fixed seed-free init) -> 2-class Gemm
    weights [D, 2] and bias [2] whose softmax equals the sigmoid of the fitted logit."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    pos = y.mean()
    weight = np.where(y, 0.5 / max(pos, 1e-6), 0.5 / max(1 - pos, 1e-6))
    w, b = np.zeros(z.shape[1]), 0.0
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), 0.0, 0.0
    for t in range(1, STEPS + 1):
        p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
        g = weight * (p - y) / len(y)
        gw, gb = z.T @ g + L2 * w, g.sum()
        m_w, v_w = 0.9 * m_w + 0.1 * gw, 0.999 * v_w + 0.001 * gw**2
        m_b, v_b = 0.9 * m_b + 0.1 * gb, 0.999 * v_b + 0.001 * gb**2
        w -= LR * (m_w / (1 - 0.9**t)) / (np.sqrt(v_w / (1 - 0.999**t)) + 1e-8)
        b -= LR * (m_b / (1 - 0.9**t)) / (np.sqrt(v_b / (1 - 0.999**t)) + 1e-8)
    # Fold the standardisation in: logit = x @ (w / sd) + (b - mu @ (w / sd)).
    wx = w / sd
    bx = b - float(mu @ wx)
    gemm_w = np.zeros((x.shape[1], 2))
    gemm_b = np.zeros(2)
    gemm_w[:, nomask_index] = wx
    gemm_b[nomask_index] = bx
    return gemm_w, gemm_b


def finetune(dataset: Path, base: ModelSpec, name: str, models_dir: Path) -> ModelSpec:
    """Fit the head on the train split of `dataset`; write `<name>.onnx` + `<name>.yaml`; return the spec."""
    if base.kind != "classifier" or base.decoder != "softmax":
        raise ValueError(f"{base.name}: only softmax classifiers can be fine-tuned this way")
    samples = load_dataset(dataset, split="train")
    model = onnx.load(base.path(models_dir))
    feature = _feature_tensor(model)
    feats_model = _truncate(model, feature)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(feats_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x, y = crop_features(session, base, samples, flip=True)
    log.info(
        "fitting %s head on %d crops (%d no-mask) from %d train images",
        name,
        len(y),
        int(y.sum()),
        len(samples),
    )
    w, b = fit_logistic(x.astype(np.float64), y.astype(np.float64), base.nomask_index)
    out = _with_head(feats_model, feature, w, b)
    models_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = models_dir / f"{name}.onnx"
    onnx.save(out, onnx_path)
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
    spec = base.model_copy(
        update={"name": name, "file": onnx_path.name, "outputs": ["probs"], "logits": False, "source": None}
    )
    meta = spec.model_dump(mode="json")
    (models_dir / f"{name}.yaml").write_text(json.dumps(meta, indent=2) + "\n")  # JSON is valid YAML
    log.info("wrote %s (sha256 %s...) and %s.yaml", onnx_path, digest, name)
    return spec.model_copy(update={"file": str(onnx_path)})


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base", default="mobilenetv2-mask", show_default=True, help="pulled classifier to start from")
@click.option("--name", default=None, help="name of the result [default: BASE-ft]")
def finetune_command(dataset: Path, base: str, name: str | None) -> None:
    """Fit a classifier head on DATASET's train split; cache it beside the pulled models."""
    from inference.models.manifest import get_spec
    from maskwatch.config import Settings

    models_dir = Settings().models_dir
    spec = finetune(dataset, get_spec(base), name or f"{base}{FINETUNED_SUFFIX}", models_dir)
    click.echo(f"{spec.name}: {spec.file}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    finetune_command()
