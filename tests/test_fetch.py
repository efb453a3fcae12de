"""Frame fetching against real sources: local HTTP servers (healthy, hanging, refusing, oversize),
real dataset JPEGs and a corrupt one, a directory replay, a video file and the RTSP-style reader."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np
import pytest

from maskwatch.cameras.capture.fetcher import Fetcher, FetchOptions, FetchRequest
from maskwatch.cameras.capture.files import replay_index
from maskwatch.ports import free_port

pytestmark = pytest.mark.without_models


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up (the point of these cameras) is not an error here


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    auth_seen: ClassVar[list[str | None]] = []
    hosts_seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        _Handler.auth_seen.append(self.headers.get("Authorization"))
        _Handler.hosts_seen.append(self.headers.get("Host"))
        if self.path.startswith("/basic") and not self.headers.get("Authorization"):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="cam"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/hang"):
            time.sleep(10)
            return
        if self.path.startswith("/slowdrip"):
            self.send_response(200)
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
            return
        body = self.body if not self.path.startswith("/big") else b"\xff" * 200_000
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        if not self.path.startswith("/big-nolength"):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_camera(dataset_dir: Path) -> Iterator[str]:
    _Handler.body = (dataset_dir / "images" / "maksssksksss0.jpg").read_bytes()
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def req(url: str, cam: str = "cam1", ms: int = 0, interval: float = 1.0, private: bool = True
        ) -> FetchRequest:
    # The test cameras are on 127.0.0.1, which only a camera with allow_private_network may reach.
    return FetchRequest(cam, f"{cam}:{ms}", url, ms, interval, private)


@pytest.fixture(autouse=True)
def file_roots(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MASKWATCH_FILE_ROOTS", str(tmp_path))


OPTS = FetchOptions(concurrency=4, deadline_s=1.5, connect_timeout_s=0.5, read_timeout_s=1.0,
                    max_bytes=100_000)


def test_http_ok_hang_refused_and_404_in_one_batch(http_camera: str) -> None:
    fetcher = Fetcher(OPTS)
    refused = f"http://admin:s3cret@127.0.0.1:{free_port()}/snap.jpg"
    _Handler.auth_seen.clear()
    started = time.monotonic()
    out = fetcher.fetch_batch([
        req(f"http://user:pw%40x@{http_camera.removeprefix('http://')}/basic/snap.jpg", "ok"),
        req(f"{http_camera}/hang", "hang"),
        req(refused, "refused"),
        req(f"{http_camera}/missing", "missing"),
    ])
    elapsed = time.monotonic() - started
    assert elapsed < OPTS.deadline_s + 1.0, "a hanging camera held the batch past the deadline"
    by = {f.camera_id: f for f in out}
    assert by["ok"].status == "ok" and by["ok"].frame is not None and by["ok"].frame.shape[2] == 3
    # user:pw@x from the URL, decoded, sent only once the camera asked for Basic auth
    assert _Handler.auth_seen[0] is None and "Basic dXNlcjpwd0B4" in _Handler.auth_seen
    assert by["hang"].status in ("timeout", "fetch_error")
    assert by["refused"].status == "fetch_error" and "refused" in by["refused"].error.lower()
    assert "s3cret" not in by["refused"].error and "admin" not in by["refused"].error
    assert by["missing"].status == "fetch_error" and "404" in by["missing"].error
    fetcher.close()


def test_http_size_limit_and_slow_drip_are_aborted(http_camera: str) -> None:
    fetcher = Fetcher(OPTS)
    out = fetcher.fetch_batch([req(f"{http_camera}/big", "big"), req(f"{http_camera}/big-nolength", "stream"),
                               req(f"{http_camera}/slowdrip", "drip")])
    by = {f.camera_id: f for f in out}
    assert by["big"].status == "oversized" and "limit" in by["big"].error
    assert by["stream"].status == "oversized" and "limit" in by["stream"].error  # stopped while streaming
    assert by["drip"].status in ("timeout", "fetch_error")
    fetcher.close()


def test_corrupt_jpeg_is_a_decode_error(tmp_path: Path, dataset_dir: Path) -> None:
    good = (dataset_dir / "images" / "maksssksksss1.jpg").read_bytes()
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(good[:20] + b"\x00" * 50)
    out = Fetcher(OPTS).fetch_batch([req(bad.as_uri())])
    assert out[0].status == "decode_error" and "corrupt JPEG" in out[0].error  # refused by the header check
    assert Fetcher(OPTS).fetch_batch([req((tmp_path / "nope.jpg").as_uri())])[0].status == "fetch_error"


def test_directory_replay_cycles_in_sorted_order_by_tick(tmp_path: Path, dataset_dir: Path) -> None:
    names = ["maksssksksss2.jpg", "maksssksksss0.jpg", "maksssksksss1.jpg"]
    for n in names:
        (tmp_path / n).write_bytes((dataset_dir / "images" / n).read_bytes())
    fetcher = Fetcher(OPTS)
    expected = [cv2.imread(str(tmp_path / n)) for n in sorted(names)]
    got = fetcher.fetch_batch([req(tmp_path.as_uri(), ms=i * 2000, interval=2.0) for i in range(4)])
    for i, f in enumerate(got):
        assert f.status == "ok" and f.frame is not None
        assert np.array_equal(f.frame, expected[i % 3])  # type: ignore[arg-type]
    assert replay_index(6000, 2.0, 3) == 0 and replay_index(8000, 2.0, 3) == 1


def _video(path: Path, frames: int = 6) -> Path:
    fourcc = cv2.VideoWriter_fourcc(*"MJPG")  # type: ignore[attr-defined]
    writer = cv2.VideoWriter(str(path), fourcc, 5, (64, 48))
    for i in range(frames):
        writer.write(np.full((48, 64, 3), i * 40, np.uint8))
    writer.release()
    return path


def test_video_file_replay_seeks_by_tick(tmp_path: Path) -> None:
    video = _video(tmp_path / "clip.avi")
    fetcher = Fetcher(OPTS)
    a, b = fetcher.fetch_batch([req(video.as_uri(), ms=1000), req(video.as_uri(), ms=3000)])
    assert a.status == b.status == "ok"
    assert a.frame is not None and b.frame is not None
    assert abs(int(a.frame.mean()) - 40) < 12 and abs(int(b.frame.mean()) - 120) < 12
    fetcher.close()


def test_unsupported_scheme() -> None:
    out = Fetcher(OPTS).fetch_batch([req("ftp://127.0.0.1/x.jpg")])
    assert out[0].status == "blocked" and "scheme must be one of" in out[0].error


def test_private_address_is_blocked_without_a_request(http_camera: str) -> None:
    _Handler.auth_seen.clear()
    fetcher = Fetcher(OPTS)
    port = http_camera.rsplit(":", 1)[1]
    out = fetcher.fetch_batch([req(f"http://u:pw@127.0.0.1:{port}/snap.jpg", "lo", private=False),
                               req(f"http://localhost:{port}/snap.jpg", "name", private=False),
                               req("http://169.254.169.254/latest/meta-data", "metadata", private=True)])
    by = {f.camera_id: f for f in out}
    assert all(f.status == "blocked" for f in out), [(f.camera_id, f.status, f.error) for f in out]
    assert "loopback" in by["lo"].error and "allow_private_network" in by["lo"].error
    assert "pw" not in by["lo"].error
    assert "metadata" in by["metadata"].error  # refused even with allow_private_network
    assert _Handler.auth_seen == []  # the camera server never saw a request
    # The same camera with allow_private_network goes through: to the address that was checked, with the
    # name it was registered under in the Host header.
    _Handler.hosts_seen.clear()
    assert fetcher.fetch_batch([req(f"http://localhost:{port}/snap.jpg", private=True)])[0].status == "ok"
    assert _Handler.hosts_seen == [f"localhost:{port}"]
    fetcher.close()


def test_file_outside_the_allowed_roots_is_blocked(dataset_dir: Path) -> None:
    image = dataset_dir / "images" / "maksssksksss0.jpg"  # readable, but not under MASKWATCH_FILE_ROOTS
    out = Fetcher(OPTS).fetch_batch([req(image.as_uri())])
    assert out[0].status == "blocked" and "MASKWATCH_FILE_ROOTS" in out[0].error


def test_image_over_the_pixel_limit_is_not_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A PNG header declaring 60000 x 60000 pixels (a decompression bomb) in a tiny file.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (60000).to_bytes(4, "big") * 2
                     + b"\x08\x02\x00\x00\x00" + b"\x00" * 64)
    out = Fetcher(OPTS).fetch_batch([req(bomb.as_uri())])
    assert out[0].status == "oversized" and "MASKWATCH_MAX_IMAGE_PIXELS" in out[0].error
    monkeypatch.setenv("MASKWATCH_MAX_IMAGE_PIXELS", "1000")  # a real photo over a lowered limit
    small = tmp_path / "photo.jpg"
    small.write_bytes(_jpeg(np.zeros((48, 64, 3), np.uint8)))
    out = Fetcher(OPTS).fetch_batch([req(small.as_uri())])
    assert out[0].status == "oversized" and "64x48" in out[0].error


def _jpeg(frame: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame)
    assert ok
    return buf.tobytes()


def test_directory_entries_are_checked_one_by_one(tmp_path: Path, dataset_dir: Path) -> None:
    """A replay directory inside the roots holding a link out of them, a FIFO and a directory named like
    an image: only the regular files inside the roots are frames, and no fetch blocks on the FIFO."""
    import os

    replay = tmp_path / "replay"
    replay.mkdir()
    photo = cv2.imread(str(dataset_dir / "images" / "maksssksksss0.jpg"))
    assert photo is not None
    photo = cv2.resize(photo, (160, 120))  # a BMP of it stays under the test's 100 KB limit
    for suffix in (".jpg", ".png", ".webp", ".bmp"):
        assert cv2.imwrite(str(replay / f"a{suffix}"), photo)
    (replay / "b-out.jpg").symlink_to(dataset_dir / "images" / "maksssksksss1.jpg")  # outside the roots
    os.mkfifo(replay / "c-fifo.jpg")
    (replay / "d-dir.jpg").mkdir()
    (replay / "e-in.jpg").symlink_to(replay / "a.png")  # a link that stays inside: allowed
    fetcher = Fetcher(OPTS)
    try:
        got = fetcher.fetch_batch([req(replay.as_uri(), ms=i * 1000) for i in range(10)])
        assert all(f.status == "ok" for f in got), [(f.status, f.error) for f in got]
        # a.bmp, a.jpg, a.png, a.webp, e-in.jpg: every listed suffix decodes, to the same photo
        for f in got:
            assert f.frame is not None and f.frame.shape == photo.shape
            assert float(np.abs(f.frame.astype(np.int16) - photo).mean()) < 6
        # Named directly, each refused entry says why instead of blocking or escaping the roots.
        out = fetcher.fetch_batch([req((replay / "b-out.jpg").as_uri(), "link"),
                                   req((replay / "c-fifo.jpg").as_uri(), "fifo"),
                                   req((replay / "d-dir.jpg").as_uri(), "dir")])
        by = {f.camera_id: f for f in out}
        assert by["link"].status == "blocked" and "MASKWATCH_FILE_ROOTS" in by["link"].error
        assert by["fifo"].status == "fetch_error" and "not a regular file" in by["fifo"].error
        assert by["dir"].status == "fetch_error", by["dir"]
    finally:
        fetcher.close()
