"""Pre-processing as small ONNX graphs, run by the same provider as the models (on a GPU: on the GPU).

Frames then cross PCIe once, as uint8 pixels (a quarter of the float32 input, and the full frame once for
both stages): the detector's resize/normalise and the classifier's face crops are cut from that one
device copy. The graphs do what `maskwatch.inference.preprocess.BatchPreprocessor` does on the host with
OpenCV:

- `frame_input_model`: uint8 BGR frames [N, H, W, 3] of one size -> the detector's float input. The host
  passes the resized content size and the padding (`fit` computes both), so letterbox and stretch share
  the graph and frames of any size share the session.
- `crop_model`: the same frames + face boxes [K, 4] (`crop_rois` of `crop_boxes`) + each box's frame
  index [K] -> the classifier's input [K, ...], by RoiAlign: 4x4 bilinear samples per output pixel around
  where OpenCV's resize samples, averaged (bilinear when enlarging, like INTER_AREA when shrinking).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from maskwatch.inference.preprocess import Transform, fit
from maskwatch.inference.spec import Preprocess

# IR 8: ONNX Runtime releases older than this onnx refuse newer IRs.
OPSET = 16
IR_VERSION = 8
CROP_SAMPLES = 4


def crop_rois(boxes: np.ndarray) -> np.ndarray:
    """`crop_boxes` pixel edges [K, 4] -> `crop_model`'s rois: shifted by half a pixel so the legacy
    RoiAlign mode samples where OpenCV's resize does (pixel centres at +0.5)."""
    return np.asarray(boxes, np.float32) - 0.5


def _normalise_nodes(
    pre: Preprocess, src: str, out: str
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """[.., 3 (BGR), h, w] float pixels -> the spec's colour order, (x - mean) / std, spec layout."""
    inv_std = 1.0 / np.asarray(pre.std, np.float32)
    shift = -np.asarray(pre.mean, np.float32) * inv_std
    consts = [
        helper.make_tensor("order", TensorProto.INT64, [3], [2, 1, 0] if pre.color == "RGB" else [0, 1, 2]),
        helper.make_tensor("scale", TensorProto.FLOAT, [1, 3, 1, 1], inv_std.tolist()),
        helper.make_tensor("shift", TensorProto.FLOAT, [1, 3, 1, 1], shift.tolist()),
    ]
    last = "normalised" if pre.layout == "NHWC" else out
    nodes = [
        helper.make_node("Gather", [src, "order"], ["ordered"], axis=1),
        helper.make_node("Mul", ["ordered", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], [last]),
    ]
    if pre.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [last], [out], perm=[0, 2, 3, 1]))
    return nodes, consts


def _model(
    name: str,
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    pre: Preprocess,
    consts: list[onnx.TensorProto],
    batch: str,
) -> onnx.ModelProto:
    shape: list[str | int] = (
        [batch, 3, pre.height, pre.width] if pre.layout == "NCHW" else [batch, pre.height, pre.width, 3]
    )
    graph = helper.make_graph(
        nodes, name, inputs, [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)], consts
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    onnx.checker.check_model(model)
    return model


def _frames_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info("frames", TensorProto.UINT8, ["N", "H", "W", 3])


def frame_input_model(pre: Preprocess) -> onnx.ModelProto:
    """frames uint8 [N, H, W, 3], sizes int64 [4] (N, 3, content h, content w), pads int64 [8] -> input."""
    norm, consts = _normalise_nodes(pre, "padded", "input")
    consts += [
        helper.make_tensor("no_roi", TensorProto.FLOAT, [0], []),
        helper.make_tensor("no_scales", TensorProto.FLOAT, [0], []),
    ]
    nodes = [
        helper.make_node("Transpose", ["frames"], ["nchw8"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw8"], ["nchw"], to=TensorProto.FLOAT),
        # Bilinear, half-pixel centres, no antialias: OpenCV's INTER_LINEAR, which the host path uses.
        helper.make_node(
            "Resize",
            ["nchw", "no_roi", "no_scales", "sizes"],
            ["resized"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        # Letterbox padding is black pixels (0) before normalising, as on the host.
        helper.make_node("Pad", ["resized", "pads"], ["padded"], mode="constant"),
        *norm,
    ]
    inputs = [
        _frames_input(),
        helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
    ]
    return _model("maskwatch_frame_input", nodes, inputs, pre, consts, "N")


def frame_input_feeds(
    pre: Preprocess, n: int, height: int, width: int, batch: int
) -> tuple[dict[str, np.ndarray], Transform]:
    """`frame_input_model`'s host inputs for `n` frames of `width`x`height`, the batch padded with black
    frames to `batch`; and the transform from input pixels back to frame pixels."""
    tw, th, transform = fit(width, height, pre)
    sizes = np.array([n, 3, th, tw], np.int64)
    pads = np.array([0, 0, 0, 0, batch - n, 0, pre.height - th, pre.width - tw], np.int64)
    return {"sizes": sizes, "pads": pads}, transform


def crop_model(pre: Preprocess) -> onnx.ModelProto:
    """frames uint8 [N, H, W, 3], rois float [K, 4] (x1, y1, x2, y2 pixel edges), index int64 [K] -> input
    [K, ...]: each box stretched to the classifier's size (all shipped classifiers stretch)."""
    if pre.resize != "stretch":
        raise ValueError("crop_model: only `stretch` classifiers can be cropped on the device")
    norm, consts = _normalise_nodes(pre, "crops", "input")
    nodes = [
        helper.make_node("Transpose", ["frames"], ["nchw8"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw8"], ["nchw"], to=TensorProto.FLOAT),
        # A fixed 4x4 samples per output pixel, averaged: bilinear when enlarging a small face, an area
        # average when shrinking one up to 4x. Adaptive sampling (0) and half_pixel are avoided: ONNX
        # Runtime's CUDA kernel has rounded the adaptive count to 0 (NaN crops) and ignored the mode in
        # some releases; the legacy mode with boxes shifted by -0.5 (`crop_rois`) samples the same points.
        helper.make_node(
            "RoiAlign",
            ["nchw", "rois", "index"],
            ["crops"],
            mode="avg",
            output_height=pre.height,
            output_width=pre.width,
            sampling_ratio=CROP_SAMPLES,
            spatial_scale=1.0,
            coordinate_transformation_mode="output_half_pixel",
        ),
        *norm,
    ]
    inputs = [
        _frames_input(),
        helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["K", 4]),
        helper.make_tensor_value_info("index", TensorProto.INT64, ["K"]),
    ]
    return _model("maskwatch_crops", nodes, inputs, pre, consts, "K")
