"""Load test: N simulated HTTP cameras ticked by the real ticker into the real flow, for D minutes.

One threaded HTTP server on 127.0.0.1 plays every camera (``/cam/<i>.jpg`` returns dataset photo
``i mod pool``); the cameras are registered with ``allow_private_network`` (they are on loopback). The
real broker and store run on free ports under a temporary ``MASKWATCH_HOME``;
``maskwatch.cameras.ticker.Ticker``
runs in this process, ``maskwatch flow run`` as its own process with its Prometheus endpoint.

Every ``--sample-s`` it records: ticks produced (acknowledged by the broker), ticks the flow read
(``maskwatch_ticks_in``), frames in the store, consumer lag (produced - in store), fetch failures, and the
end-to-end latency of the frames that landed in that interval (scheduled -> processed, and the flow's
sink-lag gauge: scheduled -> in the store), the load average, and the CPU seconds used so far by the flow,
the broker, the store server and this process (ticker + cameras), which give the CPU cost per tick.
After the run the ticker stops, the flow drains for up to ``--drain-s``, and drops (ticks produced without
a frame row) are counted.

    python -m bench.load_cameras                       # 500 cameras, 1 tick / 5 s each, 10 minutes
    python -m bench.load_cameras --cameras 500 --detector blazeface --classifier mask-recognition

``--detector`` / ``--classifier`` select cheaper models by manifest name (``MASKWATCH_FLOW_DETECTOR``).
Results go to ``bench/results/load-<UTC time>.json`` and a table on stdout.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from maskwatch import store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera
from maskwatch.topics import ensure_topics

from bench.flow import service_pids, services
from bench.images import DATASET_DIR, dataset_images
from bench.timing import cpu_seconds, machine, peak_rss_mb, percentile

log = logging.getLogger("bench.load_cameras")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class LoadConfig:
    cameras: int = 500
    minutes: float = 10.0
    interval_s: float = 5.0
    workers: int = 1
    detector: str = ""
    classifier: str = ""
    batch_max: int = 32
    batch_timeout_s: float = 0.5
    fetch_concurrency: int = 16
    sample_s: float = 10.0
    drain_s: float = 120.0
    images: int = 64


class _CameraHandler(http.server.BaseHTTPRequestHandler):
    photos: list[bytes] = []  # noqa: RUF012 (set once before serving)
    served = 0

    def do_GET(self) -> None:
        parts = self.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] != "cam" or not parts[1].removesuffix(".jpg").isdigit():
            self.send_error(404)
            return
        body = self.photos[int(parts[1].removesuffix(".jpg")) % len(self.photos)]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        _CameraHandler.served += 1

    def log_message(self, *args: object) -> None:
        pass


class _CameraServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that gave up at its deadline


def start_cameras(photos: list[bytes]) -> tuple[_CameraServer, str]:
    _CameraHandler.photos = photos
    server = _CameraServer(("127.0.0.1", 0), _CameraHandler)
    threading.Thread(target=server.serve_forever, name="cameras", daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def register(settings: Settings, base_url: str, cfg: LoadConfig) -> list[Camera]:
    cameras = [Camera(id=f"load{i:04d}", site="load", zone=f"z{i % 10}", interval_s=cfg.interval_s,
                      source_url=f"{base_url}/cam/{i}.jpg", allow_private_network=True)
               for i in range(cfg.cameras)]
    for cam in cameras:
        registry.put_camera(cam, settings)
    return cameras


def flow_env(settings: Settings, cfg: LoadConfig, metrics_port: int) -> dict[str, str]:
    env = {
        **os.environ, "PYTHONUNBUFFERED": "1",
        "MASKWATCH_HOME": str(settings.home), "MASKWATCH_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MASKWATCH_STORE_URL": settings.store_url, "MASKWATCH_TOPIC_TICKS": settings.topic_ticks,
        "MASKWATCH_TOPIC_ALERTS": settings.topic_alerts,
        "MASKWATCH_TOPIC_DEAD_LETTER": settings.topic_dead_letter,
        "MASKWATCH_MODELS_DIR": str(settings.models_dir), "MASKWATCH_METRICS_PORT": str(metrics_port),
        "MASKWATCH_FLOW_BATCH_MAX": str(cfg.batch_max),
        "MASKWATCH_FLOW_BATCH_TIMEOUT_S": str(cfg.batch_timeout_s),
        "MASKWATCH_FLOW_FETCH_CONCURRENCY": str(cfg.fetch_concurrency),
        "MASKWATCH_FLOW_SNAPSHOTS": "0",  # disk writes are not what this measures
    }
    if cfg.detector:
        env["MASKWATCH_FLOW_DETECTOR"] = cfg.detector
    if cfg.classifier:
        env["MASKWATCH_FLOW_CLASSIFIER"] = cfg.classifier
    return env


def scrape(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.startswith("maskwatch_frames_failed"):
                out["frames_failed"] = out.get("frames_failed", 0.0) + s.value
            elif not s.labels:
                out[s.name] = s.value
    return out


def _frames(settings: Settings) -> dict[str, Any]:
    rows = store.query_rows("SELECT count() AS n, uniqExact(tick_id) AS u, countIf(status != 'ok') AS failed "
                            "FROM frames", settings=settings)
    return rows[0]


def _latency(settings: Settings, since: datetime) -> dict[str, float | None]:
    rows = store.query_rows(
        "SELECT dateDiff('millisecond', scheduled_at, processed_at) / 1000 AS s FROM frames "
        "WHERE processed_at >= {since:DateTime64(3)}", {"since": since.replace(tzinfo=None)},
        settings=settings)
    values = [float(r["s"]) for r in rows]
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values, default=None)}


def cpu_per_tick(samples: list[dict[str, Any]]) -> dict[str, float]:
    """CPU milliseconds per processed tick, per process, between the first and last sample."""
    if len(samples) < 2 or samples[-1]["frames"] <= samples[0]["frames"]:
        return {}
    first, last = samples[0]["cpu_s"], samples[-1]["cpu_s"]
    ticks = samples[-1]["frames"] - samples[0]["frames"]
    out = {name: round((last[name] - first[name]) * 1000 / ticks, 2)
           for name in last if first.get(name) is not None and last[name] is not None}
    out["total"] = round(sum(out.values()), 2)
    return out


def run(cfg: LoadConfig, results_dir: Path) -> dict[str, Any]:
    from maskwatch.cameras.ticker import Ticker

    photos = [p.read_bytes() for p in dataset_images(DATASET_DIR, count=cfg.images)]
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="maskwatch-load-") as tmp:
        home = Path(tmp)
        with services(home) as base:
            settings = base
            ensure_topics(settings)
            store.migrate(settings)
            server, base_url = start_cameras(photos)
            t0 = time.monotonic()
            register(settings, base_url, cfg)
            log.info("registered %d cameras in %.1fs", cfg.cameras, time.monotonic() - t0)
            metrics_port = free_port()
            flow_log = home / "flow.log"
            proc = subprocess.Popen(
                [sys.executable, "-m", "maskwatch.cli", "flow", "run", "-s", "2", "-w", str(cfg.workers)],
                env=flow_env(settings, cfg, metrics_port), stdout=open(flow_log, "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT, cwd=REPO_ROOT)
            pids = {"flow": proc.pid, **service_pids(settings), "bench": os.getpid()}
            ticker = Ticker(settings, refresh_s=5.0)
            stop = threading.Event()
            ticker_thread = threading.Thread(target=ticker.run, args=(stop,), name="ticker", daemon=True)
            started = time.monotonic()
            ticker_thread.start()
            end = started + cfg.minutes * 60
            peak_rss = 0.0
            last = datetime.now(UTC)
            drain_until = float("inf")
            try:
                while True:
                    now_m = time.monotonic()
                    ticking = now_m < end
                    if not ticking and not stop.is_set():
                        stop.set()
                        ticker_thread.join(30)
                        drain_until = now_m + cfg.drain_s
                    time.sleep(cfg.sample_s)
                    if proc.poll() is not None:
                        raise RuntimeError(f"flow exited with {proc.returncode}:\n"
                                           + flow_log.read_text(errors="replace")[-3000:])
                    now = datetime.now(UTC)
                    frames = _frames(settings)
                    m = scrape(metrics_port)
                    produced = ticker.stats.delivered
                    sample = {
                        "t_s": round(time.monotonic() - started, 1), "ticking": ticking, "produced": produced,
                        "ticks_in": m.get("maskwatch_ticks_in_total"), "frames": frames["u"],
                        # Not yet read from Kafka, and not yet in the store (read but in flight included).
                        "consumer_lag": produced - int(m.get("maskwatch_ticks_in_total", 0)),
                        "lag": produced - frames["u"], "fetch_failed": frames["failed"],
                        "sink_lag_s": m.get("maskwatch_sink_lag_seconds"),
                        "buffer_depth": m.get("maskwatch_buffer_depth"),
                        **{f"latency_{k}_s": v for k, v in _latency(settings, last).items()},
                        "loadavg_1m": os.getloadavg()[0],
                        "cpu_s": {name: cpu_seconds(pid) for name, pid in pids.items() if pid is not None},
                    }
                    last = now
                    rss = peak_rss_mb(proc.pid)
                    peak_rss = max(peak_rss, rss or 0.0)
                    samples.append(sample)
                    print(json.dumps(sample), flush=True)
                    if not ticking and (sample["lag"] <= 0 or time.monotonic() > drain_until):
                        break
            finally:
                stop.set()
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                server.shutdown()
            final = _frames(settings)
            stats = ticker.stats
            warmup_s = min(60.0, cfg.minutes * 30)  # model load and consumer-group join
            steady = [s for s in samples if s["ticking"] and s["t_s"] > warmup_s] or samples
            rate_in = ((steady[-1]["frames"] - steady[0]["frames"]) / (steady[-1]["t_s"] - steady[0]["t_s"])
                       if len(steady) > 1 else None)
            summary = {
                "config": asdict(cfg), "machine": machine(),
                "target_ticks_per_s": cfg.cameras / cfg.interval_s,
                "ticks_produced": stats.delivered, "ticker_failed": stats.failed,
                "ticker_skipped": stats.skipped,
                "frames": final["u"], "duplicate_frame_rows": final["n"] - final["u"],
                "fetch_failures": final["failed"],
                # Drops only count once the flow drained; otherwise the rest was still queued at the stop.
                "drained": samples[-1]["lag"] <= 0 if samples else False,
                "drops": stats.delivered - final["u"] if samples and samples[-1]["lag"] <= 0 else None,
                "unprocessed_at_stop": stats.delivered - final["u"],
                "drain_s": round(samples[-1]["t_s"] - cfg.minutes * 60, 1) if samples else None,
                "processed_per_s_steady": rate_in,
                "max_lag": max((s["lag"] for s in samples), default=None),
                "lag_at_end_of_ticking": next((s["lag"] for s in reversed(samples) if s["ticking"]), None),
                "latency_p50_s_median": percentile([s["latency_p50_s"] for s in steady
                                                    if s["latency_p50_s"] is not None], 50),
                "latency_p95_s_max": max(
                    (s["latency_p95_s"] for s in steady if s["latency_p95_s"] is not None), default=None),
                "camera_requests_served": _CameraHandler.served, "flow_peak_rss_mb": peak_rss,
                "loadavg_1m_range": [min(s["loadavg_1m"] for s in samples),
                                     max(s["loadavg_1m"] for s in samples)] if samples else None,
                "cpu_ms_per_tick_steady": cpu_per_tick(steady),
                "samples": samples,
            }
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"load-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(summary, indent=2, default=str))
    summary["results_file"] = str(out)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", type=int, default=LoadConfig.cameras)
    p.add_argument("--minutes", type=float, default=LoadConfig.minutes)
    p.add_argument("--interval-s", type=float, default=LoadConfig.interval_s)
    p.add_argument("--workers", type=int, default=LoadConfig.workers)
    p.add_argument("--detector", default="", help="cheaper detector by manifest name, e.g. blazeface")
    p.add_argument("--classifier", default="")
    p.add_argument("--batch-max", type=int, default=LoadConfig.batch_max)
    p.add_argument("--fetch-concurrency", type=int, default=LoadConfig.fetch_concurrency)
    p.add_argument("--drain-s", type=float, default=LoadConfig.drain_s)
    p.add_argument("--sample-s", type=float, default=LoadConfig.sample_s)
    p.add_argument("--results", type=Path, default=REPO_ROOT / "bench" / "results")
    a = p.parse_args(argv)
    if a.cameras < 1 or a.minutes <= 0 or a.interval_s <= 0:
        p.error("--cameras, --minutes and --interval-s must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = LoadConfig(cameras=a.cameras, minutes=a.minutes, interval_s=a.interval_s, workers=a.workers,
                     detector=a.detector, classifier=a.classifier, batch_max=a.batch_max,
                     fetch_concurrency=a.fetch_concurrency, drain_s=a.drain_s, sample_s=a.sample_s)
    summary = run(cfg, a.results)
    keys = ["target_ticks_per_s", "ticks_produced", "frames", "drained", "drops", "unprocessed_at_stop",
            "drain_s", "duplicate_frame_rows", "fetch_failures", "processed_per_s_steady",
            "cpu_ms_per_tick_steady", "loadavg_1m_range", "max_lag", "lag_at_end_of_ticking",
            "latency_p50_s_median", "latency_p95_s_max", "ticker_failed", "ticker_skipped",
            "flow_peak_rss_mb", "results_file"]
    width = max(len(k) for k in keys)
    for k in keys:
        v = summary.get(k)
        print(f"{k:<{width}}  {round(v, 2) if isinstance(v, float) else v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
