"""ControlNet OpenPose export: COCO keypoint files to conditioning PNGs and OpenPose/ComfyUI pose JSON.

The canvas is drawn by `zoo.visualize.openpose` (pixel-equal to controlnet_aux); this module reads the COCO
annotations or results, serialises people as POSE_KEYPOINT JSON (the same normalised coordinates the canvas is
drawn from) and writes both files per image.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from zoo.data.coco_files import CocoFileError, CocoImage, person_keypoints, read_coco, read_results
from zoo.data.images import read_image_file
from zoo.data.metainfo import load_metainfo
from zoo.utils.files import atomic_write_bytes, atomic_write_json, output_stem, safe_join
from zoo.visualize.openpose import DEFAULT_THRESHOLD, OpenPosePerson, person_from_coco, render_openpose


class ExportInputError(CocoFileError):
    """Input to the exporter is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class ImagePoses:
    """The keypoints of all people in one image, read from a COCO file (pixels, [17, 3] or [133, 3] each)."""

    image_id: int
    file_name: str
    width: int
    height: int
    keypoints: list[np.ndarray] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """Output stem: the COCO file_name, suffix kept (`a.jpg` -> `a.jpg.png`), as all tools name them."""
        return output_stem(self.file_name)


@dataclass(frozen=True)
class ControlNetPose:
    """One exported image: its output stem, the conditioning image (uint8 [H, W, 3] RGB) and the pose JSON."""

    stem: str
    image: np.ndarray
    pose: dict[str, Any]


def _flat_keypoints(points: np.ndarray | None) -> list[float] | None:
    """Flatten [K, 2] normalised points to x0, y0, c0, ...; present points get c = 1.0, missing ones 0 0 0."""
    if points is None:
        return None
    flat: list[float] = []
    for x, y in points:
        # Decoders (sd-webui-controlnet, ComfyUI) drop points with c < 1, so kept points must say exactly 1.0.
        flat.extend((0.0, 0.0, 0.0) if math.isnan(x) or math.isnan(y) else (float(x), float(y), 1.0))
    return flat


def openpose_json(people: Sequence[OpenPosePerson], height: int, width: int) -> dict[str, Any]:
    """Serialise people as the OpenPose / ComfyUI POSE_KEYPOINT dict (normalised coordinates, canvas size)."""
    return {
        "people": [
            {
                "pose_keypoints_2d": _flat_keypoints(person.body),
                "face_keypoints_2d": _flat_keypoints(person.face),
                "hand_left_keypoints_2d": _flat_keypoints(person.left_hand),
                "hand_right_keypoints_2d": _flat_keypoints(person.right_hand),
            }
            for person in people
        ],
        "canvas_height": int(height),
        "canvas_width": int(width),
    }


def _image_size(image: CocoImage, name: str, image_root: str | os.PathLike | None) -> tuple[int, int]:
    """(width, height) of a COCO image record, read from the image file when the record has no size."""
    if image.width is not None and image.height is not None:
        return image.width, image.height
    where = f"{name}: images[{image.index}]"
    if image_root is None:
        raise ExportInputError(
            f"{where}: no 'width'/'height'; give the image folder to read the size from the file"
        )
    try:
        path = safe_join(image_root, image.file_name)
    except ValueError as error:
        raise ExportInputError(f"{where}: {error}") from error
    with read_image_file(path) as pil:
        return pil.size


def read_coco_poses(
    annotations: str | os.PathLike | dict[str, Any],
    results: str | os.PathLike | list[dict[str, Any]] | None = None,
    image_root: str | os.PathLike | None = None,
) -> list[ImagePoses]:
    """The people of every image from COCO keypoint annotations, or from a results file with its annotations.

    `annotations` supplies the image list (ids, file names, sizes); without `results` its keypoint annotations
    are the poses (crowd regions and annotations without keypoints skipped), with `results` only the results'
    keypoints are used. Keypoints may be COCO-17 or COCO-WholeBody-133. Every image is returned, with no
    people if it has none.
    """
    try:
        coco = read_coco(annotations, "annotations", require_size=False)
        images = {
            image.id: ImagePoses(image.id, image.file_name, *_image_size(image, coco.name, image_root))
            for image in coco.images
        }
        if results is None:
            for image_id, people in person_keypoints(coco).items():
                images[image_id].keypoints.extend(people)
            return list(images.values())
        entries, name = read_results(results, "results", required=("image_id", "keypoints"))
    except CocoFileError as error:
        raise ExportInputError(str(error)) from error
    counts = (load_metainfo("coco").num_keypoints, load_metainfo("coco_wholebody").num_keypoints)
    for index, entry in enumerate(entries):
        where = f"{name}: results[{index}]"
        if entry["image_id"] not in images:
            raise ExportInputError(f"{where}: image_id {entry['image_id']!r} is not in {coco.name}")
        values = entry["keypoints"]
        if len(values) not in tuple(3 * n for n in counts):
            expected = " or ".join(f"{3 * n} ({n} points)" for n in counts)
            raise ExportInputError(f"{where}['keypoints']: has {len(values)} values; expected {expected}")
        images[entry["image_id"]].keypoints.append(np.asarray(values, dtype=np.float64).reshape(-1, 3))
    return list(images.values())


def export_image(
    image: ImagePoses, threshold: float = DEFAULT_THRESHOLD, hands: bool = True, face: bool = True
) -> ControlNetPose:
    """Render one image's people and build its pose JSON; people with no point above `threshold` left out."""
    people = [person_from_coco(k, image.width, image.height, threshold, hands, face) for k in image.keypoints]
    people = [
        p
        for p in people
        if not np.isnan(p.body).all() or any(part is not None for part in (p.left_hand, p.right_hand, p.face))
    ]
    return ControlNetPose(
        stem=image.stem,
        image=render_openpose(people, image.height, image.width),
        pose=openpose_json(people, image.height, image.width),
    )


def iter_controlnet_exports(
    annotations: str | os.PathLike | dict[str, Any],
    results: str | os.PathLike | list[dict[str, Any]] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    hands: bool = True,
    face: bool = True,
    image_root: str | os.PathLike | None = None,
) -> Iterator[ControlNetPose]:
    """Yield (stem, conditioning image, pose JSON) for every image of a COCO annotation or results file."""
    for image in read_coco_poses(annotations, results, image_root):
        yield export_image(image, threshold, hands, face)


def output_paths(out_dir: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """The (PNG, JSON) paths of an export under `out_dir`, refusing stems that escape it."""
    return safe_join(out_dir, stem + ".png"), safe_join(out_dir, stem + ".json")


def encode_png(image: np.ndarray) -> bytes:
    """Encode a uint8 RGB image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_controlnet_pose(out_dir: str | os.PathLike, export: ControlNetPose) -> tuple[Path, Path]:
    """Write `<stem>.json` then `<stem>.png` under `out_dir` atomically; return (PNG, JSON) paths.

    JSON first: a PNG without its pose JSON beside it was then not written here (`is_previous_export`).
    """
    png_path, json_path = output_paths(out_dir, export.stem)
    atomic_write_json(json_path, export.pose)
    atomic_write_bytes(png_path, encode_png(export.image))
    return png_path, json_path


def is_previous_export(png_path: Path, json_path: Path) -> bool:
    """Whether the existing files at an export's two paths (if any) are an earlier export's, safe to replace.
    """
    if not json_path.exists():
        return not png_path.exists()  # the JSON is written first, so a lone PNG is someone else's
    try:
        pose = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(pose, dict) and {"people", "canvas_width", "canvas_height"} <= set(pose)
