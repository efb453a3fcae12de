"""Run an SSD-style detector whose priors are constants in its graph (Ultra-Light RFB) at another input
size, so a frame is detected at its own aspect instead of letterboxed into the fixed input.

Why: letterboxing a square frame into RFB-640's 640x480 input leaves a quarter of it black padding, a
16:9 frame a quarter, a 3:4 portrait 43 %, and the convolutions pay for every padded pixel. The network is
convolutional; only the prior boxes (anchor centres and sizes, normalised to the input) depend on the
input size. They are read back from the graph, understood as a grid per feature-map stride (the Ultra-Light
layout), checked to regenerate the graph's own constants exactly, and regenerated for the new size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper


@dataclass(frozen=True)
class Stage:
    stride: int  # input pixels per feature-map cell
    boxes: tuple[float, ...]  # prior sides in input pixels, per cell


@dataclass(frozen=True)
class PriorGrid:
    width: int  # the graph's own input size
    height: int
    stages: tuple[Stage, ...]
    centre_const: str  # Constant node outputs holding centres [1, N, 2] and sizes [1, N, 2]
    size_consts: tuple[str, ...]

    def priors(self, width: int, height: int) -> np.ndarray:
        """[N, 4] centre x, centre y, width, height, normalised to a `width` x `height` input, in the
        order the graph's heads emit them (stage, row, column, box), clipped to 0..1 as Ultra-Light does."""
        rows = []
        for st in self.stages:
            fw, fh = math.ceil(width / st.stride), math.ceil(height / st.stride)
            ys, xs = np.meshgrid((np.arange(fh) + 0.5) / fh, (np.arange(fw) + 0.5) / fw, indexing="ij")
            cells = np.stack([xs.ravel(), ys.ravel()], 1)
            sizes = np.array([[b / width, b / height] for b in st.boxes])
            rows.append(np.concatenate([np.repeat(cells, len(sizes), 0), np.tile(sizes, (len(cells), 1))], 1))
        return np.clip(np.concatenate(rows), 0.0, 1.0).astype(np.float32)

    def model_for(self, model: onnx.ModelProto, width: int, height: int) -> onnx.ModelProto:
        """A copy of `model` (this grid's graph) taking `width` x `height` input."""
        out = onnx.ModelProto()
        out.CopyFrom(model)
        new = self.priors(width, height)
        for node in out.graph.node:
            if node.op_type == "Constant" and node.output[0] in (self.centre_const, *self.size_consts):
                part = new[:, :2] if node.output[0] == self.centre_const else new[:, 2:]
                tensor = node.attribute[0].t
                tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(part[None]), tensor.name))
        del out.graph.value_info[:]  # intermediate shapes of the old size; ONNX Runtime infers them again
        dims = _input(out).type.tensor_type.shape.dim
        dims[2].dim_value, dims[3].dim_value = height, width
        for o in out.graph.output:
            shape = o.type.tensor_type.shape.dim
            if len(shape) >= 2 and shape[1].dim_value == self.count:
                shape[1].dim_value = len(new)
        return out

    @property
    def step(self) -> int:
        """Input sides are rounded up to the coarsest stride, so every stage's cells tile the input as its
        priors assume: where a side is not a multiple (RFB-640's own 480 = 7.5 x 64), the stride-64 priors
        are spread over 8 cells of 60 px while the features sit 64 px apart, and large faces' boxes shift
        by ~4 px per cell from the origin (18 px seen on a 480x480 input). Common aspects lose nothing:
        16:9 -> 640x384, 3:4 -> 384x480, 3:2 -> 640x448; a square gets 512x480."""
        return max(st.stride for st in self.stages)

    @property
    def count(self) -> int:
        return len(self.priors(self.width, self.height))


def _input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    inits = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in inits)


def _stages(centres: np.ndarray, sizes: np.ndarray, width: int, height: int) -> tuple[Stage, ...] | None:
    """Cells are runs of rows with one centre; stages are runs of cells with one box list."""
    change = np.flatnonzero(np.any(np.diff(centres, axis=0) != 0, axis=1)) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(centres)]])
    stages: list[tuple[tuple[float, ...], list[int]]] = []
    for s, e in zip(starts, ends, strict=True):
        boxes = tuple(round(float(b) * width, 3) for b in sizes[s:e, 0])
        if not stages or stages[-1][0] != boxes:
            stages.append((boxes, []))
        stages[-1][1].append(int(s))
    out = []
    for boxes, cells in stages:
        fw = len(np.unique(centres[cells, 0]))
        stride = width / fw
        if stride != int(stride) or math.ceil(height / stride) * fw != len(cells):
            return None
        out.append(Stage(int(stride), boxes))
    return tuple(out)


def prior_grid(model: onnx.ModelProto) -> PriorGrid | None:
    """The graph's prior grid, or None when its priors are not constants laid out as Ultra-Light's (then
    the detector runs at its fixed size only)."""
    dims = _input(model).type.tensor_type.shape.dim
    if len(dims) != 4 or dims[2].dim_value <= 0 or dims[3].dim_value <= 0:
        return None
    height, width = dims[2].dim_value, dims[3].dim_value
    arrays = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in model.graph.node
        if n.op_type == "Constant" and n.attribute and n.attribute[0].type == onnx.AttributeProto.TENSOR
    }
    grids = {k: a[0] for k, a in arrays.items() if a.ndim == 3 and a.shape[0] == 1 and a.shape[2] == 2}
    grids = {k: a for k, a in grids.items() if len(a) >= 100}
    if not grids:
        return None
    # Sizes repeat a handful of values; centres take a value per feature-map column/row.
    size_names = tuple(k for k, a in grids.items() if len(np.unique(a[:, 0])) <= 32)
    centre_names = [k for k in grids if k not in size_names]
    if len(centre_names) != 1 or not size_names:
        return None
    centres = grids[centre_names[0]]
    sizes = grids[size_names[0]]
    if any(not np.array_equal(grids[k], sizes) for k in size_names) or len(sizes) != len(centres):
        return None
    stages = _stages(centres, sizes, width, height)
    if stages is None:
        return None
    grid = PriorGrid(width, height, stages, centre_names[0], size_names)
    own = grid.priors(width, height)
    if own.shape != (len(centres), 4) or not (
        np.allclose(own[:, :2], centres, atol=1e-6) and np.allclose(own[:, 2:], sizes, atol=1e-6)
    ):
        return None
    return grid


def fitted_size(src_w: int, src_h: int, width: int, height: int, step: int) -> tuple[int, int]:
    """The input size for a `src_w` x `src_h` frame: its letterboxed content inside `width` x `height`,
    sides rounded up to `step` (at most the full input), so the scale is the letterbox's own."""
    s = min(width / src_w, height / src_h)
    w = min(width, math.ceil(round(src_w * s) / step) * step)
    h = min(height, math.ceil(round(src_h * s) / step) * step)
    return w, h
