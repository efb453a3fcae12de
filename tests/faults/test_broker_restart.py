"""The broker (durable: Tansu on SeaweedFS S3, as ``maskwatch services up --durable`` runs it) restarts
mid-stream: ticks produced before and after the restart are all processed once, the alert reaches the
topic once, the flow rides it out without a restart of its own."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.devservices import manager
from maskwatch.ports import free_port

from tests.flowkit import (
    assert_rows_once,
    build_scenario,
    frame_counts,
    has_frames,
    opened,
    produce,
    read_topic,
    start_flow,
    stop,
    wait_for,
)
from tests.test_services import _free_s3_base

DOWN_S = 5


@pytest.fixture
def durable_services(tmp_path: Path, mw_env: Settings) -> Iterator[Settings]:
    """Broker + SeaweedFS + store of their own (``services up --durable``), stopped afterwards."""
    broker_port, store_port = free_port(), free_port()
    settings = mw_env.replace(home=tmp_path / "home", kafka_bootstrap=f"127.0.0.1:{broker_port}",
                                   store_url=f"http://127.0.0.1:{store_port}/?database=broker_restart")
    try:
        manager.up(settings, durable=True, broker_port=broker_port, store_port=store_port,
                   s3_port=_free_s3_base())
        yield settings
    finally:
        manager.down(settings)


@pytest.mark.slow
def test_durable_broker_restart_mid_stream(tmp_path: Path, durable_services: Settings, dataset_dir: Path,
                                           hanging_camera: str, fault_figures: Callable[..., None]) -> None:
    settings = durable_services
    sc = build_scenario(tmp_path / "scenario", settings, dataset_dir, hanging_camera)
    cut = len(sc.ticks) // 2
    produce(settings, sc.ticks[:cut])
    log_path = tmp_path / "flow.log"
    proc = start_flow(sc.env, log_path)
    try:
        wait_for("the first frames", lambda: sum(frame_counts(settings).values()) >= 6, 120, proc, log_path)
        layout = manager.recorded_layout(settings.home)
        assert layout is not None and layout.durable
        broker = layout.broker(settings.home, layout.seaweed(settings.home))
        assert broker.stop()
        stopped = time.monotonic()
        time.sleep(DOWN_S)
        assert proc.poll() is None, "the flow died with the broker"
        broker.start()
        restarted = time.monotonic()
        produce(settings, sc.ticks[cut:])
        wait_for("every tick's frame row", has_frames(settings, sc.expected_frames), 150, proc, log_path)
        caught_up_s = time.monotonic() - restarted
        has_alert = lambda: bool(store.query_rows("SELECT 1 FROM alerts", settings=settings))  # noqa: E731
        wait_for("the alert row", has_alert, 60, proc, log_path)
        on_topic = read_topic(settings, settings.topic_alerts, 1)
        dead = read_topic(settings, settings.topic_dead_letter, 0, timeout=5)
        assert proc.poll() is None
    finally:
        stop(proc)
    dups, rows = assert_rows_once(settings, sc.expected_frames)
    assert len(opened(on_topic)) == 1
    fault_figures(fault=f"durable broker restart ({DOWN_S}s down) mid-stream", ticks=len(sc.ticks),
                  frames=rows,
                  broker_down_s=round(restarted - stopped, 1), restart_to_all_rows_s=round(caught_up_s, 1),
                  alerts_on_topic=len(on_topic), dead_letters=len(dead), duplicates=sum(dups.values()))
