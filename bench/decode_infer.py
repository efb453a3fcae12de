"""The flow's inner loop without broker or store: decode a micro-batch of JPEGs on a thread pool, then
``engine.infer`` it, in P processes at once (P flow processes on one host), against the host's JPEG-decode
ceiling. Answers "is the whole flow limited by decode or by inference" on a GPU host, where the full
flow's services are not installed (``bench/gpu.sh`` runs it through ``bench.gpu_infer``).

Each process decodes with cores / P threads, as a flow process's fetch pool would, then infers; the two
steps follow each other as in a flow worker, and P processes overlap one's decode with another's
inference. Figures: frames/s of all processes together over the same window, and that as a share of
the JPEG-decode ceiling measured here with every core.

    python -m bench.decode_infer --images DIR --models DIR [--device cuda] [--processes 1,4]

Only numpy, OpenCV and this repo's ``inference`` package (no polars, bytewax or Kafka).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskwatch.inference.preprocess import (
    decode_image as decode,  # the flow's own decode (maskwatch/cameras/capture/images.py)
)

READY_TIMEOUT_S = 90.0  # model load + the first call (on CUDA: cuDNN's exhaustive search per shape)


def encode_jpegs(frames: Sequence[np.ndarray], quality: int = 90) -> list[bytes]:
    """What cameras send: the bench frames as JPEG."""
    return [cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes() for f in frames]


def decode_ceiling(jpegs: Sequence[bytes], threads: int, min_s: float) -> float:
    """JPEG decode alone with `threads` threads, frames/s."""
    work = [jpegs[i % len(jpegs)] for i in range(max(len(jpegs), threads * 8))]
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, work))  # warm
        n, t0 = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t0 < min_s:
            list(pool.map(decode, work))
            n += len(work)
        return n / (time.perf_counter() - t0)


def _loop(args: dict[str, Any], start_at: Any, ready: Any, go: Any, results: Any) -> None:
    """One process: engine up and warm, then decode + infer batches until the shared end time."""
    try:
        from maskwatch.inference.serving.engine import InferenceEngine

        engine = InferenceEngine(
            *args["specs"], models_dir=args["models_dir"], device=args["device"],
            max_batch=args["batch"], threads=args["threads"],
        )
        jpegs, batch = args["jpegs"], args["batch"]
        chunks = [[jpegs[(k * batch + i) % len(jpegs)] for i in range(batch)] for k in range(len(jpegs))]
        with ThreadPoolExecutor(args["threads"]) as pool:
            engine.infer(list(pool.map(decode, chunks[0])))  # warm: shapes set, sessions planned
            ready.put(os.getpid())
            if not go.wait(READY_TIMEOUT_S):
                return
            end = start_at.value + args["seconds"]
            if time.time() >= end:
                raise TimeoutError(f"not warm within {READY_TIMEOUT_S:g} s of the others")
            frames = faces = calls = 0
            t0 = time.time()
            while time.time() < end:
                out = engine.infer(list(pool.map(decode, chunks[calls % len(chunks)])))
                frames += len(out)
                faces += sum(len(r.faces) for r in out)
                calls += 1
            span = time.time() - t0
        results.put({"pid": os.getpid(), "frames": frames, "faces": faces, "calls": calls, "span_s": span,
                     "provider": engine.detector.provider,
                     "device_pipeline": engine.device_pipeline is not None})
    except Exception as exc:  # reported by the parent, never a hang
        results.put({"pid": os.getpid(), "error": f"{type(exc).__name__}: {str(exc)[:300]}"})


def run_processes(
    specs: tuple[Any, Any], models_dir: Path, jpegs: Sequence[bytes], *, processes: int, batch: int,
    device: str, seconds: float, cores: int | None = None,
) -> dict[str, Any]:
    """`processes` processes each looping decode + infer for `seconds` from one shared start."""
    cores = cores or os.cpu_count() or 1
    ctx = mp.get_context("spawn")  # CUDA contexts do not survive fork
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    threads = max(1, cores // processes)
    args = {"specs": specs, "models_dir": models_dir, "jpegs": list(jpegs), "batch": batch, "device": device,
            "threads": threads, "seconds": seconds}
    procs = [ctx.Process(target=_loop, args=(args, start_at, ready, go, results), daemon=True)
             for _ in range(processes)]
    for p in procs:
        p.start()
    got: list[dict[str, Any]] = []
    try:
        # Start together once every process is warm; an error (a result before the start) or a process
        # gone ends the wait early.
        warm, deadline = 0, time.time() + READY_TIMEOUT_S
        while warm < processes and time.time() < deadline and results.empty():
            if not all(p.is_alive() for p in procs):
                break
            try:
                ready.get(timeout=0.2)
                warm += 1
            except queue.Empty:
                pass
        start_at.value = time.time()
        go.set()
        deadline = time.time() + seconds + READY_TIMEOUT_S
        while len(got) < processes and time.time() < deadline:
            try:
                got.append(results.get(timeout=0.5))
            except queue.Empty:
                if not any(p.is_alive() for p in procs) and results.empty():
                    break
        got += [{"error": "a process ended without a result"}] * (processes - len(got))
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in got if "error" in r]
    ok = [r for r in got if "error" not in r]
    row: dict[str, Any] = {
        "stage": "decode+engine", "processes": processes, "batch": batch, "device": device,
        "decode_threads_per_process": threads, "errors": errors, "per_process": ok,
    }
    if ok and not errors:
        row["frames_per_s"] = round(sum(r["frames"] / r["span_s"] for r in ok), 1)
        row["faces_per_frame"] = round(sum(r["faces"] for r in ok) / max(1, sum(r["frames"] for r in ok)), 2)
    return row


def bench(
    specs: tuple[Any, Any], models_dir: Path, frames: Sequence[np.ndarray], *, processes: Sequence[int],
    batch: int, device: str, seconds: float, deadline: float | None = None, ceiling: float | None = None,
) -> dict[str, Any]:
    """The decode ceiling (measured here unless given, frames/s with every core), then one row per process
    count (skipped past `deadline`)."""
    jpegs = encode_jpegs(frames)
    cores = os.cpu_count() or 1
    ceiling = ceiling or decode_ceiling(jpegs, cores, min(seconds, 2.0))
    rows = []
    for p in processes:
        if deadline is not None and time.time() > deadline:
            rows.append({"stage": "decode+engine", "processes": p, "note": "time budget"})
            continue
        row = run_processes(specs, models_dir, jpegs, processes=p, batch=batch, device=device,
                            seconds=seconds, cores=cores)
        if "frames_per_s" in row:
            row["share_of_decode_ceiling"] = round(row["frames_per_s"] / ceiling, 3)
        rows.append(row)
    return {"decode_ceiling_frames_per_s": round(ceiling, 1), "cores": cores, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from maskwatch.inference.serving.engine import default_models, resolve_spec

    from bench.images import folder_images, load_frames

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True, help="folder of dataset JPEGs")
    p.add_argument("--models", type=Path, required=True, help="models folder (manifest.json + ONNX)")
    p.add_argument("--device", default="cuda", choices=["cpu", "cuda", "tensorrt", "auto"])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--processes", default="1,4")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--out", type=Path, help="write the result here as JSON")
    a = p.parse_args(argv)
    models = a.models.resolve()
    names = default_models(models)
    specs = (resolve_spec(names[0], models), resolve_spec(names[1], models))
    frames = load_frames(folder_images(a.images), a.size, a.size)
    result = bench(specs, models, frames, processes=[int(x) for x in a.processes.split(",")], batch=a.batch,
                   device=a.device, seconds=a.seconds)
    text = json.dumps(result, indent=2, default=str)
    if a.out:
        a.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
