"""The flow's RTSP fetch path against a real RTSP server on 127.0.0.1.

The server is GStreamer's RTSP server (Debian's ``gir1.2-gst-rtsp-server-1.0``, driven from Debian's
``python3`` through ``python3-gi``) streaming a loop of real dataset JPEGs as RTP/JPEG, with RTSP Basic
auth on the mount, so the credentials in the camera URL are really used. (Debian's ``ffmpeg`` cannot play
this part: its ``-rtsp_flags listen`` makes it an RTSP server that *receives* a stream, not one that
serves players.) ``bin/dev test`` installs the packages; without them this test fails, it does not skip.

Through ``BatchProcessor`` (the flow's fetch step, with a stub engine) for an ``rtsp://user:pass@`` camera:
frames have the clip's size and content; consecutive ticks reuse one connection (one ``RtspStream``,
no new client connection after the first tick's); a killed server turns into a failed health status
within the fetch deadline; the server restarted on the same port is reconnected to and frames flow
again; a wrong password gets no frame. The password never shows in health rows, logs or FFmpeg's own stderr.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cv2
import numpy as np
import pytest

import maskwatch.cameras.capture.fetcher
from maskwatch.cameras.capture.fetcher import Fetcher, FetchOptions, FetchRequest
from maskwatch.cameras.capture.rtsp import RtspStream
from maskwatch.flows.batching import BatchProcessor, TickOutcome
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera, Tick

from bench.rtsp_server import PASSWORD, SERVER, SYSTEM_PYTHON, USER

pytestmark = pytest.mark.without_models

DEBIAN_PACKAGES = ("python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base "
                   "gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly")
WRONG_PASSWORD = "Wr0ng-guess-Pw"
SIZE = (320, 240)  # width, height of the served frames

PROBE = r"""
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer
Gst.init(None)
elements = ("multifilesrc", "jpegparse", "rtpjpegpay", "videotestsrc", "x264enc", "rtph264pay")
missing = [e for e in elements if Gst.ElementFactory.find(e) is None]
assert not missing, f"GStreamer elements missing: {missing}"
"""


def require_rtsp_server() -> None:
    """Fail (not skip) with what to install when the RTSP server cannot run here."""
    why = ""
    if not Path(SYSTEM_PYTHON).exists():
        why = f"{SYSTEM_PYTHON} not found"
    else:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", PROBE], capture_output=True, text=True, timeout=30)
        why = probe.stderr.strip().splitlines()[-1] if probe.returncode else ""
    if why:
        pytest.fail(f"the RTSP test server cannot run ({why}); install Debian's GStreamer RTSP server: "
                    f"apt-get install -y {DEBIAN_PACKAGES} (bin/dev test does this)", pytrace=False)


class RtspServer:
    """The GStreamer RTSP server as a subprocess; ``stop`` kills it (SIGKILL: a camera that vanishes)."""

    def __init__(self, port: int, pattern: str):
        self.port, self.pattern = port, pattern
        self.clients = 0
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, "-c", SERVER, str(self.port), self.pattern, USER, PASSWORD],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        ready = threading.Event()
        proc = self.proc

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.strip() == "ready":
                    ready.set()
                elif line.strip() == "client":
                    self.clients += 1

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                err = proc.stderr.read() if proc.stderr else ""
                pytest.fail(f"RTSP server did not start on port {self.port}: {err[-2000:]}", pytrace=False)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)


class StubEngine:
    """What the flow's engine returns, without a model: the frames it was given are kept."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def infer(self, frames: Sequence[np.ndarray]) -> list[Any]:
        self.frames.extend(frames)
        return [SimpleNamespace(faces=[], width=f.shape[1], height=f.shape[0], timings={}) for f in frames]


@pytest.fixture
def clip(tmp_path: Path, dataset_dir: Path) -> tuple[str, list[np.ndarray]]:
    """Four dataset photos, resized to SIZE, as the JPEG frames the server loops over."""
    frames: list[np.ndarray] = []
    for i, name in enumerate(["maksssksksss0.jpg", "maksssksksss1.jpg", "maksssksksss2.jpg",
                              "maksssksksss3.jpg"]):
        photo = cv2.imread(str(dataset_dir / "images" / name))
        assert photo is not None, name
        assert cv2.imwrite(str(tmp_path / f"frame{i:03d}.jpg"), cv2.resize(photo, SIZE))
        written = cv2.imread(str(tmp_path / f"frame{i:03d}.jpg"))
        assert written is not None
        frames.append(written)  # as decoded from the JPEG the server sends
    return str(tmp_path / "frame%03d.jpg"), frames


@pytest.fixture
def server(clip: tuple[str, list[np.ndarray]]) -> Iterator[RtspServer]:
    require_rtsp_server()
    srv = RtspServer(free_port(), clip[0])
    srv.start()
    yield srv
    srv.stop()


def test_rtsp_camera_through_the_flow_fetch_path(
    server: RtspServer, clip: tuple[str, list[np.ndarray]], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    readers: list[RtspStream] = []

    class CountingStream(RtspStream):
        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            readers.append(self)

    monkeypatch.setattr(maskwatch.cameras.capture.fetcher, "RtspStream", CountingStream)
    # Back-off after 3 failures, probing again after 0.5 s, 1 s, 2 s: the restart below is found quickly.
    opts = FetchOptions(concurrency=2, deadline_s=2.0, rtsp_max_age_s=0.5, backoff_base_s=0.5,
                        backoff_max_s=2.0)
    fetcher = Fetcher(opts)
    engine = StubEngine()
    processor = BatchProcessor(fetcher, engine, None)
    camera = Camera(id="rtsp-cam", source_url=f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{server.port}/live",
                    interval_s=1.0, allow_private_network=True)
    health: list[tuple[TickOutcome, float]] = []

    def tick() -> TickOutcome:
        now = datetime.now(UTC)
        ms = round(now.timestamp() * 1000)
        t = Tick(camera_id=camera.id, tick_id=f"{camera.id}:{ms}", scheduled_at=now, emitted_at=now)
        started = time.monotonic()
        [outcome] = processor.process([(t, camera)])
        elapsed = time.monotonic() - started
        assert elapsed < opts.deadline_s + 0.5, (
            f"a fetch took {elapsed:.1f}s, past its {opts.deadline_s}s deadline")
        health.append((outcome, elapsed))
        return outcome

    def until(status: str, within_s: float) -> TickOutcome:
        end = time.monotonic() + within_s
        while True:
            outcome = tick()
            if outcome.health(0).status == status or time.monotonic() > end:
                return outcome
            time.sleep(0.2)

    def check_frame(frame: np.ndarray) -> None:
        assert frame.shape == (SIZE[1], SIZE[0], 3) and frame.std() > 10  # the clip's size, not blank
        closest = min(float(np.abs(frame.astype(np.int16) - f).mean()) for f in clip[1])
        assert closest < 4, f"the fetched frame is none of the clip's (mean difference {closest:.1f})"

    try:
        # 1. Frames flow; consecutive ticks use one reader and one RTSP connection.
        first = until("ok", within_s=10)
        assert first.health(0).status == "ok", first.health(0)
        time.sleep(0.5)  # the server reports its clients on a pipe: let it catch up
        per_connect = server.clients  # our DESCRIBE (the redirect check), then FFmpeg's handshake
        for _ in range(3):
            time.sleep(0.15)
            outcome = tick()
            assert outcome.health(0).status == "ok", outcome.health(0)
            assert (outcome.frame.width, outcome.frame.height) == SIZE
        assert len(engine.frames) >= 4
        for frame in engine.frames:
            check_frame(frame)
        assert len(readers) == 1, "consecutive fetches of one camera opened more than one RtspStream"
        # One connection held for every tick: the ticks after the first opened none.
        assert server.clients == per_connect, f"the server saw {server.clients} client connections"
        assert readers[0].connects == 1

        # 2. The server dies: ticks fail (within the deadline), the reader is kept for reconnecting.
        server.stop()
        failed = until("fetch_error", within_s=6)
        row = failed.health(1, "degraded")
        assert row.status in ("fetch_error", "timeout"), row
        assert failed.frame.status == "fetch_error" and row.error
        assert len(readers) == 1

        # 3. Restarted on the same port: the same reader reconnects and frames flow again.
        server.start()
        before = len(engine.frames)
        back = until("ok", within_s=12)
        assert back.health(0).status == "ok", f"no frame after the server came back: {back.health(0)}"
        assert len(readers) == 1 and readers[0].connects == 2  # reconnected by the same stream
        time.sleep(0.5)
        # One connect's worth more at most: a connect attempt may reach the server while it is still
        # starting and be made again (seen once in a full run: 6 for 4).
        assert 2 * per_connect <= server.clients <= 3 * per_connect
        for frame in engine.frames[before:]:
            check_frame(frame)

        # 4. The server does check the credentials: a wrong password gets no frame.
        intruder = camera.model_copy(update={"id": "wrong-pw", "source_url": camera.source_url.replace(
            PASSWORD, WRONG_PASSWORD)})
        now = datetime.now(UTC)
        ms = round(now.timestamp() * 1000)
        [denied] = processor.process([(Tick(camera_id=intruder.id, tick_id=f"{intruder.id}:{ms}",
                                            scheduled_at=now, emitted_at=now), intruder)])
        health.append((denied, 0.0))
        assert denied.health(1).status == "fetch_error" and "401" in denied.error, denied.error
    finally:
        fetcher.close()

    # The password stays out of health rows, the flow's logs and FFmpeg's native stderr.
    native = capfd.readouterr()
    for outcome, _ in health:
        assert PASSWORD not in outcome.health(0).model_dump_json()
        assert PASSWORD not in outcome.frame.model_dump_json()
        assert WRONG_PASSWORD not in outcome.health(0).model_dump_json()
    for secret in (PASSWORD, WRONG_PASSWORD):
        assert secret not in caplog.text
        assert secret not in native.out + native.err


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Host names the tests control (no DNS server can run here): name -> address. Only the lookup is
    replaced; the network policy's real code judges the address it returns. FFmpeg resolves with the C
    library and cannot see these names, so a stream that works through one proves FFmpeg was handed the
    checked address, not the name."""
    table: dict[str, str] = {}
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in table:
            address = (table[host], int(port or 0))
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return table


def _fetch(fetcher: Fetcher, camera_id: str, url: str) -> Any:
    ms = round(time.time() * 1000)
    [out] = fetcher.fetch_batch([FetchRequest(camera_id, f"{camera_id}:{ms}", url, ms, 1.0, True)])
    return out


def _until(fetcher: Fetcher, camera_id: str, url: str, status: str, within_s: float) -> Any:
    end = time.monotonic() + within_s
    while True:
        out = _fetch(fetcher, camera_id, url)
        if out.status == status or time.monotonic() > end:
            return out
        time.sleep(0.2)


def test_h264_stream_is_demuxed_continuously_and_decoded_only_per_tick(
    server: RtspServer, resolver: dict[str, str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    resolver["camera.test"] = "127.0.0.1"
    decoded: list[int] = []
    real_decode = RtspStream.decode_packets

    def counting(self: RtspStream, packets: list[Any], key: tuple[float, int]) -> np.ndarray:
        decoded.append(len({p.pts for p in packets}))  # pictures (a picture may be several slices)
        return real_decode(self, packets, key)

    monkeypatch.setattr(RtspStream, "decode_packets", counting)
    fetcher = Fetcher(FetchOptions(deadline_s=5.0, rtsp_max_age_s=2.0))
    url = f"rtsp://{USER}:{PASSWORD}@camera.test:{server.port}/h264"
    try:
        first = _until(fetcher, "h264", url, "ok", within_s=30)  # the server prepares its encoder first
        assert first.status == "ok", first.error
        frames = []
        for _ in range(4):
            time.sleep(0.5)
            out = _fetch(fetcher, "h264", url)
            frames.append(out)
            assert out.status == "ok", out.error
            assert out.frame.shape == (720, 1280, 3) and out.frame.max() > 200  # the white ball, decoded
            # The newest keyframe (one a second), not a buffered old picture.
            assert out.captured_at is not None
            assert (datetime.now(UTC) - out.captured_at).total_seconds() <= 1.5
        stream = fetcher.streams["h264"]
        # 2.5 s of 25 fps demuxed, but one keyframe decoded per tick: nothing decodes between ticks.
        assert stream.packets >= 40, stream.packets
        assert decoded and all(n == 1 for n in decoded) and len(decoded) <= len(frames) + 1, decoded
    finally:
        fetcher.close()


class Redirector:
    """An RTSP 'camera' on 127.0.0.1 that answers every request with a 302 to ``target``."""

    def __init__(self, target: str):
        self.target = target
        self.requests = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(65536)
                if not data:
                    continue
                self.requests += 1
                cseq = next((line.split(":", 1)[1].strip() for line in data.decode("latin-1").split("\r\n")
                             if line.lower().startswith("cseq:")), "1")
                reply = f"RTSP/1.0 302 Moved\r\nCSeq: {cseq}\r\nLocation: {self.target}\r\n\r\n"
                conn.sendall(reply.encode())

    def close(self) -> None:
        self.sock.close()


def test_rtsp_redirects_are_followed_only_to_addresses_the_policy_allows(
    server: RtspServer, clip: tuple[str, list[np.ndarray]],
) -> None:
    to_metadata = Redirector("rtsp://169.254.169.254/live")
    to_camera = Redirector(f"rtsp://127.0.0.1:{server.port}/live")  # same host: credentials carried
    fetcher = Fetcher(FetchOptions(deadline_s=3.0))
    try:
        refused = _until(fetcher, "evil", f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{to_metadata.port}/live",
                         "blocked", within_s=6)
        assert refused.status == "blocked" and "metadata" in refused.error, refused.error
        assert PASSWORD not in refused.error
        followed = _until(fetcher, "moved", f"rtsp://{USER}:{PASSWORD}@127.0.0.1:{to_camera.port}/live",
                          "ok", within_s=10)
        assert followed.status == "ok", followed.error
        closest = min(float(np.abs(followed.frame.astype(np.int16) - f).mean()) for f in clip[1])
        assert closest < 4
    finally:
        fetcher.close()
        to_metadata.close()
        to_camera.close()


def test_policy_is_checked_again_on_every_reconnect_and_disabled_cameras_are_closed(
    server: RtspServer, resolver: dict[str, str],
) -> None:
    resolver["camera.test"] = "127.0.0.1"
    url = f"rtsp://{USER}:{PASSWORD}@camera.test:{server.port}/live"
    fetcher = Fetcher(FetchOptions(deadline_s=2.0, backoff_after=100))
    try:
        assert _until(fetcher, "cam", url, "ok", within_s=10).status == "ok"
        stream = fetcher.streams["cam"]
        # The name now points at a refused address (DNS rebinding); the stream drops and reconnects.
        resolver["camera.test"] = "169.254.169.254"
        server.stop()
        blocked = _until(fetcher, "cam", url, "blocked", within_s=8)
        assert blocked.status == "blocked" and "metadata" in blocked.error, blocked.error
        clients = server.clients
        server.start()
        time.sleep(2.0)  # reconnect attempts meanwhile: each refused before any connection
        assert _fetch(fetcher, "cam", url).status == "blocked"
        assert server.clients == clients, "a refused camera was connected to"
        # Disabled (no longer in the registry): its stream is closed.
        fetcher.retain(set())
        end = time.monotonic() + 8
        while stream.alive and time.monotonic() < end:
            time.sleep(0.1)
        assert not stream.alive and "cam" not in fetcher.streams
    finally:
        fetcher.close()
