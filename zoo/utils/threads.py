"""Thread pinning: torch and OpenCV thread counts for a block of work."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import cv2
import torch


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
