"""Fine-tune the shipped MobileNetV2 mask classifier on the train split of a labelled dataset, reproducibly.

Why: the shipped classifier was trained on large, clean face crops; on security-camera-like images with
small faces it calls most small masked faces "no mask" (accuracy ~0.5 on the Kaggle set's crops), and a
new linear head on its frozen features tops out near 0.90. Re-training the last inverted-residual blocks
and the head closes most of that gap.

How: the Keras model is rebuilt in PyTorch from the pinned wheel (`inference.models.convert_keras`), the
frozen early layers run once over ground-truth crops (cut exactly as the engine cuts them, plus mirror
images) and are cached; the last blocks + head train for a fixed number of epochs with a fixed seed,
class-balanced. The model is exported to ONNX beside the pulled models with `<name>.yaml` (its spec) —
never committed. The held-out `test` split (`inference.datasets.split_of`) is never seen, so
`maskwatch eval --split test --classifier mobilenetv2-mask-ft` measures it honestly.

    python -m inference.finetune DATASET        # needs the `convert` extra (torch), like `models pull`
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import click
import numpy as np

from inference.datasets import Sample, load_dataset
from inference.engine import FINETUNED_SUFFIX
from inference.preprocess import BatchPreprocessor, decode_image
from inference.spec import ModelSpec

log = logging.getLogger(__name__)

FIRST_TRAINED = "block_14_expand"  # this layer and all after it are re-trained
EPOCHS = 8
BATCH = 64
LR = 3e-4
SEED = 0


def _keras_graph(base: ModelSpec, models_dir: Path) -> Any:
    """The base classifier as a PyTorch module, rebuilt from the wheel `models pull` cached."""
    from inference.models.convert_keras import KerasGraph

    if base.source is None or not base.source.member.endswith((".model", ".h5")):
        raise ValueError(f"{base.name}: not a Keras model from a pinned wheel; cannot fine-tune it")
    dist = base.source.wheel.split("==")[0].replace("-", "_")
    wheels = sorted((models_dir / "wheels").glob(f"{dist}-*.whl"))
    if not wheels:
        raise FileNotFoundError(
            f"wheel {base.source.wheel} not in {models_dir / 'wheels'}: run `maskwatch models pull`"
        )
    with zipfile.ZipFile(wheels[-1]) as zf, tempfile.NamedTemporaryFile(suffix=".h5") as tmp:
        tmp.write(zf.read(base.source.member))
        tmp.flush()
        return KerasGraph(Path(tmp.name))


class _Split:
    """Runs a KerasGraph in two parts: a frozen prefix (cached) and a trainable suffix."""

    def __init__(self, graph: Any, first_trained: str) -> None:
        names = [e["name"] for e in graph.layers]
        if first_trained not in names:
            raise ValueError(f"layer {first_trained} not in the model")
        cut = names.index(first_trained)
        self.graph, self.prefix, self.suffix = graph, graph.layers[:cut], graph.layers[cut:]
        produced_before = {e["name"] for e in self.prefix}
        self.carried = sorted({i for e in self.suffix for i in e["inputs"] if i in produced_before})
        for e in self.suffix:
            for key in list(graph.params):
                if key.startswith(e["key"] + "_"):
                    graph.params[key].requires_grad_(True)

    def run_prefix(self, x: Any) -> list[Any]:
        values = {self.graph.input_name: x}
        for e in self.prefix:
            if e["name"] != self.graph.input_name:
                values[e["name"]] = self.graph._run(e, [values[i] for i in e["inputs"]])
        return [values[n] for n in self.carried]

    def run_suffix(self, carried: list[Any], train: bool) -> Any:
        import torch.nn.functional as F

        values = dict(zip(self.carried, carried, strict=True))
        for e in self.suffix:
            y = self.graph._run(e, [values[i] for i in e["inputs"]])
            if train and e["kind"] == "Dropout":
                y = F.dropout(y, e["cfg"].get("rate", 0.5), training=True)
            values[e["name"]] = y
        return values[self.graph.output_name]


def _crops(spec: ModelSpec, samples: list[Sample]) -> tuple[list[np.ndarray], np.ndarray]:
    """Normalised crop batches (per 16 images, then their mirror images) and no-mask labels."""
    pre = BatchPreprocessor(spec.preprocess)
    batches: list[np.ndarray] = []
    labels: list[bool] = []
    for i in range(0, len(samples), 16):
        chunk = samples[i : i + 16]
        frames = [decode_image(s.image.read_bytes()) for s in chunk]
        y = [lab == "no_mask" for s in chunk for lab in s.labels]
        batches.append(pre.crops(frames, [s.boxes for s in chunk], spec.crop_margin).copy())
        mirrored = []
        for s, f in zip(chunk, frames, strict=True):
            b = s.boxes.copy()
            b[:, [0, 2]] = f.shape[1] - s.boxes[:, [2, 0]]
            mirrored.append(b)
        batches.append(
            pre.crops([np.ascontiguousarray(f[:, ::-1]) for f in frames], mirrored, spec.crop_margin).copy()
        )
        labels += y + y
    return batches, np.asarray(labels)


def finetune(dataset: Path, base: ModelSpec, name: str, models_dir: Path) -> ModelSpec:
    """Re-train the last blocks on the train split of `dataset`; write `<name>.onnx` + `<name>.yaml`."""
    import torch

    from inference.models.convert_torch import export
    from inference.session import cpu_count

    torch.manual_seed(SEED)
    torch.set_num_threads(cpu_count())
    rng = np.random.default_rng(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # same steps, a GPU is only faster
    graph = _keras_graph(base, models_dir).to(device)
    graph.eval()
    split = _Split(graph, FIRST_TRAINED)
    samples = load_dataset(dataset, split="train")
    batches, y = _crops(base, samples)
    log.info(
        "caching frozen features of %d crops (%d no-mask) from %d train images",
        len(y),
        int(y.sum()),
        len(samples),
    )
    cached: list[list[Any]] = []
    with torch.no_grad():
        for b in batches:
            if len(b):
                cached.append(split.run_prefix(torch.from_numpy(b).to(device)))
    feats = [torch.cat([c[k] for c in cached]) for k in range(len(split.carried))]
    target = torch.from_numpy(y.astype(np.int64)).to(device)
    nomask = base.nomask_index
    labels = target if nomask == 1 else 1 - target
    pos = float(y.mean())
    weights = torch.tensor(
        [0.5 / (1 - pos), 0.5 / pos] if nomask == 1 else [0.5 / pos, 0.5 / (1 - pos)],
        dtype=torch.float32,
        device=device,
    )
    params = [p for p in graph.params.values() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR)
    for epoch in range(EPOCHS):
        order = torch.from_numpy(rng.permutation(len(y))).to(device)
        total = 0.0
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            probs = split.run_suffix([f[idx] for f in feats], train=True)
            loss = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-7)), labels[idx], weight=weights)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        log.info("epoch %d/%d: train loss %.4f", epoch + 1, EPOCHS, total / len(y))
    for p in params:
        p.requires_grad_(False)
    graph = graph.cpu()
    models_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = models_dir / f"{name}.onnx"
    tmp = onnx_path.with_suffix(".tmp.onnx")
    export(graph, tmp, (3, base.preprocess.height, base.preprocess.width), ["probs"])
    tmp.replace(onnx_path)
    spec = base.model_copy(
        update={"name": name, "file": onnx_path.name, "outputs": ["probs"], "source": None}
    )
    # JSON is valid YAML; `resolve_spec(name)` finds it beside the manifest.
    (models_dir / f"{name}.yaml").write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n")
    log.info("wrote %s and %s.yaml", onnx_path, name)
    return spec.model_copy(update={"file": str(onnx_path)})


@click.command()
@click.argument("dataset", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--base", default="mobilenetv2-mask", show_default=True, help="pulled classifier to start from")
@click.option("--name", default=None, help="name of the result [default: BASE-ft]")
@click.option("--force", is_flag=True, help="re-train even when the result is already cached")
def finetune_command(dataset: Path, base: str, name: str | None, force: bool) -> None:
    """Fine-tune a classifier on DATASET's train split; cache it beside the pulled models."""
    from inference.models.manifest import get_spec
    from maskwatch.config import Settings

    models_dir = Settings().models_dir
    name = name or f"{base}{FINETUNED_SUFFIX}"
    # Training takes minutes on a CPU: once built, the cached result is what `bin/dev` and the flow use.
    if not force and (models_dir / f"{name}.yaml").is_file() and (models_dir / f"{name}.onnx").is_file():
        click.echo(f"{name}: cached in {models_dir} (--force to re-train)")
        return
    spec = finetune(dataset, get_spec(base), name, models_dir)
    click.echo(f"{spec.name}: {spec.file}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    finetune_command()
