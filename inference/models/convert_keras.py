"""Rebuild a Keras 2 (.h5) image model in PyTorch from its saved config and weights, read with h5py.

TensorFlow is not needed (nor installable next to the project's pins); the h5 file holds the layer
graph as JSON (``model_config``) and every weight by layer. We interpret that graph with the handful
of layer types the shipped models use, in NCHW, with TensorFlow's padding rules, then export ONNX.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {"linear", "relu", "softmax", "sigmoid"}


def _activate(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "softmax":
        return F.softmax(x, dim=-1)
    if name == "sigmoid":
        return torch.sigmoid(x)
    return x


def tf_same_pads(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]
                 ) -> tuple[int, int, int, int]:
    """TensorFlow 'same' padding (top, bottom, left, right): the odd pixel goes after, unlike PyTorch."""
    pads: list[int] = []
    for size, k, s in zip(x.shape[-2:], kernel, stride, strict=True):
        out = -(-int(size) // s)
        total = max((out - 1) * s + k - int(size), 0)
        pads += [total // 2, total - total // 2]
    top, bottom, left, right = pads
    return top, bottom, left, right


def same_padding(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]
                 ) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input (zero-padded if TF's padding is asymmetric) and the symmetric padding to give the conv.

    Symmetric cases (all stride-1 layers) go into the conv itself: a separate Pad node breaks ONNX
    Runtime's blocked-layout fusion on CPU."""
    top, bottom, left, right = tf_same_pads(x, kernel, stride)
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom)), (0, 0)


class KerasGraph(nn.Module):
    """A Keras functional/sequential model replayed in PyTorch. Input NCHW float; output as Keras's."""

    def __init__(self, h5_path: Path) -> None:
        super().__init__()
        with h5py.File(h5_path, "r") as f:
            if "model_config" not in f.attrs:
                raise ValueError(f"{h5_path.name}: not a Keras model file (no model_config)")
            raw = f.attrs["model_config"]
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            weights_root = f.get("model_weights", f)
            self.layers: list[dict[str, Any]] = []
            self.params = nn.ParameterDict()
            for layer in config["config"]["layers"]:
                name = layer["config"]["name"]
                group = weights_root.get(name, None)
                arrays: list[np.ndarray] = []
                if group is not None:
                    for wname in group.attrs.get("weight_names", []):
                        wname = wname.decode() if isinstance(wname, bytes) else wname
                        arrays.append(np.asarray(group[wname]))
                self._add(layer, arrays)
        self.input_name = self.layers[0]["name"]
        self.output_name = config["config"]["output_layers"][0][0]

    def _param(self, key: str, array: np.ndarray) -> None:
        self.params[key] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)),
                                        requires_grad=False)

    def _add(self, layer: dict[str, Any], w: list[np.ndarray]) -> None:
        kind, cfg = layer["class_name"], layer["config"]
        name = cfg["name"]
        inbound = [n[0] for n in layer["inbound_nodes"][0]] if layer.get("inbound_nodes") else []
        key = name.replace(".", "_")
        entry: dict[str, Any] = {"name": name, "kind": kind, "inputs": inbound, "key": key, "cfg": cfg}
        if cfg.get("activation", "linear") not in _ACTIVATIONS:
            raise ValueError(f"layer {name}: unsupported activation {cfg['activation']!r}")
        if kind == "Conv2D":
            self._param(key + "_w", w[0].transpose(3, 2, 0, 1))  # HWIO -> OIHW
            if cfg["use_bias"]:
                self._param(key + "_b", w[1])
        elif kind == "DepthwiseConv2D":
            if cfg.get("depth_multiplier", 1) != 1:
                raise ValueError(f"layer {name}: depth_multiplier != 1 is not supported")
            self._param(key + "_w", w[0].transpose(2, 3, 0, 1))  # H,W,C,1 -> C,1,H,W
            if cfg["use_bias"]:
                self._param(key + "_b", w[1])
        elif kind == "BatchNormalization":
            it = iter(w)
            channels = w[-1].shape[0]
            gamma = next(it) if cfg.get("scale", True) else np.ones(channels, np.float32)
            beta = next(it) if cfg.get("center", True) else np.zeros(channels, np.float32)
            mean, var = next(it), next(it)
            # Folded to one multiply-add: the exported graph is the same as a fused BatchNorm.
            scale = gamma / np.sqrt(var + cfg["epsilon"])
            self._param(key + "_scale", scale)
            self._param(key + "_shift", beta - mean * scale)
        elif kind == "Dense":
            self._param(key + "_w", w[0].T)
            if cfg["use_bias"]:
                self._param(key + "_b", w[1])
        elif kind not in {
            "InputLayer", "ZeroPadding2D", "ReLU", "Activation", "Add", "MaxPooling2D", "AveragePooling2D",
            "GlobalMaxPooling2D", "GlobalAveragePooling2D", "Flatten", "Dropout",
        }:
            raise ValueError(f"layer {name}: unsupported Keras layer type {kind}")
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ValueError(f"layer {name}: only channels_last Keras models are supported")
        self.layers.append(entry)

    def _run(self, e: dict[str, Any], xs: list[torch.Tensor]) -> torch.Tensor:
        kind, cfg, key = e["kind"], e["cfg"], e["key"]
        x = xs[0]
        if kind in {"InputLayer", "Dropout"}:
            return x
        if kind == "ZeroPadding2D":
            (top, bottom), (left, right) = cfg["padding"]
            return F.pad(x, (left, right, top, bottom))
        if kind in {"Conv2D", "DepthwiseConv2D"}:
            kernel, stride = tuple(cfg["kernel_size"]), tuple(cfg["strides"])
            padding = (0, 0)
            if cfg["padding"] == "same":
                x, padding = same_padding(x, kernel, stride)
            groups = x.shape[1] if kind == "DepthwiseConv2D" else 1
            bias = self.params[key + "_b"] if cfg["use_bias"] else None
            y = F.conv2d(x, self.params[key + "_w"], bias, stride=stride, padding=padding, groups=int(groups))
            return _activate(y, cfg["activation"])
        if kind == "BatchNormalization":
            scale, shift = self.params[key + "_scale"], self.params[key + "_shift"]
            return x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1)
        if kind == "ReLU":
            if cfg.get("negative_slope", 0.0) or cfg.get("threshold", 0.0):
                raise ValueError(f"layer {e['name']}: leaky/thresholded ReLU is not supported")
            max_value = cfg.get("max_value")
            return torch.clamp(x, 0.0, float(max_value)) if max_value is not None else F.relu(x)
        if kind == "Activation":
            return _activate(x, cfg["activation"])
        if kind == "Add":
            out = xs[0]
            for other in xs[1:]:
                out = out + other
            return out
        if kind in {"MaxPooling2D", "AveragePooling2D"}:
            if cfg["padding"] != "valid":
                raise ValueError(f"layer {e['name']}: only 'valid' pooling is supported")
            pool = F.max_pool2d if kind == "MaxPooling2D" else F.avg_pool2d
            return pool(x, tuple(cfg["pool_size"]), tuple(cfg["strides"]))
        if kind == "GlobalMaxPooling2D":
            return torch.amax(x, dim=(2, 3))
        if kind == "GlobalAveragePooling2D":
            return torch.mean(x, dim=(2, 3))
        if kind == "Flatten":
            # Keras flattens NHWC; keep its element order so the next Dense's weights line up.
            if x.dim() == 4:
                x = x.permute(0, 2, 3, 1)
            return x.reshape(x.shape[0], -1)
        if kind == "Dense":
            bias = self.params[key + "_b"] if cfg["use_bias"] else None
            return _activate(F.linear(x, self.params[key + "_w"], bias), cfg["activation"])
        raise AssertionError(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor] = {self.input_name: x}
        for e in self.layers:
            if e["name"] == self.input_name:
                continue
            values[e["name"]] = self._run(e, [values[i] for i in e["inputs"]])
        return values[self.output_name]


class PairNormalized(nn.Module):
    """Two independent sigmoid outputs rescaled to sum to 1, so the engine's softmax decoder reads them.

    The argmax (the original's decision rule, ``pred[0] < pred[1]``) is unchanged."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        return y / torch.clamp(y.sum(dim=1, keepdim=True), min=1e-6)
