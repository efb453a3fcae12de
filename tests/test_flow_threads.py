"""Each flow worker's inference engine gets its share of the cores, not all of them."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from maskwatch.config import Settings
from maskwatch.flows.options import FlowOptions
from maskwatch.flows.runtime import FlowRuntime
from maskwatch.inference.serving.engine import InferenceEngine
from maskwatch.inference.session import OrtModel, cpu_count


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_engines_split_the_cores(workers: int) -> None:
    opts = FlowOptions.from_settings(workers=workers, cluster_workers=workers)  # `maskwatch flow run -w`
    assert opts.workers == workers and opts.shards == workers
    runtime = FlowRuntime(Settings(), opts)
    engines: list[InferenceEngine] = []

    def build() -> None:  # one engine per worker thread, as Bytewax runs them
        engine = runtime.processor().engine
        assert isinstance(engine, InferenceEngine)
        engines.append(engine)

    threads = [threading.Thread(target=build) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(e) for e in engines}) == workers
    want = max(1, cpu_count() // workers)
    for engine in engines:
        for model in (engine.detector, engine.classifier):
            options = model.session.get_session_options()
            assert (options.intra_op_num_threads, options.inter_op_num_threads) == (want, 1)


def test_cluster_processes_on_one_host_share_its_cores() -> None:
    from maskwatch.flows.cluster import Cluster

    assert Cluster().workers_on_this_host == 1 and Cluster(3).total_workers == 3
    local = ("127.0.0.1:2101", "127.0.0.1:2102", "127.0.0.1:2103")
    assert Cluster(1, 1, local).workers_on_this_host == 3
    pods = ("flow-0.flow:2101", "flow-1.flow:2101", "flow-2.flow:2101")  # one process per pod (Kubernetes)
    assert Cluster(2, 2, pods).workers_on_this_host == 2 and Cluster(2, 2, pods).total_workers == 6
    mixed = ("gpu-a:2101", "gpu-a:2102", "gpu-b:2101")
    assert (Cluster(1, 0, mixed).workers_on_this_host, Cluster(1, 2, mixed).workers_on_this_host) == (2, 1)


def test_cpu_batches_run_split_across_single_threaded_runs() -> None:
    """On the CPU a batch is cut into one part per thread, each run on a single-threaded session in
    parallel; the answers are those of the whole batch through the multi-threaded session."""
    from maskwatch.inference.models.manifest import DEFAULT_CLASSIFIER
    from maskwatch.inference.serving.engine import resolve_spec

    spec = resolve_spec(DEFAULT_CLASSIFIER)
    model = OrtModel(spec.path(Settings().models_dir), device="cpu", threads=2, output_names=spec.outputs)
    assert model._solo is not None and model._pool is not None
    assert model._solo.get_session_options().intra_op_num_threads == 1
    assert model.session.get_session_options().intra_op_num_threads == 2
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1, 1, (5, 3, spec.preprocess.height, spec.preprocess.width)).astype(np.float32)
    (split,) = model.run(batch)
    (whole,) = model.session.run(model.output_names, {model.input_name: batch})
    assert split.shape == whole.shape and np.allclose(split, whole, atol=1e-5)
    assert OrtModel(spec.path(Settings().models_dir), device="cpu", threads=1)._pool is None


def test_the_flow_serves_tuned_models_once_they_appear_without_a_restart(tmp_path: Path,
                                                                         dataset_dir: Path) -> None:
    """A first run serves the shipped models; when `maskwatch models tune` writes the tuned ones beside
    them, each worker loads them at its next registry refresh and the frames say which models saw them."""
    from datetime import UTC, datetime

    from maskwatch.schemas.events import Camera, Tick

    cache = Settings().models_dir
    models = tmp_path / "models"
    models.mkdir()
    for name in ("manifest.json", "rfb640.onnx", "mobilenetv2-mask.onnx"):
        (models / name).symlink_to(cache / name)
    settings = Settings(models_dir=models, home=tmp_path / "home")
    runtime = FlowRuntime(settings, FlowOptions.from_settings(workers=1, cluster_workers=1))
    proc = runtime.processor()
    assert (proc.detector_model, proc.classifier_model) == ("rfb640", "mobilenetv2-mask")
    runtime._swap_models(proc)
    assert proc.detector_model == "rfb640"  # nothing new: nothing reloaded
    # A tuned detector appears, its spec written last (as the build does): the next refresh serves it.
    (models / "rfb640-ft.onnx").symlink_to(cache / "rfb640-ft.onnx")
    (models / "rfb640-ft.yaml").write_text((cache / "rfb640-ft.yaml").read_text())
    runtime._swap_models(proc)
    assert (proc.detector_model, proc.classifier_model) == ("rfb640-ft", "mobilenetv2-mask")
    images = dataset_dir / "images"
    now = datetime.now(UTC).replace(microsecond=0)
    ms = round(now.timestamp() * 1000)
    camera = Camera(id="c1", source_url=(images / "maksssksksss1.jpg").as_uri())
    tick = Tick(camera_id="c1", tick_id=f"c1:{ms}", scheduled_at=now, emitted_at=now)
    [outcome] = proc.process([(tick, camera)])
    assert outcome.frame.detector_model == "rfb640-ft" and outcome.frame.status == "ok", outcome.frame.error
    # A spec that names a file not there yet (a build half-way) keeps the current pair serving.
    (models / "mobilenetv2-mask-ft.yaml").write_text((cache / "mobilenetv2-mask-ft.yaml").read_text())
    runtime._swap_models(proc)
    assert proc.classifier_model == "mobilenetv2-mask"
