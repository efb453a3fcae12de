"""Every Prometheus metric maskwatch exports, in one place, and the ``/metrics`` endpoint.

The names are the ones ``docker/grafana/maskwatch.json`` queries (a test checks that each name the
dashboard uses is defined here). Import the metric you update, e.g.::

    from maskwatch import metrics
    metrics.FRAMES_FETCHED.labels(camera=camera_id).inc()
    metrics.FRAMES_FAILED.labels(camera=camera_id, reason="timeout").inc()
    with metrics.INFERENCE_SECONDS.time(): ...

and call ``serve_metrics()`` once at process start. Label values must be bounded (camera ids, fixed reason
words), never URLs or error messages: those may hold credentials and would explode the series count.
Counters are named without ``_total``; prometheus-client appends it on export.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from maskwatch.config import Settings

log = logging.getLogger(__name__)

# --- flow -------------------------------------------------------------------------------------------
TICKS_IN = Counter("maskwatch_ticks_in", "Ticks read from the tick topic by the flow")
FRAMES_FETCHED = Counter("maskwatch_frames_fetched", "Frames fetched and decoded, per camera", ["camera"])
FRAMES_FAILED = Counter("maskwatch_frames_failed",
                        "Ticks whose frame could not be used, per camera and reason "
                        "(fetch_error, decode_error, timeout, inference_error, ...)", ["camera", "reason"])
BATCH_SIZE = Histogram("maskwatch_batch_size", "Frames per inference micro-batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
INFERENCE_SECONDS = Histogram("maskwatch_inference_seconds", "Inference time per micro-batch (both stages)",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RULE_EVALUATIONS = Counter("maskwatch_rule_evaluations", "No-mask rule evaluations (camera windows closed)")
ALERTS = Counter("maskwatch_alerts", "Alerts raised by the flow")
ALERTS_SUPPRESSED = Counter("maskwatch_alerts_suppressed",
                            "Alerts a rule would have raised outside the schedule (paused, closed, quiet)",
                            ["reason"])
SINK_LAG = Gauge("maskwatch_sink_lag_seconds",
                 "Seconds between a tick's scheduled time and its rows reaching the store (last write)")
CAMERA_DOWN = Gauge("maskwatch_camera_down", "1 while the camera is down (failed ticks in a row), else 0",
                    ["camera", "site"])
CAMERA_HEALTH_CHANGES = Counter("maskwatch_camera_health_changes",
                                "Camera health changes published (degraded, down, up, recovered)", ["kind"])
TICK_LAG = Gauge("maskwatch_tick_lag_seconds",
                 "Seconds between the newest fetched tick's scheduled time and its fetch: how far the flow "
                 "is behind the tick topic (consumer lag, in time)")
CAMERAS_BACKED_OFF = Gauge("maskwatch_cameras_backed_off",
                           "Cameras whose ticks are skipped until their next probe (failed repeatedly)")
BUFFER_DEPTH = Gauge("maskwatch_buffer_depth", "Rows waiting in the store buffer (store slow or down)")
FLOW_LATE_TICKS = Counter("maskwatch_flow_late_ticks", "Ticks that arrived after their bucket closed")
FLOW_DEAD_LETTERS = Counter("maskwatch_flow_dead_letters", "Tick records sent to the dead-letter topic",
                            ["stage"])
FLOW_DROPPED_TICKS = Counter("maskwatch_flow_ticks_dropped", "Ticks the flow did not process, by reason",
                             ["reason"])

REGISTRY_ROWS_SKIPPED = Counter("maskwatch_registry_rows_skipped",
                                "Camera registry rows read but skipped: not a valid camera (see the log)")

# --- ticker -----------------------------------------------------------------------------------------
TICKER_TICKS = Counter("maskwatch_ticker_ticks", "Ticks the ticker handed to the producer")
TICKER_TICKS_DELIVERED = Counter("maskwatch_ticker_ticks_delivered", "Ticks the broker acknowledged")
TICKER_TICKS_FAILED = Counter("maskwatch_ticker_ticks_failed",
                              "Ticks lost: not delivered, or dropped with the producer queue full")
TICKER_TICKS_SKIPPED = Counter("maskwatch_ticker_ticks_skipped",
                               "Tick slots skipped because the ticker was stalled past them")
TICKER_REFRESHES = Counter("maskwatch_ticker_registry_refreshes",
                           "Camera registry reads, by outcome (ok, error)",
                           ["outcome"])
TICKER_CAMERAS = Gauge("maskwatch_ticker_cameras", "Cameras the ticker is scheduling")

# --- notifier ---------------------------------------------------------------------------------------
NOTIFY_POSTS = Counter("maskwatch_notify_posts", "Alerts handled per destination, by outcome",
                       ["destination", "outcome"])
NOTIFY_DEAD_LETTERS = Counter("maskwatch_notify_dead_letters", "Records sent to the dead-letter topic",
                              ["stage"])

_lock = threading.Lock()
_serving: tuple[str, int] | None = None


def serve_metrics(port: int | None = None) -> int | None:
    """Serve ``/metrics`` on ``port`` (default ``MASKWATCH_METRICS_PORT``); returns the port, or None if off.

    Binds 127.0.0.1 unless ``MASKWATCH_METRICS_HOST`` says otherwise (``0.0.0.0`` in a container that
    Prometheus scrapes from outside). Unset or 0 means off. Idempotent: a second call in the same process
    returns the port already served (a process exports one registry, so one endpoint is enough). A port
    that cannot be bound is logged as an error and the process goes on without metrics (None)."""
    global _serving
    settings = Settings()
    if port is None:
        port = settings.metrics_port
    if not port:
        return None
    host = settings.metrics_host
    with _lock:
        if _serving is not None:
            if _serving != (host, port):
                log.warning("metrics already served on %s:%d; not also on %s:%d", *_serving, host, port)
            return _serving[1]
        try:
            start_http_server(port, addr=host)
        except OSError as exc:
            # Metrics are not worth stopping the job for (e.g. `maskwatch up` with one port set for all).
            log.error("cannot serve metrics on %s:%d (%s); running without them. Give each process on a "
                      "host its own MASKWATCH_METRICS_PORT", host, port, exc)
            return None
        _serving = (host, port)
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)
    return port
