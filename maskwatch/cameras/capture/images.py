"""Encoded and decoded images from cameras, checked against the limits before they cost memory."""

from __future__ import annotations

import numpy as np

from maskwatch.cameras.capture.errors import OversizedError
from maskwatch.imagelimits import ImageLimitError, check_dimensions, check_image_header, image_size
from maskwatch.inference.preprocess import InvalidImageError, decode_image


def decode_checked(data: bytes) -> np.ndarray:
    """Decode an encoded image after checking its header: a corrupt header, or a format other than
    JPEG/PNG/WebP/BMP, is an ``InvalidImageError``; an image over ``MASKWATCH_MAX_IMAGE_BYTES``/``_PIXELS``
    an ``OversizedError``."""
    try:
        image_size(data)
    except ImageLimitError as exc:
        raise InvalidImageError(str(exc)) from None
    try:
        check_image_header(data)
    except ImageLimitError as exc:  # the header is fine, so this is one of the limits
        raise OversizedError(str(exc)) from None
    return decode_image(data)


def check_frame_size(frame: np.ndarray) -> np.ndarray:
    """Frames that arrive decoded (RTSP, video) are held to the same pixel limit."""
    try:
        check_dimensions(frame.shape[1], frame.shape[0])
    except ImageLimitError as exc:
        raise OversizedError(str(exc)) from None
    return frame
