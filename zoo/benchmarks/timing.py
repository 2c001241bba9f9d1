"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import cv2
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


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """Run with `threads` torch and OpenCV threads, restoring both after (shared CPUs thrash with more)."""
    previous = (torch.get_num_threads(), cv2.getNumThreads())
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous[0])
        cv2.setNumThreads(previous[1])
