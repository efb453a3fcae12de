"""ONNX graph surgery: Ultra-Light-Fast RFB-640 face detector to a dynamic-batch "boxes_scores" graph.

The shipped graph (opset 9) already reshapes with the runtime batch (Shape -> Gather), only its
declared input/output shapes pin batch to 1. Its outputs are ``scores`` [1,N,2] (softmaxed
background/face) and ``boxes`` [1,N,4] (decoded, corner-form, normalised). We free the batch axis,
keep the boxes (clipped to 0..1) and expose the face probability as ``scores`` [B,N].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BATCH = "batch"


def _set_dims(value: onnx.ValueInfoProto, dims: list[int | str]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        dim = shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


def convert_rfb(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    graph = model.graph
    # Weights are listed as graph inputs too (old exporter); drop them so only the image is an input.
    init_names = {i.name for i in graph.initializer}
    image_inputs = [onnx.ValueInfoProto.FromString(i.SerializeToString()) for i in graph.input
                    if i.name not in init_names]
    if len(image_inputs) != 1:
        raise ValueError(f"{src.name}: expected one image input, found {[i.name for i in image_inputs]}")
    del graph.input[:]
    graph.input.extend(image_inputs)
    image = graph.input[0]
    c, h, w = (d.dim_value for d in image.type.tensor_type.shape.dim[1:])
    _set_dims(image, [BATCH, c, h, w])

    outputs = {o.name: o for o in graph.output}
    if set(outputs) != {"scores", "boxes"}:
        raise ValueError(f"{src.name}: unexpected outputs {sorted(outputs)}")
    n = outputs["scores"].type.tensor_type.shape.dim[1].dim_value
    # Rename the producers' tensors so the new, contract-shaped outputs can take the public names.
    for node in graph.node:
        node.output[:] = [{"scores": "scores_2class", "boxes": "boxes_raw"}.get(o, o) for o in node.output]
    face_index = numpy_helper.from_array(np.array(1, dtype=np.int64), "face_class_index")
    graph.initializer.append(face_index)
    graph.node.extend(
        [
            helper.make_node("Gather", ["scores_2class", "face_class_index"], ["scores"], axis=2),
            helper.make_node("Clip", ["boxes_raw"], ["boxes"], min=0.0, max=1.0),  # opset-9 Clip
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [BATCH, n, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [BATCH, n]),
        ]
    )
    used = {name for node in graph.node for name in node.input}
    kept = [onnx.TensorProto.FromString(t.SerializeToString()) for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)  # drops BatchNorm's unused num_batches_tracked counters
    del graph.value_info[:]  # stale batch-1 shapes; the checker re-infers
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
