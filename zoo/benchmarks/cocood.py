"""COCO-OOD builder throughput: images/s per style with 1 and 2 worker processes, side by side."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from zoo.builders.coco_ood import build, load_coco
from zoo.builders.styles import default_styles
from zoo.utils.files import atomic_write_json, safe_join


def _tiled_input(
    ann: str | os.PathLike, image_root: str | os.PathLike, repeat: int, folder: Path
) -> tuple[Path, int]:
    """Copy the image set `repeat` times under new ids and folders (enough work to time); return (ann, count).
    """
    coco = load_coco(ann)
    top = max(image["id"] for image in coco["images"]) + 1
    images = []
    for copy in range(repeat):
        for image in coco["images"]:
            # Real copies, not symlinks: the builder resolves links and would see them leave the image root.
            name = f"copy{copy}/{image['file_name']}"
            target = folder / "images" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(safe_join(image_root, image["file_name"]), target)
            # Distinct ids give distinct seeds, so every copy is rendered anew.
            images.append({**image, "id": image["id"] + copy * top, "file_name": name})
    tiled = folder / "annotations.json"
    atomic_write_json(tiled, {**coco, "images": images, "annotations": []})
    return tiled, len(images)


def _imported(_: int) -> None:
    """No-op run in a spawned worker; unpickling it imports this module and so the builder's dependencies."""


def _pool_startup_seconds(workers: int) -> float:
    """Seconds to spawn `workers` processes that import the builder, as the build's own pool does."""
    if workers <= 1:
        return 0.0
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        pool.map(_imported, range(workers), chunksize=1)
    return time.perf_counter() - start


def run(
    ann: str | os.PathLike,
    image_root: str | os.PathLike,
    styles: Sequence[str] | None = None,
    workers: Sequence[int] = (1, 2),
    repeat: int = 10,
    dry_run: bool = False,
) -> list[dict[str, float | str]]:
    """Time a full build of each style with each worker count and print a table of images/s; return its rows.

    Rates are wall-clock over the whole build; the pool's spawn start-up (measured once per worker count) is
    also subtracted in a second ratio, since it is a fixed cost that a real 5,000-image build amortises.
    dry_run: the first style, one worker, the image set once (a test's smoke run).
    """
    if dry_run:
        styles, workers, repeat = default_styles()[:1], (1,), 1
    startup = {count: _pool_startup_seconds(count) for count in workers}
    rows: list[dict[str, float | str]] = []
    with tempfile.TemporaryDirectory(prefix="cocood-bench-") as tmp:
        tiled, count = _tiled_input(ann, image_root, repeat, Path(tmp) / "input")
        for style in styles or default_styles():
            row: dict[str, float | str] = {"style": style}
            for worker_count in workers:
                out = Path(tmp) / f"out-{style}-{worker_count}"
                start = time.perf_counter()
                build(
                    tiled, Path(tmp) / "input" / "images", out, [style], workers=worker_count, progress=False
                )
                seconds = time.perf_counter() - start
                row[f"{worker_count}w"] = count / seconds
                row[f"{worker_count}w_net"] = count / max(seconds - startup[worker_count], 1e-9)
                shutil.rmtree(out)
            rows.append(row)
    first, last = workers[0], workers[-1]
    print(
        f"COCO-OOD build throughput: {count} images, {os.cpu_count()} CPUs; pool start-up "
        + ", ".join(f"{w} workers {startup[w]:.1f} s" for w in workers if w > 1)
    )
    print(
        " | ".join(
            ["| style"]
            + [f"{w} worker{'s' if w > 1 else ''} img/s" for w in workers]
            + [f"ratio {last}/{first}", f"ratio {last}/{first} without start-up |"]
        )
    )
    print("|---" * (len(workers) + 3) + "|")
    for row in rows:
        cells = [f"| {row['style']}"] + [f"{row[f'{w}w']:.2f}" for w in workers]
        cells += [
            f"{row[f'{last}w'] / row[f'{first}w']:.2f}",
            f"{row[f'{last}w_net'] / row[f'{first}w_net']:.2f} |",
        ]
        print(" | ".join(cells))
    return rows
