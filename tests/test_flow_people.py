"""Rules on people through the real flow (broker, store, models): scripted scenes built from real dataset
faces pasted on a wall, each person drifting a little from tick to tick.

* ``alone``: one unmasked person stays in view for every tick -> many sightings, one person, and no
  ">= 2 no-mask people" alert (counting sightings, as rules did before, would have fired);
* ``pair``: two unmasked people -> exactly one such alert, naming two people;
* ``fenced``: the same two, but the camera counts only the left half of its frame -> the right one is
  stored flagged ``outside``, counts towards neither the rule nor the frame's figures, and no alert;
* ``lingers``: the lone person again, under a dwell rule (8 s) -> one dwell alert;
* ``hushed``: the pair on a Tokyo site whose quiet hours, read in Tokyo time, cover the scene -> no alert,
  and ``paused``: the pair on a camera paused for an hour -> no alert; both counted as suppressed, their
  frames and faces stored all the same.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cv2
import numpy as np
import pytest

from maskwatch import store
from maskwatch.cameras import registry, sites
from maskwatch.config import Settings
from maskwatch.inference.serving.engine import InferenceEngine, default_models
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera, CountingArea, RuleOverrides, Schedule, Site
from maskwatch.topics import ensure_topics

from tests.flowkit import (
    CURRENT_DETECTIONS,
    INTERVAL_S,
    flow_env,
    has_frames,
    make_ticks,
    metric_values,
    produce,
    scenario_base_ms,
    start_flow,
    stop,
    wait_for,
)

W, H = 1280, 720
FACE_PX = 110  # pasted face height
FRAMES = 10  # one picture per tick, cycling (the scenario's base time is a multiple of the cycle)
TICKS = 12
LEFT, RIGHT = (140, 220), (820, 240)  # where the two people stand (top left of their picture)


def unmasked_faces(dataset_dir: Path) -> Iterator[np.ndarray]:
    """Head-and-shoulders crops of photos with one unmasked face, scaled to a face FACE_PX high."""
    for xml in sorted((dataset_dir / "annotations").glob("*.xml")):
        objects = list(ET.parse(xml).getroot().iter("object"))
        if len(objects) != 1 or objects[0].findtext("name") != "sin_mascarilla":
            continue
        box = [int(objects[0].findtext(f"bndbox/{k}") or 0) for k in ("xmin", "ymin", "xmax", "ymax")]
        if box[3] - box[1] < 50:
            continue
        image = cv2.imread(str(dataset_dir / "images" / f"{xml.stem}.jpg"))
        assert image is not None, xml.stem
        fw, fh = box[2] - box[0], box[3] - box[1]
        x1, y1 = max(0, box[0] - fw // 2), max(0, box[1] - fh // 2)
        crop = image[y1:box[3] + fh // 2, x1:box[2] + fw // 2]
        scale = FACE_PX / fh
        yield cv2.resize(crop, (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))))


def scene(people: list[tuple[np.ndarray, tuple[int, int]]], step: int) -> bytes:
    """A wall with each person at their place, drifted ``step`` times a few pixels (they shift, nod), as
    the JPEG the camera serves."""
    wall = np.full((H, W, 3), 128, np.uint8)
    for crop, (x, y) in people:
        x, y = x + 5 * step, y + 3 * (step % 3)
        h, w = min(crop.shape[0], H - y), min(crop.shape[1], W - x)
        wall[y:y + h, x:x + w] = crop[:h, :w]
    return cv2.imencode(".jpg", wall, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()


def decoded(jpegs: list[bytes]) -> list[np.ndarray]:
    return [np.asarray(cv2.imdecode(np.frombuffer(j, np.uint8), cv2.IMREAD_COLOR)) for j in jpegs]


def pick_pair(dataset_dir: Path, engine: InferenceEngine) -> tuple[np.ndarray, np.ndarray]:
    """Two faces that the real models find, and read as unmasked, on every picture of every scene."""
    found: list[np.ndarray] = []
    for crop in unmasked_faces(dataset_dir):
        for place in (LEFT, RIGHT):
            frames = [scene([(crop, place)], s) for s in range(FRAMES)]
            results = engine.infer(decoded(frames))
            if not all(len(r.faces) == 1 and r.faces[0].label == "no_mask" for r in results):
                break
        else:
            found.append(crop)
            if len(found) == 2:
                both = engine.infer(decoded([scene([(found[0], LEFT), (found[1], RIGHT)], s)
                                             for s in range(FRAMES)]))
                if all(len(r.faces) == 2 and all(f.label == "no_mask" for f in r.faces) for r in both):
                    return found[0], found[1]
                found.pop()
    raise AssertionError("no two unmasked faces that the models read as such on every picture")


def replay(root: Path, frames: list[bytes]) -> str:
    root.mkdir(parents=True)
    for i, frame in enumerate(frames):
        (root / f"{i:03d}.jpg").write_bytes(frame)
    return root.as_uri()


@pytest.mark.slow
def test_rules_count_people_and_areas_filter_faces(tmp_path: Path, mw_env: Settings,
                                                   dataset_dir: Path) -> None:
    store.migrate(mw_env)
    ensure_topics(mw_env)
    detector, classifier = default_models(mw_env.models_dir)
    a, b = pick_pair(dataset_dir, InferenceEngine.default(detector, classifier, models_dir=mw_env.models_dir))
    alone = replay(tmp_path / "alone", [scene([(a, LEFT)], s) for s in range(FRAMES)])
    pair = replay(tmp_path / "pair", [scene([(a, LEFT), (b, RIGHT)], s) for s in range(FRAMES)])
    two = RuleOverrides(min_people=2, cooldown_s=3600)
    left_half = CountingArea(include=[[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]])
    cameras = [
        Camera(id="alone", interval_s=INTERVAL_S, source_url=alone, rules=two),
        Camera(id="pair", interval_s=INTERVAL_S, source_url=pair, rules=two),
        Camera(id="fenced", interval_s=INTERVAL_S, source_url=pair, rules=two, area=left_half),
        Camera(id="lingers", interval_s=INTERVAL_S, source_url=alone,
               rules=RuleOverrides(min_people=0, min_dwell_s=8, cooldown_s=3600)),
        Camera(id="hushed", site="tokyo", interval_s=INTERVAL_S, source_url=pair, rules=two),
        Camera(id="paused", interval_s=INTERVAL_S, source_url=pair, rules=two,
               schedule=Schedule(paused_until=datetime.now(UTC) + timedelta(hours=1))),
    ]
    for cam in cameras:
        registry.put_camera(cam, mw_env)
    # Quiet from three hours before to one hour after now, Tokyo time (UTC+9): the whole scene.
    tokyo = datetime.now(ZoneInfo("Asia/Tokyo"))
    quiet = f"{tokyo - timedelta(hours=3):%H:%M}-{tokyo + timedelta(hours=1):%H:%M}"
    sites.put_site(Site(id="tokyo", timezone="Asia/Tokyo", schedule=Schedule(quiet_hours=[quiet])), mw_env)
    cycle_ms = int(FRAMES * INTERVAL_S * 1000)
    ticks = make_ticks([c.id for c in cameras], TICKS, scenario_base_ms() // cycle_ms * cycle_ms)
    produce(mw_env, ticks)
    log_path = tmp_path / "flow.log"
    # The tests' flow settings turn on the (sightings) ratio rule; here only the people rules are on.
    env = {**flow_env(mw_env, tmp_path, dataset_dir), "MASKWATCH_FLOW_RULE_NOMASK_RATIO": "0",
           "MASKWATCH_METRICS_PORT": str(free_port())}
    proc = start_flow(env, log_path)
    try:
        wait_for("every frame", has_frames(mw_env, {c.id: TICKS for c in cameras}), 180, proc, log_path)
        # The first two buckets close with the last ticks; their alerts follow at once.
        wait_for("the alerts", lambda: len(rows("SELECT alert_id FROM alerts FINAL", mw_env)) >= 2, 30,
                 proc, log_path)
        suppressed = lambda: metric_values(int(env["MASKWATCH_METRICS_PORT"]))  # noqa: E731
        wait_for("the suppressed alerts", lambda: suppressed().get(
            'maskwatch_alerts_suppressed_total{reason="quiet"}', 0) >= 1 and suppressed().get(
            'maskwatch_alerts_suppressed_total{reason="paused"}', 0) >= 1, 30, proc, log_path)
    finally:
        stop(proc)

    alerts = {r["camera_id"]: r for r in rows("SELECT * FROM alerts FINAL", mw_env)}
    assert sorted(alerts) == ["lingers", "pair"], alerts
    assert ">=2 no-mask people" in alerts["pair"]["rule"] and "(2 no-mask people" in alerts["pair"]["message"]
    assert "in view for >=8s" in alerts["lingers"]["rule"]
    counts = {r["camera_id"]: r["n"] for r in rows(
        f"SELECT camera_id, countIf(nomask) AS n FROM {CURRENT_DETECTIONS} GROUP BY camera_id", mw_env)}
    assert counts["hushed"] == counts["paused"] == 2 * TICKS  # analysed and stored, only not alerted

    faces = rows(f"SELECT camera_id, tick_id, person_id, ignored, nomask FROM {CURRENT_DETECTIONS}", mw_env)
    by_camera: dict[str, list[dict[str, Any]]] = {}
    for f in faces:
        by_camera.setdefault(f["camera_id"], []).append(f)
    # alone: a no-mask sighting on every tick, all of one person (what counting sightings got wrong).
    assert len(by_camera["alone"]) == TICKS and all(f["nomask"] for f in by_camera["alone"])
    assert len({f["person_id"] for f in by_camera["alone"]}) == 1
    assert len({f["person_id"] for f in by_camera["pair"]}) == 2
    # fenced: the right-hand person is stored, flagged, and belongs to nobody; the frames count one face.
    fenced = by_camera["fenced"]
    outside = [f for f in fenced if f["ignored"]]
    assert len(outside) == TICKS and {f["ignored"] for f in outside} == {"outside"}
    assert {f["person_id"] for f in outside} == {""}
    assert len({f["person_id"] for f in fenced if not f["ignored"]}) == 1
    frames = rows("SELECT camera_id, sum(faces) AS faces, sum(nomask_faces) AS nomask FROM frames FINAL "
                  "GROUP BY camera_id", mw_env)
    assert {r["camera_id"]: (r["faces"], r["nomask"]) for r in frames}["fenced"] == (TICKS, TICKS)


def rows(sql: str, settings: Settings) -> list[dict[str, Any]]:
    return store.query_rows(sql, settings=settings)
