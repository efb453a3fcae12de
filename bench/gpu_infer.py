"""GPU inference benchmark (``bench/gpu.sh`` runs it on a lent H100/H200): 1024x1024 frames, batch
1..64, on CUDA (fp16 and fp32) / TensorRT / CPU, with the served models (``engine.default_models``).

Needs numpy, OpenCV, onnx, pydantic, PyYAML, Pillow and onnxruntime(-gpu) only (plus this repo's
``inference`` package), never polars, bytewax or Kafka. What is timed, per provider config and batch:

- ``det_model``: the detector alone on a ready input tensor already on the device, outputs left there
  (the accelerator's ceiling for this model);
- ``cls_model``: the classifier alone on ready face crops on the device (faces/s);
- ``det+cls_model``: both, one after the other, the classifier on as many crops as the detector finds
  per frame: inference alone, frames/s;
- ``gpu_pipeline``: host uint8 BGR frames -> one host->device copy -> resize/normalise as an ONNX graph
  on the device -> detector -> boxes back on the host, decoded and NMS'd (no JPEG decode);
- ``engine``: our ``InferenceEngine`` as the flow runs it: on a GPU its device pipeline (frames up once
  through a pinned buffer, pre-processing and crops on the device, fp16 models); ``engine_host`` the same
  engine with host (OpenCV) pre-processing, the path before; ``engine_x2`` two engines in two threads;
- ``decode+engine`` (``bench.decode_infer``): the flow's inner loop, JPEG decode on a thread pool then the
  engine, in 1 and 4 processes, against the JPEG-decode ceiling of all cores;
and the CPU's ceilings on this host: JPEG decode and CPU preprocessing, serial and threaded. With
``--dataset`` (a folder of held-out photos + VOC annotations) the served engine's accuracy on the GPU is
compared with the CPU engine's on the same photos.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from maskwatch.inference.fp16 import to_fp16
from maskwatch.inference.gpu.device_graphs import frame_input_feeds, frame_input_model
from maskwatch.inference.session import cuda_options

from bench import decode_infer
from bench.images import folder_images, load_frames
from bench.timing import machine, rate

CONFIGS = ("cuda_fp16", "cuda_fp32", "trt_fp16", "cpu")
# The engine runs as served: on CUDA its models are fp16 copies, so it is timed under cuda_fp16.
ENGINE_DEVICE = {"cuda_fp16": "cuda", "trt_fp16": "tensorrt", "cpu": "cpu"}
_PROVIDER = {
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def ort_info() -> dict[str, Any]:
    """What ONNX Runtime offers here. CUDA/cuDNN libraries from pip's nvidia-* packages are loaded first
    (onnxruntime-gpu does not find them on its own)."""
    import onnxruntime as ort

    preload = "n/a"
    if "CUDAExecutionProvider" in ort.get_available_providers():
        try:
            ort.preload_dlls()
            preload = "ok"
        except Exception as exc:  # older wheels or no nvidia-* packages: let PyTorch load them
            preload = f"failed ({exc}); "
            try:
                import torch  # its import loads the CUDA/cuDNN libraries it ships with

                preload += f"torch {torch.__version__} imported"
            except ImportError:
                preload += "no torch either"
    return {
        "version": ort.__version__,
        "device": ort.get_device(),
        "preload_dlls": preload,
        "providers": ort.get_available_providers(),
        "file": getattr(ort, "__file__", ""),
    }


def _nvidia_smi(query: str, empty: str) -> str:
    """One `nvidia-smi --query-gpu` answer; `empty` when it says nothing, or why it could not run."""
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        return out.strip() or empty
    except (OSError, subprocess.TimeoutExpired):
        return "nvidia-smi not available"


def gpu_name() -> str:
    return _nvidia_smi("name,memory.total", "no GPU reported")


def gpu_memory_used() -> str:
    return _nvidia_smi("memory.used", "?")


# --- model rewriting -----------------------------------------------------------------------------------


# --- sessions ------------------------------------------------------------------------------------------


class Session:
    """One ORT session on one config, run with IO binding on device-resident values."""

    def __init__(self, model: Any, config: str, max_batch: int, cache: Path) -> None:
        import onnxruntime as ort

        self.ort = ort
        kind, precision = config.split("_") if "_" in config else (config, "fp32")
        name = _PROVIDER[kind]
        opts: dict[str, Any] = {}
        if kind == "trt":
            inp = model.graph.input[0]
            dims = "x".join(str(d.dim_value) for d in inp.type.tensor_type.shape.dim[1:])
            cache.mkdir(parents=True, exist_ok=True)
            opts = {
                "trt_fp16_enable": precision == "fp16",
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                "trt_profile_min_shapes": f"{inp.name}:1x{dims}",
                "trt_profile_opt_shapes": f"{inp.name}:{min(32, max_batch)}x{dims}",
                "trt_profile_max_shapes": f"{inp.name}:{max_batch}x{dims}",
            }
        elif kind == "cuda":
            opts = cuda_options()  # the engine's own (maskwatch.inference.session)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        providers: list[Any] = [(name, opts)] + ([_PROVIDER["cuda"]] if kind == "trt" else [])
        providers.append(_PROVIDER["cpu"])
        self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=providers)
        self.provider = self.sess.get_providers()[0]
        self.device = "cpu" if self.provider == _PROVIDER["cpu"] else "cuda"
        self.input = self.sess.get_inputs()[0].name
        self.outputs = [o.name for o in self.sess.get_outputs()]

    def value(self, array: np.ndarray) -> Any:
        """A host array as an OrtValue on this session's device (one copy)."""
        return self.ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def bind(
        self, value: Any, outputs_on_host: bool = False, host_inputs: dict[str, np.ndarray] | None = None
    ) -> Any:
        b = self.sess.io_binding()
        b.bind_ortvalue_input(self.input, value)
        for name, array in (host_inputs or {}).items():
            b.bind_cpu_input(name, array)
        for o in self.outputs:
            b.bind_output(o, "cpu" if outputs_on_host else self.device, 0)
        return b

    def run(self, binding: Any) -> None:
        self.sess.run_with_iobinding(binding)


# --- measurements --------------------------------------------------------------------------------------


def _row(
    base: dict[str, Any], stage: str, batch: int, sec: float, frames: int = 0, faces: int = 0, **extra: Any
) -> dict[str, Any]:
    """One timed measurement: `frames` and/or `faces` handled per call of `sec` seconds."""
    row = {**base, "stage": stage, "batch": batch}
    if frames:
        row["frames_per_s"] = round(frames / sec, 1)
    if faces:
        row["faces_per_s"] = round(faces / sec, 1)
    return row | extra | {"ms_per_call": round(sec * 1e3, 2)}


def cpu_ceilings(frames: Sequence[np.ndarray], pre: Any, min_s: float) -> list[dict[str, Any]]:
    """JPEG decode and CPU resize+normalise of 1024x1024 frames, one thread and all cores."""
    from maskwatch.inference.preprocess import BatchPreprocessor

    jpegs = decode_infer.encode_jpegs(frames)
    threads = os.cpu_count() or 1

    def prep(frame: np.ndarray) -> np.ndarray:
        return BatchPreprocessor(pre).frames([frame])[0]

    def serial(fn: Callable[[Any], Any], work: list[Any]) -> None:
        for x in work:
            fn(x)

    rows = []
    stages: list[tuple[str, Callable[[Any], Any], list[Any]]] = [
        ("jpeg_decode", decode_infer.decode, jpegs),
        ("cpu_preprocess", prep, list(frames)),
    ]
    with ThreadPoolExecutor(threads) as pool:
        for stage, fn, items in stages:
            n = max(len(items), threads * 4)
            work = [items[i % len(items)] for i in range(n)]
            sec, _ = rate(partial(serial, fn, work), min_s, 1)
            rows.append({"stage": stage, "threads": 1, "frames_per_s": round(n / sec, 1)})
            sec, _ = rate(partial(lambda f, w: list(pool.map(f, w)), fn, work), min_s, 1)
            rows.append({"stage": stage, "threads": threads, "frames_per_s": round(n / sec, 1)})
    return rows


def _pageable_upload(pre: Session, host: np.ndarray, feeds: dict[str, np.ndarray]) -> Any:
    return pre.bind(pre.value(host), host_inputs=feeds)


def pipeline_breakdown(
    pre: Session,
    det: Session,
    host: np.ndarray,
    feeds: dict[str, np.ndarray],
    t: Any,
    det_spec: Any,
    min_s: float,
    base: dict[str, Any],
) -> list[dict[str, Any]]:
    """Where a gpu_pipeline call spends its time, step by step (each timed alone, synchronously)."""
    from maskwatch.inference.postprocess import decode_detector, select_faces

    batch = host.shape[0]
    up = pre.value(host)
    pb = pre.bind(up, host_inputs=feeds)
    pre.run(pb)
    on_dev = pb.get_outputs()[0]
    db_dev = det.bind(on_dev)
    db_host = det.bind(on_dev, outputs_on_host=True)
    det.run(db_host)
    outs = [o.numpy() for o in db_host.get_outputs()]

    def post() -> None:
        for b, sc in decode_detector(outs, det_spec):
            select_faces(
                b, sc, t, score_threshold=det_spec.score_threshold, nms_iou=det_spec.nms_iou, max_faces=64
            )

    from maskwatch.inference.gpu.pinned import pinned_empty

    staging, pinned = pinned_empty(host.shape)
    np.copyto(staging, host)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("h2d_pageable", partial(pre.value, host)),
        ("h2d_pinned" if pinned else "h2d_unpinned", partial(pre.value, staging)),
        ("preprocess_graph", partial(pre.run, pb)),
        ("detector", partial(det.run, db_dev)),
        ("detector+d2h", partial(det.run, db_host)),
        ("decode+nms_cpu", post),
        ("np_stack", partial(np.stack, list(host))),
    ]
    rows = []
    for name, fn in steps:
        sec, _ = rate(fn, min_s)
        rows.append(_row(base, f"step:{name}", batch, sec, frames=batch))
    return rows


def bench_config(
    config: str,
    frames: Sequence[np.ndarray],
    batches: Sequence[int],
    specs: tuple[Any, Any],
    models_dir: Path,
    min_s: float,
    deadline: float,
    scratch: Path,
    rows: list[dict[str, Any]],
    save: Callable[[], None],
    breakdown_batch: int = 64,
) -> None:
    """Rows go straight into `rows`, saved after every batch: a run cut short keeps what it measured."""
    import onnx

    from maskwatch.inference.postprocess import decode_detector, select_faces
    from maskwatch.inference.preprocess import BatchPreprocessor

    det_spec, cls_spec = specs
    det_model = onnx.load(str(det_spec.path(models_dir)))
    cls_model = onnx.load(str(cls_spec.path(models_dir)))
    if config.endswith("fp16") and not config.startswith("trt"):
        det_model, cls_model = to_fp16(det_model), to_fp16(cls_model)
    h, w = frames[0].shape[:2]
    max_batch = max(batches)
    t0 = time.time()
    det = Session(det_model, config, max_batch, scratch / "trt-cache")
    cls = Session(cls_model, config, max_batch * 4, scratch / "trt-cache")
    pre = Session(
        frame_input_model(det_spec.preprocess),
        "cpu" if config == "cpu" else "cuda_fp32",
        max_batch,
        scratch,
    )
    setup_s = round(time.time() - t0, 1)
    base = {"config": config, "provider": det.provider.replace("ExecutionProvider", ""), "setup_s": setup_s}
    wanted = _PROVIDER[config.split("_")[0]]
    if det.provider != wanted or cls.provider != wanted:
        # ORT falls back silently when a provider's libraries (TensorRT, cuDNN) are missing.
        note = f"{wanted} did not initialise (got {det.provider}, {cls.provider})"
        rows.append({**base, "stage": "unavailable", "batch": 0, "note": note})
        return
    det_pre, cls_pre = BatchPreprocessor(det_spec.preprocess), BatchPreprocessor(cls_spec.preprocess)
    for batch in batches:
        if time.time() > deadline:
            rows.append({**base, "stage": "skipped", "batch": batch, "note": "time budget"})
            continue
        chunk = [frames[i % len(frames)] for i in range(batch)]
        # det_model: ready input on the device.
        binding = det.bind(det.value(det_pre.frames(chunk)[0]))
        sec, _ = rate(partial(det.run, binding), min_s)
        rows.append(_row(base, "det_model", batch, sec, frames=batch))
        # gpu_pipeline: uint8 host frames -> device preprocess -> detector -> host boxes.
        host = np.stack(chunk)
        # The engine's pre-processing graph; all frames share one size, so one transform back.
        feeds, t = frame_input_feeds(det_spec.preprocess, batch, h, w, batch)

        def pipeline(upload: Callable[[], Any], t: Any = t) -> int:
            pb = upload()
            pre.run(pb)
            db = det.bind(pb.get_outputs()[0], outputs_on_host=True)
            det.run(db)
            outs = [o.numpy() for o in db.get_outputs()]
            return sum(
                len(
                    select_faces(
                        b,
                        s,
                        t,
                        score_threshold=det_spec.score_threshold,
                        nms_iou=det_spec.nms_iou,
                        max_faces=64,
                    )[0]
                )
                for b, s in decode_detector(outs, det_spec)
            )

        upload = partial(_pageable_upload, pre, host, feeds)
        faces = pipeline(upload)
        sec, _ = rate(partial(pipeline, upload), min_s)
        per_frame = round(faces / batch, 2)
        rows.append(_row(base, "gpu_pipeline", batch, sec, frames=batch, faces_per_frame=per_frame))
        # cls_model: as many face crops as the detector found, ready on the device.
        n_crops = max(1, faces)
        crops = cls_pre.frames([chunk[i % batch] for i in range(n_crops)])[0]
        cls_binding = cls.bind(cls.value(crops))
        sec, _ = rate(partial(cls.run, cls_binding), min_s)
        rows.append(_row(base, "cls_model", n_crops, sec, faces=n_crops))

        def both(det_binding: Any = binding, cls_binding: Any = cls_binding) -> None:
            det.run(det_binding)
            cls.run(cls_binding)

        sec, _ = rate(both, min_s)
        rows.append(_row(base, "det+cls_model", batch, sec, frames=batch, faces=n_crops))
        save()
        if batch == breakdown_batch:
            # Last: on the H100/H200 runs of 2026-11-27 the next allocation after it failed (device memory
            # exhausted within the step), which cost the rows behind it.
            rows += pipeline_breakdown(pre, det, host, feeds, t, det_spec, min_s, base)
            save()


def _engine(config: str, specs: tuple[Any, Any], models_dir: Path, max_batch: int, **kw: Any) -> Any:
    from maskwatch.inference.serving.engine import InferenceEngine

    return InferenceEngine(
        *specs,
        models_dir=models_dir,
        device=ENGINE_DEVICE[config],  # type: ignore[arg-type]
        max_batch=max_batch,
        **kw,
    )


def bench_engine_path(
    config: str,
    frames: Sequence[np.ndarray],
    batches: Sequence[int],
    specs: tuple[Any, Any],
    models_dir: Path,
    min_s: float,
    base: dict[str, Any],
    rows: list[dict[str, Any]],
    save: Callable[[], None],
    deadline: float,
) -> None:
    """The flow's own engine, detector + classifier, from decoded frames to faces with verdicts."""
    engine = _engine(config, specs, models_dir, max(batches))
    base = {**base, "provider": engine.detector.provider.replace("ExecutionProvider", "")}
    device = engine.device_pipeline

    def measure(stage: str, batch: int, call: Callable[[], Any], calls_per_run: int = 1) -> None:
        sec, _ = rate(call, min_s)
        rows.append(_row(base, stage, batch, sec, frames=calls_per_run * batch))
        save()

    for batch in batches:
        if time.time() > deadline:
            rows.append({**base, "stage": "skipped", "batch": batch, "note": "time budget"})
            continue
        chunk = [frames[i % len(frames)] for i in range(batch)]
        measure("engine", batch, partial(engine.infer, chunk))
        results = engine.infer(chunk)  # warm: its timings are a steady call's
        rows[-1]["faces_per_frame"] = round(sum(len(r.faces) for r in results) / batch, 2)
        # Where one call's time goes (upload, detect incl. NMS, crops + classify), from the engine's timings.
        rows[-1]["timings_ms"] = {k: round(v, 2) for k, v in results[0].timings.items()}
        rows[-1]["pinned"] = bool(device and device.pinned)
    if device is not None and time.time() < deadline:
        batch = 32 if 32 in batches else batches[0]
        chunk = [frames[i % len(frames)] for i in range(batch)]
        engine.device_pipeline = None  # the host path: OpenCV resize/crops, float tensors uploaded
        measure("engine_host", batch, partial(engine.infer, chunk))
        engine.device_pipeline = device
        # Two engines (two flow workers' worth) in two threads: CPU steps of one overlap the other's GPU work.
        batch = max(batches)
        chunk = [frames[i % len(frames)] for i in range(batch)]
        other = _engine(config, specs, models_dir, batch)
        other.infer(chunk)
        with ThreadPoolExecutor(2) as pool:

            def pair() -> None:
                list(pool.map(lambda e: e.infer(chunk), (engine, other)))

            measure("engine_x2", batch, pair, calls_per_run=2)


def accuracy(dataset: Path, specs: tuple[Any, Any], models_dir: Path) -> dict[str, Any]:
    """The served engine on held-out photos, on the GPU (as the flow runs it) and on the CPU: face, mask and
    no-mask AP50 and recall/precision at the operating point, the same way `maskwatch eval` scores them."""
    from maskwatch.inference.datasets import load_dataset
    from maskwatch.inference.evaluation.evaluate import AP_SCORE_FLOOR
    from maskwatch.inference.evaluation.metrics import Detections, detection_metrics
    from maskwatch.inference.preprocess import decode_image

    samples = load_dataset(dataset)
    frames = [decode_image(s.image.read_bytes()) for s in samples]
    det_spec, cls_spec = specs
    out: dict[str, Any] = {"images": len(samples), "faces": sum(len(s.boxes) for s in samples)}
    for config in ("cuda_fp16", "cpu"):
        engine = _engine(config, specs, models_dir, 32, score_threshold=AP_SCORE_FLOOR)
        det = Detections([], [], [])
        for i in range(0, len(frames), 32):
            for r in engine.infer(frames[i : i + 32]):
                det.boxes.append(np.array([f.box for f in r.faces], np.float32).reshape(-1, 4))
                det.scores.append(np.array([f.det_score for f in r.faces], np.float32))
                det.nomask.append(np.array([f.nomask_prob for f in r.faces], np.float32))
        metrics, _ = detection_metrics(samples, det, det_spec.score_threshold, cls_spec.score_threshold)
        out[config] = {
            "providers": engine.providers,
            "device_pipeline": engine.device_pipeline is not None,
            **{k: metrics[k] for k in ("face_ap50", "mask_ap50", "no_mask_ap50")},
            "at_score_threshold": metrics["operating_point"]["iou50"]["face"],
        }
    return out


def fp16_agreement(specs: tuple[Any, Any], models_dir: Path, frames: Sequence[np.ndarray]) -> dict[str, Any]:
    """Largest difference between fp32 and fp16 outputs on real frames (CUDA): does fp16 change answers?"""
    import onnx

    from maskwatch.inference.preprocess import BatchPreprocessor

    out: dict[str, Any] = {}
    for spec in specs:
        model = onnx.load(str(spec.path(models_dir)))
        x = BatchPreprocessor(spec.preprocess).frames(list(frames[:8]))[0].copy()
        got = []
        for m in (model, to_fp16(model)):
            s = Session(m, "cuda_fp32", 8, Path("/tmp"))
            b = s.bind(s.value(x), outputs_on_host=True)
            s.run(b)
            got.append([o.numpy() for o in b.get_outputs()])
        out[spec.name] = {
            name: float(np.max(np.abs(a - b))) for name, a, b in zip(s.outputs, *got, strict=True)
        }
    return out


# --- report --------------------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    lines = [
        f"GPU bench: {result.get('gpu', '?')}  ORT {result['ort']['version']} "
        f"{result['ort']['providers']}  frames {result['size']}"
    ]
    lines.append(
        f"{'config':<10} {'provider':<9} {'stage':<13} {'batch':>5} {'frames/s':>9} {'faces/s':>9} "
        f"{'ms/call':>8}"
    )
    for r in result["rows"]:
        lines.append(
            f"{r['config']:<10} {r.get('provider', ''):<9} {r['stage']:<13} {r.get('batch', ''):>5} "
            f"{r.get('frames_per_s', '-')!s:>9} {r.get('faces_per_s', '-')!s:>9} "
            f"{r.get('ms_per_call', '-')!s:>8}  {r.get('note', '')}"
        )
    for r in result.get("cpu_ceilings", []):
        lines.append(
            f"{'host':<10} {'CPU':<9} {r['stage']:<13} {'x' + str(r['threads']):>5} {r['frames_per_s']!s:>9}"
        )
    for r in result["rows"]:
        if r.get("timings_ms"):
            lines.append(f"{r['config']} engine x{r['batch']}: {r['timings_ms']} pinned={r.get('pinned')}")
    for name, acc in (result.get("accuracy") or {}).items():
        if isinstance(acc, dict):
            at, provider = acc["at_score_threshold"], acc["providers"]["detector"]
            lines.append(
                f"accuracy {name} ({provider}, device pipeline {acc['device_pipeline']}): "
                f"face AP50 {acc['face_ap50']:.4f} mask {acc['mask_ap50']:.4f} "
                f"no-mask {acc['no_mask_ap50']:.4f} recall/precision {at['recall']:.4f}/{at['precision']:.4f}"
            )
    flow = result.get("decode_engine") or {}
    for r in flow.get("rows", []):
        lines.append(
            f"decode+engine x{r['processes']} processes, batch {r.get('batch', '-')}: "
            f"{r.get('frames_per_s', '-')} frames/s = {r.get('share_of_decode_ceiling', '-')} of the "
            f"{flow['decode_ceiling_frames_per_s']} frames/s JPEG-decode ceiling {r.get('note', '')}"
            f"{' errors: ' + '; '.join(r['errors']) if r.get('errors') else ''}"
        )
    if result.get("fp16_max_abs_diff"):
        lines.append(f"fp16 vs fp32 max |diff|: {result['fp16_max_abs_diff']}")
    for e in result.get("errors", []):
        lines.append(f"error: {e}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, default=os.environ.get("MW_GPU_IMAGES"))
    p.add_argument("--models", type=Path, default=os.environ.get("MASKWATCH_MODELS_DIR"))
    p.add_argument("--dataset", type=Path, default=os.environ.get("MW_GPU_DATASET"), help="photos + VOC")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench/results/gpu")))
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batches", default="1,8,32,64")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--min-seconds", type=float, default=0.5)
    p.add_argument("--processes", default="1,4", help="decode+engine: process counts (flow processes)")
    p.add_argument("--budget-s", type=float, default=170.0, help="stop starting new measurements after this")
    p.add_argument("--table", type=Path, help="only print the table of an earlier JSON result")
    a = p.parse_args(argv)
    if a.table:
        print(table(json.loads(a.table.read_text())))
        return 0
    if a.images is None or a.models is None:
        p.error("--images/MW_GPU_IMAGES and --models/MASKWATCH_MODELS_DIR are required")
    a.images, a.models = a.images.resolve(), a.models.resolve()  # specs join relative paths once more
    deadline = time.time() + a.budget_s
    a.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"machine": machine(), "size": f"{a.size}x{a.size}", "rows": [], "errors": []}
    result["gpu"] = gpu_name()
    result["ort"] = info = ort_info()
    print(
        f"onnxruntime {info['version']} ({info['file']}): providers {info['providers']}, "
        f"preload_dlls {info['preload_dlls']}",
        flush=True,
    )
    from maskwatch.inference.serving.engine import default_models, resolve_spec

    names = default_models(a.models)
    specs = (resolve_spec(names[0], a.models), resolve_spec(names[1], a.models))
    result["models"] = list(names)
    frames = load_frames(folder_images(a.images), a.size, a.size)
    batches = [int(b) for b in a.batches.split(",")]
    path = a.out / "gpu.json"

    def save() -> None:
        path.write_text(json.dumps(result, indent=2, default=str))

    def step(what: str, fn: Callable[[], Any]) -> Any:
        t = time.time()
        try:
            return fn()
        except Exception as exc:  # one config failing (no TensorRT, say) must not lose the others
            result["errors"].append(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")
            print(result["errors"][-1], flush=True)
            return None
        finally:
            gc.collect()  # the step's sessions go, and their device arenas with them
            used = result.setdefault("gpu_memory_used_after", {})[what] = gpu_memory_used()
            print(f"{what}: {time.time() - t:.1f} s; GPU memory used after it: {used}", flush=True)
            save()

    result["cpu_ceilings"] = (
        step("cpu ceilings", lambda: cpu_ceilings(frames, specs[0].preprocess, a.min_seconds)) or []
    )
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / "mw-gpu-bench"
    available = set(info["providers"])
    for config in a.configs.split(","):
        if _PROVIDER[config.split("_")[0]] not in available:
            result["rows"].append(
                {
                    "config": config,
                    "stage": "unavailable",
                    "batch": 0,
                    "note": f"{_PROVIDER[config.split('_')[0]]} not in this build",
                }
            )
            continue
        if time.time() > deadline:
            result["rows"].append({"config": config, "stage": "skipped", "batch": 0, "note": "time budget"})
            continue
        cfg_batches = [b for b in batches if b <= 32] if config == "cpu" else batches
        engine_batches = [1, 8] if config == "cpu" else [b for b in batches if b >= 8]
        min_s = a.min_seconds if config != "cpu" else 0.3
        step(
            config,
            partial(
                bench_config,
                config,
                frames,
                cfg_batches,
                specs,
                a.models,
                min_s,
                deadline,
                scratch,
                result["rows"],
                save,
            ),
        )
        # The engine in a step of its own: the raw sessions above are gone by then, with their device memory.
        if config in ENGINE_DEVICE and time.time() < deadline:
            engine_path = partial(
                bench_engine_path,
                config,
                frames,
                engine_batches,
                specs,
                a.models,
                min_s,
                {"config": config},
                result["rows"],
                save,
                deadline,
            )
            step(f"{config} engine", engine_path)
        if config == "cuda_fp16":  # the served config: the flow's loop and accuracy before the comparisons
            # The all-core JPEG-decode ceiling is the one measured above, not measured twice.
            ceiling = max(
                (r["frames_per_s"] for r in result["cpu_ceilings"] if r["stage"] == "jpeg_decode"),
                default=None,
            )
            loop = partial(
                decode_infer.bench,
                specs,
                a.models,
                frames,
                batch=64,
                device="cuda",
                seconds=4.0,
                processes=[int(p) for p in a.processes.split(",")],
                deadline=deadline,
                ceiling=ceiling,
            )
            result["decode_engine"] = step("decode+engine", loop)
            if a.dataset is not None:
                result["accuracy"] = step("accuracy", lambda: accuracy(a.dataset.resolve(), specs, a.models))
            agreement = partial(fp16_agreement, specs, a.models, frames)
            result["fp16_max_abs_diff"] = step("fp16 agreement", agreement)
    save()
    print(table(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
