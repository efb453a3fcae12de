"""HMAC signatures on generic webhooks, so a receiver can tell maskwatch's posts from anyone else's and
refuse a replayed one.

Each post carries ``X-Maskwatch-Timestamp`` (Unix seconds) and ``X-Maskwatch-Signature: v1=<hex>``,
the HMAC-SHA256 under the shared secret of ``<timestamp>.<body>``. A receiver recomputes it over the raw
body and refuses a post whose timestamp is more than five minutes off::

    from maskwatch.notify.signing import verify
    ok = verify(secret, request.headers, raw_body)

or without maskwatch installed::

    expected = hmac.new(secret, f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    ok = hmac.compare_digest(f"v1={expected}", signature) and abs(time.time() - int(ts)) <= 300
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

TIMESTAMP = "X-Maskwatch-Timestamp"
SIGNATURE = "X-Maskwatch-Signature"
TOLERANCE_S = 300


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return "v1=" + hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, now: float | None = None) -> dict[str, str]:
    """The two headers of a signed post of ``body``."""
    timestamp = int(time.time() if now is None else now)
    return {TIMESTAMP: str(timestamp), SIGNATURE: _mac(secret, timestamp, body)}


def verify(secret: bytes, headers: Mapping[str, str], body: bytes, tolerance_s: float = TOLERANCE_S,
           now: float | None = None) -> bool:
    """Whether ``headers`` sign ``body`` under ``secret`` within ``tolerance_s`` of now.

    >>> headers = sign(b"s3cret", b'{"a": 1}', now=1_000_000)
    >>> verify(b"s3cret", headers, b'{"a": 1}', now=1_000_100), verify(b"s3cret", headers, b'{"a": 2}')
    (True, False)
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    timestamp, signature = lowered.get(TIMESTAMP.lower(), ""), lowered.get(SIGNATURE.lower(), "")
    if not timestamp.isdigit() or len(timestamp) > 12:
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(_mac(secret, int(timestamp), body), signature)
