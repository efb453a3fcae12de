"""RTSP cameras through PyAV: a stream held open per camera, demuxed as it arrives, decoded only on demand.

Decoding every frame of a 25 fps stream to keep the latest one costs a tenth of a core per camera before
any inference; a tick every few seconds needs one picture. So a stream's thread only *demuxes* (reads
compressed packets, cheap) and keeps the packets since the newest keyframe; a tick decodes the newest
keyframe (one picture, whatever number of slices it came in), or, when that keyframe is older than
``keyframe_max_age_s`` (cameras with long GOPs), the packets from it to the newest one. MJPEG streams
are all keyframes: a tick decodes the newest.

Network rules, on every (re)connect: the URL is checked against the network policy with the addresses its
host resolves to now, and FFmpeg is given the checked address (no second resolution of the name). Before
FFmpeg connects, ``preflight`` sends the camera a DESCRIBE itself and follows any redirect only if the
target passes the policy, then hands FFmpeg the final, checked address. (FFmpeg would follow a redirect on
its own and resolve its host itself; a camera that answers our DESCRIBE and FFmpeg's differently could
still redirect FFmpeg, which is why the policy's private-network rule applies per camera.) Transport is
RTSP over TCP (interleaved): no UDP ports to open, and no packet loss turning into grey frames.

Example::

    stream = RtspStream("rtsp://user:pw@cam.example/live", allow_private=False, opts=RtspOptions())
    frame, captured_at = stream.frame(deadline=time.monotonic() + 5)
    stream.close()
"""

from __future__ import annotations

import base64
import hashlib
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import av
import numpy as np

from maskwatch.cameras.capture.errors import FetchError, clean_phrase
from maskwatch.netpolicy import DEFAULT_PORTS, SourcePolicyError, resolve_and_check
from maskwatch.schemas.redaction import redact_text, redact_url

log = logging.getLogger(__name__)

MAX_REDIRECTS = 3
_MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class RtspOptions:
    open_timeout_s: float = 5.0  # connect + RTSP handshake
    read_timeout_s: float = 5.0  # no packet for this long: the stream is dropped and reconnected
    max_age_s: float = 10.0  # a picture older than this is stale: no frame rather than an old one
    keyframe_max_age_s: float = 2.0  # newest keyframe if at most this old, else decode up to the newest
    backoff_min_s: float = 0.5
    backoff_max_s: float = 30.0
    idle_close_s: float = 300.0  # no tick asked for a frame this long: close the stream
    max_gop_packets: int = 1000  # packets kept after a keyframe (beyond: only the keyframe is kept)


def _host_literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def pin_url(url: str, address: str) -> str:
    """``url`` with its host replaced by ``address`` (credentials, port and path kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    hostport = _host_literal(address) + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=f"{userinfo}@{hostport}" if userinfo else hostport, fragment="").geturl()


def _digest(challenge: str, user: str, password: str, method: str, uri: str) -> str:
    fields: dict[str, str] = {}
    for item in challenge.split(" ", 1)[1].split(","):
        key, _, value = item.strip().partition("=")
        fields[key.lower()] = value.strip().strip('"')
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    response = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return (f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
            f'response="{response}"')


def _read_reply(sock: socket.socket) -> tuple[int, str, dict[str, str]]:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > _MAX_HEADER_BYTES:
            raise FetchError(f"RTSP reply headers over {_MAX_HEADER_BYTES} bytes")
        chunk = sock.recv(4096)
        if not chunk:
            raise FetchError("the camera closed the RTSP connection")
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status_line, *lines = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("RTSP/") or not parts[1].isdigit():
        raise FetchError(f"not an RTSP reply: {clean_phrase(status_line, 60)!r}")
    headers: dict[str, str] = {}
    for line in lines:
        key, _, value = line.partition(":")
        headers.setdefault(key.strip().lower(), value.strip())
    return int(parts[1]), clean_phrase(parts[2] if len(parts) > 2 else ""), headers


def describe(url: str, address: str, timeout_s: float) -> tuple[int, str, dict[str, str]]:
    """One RTSP DESCRIBE to ``address`` (answering a Basic or Digest challenge with the URL's
    credentials): the status code, reason and reply headers."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or DEFAULT_PORTS[scheme]
    # The request URI FFmpeg will send: the checked address in place of the name, no credentials.
    uri = pin_url(parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl(), address)
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    raw = socket.create_connection((address, port), timeout=timeout_s)
    sock: socket.socket = raw
    try:
        if scheme == "rtsps":
            # FFmpeg does not verify RTSPS certificates either; TLS here only carries the DESCRIBE.
            context = ssl.create_default_context()
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            sock = context.wrap_socket(raw, server_hostname=parts.hostname)
        auth = ""
        for cseq in (1, 2):
            request = (f"DESCRIBE {uri} RTSP/1.0\r\nCSeq: {cseq}\r\nAccept: application/sdp\r\n"
                       f"User-Agent: maskwatch\r\n{auth}\r\n")
            sock.sendall(request.encode())
            status, reason, headers = _read_reply(sock)
            length = headers.get("content-length", "0")
            challenge = headers.get("www-authenticate", "")
            if status != 401 or not user or auth or not challenge:
                return status, reason, headers
            if length.isdigit() and int(length) > 0:  # skip the 401's body before asking again
                sock.recv(min(int(length), _MAX_HEADER_BYTES))
            if challenge.lower().startswith("digest"):
                auth = f"Authorization: {_digest(challenge, user, password, 'DESCRIBE', uri)}\r\n"
            else:
                token = base64.b64encode(f"{user}:{password}".encode()).decode()
                auth = f"Authorization: Basic {token}\r\n"
        return status, reason, headers
    finally:
        sock.close()


def preflight(url: str, allow_private: bool, timeout_s: float) -> str:
    """The URL to give FFmpeg: redirects followed here, each target checked against the policy, and the
    final host replaced by the address the policy checked. Raises ``SourcePolicyError`` for a refused
    target, ``FetchError`` when the camera cannot be asked."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        addresses = resolve_and_check(current, allow_private)
        try:
            status, reason, headers = describe(current, addresses[0], timeout_s)
        except (OSError, UnicodeError) as exc:
            raise FetchError(f"cannot reach {redact_url(current)}: {type(exc).__name__}: "
                             f"{redact_text(str(exc))}") from None
        if status in (301, 302, 303, 305, 307, 308):
            location = headers.get("location", "")[:2048]
            target = urljoin(current, location)
            if urlsplit(target).scheme.lower() not in ("rtsp", "rtsps"):
                raise SourcePolicyError(f"{redact_url(current)} redirects to a non-RTSP URL; not followed")
            old, new = urlsplit(current), urlsplit(target)
            # Credentials go only back to the same host (another port of it is the same camera or NVR).
            if old.hostname == new.hostname and new.username is None and old.username:
                target = target.replace("://", f"://{old.netloc.rpartition('@')[0]}@", 1)
            log.info("camera %s redirects to %s", redact_url(current), redact_url(target))
            current = target
            continue
        if status == 401:
            raise FetchError(f"RTSP 401 {reason} from {redact_url(current)}: wrong or missing credentials")
        if status >= 400:
            raise FetchError(f"RTSP {status} {reason} from {redact_url(current)}")
        return pin_url(current, addresses[0])
    raise FetchError(f"more than {MAX_REDIRECTS} redirects from {redact_url(url)}")


class RtspStream:
    """One RTSP camera held open on a thread of its own (see the module docstring)."""

    def __init__(self, url: str, allow_private: bool, opts: RtspOptions):
        self.url, self.allow_private, self.opts = url, allow_private, opts
        self._cond = threading.Condition()
        self._gop: list[Any] = []  # av.Packet: the newest keyframe and the packets after it
        self._key_at = 0.0  # monotonic arrival of the newest keyframe, and of the newest packet
        self._packet_at = 0.0
        self.wall_offset = time.time() - time.monotonic()
        self._codec: tuple[str, bytes | None] | None = None
        self._error: tuple[type[Exception], str] | None = None
        self._failed_at = 0.0
        self._asked_at = time.monotonic()
        self._waiters = 0
        self._decode_lock = threading.Lock()
        self._decoded: tuple[tuple[float, int], np.ndarray] | None = None
        self.connects = 0  # connections that delivered a stream
        self.packets = 0  # packets demuxed (each cheap; only what a tick asks for is decoded)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtsp", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        backoff = self.opts.backoff_min_s
        while not self._stop.is_set():
            try:
                # The policy again on every (re)connect: DNS, the roots or the camera's flag may have changed.
                target = preflight(self.url, self.allow_private, self.opts.open_timeout_s)
                if self._hold(target):
                    backoff = self.opts.backoff_min_s
                self._fail(FetchError, f"stream {redact_url(self.url)} ended or dropped")
            except SourcePolicyError as exc:
                self._fail(SourcePolicyError, str(exc))
            except FetchError as exc:
                self._fail(FetchError, str(exc))
            except av.FFmpegError as exc:
                self._fail(FetchError, f"stream {redact_url(self.url)}: {redact_text(str(exc))}")
            except Exception as exc:  # a bug must not end the camera's thread silently
                log.exception("RTSP stream %s failed", redact_url(self.url))
                self._fail(FetchError, redact_text(f"{type(exc).__name__}: {exc}"))
            if time.monotonic() - self._asked_at > self.opts.idle_close_s:
                break  # nobody asked for a while: the fetcher opens it again when a tick comes
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.opts.backoff_max_s)

    def _hold(self, target: str) -> bool:
        """Demux until the stream ends; True if it delivered packets."""
        options = {"rtsp_transport": "tcp", "allowed_media_types": "video",
                   "timeout": str(int(self.opts.read_timeout_s * 1e6))}
        container = av.open(target, options=options,
                            timeout=(self.opts.open_timeout_s, self.opts.read_timeout_s))
        delivered = False
        try:
            if not container.streams.video:
                raise FetchError(f"stream {redact_url(self.url)} has no video")
            stream = container.streams.video[0]
            ctx = stream.codec_context
            with self._cond:
                self._codec = (ctx.name, bytes(ctx.extradata) if ctx.extradata else None)
                self.connects += 1
            for packet in container.demux(stream):
                if self._stop.is_set() or time.monotonic() - self._asked_at > self.opts.idle_close_s:
                    break
                if packet.size == 0:
                    continue
                now = time.monotonic()
                with self._cond:
                    # A picture may come as several packets (one per slice, same pts): a keyframe
                    # packet of the picture already held is one more slice of it, not a new picture.
                    if packet.is_keyframe and not (self._gop and packet.pts == self._gop[0].pts):
                        self._gop, self._key_at = [packet], now
                    elif self._gop:
                        if len(self._gop) >= self.opts.max_gop_packets:
                            del self._gop[1:]  # keep the keyframe: it still decodes
                        self._gop.append(packet)
                    self._packet_at = now
                    self.packets += 1
                    self._error = None
                    delivered = delivered or bool(self._gop)
                    if self._waiters:  # only ``frame`` waits; the fetcher polls ``latest``
                        self._cond.notify_all()
        finally:
            container.close()
        return delivered

    def _fail(self, kind: type[Exception], message: str) -> None:
        with self._cond:
            self._error, self._failed_at = (kind, message), time.monotonic()
            self._gop = []
            self._cond.notify_all()

    def latest(self) -> Picture | None:
        """What a tick would decode now, without waiting: None while the stream connects; the stream's
        error at once when it is failing (it reconnects meanwhile)."""
        with self._cond:
            self._asked_at = now = time.monotonic()
            if self._gop and now - self._packet_at <= self.opts.max_age_s:
                # The keyframe alone if it is recent; else everything from it to the newest packet.
                if now - self._key_at <= self.opts.keyframe_max_age_s:
                    first = self._gop[0].pts
                    key = [p for p in self._gop if p.pts == first]  # all slices of the keyframe
                    return Picture(key, self._key_at, self)
                return Picture(list(self._gop), self._packet_at, self)
            if self._error is not None:
                raise self._error[0](self._error[1])
            return None

    def frame(self, deadline: float) -> tuple[np.ndarray, datetime]:
        """The freshest picture and when it arrived, waiting for the first one until ``deadline``."""
        while True:
            picture = self.latest()
            if picture is not None:
                return picture.decode(), picture.captured_at
            if time.monotonic() >= deadline:
                raise TimeoutError
            with self._cond:
                self._waiters += 1
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
                self._waiters -= 1

    def decode_packets(self, packets: list[Any], key: tuple[float, int]) -> np.ndarray:
        codec = self._codec
        if codec is None:
            raise FetchError(f"stream {redact_url(self.url)} is not connected")
        with self._decode_lock:
            if self._decoded is not None and self._decoded[0] == key:
                return self._decoded[1].copy()
            # A fresh single-threaded decoder per picture: it holds no state between ticks, and threads of
            # its own would only add latency for one frame.
            ctx: Any = av.CodecContext.create(codec[0], "r")  # a VideoCodecContext (stubs say the base)
            if codec[1]:
                ctx.extradata = codec[1]
            ctx.thread_count = 1
            frames: list[Any] = []
            try:
                for packet in _access_units(packets):
                    frames.extend(ctx.decode(packet))
                frames.extend(ctx.decode(None))
            except av.FFmpegError as exc:
                raise FetchError(f"cannot decode a picture from {redact_url(self.url)}: {exc}") from None
            if not frames:
                raise FetchError(f"no decodable picture from {redact_url(self.url)} yet")
            image = frames[-1].to_ndarray(format="bgr24")
            self._decoded = (key, image)
            return image.copy()

    def stop(self) -> None:
        """Ask the stream to close (it does within ``read_timeout_s``); returns at once."""
        self._stop.set()

    def close(self) -> None:
        self.stop()
        self._thread.join(timeout=self.opts.read_timeout_s + 1)


def _access_units(packets: list[Any]) -> list[Any]:
    """One packet per picture: the slices of a picture (consecutive packets with one pts, as FFmpeg's
    RTP depacketizer hands them over) joined, since the decoder takes a whole picture per packet."""
    units: list[Any] = []
    group: list[Any] = []
    for packet in [*packets, None]:
        if group and (packet is None or packet.pts != group[0].pts):
            if len(group) == 1:
                units.append(group[0])
            else:
                joined = av.Packet(b"".join(bytes(p) for p in group))
                joined.pts, joined.dts, joined.time_base = group[0].pts, group[0].dts, group[0].time_base
                units.append(joined)
            group = []
        if packet is not None:
            group.append(packet)
    return units


@dataclass(frozen=True)
class Picture:
    """Packets that decode to one picture, and when the newest of them arrived."""

    packets: list[Any]
    arrived: float  # monotonic
    stream: RtspStream

    @property
    def captured_at(self) -> datetime:
        return datetime.fromtimestamp(self.arrived + self.stream.wall_offset, UTC)

    def decode(self) -> np.ndarray:
        """Decode (CPU work: call it off the event loop). The same picture asked twice decodes once."""
        return self.stream.decode_packets(self.packets, (self.arrived, len(self.packets)))
