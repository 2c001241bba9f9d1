"""COCO-OOD builder: restyled and corrupted copies of a COCO keypoint set with its annotations kept exactly.

Layout written under the output root, one folder per split (= style name):

    OUT/<split>/images/<file_name>   the restyled image, same size and relative path as the source
    OUT/<split>/annotations.json     the input annotations; only `info.coco_ood` and image file suffixes differ
    OUT/<split>/manifest.json        per image: style, seed, parameters, source and output SHA-256
    OUT/.work/shard-<i>-of-<n>.json  progress of an unfinished or unmerged shard (removed by the merge)
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations
import cv2
import numpy as np
from tqdm import tqdm

from zoo.builders.styles import Style, default_styles, get_style, image_seed
from zoo.data.images import load_rgb_uint8
from zoo.utils.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    safe_join,
    sha256_bytes,
    sha256_file,
)

MANIFEST_VERSION = 1
IMAGE_FORMATS = ("jpg", "png")
WORK_DIR = ".work"
_SHARD_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")


class CocoOodError(ValueError):
    """The build cannot proceed; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class SplitPaths:
    """Where one split's files live."""

    name: str
    root: Path
    images: Path
    annotations: Path
    manifest: Path


def split_paths(out: str | os.PathLike, name: str) -> SplitPaths:
    """Paths of split `name` under output root `out`."""
    root = Path(out) / name
    return SplitPaths(name, root, root / "images", root / "annotations.json", root / "manifest.json")


@dataclass(frozen=True)
class _Job:
    """One source image and what a worker needs to restyle it."""

    image_id: int
    file_name: str
    output_name: str
    source: str
    width: int
    height: int
    annotations: list[dict[str, Any]]


@dataclass(frozen=True)
class _Context:
    """Everything a worker needs besides the job; sent once per worker process."""

    styles: tuple[Style, ...]
    out: str
    seed: int
    image_format: str
    jpeg_quality: int


def parse_shard(text: str) -> tuple[int, int]:
    """Parse `i/n` into (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise CocoOodError(f"shard must look like i/n with 0 <= i < n (e.g. 0/4); got {text!r}")
    return int(match[1]), int(match[2])


def _library_versions() -> dict[str, str]:
    # Output bytes depend on these; recording them makes a mixed-version merge fail instead of silently differing.
    return {"albumentations": albumentations.__version__, "numpy": np.__version__, "opencv": cv2.__version__}


def _split_header(style: Style, seed: int, image_format: str, jpeg_quality: int, ann_sha256: str) -> dict[str, Any]:
    """Settings that determine a split's bytes; two runs may share an output root only if these agree."""
    header = {"manifest_version": MANIFEST_VERSION, "split": style.name, "style": style.describe(), "seed": seed,
              "image_format": image_format, "source_annotations_sha256": ann_sha256,
              "libraries": _library_versions()}
    if image_format == "jpg":
        header["jpeg_quality"] = jpeg_quality
    # Round-trip through JSON so that a header read back from disk compares equal to a fresh one.
    return json.loads(json.dumps(header))


def _check_locations(ann: Path, image_root: Path, out: Path) -> None:
    """Refuse output roots that could overwrite the input images or annotation file."""
    ann, image_root, out = ann.resolve(), image_root.resolve(), out.resolve()
    if out == image_root or image_root in out.parents or out in image_root.parents:
        raise CocoOodError(f"output root {out} overlaps the image root {image_root}; choose a separate folder "
                           "so that the source images can never be overwritten")
    if out == ann or out in ann.parents:
        raise CocoOodError(f"annotation file {ann} lies inside the output root {out}; choose a separate folder")


def _output_name(file_name: str, image_format: str) -> str:
    return str(Path(file_name).with_suffix("." + image_format))


def load_coco(ann: str | os.PathLike) -> dict[str, Any]:
    """Read a COCO annotation file and check the fields the builder relies on."""
    ann = Path(ann)
    if not ann.is_file():
        raise CocoOodError(f"annotation file {ann} does not exist")
    try:
        coco = json.loads(ann.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CocoOodError(f"{ann}: not a JSON file ({error})") from error
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise CocoOodError(f"{ann}: not a COCO annotation file (no 'images' list)")
    seen: set[int] = set()
    for index, image in enumerate(coco["images"]):
        missing = [key for key in ("id", "file_name", "width", "height") if key not in image]
        if missing:
            raise CocoOodError(f"{ann}: images[{index}] lacks {', '.join(missing)}")
        if not isinstance(image["id"], int) or image["id"] < 0 or image["id"] in seen:
            raise CocoOodError(f"{ann}: images[{index}] has an invalid or duplicate id {image['id']!r}")
        seen.add(image["id"])
    return coco


def _plan(coco: dict[str, Any], ann: Path, image_root: Path, image_format: str) -> list[_Job]:
    """One job per image, sorted by id; every file name is checked before any work starts."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in coco.get("annotations", []):
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    jobs, outputs = [], {}
    for image in sorted(coco["images"], key=lambda item: item["id"]):
        try:
            source = safe_join(image_root, image["file_name"])
        except ValueError as error:
            raise CocoOodError(f"{ann}: image id {image['id']}: {error}; refusing to read or write outside the "
                               "image root") from error
        output_name = _output_name(image["file_name"], image_format)
        if output_name in outputs:
            raise CocoOodError(f"{ann}: image ids {outputs[output_name]} and {image['id']} would both be written "
                               f"as {output_name!r}")
        outputs[output_name] = image["id"]
        jobs.append(_Job(image["id"], image["file_name"], output_name, str(source), int(image["width"]),
                         int(image["height"]), by_image.get(image["id"], [])))
    return jobs


def _encode(image: np.ndarray, image_format: str, jpeg_quality: int) -> bytes:
    """Encode RGB uint8 with fixed settings so equal pixels give equal bytes."""
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if image_format == "png":
        ok, data = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    else:
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality,
                                              cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0])
    if not ok:
        raise CocoOodError(f"OpenCV failed to encode a {image.shape} image as {image_format}")
    return data.tobytes()


def _render(job: _Job, context: _Context, known: dict[str, dict[str, Any]]) -> tuple[int, dict[str, dict]]:
    """Restyle one image into every split that lacks a verified output; return its records by split."""
    source_sha256 = sha256_file(job.source)
    records: dict[str, dict[str, Any]] = {}
    image = None
    for style in context.styles:
        target = split_paths(context.out, style.name).images / job.output_name
        record = known.get(style.name)
        # Reuse only what provably came from this exact source and was fully written.
        if (record is not None and record["source_sha256"] == source_sha256 and target.is_file()
                and sha256_file(target) == record["sha256"]):
            records[style.name] = record
            continue
        if image is None:
            image = load_rgb_uint8(job.source)
            if image.shape[:2] != (job.height, job.width):
                raise CocoOodError(f"{job.source}: image is {image.shape[1]}x{image.shape[0]} but the annotation "
                                   f"says {job.width}x{job.height}")
        seed = image_seed(context.seed, style.name, job.image_id)
        styled, params = style.apply(image.copy(), np.random.default_rng(seed), job.annotations)
        if styled.shape != image.shape or styled.dtype != np.uint8:
            raise CocoOodError(f"style {style.name!r} returned {styled.shape} {styled.dtype} for image "
                               f"{job.image_id}; a style must keep the RGB uint8 shape {image.shape}")
        data = _encode(styled, context.image_format, context.jpeg_quality)
        atomic_write_bytes(target, data)
        records[style.name] = json.loads(json.dumps({
            "image_id": job.image_id, "style": style.name, "file_name": job.output_name,
            "source_file_name": job.file_name, "width": job.width, "height": job.height, "seed": seed,
            "params": params, "source_sha256": source_sha256, "sha256": sha256_bytes(data)}))
    return job.image_id, records


_WORKER_CONTEXT: _Context | None = None


def _init_worker(context: _Context) -> None:
    """Pool initializer: keep the context and stop OpenCV from oversubscribing the cores with threads."""
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = context
    cv2.setNumThreads(1)


def _render_in_worker(task: tuple[_Job, dict[str, dict[str, Any]]]) -> tuple[int, dict[str, dict]]:
    assert _WORKER_CONTEXT is not None, "worker used without _init_worker"
    return _render(task[0], _WORKER_CONTEXT, task[1])


def _run_tasks(tasks: list[tuple[_Job, dict]], context: _Context, workers: int,
               mp_context: str) -> Iterator[tuple[int, dict[str, dict]]]:
    """Render tasks in this process or a process pool, yielding results as they complete."""
    if workers <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # same single-threaded kernels as in the workers, so 1 vs N workers compares fairly
        try:
            for job, known in tasks:
                yield _render(job, context, known)
        finally:
            cv2.setNumThreads(threads)
        return
    # spawn: workers start clean, without inheriting the parent's threads (OpenCV, torch) that fork can deadlock.
    with multiprocessing.get_context(mp_context).Pool(workers, _init_worker, (context,)) as pool:
        yield from pool.imap_unordered(_render_in_worker, tasks, chunksize=1)


def _shard_file(out: Path, shard: tuple[int, int]) -> Path:
    return out / WORK_DIR / f"shard-{shard[0]}-of-{shard[1]}.json"


def _remove_stale_temporaries(targets: Sequence[Path]) -> None:
    """Delete temp files that a killed run left next to `targets` (only ours: `.<target name>.*.tmp`)."""
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        by_folder.setdefault(target.parent, set()).add(target.name)
    for folder, names in by_folder.items():
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            match = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", entry.name)
            if match and match[1] in names:
                os.unlink(entry.path)


def _load_known(path: Path, headers: dict[str, dict], source: str) -> dict[str, dict[str, dict]]:
    """Records of a shard file or manifest for the requested splits, refusing ones built with other settings."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if "splits" in data:  # a shard progress record: {"splits": {name: {"header", "images": {id: record}}}}
        splits = data["splits"]
    else:  # a finished split's manifest: {"header", "images": [record, ...]}
        splits = {data["header"]["split"]: {"header": data["header"],
                                            "images": {str(r["image_id"]): r for r in data["images"]}}}
    known: dict[str, dict[str, dict]] = {}
    for name, split in splits.items():
        if name not in headers:
            continue
        if split["header"] != headers[name]:
            differing = sorted(key for key in set(split["header"]) | set(headers[name])
                               if split["header"].get(key) != headers[name].get(key))
            raise CocoOodError(f"{source} {path} was built with different settings for split {name!r} "
                               f"({', '.join(differing)}); use another output root or delete that split")
        known[name] = split["images"]
    return known


def build(ann: str | os.PathLike, image_root: str | os.PathLike, out: str | os.PathLike,
          styles: Sequence[str] | None = None, *, seed: int = 0, workers: int = 1, shard: tuple[int, int] = (0, 1),
          image_format: str = "jpg", jpeg_quality: int = 95, progress: bool = True,
          checkpoint_seconds: float = 2.0, mp_context: str = "spawn") -> dict[str, SplitPaths] | None:
    """Build the COCO-OOD splits of `styles` for shard `shard` (i, n); with n == 1 also merge and return the splits.

    Resumable: outputs whose hash matches a recorded one are kept; images whose record was lost are re-rendered
    (per-image seeds make that byte-identical). Sharded runs (n > 1) return None and need `merge`.
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
    _check_locations(ann, image_root, out)
    try:
        style_objects = tuple(get_style(name) for name in dict.fromkeys(styles or default_styles()))
    except KeyError as error:
        raise CocoOodError(error.args[0]) from error
    coco = load_coco(ann)
    ann_sha256 = sha256_file(ann)
    jobs = _plan(coco, ann, image_root, image_format)[index::count]
    headers = {style.name: _split_header(style, seed, image_format, jpeg_quality, ann_sha256)
               for style in style_objects}

    shard_file = _shard_file(out, shard)
    records: dict[str, dict[str, dict]] = {name: {} for name in headers}
    sources = [("manifest", split_paths(out, name).manifest) for name in headers] + [("progress record", shard_file)]
    for source, path in sources:
        if path.is_file():
            for name, images in _load_known(path, headers, source).items():
                records[name].update(images)
    _remove_stale_temporaries([split_paths(out, name).images / job.output_name for name in headers for job in jobs]
                              + [shard_file])

    def checkpoint() -> None:
        # Records are sorted by id on write (canonical JSON), so the file does not depend on completion order.
        atomic_write_json(shard_file, {"shard": [index, count], "splits": {
            name: {"header": headers[name], "images": records[name]} for name in headers}})

    checkpoint()
    context = _Context(style_objects, str(out), seed, image_format, jpeg_quality)
    tasks = [(job, {name: records[name][str(job.image_id)] for name in headers
                    if str(job.image_id) in records[name]}) for job in jobs]
    last = time.monotonic()
    with tqdm(total=len(tasks), disable=not progress, unit="img",
              desc=f"COCO-OOD shard {index}/{count} ({len(headers)} styles)") as bar:
        for image_id, image_records in _run_tasks(tasks, context, workers, mp_context):
            for name, record in image_records.items():
                records[name][str(image_id)] = record
            if time.monotonic() - last >= checkpoint_seconds:
                checkpoint()
                last = time.monotonic()
            bar.update()
    checkpoint()
    return merge(ann, out) if count == 1 else None


def split_annotations(coco: dict[str, Any], split: str, output_names: dict[int, str],
                      ann_sha256: str) -> dict[str, Any]:
    """The input annotations for `split`: `info.coco_ood` added and image file names re-suffixed, nothing else."""
    result = dict(coco)  # keeps the input's key order
    result["info"] = {**coco.get("info", {}), "coco_ood": {"split": split, "source_annotations_sha256": ann_sha256}}
    result["images"] = [{**image, "file_name": output_names[image["id"]]} for image in coco["images"]]
    return result


def merge(ann: str | os.PathLike, out: str | os.PathLike) -> dict[str, SplitPaths]:
    """Combine every shard record under OUT/.work into each split's annotations and manifest; verify all hashes."""
    ann, out = Path(ann), Path(out)
    work = out / WORK_DIR
    shard_files = {}
    for path in sorted(work.glob("shard-*-of-*.json")) if work.is_dir() else []:
        match = _SHARD_FILE.match(path.name)
        if match:
            shard_files[(int(match[1]), int(match[2]))] = path
    counts = {count for _, count in shard_files}
    if not shard_files:
        raise CocoOodError(f"no shard records in {work}; run the build (with --shard i/n) first")
    if len(counts) > 1:
        raise CocoOodError(f"{work} holds records of different shard counts {sorted(counts)}; keep one set")
    count = counts.pop()
    missing = [index for index in range(count) if (index, count) not in shard_files]
    if missing:
        raise CocoOodError(f"shard record(s) {', '.join(f'{i}/{count}' for i in missing)} missing from {work}; "
                           "run those shards (or copy their output folders here) before merging")

    headers: dict[str, dict] = {}
    records: dict[str, dict[str, dict]] = {}
    for (index, _), path in sorted(shard_files.items()):
        for name, split in json.loads(path.read_text(encoding="utf-8"))["splits"].items():
            if headers.setdefault(name, split["header"]) != split["header"]:
                raise CocoOodError(f"shard {index}/{count} built split {name!r} with different settings than "
                                   "shard 0; rebuild it with the same styles, seed, format and library versions")
            records.setdefault(name, {}).update(split["images"])

    coco = load_coco(ann)
    ann_sha256 = sha256_file(ann)
    splits = {}
    for name, header in headers.items():
        if header["source_annotations_sha256"] != ann_sha256:
            raise CocoOodError(f"split {name!r} was built from a different annotation file than {ann}")
        paths = split_paths(out, name)
        ordered = []
        for image in sorted(coco["images"], key=lambda item: item["id"]):
            record = records[name].get(str(image["id"]))
            if record is None:
                raise CocoOodError(f"split {name!r} has no output for image id {image['id']}; rerun its shard")
            target = safe_join(paths.images, record["file_name"])
            if not target.is_file() or sha256_file(target) != record["sha256"]:
                raise CocoOodError(f"{target} is missing or does not match its recorded hash; rerun its shard")
            ordered.append(record)
        _remove_stale_temporaries([paths.annotations, paths.manifest])
        annotations = split_annotations(coco, name, {r["image_id"]: r["file_name"] for r in ordered}, ann_sha256)
        # Compact and in the input's key order, like the COCO files themselves (they reach tens of MB).
        text = json.dumps(annotations, ensure_ascii=False, separators=(",", ":")) + "\n"
        atomic_write_text(paths.annotations, text)
        atomic_write_json(paths.manifest, {"header": header, "annotations_sha256": sha256_bytes(text.encode("utf-8")),
                                           "images": ordered})
        splits[name] = paths
    # Manifests now hold every record; the progress files would only make a sharded tree differ from a single run.
    for path in shard_files.values():
        path.unlink()
    if work.is_dir() and not any(work.iterdir()):
        work.rmdir()
    return splits


def verify(out: str | os.PathLike, split: str) -> list[str]:
    """Check a finished split against its manifest; return the problems found (empty when it verifies)."""
    paths = split_paths(out, split)
    manifest = json.loads(paths.manifest.read_text(encoding="utf-8"))
    problems = []
    if sha256_file(paths.annotations) != manifest["annotations_sha256"]:
        problems.append(f"{paths.annotations}: hash differs from the manifest")
    for record in manifest["images"]:
        target = safe_join(paths.images, record["file_name"])
        if not target.is_file():
            problems.append(f"{target}: missing")
        elif sha256_file(target) != record["sha256"]:
            problems.append(f"{target}: hash differs from the manifest")
    return problems


def _label(cell: np.ndarray, text: str) -> None:
    """Write `text` on a white band at the top of an RGB cell, in place."""
    cell[:18] = 255
    cv2.putText(cell, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Letterbox an RGB image into a white [height, width, 3] cell."""
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    cell = np.full((height, width, 3), 255, np.uint8)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    cell[top:top + size[1], left:left + size[0]] = resized
    return cell


def contact_sheet(out: str | os.PathLike, image_root: str | os.PathLike, splits: Sequence[str] | None = None,
                  max_images: int = 4, cell_height: int = 180) -> np.ndarray:
    """Grid image, rows = images (lowest ids), columns = original + each split, labelled; RGB uint8."""
    out = Path(out)
    names = list(splits) if splits else sorted(p.parent.name for p in out.glob("*/manifest.json"))
    if not names:
        raise CocoOodError(f"no finished splits under {out}; build (and merge) first")
    manifests = {name: json.loads(split_paths(out, name).manifest.read_text(encoding="utf-8")) for name in names}
    first = manifests[names[0]]["images"][:max_images]
    cell_width = cell_height * 4 // 3
    band = 18  # label band above each cell
    rows = []
    for record in first:
        cells = [load_rgb_uint8(safe_join(image_root, record["source_file_name"]))]
        labels = [f"original {record['image_id']}"]
        for name in names:
            match = next(r for r in manifests[name]["images"] if r["image_id"] == record["image_id"])
            cells.append(load_rgb_uint8(safe_join(split_paths(out, name).images, match["file_name"])))
            labels.append(name)
        row = []
        for cell, label in zip(cells, labels, strict=True):
            framed = np.full((cell_height + band, cell_width, 3), 255, np.uint8)
            framed[band:] = _fit(cell, cell_width, cell_height)
            _label(framed, label)
            row.append(framed)
        rows.append(np.concatenate(row, axis=1))  # [h + band, (1 + splits) * w, 3]
    return np.concatenate(rows, axis=0)


def write_contact_sheet(path: str | os.PathLike, out: str | os.PathLike, image_root: str | os.PathLike,
                        splits: Sequence[str] | None = None, max_images: int = 4) -> Path:
    """Write the contact sheet as a PNG (atomically) and return its path."""
    sheet = contact_sheet(out, image_root, splits, max_images)
    atomic_write_bytes(path, _encode(sheet, "png", 95))
    return Path(path)
