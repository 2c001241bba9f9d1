"""ControlNet OpenPose conditioning: COCO keypoints to OpenPose-18, skeleton images and OpenPose/ComfyUI pose JSON.

Rendering follows controlnet_aux's `open_pose.draw_poses` (the "5th edit" of the ControlNet annotator, what ComfyUI
and diffusers users feed to ControlNet) so that an exported image equals that library's output pixel for pixel.
Coordinates inside a person are normalised (x / width, y / height) exactly as controlnet_aux stores them, because its
pixel positions are truncations of `normalised * size` and we must truncate the same numbers.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np
from PIL import Image

from zoo.data.images import read_image_file
from zoo.utils.files import atomic_write_bytes, atomic_write_json, safe_join

# OpenPose "COCO-18" body order (CMU POSE_COCO_BODY_PARTS without Background).
OPENPOSE18_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
NECK = 1
COCO_LEFT_SHOULDER, COCO_RIGHT_SHOULDER = 5, 6
# OpenPose index -> COCO-17 index; the neck has no COCO source and is built from the shoulders.
COCO17_TO_OPENPOSE18: tuple[int | None, ...] = (
    0,
    None,
    6,
    8,
    10,
    5,
    7,
    9,
    12,
    14,
    16,
    11,
    13,
    15,
    2,
    1,
    4,
    3,
)

# The 17 limbs every renderer draws (the PAF-only ear-shoulder pairs 18 and 19 are never drawn); limb i uses colour i.
BODY_LIMBS: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
# RGB; joint k uses colour k. The canvas is RGB, as ControlNet receives it.
BODY_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
LIMB_FILL_FACTOR = 0.6  # limbs are filled with int(colour * 0.6): dimmer sticks under full-colour joints
STICK_WIDTH = 4  # ellipse minor semi-axis in pixels
BODY_JOINT_RADIUS = 4

# OpenPose hand order: 0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring, 17-20 pinky (COCO-WholeBody uses it too).
HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
HAND_LINE_THICKNESS = 2
HAND_JOINT_RADIUS = 4
HAND_JOINT_COLOR = (0, 0, 255)
FACE_POINT_RADIUS = 3
FACE_POINT_COLOR = (255, 255, 255)
# Hands and face hide a point whose truncated pixel x or y is not above this (controlnet_aux's `eps`), so a point on
# row or column 0 is not drawn; missing points are encoded there as -1 and vanish by the same test.
HAND_FACE_EPS = 0.01

# COCO-WholeBody-133 = 17 body + 6 foot + 68 face + 21 left hand + 21 right hand.
WHOLEBODY_BODY = slice(0, 17)
WHOLEBODY_FACE = slice(23, 91)
WHOLEBODY_LEFT_HAND = slice(91, 112)
WHOLEBODY_RIGHT_HAND = slice(112, 133)
# Part name in a COCO-WholeBody annotation -> (keypoint field, validity flag, number of points), in 133 order.
WHOLEBODY_PARTS: tuple[tuple[str, str | None, int], ...] = (
    ("keypoints", None, 17),
    ("foot_kpts", "foot_valid", 6),
    ("face_kpts", "face_valid", 68),
    ("lefthand_kpts", "lefthand_valid", 21),
    ("righthand_kpts", "righthand_valid", 21),
)

DEFAULT_THRESHOLD = 0.3  # DWPose's cut: a keypoint whose score is not above it is missing


class ExportInputError(ValueError):
    """Input to the exporter is malformed; the message names the file and the field."""


@dataclass(frozen=True)
class OpenPosePerson:
    """One person in OpenPose layout, coordinates normalised to [0, 1] (x / width, y / height), NaN where missing."""

    body: np.ndarray  # [18, 2]
    left_hand: np.ndarray | None = None  # [21, 2]
    right_hand: np.ndarray | None = None  # [21, 2]
    face: np.ndarray | None = None  # [68, 2]


@dataclass(frozen=True)
class ImagePoses:
    """The keypoints of all people in one image, as read from a COCO file (pixels, [17, 3] or [133, 3] each)."""

    image_id: int
    file_name: str
    width: int
    height: int
    keypoints: list[np.ndarray] = field(default_factory=list)

    @property
    def stem(self) -> str:
        """Output name without extension: the COCO file_name with its suffix removed (sub-folders kept)."""
        return PurePosixPath(self.file_name.replace("\\", "/")).with_suffix("").as_posix()


@dataclass(frozen=True)
class ControlNetPose:
    """One exported image: its output stem, the conditioning image (uint8 [H, W, 3] RGB) and the pose JSON."""

    stem: str
    image: np.ndarray
    pose: dict[str, Any]


def _present(points: np.ndarray, threshold: float) -> np.ndarray:
    """Return [K, 2] coordinates with NaN where the score is not above `threshold`."""
    xy = points[:, :2].astype(np.float64)
    xy[~(points[:, 2] > threshold)] = np.nan
    return xy


def coco17_to_openpose18(keypoints: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Reorder COCO-17 keypoints [17, 3] (x, y, score) into OpenPose-18 [18, 3], adding the neck.

    A keypoint whose score is not above `threshold` is missing: its row is (NaN, NaN, 0). The neck is the midpoint of
    the two shoulders, present only when both are, with the lower of their scores.
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (17, 3):
        raise ValueError(f"expected COCO-17 keypoints of shape [17, 3]; got {list(keypoints.shape)}")
    out = np.full((18, 3), np.nan)
    out[:, 2] = 0.0
    for target, source in enumerate(COCO17_TO_OPENPOSE18):
        if source is not None and keypoints[source, 2] > threshold:
            out[target] = keypoints[source]
    left, right = keypoints[COCO_LEFT_SHOULDER], keypoints[COCO_RIGHT_SHOULDER]
    if left[2] > threshold and right[2] > threshold:
        # Midpoint in the input's units (pixels), as DWPose computes it before normalising.
        out[NECK] = ((left[0] + right[0]) / 2, (left[1] + right[1]) / 2, min(left[2], right[2]))
    return out


def person_from_coco(
    keypoints: np.ndarray,
    width: int,
    height: int,
    threshold: float = DEFAULT_THRESHOLD,
    hands: bool = True,
    face: bool = True,
) -> OpenPosePerson:
    """Build an OpenPosePerson from pixel keypoints: COCO-17 [17, 3] or COCO-WholeBody-133 [133, 3].

    Hands and face come only from whole-body keypoints; a part with no point above `threshold` is absent (None).
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.ndim != 2 or keypoints.shape[1] != 3 or keypoints.shape[0] not in (17, 133):
        raise ValueError(f"expected keypoints of shape [17, 3] or [133, 3]; got {list(keypoints.shape)}")
    scale = np.array([float(width), float(height)])
    body = coco17_to_openpose18(keypoints[WHOLEBODY_BODY], threshold)[:, :2] / scale  # [18, 2]

    def part(points: slice, wanted: bool) -> np.ndarray | None:
        if keypoints.shape[0] != 133 or not wanted:
            return None
        xy = _present(keypoints[points], threshold)
        return None if np.isnan(xy).all() else xy / scale

    return OpenPosePerson(
        body=body,
        left_hand=part(WHOLEBODY_LEFT_HAND, hands),
        right_hand=part(WHOLEBODY_RIGHT_HAND, hands),
        face=part(WHOLEBODY_FACE, face),
    )


def _hand_edge_color(index: int) -> tuple[float, float, float]:
    """RGB colour (0-255 floats) of hand edge `index`: hue index / 20 at full saturation and value."""
    # The standard HSV sector formula with s = v = 1, evaluated in the same float operations as matplotlib's
    # hsv_to_rgb, because OpenCV rounds these floats and a last-bit difference can flip a .5 case.
    h6 = index / float(len(HAND_EDGES)) * 6.0
    sector = int(h6)
    f = h6 - sector
    q, t = 1.0 - f, 1.0 - (1.0 - f)
    r, g, b = ((1.0, t, 0.0), (q, 1.0, 0.0), (0.0, 1.0, t), (0.0, q, 1.0), (t, 0.0, 1.0), (1.0, 0.0, q))[
        sector % 6
    ]
    return (r * 255, g * 255, b * 255)


HAND_EDGE_COLORS: tuple[tuple[float, float, float], ...] = tuple(
    _hand_edge_color(i) for i in range(len(HAND_EDGES))
)


def _draw_body(canvas: np.ndarray, body: np.ndarray) -> None:
    """Draw the 17 limbs (filled ellipses at 0.6 colour) and then the 18 joints (full-colour discs) in place."""
    height, width = canvas.shape[:2]
    present = ~np.isnan(body).any(axis=1)
    for (a, b), color in zip(BODY_LIMBS, BODY_COLORS[: len(BODY_LIMBS)], strict=True):
        if not (present[a] and present[b]):
            continue
        xa, xb = body[a, 0] * float(width), body[b, 0] * float(width)
        ya, yb = body[a, 1] * float(height), body[b, 1] * float(height)
        length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        # Centre, axes and angle are truncated to integers before OpenCV sees them, as in the reference renderer.
        polygon = cv2.ellipse2Poly(
            (int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * LIMB_FILL_FACTOR) for c in color])
    for (x, y), ok, color in zip(body, present, BODY_COLORS, strict=True):
        if ok:
            cv2.circle(canvas, (int(x * width), int(y * height)), BODY_JOINT_RADIUS, color, thickness=-1)


def _pixel(point: np.ndarray, width: int, height: int) -> tuple[int, int] | None:
    """Truncated pixel position of a normalised hand/face point, or None when missing or hidden by the eps rule."""
    if np.isnan(point).any():
        return None
    x, y = int(point[0] * width), int(point[1] * height)
    return (x, y) if x > HAND_FACE_EPS and y > HAND_FACE_EPS else None


def _draw_hand(canvas: np.ndarray, hand: np.ndarray) -> None:
    """Draw a 21-point hand in place: rainbow edges of width 2, then blue joints."""
    height, width = canvas.shape[:2]
    pixels = [_pixel(point, width, height) for point in hand]
    for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS, strict=True):
        if pixels[a] is not None and pixels[b] is not None:
            cv2.line(canvas, pixels[a], pixels[b], color, thickness=HAND_LINE_THICKNESS)
    for pixel in pixels:
        if pixel is not None:
            cv2.circle(canvas, pixel, HAND_JOINT_RADIUS, HAND_JOINT_COLOR, thickness=-1)


def _draw_face(canvas: np.ndarray, face: np.ndarray) -> None:
    """Draw face landmarks in place as small white discs."""
    height, width = canvas.shape[:2]
    for point in face:
        pixel = _pixel(point, width, height)
        if pixel is not None:
            cv2.circle(canvas, pixel, FACE_POINT_RADIUS, FACE_POINT_COLOR, thickness=-1)


def render_openpose(people: Sequence[OpenPosePerson], height: int, width: int) -> np.ndarray:
    """Render people as a ControlNet OpenPose conditioning image: uint8 [height, width, 3] RGB on black."""
    if height <= 0 or width <= 0:
        raise ValueError(f"canvas size must be positive; got height={height}, width={width}")
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    # Person-major order (body, left hand, right hand, face), so a later person's limbs cover an earlier one's joints.
    for person in people:
        _draw_body(canvas, person.body)
        for hand in (person.left_hand, person.right_hand):
            if hand is not None:
                _draw_hand(canvas, hand)
        if person.face is not None:
            _draw_face(canvas, person.face)
    return canvas


def _flat_keypoints(points: np.ndarray | None) -> list[float] | None:
    """Flatten [K, 2] normalised points to x0, y0, c0, ...; present points get c = 1.0, missing ones 0, 0, 0."""
    if points is None:
        return None
    flat: list[float] = []
    for x, y in points:
        # Decoders (sd-webui-controlnet, ComfyUI) drop points with c < 1, so kept points must say exactly 1.0.
        flat.extend((0.0, 0.0, 0.0) if math.isnan(x) or math.isnan(y) else (float(x), float(y), 1.0))
    return flat


def openpose_json(people: Sequence[OpenPosePerson], height: int, width: int) -> dict[str, Any]:
    """Serialise people as the OpenPose / ComfyUI POSE_KEYPOINT dict (normalised coordinates + canvas size)."""
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


def _load_json(source: str | os.PathLike | Any, what: str) -> tuple[Any, str]:
    """Return (parsed content, name for messages) of a JSON path, or the object itself if already parsed."""
    if not isinstance(source, (str, os.PathLike)):
        return source, what
    path = Path(source)
    if not path.is_file():
        raise ExportInputError(f"{path}: no such {what} file")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), str(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportInputError(f"{path}: not valid JSON ({error})") from error


def _keypoint_array(values: Any, where: str, lengths: tuple[int, ...]) -> np.ndarray:
    """Check a flat COCO keypoint list and return it as [K, 3]."""
    if not isinstance(values, list) or len(values) not in tuple(3 * n for n in lengths):
        size = len(values) if isinstance(values, list) else type(values).__name__
        expected = " or ".join(f"{3 * n} ({n} points)" for n in lengths)
        raise ExportInputError(f"{where}: has {size} values; expected a list of {expected}")
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1, 3)
    except (TypeError, ValueError) as error:
        raise ExportInputError(f"{where}: values must be numbers ({error})") from error
    if not np.isfinite(array).all():
        raise ExportInputError(f"{where}: contains NaN or infinite values")
    return array


def _annotation_keypoints(ann: dict[str, Any], where: str) -> np.ndarray:
    """Keypoints [17, 3] or [133, 3] of one ground-truth annotation (COCO or COCO-WholeBody layout)."""
    if not any(name in ann for name, _, _ in WHOLEBODY_PARTS[1:]):
        return _keypoint_array(ann["keypoints"], f"{where}['keypoints']", (17, 133))
    parts = []
    for name, valid, count in WHOLEBODY_PARTS:
        if name not in ann:
            raise ExportInputError(f"{where}: COCO-WholeBody annotation lacks the {name!r} field")
        points = _keypoint_array(ann[name], f"{where}[{name!r}]", (count,))
        if valid is not None and not ann.get(valid, True):
            points[:] = 0.0  # an invalid part's numbers are placeholders, not keypoints
        parts.append(points)
    return np.concatenate(parts)  # [133, 3]


def _image_size(image: dict[str, Any], where: str, image_root: str | os.PathLike | None) -> tuple[int, int]:
    """(width, height) of a COCO image entry, read from the image file when the entry has no size."""
    if "width" in image and "height" in image:
        width, height = image["width"], image["height"]
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise ExportInputError(
                f"{where}: 'width' and 'height' must be positive integers; got {width!r}, {height!r}"
            )
        return width, height
    if image_root is None:
        raise ExportInputError(
            f"{where}: no 'width'/'height'; give the image folder to read the size from the file"
        )
    try:
        path = safe_join(image_root, image["file_name"])
    except ValueError as error:
        raise ExportInputError(f"{where}: {error}") from error
    with read_image_file(path) as pil:
        return pil.size


def read_coco_poses(
    annotations: str | os.PathLike | dict[str, Any],
    results: str | os.PathLike | list[dict[str, Any]] | None = None,
    image_root: str | os.PathLike | None = None,
) -> list[ImagePoses]:
    """Read the people of every image from COCO keypoint annotations, or from a results file with its annotations.

    `annotations` supplies the image list (ids, file names, sizes); without `results` its keypoint annotations are the
    poses (crowd regions and annotations without keypoints skipped), with `results` only the results' keypoints are
    used. Keypoints may be COCO-17 or COCO-WholeBody-133. Every image is returned, with no people if it has none.
    """
    data, name = _load_json(annotations, "annotations")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ExportInputError(f"{name}: expected a COCO dict with an 'images' list")
    images: dict[int, ImagePoses] = {}
    for index, image in enumerate(data["images"]):
        where = f"{name}: images[{index}]"
        if not isinstance(image, dict) or not isinstance(image.get("id"), int):
            raise ExportInputError(f"{where}: expected an object with an integer 'id'")
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise ExportInputError(f"{where}: 'file_name' must be a non-empty string")
        if image["id"] in images:
            raise ExportInputError(f"{where}: duplicate image id {image['id']}")
        width, height = _image_size(image, where, image_root)
        images[image["id"]] = ImagePoses(image["id"], image["file_name"], width, height)

    if results is None:
        entries, entries_name, key = data.get("annotations", []), name, "annotations"
    else:
        entries, entries_name = _load_json(results, "results")
        key = "results"
        if not isinstance(entries, list):
            raise ExportInputError(
                f"{entries_name}: expected a COCO results list of {{image_id, keypoints, score}}"
            )
    for index, entry in enumerate(entries):
        where = f"{entries_name}: {key}[{index}]"
        if not isinstance(entry, dict):
            raise ExportInputError(f"{where}: expected an object")
        if results is None and (entry.get("iscrowd", 0) or "keypoints" not in entry):
            continue  # crowd regions and box-only annotations carry no person keypoints
        if entry.get("image_id") not in images:
            raise ExportInputError(f"{where}: image_id {entry.get('image_id')!r} is not in {name}")
        if "keypoints" not in entry:
            raise ExportInputError(f"{where}: missing the 'keypoints' field")
        keypoints = (
            _annotation_keypoints(entry, where)
            if results is None
            else _keypoint_array(entry["keypoints"], f"{where}['keypoints']", (17, 133))
        )
        images[entry["image_id"]].keypoints.append(keypoints)
    return list(images.values())


def export_image(
    image: ImagePoses, threshold: float = DEFAULT_THRESHOLD, hands: bool = True, face: bool = True
) -> ControlNetPose:
    """Render one image's people and build its pose JSON; people with no point above `threshold` are left out."""
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
    """Write `<stem>.png` and `<stem>.json` under `out_dir` atomically; return their paths."""
    png_path, json_path = output_paths(out_dir, export.stem)
    atomic_write_bytes(png_path, encode_png(export.image))
    atomic_write_json(json_path, export.pose)
    return png_path, json_path
