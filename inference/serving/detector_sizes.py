"""The detector at the input size that fits each frame's aspect (CPU), one session per size in use.

On the CPU the detector's cost is proportional to its input pixels, and the letterbox padding is pure
waste: RFB-640 runs 1.24x faster on a 16:9 frame's 640x384 and 1.6x on a 3:4 portrait's 384x480 than on
640x480 (2 cores, batch 8). On a GPU the detector runs at its one fixed size: there every new input shape
of a session costs seconds of cuDNN planning, and inference is not the bottleneck.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import onnx

from maskwatch.inference.preprocess import BatchPreprocessor
from maskwatch.inference.serving.prior_grid import PriorGrid, fitted_size, prior_grid
from maskwatch.inference.session import OrtModel
from maskwatch.inference.spec import ModelSpec

log = logging.getLogger(__name__)
MAX_SIZES = 8  # sessions kept beside the full-size one: one per camera aspect in use
Sized = tuple[OrtModel, BatchPreprocessor, ModelSpec]


class DetectorSizes:
    def __init__(self, model: OrtModel, spec: ModelSpec, path: Path, threads: int | None) -> None:
        self.model, self.spec, self._threads = model, spec, threads
        self.pre = BatchPreprocessor(spec.preprocess)
        self._graph: onnx.ModelProto | None = None
        self.grid: PriorGrid | None = None
        if spec.preprocess.resize == "letterbox" and model.device_type == "cpu":
            self._graph = onnx.load(str(path))
            self.grid = prior_grid(self._graph)
        self._sized: OrderedDict[tuple[int, int], Sized] = OrderedDict()

    def size_for(self, width: int, height: int) -> tuple[int, int]:
        """The detector input size for a frame of this size."""
        pre = self.spec.preprocess
        if self.grid is None:
            return pre.width, pre.height
        return fitted_size(width, height, pre.width, pre.height, self.grid.step)

    def at(self, size: tuple[int, int]) -> Sized:
        """Session, pre-processor and spec (its input size) for detector input `size`."""
        pre = self.spec.preprocess
        if size == (pre.width, pre.height) or self.grid is None or self._graph is None:
            return self.model, self.pre, self.spec
        if size in self._sized:
            self._sized.move_to_end(size)
            return self._sized[size]
        w, h = size
        sized_pre = pre.model_copy(update={"width": w, "height": h})
        session = OrtModel(
            self.grid.model_for(self._graph, w, h),
            device="cpu",
            max_batch=self.model.max_batch,
            threads=self._threads,
            output_names=self.spec.outputs,
        )
        log.info("detector %s at %dx%d for frames of that aspect", self.spec.name, w, h)
        sized_spec = self.spec.model_copy(update={"preprocess": sized_pre})
        self._sized[size] = (session, BatchPreprocessor(sized_pre), sized_spec)
        if len(self._sized) > MAX_SIZES:
            self._sized.popitem(last=False)
        return self._sized[size]
