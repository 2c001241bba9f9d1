"""Benchmark: peak host memory of the top-down pose predictor for 8 and for 64 mixed-size image files at batch
size 8 (issue 14's goal: the 64-image peak within 1.3x of the 8-image peak).

How the peak is measured: each measurement runs in a fresh child process (forked where the OS allows, so
that the imports are not paid again; spawned otherwise) that loads the predictor, warms it up on one batch,
returns freed heap to the OS (`malloc_trim`), then resets the kernel's resident-set high-water mark
(`/proc/self/clear_refs` = 5) and calls the predictor once. The peak is the high-water mark (`VmHWM`) minus
the resident set just before the call: every byte the call touched, whoever allocated it (numpy, PIL,
OpenCV, torch). Where the kernel refuses the reset, the column falls back to the child's `ru_maxrss` minus the
same baseline (an upper bound: loading counts too). The same child then repeats the call under `tracemalloc`,
whose peak covers the Python and numpy allocations (decoded images, crops) but not PIL's or torch's own
buffers: the memory the predictor holds, whatever the allocator does with what it frees.

Each row is measured twice: with glibc's default malloc, whose mmap threshold rises to the largest buffer
freed so far, so that later large buffers (decoded photos of changing sizes, activations) come from the heap
and the holes they leave stay resident; and with the threshold fixed at 128 KiB (`mallopt`, what
`MALLOC_MMAP_THRESHOLD_=131072` does), so that every large buffer goes back to the OS when freed and the RSS
peak is the memory actually in use. The difference is the allocator's, not the predictor's.

Rows: "files" passes paths (decoded inside the call as the crops are taken); "pre-decoded" passes arrays
decoded by the caller up front, which is what every call cost before decoding moved into the batches and what
a caller who decodes everything first still pays.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import multiprocessing
import os
import resource
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

from zoo.registry import REPO_ROOT

TINY_MODEL = REPO_ROOT / "checkpoints" / "tiny" / "sdpose_body"
# Mixed sizes, cycled so that the first 8 images already hold every size: a fair 8 vs 64 comparison.
SIZES = (
    (1920, 1080), (640, 480), (1280, 960), (800, 1200), (1600, 900), (480, 640), (1024, 768), (720, 1280)
)  # fmt: skip
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
ALLOCATORS = ("glibc default", "mmap threshold 128 KiB")
GOAL = 1.3


def _kib(field: str) -> int | None:
    """A `VmRSS` / `VmHWM` line of /proc/self/status in bytes, or None off Linux."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    return None


def _reset_peak() -> bool:
    """Reset this process's resident-set high-water mark (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _fix_mmap_threshold() -> bool:
    """Fix glibc's mmap threshold at 128 KiB (no dynamic rise): large buffers are unmapped when freed."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 128 * 1024))
    except (OSError, AttributeError):
        return False


def _trim_heap() -> None:
    """Hand freed heap back to the OS (glibc), so that the call's pages are counted as it touches them."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _measure(
    model: str, paths: list[str], batch_size: int, decoded: bool, threads: int, allocator: str
) -> dict[str, Any]:
    """In the child: the call's RSS peak above its baseline and its tracemalloc peak, in bytes."""
    import torch

    if allocator != ALLOCATORS[0] and not _fix_mmap_threshold():
        return {"rss_peak": None, "exact": False, "traced_peak": None}

    from zoo.data.images import load_rgb_uint8
    from zoo.inference.pose import PosePredictor

    torch.set_num_threads(threads)
    predictor = PosePredictor.from_pretrained(model)
    predictor(paths[:batch_size], batch_size=batch_size)  # warm-up: lazy initialisation, first-use buffers

    def inputs() -> list:
        return [load_rgb_uint8(path) for path in paths] if decoded else list(paths)

    gc.collect()
    _trim_heap()
    baseline = _kib("VmRSS")
    exact = _reset_peak()
    predictor(inputs(), batch_size=batch_size)
    high = _kib("VmHWM") if exact else None
    if high is None or baseline is None:
        exact, baseline = False, baseline or 0
        high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    gc.collect()
    tracemalloc.start()
    predictor(inputs(), batch_size=batch_size)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"rss_peak": high - baseline, "exact": exact, "traced_peak": traced}


def _child(connection: Any, *args: Any) -> None:
    try:
        connection.send(_measure(*args))
    except BaseException as error:  # reported by the parent, which names the measurement
        connection.send({"error": f"{type(error).__name__}: {error}"})
    finally:
        connection.close()


def measure_in_child(
    model: str, paths: list[str], batch_size: int, decoded: bool, threads: int, allocator: str
) -> dict:
    """One measurement in a fresh child process (see the module docstring)."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(
        target=_child, args=(send, model, paths, batch_size, decoded, threads, allocator)
    )
    process.start()
    send.close()
    try:
        result = receive.recv()
    except EOFError:
        result = {"error": "the measuring process died without a result"}
    process.join()
    if "error" in result:
        raise RuntimeError(
            f"memory benchmark ({len(paths)} images, decoded={decoded}, {allocator}): {result['error']}"
        )
    return result


def write_images(folder: Path, count: int, sizes: tuple[tuple[int, int], ...]) -> list[str]:
    """`count` JPEG files of the cycled `sizes` (smooth noise, so that they compress like photos)."""
    import cv2

    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        width, height = sizes[index % len(sizes)]
        small = rng.integers(0, 256, (max(height // 16, 1), max(width // 16, 1), 3), dtype=np.uint8)
        image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
        path = folder / f"{index:03d}.jpg"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


def run(
    model: str | Path = TINY_MODEL,
    counts: tuple[int, int] = (8, 64),
    batch_size: int = 8,
    threads: int = 1,
    dry_run: bool = False,
) -> dict[str, float]:
    """Print the table of peaks and the 64 / 8 ratios; return them.

    dry_run: 2 and 4 small images at batch size 2, files only (a test's smoke run).
    """
    sizes = SIZES
    rows = [("files", False), ("pre-decoded", True)]
    if dry_run:
        counts, batch_size, sizes, rows = (2, 4), 2, ((64, 48), (40, 72)), rows[:1]
    few, many = counts
    results: dict[tuple[str, str], dict[int, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="zoo_memory_") as folder:
        paths = write_images(Path(folder), many, sizes)
        for name, decoded in rows:
            for allocator in ALLOCATORS:
                results[name, allocator] = {
                    n: measure_in_child(str(model), paths[:n], batch_size, decoded, threads, allocator)
                    for n in counts
                }
    exact = all(r["exact"] for by_count in results.values() for r in by_count.values() if r["rss_peak"])
    mib = 1024 * 1024
    print(
        f"Pose predictor peak host memory ({Path(model).name}, batch {batch_size}, {few} vs {many} "
        f"mixed-size JPEGs up to {max(w for w, _ in sizes)}x{max(h for _, h in sizes)}; RSS: "
        + ("high-water mark above the pre-call RSS" if exact else "ru_maxrss above the pre-call RSS")
        + "; tracemalloc: Python + numpy only)"
    )
    print(
        f"| inputs | malloc | RSS peak, {few} images (MiB) | RSS peak, {many} images (MiB) | ratio | "
        f"tracemalloc, {few} (MiB) | tracemalloc, {many} (MiB) | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    summary: dict[str, float] = {}

    def cell(value: float | None) -> str:
        return "n/a" if value is None else f"{value / mib:.1f}"

    for (name, allocator), by_count in results.items():
        rss = [by_count[n]["rss_peak"] for n in counts]
        traced = [by_count[n]["traced_peak"] for n in counts]
        ratios = [None if None in pair else pair[1] / max(pair[0], 1) for pair in (rss, traced)]
        shown = ["n/a" if r is None else f"{r:.2f}x" for r in ratios]
        print(
            f"| {name} | {allocator} | {cell(rss[0])} | {cell(rss[1])} | {shown[0]} | {cell(traced[0])} | "
            f"{cell(traced[1])} | {shown[1]} |"
        )
        key = f"{name}_{'default' if allocator == ALLOCATORS[0] else 'mmap'}".replace("-", "_")
        for measure, ratio in zip(("rss", "traced"), ratios, strict=True):
            summary[f"{key}_{measure}_ratio"] = float("nan") if ratio is None else ratio
    print(f"(goal: {many}-image peak within {GOAL}x of the {few}-image peak)")
    return summary

if __name__ == "__main__":
    run(threads=int(os.environ.get("THREADS", "1")))
