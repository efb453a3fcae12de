"""Limits on images before they are decoded: refuse oversized payloads and decompression bombs.

A camera (or whoever answers at its URL) controls the bytes we decode. A 100 KB PNG can declare
50000 x 50000 pixels and make the decoder allocate gigabytes, so the dimensions are read from the JPEG/PNG
header first and checked against ``MASKWATCH_MAX_IMAGE_PIXELS``; the payload size is checked against
``MASKWATCH_MAX_IMAGE_BYTES``. Call ``check_image_header(data)`` before ``cv2.imdecode``; frames that
arrive already decoded (RTSP) can be checked with ``check_dimensions``.
"""

from __future__ import annotations

import struct

from maskwatch.config import ImageLimits

# Defaults in maskwatch.config.ImageLimits: 20 MiB, and 40 Mpx (8K UHD is 33.2 Mpx; anything bigger from a
# security camera is a mistake or an attack).

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic); not DHT (C4), JPG (C8), DAC (CC).
_SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class ImageLimitError(ValueError):
    """An image refused before decoding; the message says which limit or what is wrong with it."""


def max_image_bytes() -> int:
    return ImageLimits().bytes


def max_image_pixels() -> int:
    return ImageLimits().pixels


def _jpeg_size(data: bytes) -> tuple[int, int]:
    i = 2
    while True:
        while i < len(data) and data[i] == 0xFF:  # markers may be preceded by fill bytes
            i += 1
        if i >= len(data):
            raise ImageLimitError("truncated JPEG: no frame header")
        if data[i - 1] != 0xFF:
            raise ImageLimitError(f"corrupt JPEG: expected a marker at byte {i - 1}")
        marker = data[i]
        i += 1
        if marker in _STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            raise ImageLimitError("corrupt JPEG: no frame header before the image data")
        if i + 2 > len(data):
            raise ImageLimitError("truncated JPEG: no frame header")
        (length,) = struct.unpack(">H", data[i:i + 2])
        if length < 2:
            raise ImageLimitError(f"corrupt JPEG: segment length {length} at byte {i}")
        if marker in _SOF_MARKERS:
            if i + 7 > len(data):
                raise ImageLimitError("truncated JPEG frame header")
            height, width = struct.unpack(">HH", data[i + 3:i + 7])
            return width, height
        i += length


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG or PNG header, without decoding; ImageLimitError for anything else."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageLimitError("corrupt PNG: no IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    raise ImageLimitError(f"not a JPEG or PNG image (starts with {data[:8].hex() or 'nothing'})")


def check_dimensions(width: int, height: int) -> None:
    """Refuse empty images and images over ``MASKWATCH_MAX_IMAGE_PIXELS``."""
    if width <= 0 or height <= 0:
        raise ImageLimitError(f"image declares {width}x{height} pixels")
    limit = max_image_pixels()
    if width * height > limit:
        raise ImageLimitError(f"image of {width}x{height} = {width * height} pixels is over the limit of "
                              f"{limit} (MASKWATCH_MAX_IMAGE_PIXELS)")


def check_image_header(data: bytes) -> tuple[int, int]:
    """Check an encoded image before decoding it: size in bytes, format (JPEG/PNG), declared dimensions.

    Returns (width, height); raises ``ImageLimitError`` naming the problem."""
    limit = max_image_bytes()
    if len(data) > limit:
        raise ImageLimitError(f"image of {len(data)} bytes is over the limit of {limit} "
                              "(MASKWATCH_MAX_IMAGE_BYTES)")
    width, height = image_size(data)
    check_dimensions(width, height)
    return width, height
