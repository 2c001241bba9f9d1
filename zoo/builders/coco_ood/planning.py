"""COCO-OOD planning: build settings, input checks and the images to restyle, before any work starts."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations
import cv2
import numpy as np

from zoo.builders.styles import Style
from zoo.data.coco_files import CocoFileError, read_coco
from zoo.utils.files import OutputLocationError, check_output_location, safe_join

MANIFEST_VERSION = 1
IMAGE_FORMATS = ("jpg", "png")
# Progress of an unfinished or unmerged shard: OUT/.work/shard-<i>-of-<n>.json (removed by the merge).
WORK_DIR = ".work"
SHARD_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.json$")


class CocoOodError(ValueError):
    """The build cannot proceed; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class Job:
    """One source image and what a worker needs to restyle it."""

    image_id: int
    file_name: str
    output_name: str
    source: str
    width: int
    height: int
    annotations: list[dict[str, Any]]


def parse_shard(text: str) -> tuple[int, int]:
    """Parse `i/n` into (i, n) with 0 <= i < n."""
    match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise CocoOodError(f"shard must look like i/n with 0 <= i < n (e.g. 0/4); got {text!r}")
    return int(match[1]), int(match[2])


def library_versions() -> dict[str, str]:
    """Versions of the libraries the output bytes depend on."""
    # Recording them makes a mixed-version merge fail instead of silently differing.
    return {"albumentations": albumentations.__version__, "numpy": np.__version__, "opencv": cv2.__version__}


def split_header(
    style: Style, seed: int, image_format: str, jpeg_quality: int, ann_sha256: str
) -> dict[str, Any]:
    """Settings that determine a split's bytes; two runs may share an output root only if these agree."""
    header = {
        "manifest_version": MANIFEST_VERSION,
        "split": style.name,
        "style": style.describe(),
        "seed": seed,
        "image_format": image_format,
        "source_annotations_sha256": ann_sha256,
        "libraries": library_versions(),
    }
    if image_format == "jpg":
        header["jpeg_quality"] = jpeg_quality
    # Round-trip through JSON so that a header read back from disk compares equal to a fresh one.
    return json.loads(json.dumps(header))


def check_locations(ann: Path, image_root: Path, out: Path) -> None:
    """Refuse output roots that could overwrite the input images or annotation file (the shared check)."""
    try:
        check_output_location(out, {"image root": image_root, "annotation file": ann}, what="output root")
    except OutputLocationError as error:
        raise CocoOodError(str(error)) from error


def shard_file(out: Path, shard: tuple[int, int]) -> Path:
    """The progress record of shard (i, n) under output root `out`."""
    return out / WORK_DIR / f"shard-{shard[0]}-of-{shard[1]}.json"


def _output_name(file_name: str, image_format: str) -> str:
    return str(Path(file_name).with_suffix("." + image_format))


def load_coco(ann: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a COCO annotation file (zoo.data.coco_files); return its content unchanged."""
    try:
        return read_coco(ann).data
    except CocoFileError as error:
        raise CocoOodError(str(error)) from error


def plan_jobs(coco: dict[str, Any], ann: Path, image_root: Path, image_format: str) -> list[Job]:
    """One job per image, sorted by id; every file name is checked before any work starts."""
    by_image: dict[int, list[dict[str, Any]]] = {}
    for annotation in coco.get("annotations", []):
        by_image.setdefault(annotation.get("image_id"), []).append(annotation)
    jobs, outputs = [], {}
    for image in sorted(coco["images"], key=lambda item: item["id"]):
        try:
            source = safe_join(image_root, image["file_name"])
        except ValueError as error:
            raise CocoOodError(
                f"{ann}: image id {image['id']}: {error}; refusing to read or write outside the image root"
            ) from error
        output_name = _output_name(image["file_name"], image_format)
        if output_name in outputs:
            raise CocoOodError(
                f"{ann}: image ids {outputs[output_name]} and {image['id']} would both be written "
                f"as {output_name!r}"
            )
        outputs[output_name] = image["id"]
        jobs.append(
            Job(
                image["id"],
                image["file_name"],
                output_name,
                str(source),
                int(image["width"]),
                int(image["height"]),
                by_image.get(image["id"], []),
            )
        )
    return jobs
