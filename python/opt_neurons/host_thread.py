"""One thread for the host-side work of the capture hook when the forward pass runs on the CPU.

The bits a layer's hook packs wait for the counting thread, and the examples' results wait for the batch's
commit: host arrays that outlive the layer. Allocated in the forward's thread, they land in glibc's main heap
between the free chunks it reuses for torch's large CPU temporaries (a 4096 x 3072 float32 output is 50 MB),
split them, and the forward then takes fresh pages and their faults instead (+12% to +52% over the bare
forward, mostly system time). Allocated in this thread they come from its own malloc arena
(benches/RESULTS.md section 7a). The forward's thread waits for the result, so nothing runs in parallel.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked child inherits the pool but not its thread (and maybe the lock held): it starts afresh."""
    global _pool, _lock
    _pool, _lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def run_for(t: torch.Tensor, fn: Callable[..., T], *args: object) -> T:
    """fn(*args) in the host thread when `t` is on the CPU; here otherwise (a GPU's host work is small)."""
    if t.device.type != "cpu":
        return fn(*args)
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="opt-neurons-host")
        pool = _pool
    return pool.submit(fn, *args).result()
