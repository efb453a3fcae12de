"""Hostile ticks: malformed, oversized (2 MB), naming a URL to fetch, naming unknown cameras. Each malformed
or oversized record lands in the dead-letter topic with its reason; a URL in a tick is never fetched (the
fetch goes to the registry's URL); unknown cameras are dropped and counted; good ticks keep flowing."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera, RuleOverrides
from maskwatch.topics import ensure_topics

from tests.flowkit import (
    INTERVAL_S,
    RecordingServer,
    duplicate_rows,
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


def _forged(camera_id: str, when: datetime, tick_id: str | None = None) -> bytes:
    """A tick that passes JSON and field types: only its content is hostile."""
    ms = round(when.timestamp() * 1000)
    body = {"schema_version": 1, "camera_id": camera_id, "tick_id": tick_id or f"{camera_id}:{ms}",
            "scheduled_at": when.isoformat().replace("+00:00", "Z"), "emitted_at": when.isoformat()}
    return json.dumps(body).encode()


def _hostile(camera_id: str, base_ms: int) -> list[tuple[str, bytes]]:
    at = datetime.fromtimestamp(base_ms / 1000, UTC)
    return [
        # A lone surrogate in the id used to wedge the store sink for good; a NUL crashed the flow on a
        # no-mask frame; both now fail the id check (ids are what the ticker derives).
        ("surrogate", _forged(camera_id, at).replace(f'"{camera_id}:{base_ms}"'.encode(),
                                                     f'"{camera_id}:{base_ms}\\ud800"'.encode())),
        ("nul", _forged(camera_id, at, tick_id=f"{camera_id}:\u0000{base_ms}")),
        ("not derived", _forged(camera_id, at, tick_id=f"{camera_id}:{base_ms + 1}")),
        # Ids consistent, dates not: year 9999 overflowed the windowing; 2100 made every real tick late.
        ("year 9999", _forged(camera_id, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))),
        ("year 2100", _forged(camera_id, datetime(2100, 1, 1, tzinfo=UTC))),
        ("year 1", _forged(camera_id, datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC))),
    ]


def _alerts_by_camera(settings: Settings) -> dict[str, int]:
    rows = store.query_rows("SELECT camera_id, count() AS n FROM alerts FINAL GROUP BY camera_id",
                            settings=settings)
    return {r["camera_id"]: r["n"] for r in rows}


def test_schema_valid_hostile_ticks_are_dead_lettered_and_alerts_go_on_also_after_recovery(
    tmp_path: Path, mw_env: Settings, dataset_dir: Path, fault_figures: Callable[..., None],
) -> None:
    """Hostile ids and dates end in the dead-letter topic with the reason; the same tick delivered twice is
    counted and stored once; the attacked camera and its neighbour keep storing and alerting, also after a
    kill -9 and a restart from recovery with more hostile ticks waiting."""
    store.migrate(mw_env)
    ensure_topics(mw_env)
    unmasked = pick_images(dataset_dir, "sin_mascarilla", 6)
    for cam in ("victim", "other"):
        registry.put_camera(Camera(id=cam, interval_s=INTERVAL_S, rules=RuleOverrides(min_people=1,
                                                                                      cooldown_s=0),
                                   source_url=replay_dir(tmp_path / cam, unmasked).as_uri()), mw_env)
    base_ms = scenario_base_ms() - 120_000
    first = make_ticks(["victim", "other"], 8, base_ms)
    second = make_ticks(["victim", "other"], 8, base_ms + 60_000)
    hostile = _hostile("victim", base_ms)
    duplicates = [t for t in first if t.camera_id == "victim"][:2]
    producer = Producer(mw_env.kafka_config())
    for _, value in hostile:
        producer.produce(mw_env.topic_ticks, key=b"victim", value=value)
    for t in first + duplicates:  # the same records again, as a producer retry would send them
        producer.produce(mw_env.topic_ticks, key=t.camera_id.encode(), value=t.model_dump_json().encode())
    assert producer.flush(30) == 0

    metrics_port = free_port()
    env = {**flow_env(mw_env, tmp_path, dataset_dir), "MASKWATCH_METRICS_PORT": str(metrics_port)}
    log_path = tmp_path / "flow.log"
    proc = start_flow(env, log_path)
    try:
        wait_for("the first ticks' frames", has_frames(mw_env, {"victim": 8, "other": 8}), 150, proc,
                 log_path)
        wait_for("alerts of both cameras", lambda: set(_alerts_by_camera(mw_env)) == {"victim", "other"},
                 60, proc, log_path)
        letters = [json.loads(m.value()) for m in read_topic(mw_env, mw_env.topic_dead_letter, len(hostile))]
        metrics = metric_values(metrics_port)
        first_alerts = _alerts_by_camera(mw_env)
        # kill -9 with more hostile ticks and real ones waiting: the restart must not trip over them.
        proc.kill()
        proc.wait(10)
    finally:
        stop(proc)
    assert len(letters) == len(hostile), [d["error"] for d in letters]
    by_payload = {d["payload"]: d["error"] for d in letters}
    for name, value in hostile:
        error = by_payload[value.decode()]
        expected = "outside the accepted band" if name.startswith("year") else "tick_id"
        assert expected in error, (name, error)
    assert metrics['maskwatch_flow_ticks_dropped_total{reason="duplicate"}'] == len(duplicates)
    assert all(n == 0 for n in duplicate_rows(mw_env).values())

    producer = Producer(mw_env.kafka_config())
    for _, value in _hostile("victim", base_ms + 60_000):
        producer.produce(mw_env.topic_ticks, key=b"victim", value=value)
    for t in second:
        producer.produce(mw_env.topic_ticks, key=t.camera_id.encode(), value=t.model_dump_json().encode())
    assert producer.flush(30) == 0
    proc = start_flow(env, log_path)
    try:
        wait_for("every real tick's frame after the restart", has_frames(mw_env, {"victim": 16, "other": 16}),
                 150, proc, log_path)
        wait_for("new alerts of the attacked camera",
                 lambda: _alerts_by_camera(mw_env).get("victim", 0) > first_alerts["victim"], 60, proc,
                 log_path)
        assert proc.poll() is None, "the flow died"
    finally:
        stop(proc)
    later = [json.loads(m.value()) for m in read_topic(mw_env, mw_env.topic_dead_letter, 2 * len(hostile))]
    assert {d["payload"] for d in later} >= {v.decode() for _, v in _hostile("victim", base_ms + 60_000)}
    assert all(n == 0 for n in duplicate_rows(mw_env).values())
    fault_figures(fault="schema-valid hostile ticks + duplicates, kill -9, restart",
                  hostile=2 * len(hostile), dead_letters=len(later), duplicates_dropped=len(duplicates),
                  frames=sum(frame_counts(mw_env).values()), alerts=_alerts_by_camera(mw_env))
