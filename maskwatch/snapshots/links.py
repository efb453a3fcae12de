"""Signed, expiring links to snapshot files, so a chat message or webhook can show the picture of an
alert without the reader having a dashboard account or the link working for ever.

A link names the snapshot by its path under ``MASKWATCH_HOME/snapshots`` and carries its expiry and an
HMAC-SHA256 of both under ``MASKWATCH_SNAPSHOT_LINK_KEY``::

    https://snapshots.example.com/s/hq-lobby/20261204/hq-lobby_1733300000000.jpg?exp=1733904800&sig=...

Nothing else is needed to check one, so any number of servers can share the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from maskwatch.config import SnapshotLinkSettings

# What a snapshot's path under the root looks like (maskwatch.flows.snapshots.snapshot_path): anything
# else is refused before the file system is touched.
RELATIVE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/\d{8}/[A-Za-z0-9][A-Za-z0-9_.-]{0,120}\.jpg$")


def signature(relative: str, expires: int, key: bytes) -> str:
    digest = hmac.new(key, f"{relative}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def relative_to(root: Path, snapshot: str) -> str | None:
    """The snapshot's path under ``root`` as a link names it, or None if it is not a snapshot there."""
    try:
        relative = Path(snapshot).resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return None
    return relative if RELATIVE.match(relative) else None


def make_link(base: str, root: Path, snapshot: str, key: bytes, ttl_s: int,
              now: datetime | None = None) -> tuple[str, datetime] | None:
    """(URL, expiry) of a signed link to ``snapshot``, or None when it is not a file under ``root``.

    >>> url, until = make_link("https://snap.example", Path("/srv/s"), "/srv/s/door/20261204/door_1.jpg",
    ...                        b"k", 3600, datetime(2026, 12, 4, tzinfo=UTC))
    >>> url.split("&sig=")[0], until.isoformat()
    ('https://snap.example/s/door/20261204/door_1.jpg?exp=1796346000', '2026-12-04T01:00:00+00:00')
    """
    relative = relative_to(root, snapshot)
    if relative is None:
        return None
    until = (now or datetime.now(UTC)) + timedelta(seconds=ttl_s)
    expires = int(until.timestamp())
    url = (f"{base.rstrip('/')}/s/{quote(relative)}?exp={expires}"
           f"&sig={signature(relative, expires, key)}")
    return url, datetime.fromtimestamp(expires, UTC)


def check(relative: str, expires: str, sig: str, key: bytes, now: datetime | None = None) -> str:
    """Why the link may not be served ('' when it may): a malformed path, a bad signature, or expired."""
    if not RELATIVE.match(relative):
        return "not a snapshot path"
    if not expires.isdigit() or len(expires) > 12:
        return "bad expiry"
    if not hmac.compare_digest(signature(relative, int(expires), key), sig):
        return "bad signature"
    if int(expires) < (now or datetime.now(UTC)).timestamp():
        return "expired"
    return ""


def signed_link(links: SnapshotLinkSettings, root: Path, snapshot: str) -> tuple[str, datetime] | None:
    """:func:`make_link` with the configured base, key and lifetime; None when links are not set up
    (``MASKWATCH_SNAPSHOT_LINK_BASE``/``_KEY``) or ``snapshot`` is not a snapshot under ``root``."""
    if not snapshot or not links.base or links.key is None:
        return None
    return make_link(links.base, root, snapshot, links.key.get_secret_value().encode(), links.ttl_s)


def linked_file(url: str, root: Path, key: bytes) -> Path | None:
    """The file under ``root`` that a valid, unexpired link signed with ``key`` names; None for any other
    link."""
    parts = urlsplit(url)
    relative, params = unquote(parts.path.partition("/s/")[2]), dict(parse_qsl(parts.query))
    if not relative or check(relative, params.get("exp", ""), params.get("sig", ""), key):
        return None
    return root / relative
