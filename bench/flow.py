"""Whole-flow benchmark: the real broker and store (started by ``maskwatch.devservices.manager`` on free
ports in a temporary MASKWATCH_HOME), ``maskwatch flow run`` as its own process(es), N cameras replaying
upscaled dataset photos from ``file://`` directories.

Per layout (processes x workers):
1. backlog: every camera's ticks are on the topic before the flow starts; ticks/s is measured from the
   frames' ``processed_at`` (steady state, model loading and group join excluded), rows/s likewise;
2. live (first layout only): ticks produced in real time at a fraction of that rate, as the ticker
   would; latency = ``processed_at - scheduled_at`` per frame, and window close -> alert on the alert
   topic (the closing tick is scheduled at the window end, as buckets are aligned to whole seconds).
Memory: peak RSS (VmHWM) of every flow process, the broker and the store server.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.devservices import manager
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera, Tick
from maskwatch.topics import ensure_topics

from bench.images import dataset_images, load_frames, write_jpegs
from bench.timing import children_peak_rss_mb, peak_rss_mb, percentile

log = logging.getLogger(__name__)
REPO_ROOT = Path(__file__).resolve().parents[1]

# Small buckets so alerts fire every few seconds of event time (a window of 2 buckets, any no-mask face,
# no cooldown): the latency figure then has many samples.
RULE_ENV = {
    "MASKWATCH_FLOW_BUCKET_S": "2",
    "MASKWATCH_FLOW_LATENESS_S": "0",
    "MASKWATCH_FLOW_RULE_WINDOW_S": "4",
    "MASKWATCH_FLOW_RULE_MIN_PEOPLE": "1",
    "MASKWATCH_FLOW_RULE_NOMASK_RATIO": "0.25",
    "MASKWATCH_FLOW_RULE_MIN_FRAMES": "1",
    "MASKWATCH_FLOW_RULE_COOLDOWN_S": "0",
}


@dataclass(frozen=True)
class FlowBenchConfig:
    cameras: int = 8
    ticks_per_camera: int = 12
    width: int = 1024
    height: int = 1024
    images_per_camera: int = 6
    layouts: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1))  # (processes, workers per process)
    live_s: float = 20.0
    live_fraction: float = 0.5  # of the measured backlog rate
    batch_max: int = 16
    batch_timeout_s: float = 0.5
    timeout_s: float = 600.0
    profile_s: float = 0.0  # > 0: py-spy the first flow process during the backlog, at most this long


@contextmanager
def services(home: Path) -> Iterator[Settings]:
    """Broker and store server on free ports under ``home``; stopped on exit whatever happens."""
    broker_port, store_port = free_port(), free_port()
    settings = Settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{broker_port}",
        store_url=f"http://127.0.0.1:{store_port}/?database=bench",
    )
    try:
        for line in manager.up(settings, broker_port=broker_port, store_port=store_port, topics=False):
            log.info("%s", line)
        yield settings.replace()  # read again: the store's password may have been made just now
    finally:
        for line in manager.down(settings):
            log.info("%s", line)


def service_pids(settings: Settings) -> dict[str, int | None]:
    return {s.name: s.pid for s in manager.status(settings)}


def run_settings(base: Settings, name: str) -> Settings:
    """A fresh database, topics and home per run, on the same services."""
    host = base.store_url.split("?")[0]
    return base.replace(
        home=base.home / name,
        store_url=f"{host}?database=bench_{name}",
        topic_ticks=f"bench.ticks.{name}",
        topic_alerts=f"bench.alerts.{name}",
        topic_dead_letter=f"bench.dead-letter.{name}",
    )


def make_cameras(root: Path, cfg: FlowBenchConfig) -> list[Camera]:
    """N cameras, each replaying its own slice of upscaled photos with a no-mask face (JPEG files in a
    temporary folder; the dataset itself is only read)."""
    pool = dataset_images(count=cfg.images_per_camera * cfg.cameras, nomask_only=True)
    cameras = []
    for i in range(cfg.cameras):
        paths = [pool[(i * cfg.images_per_camera + k) % len(pool)] for k in range(cfg.images_per_camera)]
        folder = root / f"cam{i:03d}"
        write_jpegs(load_frames(paths, cfg.width, cfg.height), folder)
        cameras.append(
            Camera(
                id=f"cam{i:03d}",
                name=f"bench {i}",
                site="bench",
                zone=f"z{i % 4}",
                interval_s=1.0,
                source_url=folder.as_uri(),
            )
        )
    return cameras


def tick(camera_id: str, ms: int) -> Tick:
    at = datetime.fromtimestamp(ms / 1000, UTC)
    return Tick(camera_id=camera_id, tick_id=f"{camera_id}:{ms}", scheduled_at=at, emitted_at=at)


def produce(settings: Settings, ticks: Sequence[Tick]) -> None:
    from confluent_kafka import Producer

    producer = Producer({**settings.kafka_config(), "linger.ms": 5})
    for t in ticks:
        producer.produce(settings.topic_ticks, key=t.camera_id.encode(), value=t.model_dump_json().encode())
        producer.poll(0)
    if producer.flush(60):
        raise RuntimeError("could not deliver all ticks to the broker within 60 s")


def flow_env(settings: Settings, cfg: FlowBenchConfig, file_roots: str) -> dict[str, str]:
    return {
        **os.environ,
        **RULE_ENV,
        # The replay folders are temporary: allow file:// sources there (maskwatch.netpolicy).
        "MASKWATCH_FILE_ROOTS": file_roots,
        "PYTHONUNBUFFERED": "1",
        "MASKWATCH_HOME": str(settings.home),
        "MASKWATCH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MASKWATCH_STORE_URL": settings.store_url,
        "MASKWATCH_TOPIC_TICKS": settings.topic_ticks,
        "MASKWATCH_TOPIC_ALERTS": settings.topic_alerts,
        "MASKWATCH_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
        "MASKWATCH_MODELS_DIR": str(settings.models_dir),
        "MASKWATCH_FLOW_BATCH_MAX": str(cfg.batch_max),
        "MASKWATCH_FLOW_BATCH_TIMEOUT_S": str(cfg.batch_timeout_s),
    }


def start_flows(
    settings: Settings, processes: int, workers: int, cfg: FlowBenchConfig, logdir: Path, file_roots: str
) -> list[subprocess.Popen[bytes]]:
    """``maskwatch flow run`` as ``processes`` cluster members with ``workers`` each (recovery on, as in
    production: each process holds its share of the recovery partitions)."""
    from bytewax.recovery import init_db_dir

    env = flow_env(settings, cfg, file_roots)
    argv = [sys.executable, "-m", "maskwatch.cli", "flow", "run", "-s", "1", "-w", str(workers)]
    dirs = [settings.home / f"recovery-{i}" for i in range(processes)]
    for d in dirs:
        d.mkdir(parents=True)
    init_db_dir(dirs[0], processes)
    for i in range(1, processes):
        (dirs[0] / f"part-{i}.sqlite3").rename(dirs[i] / f"part-{i}.sqlite3")
    extra: list[list[str]] = [["-r", str(dirs[0])]]
    if processes > 1:
        addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        extra = [["-i", str(i), "-a", addresses, "-r", str(dirs[i])] for i in range(processes)]
    procs = []
    for i in range(processes):
        out = open(logdir / f"flow-{i}.log", "ab")  # noqa: SIM115 (the child owns it)
        procs.append(
            subprocess.Popen([*argv, *extra[i]], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        )
    return procs


def stop_flows(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(15)


def _scalar(sql: str, settings: Settings) -> Any:
    rows = store.query_rows(sql, settings=settings)
    return next(iter(rows[0].values())) if rows else None


def wait_frames(
    settings: Settings,
    where: str,
    expected: int,
    procs: Sequence[subprocess.Popen[bytes]],
    deadline: float,
    peaks: dict[str, float],
    logdir: Path,
) -> float:
    """Poll until ``expected`` frame rows match ``where``; tracks the flows' peak RSS meanwhile.
    Returns the wall time when they were all visible."""
    while True:
        for i, p in enumerate(procs):
            if p.poll() is not None:
                tail = (logdir / f"flow-{i}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"flow process {i} exited with {p.returncode}:\n{tail}")
            rss = peak_rss_mb(p.pid)
            if rss is not None:
                peaks[f"flow-{i}"] = max(peaks.get(f"flow-{i}", 0.0), rss)
        n = _scalar(f"SELECT count() FROM frames FINAL WHERE {where}", settings) or 0
        if n >= expected:
            return time.time()
        if time.time() > deadline:
            raise TimeoutError(f"only {n} of {expected} frame rows after the time limit; see {logdir}")
        time.sleep(0.5)


def backlog_rates(settings: Settings, since_ms: int, until_ms: int) -> dict[str, Any]:
    """Steady-state rates from the frames' processed_at: the first micro-batch is left out (it includes
    the group join and the models' first run)."""
    rng = (
        f"scheduled_at >= fromUnixTimestamp64Milli({since_ms}) "
        f"AND scheduled_at < fromUnixTimestamp64Milli({until_ms})"
    )
    r = store.query_rows(
        f"SELECT count() AS n, toUnixTimestamp64Milli(min(processed_at)) AS t0, "
        f"toUnixTimestamp64Milli(max(processed_at)) AS t1, countIf(status = 'ok') AS ok, "
        f"sum(faces) AS faces, sum(nomask_faces) AS nomask, avg(fetch_ms) AS fetch_ms, "
        f"avg(inference_ms) AS inference_ms FROM frames FINAL WHERE {rng}",
        settings=settings,
    )[0]
    first = (
        _scalar(
            f"SELECT count() FROM frames FINAL WHERE {rng} AND processed_at = "
            f"(SELECT min(processed_at) FROM frames FINAL WHERE {rng})",
            settings,
        )
        or 0
    )
    span_s = max((r["t1"] - r["t0"]) / 1000, 1e-3)
    ticks_per_s = (r["n"] - first) / span_s
    detections = _scalar(f"SELECT count() FROM detections FINAL WHERE {rng}", settings) or 0
    health = _scalar(f"SELECT count() FROM camera_health FINAL WHERE {rng}", settings) or 0
    rows_per_tick = (r["n"] + detections + health) / max(r["n"], 1)
    # Frames of one micro-batch share processed_at and carry the batch's inference time: summed once per
    # batch (the first left out, as for the rate), that is the workers' inference time in the steady span.
    batch_ms = _scalar(
        f"SELECT sum(ms) FROM (SELECT processed_at, any(inference_ms) AS ms FROM frames FINAL "
        f"WHERE {rng} AND processed_at > (SELECT min(processed_at) FROM frames FINAL WHERE {rng}) "
        f"GROUP BY processed_at)",
        settings,
    ) or 0.0
    statuses = store.query_rows(
        f"SELECT status, count() AS n, any(error) AS error FROM frames FINAL WHERE {rng} GROUP BY status",
        settings=settings,
    )
    return {
        "statuses": {x["status"]: x["n"] for x in statuses},
        "errors": [f"{x['status']}: {x['error']}" for x in statuses if x["status"] != "ok"],
        "rate_basis": "processed_at after the first micro-batch",
        "ticks": r["n"],
        "ok": r["ok"],
        "faces": r["faces"],
        "nomask_faces": r["nomask"],
        "steady_span_s": round(span_s, 2),
        "ticks_per_s": round(ticks_per_s, 2),
        "rows_per_s": round(ticks_per_s * rows_per_tick, 1),
        "rows_per_tick": round(rows_per_tick, 2),
        "avg_fetch_ms": round(r["fetch_ms"] or 0, 1),
        "avg_inference_ms_per_batch": round(r["inference_ms"] or 0, 1),
        "inference_ms_per_tick": round(batch_ms / max(r["n"] - first, 1), 2),
    }


def live_ticks(cameras: Sequence[Camera], rate: float, seconds: float, start_ms: int) -> list[Tick]:
    """Ticks at ``rate``/s in all, from ``ceil(rate)`` cameras (at least 1) ticking every
    ``cameras / rate`` s, phases spread, as the real ticker schedules them."""
    n = max(1, min(len(cameras), math.ceil(rate)))
    interval_ms = 1000 * n / rate
    ticks = [
        tick(cameras[c].id, int(start_ms + k * interval_ms + c * interval_ms / n))
        for k in range(max(1, int(seconds * rate / n)))
        for c in range(n)
    ]
    return sorted(ticks, key=lambda t: t.scheduled_at)


def produce_live(settings: Settings, ticks: Sequence[Tick]) -> None:
    """Each tick sent when its scheduled time comes (emitted_at = now), as the ticker does."""
    from confluent_kafka import Producer

    producer = Producer({**settings.kafka_config(), "linger.ms": 0})
    for t in ticks:
        delay = t.scheduled_at.timestamp() - time.time()
        if delay > 0:
            time.sleep(delay)
        live = t.model_copy(update={"emitted_at": datetime.now(UTC)})
        producer.produce(
            settings.topic_ticks, key=t.camera_id.encode(), value=live.model_dump_json().encode()
        )
        producer.poll(0)
    producer.flush(30)


def read_alerts(settings: Settings, timeout: float = 10.0) -> list[tuple[float, dict[str, Any]]]:
    """(publish time, payload) of every alert on the topic."""
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            **settings.kafka_config(),
            "group.id": f"bench-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([settings.topic_alerts])
    got: list[tuple[float, dict[str, Any]]] = []
    deadline, quiet = time.time() + timeout, time.time() + timeout
    try:
        while time.time() < min(deadline, quiet):
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            got.append((msg.timestamp()[1] / 1000, json.loads(msg.value() or b"{}")))
            quiet = time.time() + 3  # a few quiet seconds after the last one
    finally:
        consumer.close()
    return got


def live_latency(
    settings: Settings, live_start_ms: int, live_end_ms: int, ticks: Sequence[Tick]
) -> dict[str, Any]:
    """Tick -> frame row (processed_at) and tick -> alert event on the topic, where the event's tick is the
    one that closed its bucket: the camera's first tick at or after the event's time."""
    times: dict[str, list[float]] = {}
    for t in ticks:
        times.setdefault(t.camera_id, []).append(t.scheduled_at.timestamp())
    rows = store.query_rows(
        "SELECT toUnixTimestamp64Milli(processed_at) - toUnixTimestamp64Milli(scheduled_at) AS ms "
        f"FROM frames FINAL WHERE scheduled_at >= fromUnixTimestamp64Milli({live_start_ms})",
        settings=settings,
    )
    frame_ms = [float(r["ms"]) for r in rows]
    alert_ms = []
    for published, a in read_alerts(settings):
        # Every step of an alert's life is published when the bucket ending at its `at` closes.
        end = datetime.fromisoformat(a.get("at") or a["window_end"]).timestamp()
        start = datetime.fromisoformat(a["window_start"]).timestamp()
        if start * 1000 >= live_start_ms and end * 1000 <= live_end_ms:
            cam = times.get(a["camera_id"], [])
            i = bisect.bisect_left(cam, end)
            if i < len(cam):
                alert_ms.append((published - cam[i]) * 1000)
    return {
        "frames": len(frame_ms),
        "tick_to_frame_ms_p50": _r(percentile(frame_ms, 50)),
        "tick_to_frame_ms_p99": _r(percentile(frame_ms, 99)),
        "alerts": len(alert_ms),
        "tick_to_alert_ms_p50": _r(percentile(alert_ms, 50)),
        "tick_to_alert_ms_p99": _r(percentile(alert_ms, 99)),
    }


def _r(v: float | None) -> float | None:
    return None if v is None else round(v, 1)


def start_profiler(pid: int, max_s: float, out: Path) -> subprocess.Popen[bytes] | None:
    """py-spy (if installed) sampling the flow process (idle waits included, so the worker thread's
    time adds up) into raw stacks; stop it with ``stop_profiler``."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        log.warning("py-spy not installed; no flow profile (pip install py-spy)")
        return None
    argv = [
        spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(max_s)),
        "--format",
        "raw",
        "--rate",
        "50",
        "--nonblocking",
        "--idle",
        "--threads",
        "--output",
        str(out),
    ]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profiler(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes what it has on Ctrl-C
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run_layout(
    base: Settings,
    cameras: Sequence[Camera],
    processes: int,
    workers: int,
    cfg: FlowBenchConfig,
    live: bool,
    results_dir: Path,
) -> dict[str, Any]:
    name = f"p{processes}w{workers}_{uuid.uuid4().hex[:6]}"
    settings = run_settings(base, name)
    settings.home.mkdir(parents=True)
    store.migrate(settings)
    ensure_topics(settings)
    for cam in cameras:
        registry.put_camera(cam, settings)
    # Backlog in the recent past, whole seconds, so the live ticks that follow are later in event time.
    now_ms = int(time.time()) * 1000
    start_ms = now_ms - (cfg.ticks_per_camera + 120) * 1000
    backlog = sorted(
        (tick(c.id, start_ms + k * 1000) for c in cameras for k in range(cfg.ticks_per_camera)),
        key=lambda t: t.scheduled_at,
    )
    produce(settings, backlog)
    peaks: dict[str, float] = {}
    t_start = time.time()
    roots = os.pathsep.join(sorted({str(Path(unquote(urlsplit(c.source_url).path)).parent) for c in cameras}))
    procs = start_flows(settings, processes, workers, cfg, settings.home, roots)
    result: dict[str, Any] = {
        "processes": processes,
        "workers": workers,
        "cameras": len(cameras),
        "frame_size": f"{cfg.width}x{cfg.height}",
        "batch_max": cfg.batch_max,
    }
    profiler = None
    try:
        deadline = t_start + cfg.timeout_s
        raw = results_dir / f"flow-profile-{name}.txt"
        # The whole backlog drain (model load and group join included) of the first process.
        profiler = start_profiler(procs[0].pid, cfg.profile_s, raw) if cfg.profile_s > 0 else None
        t_done = wait_frames(
            settings,
            f"scheduled_at < fromUnixTimestamp64Milli({now_ms})",
            len(backlog),
            procs,
            deadline,
            peaks,
            settings.home,
        )
        result["wall_s_incl_startup"] = round(t_done - t_start, 1)
        if profiler is not None:
            stop_profiler(profiler)
            result["profile_raw"] = str(raw) if raw.exists() else None
        result.update(backlog_rates(settings, start_ms, now_ms))
        if result["ticks_per_s"] == 0:  # one micro-batch took everything: no steady state to measure
            wall = result["wall_s_incl_startup"]
            result.update(
                rate_basis="wall incl. startup",
                ticks_per_s=round(result["ticks"] / wall, 2),
                rows_per_s=round(result["ticks"] * result["rows_per_tick"] / wall, 1),
            )
        # Worker time per tick outside inference (fetch wait, events, sinks, rules, snapshots), with every
        # worker busy through the backlog: what caps one process's ticks/s when inference is on a GPU.
        worker_ms = processes * workers * 1000 / result["ticks_per_s"] if result["ticks_per_s"] else 0.0
        outside = max(0.0, worker_ms - result["inference_ms_per_tick"])
        result["outside_inference_ms_per_tick"] = round(outside, 2)
        if live and result["ticks_per_s"] > 0:
            rate = cfg.live_fraction * result["ticks_per_s"]
            live_start = (int(time.time()) + 2) * 1000
            ticks = live_ticks(cameras, rate, cfg.live_s, live_start)
            produce_live(settings, ticks)
            live_end = int(ticks[-1].scheduled_at.timestamp() * 1000) + 1
            wait_frames(
                settings,
                f"scheduled_at >= fromUnixTimestamp64Milli({live_start})",
                len(ticks),
                procs,
                time.time() + 120,
                peaks,
                settings.home,
            )
            result["live"] = {
                "ticks": len(ticks),
                "ticks_per_s": round(len(ticks) / cfg.live_s, 2),
                **live_latency(settings, live_start, live_end, ticks),
            }
        for i, p in enumerate(procs):
            rss = peak_rss_mb(p.pid)
            if rss is not None:
                peaks[f"flow-{i}"] = max(peaks.get(f"flow-{i}", 0.0), rss)
    finally:
        stop_profiler(profiler)
        stop_flows(procs)
    result["peak_rss_mb"] = {k: round(v, 1) for k, v in peaks.items()}
    return result


def bench_flow(cfg: FlowBenchConfig, results_dir: Path) -> dict[str, Any]:
    """Every layout on one pair of services; the first layout also measures live latency."""
    home = Path(tempfile.mkdtemp(prefix="mw-bench-"))
    try:
        cameras = make_cameras(home / "cameras", cfg)
        runs = []
        with services(home / "services") as base:
            for i, (processes, workers) in enumerate(cfg.layouts):
                log.info("flow run: %d process(es) x %d worker(s)", processes, workers)
                runs.append(
                    run_layout(
                        base,
                        cameras,
                        processes,
                        workers,
                        dataclasses.replace(cfg, profile_s=cfg.profile_s if i == 0 else 0),
                        live=i == 0,
                        results_dir=results_dir,
                    )
                )
            pids = service_pids(base)
            services_rss = {name: _r(peak_rss_mb(pid)) if pid else None for name, pid in pids.items()}
        return {
            "runs": runs,
            "services_peak_rss_mb": services_rss,
            "flow_children_peak_rss_mb": round(children_peak_rss_mb(), 1),
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)
