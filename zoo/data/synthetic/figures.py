"""Human-like articulated stick figures with COCO-17 keypoints on textured backgrounds, deterministic by seed.

Each image holds 1-3 front-facing figures
(the person's left side appears on the image's right, as in a photo of a person facing the camera). Limbs are
thick strokes coloured by body side (left green, right orange, as in mmpose's COCO palette) so that a tiny
model can learn them; the head carries eyes, ears and nose marks. Figures drawn later occlude earlier ones: a
keypoint covered by a later figure is labelled v=1 (occluded), one outside the image v=0 with coordinates
(0, 0) (COCO convention), every other one v=2. Boxes are the figure's silhouette clipped to the image, areas
are its visible pixel count (COCO's segmentation area), segmentations are RLE.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from zoo.data.metainfo import load_metainfo
from zoo.utils.files import atomic_write_bytes, atomic_write_json

# Fractions of the figure's height (head top to feet).
_HEAD_RADIUS = 0.065
_NECK = 0.03
_TORSO = 0.30
_SHOULDER_HALF = 0.11
_HIP_HALF = 0.075
_UPPER_ARM, _FOREARM = 0.17, 0.15
_THIGH, _SHIN = 0.24, 0.23
_ARM_WIDTH, _LEG_WIDTH = 0.045, 0.06

# Drawing colours (RGB): body sides must differ so that left and right are learnable after flips.
_LEFT = np.array([40, 200, 60])
_RIGHT = np.array([250, 140, 20])
_TORSO_COLOUR = np.array([60, 110, 220])
_SKIN = np.array([235, 200, 170])
_MARK = np.array([20, 20, 20])

# cv2 draws with sub-pixel precision when coordinates are fixed-point with this many fractional bits.
_SHIFT = 4


@dataclass(frozen=True)
class FigurePerson:
    """One figure's COCO annotation."""

    keypoints: np.ndarray  # [17, 3] float32 (x, y, v); v: 0 outside the image, 1 occluded, 2 visible
    bbox: tuple[float, float, float, float]  # (x, y, w, h)
    area: float  # visible pixels
    segmentation: dict[str, Any]  # COCO RLE of the visible pixels

    @property
    def num_keypoints(self) -> int:
        """Number of labelled keypoints (v > 0)."""
        return int(np.count_nonzero(self.keypoints[:, 2] > 0))


@dataclass(frozen=True)
class FigureImage:
    """One rendered image and its figures."""

    image: np.ndarray  # [H, W, 3] uint8 RGB
    people: list[FigurePerson]


def _rotate(vector: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate 2-vectors [..., 2] counter-clockwise on screen (y points down)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.stack(
        [c * vector[..., 0] + s * vector[..., 1], -s * vector[..., 0] + c * vector[..., 1]], axis=-1
    )


def _limb(start: np.ndarray, length: float, degrees: float) -> np.ndarray:
    """End point of a limb of `length` hanging from `start`, swung `degrees` from straight down."""
    return start + _rotate(np.array([0.0, length]), degrees)


def _pose_keypoints(rng: np.random.Generator, height: float, hip_center: np.ndarray) -> np.ndarray:
    """Random articulated COCO-17 pose [17, 2] of a figure `height` pixels tall standing at `hip_center`."""
    lean = rng.uniform(-20.0, 20.0)  # whole-body tilt
    up = _rotate(np.array([0.0, -1.0]), lean)
    side = _rotate(np.array([1.0, 0.0]), lean)  # towards the figure's left (image right)
    neck = hip_center + up * _TORSO * height
    head = neck + up * (_NECK + _HEAD_RADIUS) * height
    r = _HEAD_RADIUS * height
    turn = rng.uniform(-0.3, 0.3)  # head yaw moves the face marks sideways
    points = np.zeros((17, 2))
    points[0] = head + side * turn * r - up * 0.2 * r  # nose
    points[1] = head + side * (0.4 + turn) * r + up * 0.25 * r  # left eye
    points[2] = head + side * (-0.4 + turn) * r + up * 0.25 * r  # right eye
    points[3] = head + side * 0.95 * r  # left ear
    points[4] = head - side * 0.95 * r  # right ear
    points[5] = neck + side * _SHOULDER_HALF * height
    points[6] = neck - side * _SHOULDER_HALF * height
    points[11] = hip_center + side * _HIP_HALF * height
    points[12] = hip_center - side * _HIP_HALF * height
    for sign, shoulder, elbow, wrist in ((1, 5, 7, 9), (-1, 6, 8, 10)):
        # Arms swing outward from their own side; the elbow bends forward or back.
        swing = lean + sign * rng.uniform(-30.0, 170.0)
        points[elbow] = _limb(points[shoulder], _UPPER_ARM * height, swing)
        points[wrist] = _limb(points[elbow], _FOREARM * height, swing + sign * rng.uniform(-20.0, 140.0))
    for sign, hip, knee, ankle in ((1, 11, 13, 15), (-1, 12, 14, 16)):
        swing = lean + sign * rng.uniform(-15.0, 60.0)
        points[knee] = _limb(points[hip], _THIGH * height, swing)
        points[ankle] = _limb(points[knee], _SHIN * height, swing - sign * rng.uniform(0.0, 100.0))
    return points


def _fixed(point: np.ndarray) -> tuple[int, int]:
    return int(round(point[0] * (1 << _SHIFT))), int(round(point[1] * (1 << _SHIFT)))


def _draw_figure(
    canvas: np.ndarray, points: np.ndarray, height: float, colours: dict[str, np.ndarray]
) -> None:
    """Draw one figure into `canvas` [H, W, C] (uint8, any C) with the given per-part colours."""

    def stroke(a: int, b: int, width: float, colour: np.ndarray) -> None:
        cv2.line(
            canvas,
            _fixed(points[a]),
            _fixed(points[b]),
            colour.tolist(),
            max(int(round(width)), 1),
            cv2.LINE_AA,
            _SHIFT,
        )

    for hip, knee, ankle, key in ((11, 13, 15, "left"), (12, 14, 16, "right")):
        stroke(hip, knee, _LEG_WIDTH * height, colours[key])
        stroke(knee, ankle, _LEG_WIDTH * height, colours[key])
    torso = np.array([_fixed(points[i]) for i in (5, 6, 12, 11)], dtype=np.int32)
    cv2.fillConvexPoly(canvas, torso, colours["torso"].tolist(), cv2.LINE_AA, _SHIFT)
    for shoulder, elbow, wrist, key in ((5, 7, 9, "left"), (6, 8, 10, "right")):
        stroke(shoulder, elbow, _ARM_WIDTH * height, colours[key])
        stroke(elbow, wrist, _ARM_WIDTH * height, colours[key])
    head = (points[3] + points[4]) / 2
    radius = int(round(_HEAD_RADIUS * height * (1 << _SHIFT)))
    cv2.circle(canvas, _fixed(head), radius, colours["skin"].tolist(), -1, cv2.LINE_AA, _SHIFT)
    mark = max(int(round(0.18 * _HEAD_RADIUS * height * (1 << _SHIFT))), 1 << _SHIFT)
    for index, key in ((0, "mark"), (1, "left"), (2, "right"), (3, "left"), (4, "right")):
        cv2.circle(canvas, _fixed(points[index]), mark, colours[key].tolist(), -1, cv2.LINE_AA, _SHIFT)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Low-saturation texture [H, W, 3] uint8: smooth noise plus a few muted shapes."""
    grid = rng.uniform(70.0, 190.0, size=(4 + int(rng.integers(6)), 4 + int(rng.integers(6)), 1))
    tint = rng.uniform(-20.0, 20.0, size=(1, 1, 3))
    base = cv2.resize(np.repeat(grid, 3, axis=2) + tint, (width, height), interpolation=cv2.INTER_CUBIC)
    canvas = np.clip(base, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 7))):
        grey = rng.uniform(50.0, 200.0)
        colour = np.clip(grey + rng.uniform(-25.0, 25.0, size=3), 0, 255).astype(int).tolist()
        x, y = int(rng.integers(width)), int(rng.integers(height))
        w, h = int(rng.integers(width // 8, width // 2)), int(rng.integers(height // 8, height // 2))
        if rng.random() < 0.5:
            cv2.rectangle(canvas, (x, y), (x + w, y + h), colour, -1)
        else:
            cv2.line(canvas, (x, y), (x + w, y + h), colour, int(rng.integers(2, 8)))
    noise = rng.normal(0.0, 4.0, size=canvas.shape)
    return np.clip(canvas + noise, 0, 255).astype(np.uint8)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float = 25.0) -> np.ndarray:
    return np.clip(colour + rng.uniform(-amount, amount, size=3), 0, 255).astype(np.uint8)


def render_figures(seed: int, width: int = 256, height: int = 256, max_people: int = 3) -> FigureImage:
    """Render one image of 1..`max_people` figures; the same arguments always give the same pixels."""
    if width < 32 or height < 32:
        raise ValueError(f"image must be at least 32x32; got {width}x{height}")
    rng = np.random.default_rng(seed)
    canvas = _background(rng, width, height)
    count = int(rng.integers(1, max_people + 1))
    # Each figure gets its own horizontal slot so that overlaps happen but rarely hide a whole figure.
    slot = width / count
    poses, sizes, silhouettes = [], [], []
    owner = np.full((height, width), -1, dtype=np.int32)  # index of the figure on top at each pixel
    for index in range(count):
        size = rng.uniform(0.5, 0.9) * height * (1.0 if count == 1 else rng.uniform(0.7, 1.0))
        hip = np.array(
            [slot * (index + 0.5 + rng.uniform(-0.3, 0.3)), height * 0.5 + size * rng.uniform(0.0, 0.2)]
        )
        if rng.random() < 0.2:  # push some figures partly out of the frame: out-of-image joints
            hip += rng.uniform(-0.35, 0.35, size=2) * size
        points = np.round(_pose_keypoints(rng, size, hip), 2)  # [17, 2]; rounded as written to JSON
        colours = {
            "left": _jitter(rng, _LEFT),
            "right": _jitter(rng, _RIGHT),
            "torso": _jitter(rng, _TORSO_COLOUR, 40.0),
            "skin": _jitter(rng, _SKIN),
            "mark": _MARK,
        }
        _draw_figure(canvas, points, size, colours)
        silhouette = np.zeros((height, width), dtype=np.uint8)
        _draw_figure(silhouette, points, size, {key: np.array([255]) for key in colours})
        silhouette = silhouette > 127  # [H, W] bool; the anti-aliased half-covered rim counts as figure
        owner[silhouette] = index
        poses.append(points)
        sizes.append(size)
        silhouettes.append(silhouette)
    people = []
    for index, (points, silhouette) in enumerate(zip(poses, silhouettes, strict=True)):
        visible_mask = owner == index
        keypoints = np.zeros((17, 3), dtype=np.float32)
        for k, (x, y) in enumerate(points):
            col, row = int(round(x)), int(round(y))
            if not (0 <= col < width and 0 <= row < height):
                continue  # outside the image: v=0 at (0, 0)
            covered = owner[row, col] > index  # a later figure is drawn on top of this joint
            keypoints[k] = (x, y, 1.0 if covered else 2.0)
        rows, cols = np.nonzero(silhouette)
        x0, y0, x1, y1 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
        rle = mask_utils.encode(np.asfortranarray(visible_mask.astype(np.uint8)))
        people.append(
            FigurePerson(
                keypoints=keypoints,
                bbox=(float(x0), float(y0), float(x1 - x0), float(y1 - y0)),
                area=float(visible_mask.sum()),
                segmentation={"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            )
        )
    return FigureImage(image=canvas, people=people)


def coco_person_category() -> dict[str, Any]:
    """The COCO "person" category with keypoint names and the 1-based skeleton, from the COCO-17 metainfo."""
    meta = load_metainfo("coco")
    return {
        "id": 1,
        "name": "person",
        "supercategory": "person",
        "keypoints": list(meta.keypoint_names),
        "skeleton": [[a + 1, b + 1] for a, b in meta.skeleton_links],
    }


def _png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def write_coco_figures(
    root: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    split: str = "train",
    width: int = 256,
    height: int = 256,
    max_people: int = 3,
) -> tuple[Path, Path]:
    """Write a COCO keypoint dataset of figures; returns (annotation file, image folder).

    Layout as COCO's: `root/annotations/person_keypoints_{split}.json` and `root/{split}/NNNNNN.png`. Image i
    is rendered from the seed sequence (seed, i), so two calls with the same arguments write identical bytes
    and a larger `num_images` extends a smaller one.
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1; got {num_images}")
    root = Path(root)
    image_dir = root / split
    images, annotations = [], []
    for index in range(num_images):
        rendered = render_figures(_image_seed(seed, index), width, height, max_people)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        atomic_write_bytes(image_dir / file_name, _png_bytes(rendered.image))
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for person in rendered.people:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [round(v, 2) for v in person.bbox],
                    "area": person.area,
                    "iscrowd": 0,
                    "num_keypoints": person.num_keypoints,
                    "keypoints": [round(float(v), 2) for v in person.keypoints.reshape(-1)],
                    "segmentation": person.segmentation,
                }
            )
    ann_file = root / "annotations" / f"person_keypoints_{split}.json"
    atomic_write_json(
        ann_file,
        {
            "info": {"description": f"zoo synthetic figures, seed {seed}", "version": "1.0"},
            "images": images,
            "annotations": annotations,
            "categories": [coco_person_category()],
        },
    )
    return ann_file, image_dir


def _image_seed(seed: int, index: int) -> int:
    """One integer seed per image derived from (seed, index), stable across numpy versions."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
