"""Smoke tests of ``python -m bench`` on tiny configurations: it runs end to end on the real models, broker,
store and dataset photos, prints its table and writes JSON whose figures are consistent. No timing
assertions (this machine is shared)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_bench(out: Path, *args: str, timeout: float = 300) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench", "--out", str(out), *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out.glob("bench-*.json"))
    assert len(files) == 1, files
    assert f"JSON: {files[0]}" in proc.stdout
    return json.loads(files[0].read_text()) | {"_stdout": proc.stdout}


def test_inference_and_baseline_sections(tmp_path: Path, dataset_dir: Path) -> None:
    result = run_bench(tmp_path, "--only", "infer", "--only", "baseline", "--sizes", "320x240",
                       "--batches", "1,2", "--images", "2", "--min-seconds", "0.05")
    assert result["machine"]["nproc"] >= 1 and result["sections"] == ["baseline", "infer"]
    rows = result["inference"]
    stages = {(r["batch"], r["stage"]) for r in rows}
    for batch in (1, 2):
        assert {(batch, "detector"), (batch, "detector_model"), (batch, "together")} <= stages
    assert all(r["size"] == "320x240" and r["provider"] == "CPU" for r in rows)
    assert all(r["frames_per_s"] > 0 for r in rows if r["stage"] != "classifier_model")
    assert all(r["faces_per_s"] > 0 for r in rows if r["stage"].startswith("classifier"))
    (base,) = result["baseline"]
    assert base["frames_per_s"] > 0 and "res10" in base["method"]
    (ratio,) = result["ratios"]
    best = max(r["frames_per_s"] for r in rows if r["stage"] == "together")
    assert ratio["ours_fps"] == best
    assert ratio["ratio"] == pytest.approx(best / base["frames_per_s"], rel=0.01)
    assert "Ours / baseline" in result["_stdout"] and "flow" not in result
    assert result["bench_process_peak_rss_mb"] > 50


@pytest.mark.slow
def test_flow_section(tmp_path: Path, dataset_dir: Path) -> None:
    result = run_bench(tmp_path, "--only", "flow", "--cameras", "2", "--ticks-per-camera", "4",
                       "--flow-size", "640x480", "--layouts", "1x1", "--live-seconds", "3",
                       "--batch-max", "2", timeout=400)
    (run,) = result["flow"]["runs"]
    assert (run["processes"], run["workers"], run["cameras"]) == (1, 1, 2)
    # Every backlog tick became an ok frame row; the cameras replay photos with unmasked faces.
    assert run["ticks"] == 8 and run["ok"] == 8 and run["nomask_faces"] > 0
    assert run["statuses"] == {"ok": 8} and run["errors"] == []
    assert run["ticks_per_s"] > 0 and run["rows_per_s"] >= run["ticks_per_s"]
    # Per tick, the worker's time splits into inference (from the frame rows) and the rest.
    assert 0 < run["inference_ms_per_tick"] <= 1000 / run["ticks_per_s"]
    assert 0 <= run["outside_inference_ms_per_tick"] < 1000 / run["ticks_per_s"]
    live = run["live"]
    assert live["frames"] == live["ticks"] >= 1 and live["tick_to_frame_ms_p50"] > 0
    assert live["tick_to_frame_ms_p99"] >= live["tick_to_frame_ms_p50"]
    assert run["peak_rss_mb"]["flow-0"] > 100
    assert result["flow"]["services_peak_rss_mb"]["broker"] > 0
    assert "Whole flow" in result["_stdout"]



def test_decode_infer_loop_in_processes(dataset_dir: Path) -> None:
    """The GPU bench's decode+engine stage on the CPU: processes start together, each decodes and infers
    real photos, and a process that cannot load its models reports why instead of hanging the run."""
    from maskwatch.config import Settings
    from maskwatch.inference.serving.engine import default_models, resolve_spec

    from bench import decode_infer
    from bench.images import dataset_images, load_frames

    models = Settings().models_dir
    det, cls = (resolve_spec(name, models) for name in default_models(models))
    frames = load_frames(dataset_images(dataset_dir, count=4), 320, 240)
    result = decode_infer.bench((det, cls), models, frames, processes=[2], batch=2, device="cpu", seconds=1.0)
    ceiling = result["decode_ceiling_frames_per_s"]
    (row,) = result["rows"]
    assert ceiling > 0 and row["errors"] == [] and len(row["per_process"]) == 2
    assert all(r["frames"] > 0 and r["frames"] % 2 == 0 for r in row["per_process"])
    assert row["faces_per_frame"] > 0
    assert abs(row["share_of_decode_ceiling"] - row["frames_per_s"] / ceiling) < 0.01

    missing = det.model_copy(update={"file": "no-such-model.onnx"})
    bad = decode_infer.run_processes((missing, cls), models, decode_infer.encode_jpegs(frames), processes=1,
                                     batch=2, device="cpu", seconds=1.0)
    assert "frames_per_s" not in bad and len(bad["errors"]) == 1 and "no-such-model" in bad["errors"][0]


def test_frontier_scales_the_detector_and_scores_it_as_eval_does(tmp_path: Path, dataset_dir: Path) -> None:
    """``python -m bench.frontier`` on a tiny configuration: each scale runs the detector at that fraction
    of its input, its accuracy column is ``maskwatch eval``'s on the same held-out images, and the ratios
    are over the baseline measured in the same run."""
    from maskwatch.inference.evaluation import evaluate

    proc = subprocess.run([sys.executable, "-m", "bench.frontier", "--scales", "0.5,1", "--images", "2",
                           "--batch", "2", "--min-seconds", "0.05", "--limit", "6", "--out", str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("frontier-*.json")
    result = json.loads(path.read_text())
    full, half = result["rows"]
    assert (full["scale"], full["detector_input"], full["input_for_frame"]) == (1.0, "640x480", "512x480")
    assert (half["scale"], half["detector_input"], half["input_for_frame"]) == (0.5, "320x240", "256x240")
    lo, hi = result["baseline"]["frames_per_s_range"]
    for row in (full, half):
        assert row["heldout_images"] == 6 and row["detector_fps"] > 0 and row["together_fps"] > 0
        # Each row's ratio is over the baseline timed just before it.
        assert 0 < lo <= row["baseline_fps"] <= hi
        assert row["together_ratio"] == pytest.approx(row["together_fps"] / row["baseline_fps"], abs=0.01)
    report = evaluate.main(dataset_dir, tmp_path / "eval", limit=6, split="test", device="cpu")
    assert full["face_ap50"] == pytest.approx(report["detection"]["face_ap50"], abs=1e-4)
    assert full["no_mask_ap50"] == pytest.approx(report["detection"]["no_mask_ap50"], abs=1e-4)
    assert "det+cls / base" in proc.stdout and f"JSON: {path}" in proc.stdout


def test_scaled_detector_graph_has_priors_for_its_new_input(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort

    from maskwatch.config import Settings
    from maskwatch.inference.serving.engine import default_models, resolve_spec
    from maskwatch.inference.serving.prior_grid import prior_grid

    from bench.frontier import scaled_detector

    models = Settings().models_dir
    spec = resolve_spec(default_models(models)[0], models)
    assert scaled_detector(spec, models, 1.0, tmp_path) is spec
    small = scaled_detector(spec, models, 0.5, tmp_path)
    assert (small.preprocess.width, small.preprocess.height) == (320, 240) and small.name != spec.name
    grid = prior_grid(onnx.load(spec.path(models)))
    assert grid is not None
    session = ort.InferenceSession(str(small.path(models)), providers=["CPUExecutionProvider"])
    zeros = np.zeros((1, 3, 240, 320), np.float32)
    boxes = session.run([spec.outputs[0]], {session.get_inputs()[0].name: zeros})[0]
    assert boxes.shape[1] == len(grid.priors(320, 240)) < len(grid.priors(640, 480))


@pytest.mark.without_models
def test_cameras_section_holds_real_streams_and_measures_both_readers(dataset_dir: Path) -> None:
    """A small ``python -m bench.cameras``: real RTSP streams held by both readers, real Digest cameras
    beside slow and dead ones; every healthy tick is fetched and every figure is there."""
    from bench import cameras

    report = cameras.run([3], 1, 10, 6.0, 2.0, dataset_dir, http_counts=[4])
    legacy, new = report["rtsp"]
    (http,) = report["http"]  # the fetcher's own CPU per HTTP camera (the servers run apart)
    assert http["cameras"] == 4 and http["ok"] == http["ticks"] > 0 and 0 < http["cores_per_camera"] < 1
    assert legacy["reader"].startswith("legacy") and new["reader"].startswith("pyav")
    assert new["held"] == 3 and legacy["held"] == 1
    assert new["ok"] == new["ticks"] > 0 and new["cores_per_camera"] > 0
    modes = [(r["bad"], r["mode"]) for r in report["isolation"]]
    assert modes == [(0, "detach"), (1, "wait"), (1, "detach")]
    healthy, _, detached = report["isolation"]
    # Nearly every healthy tick, slow and dead cameras or not (a loaded CI box may time one out).
    assert healthy["healthy_ticks"] > 0 and healthy["ok"] >= 0.9 * healthy["healthy_ticks"]
    assert detached["healthy_ticks"] > 0 and detached["ok"] >= 0.9 * detached["healthy_ticks"]
