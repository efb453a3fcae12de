"""Prometheus metrics: the ticker process on the real broker serves /metrics whose counters match the ticks on
the topic; every series the Grafana dashboard queries is defined in maskwatch.metrics."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
from prometheus_client.metrics import MetricWrapperBase

from maskwatch import kafka, metrics, store
from maskwatch.cameras import registry
from maskwatch.config import Settings
from maskwatch.ports import free_port
from maskwatch.schemas.events import Camera, Tick
from maskwatch.schemas.parse import parse_event
from maskwatch.topics import ensure_topics

from tests.flowkit import metric_values

pytestmark = pytest.mark.without_models

REPO_ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")
GRAFANA = REPO_ROOT / "docker" / "grafana" / "maskwatch.json"


def _exported_series() -> set[str]:
    """Every series name maskwatch.metrics exports (counter -> _total, histogram -> _bucket/_sum/_count)."""
    names: set[str] = set()
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                        "gauge": ("",)}[family.type]
            names.update(family.name + suffix for suffix in suffixes)
    return names


def _queried_series() -> set[str]:
    text = GRAFANA.read_text()
    dashboard = json.loads(text)
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard.get("templating", {}).get("list", []) if "definition" in v]
    return {name for expr in exprs for name in re.findall(r"\bmaskwatch_[a-z0-9_]+", expr)}


def test_every_series_the_grafana_dashboard_queries_is_defined() -> None:
    queried = _queried_series()
    assert {"maskwatch_ticker_ticks_total", "maskwatch_batch_size_bucket", "maskwatch_buffer_depth",
            "maskwatch_frames_failed_total"} <= queried  # the parse found the panels
    missing = queried - _exported_series()
    assert not missing, f"Grafana queries series nobody exports: {sorted(missing)}"


def _wait_for(predicate: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


def _consume(settings: Settings, expected: int, timeout: float = 60) -> list[Tick]:
    consumer = kafka.consumer(f"test-metrics-{uuid.uuid4().hex[:8]}", settings)
    consumer.subscribe([settings.topic_ticks])
    ticks: list[Tick] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(ticks) < expected:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                ticks.append(parse_event(Tick, msg.value() or b""))
        quiet = time.monotonic() + 1.0  # anything beyond the count would be a duplicate: drain briefly
        while time.monotonic() < quiet:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                ticks.append(parse_event(Tick, msg.value() or b""))
    finally:
        consumer.close()
    return ticks


def test_ticker_metrics_match_the_ticks_on_the_topic(mw_env: Settings) -> None:
    store.migrate(mw_env)
    ensure_topics(mw_env)
    for camera_id in ("m-fast", "m-slow"):
        registry.put_camera(Camera(id=camera_id, source_url="rtsp://admin:hunter2@10.0.0.7/live",
                                   interval_s=0.3 if camera_id == "m-fast" else 0.6))
    port = free_port()
    env = {**os.environ, "MASKWATCH_METRICS_PORT": str(port)}
    env.pop("MASKWATCH_METRICS_HOST", None)
    proc = subprocess.Popen([sys.executable, "-m", "maskwatch.cli", "ticker", "--refresh", "0.5"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        _wait_for(lambda: metric_values(port).get("maskwatch_ticker_ticks_delivered_total", 0) >= 6, 60,
                  "ticks delivered")
        running = metric_values(port)
        assert running["maskwatch_ticker_cameras"] == 2
        assert running["maskwatch_ticker_registry_refreshes_total{outcome=\"ok\"}"] >= 1
        # Bound to loopback only (MASKWATCH_METRICS_HOST unset): another interface address is refused.
        outward = _outward_address()
        if outward:
            with pytest.raises(OSError), socket.create_connection((outward, port), timeout=2):
                pass

        # Stop ticking (disable both), wait until the counters settle, then compare with the topic.
        for camera_id in ("m-fast", "m-slow"):
            registry.set_enabled(camera_id, False)
        _wait_for(lambda: metric_values(port)["maskwatch_ticker_cameras"] == 0, 30, "cameras unscheduled")

        def ticker_samples() -> dict[str, float]:
            return {k: v for k, v in metric_values(port).items() if k.startswith("maskwatch_ticker_ticks")}

        def settled() -> dict[str, float]:
            first = ticker_samples()
            time.sleep(1.0)
            second = ticker_samples()
            done = second["maskwatch_ticker_ticks_delivered_total"] == second["maskwatch_ticker_ticks_total"]
            return second if first == second and done else {}

        final = _wait_for(settled, 30, "counters to settle")
        ticks = _consume(mw_env, int(final["maskwatch_ticker_ticks_total"]))
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    emitted = final["maskwatch_ticker_ticks_total"]
    assert emitted >= 6
    assert len(ticks) == emitted == final["maskwatch_ticker_ticks_delivered_total"]
    assert len({t.tick_id for t in ticks}) == len(ticks)
    assert {t.camera_id for t in ticks} == {"m-fast", "m-slow"}
    assert final["maskwatch_ticker_ticks_failed_total"] == 0
    assert final["maskwatch_ticker_ticks_skipped_total"] == 0
    assert proc.returncode == 0, output
    assert f"127.0.0.1:{port}/metrics" in output and "hunter2" not in output


def _outward_address() -> str | None:
    """A non-loopback address of this host, if it has one (to show the endpoint is not reachable on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_serve_metrics_is_off_by_default_and_rejects_a_bad_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASKWATCH_METRICS_PORT", raising=False)
    assert metrics.serve_metrics() is None
    monkeypatch.setenv("MASKWATCH_METRICS_PORT", "0")
    assert metrics.serve_metrics() is None
    monkeypatch.setenv("MASKWATCH_METRICS_PORT", "metrics")
    with pytest.raises(ValueError, match="MASKWATCH_METRICS_PORT='metrics'"):
        metrics.serve_metrics()


def test_a_busy_metrics_port_is_an_error_line_not_a_crash(caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "_serving", None)  # whatever else this test process served
    monkeypatch.delenv("MASKWATCH_METRICS_HOST", raising=False)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        assert metrics.serve_metrics(busy) is None
    assert any(f"cannot serve metrics on 127.0.0.1:{busy}" in r.getMessage() for r in caplog.records)


def test_serve_metrics_is_idempotent_in_a_process(tmp_path: Path) -> None:
    # Its own process: a served endpoint lives as long as the process.
    port = free_port()
    script = f"""
from maskwatch import metrics
assert metrics.serve_metrics({port}) == {port}
assert metrics.serve_metrics({port}) == {port}   # second call: no second server, no 'address in use'
metrics.ALERTS.inc(3)
import urllib.request
body = urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
print([line for line in body.splitlines() if line.startswith("maskwatch_alerts_total")][0])
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "maskwatch_alerts_total 3.0"
