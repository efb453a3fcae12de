"""Every dashboard page under Streamlit's AppTest, against the real engine (the embedded store server)
seeded with realistic data. Figures on the page are checked against SQL written here independently of
dashboards/queries.py (mostly from the detections table where the pages read frames)."""

from __future__ import annotations

import io
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from streamlit.proto.TextInput_pb2 import TextInput as TextInputProto
from streamlit.testing.v1 import AppTest

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.dashboards import queries, seed, ui
from maskwatch.dashboards.queries import Scope
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera, RuleOverrides

from tests.flowkit import dashboard_identity

pytestmark = pytest.mark.without_models

APP = Path(__file__).resolve().parents[1] / "dashboards" / "app.py"
SECRETS = ("s3cret-7-", "pw-7-")  # passwords in the seeded cameras' source URLs (seed=7)


def open_app(page: str | None = None, **state: Any) -> AppTest:
    """The app after its first run (on ``page``). AppTest drops the entry script's sidebar widgets on
    reruns of an st.navigation app, so sidebar filters are preset through ``state`` before the first run."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page:
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def unescaped(text: str) -> str:
    """Markdown as a person reads it: backslash escapes are not shown."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


def texts(at: AppTest) -> str:
    """Everything a person can read on the page, tables included."""
    parts: list[str] = []
    kinds = ("title", "header", "subheader", "markdown", "caption", "error", "warning", "info", "success")
    for kind in kinds:
        parts += [str(e.value) for e in getattr(at, kind)]
    parts += [f"{m.label} {m.value} {m.delta}" for m in at.metric]
    parts += [e.value.to_csv() for e in at.dataframe]
    # Password-type inputs are drawn as dots, so what was typed there is not readable.
    parts += [str(w.value) for w in at.text_input if w.proto.type != TextInputProto.PASSWORD]
    return unescaped("\n".join(parts))


def metrics(at: AppTest) -> dict[str, tuple[str, str | None]]:
    return {m.label: (m.value, m.delta) for m in at.metric}


def one(settings: Settings, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    return store.query_rows(sql, params, settings)[0]


def window(scope: Scope, column: str = "scheduled_at") -> str:
    return (f"{column} >= fromUnixTimestamp64Milli({scope.params()['start_ms']}, 'UTC') "
            f"AND {column} < fromUnixTimestamp64Milli({scope.params()['end_ms']}, 'UTC')")


@pytest.fixture(scope="module")
def seeded(
    store_server: Any, broker: Any, tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path
) -> Iterator[Settings]:
    """One seeded database for the read-only page tests: 6 cameras × 3 days at one tick a minute (and
    the real broker, which acknowledgements are published to)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MASKWATCH_HOME", str(tmp_path_factory.mktemp("dashboard-home")))
        mp.setenv("MASKWATCH_KAFKA_BOOTSTRAP", broker.bootstrap)
        mp.setenv("MASKWATCH_TOPIC_ALERTS", f"maskwatch.alerts.{uuid.uuid4().hex[:12]}")
        mp.setenv("MASKWATCH_STORE_URL", f"{store_server.url}/?database=t_{uuid.uuid4().hex}")
        settings = Settings()
        store.migrate(settings)
        info = seed.seed(settings, n_cameras=6, days=3, dataset_dir=dataset_dir)
        assert info.detections > 5000 and info.alerts > 20 and info.snapshots > 0
        for key, value in dashboard_identity(settings.store_url).items():  # the app runs as the dashboard
            mp.setenv(key, value)
        yield settings
        store.close_clients()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, store_url: str, tmp_path: Path, store_credential: Path
          ) -> Settings:
    """A migrated, empty database of its own; the app runs as the dashboard's store user, the returned
    settings are the store's own user (what the tests check with)."""
    monkeypatch.setenv("MASKWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MASKWATCH_STORE_URL", store_url)
    monkeypatch.setenv("MASKWATCH_STORE_PASSWORD_FILE", str(store_credential))  # (`seeded` is the app's)
    settings = Settings()
    store.migrate(settings)
    for key, value in dashboard_identity(store_url).items():
        monkeypatch.setenv(key, value)
    return settings


def test_overview_kpis_equal_sql(seeded: Settings) -> None:
    at = open_app()
    scope: Scope = at.session_state["mw_scope"]
    assert scope.span.total_seconds() == 86400  # the default range: last 24 hours

    def period(s: Scope) -> dict[str, Any]:
        faces = one(seeded, f"SELECT count() AS faces, countIf(d.nomask) AS nomask, "
                            f"uniqExactIf(d.person_id, d.nomask) AS people FROM detections AS d FINAL "
                            f"WHERE {window(s)}", {})
        alerts = one(seeded, f"SELECT count() AS n FROM alerts FINAL WHERE {window(s, 'triggered_at')}", {})
        frames = one(seeded, "SELECT count() AS n FROM camera_health FINAL "
                             f"WHERE status = 'ok' AND {window(s)}", {})
        compliance = (faces["faces"] - faces["nomask"]) / faces["faces"]
        return {**faces, "alerts": alerts["n"], "frames": frames["n"], "compliance": compliance}

    now, before = period(scope), period(scope.previous())
    assert now["faces"] > 500 and before["faces"] > 500
    shown = metrics(at)
    assert shown["Compliance"] == (f"{now['compliance']:.1%}",
                                   f"{(now['compliance'] - before['compliance']) * 100:+.1f} pp")
    assert shown["Faces seen"][0] == f"{now['faces']:,}"
    assert shown["No-mask sightings"] == (f"{now['nomask']:,}",
                                          ui.count_delta(now["nomask"], before["nomask"]))
    # People are estimated from the faces' person ids: fewer than the sightings, never more.
    assert 0 < now["people"] < now["nomask"]
    assert shown["No-mask people (est.)"] == (f"{now['people']:,}",
                                              ui.count_delta(now["people"], before["people"]))
    assert shown["Alerts"] == (f"{now['alerts']:,}", ui.count_delta(now["alerts"], before["alerts"]))
    assert shown["Frames processed"][0] == f"{now['frames']:,}"
    assert len(at.get("vega_lite_chart")) == 2


def test_overview_filters_by_site(seeded: Settings) -> None:
    at = open_app(sites=["downtown"])
    scope: Scope = at.session_state["mw_scope"]
    assert scope.sites == ("downtown",)
    row = one(seeded, f"SELECT count() AS faces, countIf(nomask) AS nomask FROM detections FINAL "
                      f"WHERE site = 'downtown' AND {window(scope)}", {})
    everywhere = one(seeded, f"SELECT count() AS faces FROM detections FINAL WHERE {window(scope)}", {})
    assert 0 < row["faces"] < everywhere["faces"]
    assert metrics(at)["Faces seen"][0] == f"{row['faces']:,}"
    assert metrics(at)["No-mask sightings"][0] == f"{row['nomask']:,}"
    # Zones offered are only those of the chosen site.
    zones = one(seeded, "SELECT groupUniqArray(zone) AS z FROM cameras FINAL WHERE site = 'downtown'",
                {})["z"]
    assert sorted(at.multiselect(key="zones").options) == sorted(zones)


def test_custom_dates_range(seeded: Settings) -> None:
    today = datetime.now(UTC).date()
    at = open_app(range="Custom dates", dates=(today - timedelta(days=2), today - timedelta(days=1)))
    scope: Scope = at.session_state["mw_scope"]
    midnight = datetime.combine(today, datetime.min.time(), UTC)
    assert (scope.start, scope.end) == (midnight - timedelta(days=2), midnight)
    row = one(seeded, f"SELECT count() AS faces FROM detections FINAL WHERE {window(scope)}", {})
    assert row["faces"] > 0 and metrics(at)["Faces seen"][0] == f"{row['faces']:,}"


def test_timeseries_buckets_add_up(seeded: Settings) -> None:
    at = open_app()
    scope: Scope = at.session_state["mw_scope"]
    series = queries.timeseries(seeded, scope, 3600)
    assert series.height in (24, 25)  # hours touched by the range, empty ones filled
    total = one(seeded, f"SELECT count() AS faces, countIf(nomask) AS nomask FROM detections FINAL "
                        f"WHERE {window(scope)}", {})
    assert series["faces"].sum() == total["faces"] and series["nomask_faces"].sum() == total["nomask"]
    # A person seen in two hour buckets is counted in both: per bucket, people never exceed sightings.
    assert (series["nomask_people"] <= series["nomask_faces"]).all() and series["nomask_people"].sum() > 0
    busiest = series.sort("nomask_faces", descending=True).row(0, named=True)
    hour = one(seeded, "SELECT countIf(nomask) AS n FROM detections FINAL "
                       "WHERE toStartOfHour(scheduled_at) = toDateTime({t:Int64}, 'UTC') "
                       "AND " + window(scope),
               {"t": int(busiest["bucket"].timestamp())})
    assert busiest["nomask_faces"] == hour["n"] > 0
    at.segmented_control(key="granularity").set_value("hour").run()
    assert not at.exception and len(at.get("vega_lite_chart")) == 2


def test_patterns_heatmap_and_leaderboard(seeded: Settings) -> None:
    at = open_app("patterns")
    scope: Scope = at.session_state["mw_scope"]
    assert len(at.get("vega_lite_chart")) == 1
    cells = queries.heatmap(seeded, scope)
    expected = store.query_df(
        f"SELECT toDayOfWeek(scheduled_at) AS weekday, toHour(scheduled_at) AS hour, count() AS n "
        f"FROM detections FINAL WHERE nomask AND {window(scope)} GROUP BY weekday, hour", {}, seeded)
    joined = cells.join(expected, on=["weekday", "hour"], how="full", coalesce=True)
    assert joined.height == expected.height > 10
    assert (joined["nomask_faces"] == joined["n"]).all()

    worst = store.query_rows(
        f"SELECT camera_id, countIf(nomask) / count() AS rate FROM detections FINAL WHERE {window(scope)} "
        "GROUP BY camera_id HAVING count() >= 20 ORDER BY rate DESC LIMIT 3", {}, seeded)
    board = at.dataframe[0].value
    assert list(board["camera_id"][:3]) == [r["camera_id"] for r in worst]
    assert board["nomask_rate"].iloc[0] == pytest.approx(worst[0]["rate"])
    zones = at.dataframe[1].value
    assert set(zones.columns) >= {"site", "zone", "nomask_rate"}


def test_cameras_page_health_and_no_credentials(seeded: Settings) -> None:
    at = open_app("cameras")
    scope: Scope = at.session_state["mw_scope"]
    table = at.dataframe[0].value
    assert sorted(table["camera_id"]) == [f"cam-{i:03d}" for i in range(1, 7)]
    health = store.query_rows(
        f"SELECT camera_id, countIf(status = 'ok') / count() AS uptime, argMax(status, scheduled_at) AS last "
        f"FROM camera_health FINAL WHERE {window(scope)} GROUP BY camera_id", {}, seeded)
    for row in health:
        shown = table[table["camera_id"] == row["camera_id"]].iloc[0]
        assert shown["uptime"] == pytest.approx(row["uptime"])
        assert shown["status"] == row["last"]
    down = sum(1 for row in health if row["last"] != "ok")
    assert down >= 1  # the seed takes cam-001 down for the last two hours
    assert metrics(at)["Down now"][0] == str(down)
    # Its health changes, newest first, as the store holds them (the flow writes these rows).
    changes = at.dataframe[1].value
    expected = store.query_rows(
        f"SELECT camera_id, kind FROM camera_health_events FINAL WHERE {window(scope, 'changed_at')} "
        "ORDER BY changed_at DESC", {}, seeded)
    assert [(r["camera_id"], r["kind"]) for r in expected] == [("cam-001", "down"), ("cam-001", "degraded")]
    assert list(zip(changes["camera_id"], changes["kind"], strict=True)) == [
        (r["camera_id"], r["kind"]) for r in expected]
    page = texts(at)
    assert "rtsp://***@" in page
    for secret in SECRETS:
        assert secret not in page


def test_alerts_feed_detail_snapshots_and_acknowledge(seeded: Settings) -> None:
    at = open_app("alerts")
    scope: Scope = at.session_state["mw_scope"]
    expected = store.query_rows(
        f"SELECT alert_id, nomask_faces FROM alerts FINAL WHERE {window(scope, 'triggered_at')} "
        "ORDER BY triggered_at DESC, alert_id", {}, seeded)
    feed = at.dataframe[0].value
    assert list(feed["alert_id"]) == [r["alert_id"] for r in expected][: queries.FEED_LIMIT]
    newest = expected[0]
    assert at.selectbox(key="alert_id").value == newest["alert_id"]
    assert metrics(at)["No-mask faces"][0] == str(newest["nomask_faces"])
    assert metrics(at)["Status"][0] == "Open"
    assert len(at.image) >= 1  # the seed wrote annotated snapshots (dataset images) for the newest alerts

    at.text_input(key="ack_by").input("Dana")
    at.text_input(key="ack_note").input("spoke to the lobby staff")
    next(b for b in at.button if b.label == "Acknowledge").click().run()
    assert not at.exception
    ack = store.query_rows("SELECT acknowledged, acknowledged_by, note FROM alert_acks FINAL "
                           "WHERE alert_id = {id:String}", {"id": newest["alert_id"]}, seeded)
    assert ack == [{"acknowledged": True, "acknowledged_by": "Dana", "note": "spoke to the lobby staff"}]
    assert metrics(at)["Status"][0] == "Acknowledged"
    life = next(d.value for d in at.dataframe if "kind" in d.value.columns)  # the alert's life, as stored
    assert list(life["kind"]) == ["acknowledged"] and list(life["acknowledged_by"]) == ["Dana"]
    # ... and the alert's "acknowledged" event is on the alert topic (contract v2) and in the store.
    from maskwatch.schemas.events import AlertEvent

    from tests.flowkit import read_topic

    [message] = read_topic(seeded, seeded.topic_alerts, 1)
    event = AlertEvent.model_validate_json(message.value())
    assert (event.kind, event.alert_id, event.acknowledged_by, event.note) == (
        "acknowledged", newest["alert_id"], "Dana", "spoke to the lobby staff")
    assert store.query_rows("SELECT kind FROM alert_events FINAL WHERE alert_id = {id:String}",
                            {"id": newest["alert_id"]}, seeded) == [{"kind": "acknowledged"}]
    at.toggle(key="unacked_only").set_value(True).run()
    assert newest["alert_id"] not in list(at.dataframe[0].value["alert_id"])


def test_downloads_match_sql_and_files_round_trip(seeded: Settings) -> None:
    at = open_app("downloads")
    at.selectbox(key="download_table").set_value("detections").run()
    scope: Scope = at.session_state["mw_scope"]
    n = one(seeded, f"SELECT count() AS n FROM detections FINAL WHERE {window(scope)}", {})["n"]
    assert any(f"**{n:,} rows**" in m.value for m in at.markdown)
    assert len(at.get("download_button")) == 2
    rows = queries.download(seeded, scope, "detections")
    parquet = pl.read_parquet(io.BytesIO(ui.export(rows, "parquet")))
    csv = pl.read_csv(io.BytesIO(ui.export(rows, "csv")))
    assert parquet.height == csv.height == n
    assert int(parquet["nomask"].sum()) == one(
        seeded, f"SELECT countIf(nomask) AS n FROM detections FINAL WHERE {window(scope)}", {})["n"]
    # Alerts carry a list column (tick ids): it must survive CSV too.
    alerts = queries.download(seeded, scope, "alerts")
    assert pl.read_csv(io.BytesIO(ui.export(alerts, "csv"))).height == alerts.height


def test_manage_register_edit_disable_keeps_credentials(fresh: Settings) -> None:
    at = open_app("manage")
    at.text_input(key="id:new").input("gate-1")
    at.text_input(key="name:new").input("Main gate")
    at.text_input(key="site:new").input("hq")
    at.text_input(key="zone:new").input("gate")
    at.text_input(key="source:new").input("ftp://guard:topsecret@10.9.9.9/live")
    next(b for b in at.button if b.label == "Save camera").click().run()
    assert any("Not saved" in e.value and "source_url" in unescaped(e.value) for e in at.error)
    assert "topsecret" not in texts(at)
    assert registry.get_camera("gate-1", fresh) is None

    at.text_input(key="source:new").input("rtsp://guard:topsecret@10.9.9.9:554/live")
    at.checkbox(key="private:new").check()  # a LAN address needs the explicit opt-in (maskwatch.netpolicy)
    next(b for b in at.button if b.label == "Save camera").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    saved = registry.get_camera("gate-1", fresh)
    assert saved is not None and saved.source_url == "rtsp://guard:topsecret@10.9.9.9:554/live"
    assert (saved.name, saved.site, saved.zone) == ("Main gate", "hq", "gate")
    assert any("rtsp://***@10.9.9.9:554/live" in unescaped(s.value) for s in at.success)
    assert at.selectbox(key="manage_camera").value == "gate-1"
    assert "topsecret" not in texts(at)

    # Edit without typing a URL: the stored URL (and its credentials) stays.
    at.text_input(key="name:gate-1").input("North gate")
    at.number_input(key="min_people:gate-1").set_value(2)
    next(b for b in at.button if b.label == "Save camera").click().run()
    edited = registry.get_camera("gate-1", fresh)
    assert edited is not None and edited.name == "North gate"
    assert edited.source_url == saved.source_url and edited.rules.min_people == 2

    # Typing a new URL replaces it.
    at.text_input(key="source:gate-1").input("https://10.9.9.10/snap.jpg")
    next(b for b in at.button if b.label == "Save camera").click().run()
    replaced = registry.get_camera("gate-1", fresh)
    assert replaced is not None and replaced.source_url == "https://10.9.9.10/snap.jpg"

    # "New camera" with an existing id must not overwrite that camera (or its credentials).
    at.selectbox(key="manage_camera").set_value("+ New camera").run()
    at.text_input(key="id:new").input("gate-1")
    at.text_input(key="source:new").input("http://10.0.0.1/other.jpg")
    next(b for b in at.button if b.label == "Save camera").click().run()
    assert any("already exists" in e.value for e in at.error)
    unchanged = registry.get_camera("gate-1", fresh)
    assert unchanged is not None and unchanged.source_url == "https://10.9.9.10/snap.jpg"

    at.selectbox(key="manage_camera").set_value("gate-1").run()
    at.button(key="toggle_enabled").click().run()
    disabled = registry.get_camera("gate-1", fresh)
    assert disabled is not None and not disabled.enabled
    assert any("gate-1 disabled" in unescaped(s.value) for s in at.success)


def test_manage_counting_area_over_the_latest_snapshot(fresh: Settings, dataset_dir: Path) -> None:
    from maskwatch.flows.snapshots import snapshot_path
    from maskwatch.schemas.events import CountingArea, FrameResult

    registry.put_camera(Camera(id="door", name="Door", source_url="http://10.9.9.9/snap.jpg",
                               allow_private_network=True, rules=RuleOverrides(min_dwell_s=30)), fresh)
    now = datetime.now(UTC)
    path = snapshot_path(fresh.home / "snapshots", "door", "door:1", now)
    path.parent.mkdir(parents=True)
    path.write_bytes((dataset_dir / "images" / "maksssksksss0.jpg").read_bytes())
    frame = FrameResult(camera_id="door", tick_id="door:1", scheduled_at=now, processed_at=now, status="ok",
                        snapshot_path=str(path))
    store.insert_models("frames", [frame], fresh)
    at = open_app("manage")
    at.selectbox(key="manage_camera").set_value("door").run()
    assert len(at.image) == 1  # the latest snapshot, with the polygons drawn on it
    at.text_area(key="include:door").input("0,0 0.5,0 0.5,1 0,1")
    at.text_area(key="exclude:door").input("0.1,0 0.3,0 0.3,0.2")
    at.number_input(key="min_face_px:door").set_value(24)
    next(b for b in at.button if b.label == "Save counting area").click().run()
    saved = registry.require_camera("door", fresh)
    assert saved.area == CountingArea(include=[[(0, 0), (0.5, 0), (0.5, 1), (0, 1)]],
                                      exclude=[[(0.1, 0), (0.3, 0), (0.3, 0.2)]], min_face_px=24)
    assert any("Counting area of door saved" in unescaped(s.value) for s in at.success)
    assert at.text_area(key="include:door").value == "0,0 0.5,0 0.5,1 0,1"
    # A bad polygon is refused with the line it is on; nothing is written.
    at.text_area(key="exclude:door").input("0.1,0 0.3,0 0.3,0.2\n0.5,0.5 oops")
    next(b for b in at.button if b.label == "Save counting area").click().run()
    assert any("line 2" in unescaped(e.value) for e in at.error)
    assert registry.require_camera("door", fresh).area == saved.area
    # Editing the camera itself keeps its area and the rule overrides the form does not show.
    at.text_input(key="name:door").input("Front door")
    next(b for b in at.button if b.label == "Save camera").click().run()
    edited = registry.require_camera("door", fresh)
    assert edited.name == "Front door" and edited.area == saved.area and edited.rules.min_dwell_s == 30


def test_manage_schedule_pause_and_site_clocks(fresh: Settings) -> None:
    from zoneinfo import ZoneInfo

    from maskwatch.cameras import sites
    from maskwatch.schemas.events import Site

    sites.put_site(Site(id="hq", timezone="Asia/Tokyo"), fresh)
    registry.put_camera(Camera(id="door", site="hq", source_url="http://10.9.9.9/snap.jpg",
                               allow_private_network=True), fresh)
    before = datetime.now(ZoneInfo("Asia/Tokyo"))
    at = open_app("manage")
    after = datetime.now(ZoneInfo("Asia/Tokyo"))
    clocks = unescaped(" ".join(c.value for c in at.sidebar.caption))
    assert any(f"Local time: hq {t:%a %H:%M} (Asia/Tokyo)" in clocks for t in (before, after)), clocks
    at.selectbox(key="manage_camera").set_value("door").run()
    at.text_area(key="quiet:door").input("12:00-13:00\nsat-sun 00:00-24:00")
    next(b for b in at.button if b.label == "Save schedule").click().run()
    assert registry.require_camera("door", fresh).schedule.quiet_hours == ["12:00-13:00",
                                                                           "sat-sun 00:00-24:00"]
    at.text_area(key="open:door").input("weekdays 9 to 5")
    next(b for b in at.button if b.label == "Save schedule").click().run()
    assert any("Not saved" in e.value and "HH:MM" in unescaped(e.value) for e in at.error)
    assert registry.require_camera("door", fresh).schedule.open_hours == []
    at.number_input(key="pause_hours:door").set_value(3.0)
    at.button(key="pause_camera:door").click().run()
    paused = registry.require_camera("door", fresh).schedule.paused_until
    assert paused is not None and timedelta(hours=2.9) < paused - datetime.now(UTC) <= timedelta(hours=3)
    assert registry.require_camera("door", fresh).schedule.quiet_hours  # the hours stay
    at.button(key="pause_site:door").click().run()
    assert sites.require_site("hq", fresh).schedule.paused_until is not None
    assert sites.require_site("hq", fresh).timezone == "Asia/Tokyo"
    at.button(key="resume:door").click().run()
    assert registry.require_camera("door", fresh).schedule.paused_until is None
    assert sites.require_site("hq", fresh).schedule.paused_until is None


def test_long_ranges_read_the_rollups_past_the_raw_ttl(fresh: Settings) -> None:
    # Rollup rows only: 10 and 40 days ago, long after (and before) any raw frame could still be kept.
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    for days, ticks, nomask in ((10, 40, 10), (40, 20, 10)):
        store.command(
            "INSERT INTO compliance_hourly SELECT {h:DateTime('UTC')}, 'hq', 'lobby', 'door', "
            "uniqExactState(toString(number)), toUInt64(2 * count()), toUInt64({nomask:UInt32}), "
            "uniqState(toString(number % 4)) FROM numbers({ticks:UInt32})",
            {"h": now - timedelta(days=days), "nomask": nomask, "ticks": ticks}, settings=fresh)
    at = open_app(range="Last 30 days")
    shown = metrics(at)
    assert shown, texts(at)
    assert shown["Frames processed"] == ("40", "+20 (+100%)")
    assert shown["Faces seen"] == ("80", "+40 (+100%)")
    assert shown["No-mask people (est.)"] == ("4", "+0 (+0%)")
    assert shown["Compliance"][0] == f"{70 / 80:.1%}"
    assert any("from the hourly rollups" in c.value for c in at.caption)
    series = queries.timeseries(fresh, at.session_state["mw_scope"], 86400)
    assert series["faces"].sum() == 80 and series["nomask_people"].sum() == 4


def test_empty_store_says_so(fresh: Settings) -> None:
    at = open_app()
    assert metrics(at)["Compliance"][0] == "—" and metrics(at)["Faces seen"][0] == "0"
    assert any("No frames in this range" in i.value for i in at.info)
    for page, message in (("cameras", "No cameras registered"), ("alerts", "No alerts in this range"),
                          ("patterns", "No no-mask faces"), ("downloads", "No frames rows")):
        at.switch_page(f"views/{page}.py").run()
        assert not at.exception, page
        assert any(message in i.value for i in at.info), (page, [i.value for i in at.info])


def test_unmigrated_store_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, store_url: str) -> None:
    for key, value in dashboard_identity(store_url).items():
        monkeypatch.setenv(key, value)
    at = open_app()
    shown = [unescaped(e.value) for e in at.error] + [unescaped(w.value) for w in at.warning]
    assert any("maskwatch store migrate" in text for text in shown), shown
    assert not at.metric


def test_unreachable_store_clear_message_without_password(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("MASKWATCH_STORE_URL", f"http://reader:hunter2@127.0.0.1:{port}/?database=maskwatch")
    at = open_app()
    assert len(at.error) == 1
    message = at.error[0].value
    assert "Cannot read the store at" in message and f"http://***@127.0.0.1:{port}" in message
    assert "hunter2" not in texts(at)
    assert not at.metric
