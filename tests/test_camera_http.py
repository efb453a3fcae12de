"""HTTP(S) snapshot cameras and camera isolation, against real servers on 127.0.0.1.

Digest and Basic cameras (the server checks the Digest response itself), HTTPS with a certificate made
here for ``localhost`` (verified against the camera's name while the connection goes to the checked
address), redirects (followed only where the policy allows), a camera that drips its headers a byte at a
time beside healthy ones, a blackholed camera that accepts nothing, and back-off of a dead camera.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from maskwatch.cameras.capture.fetcher import Fetched, Fetcher, FetchOptions, FetchRequest

pytestmark = pytest.mark.without_models

USER, PASSWORD, REALM = "admin", "Dig3st-s3cret", "IP Camera"
NONCE = "dcd98b7102dd2f0e8b11d0f600bfb0c093"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Camera(http.server.BaseHTTPRequestHandler):
    """/digest/...: Digest auth, checked (qop=auth); /basic/...: Basic; /redirect-*: redirects;
    anything else: the snapshot."""

    body = b""
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization", "")
        Camera.seen.append({"path": self.path, "auth": auth, "host": self.headers.get("Host", "")})
        if self.path.startswith("/digest") and not self._digest_ok(auth):
            self.send_response(401)
            self.send_header("WWW-Authenticate",
                             f'Digest realm="{REALM}", qop="auth", nonce="{NONCE}", algorithm=MD5')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/redirect-metadata"):
            self._redirect("http://169.254.169.254/latest/meta-data")
            return
        if self.path.startswith("/redirect-same"):
            self._redirect("/digest/snap.jpg")
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def _redirect(self, location: str) -> None:
        self.send_response(302)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _digest_ok(self, header: str) -> bool:
        if not header.startswith("Digest "):
            return False
        fields = dict(re.findall(r'(\w+)="?([^",]*)"?', header))
        ha1 = md5(f"{USER}:{REALM}:{PASSWORD}")
        ha2 = md5(f"GET:{fields.get('uri', '')}")
        expected = md5(f"{ha1}:{NONCE}:{fields.get('nc')}:{fields.get('cnonce')}:auth:{ha2}")
        return fields.get("username") == USER and fields.get("response") == expected

    def log_message(self, *args: object) -> None:
        pass


class Quiet(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


def serve(server: http.server.HTTPServer) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


@pytest.fixture
def camera(dataset_dir: Path) -> Iterator[int]:
    Camera.body = (dataset_dir / "images" / "maksssksksss0.jpg").read_bytes()
    Camera.seen.clear()
    server = Quiet(("127.0.0.1", 0), Camera)
    serve(server)
    yield server.server_address[1]
    server.shutdown()


def fetch(fetcher: Fetcher, *cams: tuple[str, str]) -> dict[str, Fetched]:
    ms = round(time.time() * 1000)
    out = fetcher.fetch_batch([FetchRequest(c, f"{c}:{ms}", url, ms, 5.0, True) for c, url in cams])
    return {f.camera_id: f for f in out}


def test_digest_camera_is_answered_and_its_nonce_reused(camera: int) -> None:
    fetcher = Fetcher(FetchOptions(deadline_s=3))
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:{camera}/digest/snap.jpg"
    try:
        for _ in range(3):
            out = fetch(fetcher, ("hik", url))["hik"]
            assert out.status == "ok", out.error
            assert out.frame is not None and out.frame.ndim == 3
        auths = [s["auth"] for s in Camera.seen]
        # One challenge, then Digest on every request (the nonce reused): 4 requests for 3 snapshots.
        assert auths[0] == "" and all(a.startswith("Digest ") for a in auths[1:]), auths
        assert len(auths) == 4
        assert not any(PASSWORD in a for a in auths)  # Digest never sends the password itself
        wrong = fetch(fetcher, ("bad", url.replace(PASSWORD, "guess")))["bad"]
        assert wrong.status == "fetch_error" and "401" in wrong.error and "guess" not in wrong.error
    finally:
        fetcher.close()


def test_redirects_are_followed_only_where_the_policy_allows(camera: int) -> None:
    fetcher = Fetcher(FetchOptions(deadline_s=3))
    base = f"http://{USER}:{PASSWORD}@127.0.0.1:{camera}"
    try:
        out = fetch(fetcher, ("meta", f"{base}/redirect-metadata"), ("same", f"{base}/redirect-same"))
        assert out["meta"].status == "blocked" and "metadata" in out["meta"].error, out["meta"].error
        assert out["same"].status == "ok", out["same"].error  # same origin: followed, Digest answered
        assert not any(s["path"].startswith("/latest") for s in Camera.seen)
    finally:
        fetcher.close()


@pytest.fixture
def tls(tmp_path: Path) -> dict[str, Path]:
    """A CA, and two server certificates it signed: one for ``localhost``, one for another name."""
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
        "-keyout", "ca.key", "-out", "ca.pem")
    for name in ("localhost", "other.example"):
        (tmp_path / f"{name}.ext").write_text(f"subjectAltName=DNS:{name}\n")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.pem")
    return {"ca": tmp_path / "ca.pem", "dir": tmp_path}


def https_camera(tls: dict[str, Path], name: str, sni: list[str | None]) -> Quiet:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls["dir"] / f"{name}.pem", tls["dir"] / f"{name}.key")

    def record(sock: ssl.SSLObject, server_name: str, ctx: ssl.SSLContext) -> None:
        sni.append(server_name)

    context.sni_callback = record
    server = Quiet(("127.0.0.1", 0), Camera)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    serve(server)
    return server


def test_https_goes_to_the_checked_address_and_verifies_the_cameras_name(
    camera: int, tls: dict[str, Path],
) -> None:
    sni: list[str | None] = []
    good, wrong = https_camera(tls, "localhost", sni), https_camera(tls, "other.example", sni)
    fetcher = Fetcher(FetchOptions(deadline_s=3, ca_file=str(tls["ca"])))
    try:
        out = fetch(fetcher, ("tls", f"https://{USER}:{PASSWORD}@localhost:{good.server_address[1]}/digest/a.jpg"),
                    ("mismatch", f"https://localhost:{wrong.server_address[1]}/a.jpg"))
        assert out["tls"].status == "ok", out["tls"].error
        assert "localhost" in sni  # the name went out as SNI and the certificate was checked against it
        assert f"localhost:{good.server_address[1]}" in {s["host"] for s in Camera.seen}
        assert out["mismatch"].status == "fetch_error" and "certificate" in out["mismatch"].error.lower()
        untrusted = Fetcher(FetchOptions(deadline_s=3))  # the system's CAs do not know this one
        try:
            bad = fetch(untrusted, ("ca", f"https://localhost:{good.server_address[1]}/a.jpg"))["ca"]
            assert bad.status == "fetch_error" and "certificate" in bad.error.lower()
        finally:
            untrusted.close()
    finally:
        fetcher.close()
        good.shutdown()
        wrong.shutdown()


class Dripper:
    """A camera that accepts and answers its headers one byte every 0.3 s, forever."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(4096)
                for byte in b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nX-Padding: " + b"x" * 10_000:
                    conn.sendall(bytes([byte]))
                    time.sleep(0.3)
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


def test_slow_and_blackholed_cameras_never_make_healthy_ones_time_out(camera: int) -> None:
    dripper = Dripper()
    blackhole = socket.socket()  # listens, never accepts, never answers
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(64)
    hole = blackhole.getsockname()[1]
    opts = FetchOptions(deadline_s=1.5, concurrency=2, backoff_after=1000)
    def fetch_threads() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("fetch")]

    before = fetch_threads()  # other tests' fetchers may still be winding down
    fetcher = Fetcher(opts)
    try:
        for _ in range(4):  # 6 s of dripping headers: past any per-read timeout, and past the deadline
            cams = [(f"slow{i}", f"http://127.0.0.1:{dripper.port}/snap.jpg") for i in range(6)]
            cams += [(f"hole{i}", f"http://127.0.0.1:{hole}/snap.jpg") for i in range(2)]
            cams += [(f"ok{i}", f"http://127.0.0.1:{camera}/snap.jpg") for i in range(8)]
            started = time.monotonic()
            out = fetch(fetcher, *cams)
            took = time.monotonic() - started
            for i in range(8):
                assert out[f"ok{i}"].status == "ok", out[f"ok{i}"].error
            for i in range(6):
                assert out[f"slow{i}"].status == "timeout", out[f"slow{i}"]
            assert all(out[f"hole{i}"].status == "timeout" for i in range(2))
            # The batch ends at the slow cameras' own deadline, not later.
            assert took < opts.deadline_s + 1.0, took
        # Waiting cameras hold no thread: 8 of them pending at once, on a pool of 2 and the event loop.
        assert len(fetch_threads()) - len(before) <= opts.concurrency + 1, fetch_threads()
    finally:
        fetcher.close()
        dripper.close()
        blackhole.close()


def test_a_dead_camera_is_backed_off_probed_and_back_when_it_answers(camera: int) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there: connection refused
    fetcher = Fetcher(FetchOptions(deadline_s=2, backoff_after=3, backoff_base_s=0.4, backoff_max_s=1.6))
    dead = ("dead", f"http://127.0.0.1:{port}/snap.jpg")
    healthy = ("ok", f"http://127.0.0.1:{camera}/snap.jpg")
    try:
        statuses = [fetch(fetcher, dead, healthy) for _ in range(5)]
        assert [s["dead"].status for s in statuses] == ["fetch_error"] * 3 + ["skipped"] * 2
        assert all(s["ok"].status == "ok" for s in statuses)
        skipped = statuses[-1]["dead"]
        assert "backed off after 3 failures" in skipped.error and "next try in" in skipped.error
        assert skipped.latency_ms == 0.0 and skipped.frame is None  # nothing was tried
        time.sleep(0.5)  # past the first wait: the next tick is a probe, which fails and doubles the wait
        assert fetch(fetcher, dead)["dead"].status == "fetch_error"
        assert fetch(fetcher, dead)["dead"].status == "skipped"
        # The camera comes back: after the wait, the probe succeeds and the back-off ends.
        server = Quiet(("127.0.0.1", port), Camera)
        serve(server)
        try:
            time.sleep(0.9)
            assert fetch(fetcher, dead)["dead"].status == "ok"
            assert fetch(fetcher, dead)["dead"].status == "ok"
        finally:
            server.shutdown()
    finally:
        fetcher.close()


def test_the_flow_step_does_not_hold_healthy_cameras_for_a_slow_one(camera: int) -> None:
    """Through the flow's fetch step (``FetchInfer`` over ``BatchProcessor``, a stand-in engine): a batch of
    healthy cameras and a dripping one gives the healthy outcomes at once; the slow one's outcome follows
    by itself when its deadline ends; a snapshot taken meanwhile holds its tick, and a step resumed from
    that snapshot fetches it again."""
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from maskwatch.flows.batching import BatchProcessor, FetchInfer
    from maskwatch.schemas.events import Camera as CameraRow
    from maskwatch.schemas.events import Tick

    class NoEngine:
        def infer(self, frames: Any) -> list[Any]:
            return [SimpleNamespace(faces=[], width=f.shape[1], height=f.shape[0], timings={})
                    for f in frames]

    dripper = Dripper()
    cams = {c.id: c for c in [
        CameraRow(id=f"ok{i}", allow_private_network=True, source_url=f"http://127.0.0.1:{camera}/a.jpg")
        for i in range(4)] + [CameraRow(id="slow", allow_private_network=True,
                                        source_url=f"http://127.0.0.1:{dripper.port}/a.jpg")]}
    proc = BatchProcessor(Fetcher(FetchOptions(deadline_s=2.0, batch_wait_s=0.5)), NoEngine(), None)

    def ticks() -> list[Tick]:
        at = datetime.now(UTC)
        ms = round(at.timestamp() * 1000)
        return [Tick(camera_id=c, tick_id=f"{c}:{ms}", scheduled_at=at, emitted_at=at) for c in cams]

    def process(batch: list[Tick], behind: Any) -> Any:
        return proc.process_detaching([(t, cams[t.camera_id]) for t in batch], behind)

    try:
        step = FetchInfer(process, proc.finish, None)
        now, _ = step.on_item(ticks())
        now = list(now)
        assert sorted(o.frame.camera_id for o in now) == ["ok0", "ok1", "ok2", "ok3"]
        assert all(o.fetched_status == "ok" for o in now)
        assert step.notify_at() is not None and [t.camera_id for t in step.snapshot()] == ["slow"]
        resumed = FetchInfer(process, proc.finish, step.snapshot())  # as after a restart
        later: list[Any] = []
        end = time.monotonic() + 10
        while len(later) < 2 and time.monotonic() < end:
            for logic in (step, resumed):
                later += list(logic.on_notify()[0])
            time.sleep(0.1)
        assert [(o.frame.camera_id, o.fetched_status) for o in later] == [("slow", "timeout")] * 2
        assert step.snapshot() == [] and resumed.snapshot() == [] and step.notify_at() is None
    finally:
        proc.fetcher.close()
        dripper.close()


def test_a_cameras_outcomes_leave_the_flow_step_in_tick_order(camera: int) -> None:
    """A camera's first tick hangs (dripping answer) and its next one answers at once (as a backed-off
    camera's ``skipped`` tick does): the step gives the second outcome only after the first, because
    health ("failures in a row"), people tracking and the rules read a camera's outcomes in tick order."""
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from maskwatch.flows.batching import BatchProcessor, FetchInfer
    from maskwatch.schemas.events import Camera as CameraRow
    from maskwatch.schemas.events import Tick

    class NoEngine:
        def infer(self, frames: Any) -> list[Any]:
            return [SimpleNamespace(faces=[], width=f.shape[1], height=f.shape[0], timings={})
                    for f in frames]

    dripper = Dripper()
    slow = CameraRow(id="x", allow_private_network=True, source_url=f"http://127.0.0.1:{dripper.port}/a.jpg")
    fast = slow.model_copy(update={"source_url": f"http://127.0.0.1:{camera}/a.jpg"})
    proc = BatchProcessor(Fetcher(FetchOptions(deadline_s=1.5, batch_wait_s=0.3)), NoEngine(), None)
    at = datetime.now(UTC).replace(microsecond=0)
    ticks = [Tick(camera_id="x", tick_id=f"x:{round((at + timedelta(seconds=n)).timestamp() * 1000)}",
                  scheduled_at=at + timedelta(seconds=n), emitted_at=at) for n in range(3)]
    by_tick = dict(zip([t.tick_id for t in ticks], [slow, fast, fast], strict=True))
    order = {t.tick_id: n for n, t in enumerate(ticks)}

    def process(batch: list[Tick], behind: Any) -> Any:
        return proc.process_detaching([(t, by_tick[t.tick_id]) for t in batch], behind)

    try:
        step = FetchInfer(process, proc.finish, None)
        out = list(step.on_item([ticks[0]])[0])
        assert out == [] and [order[t.tick_id] for t in step.snapshot()] == [0]  # detached: still hanging
        out += step.on_item([ticks[1]])[0]
        time.sleep(0.3)  # x:1 has its frame by now; x:0 still hangs
        out += step.on_notify()[0]
        assert out == [], [order[o.frame.tick_id] for o in out]  # tick 1 waits behind tick 0
        end = time.monotonic() + 10
        while len(out) < 2 and time.monotonic() < end:
            out += step.on_notify()[0]
            time.sleep(0.1)
        out += step.on_item([ticks[2]])[0]  # x:0 failed, so x is suspect: x:2 follows on its own
        while len(out) < 3 and time.monotonic() < end:
            out += step.on_notify()[0]
            time.sleep(0.05)
        assert [(order[o.frame.tick_id], o.fetched_status) for o in out] == [
            (0, "timeout"), (1, "ok"), (2, "ok")]
        assert step.snapshot() == []
    finally:
        proc.fetcher.close()
        dripper.close()
