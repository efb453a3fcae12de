"""Getting one alert to one webhook: rate limit, bounded retries, and a record of what was delivered."""

from __future__ import annotations

import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from maskwatch.notify.config import RateLimit, RetryPolicy, host_of

log = logging.getLogger(__name__)
# httpx logs each request with its full URL at INFO, and a webhook URL's path is often its secret.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Statuses worth another try; any other 4xx means the request itself is wrong and would fail again.
RETRYABLE = {408, 425, 429, 500, 502, 503, 504}


class TokenBucket:
    """``burst`` tokens, refilled at ``per_minute / 60`` a second; one post takes one token."""

    def __init__(self, rate: RateLimit, clock: Callable[[], float] = time.monotonic):
        self.capacity = float(rate.burst)
        self.per_second = rate.per_minute / 60.0
        self.clock = clock
        self.tokens = self.capacity
        self.updated = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.per_second)
        self.updated = now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 if one is)."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.per_second

    def take(self) -> None:
        self._refill()
        self.tokens -= 1


class DeliveryStore:
    """(alert id, destination) pairs already posted, in SQLite, so a redelivered alert is not posted again.

    Kept for ``keep_days``: far longer than any redelivery (which comes from uncommitted offsets)."""

    def __init__(self, path: Path, keep_days: float = 30.0):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("""CREATE TABLE IF NOT EXISTS delivered (
            alert_id TEXT NOT NULL, destination TEXT NOT NULL, delivered_at REAL NOT NULL,
            PRIMARY KEY (alert_id, destination))""")
        self._db.execute("DELETE FROM delivered WHERE delivered_at < ?", (time.time() - keep_days * 86400,))

    def delivered(self, alert_id: str, destination: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM delivered WHERE alert_id = ? AND destination = ?",
                                   (alert_id, destination)).fetchone()
        return row is not None

    def mark(self, alert_id: str, destination: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO delivered VALUES (?, ?, ?)",
                             (alert_id, destination, time.time()))

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM delivered").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


@dataclass
class PostResult:
    ok: bool
    attempts: int
    status: int | None = None  # last HTTP status, None if no response
    error: str = ""
    interrupted: bool = False  # stopped (SIGTERM) before an outcome: leave the alert uncommitted


# What of a webhook's answer is read: its status and headers, and this much of its body (then dropped).
MAX_ANSWER_BYTES = 64 * 1024
# A reason phrase is words: anything else in it (markup, escape sequences, control bytes) is replaced.
_NOT_PLAIN = re.compile(r"[^A-Za-z0-9 .,:;_()/'=-]")


def _phrase(text: str, limit: int = 120) -> str:
    """Text the receiver controls (reason phrase, protocol error) made safe to log, store and show."""
    return _NOT_PLAIN.sub("?", text[: limit * 2])[:limit]


def post_once(url: str, body: bytes, timeout_s: float) -> tuple[int | None, str, float | None]:
    """(status, error, retry-after seconds). Errors never quote the URL, whose path may be a secret.

    A redirect is not followed (it could point anywhere, the store server included): it is a failed
    attempt. An answer that is cut short, malformed or over-long is a failed attempt too, never a crash."""
    headers = {"Content-Type": "application/json", "User-Agent": "maskwatch-notify"}
    try:
        with httpx.Client(follow_redirects=False, timeout=httpx.Timeout(timeout_s)) as client, \
                client.stream("POST", url, content=body, headers=headers) as response:
            received = 0
            for chunk in response.iter_raw():
                received += len(chunk)
                if received >= MAX_ANSWER_BYTES:
                    break
            status = response.status_code
            if 200 <= status < 300:
                return status, "", None
            if response.is_redirect:
                return status, f"HTTP {status}: a redirect, not followed", None
            retry_after = response.headers.get("Retry-After")
            try:
                after = float(retry_after) if retry_after else None
            except ValueError:
                after = None
            if after is not None and not 0 <= after < 86400:  # nan, inf or nonsense
                after = None
            return status, f"HTTP {status} {_phrase(response.reason_phrase)}", after
    except httpx.TimeoutException as exc:
        return None, f"{host_of(url)}: timed out ({type(exc).__name__})", None
    except httpx.HTTPError as exc:  # refused, reset, malformed or cut-short answers (h11 says which)
        return None, f"{host_of(url)}: {type(exc).__name__}: {_phrase(str(exc))}", None
    except (OSError, ValueError) as exc:
        return None, f"{host_of(url)}: {type(exc).__name__}: {_phrase(str(exc))}", None


def deliver(url: str, payload: dict[str, Any], policy: RetryPolicy, wait: Callable[[float], bool],
            acquire: Callable[[], bool], label: str) -> PostResult:
    """POST ``payload`` with exponential backoff on retryable failures, at most ``policy.attempts`` tries.

    ``acquire()`` is called before every try (the rate limit) and ``wait(seconds)`` between tries; both
    return False when the notifier is stopping."""
    body = json.dumps(payload).encode()
    status: int | None = None
    error = ""
    for attempt in range(1, policy.attempts + 1):
        if not acquire():
            return PostResult(False, attempt - 1, status, error, interrupted=True)
        status, error, retry_after = post_once(url, body, policy.timeout_s)
        if status is not None and 200 <= status < 300:
            return PostResult(True, attempt, status)
        if status is not None and status not in RETRYABLE:
            return PostResult(False, attempt, status, error)
        if attempt == policy.attempts:
            break
        delay = policy.delay(attempt)
        if retry_after is not None:  # honour the server's hint, within our own cap
            delay = min(policy.max_delay_s, max(delay, retry_after))
        log.warning("%s: try %d/%d failed (%s); retrying in %.1fs", label, attempt, policy.attempts, error,
                    delay)
        if not wait(delay):
            return PostResult(False, attempt, status, error, interrupted=True)
    return PostResult(False, policy.attempts, status, error)
