"""Getting one alert to one webhook: rate limit, bounded retries, and a record of what was delivered."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskwatch.notify.config import RateLimit, RetryPolicy, host_of

log = logging.getLogger(__name__)

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


def post_once(url: str, body: bytes, timeout_s: float) -> tuple[int | None, str, float | None]:
    """(status, error, retry-after seconds). Errors never quote the URL, whose path may be a secret."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "User-Agent": "maskwatch-notify"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
            return response.status, "", None
    except urllib.error.HTTPError as exc:
        retry_after = exc.headers.get("Retry-After") if exc.headers else None
        try:
            after = float(retry_after) if retry_after else None
        except ValueError:
            after = None
        return exc.code, f"HTTP {exc.code} {exc.reason}", after
    except urllib.error.URLError as exc:
        return None, f"cannot connect to {host_of(url)}: {exc.reason}", None
    except (TimeoutError, OSError) as exc:
        return None, f"{host_of(url)}: {type(exc).__name__}: {exc}", None


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
