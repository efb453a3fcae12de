"""``python -m bench``: inference-only, baseline, whole-flow and camera benchmarks -> a table and JSON under
bench/results/. ``--quick`` fits in a couple of minutes; ``--only`` picks sections."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from bench.options import out_option, parse_sizes
from bench.report import baseline_ratios, print_report

SECTIONS = ("infer", "baseline", "flow", "cameras")


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated {what}") from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: {what} must be >= 1")
    return values


def _layouts(text: str) -> tuple[tuple[int, int], ...]:
    try:
        out = tuple((int(p), int(w)) for p, w in (s.lower().split("x") for s in text.split(",") if s))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected PROCESSESxWORKERS[,...], e.g. 1x1,1x2,2x1") from None
    if not out or min(min(x) for x in out) < 1:
        raise click.BadParameter(f"{text!r}: processes and workers must be >= 1")
    return out


@click.command()
@click.option("--quick", is_flag=True, help="Small sizes and counts: the whole run in a couple of minutes.")
@click.option(
    "--only",
    "only",
    multiple=True,
    type=click.Choice(SECTIONS),
    help="Run only these sections (repeatable); default all.",
)
@click.option("--sizes", default="640x480,1024x1024", show_default=True, help="Frame sizes, WxH,...")
@click.option("--batches", default=None, help="Inference batch sizes (default 1,8,32; quick 1,8).")
@click.option(
    "--images",
    default=None,
    type=click.IntRange(1),
    help="Distinct dataset photos per size (default 32; quick 8).",
)
@click.option(
    "--min-seconds",
    default=None,
    type=click.FloatRange(0.05),
    help="Timing per measurement (default 3; quick 0.5).",
)
@click.option(
    "--device",
    "--providers",
    "device",
    default="cpu",
    show_default=True,
    type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
    help="ONNX Runtime provider for our engine (the baseline stays on CPU, as the original).",
)
@click.option("--gpu", is_flag=True, help="Shorthand for --device auto with batches 1,8,32,64,128.")
@click.option(
    "--threads", default=None, type=click.IntRange(1), help="ORT intra-op threads (default: all cores)."
)
@click.option("--cameras", default=None, type=click.IntRange(1), help="Flow: cameras (default 8; quick 4).")
@click.option(
    "--ticks-per-camera",
    default=None,
    type=click.IntRange(2),
    help="Flow: backlog ticks per camera (default 12; quick 8).",
)
@click.option("--flow-size", default="1024x1024", show_default=True, help="Flow: camera frame size.")
@click.option("--layouts", default=None, help="Flow: PROCESSESxWORKERS,... (default 1x1,1x2,2x1; quick 1x1).")
@click.option(
    "--live-seconds",
    default=None,
    type=click.FloatRange(2),
    help="Flow: live phase length for latency (default 20; quick 8).",
)
@click.option(
    "--batch-max", default=16, show_default=True, type=click.IntRange(1), help="Flow: micro-batch size."
)
@click.option(
    "--profile",
    is_flag=True,
    help="cProfile the engine at the largest size, py-spy the flow's first layout (if installed).",
)
@out_option("Where the JSON (and profiles) go.")
@click.option("-v", "--verbose", is_flag=True)
def main(
    quick: bool,
    only: tuple[str, ...],
    sizes: str,
    batches: str | None,
    images: int | None,
    min_seconds: float | None,
    device: str,
    gpu: bool,
    threads: int | None,
    cameras: int | None,
    ticks_per_camera: int | None,
    flow_size: str,
    layouts: str | None,
    live_seconds: float | None,
    batch_max: int,
    profile: bool,
    out_dir: Path,
    verbose: bool,
) -> None:
    """Benchmark maskwatch: inference only, the chandrikadeb7 baseline on the same frames, and the whole
    flow through the real broker and store. Prints a table; writes bench/results/bench-<time>.json."""
    from maskwatch.logs import setup_logging

    setup_logging("INFO" if verbose else "WARNING")
    sections = set(only or SECTIONS)
    if gpu:
        device = "auto" if device == "cpu" else device
    batch_list = _ints(batches or ("1,8,32,64,128" if gpu else "1,8" if quick else "1,8,32"), "batch sizes")
    size_list = parse_sizes(sizes)
    n_images = images or (8 if quick else 32)
    min_s = min_seconds or (0.5 if quick else 3.0)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    from bench.timing import machine, peak_rss_mb

    result: dict[str, Any] = {
        "started": stamp,
        "machine": machine(),
        "quick": quick,
        "device": device,
        "sections": sorted(sections),
    }
    t0 = time.time()
    if sections & {"infer", "baseline"}:
        result.update(
            _inference(
                size_list,
                batch_list,
                n_images,
                min_s,
                device,
                threads,
                sections,
                profile,
                out_dir / f"engine-profile-{stamp}.txt",
            )
        )
        result["bench_process_peak_rss_mb"] = round(peak_rss_mb() or 0, 1)
    if "flow" in sections:
        from bench.flow import FlowBenchConfig, bench_flow

        ((fw, fh),) = parse_sizes(flow_size)[:1]
        cfg = FlowBenchConfig(
            cameras=cameras or (4 if quick else 8),
            ticks_per_camera=ticks_per_camera or (8 if quick else 12),
            width=fw,
            height=fh,
            layouts=_layouts(layouts or ("1x1" if quick else "1x1,1x2,2x1")),
            live_s=live_seconds or (8.0 if quick else 20.0),
            batch_max=batch_max,
            images_per_camera=4 if quick else 6,
            profile_s=600.0 if profile else 0.0,
        )
        result["flow_config"] = {k: v for k, v in cfg.__dict__.items()}
        result["flow"] = bench_flow(cfg, out_dir)
        for run in result["flow"]["runs"]:
            raw = run.get("profile_raw")
            if raw:
                from bench.profiles import summarise_pyspy

                run["profile"] = summarise_pyspy(Path(raw))
    if "cameras" in sections:
        from bench import cameras as cams

        counts = [10, 50] if quick else [10, 50, 100, 200]
        result["cameras"] = cams.run(counts, 2 if quick else 4, 40 if quick else 100,
                                     10.0 if quick else 30.0, 5.0, cams.DATASET, http_counts=counts)
    result["ratios"] = baseline_ratios(result)
    result["seconds"] = round(time.time() - t0, 1)
    path = out_dir / f"bench-{stamp}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print_report(result)
    if "cameras" in result:
        cams.print_table(result["cameras"])
    click.echo(f"\nJSON: {path}")


def _inference(
    sizes: list[tuple[int, int]],
    batches: list[int],
    n_images: int,
    min_s: float,
    device: str,
    threads: int | None,
    sections: set[str],
    profile: bool,
    profile_path: Path,
) -> dict[str, Any]:
    from bench.images import dataset_images, load_frames
    from bench.infer import bench_baseline, bench_engine, make_engine, tile

    paths = dataset_images(count=n_images)
    out: dict[str, Any] = {"images": [p.name for p in paths], "inference": [], "baseline": []}
    engine = make_engine(None, device, max(batches), threads) if "infer" in sections else None  # type: ignore[arg-type]
    if engine is not None:
        out["providers"] = engine.providers
    for w, h in sizes:
        frames = load_frames(paths, w, h)
        if engine is not None:
            out["inference"] += bench_engine(engine, frames, f"{w}x{h}", batches, min_s)
        if "baseline" in sections:
            out["baseline"].append(bench_baseline(frames, f"{w}x{h}", min_s))
    if profile and engine is not None:
        from bench.profiles import cprofile

        w, h = sizes[-1]
        chunk = tile(load_frames(paths, w, h), min(8, max(batches)))
        text = cprofile(lambda: engine.infer(chunk), repeat=3)
        profile_path.write_text(text)
        out["engine_profile"] = str(profile_path)
    return out


if __name__ == "__main__":
    main()
