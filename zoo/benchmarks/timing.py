"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def best_of(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Best-of-N wall time in seconds after one warm-up call: the least disturbed run on a shared machine.

    warmup=False skips the warm-up call, for calls of tens of seconds whose shapes were already run.
    """
    if warmup:
        fn()  # warm-up (allocations, kernel caches)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_initialized():
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for it inside the timed span
        times.append(time.perf_counter() - start)
    return min(times)
