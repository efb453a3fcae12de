"""Camera health through the real flow (broker, store, models): a camera that goes dead and recovers walks
ok -> degraded -> down -> ok, and each change is a row of camera_health_events and an event on the
camera-health topic; a camera whose address the network policy refuses at fetch time is
``blocked`` without a request; an image over the pixel limit is ``oversized`` and never decoded. The
flow's Prometheus metrics count all of it."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera, CameraHealthEvent, Tick
from maskwatch.schemas.parse import parse_event
from maskwatch.topics import ensure_topics

from tests.flowkit import (
    FLOW_ENV,
    INTERVAL_S,
    RecordingServer,
    has_frames,
    metric_values,
    pick_images,
    produce,
    read_topic,
    scenario_base_ms,
    start_flow,
    stop,
    wait_for,
)

# flaky's replay directory, one image per tick: good, four corrupt, good, good.
FLAKY = ["good", "bad", "bad", "bad", "bad", "good", "good"]
# With the default thresholds (degraded from 1 failure in a row, down from 3, ok again after 2 good).
EXPECTED_STATES = ["ok", "degraded", "degraded", "down", "down", "down", "ok"]
# The changes published, one per change: (kind, the tick index that made it).
EXPECTED_CHANGES = [("degraded", 1), ("down", 3), ("up", 6)]


@pytest.fixture
def recording_camera(recorder: RecordingServer) -> str:
    return f"http://user:s3cret@127.0.0.1:{recorder.port}/snap.jpg"


@pytest.mark.slow
def test_health_states_blocked_and_oversized(tmp_path: Path, mw_env: Settings, dataset_dir: Path,
                                             recording_camera: str, recorder: RecordingServer) -> None:
    store.migrate(mw_env)
    ensure_topics(mw_env)
    good = pick_images(dataset_dir, "con_mascarilla", 1)[0]
    flaky_dir = tmp_path / "flaky"
    flaky_dir.mkdir()
    for i, kind in enumerate(FLAKY):
        path = flaky_dir / f"{i:03d}.jpg"
        if kind == "good":
            path.symlink_to(good)
        else:
            path.write_bytes(good.read_bytes()[:40] + b"\0" * 100)
    bomb = tmp_path / "bomb.png"  # a header declaring 60000 x 60000 pixels
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2
                     + b"\x08\x02\x00\x00\x00" + b"\0" * 64)
    cameras = [
        Camera(id="flaky", interval_s=INTERVAL_S, source_url=flaky_dir.as_uri()),
        # Registered directly in the store (as if its name resolved to a public address back then):
        # at fetch time it is on loopback and the camera does not allow private networks.
        Camera(id="private", interval_s=INTERVAL_S, source_url=recording_camera),
        Camera(id="bomb", interval_s=INTERVAL_S, source_url=bomb.as_uri()),
    ]
    for cam in cameras:
        registry.put_camera(cam, mw_env)
    # Tick i shows image i of the replay directory: start on a multiple of the 7-image cycle.
    cycle_ms = int(len(FLAKY) * INTERVAL_S * 1000)
    base_ms = scenario_base_ms() // cycle_ms * cycle_ms
    ticks = []
    for i in range(len(FLAKY)):
        ms = base_ms + int(i * INTERVAL_S * 1000)
        at = datetime.fromtimestamp(ms / 1000, UTC)
        ticks += [Tick(camera_id=c.id, tick_id=f"{c.id}:{ms}", scheduled_at=at, emitted_at=at)
                  for c in cameras]
    produce(mw_env, ticks)
    env = {**os.environ, **FLOW_ENV, "MASKWATCH_HOME": str(mw_env.home),
           "MASKWATCH_KAFKA_BOOTSTRAP": mw_env.kafka_bootstrap, "MASKWATCH_STORE_URL": mw_env.store_url,
           "MASKWATCH_TOPIC_TICKS": mw_env.topic_ticks, "MASKWATCH_TOPIC_ALERTS": mw_env.topic_alerts,
           "MASKWATCH_TOPIC_DEAD_LETTER": mw_env.topic_dead_letter,
           "MASKWATCH_TOPIC_CAMERA_HEALTH": mw_env.topic_camera_health,
           # Every tick fetched, even of cameras failing in a row: this test follows each tick's state
           # (back-off, which would skip some, has its own tests).
           "MASKWATCH_FLOW_FETCH_BACKOFF_AFTER": "100",
           "MASKWATCH_FILE_ROOTS": os.pathsep.join([str(tmp_path), str(dataset_dir)]),
           "MASKWATCH_METRICS_PORT": str(free_port())}
    log_path = tmp_path / "flow.log"
    proc = start_flow(env, log_path)
    try:
        expected = {c.id: len(FLAKY) for c in cameras}
        wait_for("every tick's frame row", has_frames(mw_env, expected), 150, proc, log_path)
        metrics = metric_values(int(env["MASKWATCH_METRICS_PORT"]))
    finally:
        stop(proc)

    rows = store.query_rows("SELECT camera_id, status, state, consecutive_failures AS f, error "
                            "FROM camera_health FINAL ORDER BY camera_id, scheduled_at", settings=mw_env)
    by: dict[str, list[dict[str, object]]] = {}
    for r in rows:
        by.setdefault(str(r["camera_id"]), []).append(r)
    flaky = by["flaky"]
    assert [r["state"] for r in flaky] == EXPECTED_STATES
    assert [r["f"] for r in flaky] == [0, 1, 2, 3, 4, 0, 0]
    assert [r["status"] for r in flaky] == ["ok" if k == "good" else "decode_error" for k in FLAKY]

    private = by["private"]
    assert {r["status"] for r in private} == {"blocked"} and private[-1]["state"] == "down"
    assert "loopback" in str(private[0]["error"]) and "allow_private_network" in str(private[0]["error"])
    assert recorder.requests == []  # no request reached the camera
    bomb_rows = by["bomb"]
    assert {r["status"] for r in bomb_rows} == {"oversized"}
    assert "MASKWATCH_MAX_IMAGE_PIXELS" in str(bomb_rows[0]["error"])
    everything = str(store.query_rows("SELECT * FROM camera_health", settings=mw_env))
    assert "s3cret" not in everything

    # Changes, debounced: one per change, in the store and on the topic, the same events.
    changes = store.query_rows("SELECT camera_id, kind, state, previous_state, tick_id, error "
                               "FROM camera_health_events FINAL ORDER BY camera_id, changed_at",
                               settings=mw_env)
    flaky_ticks = [t.tick_id for t in ticks if t.camera_id == "flaky"]
    assert [(c["kind"], c["tick_id"]) for c in changes if c["camera_id"] == "flaky"] == [
        (kind, flaky_ticks[i]) for kind, i in EXPECTED_CHANGES]
    assert [c["kind"] for c in changes if c["camera_id"] == "private"] == ["degraded", "down"]
    assert "s3cret" not in str(changes)
    messages = read_topic(mw_env, mw_env.topic_camera_health, expect_at_least=len(changes))
    published = [parse_event(CameraHealthEvent, m.value()) for m in messages]
    assert sorted((e.camera_id, e.kind, e.tick_id) for e in published) == sorted(
        (str(c["camera_id"]), str(c["kind"]), str(c["tick_id"])) for c in changes)
    assert all(m.key() == e.camera_id.encode() for m, e in zip(messages, published, strict=True))

    def m(name: str, **labels: str) -> float:
        key = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return metrics.get(f"{name}{{{key}}}" if key else name, 0.0)

    n = len(FLAKY)
    assert m("maskwatch_ticks_in_total") == 3 * n
    assert m("maskwatch_frames_fetched_total", camera="flaky") == FLAKY.count("good")
    assert m("maskwatch_frames_failed_total", camera="flaky", reason="decode_error") == FLAKY.count("bad")
    assert m("maskwatch_frames_failed_total", camera="private", reason="blocked") == n
    assert m("maskwatch_frames_failed_total", camera="bomb", reason="oversized") == n
    assert m("maskwatch_batch_size_count") >= 1 and m("maskwatch_batch_size_sum") == FLAKY.count("good")
    assert m("maskwatch_inference_seconds_count") == m("maskwatch_batch_size_count")
    assert m("maskwatch_rule_evaluations_total") >= 3  # closed buckets of the three cameras
    assert m("maskwatch_buffer_depth") == 0 and m("maskwatch_sink_lag_seconds") > 0
    assert m("maskwatch_camera_down", camera="private", site="") == 1
    assert m("maskwatch_camera_down", camera="flaky", site="") == 0
    assert m("maskwatch_camera_health_changes_total", kind="up") == 1
    assert m("maskwatch_tick_lag_seconds") > 0
