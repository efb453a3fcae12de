"""Fetching a batch of ticks at once, each camera within its own deadline, none waiting on another.

The fetches of a batch are coroutines on one event loop (a thread of the fetcher's own): an HTTP camera
that answers slowly holds a coroutine, not a thread, so a batch of healthy and slow cameras returns when
the healthy ones are done and the slow ones reach *their* deadline. CPU work (decoding a JPEG, an RTSP
keyframe, reading a file) runs on a small thread pool. A camera that fails repeatedly is backed off
(``backoff``): its ticks cost nothing until its next probe and come back as ``skipped``.

Errors never escape as exceptions: each tick yields a :class:`Fetched` whose ``error`` is redacted text.
Before any request the source is checked against the network policy (``maskwatch.netpolicy``) with the
addresses its host resolves to *now*, and the request goes to an address that was checked.

Example::

    fetcher = Fetcher(FetchOptions(deadline_s=5))
    outcomes = fetcher.fetch_batch([FetchRequest("cam-1", "t1", "http://cam/snap.jpg", ms, 5.0, True)])
    fetcher.close()
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import numpy as np

from maskwatch import metrics
from maskwatch.cameras.capture.backoff import Backoff
from maskwatch.cameras.capture.errors import FetchError, OversizedError, Status
from maskwatch.cameras.capture.files import FileSource
from maskwatch.cameras.capture.images import check_frame_size, decode_checked
from maskwatch.cameras.capture.rtsp import RtspOptions, RtspStream
from maskwatch.cameras.capture.snapshot import SnapshotClient
from maskwatch.inference.preprocess import InvalidImageError
from maskwatch.netpolicy import SourcePolicyError, resolve_and_check
from maskwatch.schemas.redaction import redact_text, redact_url

log = logging.getLogger(__name__)
T = TypeVar("T")
_RTSP_POLL_S = 0.05  # how often a tick waiting for a connecting stream's first picture looks again


@dataclass(frozen=True)
class FetchOptions:
    concurrency: int = 8  # threads for decoding and file reads (network waits hold no thread)
    deadline_s: float = 5.0  # per camera, wall clock, whatever the source
    batch_wait_s: float = 1.0  # the flow waits this long for a batch; later outcomes follow on their own
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 3.0  # RTSP: no packet this long and the stream is reconnected
    max_bytes: int = 10 * 1024**2  # larger snapshots are aborted, not buffered
    rtsp_max_age_s: float = 10.0  # an RTSP picture older than this is stale
    backoff_after: int = 3  # failures in a row before a camera is backed off
    backoff_base_s: float = 10.0  # first wait of a backed-off camera; doubles per failed probe
    backoff_max_s: float = 300.0
    ca_file: str = ""  # CA bundle for HTTPS cameras ("" = the system's)


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


class Fetcher:
    """Fetches frames for batches of ticks. Holds per-camera state: RTSP streams, HTTP pools per host,
    open videos, back-off. ``retain`` drops what removed or disabled cameras held; ``close`` all of it."""

    def __init__(self, opts: FetchOptions):
        self.opts = opts
        self.rtsp_opts = RtspOptions(open_timeout_s=max(opts.connect_timeout_s, 1.0) * 2,
                                     read_timeout_s=opts.read_timeout_s, max_age_s=opts.rtsp_max_age_s)
        self._pool = ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="fetch")
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(self._pool)  # DNS lookups (to_thread) share the bounded pool
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="fetch-loop", daemon=True)
        self._loop_thread.start()
        verify: ssl.SSLContext | bool = True
        if opts.ca_file:
            verify = ssl.create_default_context(cafile=opts.ca_file)
        self._http = SnapshotClient(connect_timeout_s=opts.connect_timeout_s, max_bytes=opts.max_bytes,
                                    verify=verify)
        self._files = FileSource(opts.max_bytes)
        self._backoff = Backoff(opts.backoff_after, opts.backoff_base_s, max(opts.backoff_max_s,
                                                                               opts.backoff_base_s))
        self._lock = threading.Lock()
        self._rtsp: dict[str, RtspStream] = {}
        self._urls: dict[str, str] = {}
        self._slow: set[str] = set()  # answered, but in over half the deadline, last time
        self._inflight: dict[str, int] = {}  # fetches submitted and not finished, per camera

    def fetch_batch(self, requests: Sequence[FetchRequest]) -> list[Fetched]:
        """One outcome per request, in order; returns by the slowest camera's deadline."""
        return [self.result(r, f) for r, f in zip(requests, [self.submit(r) for r in requests], strict=True)]

    def submit(self, req: FetchRequest) -> Future[Fetched]:
        """Start one fetch; it ends by the camera's deadline (``result`` waits for it)."""
        with self._lock:
            self._inflight[req.camera_id] = self._inflight.get(req.camera_id, 0) + 1
        return asyncio.run_coroutine_threadsafe(self._one(req), self._loop)

    def result(self, req: FetchRequest, future: Future[Fetched]) -> Fetched:
        """The outcome of a submitted fetch, waiting for it until its deadline at most."""
        try:
            return future.result(timeout=self.opts.deadline_s + 2.0)
        except FutureTimeout:  # only a bug in a source gets here: every fetch has its own deadline
            future.cancel()
            log.error("a fetch of camera %s outlived its deadline; reported as a timeout", req.camera_id)
            return Fetched(req.camera_id, req.tick_id, "timeout", error=self._timeout_text())

    def suspect(self, camera_id: str) -> bool:
        """Did this camera fail or answer slowly (over half its deadline) last time, or is its previous
        tick still being fetched? The flow does not hold a batch of healthy cameras for a suspect one:
        its outcome follows when it arrives."""
        with self._lock:
            return (camera_id in self._slow or self._inflight.get(camera_id, 0) > 0
                    or self._backoff.failing(camera_id))

    def _timeout_text(self) -> str:
        return f"no frame within the {self.opts.deadline_s:g}s deadline"

    async def _one(self, req: FetchRequest) -> Fetched:
        started = time.monotonic()
        skipped = self._backoff.skip(req.camera_id, started)
        if skipped is not None:
            return Fetched(req.camera_id, req.tick_id, "skipped", error=skipped)
        captured: datetime | None = None
        frame: np.ndarray | None = None
        status: Status = "ok"
        error = ""
        try:
            async with asyncio.timeout(self.opts.deadline_s):
                frame, captured = await self._read(req, started + self.opts.deadline_s)
        except InvalidImageError as exc:
            status, error = "decode_error", redact_text(str(exc))
        except SourcePolicyError as exc:
            status, error = "blocked", redact_text(str(exc))
        except OversizedError as exc:
            status, error = "oversized", redact_text(str(exc))
        except FetchError as exc:
            status, error = "fetch_error", redact_text(str(exc))
        except TimeoutError:
            status, error = "timeout", self._timeout_text()
        except Exception as exc:  # a bug in one source must not take the flow down
            log.exception("unexpected error fetching camera %s", req.camera_id)
            status, error = "fetch_error", redact_text(f"{type(exc).__name__}: {exc}")
        now = time.monotonic()
        self._backoff.record(req.camera_id, status == "ok", now, error)
        with self._lock:
            left = self._inflight.get(req.camera_id, 1) - 1
            if left > 0:
                self._inflight[req.camera_id] = left
            else:
                self._inflight.pop(req.camera_id, None)
        metrics.CAMERAS_BACKED_OFF.set(self._backoff.backed_off(now))
        with self._lock:
            if status == "ok" and now - started > self.opts.deadline_s / 2:
                self._slow.add(req.camera_id)
            else:
                self._slow.discard(req.camera_id)
        return Fetched(req.camera_id, req.tick_id, status, frame if status == "ok" else None, error,
                       (time.monotonic() - started) * 1000, captured if status == "ok" else None)

    async def _cpu(self, fn: Callable[..., T], *args: object) -> T:
        return await self._loop.run_in_executor(self._pool, fn, *args)

    async def _read(self, req: FetchRequest, deadline: float) -> tuple[np.ndarray, datetime]:
        scheme = req.url.split("://", 1)[0].lower()
        with self._lock:
            self._urls[req.camera_id] = req.url
        if scheme in ("http", "https"):
            data = await self._http.get(req.url, allow_private=req.allow_private,
                                        deadline_s=max(0.0, deadline - time.monotonic()))
            return await self._cpu(decode_checked, data), datetime.now(UTC)
        if scheme in ("rtsp", "rtsps"):
            return await self._rtsp_frame(req, deadline)
        if scheme == "file":
            # The policy again at fetch time: MASKWATCH_FILE_ROOTS may have changed since registration.
            resolve_and_check(req.url, req.allow_private)
            frame = await self._cpu(self._files.read, req.camera_id, req.url, req.scheduled_ms,
                                    req.interval_s)
            return frame, datetime.now(UTC)
        resolve_and_check(req.url, req.allow_private)  # names the schemes the policy allows
        raise FetchError(f"unsupported source scheme in {redact_url(req.url)}")

    async def _rtsp_frame(self, req: FetchRequest, deadline: float) -> tuple[np.ndarray, datetime]:
        stream = self._stream(req)
        while True:
            picture = stream.latest()  # never blocks; raises the stream's error while it is failing
            if picture is not None:
                frame = await self._cpu(picture.decode)
                return check_frame_size(frame), picture.captured_at
            await _sleep_until(min(deadline, time.monotonic() + _RTSP_POLL_S))
            if time.monotonic() >= deadline:
                raise TimeoutError

    def _stream(self, req: FetchRequest) -> RtspStream:
        with self._lock:
            stream = self._rtsp.get(req.camera_id)
            if (stream is not None and stream.alive and stream.url == req.url
                    and stream.allow_private == req.allow_private):
                return stream
            if stream is not None:  # the registry changed the URL or the flag, or it idled out
                stream.stop()
            stream = self._rtsp[req.camera_id] = RtspStream(req.url, req.allow_private, self.rtsp_opts)
            return stream

    def retain(self, camera_ids: set[str]) -> None:
        """Close what cameras no longer registered/enabled held: streams, videos, pools, back-off."""
        with self._lock:
            for cam in [c for c in self._rtsp if c not in camera_ids]:
                self._rtsp.pop(cam).stop()
            self._urls = {c: u for c, u in self._urls.items() if c in camera_ids}
            self._slow &= camera_ids
            urls = set(self._urls.values())
        self._files.retain(camera_ids)
        self._backoff.forget(camera_ids)
        self._run(self._http.retain(urls))

    def _run(self, coro: Awaitable[None]) -> None:
        try:
            asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=5)  # type: ignore[arg-type]
        except (FutureTimeout, RuntimeError) as exc:
            log.warning("fetcher housekeeping did not finish: %s", exc)

    @property
    def streams(self) -> dict[str, RtspStream]:
        with self._lock:
            return dict(self._rtsp)

    def close(self) -> None:
        with self._lock:
            streams = list(self._rtsp.values())
            self._rtsp.clear()
        for stream in streams:
            stream.stop()
        if self._loop.is_running():
            self._run(self._http.aclose())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _sleep_until(when: float) -> None:
    await asyncio.sleep(max(0.0, when - time.monotonic()))
