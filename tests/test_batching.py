"""Micro-batching: shard keys, Bytewax collect by shard, and one batch through the real fetcher and the
real two-stage engine (dataset photos picked by their annotations)."""

from __future__ import annotations

import os
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main

from maskwatch.cameras.capture.fetcher import Fetcher, FetchOptions
from maskwatch.flows.batching import BatchProcessor, micro_batches, shard_key
from maskwatch.flows.routing import shard_labels
from maskwatch.schemas.events import Camera, Tick

from tests.flowkit import pick_images

NOW = datetime.now(UTC).replace(microsecond=0)


def tick(cam: str, i: int) -> Tick:
    at = NOW + timedelta(seconds=i)
    return Tick(camera_id=cam, tick_id=f"{cam}:{int(at.timestamp() * 1000)}", scheduled_at=at, emitted_at=at)


def camera(cam: str, url: str) -> Camera:
    return Camera(id=cam, site="hq", zone="z", source_url=url, interval_s=1.0)


def test_shard_keys_are_stable_and_spread() -> None:
    keys = [shard_key(f"cam-{i}", 4) for i in range(200)]
    assert keys == [shard_key(f"cam-{i}", 4) for i in range(200)]  # no per-process hash seed
    counts = Counter(keys)
    assert set(counts) == set(shard_labels(4)) and min(counts.values()) > 25


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_each_worker_gets_its_own_shard(workers: int) -> None:
    # Bytewax routes a key to a worker by its hash; plain "shard-0"/"shard-1" both land on one of two
    # workers, which then does all the inference. This runs a real cluster and records who got what.
    seen: dict[str, set[int]] = {}

    def record(state: None, key: str) -> tuple[None, str]:
        seen.setdefault(key, set()).add(threading.get_ident())
        return state, key

    flow = Dataflow("routing")
    keys = [shard_key(f"cam-{i}", workers) for i in range(60)]
    keyed = op.key_on("key", op.input("in", flow, TestingSource(keys)), lambda k: k)
    op.output("out", op.stateful_map("record", keyed, record), TestingSink([]))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert set(seen) == set(shard_labels(workers))
    assert all(len(threads) == 1 for threads in seen.values())
    assert len({t for threads in seen.values() for t in threads}) == workers


def test_batches_mix_cameras_and_respect_max_size() -> None:
    cams = [f"cam-{i}" for i in range(8)]
    items = [tick(c, i) for i in range(5) for c in cams]
    out: list = []
    flow = Dataflow("batching")
    batches = micro_batches(op.input("in", flow, TestingSource(items)), 2, timedelta(seconds=5), 6)
    op.output("out", batches, TestingSink(out))
    run_main(flow)
    sizes = [len(b) for _, b in out]
    assert sum(sizes) == len(items) and max(sizes) == 6
    assert {k for k, _ in out} == set(shard_labels(2))
    assert all(len({t.camera_id for t in b}) > 1 for _, b in out if len(b) == 6)
    for key, batch in out:  # a camera always lands in its own shard
        assert all(shard_key(t.camera_id, 2) == key for t in batch)


@pytest.fixture(scope="module")
def engine() -> object:
    from maskwatch.inference.serving.engine import InferenceEngine

    return InferenceEngine.default()


def test_one_batch_through_fetch_and_inference(tmp_path: Path, dataset_dir: Path, engine: object,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    unmasked = pick_images(dataset_dir, "sin_mascarilla", 1)[0]
    masked = pick_images(dataset_dir, "con_mascarilla", 1)[0]
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    monkeypatch.delenv("CAMERA_MISSING_PASSWORD", raising=False)
    monkeypatch.setenv("MASKWATCH_FILE_ROOTS", os.pathsep.join([str(tmp_path), str(dataset_dir)]))
    batch = [
        (tick("bare", 0), camera("bare", unmasked.as_uri())),
        (tick("covered", 0), camera("covered", masked.as_uri())),
        (tick("broken", 0), camera("broken", corrupt.as_uri())),
        (tick("secret", 0), camera("secret", "rtsp://u:${CAMERA_MISSING_PASSWORD}@127.0.0.1:1/x")),
    ]
    proc = BatchProcessor(Fetcher(FetchOptions()), engine, tmp_path / "snaps",  # type: ignore[arg-type]
                          detector_model="det", classifier_model="cls")
    out = proc.process(batch)
    assert [o.frame.camera_id for o in out] == ["bare", "covered", "broken", "secret"]
    bare, covered, broken, secret = out
    assert bare.frame.status == "ok" and bare.frame.nomask_faces >= 1 and bare.faces
    assert all(0 <= f.x1 < f.x2 <= 1 and 0 <= f.y1 < f.y2 <= 1 for f in bare.faces)
    assert bare.faces[0].detector_model == "det" and bare.frame.width > 0
    assert Path(bare.frame.snapshot_path).is_file()
    assert covered.frame.status == "ok" and covered.frame.faces >= 1 and covered.frame.nomask_faces == 0
    assert covered.frame.snapshot_path == ""  # only frames with a no-mask face keep a snapshot
    assert broken.frame.status == "decode_error" and broken.fetched_status == "decode_error"
    assert secret.frame.status == "fetch_error" and "CAMERA_MISSING_PASSWORD" in secret.frame.error
    health = broken.health(consecutive_failures=2)
    assert health.status == "decode_error" and health.consecutive_failures == 2 and health.site == "hq"
