"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


def _timed(fn: Callable[[], object]) -> float:
    """Wall time of one call in seconds (GPU work waited for inside the timed span)."""
    start = time.perf_counter()
    fn()
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()  # GPU work is asynchronous: wait for it inside the timed span
    return time.perf_counter() - start


def best_of(fn: Callable[[], object], repeats: int, warmup: bool = True) -> float:
    """Best-of-N wall time in seconds after one warm-up call: the least disturbed run on a shared machine.

    warmup=False skips the warm-up call, for calls of tens of seconds whose shapes were already run.
    """
    if warmup:
        fn()  # warm-up (allocations, kernel caches)
    return min(_timed(fn) for _ in range(repeats))


@dataclass
class PairedTimes:
    """Seconds of a call A and its reference B, timed back to back in pairs (A B, B A, A B, ...)."""

    a: list[float]
    b: list[float]

    @property
    def pair_ratios(self) -> list[float]:
        """A / B within each pair: both calls saw nearly the same load."""
        return [a / b for a, b in zip(self.a, self.b, strict=True)]

    @property
    def median_ratio(self) -> float:
        """The median of the per-pair ratios (robust to a pair that a load burst hit on one side)."""
        return statistics.median(self.pair_ratios)

    @property
    def min_ratio(self) -> float:
        """min(A) / min(B): each call's least disturbed run."""
        return min(self.a) / min(self.b)


def interleaved_pairs(
    a: Callable[[], object], b: Callable[[], object], pairs: int, warmup: bool = False
) -> PairedTimes:
    """Time `a` against `b` in `pairs` back-to-back pairs whose order alternates (A B, B A, ...).

    On a shared machine the load drifts over minutes: calls timed minutes apart differ by the drift, while
    the two calls of a pair see nearly the same load; alternating the order cancels a steady drift within
    pairs. warmup=True runs each once first (skip it when the shapes have already run).
    """
    if pairs < 1:
        raise ValueError(f"pairs must be >= 1; got {pairs}")
    if warmup:
        a(), b()
    times_a, times_b = [], []
    for index in range(pairs):
        if index % 2 == 0:
            times_a.append(_timed(a))
            times_b.append(_timed(b))
        else:
            times_b.append(_timed(b))
            times_a.append(_timed(a))
    return PairedTimes(times_a, times_b)


class InsideTimer:
    """Wall seconds spent inside chosen methods (a model's forward, a VAE's encode) while active.

    What one call spent inside its model calls, measured within that same call: unlike two calls timed one
    after the other, the load cannot drift between the two numbers. Methods are wrapped on the instance and
    restored on exit; the wrapped methods must not call one another (their time would count twice).
    """

    def __init__(self, targets: Sequence[tuple[object, str]]):
        self.targets = list(targets)
        self.seconds = 0.0
        self._saved: list[tuple[object, str, object]] = []

    def __enter__(self) -> InsideTimer:
        for owner, name in self.targets:
            self._saved.append((owner, name, vars(owner).get(name, _CLASS_ATTRIBUTE)))
            setattr(owner, name, self._timed(getattr(owner, name)))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for owner, name, previous in reversed(self._saved):
            if previous is _CLASS_ATTRIBUTE:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)
        self._saved.clear()

    def _timed(self, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


_CLASS_ATTRIBUTE = object()  # marks a method that lived on the class, not the instance, before wrapping
