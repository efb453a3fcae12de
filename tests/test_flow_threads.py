"""Each flow worker's inference engine gets its share of the cores, not all of them."""

from __future__ import annotations

import threading

import pytest

from flows.detect import _Runtime
from flows.options import FlowOptions
from inference.engine import InferenceEngine
from inference.session import cpu_count
from maskwatch.config import Settings


@pytest.mark.parametrize("workers", [1, 2])
def test_worker_engines_split_the_cores(workers: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKWATCH_FLOW_WORKERS", str(workers))  # what `maskwatch flow run -w` sets
    opts = FlowOptions.from_env()
    assert opts.workers == workers
    runtime = _Runtime(Settings(), opts)
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
