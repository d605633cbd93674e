"""Ask the CUDA driver (libcuda, through ctypes) what GPUs there are, without torch or pycuda.

`auto` backend selection and the engine cache key need only "is there a GPU, and which one";
importing CUDA torch for that loads ~2 GB of libraries into every worker.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
# cuDeviceGetAttribute ids (cuda.h: CUdevice_attribute).
_CC_MAJOR, _CC_MINOR = 75, 76


@dataclass(frozen=True)
class Gpu:
    """One CUDA device as the engine cache keys it."""

    index: int
    name: str
    compute_capability: str  # "7.5" for a T4


@functools.lru_cache(maxsize=1)
def _driver() -> ctypes.CDLL | None:
    """The initialised driver library, or None (no library, no device, or init failed)."""
    for name in _LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        status = lib.cuInit(0)
        if status != 0:
            logger.info("cuInit failed (CUresult %d): no usable CUDA device", status)
            return None
        return lib
    return None


def gpus() -> list[Gpu]:
    """The CUDA devices the driver lists ([] without a driver or a device)."""
    lib = _driver()
    if lib is None:
        return []
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    found = []
    for index in range(count.value):
        device = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(device), index) != 0:
            continue
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, len(name), device)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
        found.append(
            Gpu(index, name.value.decode(errors="replace"), f"{major.value}.{minor.value}")
        )
    return found


def cuda_available() -> bool:
    """True when the driver sees at least one CUDA device."""
    return bool(gpus())
