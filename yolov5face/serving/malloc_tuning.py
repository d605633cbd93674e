"""glibc allocator settings for serving processes: reuse freed image buffers, don't unmap them."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt() parameter numbers from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold above 32 MiB on 64-bit systems.
MMAP_THRESHOLD = 32 * 1024 * 1024
TRIM_THRESHOLD = 128 * 1024 * 1024


def keep_freed_buffers(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Serve buffers up to `mmap_threshold` bytes from the heap and keep freed ones for reuse.

    By default glibc maps large allocations afresh and hands freed memory at the top of the
    heap back to the kernel once it passes a trim threshold; both thresholds adapt, but stay
    below what one batch frees (decoded images, resized copies, the float batch: ~16 MB for
    four 1280x720 JPEGs). So every batch faulted its buffers in again: ~1000 page faults and
    ~2.5 ms of kernel time per zidane.jpg. Fixed thresholds make glibc keep and reuse that
    memory. Returns False where mallopt is missing (not glibc), leaving the process as it was.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.info("mallopt unavailable: allocator left as it is")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    if not ok:
        logger.warning("mallopt refused the thresholds: allocator left at its defaults")
    return ok
