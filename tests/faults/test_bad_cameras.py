"""Hostile cameras on a local HTTP server: one hangs, one refuses connections, one returns garbage, one
sends a 50 MB body. Each yields its health rows (and frames with the failure), the healthy camera in the
same batches keeps flowing, no batch waits past the fetch deadline, and the flow never crashes."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera
from maskwatch.topics import ensure_topics

from tests.flowkit import (
    INTERVAL_S,
    duplicate_rows,
    flow_env,
    has_frames,
    make_ticks,
    metric_values,
    pick_images,
    produce,
    scenario_base_ms,
    send_jpeg,
    start_flow,
    stop,
    wait_for,
)

BIG = 50 * 1024 * 1024


class _Cameras(http.server.BaseHTTPRequestHandler):
    photo = b""
    big_sent: ClassVar[list[int]] = []

    def do_GET(self) -> None:
        if self.path.startswith("/hang"):
            time.sleep(8)
            return
        if self.path.startswith("/garbage"):
            body = b"<html>this is not a camera</html>" * 10
        elif self.path.startswith("/big"):
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")  # no Content-Length: streamed until aborted
            self.end_headers()
            sent, chunk = 0, b"\xff" * 1024 * 1024
            try:
                while sent < BIG:
                    self.wfile.write(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the flow hung up: what this camera is here to prove
            _Cameras.big_sent.append(sent)
            return
        else:
            body = self.photo
        send_jpeg(self, body)

    def log_message(self, *args: object) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def camera_server(dataset_dir: Path) -> Iterator[str]:
    _Cameras.photo = pick_images(dataset_dir, "con_mascarilla", 1)[0].read_bytes()
    _Cameras.big_sent.clear()
    server = _Server(("127.0.0.1", 0), _Cameras)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_hanging_refusing_garbage_and_huge_cameras(
    tmp_path: Path, mw_env: Settings, dataset_dir: Path, camera_server: str,
    fault_figures: Callable[..., None],
) -> None:
    store.migrate(mw_env)
    ensure_topics(mw_env)
    sources = {"healthy": f"{camera_server}/snap.jpg", "hang": f"{camera_server}/hang",
               "refuse": f"http://127.0.0.1:{free_port()}/snap.jpg", "garbage": f"{camera_server}/garbage",
               "huge": f"{camera_server}/big"}
    for cam_id, url in sources.items():
        camera = Camera(id=cam_id, interval_s=INTERVAL_S, source_url=url, allow_private_network=True)
        registry.put_camera(camera, mw_env)
    n = 6
    ticks = make_ticks(list(sources), n, scenario_base_ms())
    produce(mw_env, ticks)
    metrics_port = free_port()
    # The production fetch limits (not flowkit's short test ones): under CI load a 1 s read timeout can
    # expire on the garbage camera's tiny answer while the 50 MB camera streams. /hang still outlasts them.
    env = {**flow_env(mw_env, tmp_path, dataset_dir), "MASKWATCH_METRICS_PORT": str(metrics_port),
           "MASKWATCH_FLOW_FETCH_DEADLINE_S": "5", "MASKWATCH_FLOW_FETCH_CONNECT_TIMEOUT_S": "2",
           "MASKWATCH_FLOW_FETCH_READ_TIMEOUT_S": "3"}
    log_path = tmp_path / "flow.log"
    started = time.monotonic()
    proc = start_flow(env, log_path)
    try:
        wait_for("every tick's frame row", has_frames(mw_env, dict.fromkeys(sources, n)), 150, proc,
                 log_path)
        elapsed = time.monotonic() - started
        metrics = metric_values(metrics_port)
        assert proc.poll() is None, "the flow died"
    finally:
        stop(proc)

    q = lambda sql: store.query_rows(sql, settings=mw_env)  # noqa: E731
    health = {(r["camera_id"], r["status"]): r for r in q(
        "SELECT camera_id, status, count() AS n, max(consecutive_failures) AS f, max(state) AS s, "
        "any(error) AS e FROM camera_health FINAL GROUP BY camera_id, status")}
    assert health[("healthy", "ok")]["n"] == n and ("healthy", "ok") in health
    # After 3 failures in a row a camera is backed off: its later ticks are recorded as skipped. (The
    # ticks here arrive together, so most are fetched at once before any failure is known: any number of
    # the last 3 may be skipped, none lost.)
    skipped = {cam: health[(cam, "skipped")]["n"] if (cam, "skipped") in health else 0
               for cam in ("hang", "refuse", "garbage", "huge")}
    assert all(n - 3 >= k >= 0 for k in skipped.values()), skipped
    assert all("backed off after" in health[(cam, "skipped")]["e"] for cam, k in skipped.items() if k)
    hang = [h for (cam, status), h in health.items() if cam == "hang" and status != "skipped"]
    assert {h["status"] for h in hang} <= {"timeout", "fetch_error"}
    assert sum(h["n"] for h in hang) == n - skipped["hang"]
    assert health[("refuse", "fetch_error")]["n"] == n - skipped["refuse"]
    assert "refused" in health[("refuse", "fetch_error")]["e"]
    assert health[("garbage", "decode_error")]["n"] == n - skipped["garbage"]
    assert "not a JPEG, PNG" in health[("garbage", "decode_error")]["e"]
    assert health[("huge", "oversized")]["n"] == n - skipped["huge"]
    assert "limit" in health[("huge", "oversized")]["e"]
    for cam in ("hang", "refuse", "garbage", "huge"):  # 6 failures (skipped ones too) in a row: down
        last = store.query_rows("SELECT state, consecutive_failures AS f FROM camera_health FINAL "
                                "WHERE camera_id = {c:String} ORDER BY scheduled_at DESC LIMIT 1",
                                {"c": cam}, settings=mw_env)[0]
        assert last == {"state": "down", "f": n}, (cam, last)
    frames = {(r["camera_id"], r["status"]): r["n"] for r in q(
        "SELECT camera_id, status, count() AS n FROM frames FINAL GROUP BY camera_id, status")}
    assert frames[("healthy", "ok")] == n
    # The huge body was cut off near the fetch limit (10 MiB), far from 50 MB.
    assert _Cameras.big_sent and max(_Cameras.big_sent) < BIG
    assert duplicate_rows(mw_env) == {"frames": 0, "detections": 0, "camera_health": 0, "alerts": 0}
    deadline = float(env["MASKWATCH_FLOW_FETCH_DEADLINE_S"])
    assert metrics['maskwatch_frames_failed_total{camera="huge",reason="oversized"}'] == n - skipped["huge"]
    assert metrics['maskwatch_frames_failed_total{camera="garbage",reason="decode_error"}'] == (
        n - skipped["garbage"])
    assert metrics.get('maskwatch_frames_failed_total{camera="hang",reason="skipped"}', 0) == skipped["hang"]
    fault_figures(fault="hang/refuse/garbage/50MB cameras", ticks=len(ticks), frames=sum(frames.values()),
                  healthy_ok=frames[("healthy", "ok")], seconds_to_all_rows=round(elapsed, 1),
                  fetch_deadline_s=deadline, huge_bytes_sent_max=max(_Cameras.big_sent), duplicates=0)
