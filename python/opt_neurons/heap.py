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


def page_faults() -> tuple[int, float] | None:
    """This process's minor page faults so far and its system CPU seconds (None where the OS does not say).
    With glibc's malloc a CPU forward's large temporaries are mapped afresh more often than not, and the
    system time of their page faults can cost a third of the forward (benches/RESULTS.md section 7a)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_minflt, usage.ru_stime


# A CPU forward phase whose system time exceeds this share of its wall time gets the allocator hint.
FAULTS_HINT_SHARE = 0.1
ALLOCATOR_HINT = (
    "page faults of torch's temporaries took {share:.0%} of the forward phase (glibc's malloc maps them afresh); "
    "on the CPU run under jemalloc: LD_PRELOAD=libjemalloc.so.2 MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1 "
    "(README, Runs on the CPU)"
)


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
