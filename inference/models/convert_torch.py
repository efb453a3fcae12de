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


# --- mask-recognition (PyTorch .pth): torchvision's MobileNetV2 features + a small dense head. ---
# torchvision is not installed (its wheels fight the pinned torch), so the blocks are written here with
# torchvision's module layout; ``load_state_dict(strict=True)`` proves the layout matches key for key.


def _conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == out
        layers: list[nn.Module] = [] if expand == 1 else [_conv_bn(inp, hidden, 1, 1)]
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def mobilenet_v2_features() -> nn.Sequential:
    blocks: list[nn.Module] = [_conv_bn(3, 32, 3, 2)]
    inp = 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            blocks.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
            inp = c
    blocks.append(_conv_bn(inp, 1280, 1, 1))
    return nn.Sequential(*blocks)


class RecognitionModel(nn.Module):
    """mask_recognition.networks.RecognitionModel (128x128 input), returning probabilities: the
    original ends in LogSoftmax, so we add the exp its own ``_predict`` applies."""

    def __init__(self) -> None:
        super().__init__()
        self.bottom = mobilenet_v2_features()
        self.top = nn.Sequential(
            nn.Linear(1280 * 4 * 4, 256), nn.ReLU(), nn.Linear(256, 2), nn.LogSoftmax(dim=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottom(x)
        return torch.exp(self.top(x.reshape(x.shape[0], -1)))


def load_recognition_model(pth: Path) -> RecognitionModel:
    model = RecognitionModel()
    state = torch.load(pth, map_location="cpu", weights_only=True)  # plain tensors only, no pickled code
    model.load_state_dict(state, strict=True)
    return model.eval()
