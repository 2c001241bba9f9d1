"""Benchmark: persons/s of the full top-down SDPose predictor (crop, VAE, UNet, head, decode), with and without flip test."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import torch

from zoo.data.synthetic.figures import render_figures
from zoo.inference.pose import PosePredictor
from zoo.registry import REPO_ROOT

TINY_MODEL = REPO_ROOT / "checkpoints" / "tiny" / "sdpose_body"


def run(
    model: str | Path = TINY_MODEL,
    num_images: int = 16,
    image_size: tuple[int, int] = (192, 192),
    batch_size: int = 32,
    repeats: int = 3,
    device: str = "cpu",
    threads: int = 1,
    seed: int = 0,
) -> dict[str, float]:
    """Time the predictor on synthetic figure images with their ground-truth boxes; print and return persons/s."""
    # On a shared 2-core machine extra intra-op threads only add contention; both runs get the same threads.
    previous = (torch.get_num_threads(), cv2.getNumThreads())
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    try:
        predictor = PosePredictor.from_pretrained(model, device=device)
        figures = [render_figures(seed * 100_003 + i, *image_size) for i in range(num_images)]
        images = [figure.image for figure in figures]
        boxes = [np.array([[x, y, x + w, y + h] for x, y, w, h in (p.bbox for p in figure.people)]) for figure in figures]
        persons = sum(len(b) for b in boxes)
        results = {}
        for flip_test in (False, True):
            results["flip" if flip_test else "plain"] = persons / _best_of(
                lambda flip_test=flip_test: predictor(images, boxes=boxes, flip_test=flip_test, batch_size=batch_size),
                repeats, device,
            )
    finally:
        torch.set_num_threads(previous[0])
        cv2.setNumThreads(previous[1])
    print(f"SDPose top-down ({Path(model).name}, {device}, {threads} thread(s), {persons} persons in {num_images} "
          f"images, batch {batch_size})")
    print("| flip test | persons/s |")
    print("| --- | --- |")
    print(f"| off | {results['plain']:.1f} |")
    print(f"| on | {results['flip']:.1f} |")
    return {"persons": float(persons), "persons_per_s": results["plain"], "persons_per_s_flip": results["flip"]}


def _best_of(fn, repeats: int, device: str) -> float:  # noqa: ANN001
    # Best-of-N wall time after a warm-up call: the least disturbed run on a shared machine.
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


if __name__ == "__main__":
    run()
