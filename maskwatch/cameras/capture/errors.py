"""What a fetch can end in: the outcome names and the errors the sources raise."""

from __future__ import annotations

from typing import Literal

# blocked: the network policy refuses the source (no request made); oversized: over the byte/pixel limits;
# skipped: the camera is backed off after failing repeatedly, so this tick was not fetched (it is recorded).
Status = Literal["ok", "fetch_error", "decode_error", "timeout", "blocked", "oversized", "skipped"]


class FetchError(Exception):
    """A frame could not be read; the message is safe to log (no credentials)."""


class OversizedError(FetchError):
    """The snapshot is over the byte limit, or the image over the pixel limit; not decoded."""


def clean_phrase(text: str, limit: int = 120) -> str:
    """A camera-supplied phrase (HTTP reason, RTSP status, a header) made safe to show: printable ASCII,
    at most ``limit`` characters. A hostile camera controls these bytes."""
    cleaned = "".join(c if " " <= c <= "~" else "?" for c in text)
    return cleaned[:limit] + ("..." if len(cleaned) > limit else "")
