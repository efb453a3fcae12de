"""OpenCV's res10 300x300 SSD face detector (Caffe) rebuilt in PyTorch and exported as "boxes_scores".

The layer graph comes from ``deploy.prototxt`` (protobuf text format) and the weights from the
``.caffemodel`` (protobuf binary), both parsed here: no Caffe install is needed, and OpenCV 5 dropped
its Caffe importer. SSD's ``DetectionOutput`` (decode + NMS) is replaced by the decode alone (the
engine does NMS per batch); the ``PriorBox`` layers become one constant computed as Caffe does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 300
MEAN_BGR = (104.0, 177.0, 123.0)
_TOKEN = re.compile(r'"[^"]*"|[{}:]|[^\s{}:"]+')


def parse_prototxt(text: str) -> dict[str, list[Any]]:
    """Protobuf text format to nested dicts; every field maps to the list of its values."""
    tokens = _TOKEN.findall(re.sub(r"#[^\n]*", "", text))
    pos = 0

    def block() -> dict[str, list[Any]]:
        nonlocal pos
        out: dict[str, list[Any]] = {}
        while pos < len(tokens) and tokens[pos] != "}":
            key = tokens[pos]
            pos += 1
            if tokens[pos] == ":":
                pos += 1
            if tokens[pos] == "{":
                pos += 1
                value: Any = block()
                pos += 1  # "}"
            else:
                raw = tokens[pos]
                pos += 1
                value = raw.strip('"') if raw.startswith('"') else _number(raw)
            out.setdefault(key, []).append(value)
        return out

    return block()


def _number(raw: str) -> Any:
    if raw in ("true", "false"):
        return raw == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw  # enum names (MAX, SUM, CENTER_SIZE, ...)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """Protobuf wire format: (field number, wire type, value) in order; length-delimited stay bytes."""
    out: list[tuple[int, int, Any]] = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"caffemodel: unsupported protobuf wire type {wire}")
        out.append((field, wire, value))
    return out


def _blob(buf: bytes) -> np.ndarray:
    shape: list[int] = []
    legacy: dict[int, int] = {}
    data: list[np.ndarray] = []
    for field, wire, value in _fields(buf):
        if field == 5:  # data: packed (wire 2) or one float per field (wire 5)
            data.append(np.frombuffer(value, dtype="<f4"))
        elif field == 7:  # BlobShape { repeated int64 dim = 1 [packed] }
            for f2, w2, v2 in _fields(value):
                if f2 == 1 and w2 == 2:
                    pos = 0
                    while pos < len(v2):
                        d, pos = _varint(v2, pos)
                        shape.append(d)
                elif f2 == 1:
                    shape.append(v2)
        elif field in (1, 2, 3, 4) and wire == 0:  # legacy num/channels/height/width
            legacy[field] = value
    array = np.concatenate(data) if data else np.zeros(0, np.float32)
    dims = shape or [legacy.get(i, 1) for i in (1, 2, 3, 4)]
    return array.reshape(dims).astype(np.float32)


def read_caffemodel(path: Path) -> dict[str, list[np.ndarray]]:
    """Weights by layer name from a Caffe ``NetParameter`` (current ``layer`` format)."""
    weights: dict[str, list[np.ndarray]] = {}
    for field, _, value in _fields(path.read_bytes()):
        if field == 2:
            raise ValueError(f"{path.name}: old V1 Caffe layer format is not supported")
        if field != 100:
            continue
        name, blobs = "", []
        for f2, _, v2 in _fields(value):
            if f2 == 1:
                name = v2.decode()
            elif f2 == 7:
                blobs.append(_blob(v2))
        if blobs:
            weights[name] = blobs
    return weights


def prior_boxes(p: dict[str, list[Any]], fmap: tuple[int, int], image: int) -> np.ndarray:
    """Caffe SSD PriorBox for one feature map: [H*W*K, 4] corner-form boxes in 0..1 (clip off)."""
    min_size, max_size = float(p["min_size"][0]), p.get("max_size", [None])[0]
    ratios = [1.0]
    for ar in p.get("aspect_ratio", []):
        for r in (float(ar), 1.0 / float(ar)) if _one(p, "flip", True) else (float(ar),):
            if all(abs(r - q) > 1e-6 for q in ratios):
                ratios.append(r)
    step, offset = float(_one(p, "step", image / fmap[1])), float(_one(p, "offset", 0.5))
    sizes: list[tuple[float, float]] = [(min_size, min_size)]
    if max_size is not None:
        s = float(np.sqrt(min_size * float(max_size)))
        sizes.append((s, s))
    sizes += [(min_size * np.sqrt(r), min_size / np.sqrt(r)) for r in ratios[1:]]
    boxes = []
    for y in range(fmap[0]):
        for x in range(fmap[1]):
            cx, cy = (x + offset) * step, (y + offset) * step
            boxes += [[(cx - w / 2) / image, (cy - h / 2) / image, (cx + w / 2) / image, (cy + h / 2) / image]
                      for w, h in sizes]
    return np.asarray(boxes, dtype=np.float32)


def _one(d: dict[str, list[Any]], key: str, default: Any) -> Any:
    return d.get(key, [default])[0]


class CaffeSSD(nn.Module):
    """Input [B,3,300,300] BGR minus the mean; outputs boxes [B,N,4] (x1,y1,x2,y2 in 0..1), scores [B,N]."""

    def __init__(self, prototxt: Path, caffemodel: Path) -> None:
        super().__init__()
        weights = read_caffemodel(caffemodel)
        all_layers = parse_prototxt(prototxt.read_text())["layer"]
        # Drop PriorBox/DetectionOutput and everything fed only by them (the priors' Concat).
        self.layers: list[dict[str, list[Any]]] = []
        skipped: set[str] = set()
        for ly in all_layers:
            if ly["type"][0] in {"PriorBox", "DetectionOutput"} or skipped & set(ly["bottom"]):
                skipped.update(ly["top"])
            else:
                self.layers.append(ly)
        self.params = nn.ParameterDict()
        for layer in self.layers:
            name = layer["name"][0]
            if layer["type"][0] in {"Convolution", "BatchNorm", "Scale", "Normalize"} and name not in weights:
                raise ValueError(f"{caffemodel.name}: no weights for layer {name}")
            for i, blob in enumerate(weights.get(name, [])):
                param = nn.Parameter(torch.from_numpy(blob), requires_grad=False)
                self.params[f"{self._key(name)}_{i}"] = param
        # Prior boxes need each source feature map's size: run the layers once on a dummy image.
        with torch.no_grad():
            blobs = self._blobs(torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE))
        priors, variances = [], []
        for layer in all_layers:
            if layer["type"][0] == "PriorBox":
                p = layer["prior_box_param"][0]
                fmap = tuple(blobs[layer["bottom"][0]].shape[-2:])
                boxes = prior_boxes(p, (int(fmap[0]), int(fmap[1])), INPUT_SIZE)
                priors.append(boxes)
                variances.append(np.tile(np.asarray(p["variance"], np.float32), (len(boxes), 1)))
        self.register_buffer("priors", torch.from_numpy(np.concatenate(priors)))
        self.register_buffer("variances", torch.from_numpy(np.concatenate(variances)))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "_")

    def _p(self, name: str, i: int) -> torch.Tensor:
        return self.params[f"{self._key(name)}_{i}"]

    def _run(self, layer: dict[str, list[Any]], xs: list[torch.Tensor]) -> torch.Tensor:
        kind, name, x = layer["type"][0], layer["name"][0], xs[0]
        if kind == "Convolution":
            p = layer["convolution_param"][0]
            bias = self._p(name, 1) if _one(p, "bias_term", True) else None
            return F.conv2d(x, self._p(name, 0), bias, stride=_one(p, "stride", 1), padding=_one(p, "pad", 0),
                            dilation=_one(p, "dilation", 1), groups=_one(p, "group", 1))
        if kind == "BatchNorm":
            eps = _one(_one(layer, "batch_norm_param", {}), "eps", 1e-5)
            factor = float(self._p(name, 2).reshape(-1)[0]) if f"{self._key(name)}_2" in self.params else 1.0
            factor = 1.0 / factor if factor != 0 else 0.0
            mean, var = self._p(name, 0).reshape(-1) * factor, self._p(name, 1).reshape(-1) * factor
            return (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
        if kind == "Scale":
            y = x * self._p(name, 0).reshape(1, -1, 1, 1)
            if _one(_one(layer, "scale_param", {}), "bias_term", False):
                y = y + self._p(name, 1).reshape(1, -1, 1, 1)
            return y
        if kind == "ReLU":
            slope = _one(_one(layer, "relu_param", {}), "negative_slope", 0.0)
            return F.leaky_relu(x, slope) if slope else F.relu(x)
        if kind == "Pooling":
            p = layer["pooling_param"][0]
            if _one(p, "pool", "MAX") != "MAX":
                raise ValueError(f"{name}: only MAX pooling is supported")
            # Caffe rounds the output size up.
            return F.max_pool2d(x, _one(p, "kernel_size", 1), _one(p, "stride", 1), _one(p, "pad", 0),
                                ceil_mode=True)
        if kind == "Eltwise":
            if _one(_one(layer, "eltwise_param", {}), "operation", "SUM") != "SUM":
                raise ValueError(f"{name}: only SUM Eltwise is supported")
            out = xs[0]
            for other in xs[1:]:
                out = out + other
            return out
        if kind == "Normalize":
            eps = _one(_one(layer, "norm_param", {}), "eps", 1e-10)
            norm = torch.sqrt(torch.sum(x * x, dim=1, keepdim=True) + eps)
            return x / norm * self._p(name, 0).reshape(1, -1, 1, 1)
        if kind == "Permute":
            return x.permute(*layer["permute_param"][0]["order"])
        if kind == "Flatten":
            return x.reshape(x.shape[0], -1)
        if kind == "Concat":
            return torch.cat(xs, dim=_one(_one(layer, "concat_param", {}), "axis", 1))
        if kind == "Reshape":
            dims = layer["reshape_param"][0]["shape"][0]["dim"]
            return x.reshape([x.shape[i] if d == 0 else d for i, d in enumerate(dims)])
        if kind == "Softmax":
            return F.softmax(x, dim=_one(_one(layer, "softmax_param", {}), "axis", 1))
        raise ValueError(f"{name}: unsupported Caffe layer type {kind}")

    def _blobs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        blobs: dict[str, torch.Tensor] = {"data": x}
        for layer in self.layers:
            blobs[layer["top"][0]] = self._run(layer, [blobs[b] for b in layer["bottom"]])
        return blobs

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        blobs = self._blobs(x)
        loc = blobs["mbox_loc"].reshape(x.shape[0], -1, 4)
        conf = blobs["mbox_conf_flatten"].reshape(x.shape[0], -1, 2)
        # SSD CENTER_SIZE decoding, as Caffe's DetectionOutput does before NMS.
        p, v = self.get_buffer("priors"), self.get_buffer("variances")
        pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
        pcx, pcy = (p[:, 0] + p[:, 2]) / 2, (p[:, 1] + p[:, 3]) / 2
        cx = pcx + loc[..., 0] * v[:, 0] * pw
        cy = pcy + loc[..., 1] * v[:, 1] * ph
        w = pw * torch.exp(loc[..., 2] * v[:, 2])
        h = ph * torch.exp(loc[..., 3] * v[:, 3])
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
        return torch.clamp(boxes, 0.0, 1.0), conf[..., 1]
