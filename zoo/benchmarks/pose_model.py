"""Benchmark: persons/s of the full top-down SDPose predictor (crop, VAE, UNet, head, decode), with and
without flip test."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.benchmarks.timing import best_of
from zoo.data.synthetic.figures import render_figures
from zoo.inference.pose import PosePredictor
from zoo.registry import REPO_ROOT
from zoo.utils.threads import pinned_threads

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
    dry_run: bool = False,
) -> dict[str, float]:
    """Time the predictor on synthetic figure images with their ground-truth boxes; print and return
    persons/s.

    dry_run: one image, one repeat (a test's smoke run).
    """
    if dry_run:
        num_images, repeats = 1, 1
    # On a shared 2-core machine extra intra-op threads only add contention; both runs get the same threads.
    with pinned_threads(threads):
        predictor = PosePredictor.from_pretrained(model, device=device)
        figures = [render_figures(seed * 100_003 + i, *image_size) for i in range(num_images)]
        images = [figure.image for figure in figures]
        boxes = [
            np.array([[x, y, x + w, y + h] for x, y, w, h in (p.bbox for p in figure.people)])
            for figure in figures
        ]
        persons = sum(len(b) for b in boxes)
        results = {}
        for flip_test in (False, True):
            results["flip" if flip_test else "plain"] = persons / best_of(
                lambda flip_test=flip_test: predictor(
                    images, boxes=boxes, flip_test=flip_test, batch_size=batch_size
                ),
                repeats,
            )
    print(
        f"SDPose top-down ({Path(model).name}, {device}, {threads} thread(s), {persons} persons in "
        f"{num_images} images, batch {batch_size})"
    )
    print("| flip test | persons/s |")
    print("| --- | --- |")
    print(f"| off | {results['plain']:.1f} |")
    print(f"| on | {results['flip']:.1f} |")
    return {
        "persons": float(persons),
        "persons_per_s": results["plain"],
        "persons_per_s_flip": results["flip"],
    }


if __name__ == "__main__":
    run()
