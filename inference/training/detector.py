"""`maskwatch models finetune-detector DATASET`: re-train RFB-640's later stages on a dataset's train split.

Why: RFB-640 was trained on WIDER FACE; the Kaggle set's faces are small, often masked, and boxed in its own
style. Re-training the stride-16/32 stages and all detection heads on the train split finds more of its
faces; the box style is left to calibration (docs/models.md).

How: the frozen front of the network (up to its stride-8 features) runs in ONNX Runtime on freshly augmented
train images every epoch (mirror, zoom-in crop, brightness/contrast), so no feature cache limits the
augmentation. The rest is rebuilt in PyTorch from the graph's own initializers (checked against the graph
before training) and trained with the loss the model was built with: SSD matching of priors to faces at
IoU >= 0.35, cross-entropy with 3:1 hard negatives, plus smooth L1 on the matched priors toward half the
shipped graph's own box offsets and half the labelled faces with the shipped detector's box style taken
out (so the box geometry stays the shipped one, learnt from WIDER FACE, and the dataset's box style is
fitted separately as `box_adjust` by `maskwatch models calibrate`). No-mask faces
weigh more in the loss, so the re-trained detector does not trade them (the faces the product alerts on,
a fifth of the data) for masked ones. BatchNorm statistics stay frozen. The trained
convolution weights are written back into the original graph's initializers: the served graph, its box
decoding and its inputs are unchanged, so the engine needs nothing new. The result is `<name>.onnx` +
`<name>.yaml` + `<name>.recipe.json` beside the pulled models (never committed); the held-out `test` split
is never seen.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from maskwatch.inference.datasets import load_dataset
from maskwatch.inference.postprocess import iou_matrix
from maskwatch.inference.preprocess import BatchPreprocessor, decode_image
from maskwatch.inference.spec import ModelSpec, save_spec
from maskwatch.inference.training.calibrate import box_style, remove_style
from maskwatch.inference.training.checkpoint import Checkpoint
from maskwatch.progress import Progress

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

FIRST_TRAINED = "base_net.8"  # the first stride-16 block; everything after it (and every head) is re-trained
EPOCHS = 20
BATCH = 16
LR = 1e-3
SEED = 0
MATCH_IOU = 0.35  # Ultra-Light's own matching threshold
NEG_POS = 3
NOMASK_WEIGHT = 3.0
# The box target of a matched prior: this share of the shipped graph's own offsets, the rest the
# labelled face with the dataset's box style taken out (the shipped detector's `box_adjust` on the train
# split, inverted). The labels sharpen where a face is; neither part teaches the dataset's box style.
BOX_TEACHER = 0.5
RECIPE = {
    "first_trained": FIRST_TRAINED,
    "epochs": EPOCHS,
    "batch": BATCH,
    "lr": LR,
    "seed": SEED,
    "match_iou": MATCH_IOU,
    "neg_pos": NEG_POS,
    "nomask_weight": NOMASK_WEIGHT,
    "augment": "mirror 0.5, zoom-crop 0.3 (0.6-1.0), brightness/contrast 0.5",
    "box_teacher": BOX_TEACHER,
    "box_targets": "shipped offsets + labels without the shipped detector's box style",
}


class GraphLayout:
    """Where the trainable tail starts and ends in an Ultra-Light RFB graph, and its priors/variances."""

    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.weights = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        consts = {
            n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node if n.op_type == "Constant"
        }
        consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            for i in n.input:
                consumers.setdefault(i, []).append(n)
        try:
            self.stride8 = next(n.input[0] for n in g.node if f"{FIRST_TRAINED}.0.weight" in n.input)
            self.conf = next(n.input[0] for n in g.node if n.op_type == "Softmax")
            conf_cat = next(n for n in g.node if n.output[0] == self.conf and n.op_type == "Concat")
            self.loc = next(
                n.output[0]
                for n in g.node
                if n.op_type == "Concat"
                and len(n.input) == len(conf_cat.input)
                and n is not conf_cat
                and any(c.op_type == "Slice" for c in consumers.get(n.output[0], []))
            )
        except StopIteration as exc:
            raise ValueError(
                "not an Ultra-Light RFB graph: cannot find its stride-8 features and heads"
            ) from exc
        # Decoding: centre = loc[:2] * var_c * prior_wh + prior_c; size = exp(loc[2:] * var_s) * prior_wh.
        chains = []
        for sl in (c for c in consumers[self.loc] if c.op_type == "Slice"):
            chain, node = [], sl
            while True:
                nxt = consumers.get(node.output[0], [])
                if len(nxt) != 1 or nxt[0].op_type not in ("Mul", "Add", "Exp"):
                    break
                node = nxt[0]
                chain.append((node.op_type, [consts[i] for i in node.input if i in consts]))
            chains.append(chain)
        centre = next(c for c in chains if c and c[-1][0] == "Add")
        size = next(c for c in chains if any(op == "Exp" for op, _ in c))
        self.variances = (float(np.ravel(centre[0][1][0])[0]), float(np.ravel(size[0][1][0])[0]))
        prior_wh = centre[1][1][0].reshape(-1, 2)
        prior_c = centre[2][1][0].reshape(-1, 2)
        self.priors = np.concatenate([prior_c, prior_wh], 1).astype(np.float32)  # centre-size, normalised


def _tail(w: dict[str, np.ndarray]) -> Any:
    """PyTorch module from the stride-8 features to (conf logits, loc offsets), as the graph computes them."""
    import torch
    from torch import nn

    def conv(name: str, bias: bool, stride: int = 1, pad: int = 0, groups: int = 1) -> nn.Conv2d:
        wt = torch.from_numpy(w[f"{name}.weight"].copy())
        c = nn.Conv2d(wt.shape[1] * groups, wt.shape[0], wt.shape[2], stride, pad, groups=groups, bias=bias)
        with torch.no_grad():
            c.weight.copy_(wt)
            if bias:
                assert c.bias is not None
                c.bias.copy_(torch.from_numpy(w[f"{name}.bias"].copy()))
        c.onnx_name = name  # type: ignore[assignment]  # where export writes the trained weights back
        return c

    def bn(name: str) -> nn.BatchNorm2d:
        b = nn.BatchNorm2d(w[f"{name}.weight"].shape[0], eps=1e-5)
        with torch.no_grad():
            for a in ("weight", "bias", "running_mean", "running_var"):
                getattr(b, a).copy_(torch.from_numpy(w[f"{name}.{a}"].copy()))
        return b

    def conv_dw(i: int, stride: int) -> list[nn.Module]:
        cin = w[f"base_net.{i}.0.weight"].shape[0]
        return [
            conv(f"base_net.{i}.0", False, stride, 1, cin),
            bn(f"base_net.{i}.1"),
            nn.ReLU(),
            conv(f"base_net.{i}.3", False),
            bn(f"base_net.{i}.4"),
            nn.ReLU(),
        ]

    def head(kind: str, i: int) -> nn.Module:
        if i == 3:
            return conv(f"{kind}_headers.3", True, 1, 1)
        ch = w[f"{kind}_headers.{i}.0.weight"].shape[0]
        return nn.Sequential(
            conv(f"{kind}_headers.{i}.0", True, 1, 1, ch), nn.ReLU(), conv(f"{kind}_headers.{i}.2", True)
        )

    class Tail(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stride16 = nn.Sequential(*conv_dw(8, 2), *conv_dw(9, 1), *conv_dw(10, 1))
            self.stride32 = nn.Sequential(*conv_dw(11, 2), *conv_dw(12, 1))
            ch = w["extras.0.2.0.weight"].shape[0]
            self.extras = nn.Sequential(
                conv("extras.0.0", True),
                nn.ReLU(),
                conv("extras.0.2.0", True, 2, 1, ch),
                nn.ReLU(),
                conv("extras.0.2.2", True),
                nn.ReLU(),
            )
            self.cls = nn.ModuleList([head("classification", i) for i in range(4)])
            self.reg = nn.ModuleList([head("regression", i) for i in range(4)])

        def forward(self, f8: Any) -> tuple[Any, Any]:
            f16 = self.stride16(f8)
            f32 = self.stride32(f16)
            maps = [f8, f16, f32, self.extras(f32)]
            b = f8.shape[0]
            conf = torch.cat(
                [h(m).permute(0, 2, 3, 1).reshape(b, -1, 2) for h, m in zip(self.cls, maps, strict=True)], 1
            )
            loc = torch.cat(
                [h(m).permute(0, 2, 3, 1).reshape(b, -1, 4) for h, m in zip(self.reg, maps, strict=True)], 1
            )
            return conf, loc

    return Tail()


def _taps_session(model: onnx.ModelProto, outputs: Sequence[str], threads: int) -> Any:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    m = onnx.ModelProto.FromString(model.SerializeToString())
    for t in outputs:
        m.graph.output.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def match_priors(
    priors: np.ndarray, boxes: np.ndarray, nomask: np.ndarray, variances: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SSD targets for one image. `boxes` [K,4] normalised corners. Returns per prior: label (1 face /
    0 background), the matched face's offsets encoded as the graph decodes them [N,4], and loss weight
    (NOMASK_WEIGHT where matched to a no-mask face). `finetune_detector` passes labels with their box
    style taken out and mixes these offsets with the shipped graph's own."""
    n = len(priors)
    labels, loc, weight = np.zeros(n, np.int64), np.zeros((n, 4), np.float32), np.ones(n, np.float32)
    if len(boxes) == 0:
        return labels, loc, weight
    corners = np.concatenate([priors[:, :2] - priors[:, 2:] / 2, priors[:, :2] + priors[:, 2:] / 2], 1)
    iou = iou_matrix(corners, boxes)
    best_gt, best_iou = iou.argmax(1), iou.max(1)
    best_gt[iou.argmax(0)] = np.arange(len(boxes))  # every face keeps at least its best prior
    best_iou[iou.argmax(0)] = 2.0
    labels = (best_iou >= MATCH_IOU).astype(np.int64)
    m = boxes[best_gt]
    centre, wh = (m[:, :2] + m[:, 2:]) / 2, np.maximum(m[:, 2:] - m[:, :2], 1e-6)
    loc = np.concatenate(
        [
            (centre - priors[:, :2]) / (variances[0] * priors[:, 2:]),
            np.log(wh / priors[:, 2:]) / variances[1],
        ],
        1,
    ).astype(np.float32)
    weight[(labels > 0) & nomask[best_gt]] = NOMASK_WEIGHT
    return labels, loc, weight


def augment(
    rng: np.random.Generator, frame: np.ndarray, boxes: np.ndarray, nomask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mirror, zoom-in crop (faces whose centre leaves the crop are dropped), brightness/contrast."""
    h, w = frame.shape[:2]
    boxes = boxes.astype(np.float32).copy()
    if rng.random() < 0.5:
        frame = frame[:, ::-1]
        boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
    if rng.random() < 0.3 and len(boxes):
        s = rng.uniform(0.6, 1.0)
        cw, ch = int(w * s), int(h * s)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        keep = (cx > x0) & (cx < x0 + cw) & (cy > y0) & (cy < y0 + ch)
        frame = frame[y0 : y0 + ch, x0 : x0 + cw]
        boxes = np.clip(boxes[keep] - np.array([x0, y0, x0, y0], np.float32), 0, [cw, ch, cw, ch])
        nomask = nomask[keep]
    if rng.random() < 0.5:
        frame = np.clip(frame.astype(np.float32) * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25), 0, 255)
    return np.ascontiguousarray(frame, dtype=np.uint8), boxes.astype(np.float32), nomask


def _loss(conf: Any, loc: Any, labels: Any, target: Any, weight: Any) -> Any:
    """SSD loss: weighted cross-entropy (positives + NEG_POS hardest negatives) + smooth L1 on positives."""
    import torch
    import torch.nn.functional as F

    pos = labels > 0
    with torch.no_grad():
        bg = -F.log_softmax(conf, 2)[:, :, 0]
        bg[pos] = -1e9
        rank = bg.argsort(1, descending=True).argsort(1)
        keep = pos | (rank < NEG_POS * pos.sum(1, keepdim=True))
    lc = (F.cross_entropy(conf[keep], labels[keep], reduction="none") * weight[keep]).sum()
    ll = (F.smooth_l1_loss(loc[pos], target[pos], reduction="none").sum(1) * weight[pos]).sum()
    return (lc + ll) / max(1, int(pos.sum()))


def finetune_detector(
    dataset: Path,
    base: ModelSpec,
    name: str,
    models_dir: Path,
    epochs: int = EPOCHS,
    limit: int | None = None,
    box_teacher: float = BOX_TEACHER,
    threads: int | None = None,
) -> ModelSpec:
    """Re-train `base` (an Ultra-Light RFB graph) on the train split of `dataset` (its first `limit` images),
    on `threads` CPU threads (all this process may use by default); write `<models_dir>/<name>.onnx` and
    `<name>.yaml`."""
    import onnx
    import torch

    from maskwatch.inference.session import cpu_count

    torch.manual_seed(SEED)
    threads = threads or cpu_count()
    torch.set_num_threads(threads)
    rng = np.random.default_rng(SEED)
    model = onnx.load(base.file)
    layout = GraphLayout(model)
    taps = _taps_session(model, [layout.stride8, layout.conf, layout.loc], threads)
    input_name = model.graph.input[0].name
    tail = _tail(layout.weights)
    pre = BatchPreprocessor(base.preprocess)
    size = np.array([base.preprocess.width, base.preprocess.height] * 2, np.float32)

    samples = load_dataset(dataset, split="train", limit=limit)
    frames = [decode_image(s.image.read_bytes()) for s in samples]
    _check_tail(tail, taps, input_name, pre, frames[:4], "rebuilt")

    nomask = [np.asarray([lab == "no_mask" for lab in s.labels], bool) for s in samples]
    style = box_style(base, samples, frames)
    log.info("%s's box style on the train split: %s (dx, dy, sw, sh), taken out of the labels",
             base.name, style)
    plain = [remove_style(s.boxes.astype(np.float32), style) if len(s.boxes) else s.boxes for s in samples]

    def epoch_batches() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """One freshly augmented pass over the train images, in a new order: (stride-8 features, labels,
        box targets, weights) per batch. A matched prior's box target is BOX_TEACHER of the shipped
        graph's own offsets on the same view plus the rest of the labelled face with the shipped
        detector's box style taken out: the dataset teaches which priors hold a face and where it is,
        never how its boxes are drawn, so the re-trained detector keeps the shipped geometry and a
        dataset's box style stays in the spec's `box_adjust` (`maskwatch models calibrate`). Regressing
        to this set's boxes as drawn cost face AP50 0.638 -> 0.375 on photos boxed elsewhere."""
        out = []
        order = rng.permutation(len(samples))
        for i in range(0, len(order), BATCH):
            views = [augment(rng, frames[k], plain[k], nomask[k]) for k in order[i : i + BATCH]]
            x, placed = pre.frames([v[0] for v in views])
            f8, shipped_loc = taps.run([layout.stride8, layout.loc], {input_name: x})
            targets = []
            for (_, b, nm), t in zip(views, placed, strict=True):
                scale = np.array([t.scale_x, t.scale_y] * 2, np.float32)
                pad = np.array([t.pad_x, t.pad_y] * 2, np.float32)
                targets.append(match_priors(layout.priors, (b * scale + pad) / size, nm, layout.variances))
            labels, loc, weights = (np.stack(k) for k in zip(*targets, strict=True))
            mixed = box_teacher * shipped_loc.astype(np.float32) + (1 - box_teacher) * loc
            out.append((f8, labels, mixed, weights))
        return out

    params = [p for m in tail.modules() if isinstance(m, torch.nn.Conv2d) for p in m.parameters()]
    for m in tail.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=LR)
    steps = epochs * ((len(samples) + BATCH - 1) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps, pct_start=0.1)
    log.info(
        "re-training %s from %s on %d train images, %d epochs", base.name, FIRST_TRAINED, len(samples), epochs
    )
    progress = Progress(f"re-training {name}: epoch", epochs, log)
    # The state after every epoch, so an interrupted build resumes there (dropped once the model is out).
    checkpoint = Checkpoint(models_dir / ".checkpoints" / f"{name}.pt",
                            recipe(base) | {"epochs": epochs, "limit": limit, "box_teacher": box_teacher})
    start = 0
    resumed = checkpoint.load()
    if resumed is not None:
        tail.load_state_dict(resumed["tail"])
        opt.load_state_dict(resumed["opt"])
        sched.load_state_dict(resumed["sched"])
        rng.bit_generator.state = resumed["rng"]
        torch.set_rng_state(resumed["torch_rng"])
        start = resumed["epoch"]
        progress.step(f"resumed from the checkpoint at epoch {start}/{epochs}", n=start)
    for epoch in range(start, epochs):
        batches = epoch_batches()
        tail.train()
        for m in tail.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()  # frozen statistics: batches of 16 are too small to re-estimate them
        total = 0.0
        for batch in batches:
            f8, labels, target, weight = (torch.from_numpy(a) for a in batch)
            conf, loc = tail(f8)
            loss = _loss(conf, loc, labels, target, weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        progress.step(f"loss {total / len(batches):.3f}")
        checkpoint.save({"epoch": epoch + 1, "tail": tail.state_dict(), "opt": opt.state_dict(),
                         "sched": sched.state_dict(), "rng": rng.bit_generator.state,
                         "torch_rng": torch.get_rng_state()})

    models_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = models_dir / f"{name}.onnx"
    tmp = onnx_path.with_suffix(".tmp.onnx")
    _write_back(model, tail, tmp)
    _check_tail(
        tail,
        _taps_session(onnx.load(str(tmp)), [layout.stride8, layout.conf, layout.loc], threads),
        input_name,
        pre,
        frames[:4],
        "exported",
    )
    tmp.replace(onnx_path)
    spec = base.model_copy(update={"name": name, "file": onnx_path.name, "box_adjust": None, "source": None})
    save_spec(spec, models_dir / f"{name}.yaml")
    checkpoint.clear()
    log.info("wrote %s and %s.yaml", onnx_path, name)
    return spec.model_copy(update={"file": str(onnx_path)})


def _check_tail(
    tail: Any, taps: Any, input_name: str, pre: BatchPreprocessor, frames: list[np.ndarray], what: str
) -> None:
    """The PyTorch tail and the ONNX graph must agree (else one network is trained and another shipped)."""
    import torch

    x, _ = pre.frames(frames)
    f8, conf, loc = taps.run(None, {input_name: x})[-3:]
    tail.eval()
    with torch.no_grad():
        c, lo = (t.numpy() for t in tail(torch.from_numpy(f8)))
    diff = max(float(np.abs(c - conf).max()), float(np.abs(lo - loc).max()))
    if diff > 1e-3:
        raise RuntimeError(f"{what} detector tail differs from the ONNX graph by {diff:.2g}")


def _write_back(model: onnx.ModelProto, tail: Any, path: Path) -> None:
    """The original graph with its convolution initializers replaced by the trained ones."""
    import onnx
    import torch
    from onnx import numpy_helper

    trained: dict[str, np.ndarray] = {}
    for m in tail.modules():
        if isinstance(m, torch.nn.Conv2d):
            trained[f"{m.onnx_name}.weight"] = m.weight.detach().numpy()
            if m.bias is not None:
                trained[f"{m.onnx_name}.bias"] = m.bias.detach().numpy()
    out = onnx.ModelProto.FromString(model.SerializeToString())
    for init in out.graph.initializer:
        if init.name in trained:
            init.CopyFrom(numpy_helper.from_array(trained.pop(init.name).astype(np.float32), init.name))
    if trained:
        raise RuntimeError(f"trained weights with no place in the graph: {sorted(trained)}")
    onnx.save(out, str(path))


def recipe(base: ModelSpec) -> dict[str, Any]:
    """What a cached fine-tuned detector was built from; any change means it is rebuilt."""
    return RECIPE | {"base": base.name, "base_sha256": base.source.sha256 if base.source else None}
