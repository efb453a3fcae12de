"""Where a camera may fetch from: the SSRF policy for camera source URLs.

A camera's source URL is user input (CLI, YAML import, the dashboard's Manage page), and the flow fetches
whatever it names. Without a policy anyone who can register a camera could make the flow read cloud
metadata (169.254.169.254), internal services on 127.0.0.1/10.x, or any file on the flow's hosts.

Rules:

- schemes: rtsp, rtsps, http, https, file;
- network URLs: every address the host resolves to must be public. Loopback, link-local, private
  (10/8, 172.16/12, 192.168/16, fc00::/7, 100.64/10), multicast, unspecified and reserved addresses are
  refused unless the camera is registered with ``allow_private_network: true`` (most real cameras live on
  a private LAN: say so per camera). Cloud metadata endpoints, multicast and unspecified addresses are
  refused even then: no camera lives there;
- ``file://`` URLs: only under a directory of ``MASKWATCH_FILE_ROOTS`` (``os.pathsep``-separated), by
  default the repo's ``samples/``, the shared datasets next to the repo (``../shared/datasets``, which the
  sample cameras replay) and ``MASKWATCH_HOME``. Symlinks and ``..`` are resolved before the check.

Two entry points: ``check_source_url`` at registration (``maskwatch.cameras.registry.parse_camera``), and
``resolve_and_check`` at fetch time (the flow), which returns the addresses it checked so DNS that changes
after registration (rebinding) cannot reach a refused address. Errors never quote credentials.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from urllib.parse import unquote, urlsplit

from maskwatch.config import Settings
from maskwatch.schemas.redaction import redact_url

ALLOWED_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")
DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
# Instance metadata services (AWS/GCP/Azure/OpenStack, AWS IPv6, Alibaba): never a camera.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_REPO_ROOT = Path(__file__).resolve().parent.parent

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class SourcePolicyError(ValueError):
    """A camera source URL the policy refuses; the message names the URL (redacted) and the reason."""


def file_roots() -> list[Path]:
    """Directories ``file://`` sources may be under (``MASKWATCH_FILE_ROOTS``, else the defaults)."""
    settings = Settings()
    if settings.file_roots is not None:
        return list(settings.file_roots)
    return [_REPO_ROOT / "samples", (_REPO_ROOT.parent / "shared" / "datasets").resolve(), settings.home]


def _refusal(ip: IPAddress) -> str | None:
    """Why an address is never allowed, whatever the camera says; None if it may be."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata endpoint"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "the unspecified address"
    return None


def _non_public(ip: IPAddress) -> str | None:
    """Why an address is not public (needs ``allow_private_network``); None if it is public."""
    for kind, flag in (("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
                       ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return f"a {kind} address"
    if not ip.is_global:  # shared (100.64/10), documentation and other special-purpose ranges
        return "a non-public address"
    return None


def _why_refused(ip: str | IPAddress, allow_private: bool) -> str | None:
    address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    always = _refusal(address)
    if always:
        return f"{address}, {always}"
    reason = None if allow_private else _non_public(address)
    if reason:
        return (f"{address}, {reason}; if this camera really is on your private network, register it with "
                "allow_private_network: true (CLI: --allow-private-network)")
    return None


def check_ip(ip: str | IPAddress, allow_private: bool) -> None:
    """Refuse one address under the policy (an IPv4-mapped IPv6 address is judged as its IPv4)."""
    reason = _why_refused(ip, allow_private)
    if reason:
        raise SourcePolicyError(f"address {reason}")


def _check_file(url: str) -> None:
    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise SourcePolicyError(f"file:// source {redact_url(url)!r} names host {parts.netloc!r}; "
                                "only local paths (file:///...) are allowed")
    path = Path(unquote(parts.path))
    if not path.is_absolute():
        raise SourcePolicyError(f"file:// source {redact_url(url)!r} must be an absolute path")
    check_file_path(path)


def check_file_path(path: Path, roots: list[Path] | None = None) -> Path:
    """``path`` with its symlinks and ``..`` resolved, if that is under an allowed root; else
    ``SourcePolicyError``. Directory cameras call it for every entry they list, not only the directory."""
    real = path.resolve()
    roots = [r.resolve() for r in (file_roots() if roots is None else roots)]
    if not any(real == root or real.is_relative_to(root) for root in roots):
        allowed = os.pathsep.join(str(r) for r in roots) or "(none)"
        raise SourcePolicyError(f"file:// source {real} is outside the allowed directories {allowed}; "
                                "add its directory to MASKWATCH_FILE_ROOTS")
    return real


def resolve_and_check(url: str, allow_private: bool) -> list[str]:
    """Check ``url`` under the policy and return the addresses its host resolves to (all checked).

    For ``file://`` URLs the path is checked and ``[]`` returned. Raises ``SourcePolicyError`` for a
    refused scheme, path, unresolvable host or refused address. Call it right before fetching (and, where
    the client allows it, connect to one of the returned addresses) so a DNS change since registration
    cannot redirect the fetch."""
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SourcePolicyError(f"source {shown!r} is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES or "://" not in url:
        raise SourcePolicyError(f"source {shown!r}: scheme must be one of "
                                + ", ".join(f"{s}://" for s in ALLOWED_SCHEMES))
    if scheme == "file":
        _check_file(url)
        return []
    host = parts.hostname
    if not host:
        raise SourcePolicyError(f"source {shown!r} has no host")
    try:
        infos = socket.getaddrinfo(host, port or DEFAULT_PORTS[scheme], proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise SourcePolicyError(f"source {shown!r}: cannot resolve host {host!r} ({exc})") from None
    addresses = sorted({str(info[4][0]).split("%", 1)[0] for info in infos})
    if not addresses:
        raise SourcePolicyError(f"source {shown!r}: host {host!r} resolves to no address")
    for address in addresses:
        reason = _why_refused(address, allow_private)
        if reason:
            raise SourcePolicyError(f"source {shown!r} refused: host {host!r} resolves to {reason}")
    return addresses


def check_source_url(url: str, allow_private: bool) -> None:
    """Raise ``SourcePolicyError`` if a camera may not fetch from ``url`` (see the module docstring)."""
    resolve_and_check(url, allow_private)
