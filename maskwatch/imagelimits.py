"""Limits on images before they are decoded: refuse oversized payloads and decompression bombs.

A camera (or whoever answers at its URL) controls the bytes we decode. A 100 KB PNG can declare
50000 x 50000 pixels and make the decoder allocate gigabytes, so the dimensions are read from the JPEG/PNG
header (JPEG, PNG, WebP or BMP: the formats cameras and replay directories hold) first and checked against
``MASKWATCH_MAX_IMAGE_PIXELS``; the payload size is checked against
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


def _webp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 30:
        raise ImageLimitError("truncated WebP header")
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: a keyframe start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            raise ImageLimitError("corrupt WebP: no VP8 keyframe start code")
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: a signature byte, then 14-bit sizes minus one
        if data[20] != 0x2F:
            raise ImageLimitError("corrupt WebP: no VP8L signature")
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    raise ImageLimitError(f"corrupt WebP: unknown chunk {chunk!r}")


def _bmp_size(data: bytes) -> tuple[int, int]:
    if len(data) < 26:
        raise ImageLimitError("truncated BMP header")
    (header_size,) = struct.unpack("<I", data[14:18])
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack("<hh", data[18:22])
    elif header_size >= 40:
        width, height = struct.unpack("<ii", data[18:26])
    else:
        raise ImageLimitError(f"corrupt BMP: DIB header of {header_size} bytes")
    return width, abs(height)  # a negative height is a top-down bitmap


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG, PNG, WebP or BMP header, without decoding; ImageLimitError for
    anything else."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise ImageLimitError("corrupt PNG: no IHDR header")
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data.startswith(b"BM"):
        return _bmp_size(data)
    raise ImageLimitError(f"not a JPEG, PNG, WebP or BMP image (starts with {data[:8].hex() or 'nothing'})")


def check_dimensions(width: int, height: int) -> None:
    """Refuse empty images and images over ``MASKWATCH_MAX_IMAGE_PIXELS``."""
    if width <= 0 or height <= 0:
        raise ImageLimitError(f"image declares {width}x{height} pixels")
    limit = max_image_pixels()
    if width * height > limit:
        raise ImageLimitError(f"image of {width}x{height} = {width * height} pixels is over the limit of "
                              f"{limit} (MASKWATCH_MAX_IMAGE_PIXELS)")


def check_image_header(data: bytes) -> tuple[int, int]:
    """Check an encoded image before decoding it: size in bytes, format (JPEG/PNG/WebP/BMP), dimensions.

    Returns (width, height); raises ``ImageLimitError`` naming the problem."""
    limit = max_image_bytes()
    if len(data) > limit:
        raise ImageLimitError(f"image of {len(data)} bytes is over the limit of {limit} "
                              "(MASKWATCH_MAX_IMAGE_BYTES)")
    width, height = image_size(data)
    check_dimensions(width, height)
    return width, height
