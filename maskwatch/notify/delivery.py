"""Getting one alert to one destination (a webhook, or an SMTP server): rate limit, bounded retries,
and a record of what was delivered."""

from __future__ import annotations

import logging
import re
import smtplib
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import httpx

from maskwatch.notify.config import RateLimit, RetryPolicy, Smtp, host_of

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


Attempt = tuple[int | None, str, float | None]  # (status, error, retry-after seconds)


def post_once(url: str, body: bytes | None, timeout_s: float, headers: dict[str, str] | None = None,
              form: dict[str, str] | None = None, files: dict[str, tuple[str, bytes, str]] | None = None
              ) -> Attempt:
    """POST ``body`` (JSON), or ``form`` and ``files`` as multipart; (status, error, retry-after seconds).
    Errors never quote the URL, whose path may be a secret.

    A redirect is not followed (it could point anywhere, the store server included): it is a failed
    attempt. An answer that is cut short, malformed or over-long is a failed attempt too, never a crash."""
    sent = {"User-Agent": "maskwatch-notify", **(headers or {})}
    if body is not None:
        sent.setdefault("Content-Type", "application/json")
    try:
        with httpx.Client(follow_redirects=False, timeout=httpx.Timeout(timeout_s)) as client, \
                client.stream("POST", url, content=body, data=form, files=files, headers=sent) as response:
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


def send_mail(smtp: Smtp, password: str | None, message: EmailMessage, timeout_s: float) -> Attempt:
    """One try at handing ``message`` to the SMTP server over TLS (STARTTLS, or TLS from the start),
    with the server's certificate checked. A refusal in the 5xx range is permanent (status 550 style
    codes are passed on as a non-retryable status); anything else is worth another try."""
    context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
    where = f"smtp://{smtp.host}:{smtp.port}"
    try:
        if smtp.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=timeout_s, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, timeout=timeout_s)
        with client:
            if smtp.security == "starttls":
                client.starttls(context=context)  # refuses to go on in the clear if the server cannot
            if smtp.username:
                client.login(smtp.username, password or "")
            client.send_message(message)
        return 250, "", None
    except smtplib.SMTPResponseException as exc:
        code = int(exc.smtp_code)
        text = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc)
        return (None if code < 500 else 400), f"{where}: SMTP {code} {_phrase(text)}", None
    except smtplib.SMTPRecipientsRefused as exc:
        return 400, f"{where}: recipients refused ({len(exc.recipients)})", None
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        return None, f"{where}: {type(exc).__name__}: {_phrase(str(exc))}", None


def deliver(send: Callable[[], Attempt], policy: RetryPolicy, wait: Callable[[float], bool],
            acquire: Callable[[], bool], label: str) -> PostResult:
    """Call ``send`` (one try) with exponential backoff on retryable failures, at most ``policy.attempts``
    tries: a 2xx status (250 for mail) is success, ``RETRYABLE`` statuses and None are retried, any other
    status is final.

    ``acquire()`` is called before every try (the rate limit) and ``wait(seconds)`` between tries; both
    return False when the notifier is stopping."""
    status: int | None = None
    error = ""
    for attempt in range(1, policy.attempts + 1):
        if not acquire():
            return PostResult(False, attempt - 1, status, error, interrupted=True)
        status, error, retry_after = send()
        if status is not None and (200 <= status < 300 or status == 250):
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
