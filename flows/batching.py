"""Micro-batches: ticks of many cameras -> concurrent fetch -> one two-stage inference call -> events.

Batches are keyed by shard, not camera, so a worker's batch mixes cameras and the detector runs on as
many frames as arrived together. Every tick yields exactly one :class:`TickOutcome` whatever failed.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, Protocol

import bytewax.operators as op
import numpy as np
from bytewax.dataflow import Stream
from bytewax.operators import KeyedStream, StatefulLogic

from maskwatch import metrics
from maskwatch.cameras.capture.fetcher import Fetched, Fetcher, FetchRequest
from maskwatch.cameras.sources import mask_values, resolve_source_url
from maskwatch.flows.areas import ignored
from maskwatch.flows.people import Sighting
from maskwatch.flows.routing import shard_labels
from maskwatch.flows.snapshots import BoxedFace, save_snapshot
from maskwatch.schemas.events import Camera, CameraHealth, FaceDetection, FrameResult, Tick
from maskwatch.schemas.redaction import redact_text

log = logging.getLogger(__name__)


class Engine(Protocol):
    """What the flow needs of ``maskwatch.inference.serving.engine.InferenceEngine``: per frame, an object
    with ``faces``
    (each with ``box`` in pixels, ``det_score``, ``nomask_prob``, ``label``), ``width``, ``height``,
    ``timings``."""

    def infer(self, frames: Sequence[np.ndarray]) -> Sequence[Any]: ...


def shard_key(camera_id: str, shards: int) -> str:
    """Stable across processes (unlike ``hash``), so a camera's ticks always meet in the same shard; the
    shard keys are picked so that each of ``shards`` workers gets one (see ``maskwatch.flows.routing``)."""
    return shard_labels(shards)[zlib.crc32(camera_id.encode()) % shards]


def micro_batches(
    up: Stream[Tick], shards: int, timeout: timedelta, max_size: int
) -> KeyedStream[list[Tick]]:
    """Ticks gathered per shard until ``max_size`` or ``timeout``; a batch mixes the shard's cameras."""
    sharded = op.key_on("shard", up, lambda t: shard_key(t.camera_id, shards))
    return op.collect("micro_batch", sharded, timeout, max_size)


@dataclass(frozen=True)
class TickOutcome:
    frame: FrameResult
    faces: list[FaceDetection]
    fetched_status: str
    fetch_latency_ms: float
    error: str = ""
    observed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    # Set by the people step (maskwatch.flows.people): the counted no-mask faces as people.
    sightings: tuple[Sighting, ...] = ()

    def health(self, consecutive_failures: int, state: str = "ok") -> CameraHealth:
        f = self.frame
        return CameraHealth(
            camera_id=f.camera_id, tick_id=f.tick_id, site=f.site, zone=f.zone, scheduled_at=f.scheduled_at,
            observed_at=self.observed_at, status=self.fetched_status,  # type: ignore[arg-type]
            latency_ms=self.fetch_latency_ms, consecutive_failures=consecutive_failures,
            state=state,  # type: ignore[arg-type]
            error=self.error,
        )


@dataclass
class Pending:
    """A tick whose fetch is under way (``future`` None: it failed before any request, with ``error``)."""

    tick: Tick
    camera: Camera
    request: FetchRequest
    filled: list[str]
    future: Future[Fetched] | None
    error: str = ""
    suspect: bool = False


def _norm(v: float, size: int) -> float:
    return min(1.0, max(0.0, v / size)) if size else 0.0


class BatchProcessor:
    def __init__(
        self, fetcher: Fetcher, engine: Engine, snapshot_root: Path | None, *,
        detector_model: str = "", classifier_model: str = "", snapshot_max_width: int = 640,
        blur_faces: bool = False,
    ):
        self.fetcher = fetcher
        self.engine = engine
        self.snapshot_root = snapshot_root
        self.detector_model = detector_model
        self.classifier_model = classifier_model
        self.snapshot_max_width = snapshot_max_width
        self.blur_faces = blur_faces

    def process(self, batch: Sequence[tuple[Tick, Camera]]) -> list[TickOutcome]:
        """Fetch and infer the whole batch: one outcome per tick, in order."""
        return self.finish(self.start(batch), wait=True)[0]

    def process_detaching(self, batch: Sequence[tuple[Tick, Camera]], behind: Collection[str] = ()
                          ) -> tuple[list[TickOutcome], list[Pending]]:
        """As ``process``, but the ticks of suspect cameras (failed or slow last time), and of any camera
        not done within ``batch_wait_s``, are not waited for: they come back as pending fetches, to
        ``finish`` later, so one slow camera does not hold the healthy ones of its batch until its
        deadline. ``behind`` names cameras whose earlier ticks are still pending elsewhere: their ticks
        here are detached too, so that no outcome overtakes an earlier one of its camera."""
        pending = self.start(batch)
        # Healthy cameras answer in well under a second; one that does not is detached too, so a camera
        # that has just started to hang stalls its batch for batch_wait_s once, not for its deadline.
        wait([p.future for p in pending if not p.suspect and p.future is not None],
             timeout=min(self.fetcher.opts.batch_wait_s, self.fetcher.opts.deadline_s))
        ready = in_camera_order(pending, lambda p: not p.suspect and (p.future is None or p.future.done()),
                                behind)
        outcomes, _ = self.finish(ready, wait=True)
        taken = {id(p) for p in ready}
        return outcomes, [p for p in pending if id(p) not in taken]

    def start(self, batch: Sequence[tuple[Tick, Camera]]) -> list[Pending]:
        """Start every tick's fetch (a ``${SECRET}`` this host lacks fails at once)."""
        # Judged before any of this batch starts: a camera with two ticks in one batch (a backlog) is not
        # suspect because of the first, whose outcome would then overtake the second's.
        suspects = {cam.id: self.fetcher.suspect(cam.id) for _, cam in batch}
        out: list[Pending] = []
        for tick, cam in batch:
            ms = round(tick.scheduled_at.timestamp() * 1000)
            try:
                url, filled = resolve_source_url(cam)
            except LookupError as exc:  # a ${SECRET} placeholder that this host does not define
                req = FetchRequest(cam.id, tick.tick_id, "unresolved://", ms, cam.interval_s)
                out.append(Pending(tick, cam, req, [], None, str(exc)))
                continue
            req = FetchRequest(cam.id, tick.tick_id, url, ms, cam.interval_s, cam.allow_private_network)
            out.append(Pending(tick, cam, req, filled, self.fetcher.submit(req), "", suspects[cam.id]))
        return out

    def finish(self, pending: Sequence[Pending], wait: bool) -> tuple[list[TickOutcome], list[Pending]]:
        """Outcomes of the fetches that are done (all of them if ``wait``), inferred together; and the
        fetches still running."""
        done = pending if wait else in_camera_order(pending, lambda p: p.future is None or p.future.done())
        taken = {id(p) for p in done}
        running = [p for p in pending if id(p) not in taken]
        if not done:
            return [], running
        fetched = [Fetched(p.request.camera_id, p.request.tick_id, "fetch_error", error=p.error)
                   if p.future is None else self.fetcher.result(p.request, p.future) for p in done]
        # Error texts quote what the camera answered and the URL that was fetched: whatever the redaction
        # rules do not recognise as a credential, the values filled into the URL are masked here.
        for p, f in zip(done, fetched, strict=True):
            if f.error and p.filled:
                f.error = mask_values(f.error, p.filled)
        return self._infer([(p.tick, p.camera) for p in done], fetched), running

    def _infer(self, batch: Sequence[tuple[Tick, Camera]], fetched: list[Fetched]) -> list[TickOutcome]:
        good = [i for i, f in enumerate(fetched) if f.status == "ok" and f.frame is not None]
        results: dict[int, Any] = {}
        infer_error = ""
        t0 = time.perf_counter()
        if good:
            metrics.BATCH_SIZE.observe(len(good))
            try:
                out = self.engine.infer([fetched[i].frame for i in good])  # type: ignore[misc]
                results = dict(zip(good, out, strict=True))
            except Exception as exc:  # keep the flow up; the frames are recorded with the error
                log.exception("inference failed on a batch of %d frames", len(good))
                infer_error = redact_text(f"{type(exc).__name__}: {exc}")
            metrics.INFERENCE_SECONDS.observe(time.perf_counter() - t0)
        infer_ms = (time.perf_counter() - t0) * 1000
        now = datetime.now(UTC)
        outcomes = [self._outcome(tick, cam, f, results.get(i), infer_error, infer_ms, now)
                    for i, ((tick, cam), f) in enumerate(zip(batch, fetched, strict=True))]
        for o in outcomes:
            if o.frame.status == "ok":
                metrics.FRAMES_FETCHED.labels(camera=o.frame.camera_id).inc()
            else:  # the fetch status says more (timeout, blocked, oversized) than the frame status
                reason = o.fetched_status if o.fetched_status != "ok" else o.frame.status
                metrics.FRAMES_FAILED.labels(camera=o.frame.camera_id, reason=reason).inc()
        return outcomes

    def _outcome(self, tick: Tick, cam: Camera, fetched: Fetched, result: Any | None, infer_error: str,
                 infer_ms: float, now: datetime) -> TickOutcome:
        common: dict[str, Any] = {"camera_id": cam.id, "tick_id": tick.tick_id, "site": cam.site,
                                  "zone": cam.zone, "scheduled_at": tick.scheduled_at}
        models: dict[str, Any] = {"detector_model": self.detector_model,
                                  "classifier_model": self.classifier_model}
        if fetched.status != "ok":
            status: Literal["decode_error", "fetch_error"] = (
                "decode_error" if fetched.status == "decode_error" else "fetch_error")
            frame = FrameResult(**common, processed_at=now, status=status, fetch_ms=fetched.latency_ms,
                                error=fetched.error)
            return TickOutcome(frame, [], fetched.status, fetched.latency_ms, fetched.error, now)
        if result is None:
            frame = FrameResult(**common, captured_at=fetched.captured_at, processed_at=now,
                                status="inference_error", fetch_ms=fetched.latency_ms, error=infer_error,
                                **models)
            return TickOutcome(frame, [], "ok", fetched.latency_ms, "", now)
        w, h = result.width, result.height
        faces = []
        for n, f in enumerate(result.faces):
            box = (_norm(f.box[0], w), _norm(f.box[1], h), _norm(f.box[2], w), _norm(f.box[3], h))
            faces.append(FaceDetection(
                **common, processed_at=now, face_index=n, x1=box[0], y1=box[1], x2=box[2], y2=box[3],
                detection_score=min(1.0, max(0.0, f.det_score)),
                nomask_prob=min(1.0, max(0.0, f.nomask_prob)), nomask=f.label == "no_mask",
                ignored=ignored(cam.area, box, h), **models,
            ))
        counted = [f for f in faces if not f.ignored]
        nomask = sum(f.nomask for f in counted)
        snapshot = ""
        if nomask and self.snapshot_root is not None and fetched.frame is not None:
            try:
                boxed = [BoxedFace(f.box, f.label == "no_mask", f.nomask_prob, bool(d.ignored))
                         for f, d in zip(result.faces, faces, strict=True)]
                snapshot = str(save_snapshot(self.snapshot_root, cam.id, tick.tick_id, tick.scheduled_at,
                                             fetched.frame, boxed, self.snapshot_max_width, self.blur_faces,
                                             area=cam.area))
            except OSError as exc:  # a full disk must not stop detection
                log.warning("cannot save snapshot for %s: %s", tick.tick_id, exc)
        frame = FrameResult(
            **common, captured_at=fetched.captured_at, processed_at=now, status="ok", width=w, height=h,
            faces=len(counted), nomask_faces=nomask, fetch_ms=fetched.latency_ms,
            inference_ms=result.timings.get("total_ms", infer_ms), snapshot_path=snapshot, **models,
        )
        return TickOutcome(frame, faces, "ok", fetched.latency_ms, "", now)


def in_camera_order(pending: Sequence[Pending], ready: Callable[[Pending], bool], behind: Collection[str] = ()
                    ) -> list[Pending]:
    """The ``ready`` fetches that no earlier, unready fetch of the same camera precedes (``pending`` is in
    tick order; ``behind`` names cameras that already wait on one). What follows a camera's outcomes
    (people, health, rules) counts "in a row" and tracks people in tick order: a backed-off camera's
    instant ``skipped`` tick must not overtake its slow earlier fetch."""
    blocked = set(behind)
    out = []
    for p in pending:
        if p.camera.id not in blocked and ready(p):
            out.append(p)
        else:
            blocked.add(p.camera.id)
    return out


class FetchInfer(StatefulLogic[list[Tick], TickOutcome, list[Tick]]):
    """The ``fetch_infer`` step of one shard: each micro-batch is fetched and inferred, and its outcomes
    go on at once, except those of suspect cameras (failed or slow last time), which follow on their
    own when their fetch ends (by the camera's deadline). Ticks still being fetched are the state, so a
    restart from a snapshot fetches them again instead of losing them."""

    POLL = timedelta(milliseconds=100)

    def __init__(self,
                 process: Callable[[list[Tick], Collection[str]], tuple[list[TickOutcome], list[Pending]]],
                 finish: Callable[[list[Pending], bool], tuple[list[TickOutcome], list[Pending]]],
                 resume: list[Tick] | None):
        self._process, self._finish = process, finish
        self._resume = list(resume or [])
        self._pending: list[Pending] = []

    def on_item(self, value: list[Tick]) -> tuple[Iterable[TickOutcome], bool]:
        ticks, self._resume = self._resume + value, []
        # Earlier ticks whose fetch has ended go first, so a camera's outcomes keep their order.
        earlier, self._pending = self._finish(self._pending, False)
        outcomes, detached = self._process(ticks, {p.camera.id for p in self._pending})
        self._pending += detached
        return [*earlier, *outcomes], StatefulLogic.RETAIN

    def on_notify(self) -> tuple[Iterable[TickOutcome], bool]:
        if self._resume:  # restored from a snapshot: fetch those ticks again (finished ones go first)
            return self.on_item([])
        outcomes, self._pending = self._finish(self._pending, False)
        return outcomes, StatefulLogic.RETAIN

    def on_eof(self) -> tuple[Iterable[TickOutcome], bool]:
        outcomes, self._pending = self._finish(self._pending, True)
        return outcomes, StatefulLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return datetime.now(UTC) + self.POLL if self._pending or self._resume else None

    def snapshot(self) -> list[Tick]:
        return [*self._resume, *(p.tick for p in self._pending)]
