"""Export a PyTorch module to ONNX with a dynamic batch axis, and check it against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

OPSET = 17


def export(module: nn.Module, dst: Path, input_shape: tuple[int, int, int], output_names: list[str]) -> None:
    """Write ``module`` (input [B,*input_shape]) as ONNX with batch as the symbolic axis ``batch``."""
    module.eval()
    example = torch.zeros((2, *input_shape), dtype=torch.float32)
    dynamic = {"input": {0: "batch"}} | {name: {0: "batch"} for name in output_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module, (example,), str(dst), input_names=["input"], output_names=output_names,
            dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )


def torch_outputs(module: nn.Module, batch: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
    outs = out if isinstance(out, tuple | list) else (out,)
    return [o.numpy() for o in outs]
