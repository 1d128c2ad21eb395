"""Giving the C heap's free pages back to the OS (glibc's malloc_trim): freed temporaries of a CPU forward
pass, and freed streamed layers, otherwise stay resident."""

from __future__ import annotations

import ctypes
from typing import Any


def _find_malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except Exception:  # other C libraries (musl, macOS, Windows) have none
        return None


_MALLOC_TRIM = _find_malloc_trim()
# Seconds between two trims at most (a trim walks the heap's free chunks: benches/RESULTS.md section 4).
TRIM_EVERY = 5.0


def release_free_heap() -> bool:
    """Give the heap's free pages back to the OS (glibc's malloc_trim; False where there is none).

    A CPU forward pass allocates its temporaries on the heap, and glibc returns freed heap memory only
    from the top, which small long-lived allocations made in between (the bits and rows of batches
    waiting for the counting thread, among others) keep occupied; a trim per block sent lowers the run's
    peak RSS (measured in benches/RESULTS.md section 4)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
