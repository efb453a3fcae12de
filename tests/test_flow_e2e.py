"""The whole flow, end to end: real Tansu broker, real store server (chdb), real dataset photos through the
real ONNX models, the flow running as its own process (``maskwatch flow run``) like in production.

A scripted day: a camera shows masked people, then unmasked people (images picked by their VOC
annotations) -> exactly one alert, in the store and once on the alert topic; a camera showing only
masked people -> none. A refusing HTTP camera, a hanging one and a corrupt JPEG produce health rows
while the others keep flowing; malformed ticks land in the dead-letter topic; unknown and disabled
cameras are dropped.
"""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC
from pathlib import Path

import pytest

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.ports import free_port
from maskwatch.schemas.events import AlertEvent
from maskwatch.schemas.parse import parse_event

from tests.flowkit import (
    build_scenario,
    has_frames,
    opened,
    produce,
    read_topic,
    start_flow,
    stop,
    wait_for,
)


@pytest.mark.slow
def test_flow_end_to_end(tmp_path: Path, mw_env: Settings, dataset_dir: Path, hanging_camera: str) -> None:
    sc = build_scenario(tmp_path, mw_env, dataset_dir, hanging_camera)
    produce(sc.settings, sc.ticks, [(b"mixed", b"{not json"), (b"mixed", b'{"camera_id": "mixed"}'),
                                    (None, b"\xff\xfe binary")])
    log_path = tmp_path / "flow.log"
    metrics_port = free_port()
    proc = start_flow({**sc.env, "MASKWATCH_METRICS_PORT": str(metrics_port)}, log_path)
    try:
        wait_for("every tick's frame row", has_frames(sc.settings, sc.expected_frames), 150, proc,
                 log_path)
        has_alert = lambda: bool(store.query_rows("SELECT 1 FROM alerts", settings=sc.settings))  # noqa: E731
        wait_for("the alert row", has_alert, 30, proc, log_path)
        alerts_on_topic = read_topic(sc.settings, sc.settings.topic_alerts, 1)
        dead = read_topic(sc.settings, sc.settings.topic_dead_letter, 3)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
            metrics = resp.read().decode()
    finally:
        stop(proc)
    s = sc.settings
    q = lambda sql: store.query_rows(sql, settings=s)  # noqa: E731

    # Frames: one per tick of each processed camera, with the right status; nothing for off/ghost.
    status = {(r["camera_id"], r["status"]): r["n"] for r in
              q("SELECT camera_id, status, count() AS n FROM frames FINAL GROUP BY camera_id, status")}
    assert status == {("mixed", "ok"): 26, ("masked", "ok"): 12, ("refused", "fetch_error"): 4,
                      ("hang", "fetch_error"): 3, ("corrupt", "decode_error"): 3}
    # Detections: the unmasked phase of 'mixed' shows no-mask faces; box coordinates are fractions.
    det = q("SELECT countIf(nomask) AS nomask, count() AS n, max(x2) AS x2 FROM detections FINAL "
            "WHERE camera_id = 'mixed'")[0]
    assert det["nomask"] >= 6 and det["n"] >= 20 and 0 < det["x2"] <= 1
    snaps = q("SELECT count() AS n FROM frames FINAL WHERE camera_id='mixed' AND snapshot_path != ''")
    assert snaps[0]["n"] >= 6

    # Health: the dead cameras are recorded with growing failure counts and no credentials.
    health = q("SELECT camera_id, status, max(consecutive_failures) AS f, any(error) AS e "
               "FROM camera_health FINAL GROUP BY camera_id, status ORDER BY camera_id")
    by = {(h["camera_id"], h["status"]): h for h in health}
    assert by[("refused", "fetch_error")]["f"] == 4
    refused = by[("refused", "fetch_error")]["e"]
    assert "hunter2" not in refused and "refused" in refused
    hang = [h for (cam, _), h in by.items() if cam == "hang"]
    assert {h["status"] for h in hang} <= {"timeout", "fetch_error"} and max(h["f"] for h in hang) == 3
    # Normally a timeout (its deadline); on a loaded box a fetch can instead see the server drop the
    # connection after its 5 s (a fetch_error; seen in 1 of ~10 full runs, see issue #19's note).
    assert all("time" in h["e"] or "deadline" in h["e"] for h in hang if h["status"] == "timeout")
    assert all("127.0.0.1" in h["e"] for h in hang if h["status"] == "fetch_error")
    assert by[("corrupt", "decode_error")]["f"] == 3
    assert ("mixed", "ok") in by and by[("mixed", "ok")]["f"] == 0
    everything = json.dumps([q("SELECT * FROM frames"), q("SELECT * FROM camera_health")], default=str)
    assert "hunter2" not in everything

    # Alerts: exactly one, for the camera whose people took their masks off, after they did.
    alerts = q("SELECT * FROM alerts FINAL")
    assert [a["camera_id"] for a in alerts] == ["mixed"]
    alert = alerts[0]
    assert alert["window_end"].replace(tzinfo=UTC) > sc.mixed_unmasked_from
    assert alert["nomask_faces"] >= 5 and alert["site"] == "hq" and alert["zone"] == "lobby"
    unmasked_ms = sc.mixed_unmasked_from.timestamp() * 1000
    # Its evidence is mostly the unmasked phase (the classifier may misread an odd masked face).
    late = [t for t in alert["tick_ids"] if int(t.split(":")[1]) >= unmasked_ms]
    assert len(late) > len(alert["tick_ids"]) / 2
    assert Path(alert["snapshot_path"]).is_file()
    # ... and opened once on the alert topic, keyed by camera, as the versioned JSON schema (v2); its later
    # steps (more people, resolved) share its id, each event once.
    [payload] = opened(alerts_on_topic)
    assert {m.key() for m in alerts_on_topic} == {b"mixed"} and payload["alert_id"] == alert["alert_id"]
    assert payload["schema_version"] == 2 and payload["rule"]["kind"] in ("nomask_people", "nomask_ratio")
    assert parse_event(AlertEvent, alerts_on_topic[0].value()).camera_id == "mixed"

    # Dead letters: each malformed tick with a reason naming the problem, raw payload kept.
    letters = [json.loads(m.value()) for m in dead]
    assert len(letters) == 3 and all(d["stage"] == "parse_tick" for d in letters)
    reasons = " | ".join(d["error"] for d in letters)
    assert "not valid JSON" in reasons and "tick.tick_id" in reasons and "scheduled_at" in reasons
    assert any(d["payload"].startswith("base64:") for d in letters)
    # Unknown and disabled cameras: dropped, with the reason counted in the flow's log.
    log_text = log_path.read_text()
    assert "camera ghost: unknown_camera" in log_text and "camera off: disabled_camera" in log_text
    assert 'maskwatch_flow_ticks_dropped_total{reason="unknown_camera"} 2.0' in metrics
    assert 'maskwatch_flow_ticks_dropped_total{reason="disabled_camera"} 2.0' in metrics
