"""Helpers for the flow's end-to-end tests (``tests/test_flow_*.py``, ``tests/faults/``): a scripted
scenario of cameras and ticks on the real broker and store, the flow as its own process, waiting and
reading back.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera, Tick
from maskwatch.topics import ensure_topics

REPO_ROOT = Path(__file__).resolve().parents[1]
# Every face ever stored by a test: its rows are minutes old.
CURRENT_DETECTIONS = "current_detections(since = '2000-01-01 00:00:00', until = '2100-01-01 00:00:00')"

INTERVAL_S = 2.0
# Small buckets and windows keep the scripted sequence short: a window is 20 s of event time.
FLOW_ENV = {
    "MASKWATCH_FLOW_BUCKET_S": "10",
    "MASKWATCH_FLOW_LATENESS_S": "0",
    "MASKWATCH_FLOW_RULE_WINDOW_S": "20",
    # 5: above what the classifier's few misreads of masked faces can add up to in one window.
    "MASKWATCH_FLOW_RULE_MIN_PEOPLE": "5",
    "MASKWATCH_FLOW_RULE_NOMASK_RATIO": "0.75",
    "MASKWATCH_FLOW_RULE_MIN_FRAMES": "5",
    "MASKWATCH_FLOW_RULE_COOLDOWN_S": "3600",
    "MASKWATCH_FLOW_BATCH_MAX": "12",
    "MASKWATCH_FLOW_BATCH_TIMEOUT_S": "0.3",
    "MASKWATCH_FLOW_FETCH_DEADLINE_S": "1.5",
    "MASKWATCH_FLOW_FETCH_CONNECT_TIMEOUT_S": "0.5",
    "MASKWATCH_FLOW_FETCH_READ_TIMEOUT_S": "1.0",
    "MASKWATCH_FLOW_REGISTRY_REFRESH_S": "2",
}


def pick_images(dataset_dir: Path, label: str, count: int, min_face_px: int = 40) -> list[Path]:
    """Photos with exactly one annotated face, of ``label``, big enough to be seen at 640 px."""
    chosen = []
    for xml in sorted((dataset_dir / "annotations").glob("*.xml")):
        objects = list(ET.parse(xml).getroot().iter("object"))
        if len(objects) != 1 or objects[0].findtext("name") != label:
            continue
        bb = objects[0].find("bndbox")
        assert bb is not None
        width = int(bb.findtext("xmax") or 0) - int(bb.findtext("xmin") or 0)
        if width >= min_face_px:
            chosen.append(dataset_dir / "images" / f"{xml.stem}.jpg")
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"dataset has fewer than {count} single-face {label} photos")


def replay_dir(root: Path, images: list[Path]) -> Path:
    """A replay directory whose sorted order is ``images`` (symlinks: the dataset is never copied)."""
    root.mkdir(parents=True)
    for i, image in enumerate(images):
        (root / f"{i:03d}.jpg").symlink_to(image)
    return root


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (the point of these cameras) is not an error here


class _Hang(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(5)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def hanging_server() -> Iterator[str]:
    """An HTTP camera that accepts the connection and never answers."""
    server = _QuietServer(("127.0.0.1", 0), _Hang)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/snapshot.jpg"
    finally:
        server.shutdown()


class _Record(http.server.BaseHTTPRequestHandler):
    server: RecordingServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        self.send_error(500)

    def log_message(self, *args: object) -> None:
        pass


class RecordingServer(http.server.ThreadingHTTPServer):
    """A local HTTP server that records the path of every request it gets and answers 500."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Record)
        self.daemon_threads = True
        self.requests: list[str] = []

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@contextlib.contextmanager
def recording_server() -> Iterator[RecordingServer]:
    server = RecordingServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()


def send_jpeg(handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
    """Answer a test camera's request with one JPEG."""
    handler.send_response(200)
    handler.send_header("Content-Type", "image/jpeg")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Live(http.server.BaseHTTPRequestHandler):
    server: LiveCamera

    def do_GET(self) -> None:
        with self.server.lock:
            body = self.server.frames[self.server.requests % len(self.server.frames)]
            self.server.requests += 1
        send_jpeg(self, body)

    def log_message(self, *args: object) -> None:
        pass


class LiveCamera(http.server.ThreadingHTTPServer):
    """A local HTTP snapshot camera whose picture changes with every request, as a live scene does: a
    tick fetched again (a replay after a crash) sees another frame than the first time."""

    def __init__(self, images: list[Path]) -> None:
        super().__init__(("127.0.0.1", 0), _Live)
        self.daemon_threads = True
        self.frames = [image.read_bytes() for image in images]
        self.requests = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/snapshot.jpg"


@contextlib.contextmanager
def live_camera(images: list[Path]) -> Iterator[LiveCamera]:
    server = LiveCamera(images)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()


def pick_crowds(dataset_dir: Path, sizes: tuple[int, ...], min_face_px: int = 30) -> list[Path]:
    """One photo per entry of ``sizes`` with that many annotated faces, each big enough to be seen."""
    chosen: dict[int, Path] = {}
    for xml in sorted((dataset_dir / "annotations").glob("*.xml")):
        objects = list(ET.parse(xml).getroot().iter("object"))
        if len(objects) not in sizes or len(objects) in chosen:
            continue
        widths = [int(o.findtext("bndbox/xmax") or 0) - int(o.findtext("bndbox/xmin") or 0) for o in objects]
        if min(widths) >= min_face_px:
            chosen[len(objects)] = dataset_dir / "images" / f"{xml.stem}.jpg"
    missing = set(sizes) - set(chosen)
    assert not missing, f"dataset has no photo with {sorted(missing)} faces of >= {min_face_px} px"
    return [chosen[n] for n in sizes]


@dataclass
class Scenario:
    settings: Settings
    env: dict[str, str]
    ticks: list[Tick]
    expected_frames: dict[str, int]
    mixed_unmasked_from: datetime

    def frames_for(self, ticks: list[Tick]) -> int:
        """How many frame rows `ticks` make (ticks of unregistered or disabled cameras make none)."""
        return sum(1 for t in ticks if t.camera_id in self.expected_frames)


def scenario_base_ms() -> int:
    """Event time starts on a replay-cycle boundary (tick i shows image i of the directory) that is also a
    rule-bucket boundary (36 s cycle, 10 s buckets): every run puts the same ticks in the same buckets."""
    align_ms = 180_000
    now_ms = int(time.time() * 1000)
    return now_ms - now_ms % align_ms - align_ms


def build_scenario(tmp_path: Path, settings: Settings, dataset_dir: Path, hang_url: str,
                   base_ms: int | None = None) -> Scenario:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store.migrate(settings)
    ensure_topics(settings)
    masked = pick_images(dataset_dir, "con_mascarilla", 8)
    unmasked = pick_images(dataset_dir, "sin_mascarilla", 10)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(masked[0].read_bytes()[:30] + b"\0" * 64)
    cameras = [
        # 18 images: ticks 0-7 masked, 8-17 unmasked; the cycle then starts over with masked ones.
        Camera(id="mixed", name="Lobby", site="hq", zone="lobby", interval_s=INTERVAL_S,
               source_url=replay_dir(tmp_path / "mixed", masked + unmasked).as_uri()),
        Camera(id="masked", site="hq", zone="hall", interval_s=INTERVAL_S,
               source_url=replay_dir(tmp_path / "masked", masked).as_uri()),
        # The test HTTP cameras live on 127.0.0.1: allowed only because they say so.
        Camera(id="refused", site="hq", interval_s=INTERVAL_S, allow_private_network=True,
               source_url=f"http://admin:hunter2@127.0.0.1:{free_port()}/snap.jpg"),
        Camera(id="hang", site="hq", interval_s=INTERVAL_S, source_url=hang_url, allow_private_network=True),
        Camera(id="corrupt", site="hq", interval_s=INTERVAL_S, source_url=corrupt.as_uri()),
        Camera(id="off", enabled=False, interval_s=INTERVAL_S, source_url=(tmp_path / "masked").as_uri()),
    ]
    for cam in cameras:
        registry.put_camera(cam, settings)
    base_ms = scenario_base_ms() if base_ms is None else base_ms
    counts = {"mixed": 26, "masked": 12, "refused": 4, "hang": 3, "corrupt": 3, "off": 2, "ghost": 2}
    ticks = []
    for cam_id, n in counts.items():
        for i in range(n):
            ms = base_ms + int(i * INTERVAL_S * 1000)
            at = datetime.fromtimestamp(ms / 1000, UTC)
            ticks.append(Tick(camera_id=cam_id, tick_id=f"{cam_id}:{ms}", scheduled_at=at, emitted_at=at))
    ticks.sort(key=lambda t: t.scheduled_at)
    env = flow_env(settings, tmp_path, dataset_dir)
    expected = {c: n for c, n in counts.items() if c not in ("off", "ghost")}
    unmasked_from = datetime.fromtimestamp((base_ms + 8 * INTERVAL_S * 1000) / 1000, UTC)
    return Scenario(settings, env, ticks, expected, unmasked_from)


def flow_env(settings: Settings, tmp_path: Path, dataset_dir: Path) -> dict[str, str]:
    """The environment of a flow process for ``settings``, with the tests' small windows and timeouts."""
    return {**os.environ, **FLOW_ENV, "MASKWATCH_HOME": str(settings.home),
            "MASKWATCH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "MASKWATCH_STORE_URL": settings.store_url,
            "MASKWATCH_TOPIC_TICKS": settings.topic_ticks, "MASKWATCH_TOPIC_ALERTS": settings.topic_alerts,
            "MASKWATCH_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
            "MASKWATCH_TOPIC_CAMERA_HEALTH": settings.topic_camera_health,
            # file:// replay sources live in this test's tmp dir (and link into the dataset).
            "MASKWATCH_FILE_ROOTS": os.pathsep.join([str(tmp_path), str(dataset_dir)])}


def make_ticks(camera_ids: list[str], count: int, base_ms: int, interval_s: float = INTERVAL_S) -> list[Tick]:
    """``count`` ticks per camera from ``base_ms`` on, in time order."""
    ticks = []
    for i in range(count):
        ms = base_ms + int(i * interval_s * 1000)
        at = datetime.fromtimestamp(ms / 1000, UTC)
        ticks += [Tick(camera_id=c, tick_id=f"{c}:{ms}", scheduled_at=at, emitted_at=at) for c in camera_ids]
    return ticks


def metric_values(port: int) -> dict[str, float]:
    """The flow's /metrics as ``{'name{label="v",...}': value}`` (labels sorted)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def produce(settings: Settings, ticks: list[Tick], extra: list[tuple[bytes | None, bytes]] = ()) -> None:  # type: ignore[assignment]
    producer = Producer(settings.kafka_config())
    for tick in ticks:
        producer.produce(settings.topic_ticks, key=tick.camera_id.encode(),
                         value=tick.model_dump_json().encode())
    for key, value in extra:
        producer.produce(settings.topic_ticks, key=key, value=value)
    assert producer.flush(30) == 0


def start_flow(env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen[bytes]:
    log = open(log_path, "ab")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen([sys.executable, "-m", "maskwatch.cli", "flow", "run", "-s", "1", *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_for(what: str, check: Callable[[], bool], timeout: float, proc: subprocess.Popen[bytes],
             log_path: Path, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"flow exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
        if check():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}:\n{log_path.read_text()[-4000:]}")


def kill_at_first_frame(settings: Settings, proc: subprocess.Popen[bytes], log_path: Path,
                        timeout: float = 120, camera: str | None = None) -> int:
    """kill -9 the flow as soon as its first frame row (of ``camera``, if given) is stored; returns the
    frame rows stored by then.

    The flow stores frames in bursts (a batch with the hanging camera waits out the fetch deadline), so a
    kill right after the first one lands while the rest of what was produced is still being worked on."""
    stored = lambda: bool(frame_counts(settings).get(camera, 0) if camera else frame_counts(settings))  # noqa: E731
    wait_for("a first frame row", stored, timeout, proc, log_path, interval=0.05)
    proc.kill()
    proc.wait(10)
    return sum(frame_counts(settings).values())


def has_frames(settings: Settings, expected: dict[str, int]) -> Callable[[], bool]:
    return lambda: frame_counts(settings) == expected


def frame_counts(settings: Settings) -> dict[str, int]:
    rows = store.query_rows("SELECT camera_id, count() AS n FROM frames FINAL GROUP BY camera_id",
                            settings=settings)
    return {r["camera_id"]: r["n"] for r in rows}


def read_topic(settings: Settings, topic: str, expect_at_least: int, timeout: float = 15) -> list[Any]:
    consumer = Consumer({**settings.kafka_config(), "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    consumer.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet_until = None
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                # After the expected records, wait a little longer to catch any duplicate.
                if len(got) >= expect_at_least:
                    quiet_until = quiet_until or time.monotonic() + 3
                    if time.monotonic() > quiet_until:
                        break
                continue
            if msg.error() is None:
                got.append(msg)
    finally:
        consumer.close()
    return got




def variant(settings: Settings, name: str) -> Settings:
    """``settings`` with its own home, database and topics, for one of several runs in a test."""
    suffix = f"{name}.{uuid.uuid4().hex[:8]}"
    db = f"t_{uuid.uuid4().hex}"
    return settings.replace(
        home=settings.home / name, store_url=settings.store_url.split("?")[0] + f"?database={db}",
        topic_ticks=f"maskwatch.ticks.{suffix}", topic_alerts=f"maskwatch.alerts.{suffix}",
        topic_dead_letter=f"maskwatch.dead-letter.{suffix}",
        topic_camera_health=f"maskwatch.camera-health.{suffix}",
    )


def store_summary(settings: Settings) -> dict[str, object]:
    """What the store holds, after merging: a replayed row that did not collapse shows up here."""
    q = lambda sql: store.query_rows(sql, settings=settings)  # noqa: E731
    for table in ("frames", "detections", "alerts", "camera_health"):
        store.command(f"OPTIMIZE TABLE {table} FINAL", settings=settings)  # merge away replayed duplicates
    return {
        # Without FINAL, after the merge: a duplicate that did not collapse would show here.
        "frames": q("SELECT camera_id, status, count() AS n, sum(faces) AS faces, sum(nomask_faces) AS nm "
                    "FROM frames GROUP BY camera_id, status ORDER BY camera_id, status"),
        # The faces of each frame's current row (a tick processed again keeps its newest attempt's).
        "detections": q("SELECT camera_id, count() AS n, countIf(nomask) AS nomask "
                        f"FROM {CURRENT_DETECTIONS} GROUP BY camera_id ORDER BY camera_id"),
        "health": q("SELECT camera_id, status, count() AS n, max(consecutive_failures) AS f "
                    "FROM camera_health GROUP BY camera_id, status ORDER BY camera_id, status"),
        "alerts": q("SELECT alert_id, camera_id, window_start, window_end, nomask_faces, tick_ids "
                    "FROM alerts ORDER BY alert_id"),
    }


def duplicate_rows(settings: Settings) -> dict[str, int]:
    """Rows beyond one per key in each table after merging (0 everywhere when nothing was duplicated).
    Detections count among the faces of each frame's current row: an earlier attempt's faces stay in the
    table until their TTL, by design, and no reader sees them."""
    keys = {"frames": "camera_id, tick_id", "detections": "camera_id, tick_id, face_index",
            "camera_health": "camera_id, tick_id", "alerts": "alert_id"}
    out = {}
    for table, key in keys.items():
        store.command(f"OPTIMIZE TABLE {table} FINAL", settings=settings)
        source = CURRENT_DETECTIONS if table == "detections" else table
        row = store.query_rows(f"SELECT count() - uniqExact({key}) AS d FROM {source}", settings=settings)
        out[table] = int(row[0]["d"])
    return out


def faces_disagreeing(settings: Settings) -> list[dict[str, Any]]:
    """Frames whose ``faces`` and ``nomask_faces`` differ from their current detection rows: a tick's
    frame and faces replaced apart (empty when every frame and its faces are one unit)."""
    return store.query_rows(
        "SELECT f.camera_id AS camera_id, f.tick_id AS tick_id, f.faces AS faces, f.nomask_faces AS nomask, "
        "countIf(d.tick_id != '') AS rows, countIf(d.tick_id != '' AND d.nomask) AS nomask_rows "
        f"FROM (SELECT * FROM frames FINAL) AS f LEFT JOIN {CURRENT_DETECTIONS} AS d "
        "ON d.camera_id = f.camera_id AND d.tick_id = f.tick_id "
        "GROUP BY camera_id, tick_id, faces, nomask HAVING rows != faces OR nomask_rows != nomask "
        "ORDER BY tick_id",
        settings=settings)


def assert_rows_once(settings: Settings, expected_frames: dict[str, int]) -> tuple[dict[str, int], int]:
    """Asserts that no table holds a duplicate and that there is one frame row per expected frame;
    returns ``(duplicate_rows(settings), frame rows)`` for the figures."""
    dups = duplicate_rows(settings)
    assert dups == {"frames": 0, "detections": 0, "camera_health": 0, "alerts": 0}, dups
    rows = int(store.query_rows("SELECT count() AS n FROM frames", settings=settings)[0]["n"])
    assert rows == sum(expected_frames.values()), (rows, expected_frames)
    return dups, rows


def run_maskwatch(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """`maskwatch ARGS` as a user runs it, in the repo root with the test's environment."""
    return subprocess.run([sys.executable, "-m", "maskwatch.cli", *args], cwd=REPO_ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=timeout)


@dataclass(frozen=True)
class DemoEnv:
    """What the `demo_env` fixture set up for a private `maskwatch up`."""

    broker_port: int
    store_port: int

    @property
    def settings(self) -> Settings:
        """Read afresh: the store's password exists only once `maskwatch up` made it."""
        return Settings()


def alert_event(n: int = 0, camera: str = "cam-1", kind: str = "opened", site: str = "hq",
                zone: str = "lobby", **changes: Any) -> Any:
    """Alert ``n``'s ``kind`` step as the flow publishes it (contract v2)."""
    from maskwatch.schemas.events import AlertEvent, RuleInfo

    start = datetime(2026, 11, 26, 9, 0, tzinfo=UTC) + timedelta(minutes=n)
    alert_id = f"{camera}:nomask_people:{int(start.timestamp() * 1000)}"
    at = start + timedelta(seconds=60)
    event = AlertEvent(
        event_id=f"{alert_id}:{kind}:{int(at.timestamp() * 1000)}", kind=kind,  # type: ignore[arg-type]
        alert_id=alert_id, at=at, camera_id=camera, camera_name="Lobby door", site=site, zone=zone,
        site_timezone="Europe/Berlin", severity="warning",
        rule=RuleInfo(kind="nomask_people", description=">=3 no-mask people in 60s",
                      parameters={"min_people": 3, "window_s": 60}),
        window_start=start, window_end=at, people=3, nomask_faces=5, faces=8, frames=12, value=3.0,
        threshold=3.0, tick_ids=[f"{camera}:{int(start.timestamp() * 1000)}"],
        message="Lobby door: >=3 no-mask people in 60s (3 no-mask people, seen 5 times on 4/12 frames)")
    return event.model_copy(update=changes) if changes else event


def alert_steps(messages: list[Any]) -> list[dict[str, Any]]:
    """The alert topic's records as payloads, each event id once (a repeat fails here)."""
    payloads = [json.loads(m.value()) for m in messages]
    ids = [p["event_id"] for p in payloads]
    assert len(ids) == len(set(ids)), f"an alert event published twice: {sorted(ids)}"
    return payloads


def opened(messages: list[Any]) -> list[dict[str, Any]]:
    """The alerts opened on the alert topic (one per incident; later steps share their alert id)."""
    steps = alert_steps(messages)
    first = [p for p in steps if p["kind"] == "opened"]
    assert {p["alert_id"] for p in steps} == {p["alert_id"] for p in first}, "a step of an unopened alert"
    return first


def dashboard_identity(store_url: str) -> dict[str, str]:
    """The environment of a dashboard that uses the store's read-mostly dashboard user (as `maskwatch up`,
    docker/ and docker/k8s/ run it), with the session's dashboard password (conftest)."""
    from maskwatch.devservices.demo import with_user
    from maskwatch.store.identities import DASHBOARD_USER

    return {"MASKWATCH_STORE_URL": with_user(store_url, DASHBOARD_USER),
            "MASKWATCH_STORE_PASSWORD_FILE": os.environ["MASKWATCH_STORE_DASHBOARD_PASSWORD_FILE"]}
