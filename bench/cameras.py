"""``python -m bench.cameras`` (and ``python -m bench --only cameras``): what holding cameras costs.

Real streams on loopback, one measuring process per configuration (so each one's CPU time is its own):

- **rtsp**: GStreamer's RTSP server (the one the tests use) serves H.264 1280x720 at 25 fps, a keyframe a
  second, from one shared encoder per server (one server per 100 cameras), of a real scene (a photo with
  sensor noise, ~2.4 Mbit/s; ``--scene ball``: a ball on black, which the encoder sends at ~0.2 Mbit/s).
  N cameras held by the new fetcher (PyAV: demux continuously, decode a
  keyframe per tick) at 1 tick per ``--interval-s``, and, as the baseline in the same run, by the reader
  the flow had before (OpenCV's FFmpeg capture, decoding every frame). Per configuration: CPU cores used
  by the measuring process per held camera, and the share of ticks fetched ``ok`` within their deadline.
- **http**: N HTTP snapshot cameras with Digest auth (720p JPEG; the server runs in a process of its
  own, so only the fetching is counted) fetched and decoded by the flow's fetcher at 1 tick per
  ``--interval-s``, for each N of ``--http-counts``: cores per camera, ticks ``ok`` within the deadline.
- **isolation**: ``--http-cameras`` HTTP snapshot cameras with Digest auth (one threaded server on
  loopback), fetched as the flow does (batches of 16 mixed cameras), all healthy, then with 10 % of them
  slow (headers dripped a byte every 0.3 s) or dead (accepting nothing): the healthy cameras' fetch latency
  p50/p99 in both runs.

Ratios are against the baseline measured in the same run. Results: a table on stdout and
``bench/results/cameras-<UTC time>.json``.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import cv2
import numpy as np

from bench.rtsp_server import H264_MOUNT, PASSWORD, SCENE_MOUNT, USER, start_server, stop_server

RESULTS = Path(__file__).parent / "results"
DATASET = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "kaggle-face-mask"
BATCH = 16  # the flow's default micro-batch
SESSIONS_PER_SERVER = 100
SCENE_PHOTO = 5  # which photo of the labelled set the real scene shows (a street with people)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _schedule(n: int, interval_s: float, seconds: float) -> list[tuple[float, int]]:
    """(offset, camera) for every tick: each camera every interval_s, phases spread evenly."""
    out = []
    for cam in range(n):
        t = cam * interval_s / n
        while t < seconds:
            out.append((t, cam))
            t += interval_s
    return sorted(out)


# --- workers: one process per configuration ------------------------------------------------------------


def _work_rtsp_new(url: str, n: int, seconds: float, interval_s: float, deadline_s: float) -> dict[str, Any]:
    from maskwatch.cameras.capture.fetcher import Fetcher, FetchOptions, FetchRequest

    fetcher = Fetcher(FetchOptions(deadline_s=deadline_s, concurrency=2, rtsp_max_age_s=3.0))
    urls = url.split(",")  # cameras spread over the servers

    def batch(cams: list[int]) -> list[Any]:
        ms = round(time.time() * 1000)
        return fetcher.fetch_batch([FetchRequest(f"cam{c}", f"cam{c}:{ms}", urls[c % len(urls)], ms,
                                                 interval_s, True) for c in cams])

    # Open every stream and wait until each gives a picture (or 60 s): the held state is what is measured.
    # In batches of 16, as the flow would: the server refuses a burst of 100 new sessions at once.
    end = time.monotonic() + 90
    pending = list(range(n))
    while pending and time.monotonic() < end:
        out = [f for i in range(0, len(pending), BATCH) for f in batch(pending[i:i + BATCH])]
        pending = [int(f.camera_id[3:]) for f in out if f.status != "ok"]
        time.sleep(0.5)
    held = n - len(pending)
    results = _ticks(lambda cams: [(f.status == "ok", f.latency_ms) for f in batch(cams)], n, seconds,
                     interval_s)
    fetcher.close()
    return {**results, "held": held}


def _work_rtsp_legacy(url: str, n: int, seconds: float, interval_s: float, deadline_s: float
                      ) -> dict[str, Any]:
    from bench.legacy_rtsp import RtspReader

    urls = url.split(",")  # cameras spread over the servers
    readers = [RtspReader(urls[c % len(urls)]) for c in range(n)]
    end = time.monotonic() + 60
    held = 0
    for r in readers:
        try:
            r.latest(3.0, max(time.monotonic(), end))
            held += 1
        except TimeoutError:
            pass

    def batch(cams: list[int]) -> list[tuple[bool, float]]:
        out = []
        for c in cams:
            t0 = time.monotonic()
            try:
                readers[c].latest(3.0, t0 + deadline_s)
                out.append((True, (time.monotonic() - t0) * 1000))
            except TimeoutError:
                out.append((False, (time.monotonic() - t0) * 1000))
        return out

    results = _ticks(batch, n, seconds, interval_s)
    for r in readers:
        r.close()
    return {**results, "held": held}


def _ticks(fetch: Any, n: int, seconds: float, interval_s: float) -> dict[str, Any]:
    """Run the schedule: due ticks are fetched together every 0.25 s, in batches of 16; CPU time of this
    whole process (every thread) over the window."""
    schedule = _schedule(n, interval_s, seconds)
    cpu0, wall0 = time.process_time(), time.monotonic()
    ok, latencies = 0, []
    i = 0
    while i < len(schedule):
        now = time.monotonic() - wall0
        due = []
        while i < len(schedule) and schedule[i][0] <= now:
            due.append(schedule[i][1])
            i += 1
        for j in range(0, len(due), BATCH):
            for good, ms in fetch(due[j:j + BATCH]):
                ok += good
                latencies.append(ms)
        time.sleep(0.25)
    while time.monotonic() - wall0 < seconds:
        time.sleep(0.1)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
    return {"cameras": n, "ticks": len(schedule), "ok": ok, "cpu_s": cpu, "wall_s": wall,
            "cores": cpu / wall, "cores_per_camera": cpu / wall / n,
            "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99)}


# --- HTTP cameras with Digest auth, slow and dead ones ---------------------------------------------------

REALM, NONCE = "bench", "3f2a"


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def _http_cameras(body: bytes) -> tuple[int, int, int]:
    """A Digest snapshot server, a header-dripping one and a blackhole on loopback: their ports."""

    class Camera(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as cameras do

        def do_GET(self) -> None:
            fields = dict(re.findall(r'(\w+)="?([^",]*)"?', self.headers.get("Authorization", "")))
            ha1, ha2 = _md5(f"{USER}:{REALM}:{PASSWORD}"), _md5(f"GET:{fields.get('uri', '')}")
            expected = _md5(f"{ha1}:{NONCE}:{fields.get('nc')}:{fields.get('cnonce')}:auth:{ha2}")
            if fields.get("response") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", f'Digest realm="{REALM}", qop="auth", nonce="{NONCE}"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()

    drip = socket.create_server(("127.0.0.1", 0), backlog=256)

    def dripping() -> None:
        while True:
            conn, _ = drip.accept()

            def one(c: socket.socket) -> None:
                with c:
                    try:
                        c.recv(4096)
                        for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 100_000:
                            c.sendall(bytes([byte]))
                            time.sleep(0.3)
                    except OSError:
                        return

            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=dripping, daemon=True).start()
    hole = socket.create_server(("127.0.0.1", 0), backlog=1024)  # never accepts
    _http_cameras.keep = (server, drip, hole)  # type: ignore[attr-defined]
    return server.server_address[1], drip.getsockname()[1], hole.getsockname()[1]


def _work_isolation(image: str, n: int, bad: float, seconds: float, interval_s: float, deadline_s: float,
                    mode: str) -> dict[str, Any]:
    """Ticks through the flow's fetch step (``BatchProcessor``, batches of 16, a no-op engine): latency
    from each healthy tick's due time to its outcome. ``mode`` "detach" is the flow's step (suspect
    cameras do not hold their batch); "wait" waits for every camera of a batch (the step before)."""
    from types import SimpleNamespace

    from maskwatch.cameras.capture.fetcher import Fetcher, FetchOptions
    from maskwatch.flows.batching import BatchProcessor, Pending
    from maskwatch.schemas.events import Camera, Tick

    class NoEngine:
        def infer(self, frames: Sequence[np.ndarray]) -> Sequence[Any]:
            return [SimpleNamespace(faces=[], width=f.shape[1], height=f.shape[0], timings={})
                    for f in frames]

    good_port, drip_port, hole_port = _http_cameras(_jpeg_720p(image))
    n_bad = round(n * bad)
    order = sorted(range(n), key=lambda c: (c % 10, c))  # the bad ones (c < n_bad) land in different batches
    cameras, bad_ids = [], set()
    for c in order:
        # The first n_bad cameras are slow or dead, alternately.
        port = (drip_port if c % 2 else hole_port) if c < n_bad else good_port
        cameras.append(Camera(id=f"c{c}", interval_s=interval_s, allow_private_network=True,
                              source_url=f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/cam/{c}.jpg"))
        if c < n_bad:
            bad_ids.add(f"c{c}")
    # Back-off off: the point is what a slow camera costs its batch while it is fetched.
    proc = BatchProcessor(Fetcher(FetchOptions(deadline_s=deadline_s, concurrency=2, backoff_after=10**6)),
                          NoEngine(), None)
    schedule = _schedule(n, interval_s, seconds + interval_s + deadline_s)
    pending: list[Pending] = []
    latencies: list[float] = []
    ok = 0
    start = time.time()

    warm = start + interval_s + deadline_s  # bad cameras have failed once by then: steady state after

    def record(outcomes: list[Any]) -> None:
        nonlocal ok
        now = time.time()
        for o in outcomes:
            if o.frame.camera_id not in bad_ids and o.frame.scheduled_at.timestamp() >= warm:
                ok += o.fetched_status == "ok"
                latencies.append((now - o.frame.scheduled_at.timestamp()) * 1000)

    limit = seconds + interval_s + 2 * deadline_s + 5
    i = 0
    while i < len(schedule) or pending:
        now = time.time() - start
        if now > limit:
            break
        due = []
        while i < len(schedule) and schedule[i][0] <= now:
            t, c = schedule[i]
            at = datetime.fromtimestamp(start + t, UTC)
            ms = round(at.timestamp() * 1000)
            due.append((Tick(camera_id=cameras[c].id, tick_id=f"{cameras[c].id}:{ms}", scheduled_at=at,
                             emitted_at=at), cameras[c]))
            i += 1
        for j in range(0, len(due), BATCH):
            if time.time() - start > limit:  # fallen too far behind (waiting for every camera): stop
                break
            if mode == "wait":
                record(proc.process(due[j:j + BATCH]))
            else:
                outcomes, detached = proc.process_detaching(due[j:j + BATCH])
                record(outcomes)
                pending += detached
        done, pending = proc.finish(pending, wait=False)
        record(done)
        time.sleep(0.1)
    proc.fetcher.close()
    healthy_ticks = sum(1 for t, c in schedule if f"c{order[c]}" not in bad_ids and start + t >= warm)
    return {"cameras": n, "bad": n_bad, "mode": mode, "ok": ok, "healthy_ticks": healthy_ticks,
            "p50_ms": _percentile(latencies, 50), "p99_ms": _percentile(latencies, 99)}


def _serve_http_cameras(body: bytes, ports: Any) -> None:
    """A camera server process for ``_work_http``: its CPU time is not the fetcher's."""
    ports.put(_http_cameras(body))
    threading.Event().wait()


def _jpeg_720p(image: str) -> bytes:
    photo = cv2.imread(image)
    assert photo is not None, image
    return bytes(cv2.imencode(".jpg", cv2.resize(photo, (1280, 720)))[1].tobytes())


def _work_http(image: str, n: int, seconds: float, interval_s: float, deadline_s: float) -> dict[str, Any]:
    from maskwatch.cameras.capture.fetcher import Fetcher, FetchOptions, FetchRequest

    ports: Any = multiprocessing.get_context("fork").Queue()
    server = multiprocessing.get_context("fork").Process(
        target=_serve_http_cameras, args=(_jpeg_720p(image), ports), daemon=True)
    server.start()
    port = ports.get(timeout=30)[0]
    fetcher = Fetcher(FetchOptions(deadline_s=deadline_s, concurrency=2))

    def batch(cams: list[int]) -> list[tuple[bool, float]]:
        ms = round(time.time() * 1000)
        url = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}/cam/{{}}.jpg"
        out = fetcher.fetch_batch([FetchRequest(f"c{c}", f"c{c}:{ms}", url.format(c), ms, interval_s, True)
                                   for c in cams])
        return [(f.status == "ok", f.latency_ms) for f in out]

    try:
        return _ticks(batch, n, seconds, interval_s)
    finally:
        fetcher.close()
        server.kill()


# --- orchestration -----------------------------------------------------------------------------------


def _run_worker(args: list[str], timeout: float) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.cameras", "--worker", *args], capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                         cwd=Path(__file__).resolve().parents[1])
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        raise RuntimeError(f"worker {args} failed: {out.stderr[-2000:]}")
    return dict(json.loads(lines[-1]))


def run(rtsp_counts: list[int], legacy_count: int, http_cameras: int, seconds: float, interval_s: float,
        dataset_dir: Path, http_counts: Sequence[int] = (), scene_kind: str = "real") -> dict[str, Any]:
    deadline_s = 5.0
    report: dict[str, Any] = {"seconds": seconds, "interval_s": interval_s, "deadline_s": deadline_s,
                              "rtsp": [], "http": [], "isolation": [], "scene": scene_kind}
    # The real scene: a photo of the labelled set with sensor-like noise; "ball": a ball on black.
    scene = str(sorted((dataset_dir / "images").iterdir())[SCENE_PHOTO]) if scene_kind == "real" else ""
    mount = SCENE_MOUNT if scene else H264_MOUNT
    # A fresh server per configuration: GStreamer's shared media, once its last client has left, may
    # answer 503 to the next ones for a long while.
    configs = ([("legacy (decode every frame)", "legacy", legacy_count)] if rtsp_counts else []) + [
        ("pyav (keyframe per tick)", "new", n) for n in rtsp_counts]
    for label, kind, n in configs:
        # Once more on a new server when this one held no stream at all: GStreamer's server now and then
        # answers every session of a fresh start with 503 (seen on a loaded box); that is the server's
        # state, not the reader's cost.
        for attempt in range(2):
            # GStreamer's server does not hand out many more than 100 sessions: one server per 100 cameras.
            servers = [start_server(scene=scene) for _ in range(max(1, -(-n // SESSIONS_PER_SERVER)))]
            try:
                url = ",".join(f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{server.port}{mount}"
                               for server in servers)
                common = [url, str(seconds), str(interval_s), str(deadline_s)]
                result = _run_worker([kind, str(n), *common], seconds + 180)
            finally:
                for server in servers:
                    stop_server(server)
            if result["held"] or attempt:
                break
        report["rtsp"].append({"reader": label, **result, "server_starts": attempt + 1,
                               "servers": len(servers)})
    image = str(sorted((dataset_dir / "images").iterdir())[0])
    for n in http_counts:
        report["http"].append(_run_worker(
            ["http", image, str(n), str(seconds), str(interval_s), str(deadline_s)], seconds + 120))
    if http_cameras:
        for bad, mode in ((0.0, "detach"), (0.1, "wait"), (0.1, "detach")):
            report["isolation"].append(_run_worker(
                ["isolation", image, str(http_cameras), str(bad), str(seconds), str(interval_s),
                 str(deadline_s), mode], seconds + 120))
    return report


def print_table(report: dict[str, Any]) -> None:
    if report["rtsp"]:
        base = report["rtsp"][0]["cores_per_camera"]
        scenes = {"real": "a photo with sensor noise", "ball": "a ball on black"}
        scene = scenes.get(report.get("scene", ""), "?")
        print(f"\nRTSP, H.264 1280x720 25 fps 2 Mbit/s ({scene}), 1 tick / {report['interval_s']:g} s per "
              f"camera, {report['seconds']:g} s measured")
        print(f"{'reader':<28} {'cameras':>7} {'held':>5} {'cores':>6} {'cores/cam':>10} {'vs legacy':>10} "
              f"{'ok ticks':>9} {'p99 ms':>7}")
        for r in report["rtsp"]:
            share = r["ok"] / r["ticks"] if r["ticks"] else float("nan")
            print(f"{r['reader']:<28} {r['cameras']:>7} {r['held']:>5} {r['cores']:>6.2f} "
                  f"{r['cores_per_camera']:>10.4f} {base / r['cores_per_camera']:>9.1f}x {share:>8.1%} "
                  f"{r['p99_ms']:>7.0f}")
    if report["http"]:
        base = report["http"][0]["cores_per_camera"]
        print(f"\nHTTP Digest snapshot cameras, 1280x720 JPEG fetched and decoded, 1 tick / "
              f"{report['interval_s']:g} s per camera (the servers' own CPU not counted)")
        print(f"{'cameras':>7} {'cores':>6} {'cores/cam':>10} {'vs first':>9} {'ok ticks':>9} {'p99 ms':>7}")
        for r in report["http"]:
            share = r["ok"] / r["ticks"] if r["ticks"] else float("nan")
            print(f"{r['cameras']:>7} {r['cores']:>6.3f} {r['cores_per_camera']:>10.5f} "
                  f"{r['cores_per_camera'] / base:>8.2f}x {share:>8.1%} {r['p99_ms']:>7.0f}")
    if report["isolation"]:
        base = report["isolation"][0]
        print("\nHTTP Digest snapshot cameras through the flow's fetch step (batches of 16): healthy cameras'"
              " latency from tick to outcome")
        print(f"{'cameras':>7} {'slow/dead':>9} {'batch waits':>20} {'ok':>9} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'p99 vs healthy':>15}")
        for r in report["isolation"]:
            how = "for every camera" if r["mode"] == "wait" else "not for suspects"
            print(f"{r['cameras']:>7} {r['bad']:>9} {how:>20} {r['ok']:>4}/{r['healthy_ticks']:<4} "
                  f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['p99_ms'] / base['p99_ms']:>14.2f}x")


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--worker", is_flag=True, hidden=True)
@click.option("--rtsp-counts", default="10,50,100,200", show_default=True, help="RTSP cameras held, N,...")
@click.option("--legacy-count", default=4, show_default=True,
              help="Cameras for the decode-every-frame baseline.")
@click.option("--http-counts", default="10,50,100,200", show_default=True,
              help="HTTP Digest cameras fetched, N,... (cost per camera).")
@click.option("--http-cameras", default=100, show_default=True, help="HTTP cameras in the isolation runs.")
@click.option("--seconds", default=30.0, show_default=True, help="Measured window per configuration.")
@click.option("--interval-s", default=5.0, show_default=True, help="Seconds between a camera's ticks.")
@click.option("--scene", type=click.Choice(["real", "ball"]), default="real", show_default=True,
              help="What the RTSP cameras show: a photo with sensor noise, or a ball on black.")
@click.option("--dataset", default="../shared/datasets/kaggle-face-mask", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("worker_args", nargs=-1)
def main(worker: bool, rtsp_counts: str, legacy_count: int, http_counts: str, http_cameras: int,
         seconds: float, interval_s: float, scene: str, dataset: Path, worker_args: tuple[str, ...]) -> None:
    """Measure what holding cameras costs (see the module docstring)."""
    if worker:
        kind, *rest = worker_args
        if kind == "isolation":
            image, n, bad, secs, interval, deadline, mode = rest
            out = _work_isolation(image, int(n), float(bad), float(secs), float(interval), float(deadline),
                                  mode)
        elif kind == "http":
            image, n, secs, interval, deadline = rest
            out = _work_http(image, int(n), float(secs), float(interval), float(deadline))
        else:
            n, url, secs, interval, deadline = rest
            fn = _work_rtsp_new if kind == "new" else _work_rtsp_legacy
            out = fn(url, int(n), float(secs), float(interval), float(deadline))
        print(json.dumps(out))
        return
    counts = [int(c) for c in rtsp_counts.split(",") if c]
    report = run(counts, legacy_count, http_cameras, seconds, interval_s, dataset,
                 [int(c) for c in http_counts.split(",") if c], scene)
    report["when"] = datetime.now(UTC).isoformat()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"cameras-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(report, indent=2))
    print_table(report)
    print(f"\n-> {path}")


if __name__ == "__main__":
    main()
