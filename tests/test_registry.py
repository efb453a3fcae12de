"""Camera registry on the real store server: CRUD, tombstones, YAML import, credentials never shown."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.cameras.cli import cameras
from maskwatch.config import Settings
from maskwatch.schemas.events import Camera, RuleOverrides

pytestmark = pytest.mark.without_models

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET_URL = "rtsp://admin:hunter2@10.1.2.3:554/stream1?token=tok3n"


@pytest.fixture
def settings(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("MASKWATCH_STORE_URL", store_url)
    store.migrate()
    return Settings()


def test_round_trip_update_disable_remove(settings: Settings) -> None:
    door = Camera(id="door", name="Door", site="hq", zone="entry", source_url=SECRET_URL, interval_s=2.5,
                  rules=RuleOverrides(min_people=3, window_s=60))
    registry.put_camera(door)
    registry.put_camera(Camera(id="yard", site="depot", source_url="http://10.1.2.4/snap.jpg"))
    got = registry.require_camera("door")
    assert (got.source_url, got.interval_s, got.rules) == (SECRET_URL, 2.5, door.rules)
    assert got.rules.nomask_ratio is None

    registry.put_camera(door.model_copy(update={"interval_s": 10.0}))
    assert registry.require_camera("door").interval_s == 10.0
    registry.set_enabled("door", False)
    assert [c.id for c in registry.list_cameras(enabled_only=True)] == ["yard"]
    assert [c.id for c in registry.list_cameras()] == ["door", "yard"]

    removed = registry.remove_camera("door")
    assert removed.id == "door"
    assert registry.get_camera("door") is None
    assert [c.id for c in registry.list_cameras()] == ["yard"]
    history = store.query_rows("SELECT deleted FROM cameras WHERE id = 'door' ORDER BY updated_at")
    assert history[-1] == {"deleted": 1}  # a tombstone row, not a lost update
    with pytest.raises(registry.RegistryError, match="no camera with id 'door'"):
        registry.set_enabled("door", True)

    registry.put_camera(door)  # re-adding after removal works
    assert registry.require_camera("door").enabled


def test_rapid_updates_keep_the_latest(settings: Settings) -> None:
    camera = Camera(id="fast", source_url="file:///tmp/x")
    for interval in (1.0, 2.0, 3.0, 4.0):
        registry.put_camera(camera.model_copy(update={"interval_s": interval}))
    assert registry.require_camera("fast").interval_s == 4.0


def test_sample_yaml_import_is_idempotent(settings: Settings, dataset_dir: Path) -> None:
    sample = REPO_ROOT / "samples" / "cameras.yaml"
    first = registry.import_yaml(sample)
    assert len(first.added) >= 3 and not first.updated and not first.unchanged
    for camera in registry.list_cameras():
        assert camera.source_url.startswith("file:///")
        assert Path(camera.source_url.removeprefix("file://")) == dataset_dir / "images"
    second = registry.import_yaml(sample)
    assert (second.added, second.updated, sorted(second.unchanged)) == ([], [], sorted(first.added))
    rows_before = store.query_rows("SELECT count() AS n FROM cameras")[0]["n"]
    assert rows_before == len(first.added)  # unchanged cameras were not rewritten


def test_yaml_import_updates_changed_cameras(settings: Settings, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKWATCH_FILE_ROOTS", str(tmp_path))  # file:// sources only under allowed roots
    path = tmp_path / "cams.yaml"
    cams: list[dict[str, Any]] = [{"id": "a", "source_url": "file://images", "interval_s": 1},
            {"id": "b", "source_url": SECRET_URL, "site": "hq", "allow_private_network": True}]
    path.write_text(yaml.safe_dump({"cameras": cams}))
    assert registry.import_yaml(path).added == ["a", "b"]
    assert registry.require_camera("a").source_url == (tmp_path / "images").as_uri()  # relative to the file
    cams[0]["interval_s"] = 3
    path.write_text(yaml.safe_dump({"cameras": cams}))
    result = registry.import_yaml(path)
    assert (result.added, result.updated, result.unchanged) == ([], ["a"], ["b"])
    assert registry.require_camera("a").interval_s == 3


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ("cameras: {id: a}", "expected a top-level 'cameras:' list"),
        ("cameras: [{id: a, source_url: 'file:///x'}, {id: b, source_url: 'ftp://u:hunter2@h/x'}]",
         "camera #2 (b): camera.source_url: value error"),
        ("cameras: [{id: a, source_url: 'file:///x'}, {id: a, source_url: 'file:///y'}]",
         "camera #2 (a): duplicate id"),
        ("cameras: [{id: a, source_url: 'file:///x', interval_s: 0}]",
         "camera #1 (a): camera.interval_s: input should be greater than 0"),
        ("cameras: [{id: a, source_url: 'file:///x', rules: {min_faces: 2}}]",
         "camera #1 (a): camera.rules.min_faces: extra inputs are not permitted"),
        ("cameras: [a: b: c]", "cannot read camera file"),
    ],
)
def test_bad_yaml_is_rejected_and_writes_nothing(settings: Settings, tmp_path: Path, document: str,
                                                 expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(document)
    with pytest.raises(registry.RegistryError) as info:
        registry.import_yaml(path)
    assert expected in str(info.value)
    assert "hunter2" not in str(info.value)
    assert registry.list_cameras() == []


def test_cli_never_shows_credentials(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    runner = CliRunner()
    outputs = []
    for args in (["add", "door", SECRET_URL, "--site", "hq", "--rules", '{"cooldown_s": 30}',
                  "--allow-private-network"],
                 ["list"], ["list", "--json"], ["show", "door"], ["disable", "door"], ["remove", "door"]):
        result = runner.invoke(cameras, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        outputs.append(result.output)
    text = "\n".join(outputs)
    assert "rtsp://***@10.1.2.3:554/stream1?token=***" in text
    assert "door" in outputs[1] and '"cooldown_s": 30' in outputs[3]
    shown = json.loads(outputs[2])
    assert shown["source"] == "rtsp://***@10.1.2.3:554/stream1?token=***" and "source_url" not in shown
    assert "hunter2" not in text and "tok3n" not in text and "admin" not in text
    assert caplog.records, "registry changes are logged"
    assert not any("hunter2" in r.getMessage() or "tok3n" in r.getMessage() for r in caplog.records)
    stored = store.query_rows("SELECT DISTINCT display_url FROM cameras")
    assert stored == [{"display_url": "rtsp://***@10.1.2.3:554/stream1?token=***"}]


def test_cli_errors_are_one_clear_line(settings: Settings) -> None:
    runner = CliRunner()
    result = runner.invoke(cameras, ["add", "bad:id", "ftp://admin:hunter2@nas/x"])
    assert result.exit_code == 1
    assert "camera.id: string should match pattern" in result.output
    assert "camera.source_url" in result.output and "hunter2" not in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cameras, ["add", "ok", "file:///x", "--rules", "{oops"])
    assert result.exit_code == 2 and "--rules" in result.output
    result = runner.invoke(cameras, ["enable", "ghost"])
    assert result.exit_code == 1 and "no camera with id 'ghost'" in result.output


def test_counting_area_from_the_cli_and_yaml(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(cameras, ["add", "gate", SECRET_URL, "--allow-private-network"]).exit_code == 0
    result = runner.invoke(cameras, ["area", "gate", "--include", "0,0 0.5,0 0.5,1 0,1",
                                     "--exclude", "0.1,0 0.3,0 0.3,0.2", "--min-face-px", "24"])
    assert result.exit_code == 0, result.output
    assert "1 include, 1 exclude polygon(s), min face 24 px" in result.output
    gate = registry.require_camera("gate")
    assert gate.area.include == [[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]] and gate.area.min_face_px == 24
    assert gate.source_url == SECRET_URL  # the rest of the camera is kept
    for bad, says in ((["--include", "0,0 1,1"], "at least 3 items"),
                      (["--include", "0,0 2,0 1,1"], "less than or equal to 1"),
                      (["--exclude", "left half"], "expected 'x,y x,y x,y ...'")):
        result = runner.invoke(cameras, ["area", "gate", *bad])
        assert result.exit_code == 2 and says in result.output, result.output
    assert registry.require_camera("gate").area == gate.area  # a refused change writes nothing
    assert runner.invoke(cameras, ["area", "gate"]).exit_code == 0
    assert registry.require_camera("gate").area.include == []
    # The same from YAML, with the rules written before rules counted people.
    path = tmp_path / "cams.yaml"
    path.write_text("cameras:\n  - id: yard\n    source_url: http://10.1.2.9/snap.jpg\n"
                    "    allow_private_network: true\n    rules: {min_nomask_faces: 2}\n"
                    "    area: {exclude: [[[0, 0], [1, 0], [1, 0.1]]], min_face_px: 16}\n")
    registry.import_yaml(path)
    yard = registry.require_camera("yard")
    assert yard.rules.min_people == 2 and yard.area.exclude == [[(0, 0), (1, 0), (1, 0.1)]]
    assert registry.import_yaml(path).unchanged == ["yard"]


def test_sites_and_schedules_from_the_cli_and_yaml(settings: Settings, tmp_path: Path) -> None:
    from maskwatch.cameras import sites
    from maskwatch.cameras.cli import sites_command

    runner = CliRunner()
    done = runner.invoke(sites_command, ["set", "hq", "--timezone", "Europe/Berlin", "--open",
                                         "mon-fri 08:00-18:00", "--quiet", "12:00-13:00"])
    assert done.exit_code == 0, done.output
    assert "site hq: Europe/Berlin; open mon-fri 08:00-18:00; quiet 12:00-13:00" in done.output
    assert runner.invoke(sites_command, ["set", "hq", "--name", "Head office"]).exit_code == 0
    hq = sites.require_site("hq")
    assert (hq.name, hq.timezone, hq.schedule.open_hours) == ("Head office", "Europe/Berlin",
                                                              ["mon-fri 08:00-18:00"])
    listed = runner.invoke(sites_command, ["list"]).output
    assert "hq  Europe/Berlin (now " in listed and "quiet 12:00-13:00" in listed
    for bad, says in ((["set", "hq", "--timezone", "Mars/Olympus"], "unknown timezone 'Mars/Olympus'"),
                      (["set", "hq", "--open", "9 to 5"], "expected '[days ]HH:MM-HH:MM'"),
                      (["pause", "hq", "--for", "soon"], "expected a number and s, m, h or d"),
                      (["pause", "hq"], "give one of --until or --for")):
        result = runner.invoke(sites_command, bad)
        assert result.exit_code in (1, 2) and says in result.output, result.output
    assert sites.require_site("hq") == hq  # a refused change writes nothing
    assert runner.invoke(sites_command, ["pause", "hq", "--until", "2030-01-01T08:00+01:00"]).exit_code == 0
    paused = sites.require_site("hq").schedule.paused_until
    assert paused is not None and paused.isoformat() == "2030-01-01T07:00:00+00:00"
    assert runner.invoke(sites_command, ["resume", "hq"]).exit_code == 0
    assert sites.require_site("hq").schedule.paused_until is None

    assert runner.invoke(cameras, ["add", "door", SECRET_URL, "--site", "hq",
                                   "--allow-private-network"]).exit_code == 0
    done = runner.invoke(cameras, ["schedule", "door", "--quiet", "sat-sun 00:00-24:00"])
    assert done.exit_code == 0 and "quiet sat-sun 00:00-24:00" in done.output, done.output
    done = runner.invoke(cameras, ["pause", "door", "--for", "2h"])
    assert done.exit_code == 0 and "alerts paused until" in done.output
    door = registry.require_camera("door")
    assert door.schedule.quiet_hours == ["sat-sun 00:00-24:00"] and door.source_url == SECRET_URL
    assert door.schedule.paused_until is not None
    assert timedelta(hours=1.9) < door.schedule.paused_until - datetime.now(UTC) <= timedelta(hours=2)
    assert runner.invoke(cameras, ["resume", "door"]).exit_code == 0
    assert registry.require_camera("door").schedule.paused_until is None
    assert runner.invoke(cameras, ["schedule", "door", "--no-quiet"]).exit_code == 0
    assert registry.require_camera("door").schedule.quiet_hours == []

    # Sites and camera schedules from the camera file; a bad site stops the whole import.
    path = tmp_path / "cams.yaml"
    path.write_text("sites:\n  - {id: depot, timezone: Asia/Tokyo, schedule: {open_hours: ['07:00-19:00']}}\n"
                    "cameras:\n  - id: gate\n    site: depot\n    source_url: http://10.1.2.9/snap.jpg\n"
                    "    allow_private_network: true\n    schedule: {quiet_hours: ['12:00-12:30']}\n")
    done = runner.invoke(cameras, ["import", str(path)])
    assert done.exit_code == 0 and "sites: 1 written, 0 unchanged" in done.output, done.output
    assert sites.require_site("depot").timezone == "Asia/Tokyo"
    assert registry.require_camera("gate").schedule.quiet_hours == ["12:00-12:30"]
    assert "sites: 0 written, 1 unchanged" in runner.invoke(cameras, ["import", str(path)]).output
    path.write_text("sites:\n  - {id: yard, timezone: Nowhere/Land}\ncameras: []\n")
    done = runner.invoke(cameras, ["import", str(path)])
    assert done.exit_code == 1 and "site #1 (yard)" in done.output and "unknown timezone" in done.output
    assert sites.get_site("yard") is None


def test_cli_reports_an_unmigrated_store(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASKWATCH_STORE_URL", store_url)
    result = CliRunner().invoke(cameras, ["list"])
    assert result.exit_code == 1
    assert "does not exist" in result.output and "maskwatch store migrate" in result.output


def test_a_bad_row_written_around_the_registry_skips_that_camera_only(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone with write access to the store can insert rows the registry never would; readers (the flow's
    cache, the ticker, the CLI) skip those cameras with an error and keep every other one."""
    from datetime import UTC, datetime

    from maskwatch.cameras.registry import _COLUMNS
    from maskwatch.flows.registry_cache import RegistryCache, store_loader

    registry.put_camera(Camera(id="good", source_url="http://10.1.2.4/snap.jpg"))
    now = datetime.now(UTC)

    def row(camera_id: str, name: str = "", rules: str = "{}", url: str = "http://10.9.9.9/x.jpg",
            area: str = "{}") -> list[Any]:
        return [camera_id, name, "", "", url, url, 5.0, True, rules, area, "{}", False, now, 0]

    bad = [row("nul", name="Lobby\x00"), row("rules", rules="{not json"), row("bad id!"),
           row("steal", url="http://public.example/x?q=${MASKWATCH_STORE_PASSWORD}"),
           row("slow", rules='{"window_s": "forever"}'), row("line", area='{"include": [[[0, 0], [1, 1]]]}')]
    store.client(settings).insert("cameras", bad, column_names=_COLUMNS)
    with caplog.at_level(logging.ERROR, logger="maskwatch.cameras.registry"):
        assert [c.id for c in registry.list_cameras()] == ["good"]
        assert registry.get_camera("steal") is None
        cache = RegistryCache(store_loader(settings), refresh_s=60)
        assert cache.resolve("good")[0] is not None and cache.resolve("nul")[0] is None
    skipped = [r.getMessage() for r in caplog.records if "skipping the row" in r.getMessage()]
    assert len(skipped) >= len(bad) and "\x00" not in "".join(skipped)
    assert "MASKWATCH_STORE_PASSWORD" not in "".join(skipped) or "placeholder" in "".join(skipped)
    result = CliRunner().invoke(cameras, ["list"])
    assert result.exit_code == 0 and "good" in result.output
