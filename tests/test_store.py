"""The store layer on the real engine: over HTTP (embedded store server) and in-process chdb://."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from maskwatch import store
from maskwatch.config import ConfigError, Settings
from maskwatch.schemas.events import Alert, CameraHealth, FaceDetection, FrameResult

pytestmark = pytest.mark.without_models

REPO_ROOT = Path(__file__).resolve().parents[1]
# Recent (older rows would already be past their TTL and dropped), whole milliseconds (DateTime64(3)).
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


@pytest.fixture
def settings(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MASKWATCH_STORE_URL", store_url)
    return Settings()


def test_migrate_creates_database_and_is_idempotent(settings: Settings) -> None:
    with pytest.raises(store.StoreError, match=r"does not exist.*maskwatch store migrate"):
        store.client(settings)
    versions = [version for version, _ in store.migrations()]
    assert versions[0] == "001_init" and store.migrate(settings) == versions
    assert store.migrate(settings) == []
    tables = store.query_df(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name",
        settings=settings)
    engines = dict(zip(tables["name"], tables["engine"], strict=True))
    for table in ("cameras", "frames", "detections", "alerts", "alert_acks", "camera_health",
                  "schema_migrations"):
        assert engines.get(table) == "ReplacingMergeTree", table
    assert store.query_rows("SELECT count() AS n FROM schema_migrations", settings=settings) == [
        {"n": len(versions)}]


def test_ttls_come_from_the_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKWATCH_TTL_DAYS_FRAMES", "7")
    monkeypatch.setenv("MASKWATCH_TTL_DAYS_ALERTS", "90")
    store.migrate(settings)
    assert "toIntervalDay(7)" in store.command("SHOW CREATE TABLE frames", settings=settings)
    assert "toIntervalDay(90)" in store.command("SHOW CREATE TABLE alerts", settings=settings)
    assert "toIntervalDay(30)" in store.command("SHOW CREATE TABLE detections", settings=settings)
    frame = _events()[0]
    expired_at = datetime.now(UTC) - timedelta(days=8)
    old = frame.model_copy(update={"tick_id": "cam-1:old", "scheduled_at": expired_at})
    store.insert_models("frames", [frame, old], settings)
    store.command("OPTIMIZE TABLE frames FINAL", settings=settings)
    assert store.query_rows("SELECT tick_id FROM frames", settings=settings) == [{"tick_id": frame.tick_id}]


def test_rollups_outlive_the_raw_rows_and_count_people_and_ticks_once(settings: Settings) -> None:
    frame, faces, _, _ = _events()
    at = T0.replace(minute=10)  # both ticks in one hour
    frame = frame.model_copy(update={"scheduled_at": at})
    faces = [f.model_copy(update={"scheduled_at": at}) for f in faces]
    # Rows stored before the rollups existed are filled in by their migration (made again here as if
    # this store predated it).
    store.migrate(settings)
    for view in ("compliance_hourly_frames", "compliance_hourly_people", "compliance_daily_frames",
                 "compliance_daily_people", "compliance_hourly", "compliance_daily"):
        store.command(f"DROP TABLE {view}", settings=settings)
    store.command("ALTER TABLE schema_migrations DELETE WHERE version = '008_rollups' "
                  "SETTINGS mutations_sync = 1", settings=settings)
    store.insert_models("frames", [frame], settings)
    assert store.migrate(settings) == ["008_rollups"]
    later = frame.model_copy(update={"tick_id": "cam-1:2", "scheduled_at": frame.scheduled_at
                                     + timedelta(seconds=5)})
    person = [f.model_copy(update={"person_id": "cam-1:1.1"}) for f in faces]
    again = [f.model_copy(update={"tick_id": later.tick_id, "scheduled_at": later.scheduled_at})
             for f in person]
    store.insert_models("frames", [later], settings)
    store.insert_models("frames", [later.model_copy(update={"processed_at": later.processed_at
                                                              + timedelta(seconds=9)})], settings)
    store.insert_models("detections", person + again, settings)
    for table, key in (("compliance_hourly", "hour"), ("compliance_daily", "day")):
        row = store.query_rows(
            f"SELECT {key} AS at, uniqExactMerge(frames) AS frames, sum(faces) AS faces, "
            f"sum(nomask_faces) AS nomask, uniqMerge(nomask_people) AS people FROM {table} "
            f"GROUP BY {key}", settings=settings)
        # Two ticks (one of them processed twice: one frame), one unmasked person seen on both.
        assert [(r["frames"], r["people"]) for r in row] == [(2, 1)], table
        assert row[0]["faces"] >= 2 * frame.faces and row[0]["nomask"] >= 2 * frame.nomask_faces
    # The raw rows go with their TTL; the rollup stays.
    store.command("ALTER TABLE frames DELETE WHERE 1 SETTINGS mutations_sync = 1", settings=settings)
    assert store.query_rows("SELECT uniqExactMerge(frames) AS n FROM compliance_hourly",
                            settings=settings) == [{"n": 2}]


def test_ttls_of_an_existing_store_change_with_a_command(settings: Settings) -> None:
    from click.testing import CliRunner

    from maskwatch.store.cli import store as store_cli

    store.migrate(settings)
    runner = CliRunner()
    shown = runner.invoke(store_cli, ["ttl"])
    assert shown.exit_code == 0 and "frames: 30 days" in shown.output and "compliance_daily: 3650 days" in \
        shown.output, shown.output
    done = runner.invoke(store_cli, ["ttl", "--frames", "7", "--camera-health", "3"])
    assert done.exit_code == 0, done.output
    from maskwatch.store.retention import current_ttls

    ttls = current_ttls(settings)
    assert (ttls["frames"], ttls["camera_health"], ttls["camera_health_events"]) == (7, 3, 3)
    assert ttls["detections"] == 30 and ttls["compliance_hourly"] == 400  # the others stay
    old = _events()[0].model_copy(update={"tick_id": "cam-1:old",
                                          "scheduled_at": datetime.now(UTC) - timedelta(days=8)})
    store.insert_models("frames", [old], settings)
    store.command("OPTIMIZE TABLE frames FINAL", settings=settings)
    assert store.query_rows("SELECT count() AS n FROM frames WHERE tick_id = 'cam-1:old'",
                            settings=settings) == [{"n": 0}]
    refused = runner.invoke(store_cli, ["ttl", "--alerts", "0"])
    assert refused.exit_code == 1 and "between 1 and 36500" in refused.output


def test_bad_ttl_and_bad_url_are_clear_errors(monkeypatch: pytest.MonkeyPatch, store_url: str) -> None:
    monkeypatch.setenv("MASKWATCH_TTL_DAYS_DETECTIONS", "a week")
    with pytest.raises(ConfigError, match="MASKWATCH_TTL_DAYS_DETECTIONS='a week'"):
        store.ttl_days()
    monkeypatch.delenv("MASKWATCH_TTL_DAYS_DETECTIONS")
    monkeypatch.setenv("MASKWATCH_STORE_URL", "ftp://admin:hunter2@db/?database=x")
    with pytest.raises(store.StoreError, match="scheme must be http, https or chdb") as info:
        store.client()
    assert "hunter2" not in str(info.value)
    monkeypatch.setenv("MASKWATCH_STORE_URL", store_url.replace("database=", "database=bad-name"))
    with pytest.raises(store.StoreError, match="invalid database name"):
        store.client()


def _events() -> tuple[FrameResult, list[FaceDetection], Alert, CameraHealth]:
    common: dict[str, Any] = {"camera_id": "cam-1", "tick_id": "cam-1:1772353800000", "site": "hq",
                              "zone": "lobby"}
    frame = FrameResult(**common, scheduled_at=T0, captured_at=T0, processed_at=T0 + timedelta(seconds=1),
                        status="ok", width=640, height=480, faces=2, nomask_faces=1, detector_model="det",
                        classifier_model="cls", fetch_ms=12.5, inference_ms=30.0, snapshot_path="snaps/a.jpg")
    faces = [FaceDetection(**common, face_index=i, scheduled_at=T0, processed_at=frame.processed_at,
                           x1=0.1 * i, y1=0.1, x2=0.1 * i + 0.1, y2=0.3, detection_score=0.9,
                           nomask_prob=p, nomask=p > 0.5, detector_model="det", classifier_model="cls")
             for i, p in enumerate([0.2, 0.8])]
    alert = Alert(alert_id="cam-1:1772353800000", camera_id="cam-1", site="hq", zone="lobby",
                  rule=">=1 in 60s", triggered_at=T0, window_start=T0 - timedelta(seconds=60), window_end=T0,
                  faces=2, nomask_faces=1, nomask_ratio=0.5, tick_ids=[common["tick_id"]],
                  message="no mask at lobby")
    health = CameraHealth(**common, scheduled_at=T0, observed_at=T0, status="ok", latency_ms=12.5)
    return frame, faces, alert, health


def test_every_event_field_is_a_column(settings: Settings) -> None:
    store.migrate(settings)
    for model, table in store.EVENT_TABLES.items():
        columns = set(store.query_df(f"SELECT * FROM {table} LIMIT 0", settings=settings).columns)
        assert set(model.model_fields) == columns, table


def test_events_insert_and_replays_do_not_duplicate(settings: Settings) -> None:
    store.migrate(settings)
    frame, faces, alert, health = _events()
    for _ in range(2):  # the second round is a replay of the same events
        assert store.insert_models("frames", [frame], settings) == 1
        assert store.insert_models("detections", faces, settings) == 2
        assert store.insert_models("alerts", [alert], settings) == 1
        assert store.insert_models("camera_health", [health], settings) == 1
    counts = store.query_rows(
        "SELECT (SELECT count() FROM frames FINAL) AS frames, "
        "(SELECT count() FROM detections FINAL) AS faces, (SELECT count() FROM alerts FINAL) AS alerts, "
        "(SELECT count() FROM camera_health FINAL) AS health",
        settings=settings)
    assert counts == [{"frames": 1, "faces": 2, "alerts": 1, "health": 1}]
    df = store.query_df("SELECT * FROM detections FINAL WHERE camera_id = {cam:String} ORDER BY face_index",
                        {"cam": "cam-1"}, settings=settings)
    assert isinstance(df, pl.DataFrame)
    assert df["nomask"].to_list() == [False, True]
    assert df["scheduled_at"].dtype == pl.Datetime("ms", "UTC")
    assert df["scheduled_at"][0] == T0
    alerts = store.query_df("SELECT tick_ids, window_start FROM alerts FINAL", settings=settings)
    assert alerts["tick_ids"].to_list() == [[frame.tick_id]]
    assert alerts["window_start"][0] == T0 - timedelta(seconds=60)


def _current(settings: Settings) -> list[dict[str, Any]]:
    return store.query_rows(
        "SELECT tick_id, face_index, processed_at FROM current_detections(since = {a:DateTime64(3, 'UTC')}, "
        "until = {b:DateTime64(3, 'UTC')}) ORDER BY tick_id, face_index",
        {"a": T0 - timedelta(days=1), "b": T0 + timedelta(days=1)}, settings=settings)


def test_a_tick_processed_again_replaces_its_frame_and_faces_as_one_unit(settings: Settings) -> None:
    # A replay after a crash fetches a live camera again: the second attempt saw one face, not two.
    store.migrate(settings)
    frame, faces, _, _ = _events()
    again = frame.model_copy(update={"processed_at": frame.processed_at + timedelta(seconds=30), "faces": 1,
                                     "nomask_faces": 0})
    one_face = faces[0].model_copy(update={"processed_at": again.processed_at, "x1": 0.5, "x2": 0.6})
    store.insert_models("detections", faces, settings)
    store.insert_models("frames", [frame], settings)
    assert [r["face_index"] for r in _current(settings)] == [0, 1]
    store.insert_models("detections", [one_face], settings)
    store.insert_models("frames", [again], settings)
    for merged in (False, True):
        if merged:
            store.command("OPTIMIZE TABLE detections FINAL", settings=settings)
        rows = _current(settings)
        attempt = again.processed_at.replace(tzinfo=None)  # naive UTC, as the client reads it back
        assert [(r["face_index"], r["processed_at"].replace(tzinfo=None)) for r in rows] == [(0, attempt)]
        (frame_row,) = store.query_rows("SELECT faces FROM frames FINAL", settings=settings)
        assert frame_row["faces"] == len(rows)
    # The older attempt stays in the table (until its TTL) but no reader counts it.
    assert store.query_rows("SELECT count() AS n FROM detections", settings=settings) == [{"n": 3}]


def test_detections_written_before_the_attempt_column_are_still_read(settings: Settings) -> None:
    store.migrate(settings)
    frame, faces, _, _ = _events()
    store.insert_models("frames", [frame], settings)
    rows = [{k: v for k, v in f.model_dump().items() if k != "processed_at"} for f in faces]
    store.insert_rows("detections", rows, settings=settings)
    assert [r["face_index"] for r in _current(settings)] == [0, 1]


def test_insert_rows_checks_columns(settings: Settings) -> None:
    store.migrate(settings)
    rows: list[dict[str, object]] = [
        {"alert_id": "a", "acknowledged_by": "ana", "acknowledged_at": T0, "note": ""},
        {"alert_id": "b", "acknowledged_by": "ana", "note": ""},
    ]
    with pytest.raises(store.StoreError, match="row 1 has columns"):
        store.insert_rows("alert_acks", rows, settings)
    assert store.insert_rows("alert_acks", rows[:1], settings) == 1
    assert store.query_rows("SELECT alert_id, acknowledged FROM alert_acks FINAL", settings=settings) == [
        {"alert_id": "a", "acknowledged": True}]


def test_insert_follows_a_table_that_changed(settings: Settings) -> None:
    """Column types are remembered between inserts (one request each); a column added later, or a table
    dropped and re-created, is still written."""
    store.migrate(settings)
    store.command("CREATE TABLE grows (id String) ENGINE = MergeTree ORDER BY id", settings=settings)
    assert store.insert_rows("grows", [{"id": "a"}], settings) == 1
    store.command("ALTER TABLE grows ADD COLUMN n UInt32", settings=settings)
    assert store.insert_rows("grows", [{"id": "b", "n": 7}], settings) == 1
    assert store.query_rows("SELECT id, n FROM grows ORDER BY id", settings=settings) == [
        {"id": "a", "n": 0}, {"id": "b", "n": 7}]
    store.command("DROP TABLE grows", settings=settings)
    store.command("CREATE TABLE grows (id String, n String) ENGINE = MergeTree ORDER BY id",
                  settings=settings)
    with pytest.raises(ValueError, match="seven"):  # written as the remembered UInt32: fails, forgets it
        store.insert_rows("grows", [{"id": "c", "n": "seven"}], settings)
    assert store.insert_rows("grows", [{"id": "c", "n": "seven"}], settings) == 1
    assert store.query_rows("SELECT id, n FROM grows", settings=settings) == [{"id": "c", "n": "seven"}]


def test_clients_are_per_thread_and_run_concurrently(settings: Settings) -> None:
    store.migrate(settings)
    seen: list[object] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            seen.append(store.client(settings))
            for _ in range(5):
                store.query_rows("SELECT sleep(0.05), count() FROM frames", settings=settings)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({id(c) for c in seen}) == 4
    assert store.client(settings) is store.client(settings)


CHDB_SCRIPT = textwrap.dedent("""
    import json, sys
    from datetime import UTC, datetime
    from maskwatch.cameras import registry
    from maskwatch import store
    from maskwatch.schemas.events import Camera, CameraHealth
    first, second = store.migrate(), store.migrate()
    registry.put_camera(Camera(id="cam-1", site="hq", source_url="rtsp://admin:hunter2@10.0.0.9/live"))
    now = datetime.now(UTC)
    health = CameraHealth(camera_id="cam-1", tick_id="cam-1:1", scheduled_at=now, observed_at=now,
                          status="ok")
    store.insert_models("camera_health", [health, health])
    rows = store.query_rows("SELECT display_url, site FROM cameras FINAL")
    n = store.query_df("SELECT count() AS n FROM camera_health FINAL")["n"][0]
    json.dump({"first": first, "second": second, "cameras": rows, "health": int(n),
               "listed": [c.id for c in registry.list_cameras()]}, sys.stdout)
""")


def test_chdb_in_process_url(tmp_path: Path) -> None:
    """Same code path on the in-process engine (its own process: one chdb path per Python process)."""
    env = {"MASKWATCH_STORE_URL": f"chdb://{tmp_path / 'chdb'}?database=mw", "PATH": "/usr/bin:/bin",
           "HOME": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", CHDB_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=180, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["first"] == [version for version, _ in store.migrations()] and result["second"] == []
    assert result["cameras"] == [{"display_url": "rtsp://***@10.0.0.9/live", "site": "hq"}]
    assert result["health"] == 1
    assert result["listed"] == ["cam-1"]
    assert "hunter2" not in done.stderr
