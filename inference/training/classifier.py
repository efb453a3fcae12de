"""Fine-tune the shipped MobileNetV2 mask classifier on the train split of a labelled dataset, reproducibly.

Why: the shipped classifier was trained on large, clean face crops; on security-camera-like images with
small faces it calls most small masked faces "no mask" (accuracy ~0.5 on the Kaggle set's crops), and a
new linear head on its frozen features tops out near 0.90. Re-training the whole network on this kind of
faces closes that gap.

How: the Keras model is rebuilt in PyTorch from the pinned wheel
(`maskwatch.inference.models.convert_keras`); the
train faces are cut as the engine cuts them, but afresh each epoch from shifted and rescaled boxes,
mirrored and with varied contrast and brightness (so 3,000 faces are not learnt by heart); everything
from FIRST_TRAINED on trains for a fixed number of epochs with a fixed seed, class-balanced, with label
smoothing. The no-mask operating threshold is fitted out of fold on the train
split (THRESHOLD_FOLDS, THRESHOLD_MODELS) and written into the spec (`score_threshold`), so it travels
with the model.
Training and serving run at INPUT x INPUT (smaller than the shipped 224: the head's
pooling is made global, so the same weights apply, at a fraction of the cost). The model is exported to
ONNX (int8-quantised, calibrated on train crops, only if INT8 is on) beside the pulled models, with
`<name>.yaml` (its spec) and `<name>.recipe.json` (what it was built from, so a changed recipe rebuilds
it) — never committed. The held-out `test` split (`maskwatch.inference.datasets.split_of`) is never seen, so
`maskwatch eval --split test --classifier mobilenetv2-mask-ft` measures it honestly.

    maskwatch models finetune DATASET      # needs the `convert` extra (torch), like `models pull`
"""

from __future__ import annotations

import json
import logging
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from maskwatch.inference.datasets import Sample, load_dataset
from maskwatch.inference.evaluation.metrics import TARGET_RECALL
from maskwatch.inference.preprocess import BatchPreprocessor, decode_image
from maskwatch.inference.spec import ModelSpec, save_spec
from maskwatch.inference.training.checkpoint import Checkpoint
from maskwatch.progress import Progress

log = logging.getLogger(__name__)

# This layer and all after it are re-trained: all but the stem and the first two blocks (the 64x64 and
# the first 32x32 stage), whose backward pass was half of a training step's cost. Re-training only from
# block 13 on, on cached features of fixed crops, topped out at no-mask precision 0.77-0.85 at recall 0.90
# on held-out crops (seed to seed); the network on crops cut afresh each epoch reached 0.86-0.91, whole or
# from here (docs/models.md).
FIRST_TRAINED = "block_3_expand"
EPOCHS = 10
BATCH = 32
LR = 1e-4  # AdamW, cosine decay to zero over the run
# Label smoothing and decoupled weight decay: without them the re-trained blocks end up near-certain on
# every train crop, and where the no-mask probability crosses 0.5 on unseen faces moved from run to run
# (held-out recall at 0.5 from 0.81 to 0.90 between two seeds, at the same AUC).
LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 1e-2
SEED = 0
# Augmentation, drawn per face and epoch: box centre shift and size change (fractions of the box), aspect
# change (log), contrast gain about mid-grey (fraction) and brightness (pixel values); half are mirrored.
JITTER_SHIFT = 0.08
JITTER_SCALE = 0.15
JITTER_ASPECT = 0.08
CONTRAST = 0.3
BRIGHTNESS = 25.0
# Input side in pixels. The network is convolutional up to a global average, so the shipped 224x224
# weights run at any size; the cost scales with the area.
INPUT = 128
# Static int8 (inference/quantize.py) is 2-3x faster on this CPU but costs 3-7 points of held-out accuracy
# on MobileNetV2 (MinMax or percentile ranges, Conv-only or all ops, u8 or s8 activations; see README),
# so the served model stays float32.
INT8 = False
CALIBRATION_CROPS = 512
# The no-mask operating threshold is fitted out of fold on the train split: the train images are cut
# into THRESHOLD_FOLDS parts; for the first THRESHOLD_MODELS of them a model trained (same recipe) without
# that part scores it; the threshold is the highest at which those scores reach the target no-mask
# recall. The held-out split is never looked at. Each training takes minutes on a CPU, so one part of two
# is scored (about 290 no-mask faces): the build trains THRESHOLD_MODELS + 1 times. Serving a model trained
# on fewer faces instead (a quarter held out for the threshold) cost 2-4 points of held-out precision.
THRESHOLD_FOLDS = 2
THRESHOLD_MODELS = 1
# Everything that changes the result: a cached model built with another recipe is rebuilt.
RECIPE = {
    "first_trained": FIRST_TRAINED,
    "epochs": EPOCHS,
    "batch": BATCH,
    "lr": LR,
    "label_smoothing": LABEL_SMOOTHING,
    "augment": [JITTER_SHIFT, JITTER_SCALE, JITTER_ASPECT, CONTRAST, BRIGHTNESS],
    "weight_decay": WEIGHT_DECAY,
    "seed": SEED,
    "input": INPUT,
    "int8": INT8,
    "calibration_crops": CALIBRATION_CROPS,
    "threshold_folds": THRESHOLD_FOLDS,
    "threshold_models": THRESHOLD_MODELS,
    "memory_format": "channels_last",
    "threshold_recall": TARGET_RECALL,
}


def _keras_graph(base: ModelSpec, models_dir: Path) -> Any:
    """The base classifier as a PyTorch module, rebuilt from the wheel `models pull` cached."""
    from maskwatch.inference.models.convert_keras import KerasGraph

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


class _TrainCrops:
    """The train faces, decoded once and cut afresh each epoch: boxes shifted and rescaled (detector boxes
    are never the annotator's), mirrored, contrast and brightness varied. Rows are faces in dataset order."""

    def __init__(self, spec: ModelSpec, samples: list[Sample]) -> None:
        self._pre = BatchPreprocessor(spec.preprocess)
        self._margin = spec.crop_margin
        nchw = spec.preprocess.layout == "NCHW"
        shape = (1, 3, 1, 1) if nchw else (1, 1, 1, 3)
        self._width_axis = 3 if nchw else 2
        self._mean = np.asarray(spec.preprocess.mean, np.float32).reshape(shape)
        self._std = np.asarray(spec.preprocess.std, np.float32).reshape(shape)
        self._frames = [decode_image(s.image.read_bytes()) for s in samples]
        self._boxes = [s.boxes.astype(np.float32) for s in samples]
        self.nomask = np.asarray([lab == "no_mask" for s in samples for lab in s.labels])
        self.image = np.asarray([i for i, s in enumerate(samples) for _ in s.labels])

    def _cut(self, boxes: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(self._frames), 32):
            out.append(self._pre.crops(self._frames[i : i + 32], boxes[i : i + 32], self._margin).copy())
        return np.concatenate(out)

    def plain(self) -> np.ndarray:
        """Every face cut as the engine cuts a ground-truth box."""
        return self._cut(self._boxes)

    def augmented(self, rng: np.random.Generator) -> np.ndarray:
        boxes = []
        for b in self._boxes:
            n = len(b)
            w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
            cx = (b[:, 0] + b[:, 2]) / 2 + rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, n) * w
            cy = (b[:, 1] + b[:, 3]) / 2 + rng.uniform(-JITTER_SHIFT, JITTER_SHIFT, n) * h
            scale = np.exp(rng.uniform(-JITTER_SCALE, JITTER_SCALE, n))
            w, h = w * scale, h * scale * np.exp(rng.uniform(-JITTER_ASPECT, JITTER_ASPECT, n))
            boxes.append(np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1))
        x = self._cut(boxes)
        flip = rng.random(len(x)) < 0.5
        x[flip] = np.flip(x[flip], axis=self._width_axis)
        # Contrast about mid-grey and brightness, in pixel values, then back to the model's normalisation;
        # in place, since the crops of an epoch are hundreds of megabytes and each temporary cost seconds.
        gain = rng.uniform(1 - CONTRAST, 1 + CONTRAST, (len(x), 1, 1, 1)).astype(np.float32)
        offset = rng.uniform(-BRIGHTNESS, BRIGHTNESS, (len(x), 1, 1, 1)).astype(np.float32)
        x *= self._std
        x += self._mean - 127.5
        x *= gain
        x += 127.5 + offset
        np.clip(x, 0.0, 255.0, out=x)
        x -= self._mean
        x /= self._std
        return x


def recall_threshold(probs: np.ndarray, nomask: np.ndarray, recall: float) -> float:
    """The highest threshold (3 decimals, rounded down) at which `probs >= threshold` finds at least
    `recall` of the no-mask crops."""
    pos = np.sort(probs[nomask])[::-1]
    if len(pos) == 0:
        raise ValueError("no no-mask crops to fit the threshold on")
    kth = pos[min(len(pos), int(np.ceil(recall * len(pos)))) - 1]
    return float(np.floor(kth * 1000) / 1000)


def is_built(models_dir: Path, name: str, stamp: dict[str, Any]) -> bool:
    """A model trained beside the pulled ones (`<name>.yaml`, `.onnx`) from exactly this recipe: the stamp
    `<name>.recipe.json` written after training says which."""
    path = models_dir / f"{name}.recipe.json"
    return (
        (models_dir / f"{name}.yaml").is_file()
        and (models_dir / f"{name}.onnx").is_file()
        and path.is_file()
        and json.loads(path.read_text()) == stamp
    )


def write_stamp(models_dir: Path, name: str, stamp: dict[str, Any]) -> None:
    (models_dir / f"{name}.recipe.json").write_text(json.dumps(stamp, indent=2) + "\n")


def build_once(
    models_dir: Path, name: str, stamp: dict[str, Any], force: bool, train: Callable[[], ModelSpec]
) -> None:
    """Run `train` (minutes on a CPU) and stamp its result, unless `name` is already built from exactly
    `stamp`: then the cached model is what `bin/dev` and the flow use. Says which on stdout."""
    if not force and is_built(models_dir, name, stamp):
        click.echo(f"{name}: cached in {models_dir} (--force to re-train)")
        return
    spec = train()
    write_stamp(models_dir, name, stamp)
    click.echo(f"{spec.name}: {spec.file}")


def recipe(base: ModelSpec) -> dict[str, Any]:
    """What a cached fine-tuned model was built from; any change means it is rebuilt."""
    return RECIPE | {"base": base.name, "base_sha256": base.source.sha256 if base.source else None}


def _global_pool(graph: Any, size: int) -> None:
    """Make the head's fixed 7x7 average pool (a global average at 224x224) global at any input size."""
    pools = [e for e in graph.layers if e["kind"] == "AveragePooling2D"]
    if size != 224 and len(pools) != 1:
        raise ValueError(f"expected one AveragePooling2D head, found {len(pools)}: cannot resize the input")
    for e in pools:
        e["kind"] = "GlobalAveragePooling2D"


def finetune(
    dataset: Path,
    base: ModelSpec,
    name: str,
    models_dir: Path,
    size: int = INPUT,
    int8: bool = INT8,
    threads: int | None = None,
    widen: Callable[[], bool] | None = None,
) -> ModelSpec:
    """Re-train the network (from FIRST_TRAINED on) on the train split of `dataset` at `size`x`size`
    input, on `threads` CPU threads (all this process may use by default; once `widen()`, checked before
    each epoch, says so, all of them); write `<name>.yaml` and `<name>.onnx` (int8 when `int8`, the float32
    model then beside it as `<name>.fp32.onnx`)."""
    import torch

    from maskwatch.inference.models.convert_torch import export
    from maskwatch.inference.session import cpu_count
    from maskwatch.inference.training.quantize import quantize_int8

    torch.manual_seed(SEED)
    torch.set_num_threads(threads or cpu_count())
    rng = np.random.default_rng(SEED)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # same steps, a GPU is only faster
    graph = _keras_graph(base, models_dir)
    _global_pool(graph, size)
    graph = graph.to(device)
    graph.eval()
    split = _Split(graph, FIRST_TRAINED)
    spec = base.model_copy(
        update={
            "name": name,
            "outputs": ["probs"],
            "source": None,
            "preprocess": base.preprocess.model_copy(update={"width": size, "height": size}),
        }
    )
    samples = load_dataset(dataset, split="train")
    faces = _TrainCrops(spec, samples)
    y = faces.nomask
    log.info("training on %d faces (%d no-mask) of %d train images", len(y), int(y.sum()), len(samples))
    target = torch.from_numpy(y.astype(np.int64)).to(device)
    labels = target if spec.nomask_index == 1 else 1 - target
    params = [p for p in graph.params.values() if p.requires_grad]
    initial = [p.detach().clone() for p in params]
    # Train on logits: the log of a saturated softmax has no gradient, so a run that saturated early
    # stayed stuck (one did, at a loss of 7.9). The softmax is put back before export.
    head = next(e for e in graph.layers if e["name"] == graph.output_name)
    if head["cfg"].get("activation") != "softmax":
        raise ValueError(f"{base.name}: expected a softmax output layer, found {head['kind']}")
    head["cfg"]["activation"] = "linear"

    def logits_of(x: np.ndarray, train: bool) -> Any:
        # Channels-last: PyTorch's CPU convolutions run a training step in about 0.7 of the time.
        batch = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        with torch.no_grad():
            carried = split.run_prefix(batch.contiguous(memory_format=torch.channels_last))
        return split.run_suffix(carried, train=train)

    # After every epoch the whole training state goes to a checkpoint, so an interrupted build (a stopped
    # `maskwatch up`, a killed CI job) resumes at the epoch it reached; it is dropped once the model is out.
    checkpoint = Checkpoint(models_dir / ".checkpoints" / f"{name}.pt", recipe(base) | {"size": size})
    resumed = checkpoint.load()
    fold_of = np.arange(len(samples)) % THRESHOLD_FOLDS
    rng.shuffle(fold_of)
    oof = np.zeros(len(y), np.float32)
    first_phase = 0
    if resumed is not None:
        fold_of, oof, first_phase = resumed["fold_of"], resumed["oof"], resumed["phase"]
    face_fold = fold_of[faces.image]
    # The work in face-epochs: each fold model sees all faces but its part's, then the served one all.
    trained = [int((face_fold != k).sum()) for k in range(THRESHOLD_MODELS)] + [len(y)]
    progress = Progress(f"fine-tuning {name}: face-epochs", EPOCHS * sum(trained), log)
    if resumed is not None:
        # Phases the checkpoint had finished count as done.
        progress.step(f"resuming a checkpoint: {first_phase} of {len(trained)} trainings done",
                      n=EPOCHS * sum(trained[:first_phase]))

    def fit(rows: np.ndarray, phase: int) -> None:
        """Train the re-trained layers from their shipped weights on faces `rows`, class-balanced; phase
        says which training of the build this is (fold models first, then the served one)."""
        with torch.no_grad():
            for p, p0 in zip(params, initial, strict=True):
                p.copy_(p0)
        pos = float(y[rows].mean())
        weights = torch.tensor(
            [0.5 / (1 - pos), 0.5 / pos] if spec.nomask_index == 1 else [0.5 / pos, 0.5 / (1 - pos)],
            dtype=torch.float32,
            device=device,
        )
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, EPOCHS * -(-len(rows) // BATCH))
        start = 0
        if resumed is not None and resumed["phase"] == phase:
            with torch.no_grad():
                for p, saved in zip(params, resumed["params"], strict=True):
                    p.copy_(saved)
            opt.load_state_dict(resumed["opt"])
            schedule.load_state_dict(resumed["schedule"])
            rng.bit_generator.state = resumed["rng"]
            torch.set_rng_state(resumed["torch_rng"])
            start = resumed["epoch"]
            progress.step(f"resumed from the checkpoint at epoch {start}/{EPOCHS}", n=start * len(rows))
        nonlocal widen
        for epoch in range(start, EPOCHS):
            if widen is not None and widen():
                torch.set_num_threads(cpu_count())  # between steps: PyTorch's threads are per caller
                log.info("training on %d threads from here", cpu_count())
                widen = None
            x = faces.augmented(rng)[rows]
            order = rng.permutation(len(rows))
            total = 0.0
            for i in range(0, len(order), BATCH):
                idx = order[i : i + BATCH]
                loss = torch.nn.functional.cross_entropy(
                    logits_of(x[idx], train=True),
                    labels[rows[idx]],
                    weight=weights,
                    label_smoothing=LABEL_SMOOTHING,
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
                total += float(loss.detach()) * len(idx)
            loss_per_face = total / len(rows)
            progress.step(f"epoch {epoch + 1}/{EPOCHS} of {len(rows)} faces, train loss {loss_per_face:.4f}",
                          n=len(rows))
            checkpoint.save({"phase": phase, "epoch": epoch + 1, "oof": oof, "fold_of": fold_of,
                             "params": [p.detach().cpu().clone() for p in params],
                             "opt": opt.state_dict(), "schedule": schedule.state_dict(),
                             "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()})

    def nomask_probs(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = [torch.softmax(logits_of(x[i : i + 256], train=False), 1) for i in range(0, len(x), 256)]
        return torch.cat(out)[:, spec.nomask_index].cpu().numpy()

    # Out-of-fold scores of the scored parts' faces, from models that never saw their images.
    plain = faces.plain()
    for k in range(first_phase, THRESHOLD_MODELS):
        log.info("threshold model %d/%d", k + 1, THRESHOLD_MODELS)
        fit(np.flatnonzero(face_fold != k), phase=k)
        scored = np.flatnonzero(face_fold == k)
        oof[scored] = nomask_probs(plain[scored])
        resumed = None  # a later phase starts fresh
    scored = face_fold < THRESHOLD_MODELS
    threshold = recall_threshold(oof[scored], y[scored], TARGET_RECALL)
    log.info("no-mask threshold %.3f (out-of-fold recall %.2f on %d train faces)", threshold, TARGET_RECALL,
             int(scored.sum()))
    fit(np.arange(len(y)), phase=THRESHOLD_MODELS)
    head["cfg"]["activation"] = "softmax"
    spec = spec.model_copy(update={"score_threshold": threshold})
    for p in params:
        p.requires_grad_(False)
    graph = graph.cpu()
    models_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = models_dir / f"{name}.onnx"
    fp32_path = models_dir / f"{name}.fp32.onnx" if int8 else onnx_path
    tmp = fp32_path.with_suffix(".tmp.onnx")
    export(graph, tmp, (3, size, size), ["probs"])
    tmp.replace(fp32_path)
    if int8:
        # Calibration on train crops only (a fixed sample), never the held-out split.
        pick = np.sort(rng.choice(len(plain), min(CALIBRATION_CROPS, len(plain)), replace=False))
        quantize_int8(fp32_path, onnx_path, plain[pick])
    spec = spec.model_copy(update={"file": onnx_path.name})
    save_spec(spec, models_dir / f"{name}.yaml")
    checkpoint.clear()
    log.info("wrote %s and %s.yaml", onnx_path, name)
    return spec.model_copy(update={"file": str(onnx_path)})
