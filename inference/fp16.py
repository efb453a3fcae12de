"""float16 copies of float32 ONNX models, for GPU providers: half the memory traffic, tensor cores."""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float16 weights and compute, float32 inputs/outputs kept (Casts at the edges), so it
    is a drop-in replacement. Resize/Upsample scales stay float32, as ONNX requires."""
    m = copy.deepcopy(model)
    g = m.graph
    keep = {name for n in g.node if n.op_type in ("Resize", "Upsample") for name in n.input[1:]}
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for n in g.node:
        for a in n.attribute:
            if a.name == "value" and a.t.data_type == TensorProto.FLOAT and n.output[0] not in keep:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16)))
            if n.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.FLOAT16
    initializers = {i.name for i in g.initializer}
    casts_in, casts_out = [], []
    for inp in g.input:
        if inp.type.tensor_type.elem_type == TensorProto.FLOAT and inp.name not in initializers:
            half = inp.name + "_fp16"
            for n in g.node:
                n.input[:] = [half if x == inp.name else x for x in n.input]
            casts_in.append(helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16))
    for out in g.output:
        if out.type.tensor_type.elem_type == TensorProto.FLOAT:
            half = out.name + "_fp16"
            for n in g.node:
                n.input[:] = [half if x == out.name else x for x in n.input]
                n.output[:] = [half if x == out.name else x for x in n.output]
            casts_out.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT))
    nodes = [*casts_in, *g.node, *casts_out]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # float32 shape annotations inside would now be wrong
    return m
