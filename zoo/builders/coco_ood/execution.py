"""COCO-OOD execution: restyle the planned images here or in a worker pool, resumably, with progress."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from zoo.builders.coco_ood.merging import merge
from zoo.builders.coco_ood.planning import (
    IMAGE_FORMATS,
    CocoOodError,
    Job,
    check_locations,
    load_coco,
    plan_jobs,
    shard_file,
    split_header,
)
from zoo.builders.styles import Style, default_styles, get_style, image_seed
from zoo.data.coco_ood import SplitPaths, split_paths
from zoo.data.images import load_rgb_uint8
from zoo.utils.files import (
    atomic_write_bytes,
    atomic_write_json,
    remove_stale_temporaries,
    safe_join,
    sha256_bytes,
    sha256_file,
)


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs besides the job; sent once per worker process."""

    styles: tuple[Style, ...]
    out: str
    seed: int
    image_format: str
    jpeg_quality: int


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    """Encode RGB uint8 with fixed settings so equal pixels give equal bytes."""
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if image_format == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    else:
        ok, data = cv2.imencode(
            ".jpg",
            bgr,
            [
                cv2.IMWRITE_JPEG_QUALITY,
                jpeg_quality,
                cv2.IMWRITE_JPEG_OPTIMIZE,
                0,
                cv2.IMWRITE_JPEG_PROGRESSIVE,
                0,
            ],
        )
    if not ok:
        raise CocoOodError(f"OpenCV failed to encode a {image.shape} image as {image_format}")
    return data.tobytes()


def _render(job: Job, context: _Context, known: dict[str, dict[str, Any]]) -> tuple[int, dict[str, dict]]:
    """Restyle one image into every split that lacks a verified output; return its records by split."""
    source_sha256 = sha256_file(job.source)
    records: dict[str, dict[str, Any]] = {}
    image = None
    for style in context.styles:
        # Joined and checked like the source: a name must not lead out of the output root (symlinks included).
        target = safe_join(split_paths(context.out, style.name).images, job.output_name, "output folder")
        record = known.get(style.name)
        # Reuse only what provably came from this exact source and was fully written.
        if (
            record is not None
            and record["source_sha256"] == source_sha256
            and target.is_file()
            and sha256_file(target) == record["sha256"]
        ):
            records[style.name] = record
            continue
        if image is None:
            image = load_rgb_uint8(job.source)
            if image.shape[:2] != (job.height, job.width):
                raise CocoOodError(
                    f"{job.source}: image is {image.shape[1]}x{image.shape[0]} but the annotation "
                    f"says {job.width}x{job.height}"
                )
        seed = image_seed(context.seed, style.name, job.image_id)
        styled, params = style.apply(image.copy(), np.random.default_rng(seed), job.annotations)
        if styled.shape != image.shape or styled.dtype != np.uint8:
            raise CocoOodError(
                f"style {style.name!r} returned {styled.shape} {styled.dtype} for image "
                f"{job.image_id}; a style must keep the RGB uint8 shape {image.shape}"
            )
        data = encode_image(styled, context.image_format, context.jpeg_quality)
        atomic_write_bytes(target, data)
        records[style.name] = json.loads(
            json.dumps(
                {
                    "image_id": job.image_id,
                    "style": style.name,
                    "file_name": job.output_name,
                    "source_file_name": job.file_name,
                    "width": job.width,
                    "height": job.height,
                    "seed": seed,
                    "params": params,
                    "source_sha256": source_sha256,
                    "sha256": sha256_bytes(data),
                }
            )
        )
    return job.image_id, records


_WORKER_CONTEXT: _Context | None = None


def _init_worker(context: _Context) -> None:
    """Pool initializer: keep the context and stop OpenCV from oversubscribing the cores with threads."""
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = context
    cv2.setNumThreads(1)


def _render_in_worker(task: tuple[Job, dict[str, dict[str, Any]]]) -> tuple[int, dict[str, dict]]:
    assert _WORKER_CONTEXT is not None, "worker used without _init_worker"
    return _render(task[0], _WORKER_CONTEXT, task[1])


def _run_tasks(
    tasks: list[tuple[Job, dict]], context: _Context, workers: int, mp_context: str
) -> Iterator[tuple[int, dict[str, dict]]]:
    """Render tasks in this process or a process pool, yielding results as they complete."""
    if workers <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(
            1
        )  # same single-threaded kernels as in the workers, so 1 vs N workers compares fairly
        try:
            for job, known in tasks:
                yield _render(job, context, known)
        finally:
            cv2.setNumThreads(threads)
        return
    # spawn: workers start clean, without inheriting the parent's threads (OpenCV, torch) that fork can
    # deadlock.
    with multiprocessing.get_context(mp_context).Pool(workers, _init_worker, (context,)) as pool:
        yield from pool.imap_unordered(_render_in_worker, tasks, chunksize=1)


def _load_known(path: Path, headers: dict[str, dict], source: str) -> dict[str, dict[str, dict]]:
    """Records of a shard file or manifest for the requested splits, refusing other settings."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if "splits" in data:  # a shard progress record: {"splits": {name: {"header", "images": {id: record}}}}
        splits = data["splits"]
    else:  # a finished split's manifest: {"header", "images": [record, ...]}
        splits = {
            data["header"]["split"]: {
                "header": data["header"],
                "images": {str(r["image_id"]): r for r in data["images"]},
            }
        }
    known: dict[str, dict[str, dict]] = {}
    for name, split in splits.items():
        if name not in headers:
            continue
        if split["header"] != headers[name]:
            differing = sorted(
                key
                for key in set(split["header"]) | set(headers[name])
                if split["header"].get(key) != headers[name].get(key)
            )
            raise CocoOodError(
                f"{source} {path} was built with different settings for split {name!r} "
                f"({', '.join(differing)}); use another output root or delete that split"
            )
        known[name] = split["images"]
    return known


def build(
    ann: str | os.PathLike,
    image_root: str | os.PathLike,
    out: str | os.PathLike,
    styles: Sequence[str] | None = None,
    *,
    seed: int = 0,
    workers: int = 1,
    shard: tuple[int, int] = (0, 1),
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    progress: bool = True,
    checkpoint_seconds: float = 2.0,
    mp_context: str = "spawn",
) -> dict[str, SplitPaths] | None:
    """Build the COCO-OOD splits of `styles` for shard `shard` (i, n); with n == 1 also merge and return them.

    Resumable: outputs whose hash matches a recorded one are kept; images whose record was lost are
    re-rendered (per-image seeds make that byte-identical). Sharded runs (n > 1) return None and need `merge`.
    """
    ann, image_root, out = Path(ann), Path(image_root), Path(out)
    if image_format not in IMAGE_FORMATS:
        raise CocoOodError(f"image_format must be one of {IMAGE_FORMATS}; got {image_format!r}")
    if not 1 <= jpeg_quality <= 100:
        raise CocoOodError(f"jpeg_quality must be 1..100; got {jpeg_quality}")
    if workers < 1:
        raise CocoOodError(f"workers must be >= 1; got {workers}")
    index, count = shard
    if not 0 <= index < count:
        raise CocoOodError(f"shard index must satisfy 0 <= i < n; got {index}/{count}")
    if not image_root.is_dir():
        raise CocoOodError(f"image root {image_root} is not a folder")
    check_locations(ann, image_root, out)
    try:
        style_objects = tuple(get_style(name) for name in dict.fromkeys(styles or default_styles()))
    except KeyError as error:
        raise CocoOodError(error.args[0]) from error
    coco = load_coco(ann)
    ann_sha256 = sha256_file(ann)
    jobs = plan_jobs(coco, ann, image_root, image_format)[index::count]
    headers = {
        style.name: split_header(style, seed, image_format, jpeg_quality, ann_sha256)
        for style in style_objects
    }

    progress_file = shard_file(out, shard)
    records: dict[str, dict[str, dict]] = {name: {} for name in headers}
    sources = [("manifest", split_paths(out, name).manifest) for name in headers]
    sources.append(("progress record", progress_file))
    for source, path in sources:
        if path.is_file():
            for name, images in _load_known(path, headers, source).items():
                records[name].update(images)
    remove_stale_temporaries(
        [split_paths(out, name).images / job.output_name for name in headers for job in jobs]
        + [progress_file]
    )

    def checkpoint() -> None:
        # Records are sorted by id on write (canonical JSON), so the file does not depend on completion order.
        atomic_write_json(
            progress_file,
            {
                "shard": [index, count],
                "splits": {name: {"header": headers[name], "images": records[name]} for name in headers},
            },
        )

    checkpoint()
    context = _Context(style_objects, str(out), seed, image_format, jpeg_quality)
    tasks = [
        (
            job,
            {
                name: records[name][str(job.image_id)]
                for name in headers
                if str(job.image_id) in records[name]
            },
        )
        for job in jobs
    ]
    last = time.monotonic()
    with tqdm(
        total=len(tasks),
        disable=not progress,
        unit="img",
        desc=f"COCO-OOD shard {index}/{count} ({len(headers)} styles)",
    ) as bar:
        for image_id, image_records in _run_tasks(tasks, context, workers, mp_context):
            for name, record in image_records.items():
                records[name][str(image_id)] = record
            if time.monotonic() - last >= checkpoint_seconds:
                checkpoint()
                last = time.monotonic()
            bar.update()
    checkpoint()
    return merge(ann, out) if count == 1 else None
