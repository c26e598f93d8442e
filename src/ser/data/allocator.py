"""Keep freed memory in the process instead of handing it back to the kernel.

Feature extraction allocates and frees a few blocks of 0.2-4 MB per clip (decoded
samples, the frame matrix, the spectrum). glibc serves blocks above 128 KB with
fresh mmap() calls and returns them on free, so every clip pays a page fault per
4 KB page again: ~290 faults, about a quarter of a clip's time on the 2-core VM
(benchmarks/RESULTS.md). Raising glibc's mmap and trim thresholds lets those blocks
be reused from the heap. Process-wide, so only worker processes call it.
"""

from __future__ import annotations

import ctypes
import ctypes.util

#: Blocks up to this size come from the heap and are reused; a clip needs < 8 MB.
MMAP_THRESHOLD = 32 << 20
#: Free heap memory kept before glibc trims it back to the kernel.
TRIM_THRESHOLD = 128 << 20

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Tune glibc malloc as above; return False (and change nothing) off glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
