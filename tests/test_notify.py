"""The notifier against a real Tansu broker and a real local HTTP server that records every webhook post."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import TopicPartition

from maskwatch import kafka
from maskwatch.config import Settings
from maskwatch.notify.config import NotifyConfig, NotifyConfigError, RateLimit, load_config
from maskwatch.notify.delivery import TokenBucket
from maskwatch.notify.messages import slack_text, teams_text
from maskwatch.notify.service import Notifier, NotifyStats
from maskwatch.schemas.events import Alert, AlertEvent, CameraHealthEvent, DeadLetter
from maskwatch.schemas.parse import parse_event
from maskwatch.topics import ensure_topics

from tests.flowkit import alert_event

pytestmark = pytest.mark.without_models

REPO_ROOT = Path(__file__).resolve().parents[1]
SECRET = "T0SECRET/B0SECRET/xoxSECRETxyz"  # the secret part of a Slack-style webhook path
FAST_RETRY = {"attempts": 4, "base_delay_s": 0.05, "max_delay_s": 0.2, "timeout_s": 5}


@dataclass
class Post:
    path: str
    body: dict[str, Any]  # the JSON body ({} for a multipart post)
    at: float
    headers: dict[str, str]
    raw: bytes


class Hooks:
    """A webhook receiver on 127.0.0.1 (free port): records posts; ``script[path]`` lists statuses to return
    before answering 200."""

    def __init__(self) -> None:
        self.posts: list[Post] = []
        self.requests: dict[str, int] = {}
        self.script: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hooks.lock:
                    hooks.requests[self.path] = hooks.requests.get(self.path, 0) + 1
                    queued = hooks.script.get(self.path)
                    status = queued.pop(0) if queued else 200
                    if status == 200:
                        is_json = self.headers.get("Content-Type", "").startswith("application/json")
                        hooks.posts.append(Post(self.path, json.loads(body) if is_json else {},
                                                time.monotonic(), dict(self.headers.items()), body))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self, path: str) -> list[Post]:
        with self.lock:
            return [p for p in self.posts if p.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 30.0) -> list[Post]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.received(path)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{path}: {len(self.received(path))} posts after {timeout}s, {count} expected")


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    server = Hooks()
    yield server
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def settings(mw_env: Settings) -> Settings:
    ensure_topics(mw_env)
    return mw_env


def make_alert(n: int = 0, camera: str = "cam-1", site: str = "hq", zone: str = "lobby",
               kind: str = "opened") -> AlertEvent:
    """Alert ``n`` opened (contract v2): 3 no-mask people, 3 no-mask faces of 5."""
    event: AlertEvent = alert_event(n, camera, kind, site=site, zone=zone, nomask_faces=3, faces=5,
                                    message="3 of 5 faces without a mask")
    return event


def produce(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    producer = kafka.producer(settings, linger_ms=0)
    for key, value in records:
        producer.produce(settings.topic_alerts, key=key.encode(), value=value)
    assert producer.flush(30) == 0


def alert_record(alert: AlertEvent | Alert) -> tuple[str, bytes]:
    return alert.camera_id, alert.model_dump_json().encode()


class Running:
    """A notifier in a thread of the test process, stopped (as by SIGTERM) on exit."""

    def __init__(self, notifier: Notifier):
        self.notifier = notifier
        self.stop = threading.Event()
        self.result: NotifyStats | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.result = self.notifier.run(self.stop)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "notifier did not stop within 30 s"

    def wait(self, condition: Callable[[NotifyStats], bool], timeout: float = 30.0) -> NotifyStats:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self.notifier.stats):
                return self.notifier.stats
            time.sleep(0.05)
        raise AssertionError(f"condition not met within {timeout}s: {self.notifier.stats}")


def notifier(settings: Settings, tmp_path: Path, destinations: list[dict[str, Any]],
             group: str | None = None, retry: dict[str, Any] | None = None) -> Notifier:
    config = NotifyConfig.model_validate({"destinations": destinations, "retry": retry or FAST_RETRY})
    return Notifier(config, settings, group_id=group or f"notify-{uuid.uuid4().hex[:8]}",
                    state_path=tmp_path / "delivered.sqlite")


def committed_offset(settings: Settings, group: str) -> int:
    consumer = kafka.consumer(group, settings, enable_auto_commit=False)
    try:
        [tp] = consumer.committed([TopicPartition(settings.topic_alerts, 0)], timeout=20)
        return int(tp.offset)
    finally:
        consumer.close()


def dead_letters(settings: Settings, expected: int, timeout: float = 30.0) -> list[DeadLetter]:
    consumer = kafka.consumer(f"dlq-{uuid.uuid4().hex[:8]}", settings)
    consumer.subscribe([settings.topic_dead_letter])
    records: list[DeadLetter] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(records) < expected:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                records.append(parse_event(DeadLetter, msg.value() or b""))
        quiet = time.monotonic() + 1.0  # anything beyond `expected` would be a stray record
        while time.monotonic() < quiet:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                records.append(parse_event(DeadLetter, msg.value() or b""))
    finally:
        consumer.close()
    return records


def test_one_post_per_destination_in_its_format(settings: Settings, hooks: Hooks, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    secret_file = tmp_path / "slack-url"
    secret_file.write_text(f"{hooks.base}/slack/{SECRET}\n")
    monkeypatch.setenv("TEST_SLACK_URL_FILE", str(secret_file))  # as a Docker/Kubernetes secret file
    group = f"notify-{uuid.uuid4().hex[:8]}"
    alert = make_alert()
    other_site = make_alert(1, camera="cam-9", site="warehouse")
    produce(settings, [alert_record(alert), alert_record(other_site)])
    destinations: list[dict[str, Any]] = [
        {"name": "slack", "url_env": "TEST_SLACK_URL", "format": "slack", "sites": ["hq"]},
        {"name": "teams", "url": f"{hooks.base}/teams", "format": "teams", "cameras": ["cam-1"]},
        {"name": "audit", "url": f"{hooks.base}/generic", "format": "generic"},
    ]
    caplog.set_level(logging.DEBUG)
    with Running(notifier(settings, tmp_path, destinations, group)) as running:
        stats = running.wait(lambda s: s.alerts == 2 and s.posted == 4)
        time.sleep(1.0)  # room for a stray second post
    assert stats.failed == 0 and stats.duplicates == 0 and stats.invalid == 0

    [slack] = hooks.received(f"/slack/{SECRET}")
    assert isinstance(slack.body["text"], str) and "hq / lobby / Lobby door" in slack.body["text"]
    assert [b["type"] for b in slack.body["blocks"]] == ["header", "section", "context"]
    fields = " ".join(f["text"] for f in slack.body["blocks"][1]["fields"])
    assert slack_text(alert.alert_id) in fields and "3 no-mask of 5 faces" in fields
    assert len(slack.body["blocks"][1]["fields"]) <= 10

    [teams] = hooks.received("/teams")
    card = adaptive_card(teams.body)
    facts = {f["title"]: f["value"] for f in card["body"][2]["facts"]}
    assert facts["Camera"] == "cam-1" and facts["Alert id"] == teams_text(alert.alert_id)

    generic = hooks.received("/generic")
    assert sorted(parse_event(AlertEvent, json.dumps(p.body)).alert_id for p in generic) == sorted(
        [alert.alert_id, other_site.alert_id])
    assert parse_event(AlertEvent, json.dumps(generic[0].body)) in (alert, other_site)

    assert committed_offset(settings, group) == 2, "both alerts committed after delivery"
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "delivered" in logged and "127.0.0.1" in logged
    assert "SECRET" not in logged, "the webhook path (the secret) must never be logged"


def test_retries_with_backoff_until_the_destination_recovers(settings: Settings, hooks: Hooks,
                                                            tmp_path: Path) -> None:
    hooks.script["/flaky"] = [500, 503]
    produce(settings, [alert_record(make_alert())])
    destinations = [{"name": "flaky", "url": f"{hooks.base}/flaky"},
                    {"name": "steady", "url": f"{hooks.base}/steady"}]
    with Running(notifier(settings, tmp_path, destinations)) as running:
        stats = running.wait(lambda s: s.posted == 2)
        time.sleep(0.5)
    assert hooks.requests["/flaky"] == 3, "two failures, then the successful try; nothing after it"
    assert len(hooks.received("/flaky")) == 1 and len(hooks.received("/steady")) == 1
    assert stats.retries == 2 and stats.failed == 0


def test_redelivered_or_republished_alert_is_not_posted_twice(settings: Settings, hooks: Hooks,
                                                             tmp_path: Path) -> None:
    first, second = make_alert(0), make_alert(1)
    produce(settings, [alert_record(first), alert_record(first)])  # the flow re-published it
    destinations = [{"name": "a", "url": f"{hooks.base}/a"}, {"name": "b", "url": f"{hooks.base}/b"}]
    group = f"notify-{uuid.uuid4().hex[:8]}"
    with Running(notifier(settings, tmp_path, destinations, group)) as running:
        stats = running.wait(lambda s: s.alerts == 2)
    assert (stats.posted, stats.duplicates) == (2, 2)

    # Offsets lost (a new group reads the topic from the start): everything is redelivered, nothing posted.
    produce(settings, [alert_record(second)])
    with Running(notifier(settings, tmp_path, destinations)) as running:
        stats = running.wait(lambda s: s.alerts == 3)
    assert (stats.posted, stats.duplicates) == (2, 4), "only the new alert is posted, to both destinations"

    # Restart in the original group: it resumes after its committed offset (2) and sees only `second`.
    with Running(notifier(settings, tmp_path, destinations, group)) as running:
        stats = running.wait(lambda s: s.alerts == 1)
        time.sleep(1.0)
    assert stats.alerts == 1 and stats.duplicates == 2 and stats.posted == 0
    for path in ("/a", "/b"):
        ids = [p.body["alert_id"] for p in hooks.received(path)]
        assert sorted(ids) == sorted([first.alert_id, second.alert_id]), path


def test_stopped_mid_retry_leaves_the_alert_uncommitted_and_finishes_after_restart(
        settings: Settings, hooks: Hooks, tmp_path: Path) -> None:
    hooks.script["/b"] = [503] * 3
    alert = make_alert()
    produce(settings, [alert_record(alert)])
    destinations = [{"name": "a", "url": f"{hooks.base}/a"}, {"name": "b", "url": f"{hooks.base}/b"}]
    slow_retry = {"attempts": 10, "base_delay_s": 30, "max_delay_s": 60, "timeout_s": 5}
    group = f"notify-{uuid.uuid4().hex[:8]}"
    with Running(notifier(settings, tmp_path, destinations, group, retry=slow_retry)) as running:
        hooks.wait_for("/a", 1)
        deadline = time.monotonic() + 30
        while hooks.requests.get("/b", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        # Now waiting 30 s before retrying /b: SIGTERM-like stop interrupts the wait.
        started = time.monotonic()
    assert time.monotonic() - started < 10, "the backoff wait is interruptible"
    assert running.result is not None and running.result.posted == 1
    assert committed_offset(settings, group) < 1, "not committed: /b never got it"

    hooks.script["/b"] = []
    with Running(notifier(settings, tmp_path, destinations, group)) as running:
        stats = running.wait(lambda s: s.posted == 1 and s.duplicates == 1)
    assert len(hooks.received("/a")) == 1, "a got it before the restart and is not posted again"
    assert [p.body["alert_id"] for p in hooks.received("/b")] == [alert.alert_id]
    assert committed_offset(settings, group) == 1 and stats.failed == 0


def test_rate_limit_caps_posts_per_interval(settings: Settings, hooks: Hooks, tmp_path: Path) -> None:
    burst, per_minute, total = 2, 120.0, 7  # 2 back to back, then one every 0.5 s
    produce(settings, [alert_record(make_alert(n)) for n in range(total)])
    destinations: list[dict[str, Any]] = [{"name": "limited", "url": f"{hooks.base}/limited",
                     "rate": {"per_minute": per_minute, "burst": burst}},
                    {"name": "free", "url": f"{hooks.base}/free", "rate": {"per_minute": 6000, "burst": 100}}]
    with Running(notifier(settings, tmp_path, destinations)):
        limited = hooks.wait_for("/limited", total)
    times = [p.at for p in limited]
    rate = per_minute / 60
    # In any stretch of the run, no more posts than the bucket holds plus what it refilled (0.1 s slack for
    # the gap between taking a token and the server seeing the request).
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = burst + rate * (times[j] - times[i] + 0.1)
            assert j - i + 1 <= allowed, f"posts {i}..{j}: {j - i + 1} in {times[j] - times[i]:.2f}s"
    first = times[0]
    assert sum(t - first < 0.4 for t in times) <= burst
    assert len(hooks.received("/free")) == total


def test_malformed_records_go_to_the_dead_letter_topic(settings: Settings, hooks: Hooks,
                                                       tmp_path: Path) -> None:
    good = make_alert()
    bad_camera = good.model_dump(mode="json") | {"camera_id": "bad:id", "alert_id": "x"}
    missing = {k: v for k, v in good.model_dump(mode="json").items() if k != "window_start"}
    produce(settings, [("k1", b"\xff not json"), ("k2", json.dumps(bad_camera).encode()),
                       ("k3", json.dumps(missing).encode()), alert_record(good)])
    group = f"notify-{uuid.uuid4().hex[:8]}"
    with Running(notifier(settings, tmp_path, [{"name": "a", "url": f"{hooks.base}/a"}], group)) as running:
        stats = running.wait(lambda s: s.posted == 1 and s.invalid == 3)
    assert [p.body["alert_id"] for p in hooks.received("/a")] == [good.alert_id]
    records = dead_letters(settings, 3)
    assert len(records) == 3
    by_key = {r.key: r for r in records}
    assert set(by_key) == {"k1", "k2", "k3"}
    assert all(r.stage == "notify_parse" and r.topic == settings.topic_alerts for r in records)
    assert "not valid JSON" in by_key["k1"].error
    assert "alert_event.camera_id" in by_key["k2"].error
    assert "alert_event.window_start" in by_key["k3"].error and "required" in by_key["k3"].error
    assert json.loads(by_key["k3"].payload) == missing, "the original record is kept"
    assert sorted(r.offset for r in records) == [0, 1, 2]
    assert committed_offset(settings, group) == 4
    assert stats.failed == 0


def test_permanent_failure_and_exhausted_retries_are_dead_lettered(settings: Settings, hooks: Hooks,
                                                                   tmp_path: Path) -> None:
    hooks.script[f"/gone/{SECRET}"] = [404] * 10
    hooks.script["/down"] = [503] * 10
    alert = make_alert()
    produce(settings, [alert_record(alert)])
    destinations = [{"name": "gone", "url": f"{hooks.base}/gone/{SECRET}"},
                    {"name": "down", "url": f"{hooks.base}/down"},
                    {"name": "ok", "url": f"{hooks.base}/ok"}]
    group = f"notify-{uuid.uuid4().hex[:8]}"
    with Running(notifier(settings, tmp_path, destinations, group)) as running:
        running.wait(lambda s: s.failed == 2 and s.posted == 1)
    assert hooks.requests[f"/gone/{SECRET}"] == 1, "a 404 is not retried"
    assert hooks.requests["/down"] == FAST_RETRY["attempts"]
    records = {r.stage: r for r in dead_letters(settings, 2)}
    assert set(records) == {"notify:gone", "notify:down"}
    assert "HTTP 404" in records["notify:gone"].error and "SECRET" not in records["notify:gone"].error
    assert "4 tries" in records["notify:down"].error and "HTTP 503" in records["notify:down"].error
    assert parse_event(AlertEvent, records["notify:down"].payload) == alert
    assert committed_offset(settings, group) == 1


def test_token_bucket_counts() -> None:
    now = [100.0]
    bucket = TokenBucket(RateLimit(per_minute=30, burst=3), clock=lambda: now[0])
    taken = 0
    while bucket.wait_time() == 0:
        bucket.take()
        taken += 1
    assert taken == 3
    assert bucket.wait_time() == pytest.approx(2.0)  # 0.5 tokens/s
    now[0] += 10.0  # refills 5, capped at the burst
    taken = 0
    while bucket.wait_time() == 0:
        bucket.take()
        taken += 1
    assert taken == 3


def _write_config(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_config_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOPE_URL", raising=False)
    monkeypatch.delenv("NOPE_URL_FILE", raising=False)
    cases = {
        "missing env": ({"destinations": [{"name": "s", "url_env": "NOPE_URL"}]},
                        "url_env NOPE_URL is not set"),
        "no url": ({"destinations": [{"name": "s"}]}, "exactly one of url or url_env"),
        "bad format": ({"destinations": [{"name": "s", "url": "http://h/x", "format": "fax"}]},
                       "destinations.0.format"),
        "email with a url": ({"destinations": [{"name": "s", "url": "http://h/x", "format": "email"}]},
                             "an email destination takes smtp"),
        "telegram without chat": ({"destinations": [{"name": "t", "url": "https://h/bot1:pw/sendMessage",
                                                     "format": "telegram"}]}, "chat_id is required"),
        "hmac on slack": ({"destinations": [{"name": "s", "url": "https://h/x", "format": "slack",
                                             "hmac_secret_env": "X"}]}, "signs generic webhooks only"),
        "missing hmac secret": ({"destinations": [{"name": "s", "url": "https://h/x",
                                                   "hmac_secret_env": "NOPE_URL"}]},
                                "hmac_secret_env NOPE_URL is not set"),
        "bad address": ({"destinations": [{"name": "m", "format": "email", "smtp": {
            "host": "smtp.example", "sender": "a@b.example", "to": ["not an address"]}}]}, "smtp.to.0"),
        "bad scheme": ({"destinations": [{"name": "s", "url": "ftp://u:pw@h/x"}]}, "must be http(s)"),
        "bad port": ({"destinations": [{"name": "s", "url": "https://h:99999/pw"}]}, "invalid port"),
        "dupes": ({"destinations": [{"name": "s", "url": "http://h/1"}, {"name": "s", "url": "http://h/2"}]},
                  "repeated: s"),
        "empty": ({"destinations": []}, "destinations"),
        "unknown key": ({"destinations": [{"name": "s", "url": "http://h/1", "rate_limit": 3}]},
                        "rate_limit"),
        "yaml": ("destinations: [\n", "not valid YAML"),
    }
    for label, (data, expected) in cases.items():
        path = _write_config(tmp_path / f"{label.replace(' ', '_')}.yaml", data)
        with pytest.raises(NotifyConfigError) as info:
            load_config(path)
        assert expected in str(info.value), (label, str(info.value))
        assert str(path) in str(info.value)
        assert "pw" not in str(info.value)
    with pytest.raises(NotifyConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_cli_check_and_graceful_sigterm(settings: Settings, hooks: Hooks, tmp_path: Path) -> None:
    config = _write_config(tmp_path / "notify.yaml", {
        "destinations": [{"name": "ops", "url_env": "OPS_WEBHOOK", "format": "slack"}]})
    env = {**os.environ, "OPS_WEBHOOK": f"{hooks.base}/ops/{SECRET}", "MASKWATCH_NOTIFY_CONFIG": str(config),
           "MASKWATCH_NOTIFY_STATE": str(tmp_path / "state.sqlite")}
    cli = [sys.executable, "-m", "maskwatch.cli", "notify"]
    check = subprocess.run([*cli, "--check"], env=env, capture_output=True, text=True, timeout=60,
                           cwd=REPO_ROOT)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == f"ops: slack -> {hooks.base}"

    bad = subprocess.run([*cli, "--check"], env={**env, "OPS_WEBHOOK": "ftp://x"}, capture_output=True,
                         text=True, timeout=60, cwd=REPO_ROOT)
    assert bad.returncode != 0 and "must be http(s)" in bad.stderr

    produce(settings, [alert_record(make_alert())])
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO_ROOT)
    try:
        hooks.wait_for(f"/ops/{SECRET}", 1, timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "notifier stopped" in out and "posted=1" in out
    assert "SECRET" not in out


class RawHook:
    """A loopback 'webhook' that answers every request with the same raw bytes, then closes."""

    def __init__(self, answer: bytes) -> None:
        import socket

        self.answer = answer
        self.hits = 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    conn.recv(65536)
                    self.hits += 1
                    conn.sendall(self.answer)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


def test_redirects_are_never_followed_and_malformed_answers_are_failed_attempts(
    settings: Settings, hooks: Hooks, tmp_path: Path
) -> None:
    """A webhook that redirects (to the store server, say) or answers garbage: no redirect is followed,
    nothing crashes, each bad answer is a failed attempt (retried, then dead-lettered), and the alert still
    reaches the healthy destination once."""
    redirect = RawHook(f"HTTP/1.1 302 Found\r\nLocation: {hooks.base}/steal\r\nContent-Length: 0\r\n\r\n"
                       .encode())
    bad_status = RawHook(b"HTTP/1.1 abc\r\n\r\n")
    cut_short = RawHook(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
    huge_headers = RawHook(b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 200_000 + b"\r\n\r\n")
    odd_reason = RawHook(b"HTTP/1.1 500 <script>\x1b[31m" + b"!" * 5000 + b"\r\nContent-Length: 0\r\n\r\n")
    raws = {"redirect": redirect, "bad_status": bad_status, "cut_short": cut_short,
            "huge_headers": huge_headers, "odd_reason": odd_reason}
    try:
        alert = make_alert()
        produce(settings, [alert_record(alert)])
        destinations = [{"name": name, "url": hook.url} for name, hook in raws.items()]
        destinations.append({"name": "ok", "url": f"{hooks.base}/ok"})
        with Running(notifier(settings, tmp_path, destinations)) as running:
            running.wait(lambda s: s.failed == len(raws) and s.posted == 1)
        assert hooks.requests.get("/steal") is None, "a redirect was followed"
        assert redirect.hits == 1, "a redirect is not retried"
        for name in ("bad_status", "cut_short", "huge_headers", "odd_reason"):
            assert raws[name].hits == FAST_RETRY["attempts"], name
        records = {r.stage: r for r in dead_letters(settings, len(raws))}
        assert set(records) == {f"notify:{name}" for name in raws}
        assert "redirect, not followed" in records["notify:redirect"].error
        odd = records["notify:odd_reason"].error
        assert "<script>" not in odd and "\x1b" not in odd and len(odd) < 400
        assert len(hooks.received("/ok")) == 1
    finally:
        for hook in raws.values():
            hook.close()


def test_camera_text_reads_as_text_in_slack_and_teams(settings: Settings, hooks: Hooks,
                                                      tmp_path: Path) -> None:
    alert = make_alert().model_copy(update={
        "message": "<!channel> <https://evil.example|click here> [x](https://evil.example) <img src=x>"})
    produce(settings, [alert_record(alert)])
    destinations = [{"name": "slack", "url": f"{hooks.base}/slack", "format": "slack"},
                    {"name": "teams", "url": f"{hooks.base}/teams", "format": "teams"}]
    with Running(notifier(settings, tmp_path, destinations)) as running:
        running.wait(lambda s: s.posted == 2)
    slack = json.dumps(hooks.received("/slack")[0].body)
    assert "<!channel>" not in slack and "<https://evil.example|" not in slack and "&lt;!channel&gt;" in slack
    [teams] = hooks.received("/teams")
    card = json.dumps(adaptive_card(teams.body))
    assert "<img" not in card and "[x](https" not in card and "\\\\[x\\\\]\\\\(https" in card


CARD_ELEMENTS = {"TextBlock": {"text"}, "FactSet": {"facts"}, "Image": {"url"}}


def adaptive_card(body: dict[str, Any]) -> dict[str, Any]:
    """The card of a Teams Workflows message, checked against what Teams requires of one (message type,
    one Adaptive Card attachment of a version Teams renders, known elements with their required fields)."""
    assert body["type"] == "message" and len(body["attachments"]) == 1
    attachment = body["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["$schema"].startswith("http://adaptivecards.io/schemas/")
    assert tuple(int(x) for x in card["version"].split(".")) <= (1, 5)  # Teams renders up to 1.5
    for element in card["body"]:
        assert CARD_ELEMENTS[element["type"]] <= set(element), element
    for fact in next((e["facts"] for e in card["body"] if e["type"] == "FactSet"), []):
        assert set(fact) == {"title", "value"} and all(isinstance(v, str) for v in fact.values())
    for action in card.get("actions", []):
        assert action["type"] == "Action.OpenUrl" and action["url"].startswith(("https://", "http://"))
    return dict(card)


def health_event(kind: str, state: str, previous: str, n: int, camera: str = "cam-1", site: str = "hq"
                 ) -> CameraHealthEvent:
    at = datetime(2026, 11, 26, 9, 0, tzinfo=UTC) + timedelta(seconds=5 * n)
    tick = f"{camera}:{int(at.timestamp() * 1000)}"
    return CameraHealthEvent(event_id=f"{tick}:{state}", camera_id=camera, camera_name="Front <door>",
                             site=site, kind=kind, state=state, previous_state=previous,  # type: ignore[arg-type]
                             tick_id=tick, changed_at=at, consecutive_failures=3 if state == "down" else 0,
                             status="timeout" if state != "ok" else "ok",
                             error="no frame within the 5s deadline" if state != "ok" else "")


def test_cameras_going_down_and_back_up_are_posted_once_each(settings: Settings, hooks: Hooks,
                                                             tmp_path: Path) -> None:
    events = [health_event("degraded", "degraded", "ok", 0), health_event("down", "down", "degraded", 2),
              health_event("up", "ok", "down", 9), health_event("down", "down", "degraded", 2),  # replayed
              health_event("down", "down", "ok", 3, camera="cam-9", site="warehouse")]
    producer = kafka.producer(settings, linger_ms=0)
    for e in events:
        producer.produce(settings.topic_camera_health, key=e.camera_id.encode(),
                         value=e.model_dump_json().encode())
    producer.produce(settings.topic_camera_health, key=b"x", value=b'{"kind": "down"}')  # not an event
    assert producer.flush(30) == 0
    destinations: list[dict[str, Any]] = [
        {"name": "ops", "url": f"{hooks.base}/slack", "format": "slack", "sites": ["hq"]},
        {"name": "audit", "url": f"{hooks.base}/generic", "format": "generic"},
        {"name": "alerts-only", "url": f"{hooks.base}/alerts", "format": "generic", "events": ["alerts"]},
    ]
    with Running(notifier(settings, tmp_path, destinations)) as running:
        stats = running.wait(lambda s: s.health == 4 and s.posted == 5 and s.invalid == 1)
        time.sleep(1.0)  # room for a stray post
    assert stats.duplicates == 2  # the replayed "down", once per destination that had it
    ops = [p.body["text"] for p in hooks.received("/slack")]
    assert len(ops) == 2 and "3 failed" in ops[0]
    assert ops[0].startswith("Camera down: hq / Front &lt;door&gt;")  # a name reads as text
    assert ops[1].startswith("Camera back up: hq / Front &lt;door&gt;")
    generic = [parse_event(CameraHealthEvent, json.dumps(p.body)) for p in hooks.received("/generic")]
    assert sorted((e.camera_id, e.kind) for e in generic) == [("cam-1", "down"), ("cam-1", "up"),
                                                              ("cam-9", "down")]
    assert hooks.received("/alerts") == []  # degraded is never posted; this one takes alerts only
    [dead] = dead_letters(settings, 1)
    assert dead.stage == "notify_parse" and dead.topic == settings.topic_camera_health
