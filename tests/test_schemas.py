"""Event schemas: generated JSON Schemas are current, and bad input is refused naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from maskwatch.cameras.sources import resolve_source_url
from maskwatch.schemas import (
    Alert,
    Camera,
    DeadLetter,
    FaceDetection,
    FrameResult,
    SchemaError,
    Tick,
    parse_event,
    validate_event,
)
from maskwatch.schemas.events import EVENT_MODELS, SCHEMA_VERSION
from maskwatch.schemas.generate import JSON_DIR, model_version, render

pytestmark = pytest.mark.without_models

NOW = "2026-01-01T12:00:00Z"
GOOD_TICK = {"camera_id": "lobby", "tick_id": "lobby:1767268800000", "scheduled_at": NOW, "emitted_at": NOW}


def test_generated_json_schemas_are_up_to_date() -> None:
    expected = render()
    on_disk = {path.name: path.read_text() for path in JSON_DIR.glob("*.json")}
    assert set(on_disk) == set(expected), "run `python -m maskwatch.schemas.generate`"
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name} is stale: run `python -m maskwatch.schemas.generate`"
    for name, model in EVENT_MODELS.items():
        schema = json.loads(on_disk[f"{name}.v{model_version(model)}.json"])
        if name not in ("camera", "site"):  # registry records, not events
            assert "schema_version" in schema["properties"], name


def test_tick_round_trip_and_carries_no_url() -> None:
    tick = parse_event(Tick, json.dumps(GOOD_TICK).encode())
    assert tick.schema_version == SCHEMA_VERSION
    assert tick.scheduled_at == datetime(2026, 1, 1, 12, tzinfo=UTC)
    assert parse_event(Tick, tick.model_dump_json()) == tick
    assert not any("url" in name or "source" in name for name in Tick.model_fields)


@pytest.mark.parametrize(
    ("model", "payload", "expected"),
    [
        (Tick, {k: v for k, v in GOOD_TICK.items() if k != "scheduled_at"},
         "tick.scheduled_at: field required"),
        (Tick, {**GOOD_TICK, "scheduled_at": "yesterday"},
         "tick.scheduled_at: input should be a valid datetime"),
        (Tick, {**GOOD_TICK, "camera_id": "lobby:2"}, "tick.camera_id: string should match pattern"),
        (Tick, {**GOOD_TICK, "source_url": "rtsp://cam"}, "tick.source_url: extra inputs are not permitted"),
        (Tick, {**GOOD_TICK, "schema_version": SCHEMA_VERSION + 1},
         "tick.schema_version: input should be less"),
        (FrameResult, {"camera_id": "a", "tick_id": "a:1", "scheduled_at": NOW, "processed_at": NOW,
                       "status": "exploded"}, "frame_result.status: input should be 'ok'"),
        (FaceDetection, {"camera_id": "a", "tick_id": "a:1", "face_index": 0, "scheduled_at": NOW,
                         "x1": 0.1, "y1": 0.1, "x2": 1.5, "y2": 0.5, "detection_score": 0.9,
                         "nomask_prob": 0.2, "nomask": False, "detector_model": "d", "classifier_model": "c"},
         "face_detection.x2: input should be less than or equal to 1"),
        (Alert, {"alert_id": "x", "camera_id": "a", "rule": "r", "triggered_at": NOW, "window_start": NOW,
                 "window_end": NOW, "faces": 2, "nomask_faces": -1, "nomask_ratio": 0.5},
         "alert.nomask_faces: input should be greater than or equal to 0"),
        (Camera, {"id": "c1", "source_url": "ftp://user:hunter2@nas/cam.jpg"},
         "camera.source_url: value error"),
        (Camera, {"id": "c1", "source_url": "file:///x", "rules": {"min_people": -1}},
         "camera.rules.min_people: input should be greater than or equal to 0"),
        (Camera, {"id": "c1", "source_url": "file:///x", "area": {"include": [[[0, 0], [1, 0]]]}},
         "camera.area.include.0: list should have at least 3 items"),
        (Camera, {"id": "c1", "source_url": "file:///x", "area": {"exclude": [[[0, 0], [1.5, 0], [1, 1]]]}},
         "camera.area.exclude.0.1.0: input should be less than or equal to 1"),
        (Camera, {"id": "c1", "source_url": "file:///x", "rules": {"window": 5}},
         "camera.rules.window: extra inputs are not permitted"),
    ],
)
def test_bad_events_are_rejected_naming_the_field(model: type, payload: dict[str, object],
                                                   expected: str) -> None:
    with pytest.raises(SchemaError) as info:
        parse_event(model, json.dumps(payload).encode())
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [(b"{not json", "tick: not valid JSON"), (b"[1, 2]", "tick: expected a JSON object, got list"),
     (b"\xff\xfe", "tick: not valid JSON")],
)
def test_undecodable_payloads_are_rejected(payload: bytes, expected: str) -> None:
    with pytest.raises(SchemaError, match=expected):
        parse_event(Tick, payload)


def test_free_text_fields_are_redacted_on_the_way_in() -> None:
    record = DeadLetter(stage="fetch", error="timeout reading rtsp://admin:hunter2@10.0.0.5/live",
                        payload='{"url": "http://cam/snap?password=hunter2"}', occurred_at=datetime.now(UTC))
    dumped = record.model_dump_json()
    assert "hunter2" not in dumped
    assert "rtsp://***@10.0.0.5/live" in record.error


def test_camera_keeps_credentials_out_of_repr_and_display() -> None:
    camera = Camera(id="door", source_url="rtsp://admin:hunter2@10.0.0.5/live?token=abc123")
    assert camera.source_url.startswith("rtsp://admin:hunter2@")  # the flow needs it
    assert "hunter2" not in repr(camera) and "hunter2" not in str(camera)
    assert camera.display_url == "rtsp://***@10.0.0.5/live?token=***"


def test_camera_url_placeholders_resolve_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    camera = Camera(id="door", source_url="rtsp://viewer:${CAMERA_DOOR_PASSWORD}@10.0.0.5/live")
    monkeypatch.delenv("CAMERA_DOOR_PASSWORD", raising=False)
    with pytest.raises(LookupError, match="CAMERA_DOOR_PASSWORD"):
        resolve_source_url(camera)
    monkeypatch.setenv("CAMERA_DOOR_PASSWORD", "s3cret")
    assert resolve_source_url(camera) == ("rtsp://viewer:s3cret@10.0.0.5/live", ["s3cret"])
    assert "s3cret" not in camera.model_dump_json()


@pytest.mark.parametrize("url", [
    "http://public.example/x?q=${MASKWATCH_STORE_PASSWORD}",
    "rtsp://u:${MASKWATCH_KAFKA_SASL_PASSWORD}@cam/live",
    "http://cam/${HOME}/snap.jpg",
    "http://cam/snap.jpg?k=${CAMERA_}",
    "http://cam/snap.jpg?k=${camera_lower}",
    "http://cam/snap.jpg?k=$" + "{CAMERA_X",
])
def test_camera_urls_may_only_name_camera_variables(url: str) -> None:
    with pytest.raises(SchemaError, match="placeholder") as info:
        validate_event(Camera, {"id": "door", "source_url": url})
    assert "CAMERA_" in str(info.value)


def test_camera_names_and_labels_refuse_unsafe_characters() -> None:
    for field, value in [("name", "Lobby\x00"), ("name", "x" * 129), ("site", "hq/annex"), ("zone", "a:b"),
                         ("name", "\ud800"), ("site", " hq"), ("zone", "line\u2028break")]:
        with pytest.raises(SchemaError, match=field):
            validate_event(Camera, {"id": "door", "source_url": "http://cam/x.jpg", field: value})
    ok = validate_event(Camera, {"id": "door", "source_url": "http://cam/x.jpg", "name": "Hall (Süd) & Café",
                                 "site": "HQ-1", "zone": "Gate 3"})
    assert ok.name == "Hall (Süd) & Café"


def test_filled_values_are_masked_in_error_texts() -> None:
    from maskwatch.cameras.sources import mask_values

    text = "HTTP 401 from http://cam/x?q=pa%2Fss%23word: pa/ss#word refused"
    assert mask_values(text, ["pa/ss#word"]) == "HTTP 401 from http://cam/x?q=***: *** refused"
