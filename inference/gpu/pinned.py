"""Page-locked host buffers for uploads to the GPU.

A copy from pageable memory goes through the driver's bounce buffer at a third of PCIe's speed (8 GB/s
measured on an H200 host against ~25 pinned): at 1024x1024 that is the upload of a frame costing more
than the detector. ONNX Runtime's Python API cannot allocate pinned memory, so the reused staging buffer
is registered with CUDA's runtime (`cudaHostRegister`), whose library onnxruntime-gpu has loaded.
"""

from __future__ import annotations

import ctypes
import logging
from functools import cache

import numpy as np

log = logging.getLogger(__name__)

_PORTABLE = 1  # cudaHostRegisterPortable: pinned for every CUDA context in the process


@cache
def _cudart() -> ctypes.CDLL | None:
    for name in ("libcudart.so.13", "libcudart.so.12", "libcudart.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    log.warning("CUDA runtime library not found: frames are uploaded from pageable memory (slower)")
    return None


def pinned_empty(shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """An uninitialised uint8 array and whether CUDA page-locked it (False: plain memory, still correct)."""
    array = np.empty(shape, np.uint8)
    lib = _cudart()
    if lib is None or array.nbytes == 0:
        return array, False
    rc = lib.cudaHostRegister(ctypes.c_void_p(array.ctypes.data), ctypes.c_size_t(array.nbytes), _PORTABLE)
    if rc != 0:
        log.warning("cudaHostRegister failed (error %d): uploading from pageable memory", rc)
        return array, False
    return array, True


def unpin(array: np.ndarray) -> None:
    """Undo `pinned_empty`'s registration before the array is freed."""
    lib = _cudart()
    if lib is not None:
        lib.cudaHostUnregister(ctypes.c_void_p(array.ctypes.data))
