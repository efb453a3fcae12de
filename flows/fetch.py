"""Frame fetching for ticks: HTTP snapshots, RTSP streams and ``file://`` replay, concurrently with deadlines.

A slow or dead camera must not stall the others, so a batch of ticks is fetched on a bounded thread
pool and every fetch has a deadline; whatever misses it is reported as a ``timeout`` outcome. Errors
never escape as exceptions: each tick yields a :class:`Fetched` whose ``error`` is redacted text.

Before any request the source is checked against the network policy (``maskwatch.netpolicy``) with the
addresses its host resolves to *now* (a camera registered with a public name that later resolves to a
private address is ``blocked``, and plain HTTP connects to the address that was checked); encoded images
are checked against the byte/pixel limits (``maskwatch.imagelimits``) before they are decoded.
"""

from __future__ import annotations

import base64
import http.client
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

import cv2
import numpy as np

from maskwatch.imagelimits import ImageLimitError, check_dimensions, check_image_header, image_size
from maskwatch.inference.preprocess import InvalidImageError, decode_image
from maskwatch.netpolicy import DEFAULT_PORTS, SourcePolicyError, resolve_and_check
from maskwatch.schemas.redaction import redact_text, redact_url

log = logging.getLogger(__name__)

Status = Literal["ok", "fetch_error", "decode_error", "timeout", "blocked", "oversized"]
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}


class FetchError(Exception):
    """A frame could not be read; the message is safe to log (no credentials)."""


class OversizedError(FetchError):
    """The snapshot is over the byte limit, or the image over the pixel limit; not decoded."""


def decode_checked(data: bytes) -> np.ndarray:
    """Decode an encoded image after checking its header: a corrupt or non-JPEG/PNG header is an
    ``InvalidImageError``, an image over ``MASKWATCH_MAX_IMAGE_BYTES``/``_PIXELS`` an ``OversizedError``."""
    try:
        image_size(data)
    except ImageLimitError as exc:
        raise InvalidImageError(str(exc)) from None
    try:
        check_image_header(data)
    except ImageLimitError as exc:  # the header is fine, so this is one of the limits
        raise OversizedError(str(exc)) from None
    return decode_image(data)


def check_frame_size(frame: np.ndarray) -> np.ndarray:
    """Frames that arrive decoded (RTSP, video) are held to the same pixel limit."""
    try:
        check_dimensions(frame.shape[1], frame.shape[0])
    except ImageLimitError as exc:
        raise OversizedError(str(exc)) from None
    return frame


@dataclass(frozen=True)
class FetchOptions:
    concurrency: int = 8
    deadline_s: float = 5.0  # per fetch, wall clock, whatever the source
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 3.0
    max_bytes: int = 10 * 1024**2  # larger snapshots are aborted, not buffered
    rtsp_max_age_s: float = 10.0  # an RTSP frame older than this is stale


@dataclass(frozen=True)
class FetchRequest:
    camera_id: str
    tick_id: str
    url: str  # resolved source URL, may hold credentials: never log it unredacted
    scheduled_ms: int
    interval_s: float
    allow_private: bool = False  # the camera's allow_private_network: may it be on a private address


@dataclass
class Fetched:
    camera_id: str
    tick_id: str
    status: Status
    frame: np.ndarray | None = None
    error: str = ""
    latency_ms: float = 0.0
    captured_at: datetime | None = None


def replay_index(scheduled_ms: int, interval_s: float, count: int) -> int:
    """Which image/frame of a replay source a tick shows: consecutive ticks step through it in order."""
    return round(scheduled_ms / (interval_s * 1000.0)) % count


def _connect(conns: Sequence[http.client.HTTPConnection]) -> http.client.HTTPConnection:
    """The first connection that connects (one per checked address, as a resolver's list is tried)."""
    for i, conn in enumerate(conns):
        try:
            conn.connect()
            return conn
        except OSError:
            conn.close()
            if i == len(conns) - 1:
                raise
    raise OSError("no address to connect to")


def read_http(url: str, opts: FetchOptions, deadline: float, addresses: Sequence[str] = ()) -> bytes:
    """GET a snapshot, streaming, with connect/read timeouts, a size limit and an overall deadline.

    ``addresses``: the checked addresses to connect to for plain HTTP (the Host header keeps the name),
    so a DNS answer that changed since the policy check cannot redirect the request. HTTPS connects by
    name: certificate checks need it."""
    parts = urlsplit(url)
    if parts.hostname is None:
        raise FetchError(f"no host in {redact_url(url)}")
    port = parts.port or DEFAULT_PORTS[parts.scheme.lower()]
    headers = {"Accept": "image/jpeg,image/*", "Connection": "close"}
    conns: list[http.client.HTTPConnection]
    if parts.scheme.lower() == "https":
        conns = [http.client.HTTPSConnection(parts.hostname, port, timeout=opts.connect_timeout_s)]
    else:
        conns = [http.client.HTTPConnection(a, port, timeout=opts.connect_timeout_s)
                 for a in addresses or [parts.hostname]]
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        headers["Host"] = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username is not None:
        userpass = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(userpass).decode()
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = conns[0]
    try:
        conn = _connect(conns)
        assert conn.sock is not None
        conn.sock.settimeout(min(opts.read_timeout_s, max(0.05, deadline - time.monotonic())))
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        if resp.status != 200:
            raise FetchError(f"HTTP {resp.status} {resp.reason} from {redact_url(url)}")
        length = resp.getheader("Content-Length")
        if length is not None and length.isdigit() and int(length) > opts.max_bytes:
            raise OversizedError(f"snapshot of {length} bytes exceeds the {opts.max_bytes}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while True:
            if time.monotonic() > deadline:
                raise FetchError(f"snapshot from {redact_url(url)} still incomplete at the deadline")
            chunk = resp.read1(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > opts.max_bytes:
                raise OversizedError(f"snapshot exceeds the {opts.max_bytes}-byte limit; aborted")
            chunks.append(chunk)
        return b"".join(chunks)
    except FetchError:
        raise
    except (OSError, http.client.HTTPException) as exc:
        raise FetchError(f"{type(exc).__name__}: {redact_text(str(exc))} ({redact_url(url)})") from None
    finally:
        conn.close()


class RtspReader:
    """One persistent connection per RTSP camera; a thread keeps only the latest frame, so a fetch never
    returns a stale buffered frame. It reconnects with exponential backoff when the stream drops."""

    def __init__(self, url: str, max_backoff_s: float = 30.0):
        self._url = url
        self._max_backoff = max_backoff_s
        self._cond = threading.Condition()
        self._frame: np.ndarray | None = None
        self._frame_at = 0.0
        self._error = "not connected yet"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtsp-reader", daemon=True)
        self._thread.start()

    def _open(self) -> cv2.VideoCapture:
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
        return cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            cap = self._open()
            if not cap.isOpened():
                self._set_error(f"cannot open stream {redact_url(self._url)}")
            else:
                while not self._stop.is_set():
                    ok, frame = cap.read()
                    if not ok or frame is None:
                        self._set_error(f"stream {redact_url(self._url)} ended or dropped")
                        break
                    backoff = 0.5
                    with self._cond:
                        self._frame, self._frame_at = frame, time.monotonic()
                        self._cond.notify_all()
            cap.release()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    def _set_error(self, message: str) -> None:
        with self._cond:
            self._error = message

    def latest(self, max_age_s: float, deadline: float) -> np.ndarray:
        """The newest frame if fresher than ``max_age_s``; waits for one until ``deadline``."""
        with self._cond:
            while True:
                if self._frame is not None and time.monotonic() - self._frame_at <= max_age_s:
                    return self._frame.copy()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise FetchError(f"no fresh frame: {self._error}")
                self._cond.wait(remaining)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=6)


class Fetcher:
    """Fetches frames for batches of ticks. Holds per-camera connections (RTSP readers, open videos)."""

    def __init__(self, opts: FetchOptions):
        self.opts = opts
        self._pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="fetch")
        self._lock = threading.Lock()
        self._rtsp: dict[str, tuple[str, RtspReader]] = {}
        self._videos: dict[str, tuple[str, cv2.VideoCapture, threading.Lock]] = {}
        self._dirs: dict[str, tuple[float, list[Path]]] = {}

    def fetch_batch(self, requests: Sequence[FetchRequest]) -> list[Fetched]:
        """One outcome per request, in order; returns by the deadline even if sources hang."""
        started = time.monotonic()
        deadline = started + self.opts.deadline_s
        futures: list[Future[Fetched]] = [self._pool.submit(self.fetch_one, r, deadline) for r in requests]
        out: list[Fetched] = []
        for req, fut in zip(requests, futures, strict=True):
            try:
                out.append(fut.result(timeout=max(0.0, deadline - time.monotonic()) + 0.05))
            except FutureTimeout:
                fut.cancel()
                out.append(Fetched(req.camera_id, req.tick_id, "timeout",
                                   error=f"no frame within the {self.opts.deadline_s:g}s deadline",
                                   latency_ms=(time.monotonic() - started) * 1000))
        return out

    def fetch_one(self, req: FetchRequest, deadline: float) -> Fetched:
        started = time.monotonic()
        try:
            if time.monotonic() > deadline:
                raise TimeoutError
            frame = self._read(req, deadline)
            status: Status = "ok"
            error = ""
        except InvalidImageError as exc:
            frame, status, error = None, "decode_error", redact_text(str(exc))
        except SourcePolicyError as exc:
            frame, status, error = None, "blocked", redact_text(str(exc))
        except OversizedError as exc:
            frame, status, error = None, "oversized", redact_text(str(exc))
        except FetchError as exc:
            frame, status, error = None, "fetch_error", redact_text(str(exc))
        except TimeoutError:
            frame, status, error = None, "timeout", f"no frame within the {self.opts.deadline_s:g}s deadline"
        except Exception as exc:  # a bug in one source must not take the flow down
            log.exception("unexpected error fetching camera %s", req.camera_id)
            frame, status, error = None, "fetch_error", redact_text(f"{type(exc).__name__}: {exc}")
        if status == "ok" and time.monotonic() > deadline:
            frame, status, error = None, "timeout", f"no frame within the {self.opts.deadline_s:g}s deadline"
        return Fetched(req.camera_id, req.tick_id, status, frame, error,
                       (time.monotonic() - started) * 1000, datetime.now(UTC) if frame is not None else None)

    def _read(self, req: FetchRequest, deadline: float) -> np.ndarray:
        scheme = req.url.split("://", 1)[0].lower()
        # The policy again at fetch time (SourcePolicyError: no request is made); the registry checked
        # it at registration, but DNS and MASKWATCH_FILE_ROOTS may have changed since.
        addresses = resolve_and_check(req.url, req.allow_private)
        if scheme in ("http", "https"):
            return decode_checked(read_http(req.url, self.opts, deadline, addresses))
        if scheme in ("rtsp", "rtsps"):
            return check_frame_size(self._rtsp_reader(req).latest(self.opts.rtsp_max_age_s, deadline))
        if scheme == "file":
            return self._read_file(req)
        raise FetchError(f"unsupported source scheme in {redact_url(req.url)}")

    def _rtsp_reader(self, req: FetchRequest) -> RtspReader:
        with self._lock:
            current = self._rtsp.get(req.camera_id)
            if current is not None and current[0] == req.url:
                return current[1]
            if current is not None:  # the registry changed the URL: reconnect
                current[1].close()
            reader = RtspReader(req.url)
            self._rtsp[req.camera_id] = (req.url, reader)
            return reader

    def _read_file(self, req: FetchRequest) -> np.ndarray:
        path = Path(unquote(urlsplit(req.url).path))
        if path.is_dir():
            images = self._dir_listing(path)
            if not images:
                raise FetchError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
            chosen = images[replay_index(req.scheduled_ms, req.interval_s, len(images))]
            return self._read_image(chosen)
        if not path.is_file():
            raise FetchError(f"no such file or directory: {path}")
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return check_frame_size(self._read_video(req, path))
        return self._read_image(path)

    def _read_image(self, path: Path) -> np.ndarray:
        # Read at most one byte over the limit: a huge file is refused without loading it.
        with path.open("rb") as fh:
            data = fh.read(self.opts.max_bytes + 1)
        if len(data) > self.opts.max_bytes:
            raise OversizedError(f"image file {path.name} exceeds the {self.opts.max_bytes}-byte limit")
        return decode_checked(data)

    def _dir_listing(self, path: Path) -> list[Path]:
        # Re-list at most every 30 s so a growing replay directory is picked up without a listing per tick.
        key = str(path)
        cached = self._dirs.get(key)
        if cached is None or time.monotonic() - cached[0] > 30:
            images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            self._dirs[key] = cached = (time.monotonic(), images)
        return cached[1]

    def _read_video(self, req: FetchRequest, path: Path) -> np.ndarray:
        with self._lock:
            entry = self._videos.get(req.camera_id)
            if entry is None or entry[0] != req.url:
                if entry is not None:
                    entry[1].release()
                entry = (req.url, cv2.VideoCapture(str(path)), threading.Lock())
                self._videos[req.camera_id] = entry
        _, cap, lock = entry
        with lock:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if not cap.isOpened() or count <= 0:
                raise FetchError(f"cannot read video {path}")
            cap.set(cv2.CAP_PROP_POS_FRAMES, replay_index(req.scheduled_ms, req.interval_s, count))
            ok, frame = cap.read()
        if not ok or frame is None:
            raise FetchError(f"cannot read a frame from video {path}")
        return frame

    def retain(self, camera_ids: set[str]) -> None:
        """Close connections of cameras no longer registered/enabled."""
        with self._lock:
            for cam in [c for c in self._rtsp if c not in camera_ids]:
                self._rtsp.pop(cam)[1].close()
            for cam in [c for c in self._videos if c not in camera_ids]:
                self._videos.pop(cam)[1].release()

    def close(self) -> None:
        self.retain(set())
        self._pool.shutdown(wait=False, cancel_futures=True)
