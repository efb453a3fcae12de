"""End to end: `maskwatch dashboard run` as a subprocess over a seeded store, opened in a real headless
Chromium driven through the Chrome DevTools Protocol; the KPIs the browser shows must equal SQL."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from maskwatch import store
from maskwatch.config import Settings
from maskwatch.dashboards import seed
from maskwatch.ports import free_port

from tests.flowkit import dashboard_identity

pytestmark = pytest.mark.without_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Browser:
    """Just enough of the DevTools Protocol: navigate, evaluate JavaScript, take a screenshot."""

    def __init__(self, profile: Path):
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "--window-size=1600,1400", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        # Chromium writes the port it picked here, which avoids racing other tests for a port.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.load(response) if t["type"] == "page"]
        self.stack = contextlib.ExitStack()
        self.ws: ClientConnection = self.stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=64 * 2**20))
        self.ids = itertools.count(1)
        self.call("Emulation.setDeviceMetricsOverride", width=1600, height=1400, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self.ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result", {}))

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):  # the document may be mid-navigation
                value = self.js(expression)
                if value:
                    return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {expression!r}; page text: {self.text()[:2000]!r}")

    def text(self) -> str:
        return str(self.js("document.body ? document.body.innerText : ''") or "")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.stack.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture
def seeded_env(
    store_server: Any, tmp_path: Path, dataset_dir: Path
) -> Iterator[tuple[Settings, dict[str, str]]]:
    env = {
        "MASKWATCH_HOME": str(tmp_path / "home"),
        "MASKWATCH_STORE_URL": f"{store_server.url}/?database=t_{uuid.uuid4().hex}",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        settings = Settings()
        store.migrate(settings)
        seed.seed(settings, n_cameras=6, days=3, dataset_dir=dataset_dir)
        yield settings, env
        store.close_clients()


@pytest.fixture
def dashboard(seeded_env: tuple[Settings, dict[str, str]], tmp_path: Path) -> Iterator[str]:
    _, env = seeded_env
    port = free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskwatch.cli", "dashboard", "run", "--port", str(port)],
        # As it runs in production: as the store's read-mostly dashboard user.
        env={**os.environ, **env, **dashboard_identity(env["MASKWATCH_STORE_URL"])}, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"dashboard did not start: {(tmp_path / 'dashboard.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed (bin/dev test installs Debian's chromium)", pytrace=False)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    instance = Browser(profile)
    try:
        yield instance
    finally:
        instance.close()


METRICS_JS = """
Array.from(document.querySelectorAll('[data-testid="stMetric"]')).map(m => [
  (m.querySelector('[data-testid="stMetricLabel"]') || {innerText: ''}).innerText.trim(),
  (m.querySelector('[data-testid="stMetricValue"]') || {innerText: ''}).innerText.trim()])
"""
CHARTS_JS = """
(() => { const charts = document.querySelectorAll('[data-testid="stVegaLiteChart"]');
  const drawn = Array.from(charts).every(c => c.querySelector('canvas, svg'));
  return charts.length >= 2 && drawn ? charts.length : 0;
})()
"""


def test_dashboard_in_a_real_browser(
    dashboard: str, browser: Browser, seeded_env: tuple[Settings, dict[str, str]], tmp_path: Path
) -> None:
    settings, _ = seeded_env
    browser.call("Page.enable")
    browser.call("Page.navigate", url=dashboard)
    browser.wait_for("document.querySelectorAll('[data-testid=\"stMetricValue\"]').length >= 5")
    assert browser.wait_for(CHARTS_JS) >= 2
    time.sleep(1.0)  # let the charts finish drawing before the screenshot
    shot = tmp_path / "overview.png"
    browser.screenshot(shot)
    assert shot.stat().st_size > 20_000

    shown = dict(browser.js(METRICS_JS))
    caption = browser.text()
    assert "Mask compliance" in caption
    # The range the page used is in its caption ("Wed 25 Nov 2026 10:02 → Thu 26 Nov 2026 10:02 UTC").
    start_ms, end_ms = _range_from_text(caption)
    row = store.query_rows(
        "SELECT count() AS faces, countIf(nomask) AS nomask FROM detections FINAL "
        "WHERE scheduled_at >= fromUnixTimestamp64Milli({s:Int64}, 'UTC') "
        "AND scheduled_at < fromUnixTimestamp64Milli({e:Int64}, 'UTC')",
        {"s": start_ms, "e": end_ms}, settings,
    )[0]
    alerts = store.query_rows(
        "SELECT count() AS n FROM alerts FINAL "
        "WHERE triggered_at >= fromUnixTimestamp64Milli({s:Int64}, 'UTC') "
        "AND triggered_at < fromUnixTimestamp64Milli({e:Int64}, 'UTC')",
        {"s": start_ms, "e": end_ms}, settings,
    )[0]["n"]
    assert row["faces"] > 0
    assert shown["Faces seen"] == f"{row['faces']:,}"
    assert shown["No-mask sightings"] == f"{row['nomask']:,}"
    assert shown["Compliance"] == f"{(row['faces'] - row['nomask']) / row['faces']:.1%}"
    assert shown["Alerts"] == f"{alerts:,}"

    # Cameras page: the registry is listed, credentials are not.
    browser.call("Page.navigate", url=f"{dashboard}/cameras")
    browser.wait_for("document.body.innerText.includes('Down now')")
    browser.wait_for("document.querySelectorAll('[data-testid=\"stDataFrame\"]').length >= 1")
    text = browser.text()
    html = browser.js("document.documentElement.outerHTML")
    assert "cam-001" in text
    # The seeded outage of the first camera shows as its changes: degraded, then down.
    browser.wait_for("document.body.innerText.includes('Health changes')")
    browser.wait_for("document.querySelectorAll('[data-testid=\"stDataFrame\"]').length >= 2")
    for secret in ("s3cret", "pw-7-"):
        assert secret not in html
    browser.screenshot(tmp_path / "cameras.png")

    # Every other page renders without an exception; the alert's annotated snapshot loads as an image.
    for path, title, ready in (
        ("patterns", "Patterns", "document.querySelectorAll('[data-testid=\"stVegaLiteChart\"] canvas, "
                                 "[data-testid=\"stVegaLiteChart\"] svg').length >= 1"),
        ("alerts", "Alert detail", "Array.from(document.querySelectorAll('[data-testid=\"stImage\"] img'))"
                                   ".some(i => i.complete && i.naturalWidth > 100)"),
        ("manage", "Manage cameras", "document.body.innerText.includes('Save camera')"),
        ("downloads", "Downloads", "document.body.innerText.includes('Download CSV')"),
    ):
        browser.call("Page.navigate", url=f"{dashboard}/{path}")
        browser.wait_for(f"document.body.innerText.includes({title!r})")
        browser.wait_for(ready)
        assert not browser.js("document.querySelectorAll('[data-testid=\"stException\"]').length")
        assert "Cannot read the store" not in browser.text()
        browser.screenshot(tmp_path / f"{path}.png")
        if path == "alerts":
            _live_feed_shows_new_alert(browser, settings)


def _live_feed_shows_new_alert(browser: Browser, settings: Settings) -> None:
    """An alert written after the page loaded appears in the feed by itself (no reload, no click)."""
    now = datetime.now(UTC)
    marker = f"live-{uuid.uuid4().hex[:8]}"
    store.insert_rows("alerts", [{
        "schema_version": 1, "alert_id": marker, "camera_id": "cam-002", "site": "south-campus",
        "zone": "entrance", "rule": ">=3 no-mask faces in 600s", "triggered_at": now,
        "window_start": now - timedelta(minutes=10), "window_end": now, "faces": 9, "nomask_faces": 4,
        "nomask_ratio": 0.5, "tick_ids": [], "snapshot_path": "", "message": f"{marker} at the gate",
    }], settings)
    # The feed's grid is drawn on a canvas; the line above it names the newest alert.
    browser.wait_for(f"document.body.innerText.includes('{marker} at the gate')", timeout=45)


def _range_from_text(text: str) -> tuple[int, int]:
    import re

    stamp = r"\w{3} (\d{2} \w{3} \d{4} \d{2}:\d{2})"
    match = re.search(f"{stamp} → {stamp} UTC", text)
    assert match, f"no time range in page text: {text[:500]!r}"
    start, end = (datetime.strptime(g, "%d %b %Y %H:%M").replace(tzinfo=UTC) for g in match.groups())
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)
