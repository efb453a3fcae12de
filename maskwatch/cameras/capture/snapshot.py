"""HTTP(S) snapshot cameras through httpx: one GET per tick, on a keep-alive pool per camera host.

What a camera answers is hostile until checked, so each exchange is held to:

- the address the network policy checked: the request goes to that IP (the ``Host`` header and, for HTTPS,
  the TLS server name keep the camera's name, so its certificate is verified against the name it was
  registered with) and no second DNS lookup can send it elsewhere;
- one deadline over the whole exchange (connect, headers, body): a camera that drips its headers a byte at
  a time is cut off at the deadline like one that never answers, and holds no thread meanwhile (the
  fetches of a batch are coroutines on one event loop);
- a byte cap, checked on ``Content-Length`` and again while streaming;
- no redirect followed unless its target passes the policy too (at most ``MAX_REDIRECTS``, credentials
  sent only back to the same origin);
- Basic or Digest auth, whichever the camera's challenge asks for (Hikvision, Dahua and Axis ask for
  Digest): the password is never sent before a challenge, and the scheme is then remembered per camera.

Example::

    client = SnapshotClient(connect_timeout_s=2.0, max_bytes=10 * 1024**2)
    data = await client.get("http://user:pw@cam.example/snapshot.jpg", allow_private=False, deadline_s=5)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import ssl
from collections.abc import Generator
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from maskwatch.cameras.capture.errors import FetchError, OversizedError, clean_phrase
from maskwatch.netpolicy import DEFAULT_PORTS, SourcePolicyError, resolve_and_check
from maskwatch.schemas.redaction import redact_text, redact_url

MAX_REDIRECTS = 3
_CHUNK = 65536


class CameraAuth(httpx.Auth):
    """Basic or Digest, as the camera's ``WWW-Authenticate`` challenge asks (Digest if both are offered).

    No credentials go out before the first challenge; after it the scheme is remembered, so Basic is then
    sent up front and Digest reuses the camera's nonce (one round trip per snapshot, not two)."""

    def __init__(self, username: str, password: str):
        self._basic = httpx.BasicAuth(username, password)
        self._digest = httpx.DigestAuth(username, password)
        self.scheme: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.scheme == "digest":
            yield from self._digest.auth_flow(request)
            return
        if self.scheme == "basic":
            yield from self._basic.auth_flow(request)
            return
        response = yield request
        if response.status_code != 401:
            return
        offered = {h.split(" ", 1)[0].strip().lower() for h in response.headers.get_list("www-authenticate")}
        if "digest" in offered:
            self.scheme = "digest"
            flow = self._digest.auth_flow(request)
            next(flow)  # the unauthenticated request, already answered by the challenge above
            authed = flow.send(response)
            response = yield authed
            with contextlib.suppress(StopIteration):
                flow.send(response)
        elif "basic" in offered:
            self.scheme = "basic"
            yield from self._basic.auth_flow(request)


def _explain(exc: BaseException) -> str:
    """The error and its root cause (httpx says "All connection attempts failed"; the OSError under it
    says why), redacted."""
    text = f"{type(exc).__name__}: {exc}"
    cause: BaseException | None = exc
    for _ in range(8):  # the root of the chain, whether raised "from" or while handling
        assert cause is not None
        nxt = cause.__cause__ or cause.__context__
        if nxt is None:
            break
        cause = nxt
    if cause is not None and cause is not exc:
        reason = os.strerror(cause.errno) if isinstance(cause, OSError) and cause.errno else str(cause)
        if reason and reason not in text:
            text += f" ({reason})"
    return redact_text(text)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or DEFAULT_PORTS[scheme]


def _pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, str]]:
    """The URL with its host replaced by the checked address (credentials dropped: auth is separate),
    the ``Host`` header and the request extensions that keep the camera's name for TLS."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    target = parts._replace(netloc=netloc, fragment="").geturl()
    shown = f"[{host}]" if ":" in host else host
    headers = {"Host": shown if parts.port is None else f"{shown}:{parts.port}"}
    extensions: dict[str, str] = {}
    if parts.scheme.lower() == "https":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            extensions["sni_hostname"] = host  # verified against the certificate (check_hostname)
    return target, headers, extensions


class SnapshotClient:
    """Snapshots over HTTP(S): one ``httpx.AsyncClient`` (a keep-alive pool) per camera host, one
    :class:`CameraAuth` per camera URL. Use from one event loop; ``aclose`` closes every pool."""

    def __init__(self, *, connect_timeout_s: float = 2.0, max_bytes: int = 10 * 1024**2,
                 connections_per_host: int = 4, verify: ssl.SSLContext | bool = True):
        self.connect_timeout_s, self.max_bytes = connect_timeout_s, max_bytes
        self._limits = httpx.Limits(max_connections=connections_per_host,
                                    max_keepalive_connections=connections_per_host, keepalive_expiry=30)
        self._verify = verify
        self._clients: dict[tuple[str, str, int], httpx.AsyncClient] = {}
        self._auth: dict[str, CameraAuth] = {}
        self._used: dict[str, tuple[str, str, int]] = {}  # camera URL -> the pool it last used

    def _client(self, url: str) -> httpx.AsyncClient:
        key = _origin(url)
        client = self._clients.get(key)
        if client is None:
            client = httpx.AsyncClient(
                limits=self._limits, verify=self._verify, follow_redirects=False, trust_env=False,
                # The whole exchange is bounded by the caller's deadline; these bound each phase.
                timeout=httpx.Timeout(self.connect_timeout_s * 4, connect=self.connect_timeout_s))
            self._clients[key] = client
        return client

    def _camera_auth(self, url: str) -> CameraAuth | None:
        parts = urlsplit(url)
        if parts.username is None:
            return None
        key = url.split("#", 1)[0]
        auth = self._auth.get(key)
        if auth is None:
            auth = self._auth[key] = CameraAuth(unquote(parts.username), unquote(parts.password or ""))
        return auth

    async def get(self, url: str, *, allow_private: bool, deadline_s: float) -> bytes:
        """The snapshot's bytes, or ``FetchError``/``OversizedError``/``SourcePolicyError``; raises
        ``TimeoutError`` when the whole exchange (redirects included) outlasts ``deadline_s``."""
        async with asyncio.timeout(deadline_s):
            return await self._get(url, allow_private)

    async def _get(self, url: str, allow_private: bool) -> bytes:
        auth = self._camera_auth(url)
        first = _origin(url)
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            # The policy before every request, with the addresses the host resolves to now (the
            # resolver runs in a thread: a slow DNS server must not stall the other cameras).
            addresses = await asyncio.to_thread(resolve_and_check, current, allow_private)
            target, headers, extensions = _pinned(current, addresses[0])
            # Identity only: a compressed body could expand past the byte cap inside one chunk.
            headers.update({"Accept": "image/jpeg,image/*", "Accept-Encoding": "identity"})
            same_origin = _origin(current) == first
            try:
                location = await self._exchange(current, target, headers, extensions,
                                                auth if same_origin else None)
                self._used[url.split("#", 1)[0]] = _origin(target)
            except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
                raise FetchError(f"{_explain(exc)} ({redact_url(current)})") from None
            if isinstance(location, bytes):
                return location
            nxt = urljoin(current, location)
            if urlsplit(nxt).scheme.lower() not in ("http", "https"):
                raise SourcePolicyError(f"{redact_url(current)} redirects to a non-HTTP URL; not followed")
            current = nxt
        raise FetchError(f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")

    async def _exchange(self, url: str, target: str, headers: dict[str, str], extensions: dict[str, str],
                        auth: CameraAuth | None) -> bytes | str:
        """One GET: the body, or the ``Location`` of a redirect (to be checked by the caller)."""
        client = self._client(target)
        request = client.build_request("GET", target, headers=headers, extensions=extensions)
        response = await client.send(request, auth=auth or httpx.USE_CLIENT_DEFAULT, stream=True)
        try:
            if response.status_code in (301, 302, 303, 307, 308):
                location = response.headers.get("location", "")
                if not location:
                    raise FetchError(f"HTTP {response.status_code} without a Location from {redact_url(url)}")
                return location[:2048]
            if response.status_code != 200:
                raise FetchError(f"HTTP {response.status_code} {clean_phrase(response.reason_phrase)} "
                                 f"from {redact_url(url)}")
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise FetchError(f"snapshot sent with Content-Encoding {clean_phrase(encoding, 20)!r}, "
                                 "not asked for; refused")
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_bytes:
                raise OversizedError(f"snapshot of {length} bytes exceeds the {self.max_bytes}-byte limit")
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_raw(_CHUNK):
                size += len(chunk)
                if size > self.max_bytes:
                    raise OversizedError(f"snapshot exceeds the {self.max_bytes}-byte limit; aborted")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            await response.aclose()

    async def retain(self, urls: set[str]) -> None:
        """Close the pools no camera in ``urls`` used last, and forget the other cameras' auth state."""
        keys = {u.split("#", 1)[0] for u in urls}
        self._used = {u: k for u, k in self._used.items() if u in keys}
        self._auth = {u: a for u, a in self._auth.items() if u in keys}
        for key in [k for k in self._clients if k not in set(self._used.values())]:
            await self._clients.pop(key).aclose()

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
