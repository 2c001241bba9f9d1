"""Benchmark: DiffPose video persons/s vs DDIM steps and ensemble, and frame-feature reuse vs per-clip
recomputation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zoo.benchmarks.timing import best_of
from zoo.data.synthetic.moving_figures import render_moving_video
from zoo.inference.video_pose import VideoPosePredictor
from zoo.registry import REPO_ROOT
from zoo.utils.threads import pinned_threads

TINY_MODEL = REPO_ROOT / "checkpoints" / "tiny" / "diffpose"


def run(
    model: str | Path = TINY_MODEL,
    num_frames: int = 24,
    video_size: tuple[int, int] = (128, 128),
    batch_size: int = 32,
    repeats: int = 3,
    device: str = "cpu",
    threads: int = 1,
    seed: int = 0,
    dry_run: bool = False,
) -> dict[str, float]:
    """Time the predictor on one synthetic video with its ground-truth boxes; print and return persons/s.

    The grid runs steps {1, 2, 4} x ensemble {1, 4} with feature reuse; the reuse comparison runs the default
    sampling twice on the same clips, sharing frame crops (`box_window` 8) and recomputing every clip's
    frames. dry_run: 4 frames, one repeat, steps/ensemble 1 only (a test's smoke run).
    """
    if dry_run:
        num_frames, repeats = 4, 1
    grid = [(1, 1)] if dry_run else [(s, e) for s in (1, 2, 4) for e in (1, 4)]
    with pinned_threads(threads):
        predictor = VideoPosePredictor.from_pretrained(model, device=device)
        video = render_moving_video(seed, num_frames, *video_size)
        boxes = [
            np.array([[x, y, x + w, y + h] for x, y, w, h in (p.bbox for p in people)]).reshape(-1, 4)
            for people in video.people
        ]
        persons = sum(len(b) for b in boxes)

        def persons_per_s(**options: object) -> float:
            return persons / best_of(
                lambda: predictor(video.frames, boxes=boxes, batch_size=batch_size, **options), repeats
            )

        results = {f"s{s}_e{e}": persons_per_s(steps=s, ensemble=e) for s, e in grid}
        reuse = persons_per_s(reuse_features=True)
        recompute = persons_per_s(reuse_features=False)
        crops = {
            flag: predictor(video.frames, boxes=boxes, reuse_features=flag).backbone_crops
            for flag in (True, False)
        }
    print(
        f"DiffPose video ({Path(model).name}, {device}, {threads} thread(s), {persons} persons in "
        f"{num_frames} frames of {video_size[0]}x{video_size[1]}, batch {batch_size})"
    )
    print("| steps | ensemble | persons/s |")
    print("| ---: | ---: | ---: |")
    for s, e in grid:
        print(f"| {s} | {e} | {results[f's{s}_e{e}']:.1f} |")
    print("| frame features | backbone crops | persons/s | speed-up |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| recomputed per clip | {crops[False]} | {recompute:.1f} | 1.00x |")
    print(f"| reused across clips (box_window 8) | {crops[True]} | {reuse:.1f} | {reuse / recompute:.2f}x |")
    return {
        "persons": float(persons),
        **{f"persons_per_s_{k}": v for k, v in results.items()},
        "persons_per_s_reuse": reuse,
        "persons_per_s_recompute": recompute,
        "reuse_speedup": reuse / recompute,
        "backbone_crops_reuse": float(crops[True]),
        "backbone_crops_recompute": float(crops[False]),
    }


if __name__ == "__main__":
    run()
