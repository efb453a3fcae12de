"""Dashboard query benchmark: seed ~10 million detections, then time every page's queries (uncached).

    .venv/bin/python bench/bench_dashboard.py                 # embedded store server in a temp dir
    .venv/bin/python bench/bench_dashboard.py --store-url http://host:8123/?database=bench   # a real server

Prints a table (median / max milliseconds over --repeat runs per query) and writes the figures as JSON to
bench/results/dashboard-<UTC time>.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import click

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.dashboards import queries
from maskwatch.dashboards.queries import Scope
from maskwatch.dashboards.seed import seed

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def page_queries(settings: Settings, end: datetime) -> list[tuple[str, str, Callable[[], Any]]]:
    """(page, query, call) for what each page runs on a visit, over several ranges and one filter."""
    day = Scope(start=end - timedelta(days=1), end=end)
    week = replace(day, start=end - timedelta(days=7))
    month = replace(day, start=end - timedelta(days=30))
    one_site = replace(week, sites=("downtown",))
    newest = queries.alerts(settings, day, limit=1)
    alert_id = newest["alert_id"][0] if newest.height else ""
    calls: list[tuple[str, str, Callable[[], Any]]] = []
    for label, scope in (("24h", day), ("7d", week), ("30d", month), ("7d, 1 site", one_site)):
        calls += [
            ("overview", f"kpis {label}", partial(queries.kpis, settings, scope)),
            ("overview", f"timeseries {label}",
             partial(queries.timeseries, settings, scope, queries.auto_bucket(scope))),
        ]
    for label, scope in (("7d", week), ("30d", month)):
        calls += [
            ("patterns", f"heatmap {label}", partial(queries.heatmap, settings, scope)),
            ("patterns", f"leaderboard cameras {label}",
             partial(queries.leaderboard, settings, scope, "camera")),
            ("patterns", f"leaderboard zones {label}", partial(queries.leaderboard, settings, scope, "zone")),
        ]
    calls += [
        ("cameras", "camera status 24h", lambda: queries.camera_status(settings, day)),
        ("cameras", "camera status 7d", lambda: queries.camera_status(settings, week)),
        ("alerts", "feed 24h", lambda: queries.alerts(settings, day)),
        ("alerts", "feed 7d, unacknowledged", lambda: queries.alerts(settings, week, True)),
        ("alerts", "alert detail", lambda: queries.alert(settings, alert_id)),
        ("alerts", "alert frames", lambda: queries.alert_frames(settings, alert_id)),
        ("downloads", "detections 24h (≤200k rows)", lambda: queries.download(settings, day, "detections")),
        ("downloads", "alerts 30d", lambda: queries.download(settings, month, "alerts")),
        ("sidebar", "registry", lambda: queries.cameras(settings)),
    ]
    return calls


def timed(call: Callable[[], Any], repeat: int) -> tuple[list[float], int]:
    rows = 0
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = call()
        times.append((time.perf_counter() - start) * 1000)
        rows = getattr(result, "height", 0)
    return times, rows


@click.command()
@click.option("--store-url", default=None,
              help="Use this store (default: an embedded store server in a temp dir).")
@click.option("--detections", "target", default=10_000_000, show_default=True, type=int)
@click.option("--cameras", "n_cameras", default=100, show_default=True, type=int)
@click.option("--days", default=30, show_default=True, type=int)
@click.option("--repeat", default=5, show_default=True, type=int)
def main(store_url: str | None, target: int, n_cameras: int, days: int, repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp:
        server = None
        if store_url is None:
            from maskwatch.devservices.store import StoreService
            from maskwatch.ports import free_port

            server = StoreService(home=Path(tmp), port=free_port(), data_dir=Path(tmp) / "chdb")
            server.start()
            store_url = f"{server.url}/?database=bench"
            if server.credential.is_file():  # the password it made (none was configured)
                os.environ["MASKWATCH_STORE_PASSWORD_FILE"] = str(server.credential)
        os.environ["MASKWATCH_STORE_URL"] = store_url
        os.environ["MASKWATCH_HOME"] = str(Path(tmp) / "home")
        try:
            run(Settings(), target, n_cameras, days, repeat)
        finally:
            store.close_clients()
            if server is not None:
                server.stop()


def run(settings: Settings, target: int, n_cameras: int, days: int, repeat: int) -> None:
    store.migrate(settings)
    # ~1.66 faces a frame at crowd=3 (measured), so this many ticks land near the target.
    interval_s = n_cameras * days * 86400 * 1.66 / target
    started = time.perf_counter()
    seeded = seed(settings, n_cameras=n_cameras, days=days, interval_s=interval_s, crowd=3.0,
                  alert_min_nomask=5)
    seed_s = time.perf_counter() - started
    print(f"seeded {seeded.detections:,} detections, {seeded.frames:,} frames, {seeded.alerts:,} alerts "
          f"({n_cameras} cameras × {days} days, a tick every {interval_s:.1f} s) in {seed_s:.1f} s")
    results = []
    print(f"\n{'page':<10} {'query':<34} {'rows':>8} {'median ms':>10} {'max ms':>8}")
    for page, name, call in page_queries(settings, seeded.end + timedelta(minutes=1)):
        call()  # warm up (first-touch reads, client handshake)
        times, rows = timed(call, repeat)
        median = statistics.median(times)
        results.append({"page": page, "query": name, "rows": rows, "median_ms": round(median, 1),
                        "max_ms": round(max(times), 1), "runs": repeat})
        print(f"{page:<10} {name:<34} {rows:>8,} {median:>10.1f} {max(times):>8.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"dashboard-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({
        "store": "embedded store server (chdb over HTTP)" if "127.0.0.1" in settings.store_url else "server",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "seed": {"cameras": n_cameras, "days": days, "interval_s": round(interval_s, 2),
                 "detections": seeded.detections, "frames": seeded.frames, "alerts": seeded.alerts,
                 "seconds": round(seed_s, 1)},
        "queries": results,
    }, indent=2))
    print(f"\nwritten {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
