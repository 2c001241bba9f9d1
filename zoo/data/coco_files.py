"""The one reader of COCO files: image lists and annotations, results and person-detection files.

Every tool and dataset that takes a COCO file reads it here, so a malformed file fails the same way
everywhere, before any work starts, with an error that names the file, the record and the field
(`images[3]['width']`): missing keys, wrong lengths, non-numeric or non-finite numbers, ids of the wrong type
(`true` is not an id and `"367"` is not a coordinate), duplicate ids, annotations of unknown images, absurd
image sizes, JSON nested too deeply to parse and, where the caller needs it, empty ground truth.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from zoo.data.images import MAX_PIXELS
from zoo.data.metainfo import PoseMetainfo, load_metainfo

# No image format the readers decode is wider or taller than this (the JPEG and WebP limit); a record claiming
# more is an error, not a canvas to allocate.
MAX_IMAGE_SIDE = 65_535

# COCO-WholeBody stores each part of its keypoints under its own annotation field; the non-body parts carry a
# validity flag. Keyed by the metainfo's part names, whose keypoint ranges are the one layout of the parts.
PART_FIELDS: Mapping[str, tuple[str, str | None]] = MappingProxyType(
    {
        "body": ("keypoints", None),
        "foot": ("foot_kpts", "foot_valid"),
        "face": ("face_kpts", "face_valid"),
        "left_hand": ("lefthand_kpts", "lefthand_valid"),
        "right_hand": ("righthand_kpts", "righthand_valid"),
    }
)
# Annotation fields holding flat (x, y, v) keypoint triplets.
_KEYPOINT_FIELDS = tuple(field for field, _ in PART_FIELDS.values())


class CocoFileError(ValueError):
    """A COCO annotation, results or detection file is malformed; the message names file, record and field."""


class CocoFileNotFoundError(CocoFileError, FileNotFoundError):
    """A COCO file does not exist or is not a regular file."""


@dataclass(frozen=True)
class KeypointPart:
    """One part of a keypoint layout: metainfo name, annotation field, validity flag and keypoint range."""

    name: str
    field: str
    valid_flag: str | None
    start: int
    end: int

    @property
    def count(self) -> int:
        """Number of keypoints in the part."""
        return self.end - self.start

    @property
    def slice(self) -> slice:
        """The part's keypoints in the layout's order."""
        return slice(self.start, self.end)


def keypoint_parts(metainfo: PoseMetainfo | str) -> tuple[KeypointPart, ...]:
    """A metainfo's keypoint parts with the annotation fields storing them, in keypoint order."""
    metainfo = load_metainfo(metainfo) if isinstance(metainfo, str) else metainfo
    unknown = sorted(set(metainfo.parts) - set(PART_FIELDS))
    if unknown:
        raise KeyError(f"metainfo {metainfo.name!r} has parts {unknown} that no COCO annotation field stores")
    return tuple(
        KeypointPart(name, *PART_FIELDS[name], start, end)
        for name, (start, end) in sorted(metainfo.parts.items(), key=lambda item: item[1])
    )


@dataclass(frozen=True)
class CocoImage:
    """One validated `images[]` record; width and height are None only where the caller allows it."""

    index: int  # position in the file's `images` list, for messages
    id: int
    file_name: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class CocoFile:
    """A validated COCO annotation file: the parsed JSON unchanged, its images and its annotations."""

    name: str  # the file's path (or the caller's name for an in-memory dict), for messages
    data: dict[str, Any]  # exactly what the file holds, for writers that must keep it
    images: tuple[CocoImage, ...]  # file order
    annotations: tuple[dict[str, Any], ...]  # file order

    @property
    def images_by_id(self) -> dict[int, CocoImage]:
        """Image records by id."""
        return {image.id: image for image in self.images}

    def where(self, index: int) -> str:
        """How messages name annotation `index`."""
        return f"{self.name}: annotations[{index}]"


@dataclass(frozen=True)
class Detection:
    """One person-detector result: COCO results format, box in (x, y, w, h) image pixels."""

    index: int  # position in the file, for messages and stable instance ids
    image_id: int
    bbox: np.ndarray  # [4] float64 x, y, w, h
    score: float
    category_id: int


def read_json(source: str | os.PathLike | Any, what: str) -> tuple[Any, str]:
    """Parsed content of a JSON file and its name for messages; an already parsed object is passed through."""
    if not isinstance(source, (str, os.PathLike)):
        return source, what
    path = Path(source)
    # Only regular files: a FIFO or device named like a JSON file would block or never end.
    if not path.is_file():
        raise CocoFileNotFoundError(f"{path}: no such {what} file")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), str(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoFileError(f"{path}: not valid JSON ({error})") from error
    except RecursionError as error:
        raise CocoFileError(f"{path}: JSON nested too deeply to be a COCO file") from error


def _is_int(value: Any) -> bool:
    # bool is an int subclass in Python, but `true` is no id or count in a COCO file.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _field(where: str, name: str) -> str:
    return f"{where}[{name!r}]"


def _check_id(record: dict[str, Any], key: str, where: str) -> int:
    value = record[key]
    if not _is_int(value) or value < 0:
        raise CocoFileError(f"{_field(where, key)}: must be a non-negative integer; got {value!r}")
    return value


def _check_numbers(values: Any, where: str, length: int | None = None, multiple: int | None = None) -> None:
    """Refuse anything but a list of finite JSON numbers (of `length`, or of a multiple of `multiple`)."""
    if not isinstance(values, list):
        raise CocoFileError(f"{where}: must be a list of numbers; got {type(values).__name__}")
    if length is not None and len(values) != length:
        raise CocoFileError(f"{where}: has {len(values)} values; expected {length}")
    if multiple is not None and len(values) % multiple:
        raise CocoFileError(f"{where}: has {len(values)} values; expected a multiple of {multiple}")
    # One C-level pass over the types first: COCO files hold millions of keypoint values.
    if not set(map(type, values)) <= {int, float}:
        bad = next(v for v in values if type(v) not in (int, float))
        raise CocoFileError(f"{where}: values must be numbers; got {bad!r}")
    try:
        finite = all(map(math.isfinite, values))
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise CocoFileError(f"{where}: contains NaN, infinite or out-of-range values")


def _check_bbox(record: dict[str, Any], where: str) -> None:
    where = _field(where, "bbox")
    bbox = record["bbox"]
    _check_numbers(bbox, where, length=4)
    if bbox[2] < 0 or bbox[3] < 0:
        raise CocoFileError(f"{where}: width and height must not be negative; got {bbox}")


def _check_record_fields(record: dict[str, Any], where: str) -> None:
    """Check whichever COCO fields a record has; which fields are required is the caller's business."""
    for key in ("id", "category_id", "num_keypoints"):
        if key in record:
            _check_id(record, key, where)
    if "bbox" in record:
        _check_bbox(record, where)
    for key in ("area", "score"):
        if key in record and not _is_number(record[key]):
            raise CocoFileError(f"{_field(where, key)}: must be a finite number; got {record[key]!r}")
    if "area" in record and record["area"] < 0:
        raise CocoFileError(f"{_field(where, 'area')}: must not be negative; got {record['area']!r}")
    if "iscrowd" in record and record["iscrowd"] not in (0, 1):  # also admits false / true
        raise CocoFileError(f"{_field(where, 'iscrowd')}: must be 0 or 1; got {record['iscrowd']!r}")
    for key in _KEYPOINT_FIELDS:
        if key in record:
            _check_numbers(record[key], _field(where, key), multiple=3)


def _check_size(image: dict[str, Any], where: str) -> tuple[int, int]:
    for key in ("width", "height"):
        value = image[key]
        if not _is_int(value) or not 1 <= value <= MAX_IMAGE_SIDE:
            raise CocoFileError(
                f"{_field(where, key)}: must be a positive integer of at most {MAX_IMAGE_SIDE}; got {value!r}"
            )
    if image["width"] * image["height"] > MAX_PIXELS:
        size = f"{image['width']}x{image['height']}"
        raise CocoFileError(f"{where}: {size} exceeds the {MAX_PIXELS}-pixel limit")
    return image["width"], image["height"]


def _read_images(data: dict[str, Any], name: str, require_size: bool) -> tuple[CocoImage, ...]:
    images: list[CocoImage] = []
    seen: set[int] = set()
    for index, image in enumerate(data["images"]):
        where = f"{name}: images[{index}]"
        if not isinstance(image, dict):
            raise CocoFileError(f"{where}: must be an object; got {type(image).__name__}")
        required = ("id", "file_name", "width", "height") if require_size else ("id", "file_name")
        missing = [key for key in required if key not in image]
        if missing:
            raise CocoFileError(f"{where}: lacks {', '.join(repr(key) for key in missing)}")
        image_id = _check_id(image, "id", where)
        if image_id in seen:
            raise CocoFileError(f"{_field(where, 'id')}: duplicate image id {image_id}")
        seen.add(image_id)
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise CocoFileError(f"{_field(where, 'file_name')}: must be a non-empty string")
        width = height = None
        if "width" in image or "height" in image:
            missing = [key for key in ("width", "height") if key not in image]
            if missing:
                raise CocoFileError(f"{where}: has one of 'width' and 'height' but lacks {missing[0]!r}")
            width, height = _check_size(image, where)
        images.append(CocoImage(index, image_id, image["file_name"], width, height))
    return tuple(images)


def read_coco(
    source: str | os.PathLike | dict[str, Any],
    what: str = "annotation",
    *,
    require_size: bool = True,
    require_annotations: bool = False,
    annotation_fields: Sequence[str] = ("image_id",),
) -> CocoFile:
    """Read and validate a COCO annotation file (or an already parsed dict); `what` names it in messages.

    Images need an integer id, a file name and (`require_size`) a width and height. Annotations are optional
    unless `require_annotations` (ground truth for an evaluation: a missing or empty list is an error); each
    one needs `annotation_fields`, refers to a known image, and every COCO field it has is checked.
    """
    data, name = read_json(source, what)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise CocoFileError(f"{name}: not a COCO {what} file (expected an object with an 'images' list)")
    images = _read_images(data, name, require_size)
    if "annotations" in data and not isinstance(data["annotations"], list):
        raise CocoFileError(f"{name}: 'annotations' must be a list; got {type(data['annotations']).__name__}")
    annotations = data.get("annotations", [])
    if require_annotations and not annotations:
        raise CocoFileError(f"{name}: has no annotations; ground truth is needed for evaluation")
    known = {image.id for image in images}
    seen: set[int] = set()
    for index, ann in enumerate(annotations):
        where = f"{name}: annotations[{index}]"
        if not isinstance(ann, dict):
            raise CocoFileError(f"{where}: must be an object; got {type(ann).__name__}")
        missing = [key for key in annotation_fields if key not in ann]
        if missing:
            raise CocoFileError(f"{where}: lacks {', '.join(repr(key) for key in missing)}")
        _check_record_fields(ann, where)
        if "image_id" in ann:
            if _check_id(ann, "image_id", where) not in known:
                unknown = ann["image_id"]
                raise CocoFileError(f"{_field(where, 'image_id')}: image {unknown} is not in 'images'")
        if "id" in ann:
            if ann["id"] in seen:
                raise CocoFileError(f"{_field(where, 'id')}: duplicate annotation id {ann['id']}")
            seen.add(ann["id"])
    return CocoFile(name, data, images, tuple(annotations))


def annotation_keypoints(coco: CocoFile, index: int) -> np.ndarray:
    """Keypoints [K, 3] of annotation `index`: COCO-17 or COCO-WholeBody-133, parts flagged invalid zeroed."""
    ann, where = coco.annotations[index], coco.where(index)
    parts = keypoint_parts("coco_wholebody")
    if not any(part.field in ann for part in parts[1:]):
        body = ann.get("keypoints")
        counts = (parts[0].count, parts[-1].end)
        if body is None or len(body) not in tuple(3 * n for n in counts):
            size = "no" if body is None else len(body)
            raise CocoFileError(
                f"{_field(where, 'keypoints')}: has {size} values; expected "
                + " or ".join(f"{3 * n} ({n} points)" for n in counts)
            )
        return np.asarray(body, dtype=np.float64).reshape(-1, 3)
    arrays = []
    for part in parts:
        if part.field not in ann:
            raise CocoFileError(f"{where}: COCO-WholeBody annotation lacks the {part.field!r} field")
        if len(ann[part.field]) != 3 * part.count:
            raise CocoFileError(
                f"{_field(where, part.field)}: has {len(ann[part.field])} values; expected {3 * part.count}"
            )
        points = np.asarray(ann[part.field], dtype=np.float64).reshape(-1, 3)
        if part.valid_flag is not None and not ann.get(part.valid_flag, True):
            points[:] = 0.0  # an invalid part's numbers are placeholders, not keypoints
        arrays.append(points)
    return np.concatenate(arrays)  # [133, 3]


def person_keypoints(coco: CocoFile) -> dict[int, list[np.ndarray]]:
    """The people of every image as [K, 3] pixel keypoints; crowds and keypoint-less annotations skipped."""
    people: dict[int, list[np.ndarray]] = {image.id: [] for image in coco.images}
    for index, ann in enumerate(coco.annotations):
        if ann.get("iscrowd", 0) or "keypoints" not in ann:
            continue  # crowd regions and box-only annotations carry no person keypoints
        people[ann["image_id"]].append(annotation_keypoints(coco, index))
    return people


def read_results(
    source: str | os.PathLike | list[dict[str, Any]],
    what: str = "results",
    required: Sequence[str] = ("image_id",),
) -> tuple[list[dict[str, Any]], str]:
    """Read and validate a COCO results list (detections or keypoints) and its name for messages."""
    data, name = read_json(source, what)
    if not isinstance(data, list):
        kind = type(data).__name__
        raise CocoFileError(f"{name}: expected a COCO results list of {{image_id, ...}}; got {kind}")
    for index, record in enumerate(data):
        where = f"{name}: results[{index}]"
        if not isinstance(record, dict):
            raise CocoFileError(f"{where}: must be an object; got {type(record).__name__}")
        missing = [key for key in required if key not in record]
        if missing:
            raise CocoFileError(f"{where}: lacks {', '.join(repr(key) for key in missing)}")
        if "image_id" in record:
            _check_id(record, "image_id", where)
        _check_record_fields(record, where)
    return data, name


def read_detections(source: str | os.PathLike | list[dict[str, Any]]) -> list[Detection]:
    """Read and validate a person-detection file (COCO results: image_id, category_id, bbox xywh, score)."""
    records, _ = read_results(source, "detection", ("image_id", "category_id", "bbox", "score"))
    return [
        Detection(
            index, r["image_id"], np.asarray(r["bbox"], dtype=np.float64), float(r["score"]), r["category_id"]
        )
        for index, r in enumerate(records)
    ]


__all__ = [
    "MAX_IMAGE_SIDE",
    "PART_FIELDS",
    "CocoFile",
    "CocoFileError",
    "CocoFileNotFoundError",
    "CocoImage",
    "Detection",
    "KeypointPart",
    "annotation_keypoints",
    "keypoint_parts",
    "person_keypoints",
    "read_coco",
    "read_detections",
    "read_json",
    "read_results",
]
