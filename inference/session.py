"""ONNX Runtime sessions: the fastest provider that really initialises (TensorRT -> CUDA -> CPU).

`onnxruntime.get_available_providers()` only says what the installed build was compiled with; CUDA or
TensorRT libraries may still be missing at run time, in which case ORT silently drops the provider. So
the chosen provider is read back from the created session and logged, and a failure falls back to CPU.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from maskwatch.config import Settings
from maskwatch.inference.fp16 import to_fp16

log = logging.getLogger(__name__)

Device = Literal["auto", "cpu", "cuda", "tensorrt"]

_PROVIDER = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def cpu_count() -> int:
    """CPUs this process may run on (cgroup/affinity aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def wanted_providers(device: Device = "auto") -> list[str]:
    """Provider names to try, best first, limited to what this onnxruntime build offers."""
    if device == "auto":
        device = Settings().device
    available = set(ort.get_available_providers())
    order = ["tensorrt", "cuda", "cpu"] if device == "auto" else [device, "cpu"]
    return [_PROVIDER[d] for d in dict.fromkeys(order) if _PROVIDER[d] in available]


_arena_lock = threading.Lock()
_arena_registered = False


def _shared_cpu_arena() -> None:
    """One CPU memory arena for every CPU session of the process (registered once). Each session's own
    arena keeps its high-water mark for good: with the detector at several input sizes (one session per
    camera aspect) and a classifier per flow worker, RSS grew by 250-380 MB per session at batch 16;
    shared, six detector sizes plus the classifier held 980 MB instead of 2.6 GB, at the same speed."""
    global _arena_registered
    with _arena_lock:
        if not _arena_registered:
            arena = ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR
            info = ort.OrtMemoryInfo("Cpu", arena, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's defaults
            _arena_registered = True


def _options(threads: int | None, shared_arena: bool = False) -> ort.SessionOptions:
    so = ort.SessionOptions()
    if shared_arena:
        _shared_cpu_arena()
        so.add_session_config_entry("session.use_env_allocators", "1")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # One model runs at a time per process; all cores go to intra-op parallelism.
    so.intra_op_num_threads = threads or cpu_count()
    so.inter_op_num_threads = 1
    # No busy-waiting between ops: spinning threads burn the cores that fetch/decode, Kafka and the other
    # services on the host need (on a 2-core box it cost the flow 25-50 % more CPU per frame).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # ORT warns about benign exporter quirks on every load
    return so


def _provider_options(
    name: str, input_name: str, input_shape: Sequence[int], max_batch: int, cache_dir: Path | None, fp16: bool
) -> dict[str, Any]:
    if name == "TensorrtExecutionProvider":
        dims = "x".join(str(d) for d in input_shape[1:])
        opts: dict[str, Any] = {
            "trt_fp16_enable": fp16,
            "trt_profile_min_shapes": f"{input_name}:1x{dims}",
            "trt_profile_opt_shapes": f"{input_name}:{max_batch}x{dims}",
            "trt_profile_max_shapes": f"{input_name}:{max_batch}x{dims}",
        }
        if cache_dir is not None:
            # Engine builds take tens of seconds; cache them beside the models.
            cache_dir.mkdir(parents=True, exist_ok=True)
            opts.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(cache_dir),
            )
        return opts
    if name == "CUDAExecutionProvider":
        return cuda_options()
    return {}


def cuda_options() -> dict[str, Any]:
    """CUDA execution provider options of every CUDA session (the GPU bench's raw sessions too)."""
    # EXHAUSTIVE times cuDNN's algorithms once per input shape; each session sees one shape (the device
    # pipeline's padding, `OrtModel.fixed_batch`), so that happens once per session, not per micro-batch.
    # Each session's arena keeps what it reserved, and the search asks for the largest workspace any
    # algorithm wants (up to all free memory): a few sessions then held all of an H100's 80 GB and the next
    # one failed to allocate. So the search keeps to ORT's small workspace and the arena grows by what is
    # asked for.
    return {
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "0",
        "do_copy_in_default_stream": True,
        "arena_extend_strategy": "kSameAsRequested",
    }


class OrtModel:
    """One ONNX model on one provider; `run(batch)` returns its outputs as numpy arrays.

    `source` is a model file or an in-memory model (the device pipeline's pre-processing graphs). On CUDA
    with `fp16` the model runs as its float16 copy (`maskwatch.inference.fp16`); TensorRT builds its own
    fp16 engine.
    """

    def __init__(
        self,
        source: Path | onnx.ModelProto,
        *,
        device: Device = "auto",
        fp16: bool = True,
        max_batch: int = 32,
        threads: int | None = None,
        output_names: Sequence[str] = (),
    ) -> None:
        if isinstance(source, Path) and not source.is_file():
            raise FileNotFoundError(f"ONNX model not found: {source} (run `maskwatch models pull`)")
        self.name = source.name if isinstance(source, Path) else source.graph.name
        self.session = self._create(source, device, fp16, max_batch, threads)
        self.provider: str = self.session.get_providers()[0]
        # On the CPU a batch is split across `threads` single-threaded runs of a second session, in
        # parallel (ONNX Runtime releases the GIL and a session takes concurrent runs): on 2 cores 1.15-1.5x
        # the frames/s of one run with 2 intra-op threads, which wake and sync per operator. Batches of one
        # item still use the multi-threaded session.
        self._parts = threads or cpu_count()
        split = self.provider == "CPUExecutionProvider" and self._parts > 1
        self._solo = self._create(source, "cpu", fp16, max_batch, 1) if split else None
        self._pool = ThreadPoolExecutor(self._parts, f"ort-{self.name}") if split else None
        inp = self.session.get_inputs()[0]
        self.input_name: str = inp.name
        self.input_shape: list[Any] = list(inp.shape)
        self.input_type: str = inp.type
        # A model exported with a fixed batch of 1 is run item by item (still correct, just slower).
        b = inp.shape[0]
        self.max_batch = b if isinstance(b, int) and b > 0 else max_batch
        names = [o.name for o in self.session.get_outputs()]
        missing = [n for n in output_names if n not in names]
        if missing:
            raise ValueError(f"{self.name}: outputs {missing} not in the model (it has {names})")
        self.output_names = list(output_names) or names
        # TensorRT builds fp16 engines itself; on CUDA a model file runs as its fp16 copy (`_create`).
        self.fp16 = fp16 and (
            self.provider == "TensorrtExecutionProvider"
            or (self.provider == "CUDAExecutionProvider" and isinstance(source, Path))
        )
        self._gpu = self.provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        # On CUDA every new input shape costs the session seconds of cuDNN algorithm search, so `run`
        # pads each call to `max_batch` items: one shape (the host path on a GPU fell to 5 frames/s at
        # batch 32 with a classifier batch that changed every call; the device pipeline pads likewise).
        self.fixed_batch = self.provider == "CUDAExecutionProvider" and self.max_batch > 1
        # Where IO binding places values: the provider's device (ORT's device names).
        self.device_type = "cuda" if self._gpu else "cpu"
        log.info(
            "model %s on %s (batch<=%d, fp16=%s, io_binding=%s)",
            self.name,
            self.provider,
            self.max_batch,
            self.fp16,
            self._gpu,
        )

    def _create(
        self, source: Path | onnx.ModelProto, device: Device, fp16: bool, max_batch: int, threads: int | None
    ) -> ort.InferenceSession:
        wanted = wanted_providers(device)
        model = onnx.load(str(source)) if isinstance(source, Path) else source
        inp = next(i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
        dims = inp.type.tensor_type.shape.dim
        shape = [d.dim_value if d.dim_value > 0 else max_batch for d in dims]
        cache = source.parent / "trt-cache" if isinstance(source, Path) else None
        plain = str(source) if isinstance(source, Path) else model.SerializeToString()
        for i, name in enumerate(wanted):
            providers: list[Any] = [
                (n, _provider_options(n, inp.name, shape, max_batch, cache, fp16)) for n in wanted[i:]
            ]
            half = fp16 and name == "CUDAExecutionProvider" and isinstance(source, Path)
            try:
                data = to_fp16(model).SerializeToString() if half else plain
                # CPU sessions share one arena; GPU sessions keep their own device arenas (`cuda_options`).
                options = _options(threads, shared_arena=name == "CPUExecutionProvider")
                sess = ort.InferenceSession(data, options, providers=providers)
            except Exception as exc:  # a broken CUDA/TensorRT install must not stop the camera flow
                log.warning("provider %s failed for %s (%s); trying the next one", name, self.name, exc)
                continue
            got = sess.get_providers()[0]
            if got != name:
                # ORT dropped it silently (e.g. TensorRT listed but libnvinfer missing): the next one is
                # created explicitly, so CUDA still gets its fp16 copy.
                log.warning("provider %s did not initialise for %s (got %s)", name, self.name, got)
                continue
            return sess
        raise RuntimeError(f"no ONNX Runtime provider could load {self.name}")

    def run_bound(self, feeds: dict[str, Any], *, outputs_on_device: bool = False) -> list[Any]:
        """Run on inputs that are numpy arrays (host) or OrtValues (already on the device, e.g. another
        session's output): outputs come back as OrtValues on the device, or as numpy arrays."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, self.device_type if outputs_on_device else "cpu", 0)
        self.session.run_with_iobinding(binding)
        if outputs_on_device:
            return list(binding.get_outputs())
        return [v.numpy() for v in binding.get_outputs()]

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run the model on a batch, in chunks of at most `max_batch`."""
        if batch.shape[0] <= self.max_batch:
            return self._run(batch)
        parts = [self._run(batch[i : i + self.max_batch]) for i in range(0, batch.shape[0], self.max_batch)]
        return [np.concatenate([p[k] for p in parts]) for k in range(len(self.output_names))]

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch)
        n = len(batch)
        if self.fixed_batch and n < self.max_batch:
            padded = np.zeros((self.max_batch, *batch.shape[1:]), batch.dtype)
            padded[:n] = batch
            return [out[:n] for out in self._run_once(padded)]
        return self._run_once(batch)

    def _run_once(self, batch: np.ndarray) -> list[np.ndarray]:
        if self._pool is not None and self._solo is not None and len(batch) > 1:
            solo = self._solo
            parts = np.array_split(batch, min(self._parts, len(batch)))
            outs = list(self._pool.map(lambda p: solo.run(self.output_names, {self.input_name: p}), parts))
            return [np.concatenate([o[k] for o in outs]) for k in range(len(self.output_names))]
        if not self._gpu:
            return list(self.session.run(self.output_names, {self.input_name: batch}))
        # IO binding: one host->device copy in, outputs left on the device until copied out once.
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))
        for name in self.output_names:
            binding.bind_output(name, "cuda", 0)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())
