"""Hostile ticks: malformed, oversized (2 MB), naming a URL to fetch, naming unknown cameras. Each malformed
or oversized record lands in the dead-letter topic with its reason; a URL in a tick is never fetched (the
fetch goes to the registry's URL); unknown cameras are dropped and counted; good ticks keep flowing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera
from maskwatch.topics import ensure_topics

from tests.flowkit import (
    INTERVAL_S,
    RecordingServer,
    flow_env,
    frame_counts,
    has_frames,
    make_ticks,
    metric_values,
    pick_images,
    read_topic,
    replay_dir,
    scenario_base_ms,
    start_flow,
    stop,
    wait_for,
)


@pytest.fixture
def attacker_url(recorder: RecordingServer) -> str:
    """Where a forged tick would like the flow to go: it records every request it gets (``recorder``)."""
    return f"http://127.0.0.1:{recorder.port}/steal"


def test_malformed_oversized_url_and_unknown_ticks(
    tmp_path: Path, mw_env: Settings, dataset_dir: Path, attacker_url: str, recorder: RecordingServer,
    fault_figures: Callable[..., None],
) -> None:
    store.migrate(mw_env)
    ensure_topics(mw_env)
    images = pick_images(dataset_dir, "con_mascarilla", 4)
    registry.put_camera(Camera(id="good", interval_s=INTERVAL_S,
                               source_url=replay_dir(tmp_path / "good", images).as_uri()), mw_env)
    base_ms = scenario_base_ms()
    good = make_ticks(["good"], 6, base_ms)
    ghosts = make_ticks(["ghost-1", "ghost-2"], 2, base_ms)
    # A well-formed tick of the good camera that also names a URL: refused whole (ticks carry no URL).
    forged = json.loads(good[0].model_dump_json()) | {"tick_id": f"good:{base_ms + 1}", "url": attacker_url}
    tick1 = json.loads(good[1].model_dump_json())
    bad: list[tuple[str, bytes]] = [
        ("not json", b"{not json"),
        ("missing fields", b'{"camera_id": "good"}'),
        ("wrong type", json.dumps({**tick1, "scheduled_at": "soon"}).encode()),
        ("bad camera id", json.dumps({**tick1, "camera_id": "a:b"}).encode()),
        ("url", json.dumps(forged).encode()),
        ("binary", b"\xff\xfe\x00binary"),
        ("2 MB", b'{"camera_id": "good", "pad": "' + b"x" * (2 * 1024 * 1024) + b'"}'),
    ]
    producer = Producer({**mw_env.kafka_config(), "message.max.bytes": 4 * 1024 * 1024})
    for t in good[:3] + ghosts:
        producer.produce(mw_env.topic_ticks, key=t.camera_id.encode(), value=t.model_dump_json().encode())
    for _, value in bad:
        producer.produce(mw_env.topic_ticks, key=b"good", value=value)
    for t in good[3:]:
        producer.produce(mw_env.topic_ticks, key=t.camera_id.encode(), value=t.model_dump_json().encode())
    assert producer.flush(30) == 0

    metrics_port = free_port()
    env = {**flow_env(mw_env, tmp_path, dataset_dir), "MASKWATCH_METRICS_PORT": str(metrics_port)}
    log_path = tmp_path / "flow.log"
    proc = start_flow(env, log_path)
    try:
        wait_for("the good camera's frames", has_frames(mw_env, {"good": len(good)}), 150, proc, log_path)
        letters = [json.loads(m.value()) for m in read_topic(mw_env, mw_env.topic_dead_letter, len(bad))]
        metrics = metric_values(metrics_port)
        assert proc.poll() is None, "the flow died"
    finally:
        stop(proc)

    # Every bad record is one dead letter (no duplicates) with a reason naming the problem.
    assert len(letters) == len(bad), "\n".join(d["error"] for d in letters)
    assert len({d["offset"] for d in letters}) == len(bad)
    errors = [d["error"] for d in letters]
    for expected in ("not valid JSON", "tick.tick_id", "tick.scheduled_at", "tick.camera_id",
                     "tick.url: extra inputs are not permitted", "over the 65536-byte limit"):
        assert any(expected in e for e in errors), (expected, errors)
    big = next(d for d in letters if "byte limit" in d["error"])
    assert len(big["payload"]) <= 4096 and big["payload"].startswith('{"camera_id": "good"')
    assert any(d["payload"].startswith("base64:") for d in letters)
    # The URL in the forged tick was never requested; the good camera's frames are exactly its ticks.
    assert recorder.requests == []
    assert frame_counts(mw_env) == {"good": len(good)}
    assert store.query_rows("SELECT count() AS n FROM frames WHERE tick_id = {t:String}",
                            {"t": forged["tick_id"]}, settings=mw_env)[0]["n"] == 0
    # Unknown cameras: dropped and counted; dead letters counted by stage.
    assert metrics['maskwatch_flow_ticks_dropped_total{reason="unknown_camera"}'] == len(ghosts)
    assert metrics['maskwatch_flow_dead_letters_total{stage="parse_tick"}'] == len(bad)
    assert metrics["maskwatch_ticks_in_total"] == len(good) + len(ghosts) + len(bad)
    fault_figures(fault="malformed/oversized/URL/unknown ticks", ticks=len(good) + len(ghosts) + len(bad),
                  dead_letters=len(letters), dropped_unknown=len(ghosts), frames=len(good),
                  attacker_requests=len(recorder.requests), duplicates=0)
