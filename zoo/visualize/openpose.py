"""OpenPose pictures: COCO keypoints to OpenPose-18 and the ControlNet OpenPose conditioning canvas.

Rendering follows controlnet_aux's `open_pose.draw_poses` (the "5th edit" of the ControlNet annotator, what
ComfyUI and diffusers users feed to ControlNet) so that a rendered image equals that library's output pixel
for pixel. Coordinates inside a person are normalised (x / width, y / height) exactly as controlnet_aux stores
them, because its pixel positions are truncations of `normalised * size` and we must truncate the same
numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from zoo.data.metainfo import load_metainfo

# OpenPose "COCO-18" body order (CMU POSE_COCO_BODY_PARTS without Background).
OPENPOSE18_NAMES: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
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

# The 17 limbs every renderer draws (the PAF-only ear-shoulder pairs 18 and 19 are never drawn); limb i uses
# colour i.
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

# OpenPose hand order: 0 wrist, 1-4 thumb, 5-8 index, 9-12 middle, 13-16 ring, 17-20 pinky (COCO-WholeBody
# uses it too).
HAND_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
    (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
HAND_LINE_THICKNESS = 2
HAND_JOINT_RADIUS = 4
HAND_JOINT_COLOR = (0, 0, 255)
FACE_POINT_RADIUS = 3
FACE_POINT_COLOR = (255, 255, 255)
# Hands and face hide a point whose truncated pixel x or y is not above this (controlnet_aux's `eps`), so a
# point on row or column 0 is not drawn; missing points are encoded there as -1 and vanish by the same test.
HAND_FACE_EPS = 0.01

DEFAULT_THRESHOLD = 0.3  # DWPose's cut: a keypoint whose score is not above it is missing


@dataclass(frozen=True)
class OpenPosePerson:
    """One person in OpenPose layout: coordinates normalised (x / width, y / height), NaN if missing."""

    body: np.ndarray  # [18, 2]
    left_hand: np.ndarray | None = None  # [21, 2]
    right_hand: np.ndarray | None = None  # [21, 2]
    face: np.ndarray | None = None  # [68, 2]


def _present(points: np.ndarray, threshold: float) -> np.ndarray:
    """Return [K, 2] coordinates with NaN where the score is not above `threshold`."""
    xy = points[:, :2].astype(np.float64)
    xy[~(points[:, 2] > threshold)] = np.nan
    return xy


def coco17_to_openpose18(keypoints: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Reorder COCO-17 keypoints [17, 3] (x, y, score) into OpenPose-18 [18, 3], adding the neck.

    A keypoint whose score is not above `threshold` is missing: its row is (NaN, NaN, 0). The neck is the
    midpoint of the two shoulders, present only when both are, with the lower of their scores.
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

    Hands and face come only from whole-body keypoints; a part with no point above `threshold` is absent
    (None).
    """
    wholebody = load_metainfo("coco_wholebody")
    # The body comes first in the whole-body layout, so both layouts start with the COCO-17 keypoints.
    body_end = wholebody.parts["body"][1]
    keypoints = np.asarray(keypoints, dtype=np.float64)
    counts = (body_end, wholebody.num_keypoints)
    if keypoints.ndim != 2 or keypoints.shape[1] != 3 or keypoints.shape[0] not in counts:
        raise ValueError(f"expected keypoints of shape [17, 3] or [133, 3]; got {list(keypoints.shape)}")
    scale = np.array([float(width), float(height)])
    body = coco17_to_openpose18(keypoints[:body_end], threshold)[:, :2] / scale  # [18, 2]

    def part(name: str, wanted: bool) -> np.ndarray | None:
        if keypoints.shape[0] != wholebody.num_keypoints or not wanted:
            return None
        start, end = wholebody.parts[name]
        xy = _present(keypoints[start:end], threshold)
        return None if np.isnan(xy).all() else xy / scale

    return OpenPosePerson(
        body=body,
        left_hand=part("left_hand", hands),
        right_hand=part("right_hand", hands),
        face=part("face", face),
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
    """Draw the 17 limbs (filled ellipses at 0.6 colour), then the 18 joints (full-colour discs) in place."""
    height, width = canvas.shape[:2]
    present = ~np.isnan(body).any(axis=1)
    for (a, b), color in zip(BODY_LIMBS, BODY_COLORS[: len(BODY_LIMBS)], strict=True):
        if not (present[a] and present[b]):
            continue
        xa, xb = body[a, 0] * float(width), body[b, 0] * float(width)
        ya, yb = body[a, 1] * float(height), body[b, 1] * float(height)
        length = ((ya - yb) ** 2 + (xa - xb) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        # Centre, axes and angle are truncated to integers before OpenCV sees them, as in the reference
        # renderer.
        polygon = cv2.ellipse2Poly(
            (int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1
        )
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * LIMB_FILL_FACTOR) for c in color])
    for (x, y), ok, color in zip(body, present, BODY_COLORS, strict=True):
        if ok:
            cv2.circle(canvas, (int(x * width), int(y * height)), BODY_JOINT_RADIUS, color, thickness=-1)


def _pixel(point: np.ndarray, width: int, height: int) -> tuple[int, int] | None:
    """Truncated pixel of a normalised hand/face point; None when missing or hidden by the eps rule."""
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
    # Person-major order (body, left hand, right hand, face), so a later person's limbs cover an earlier one's
    # joints.
    for person in people:
        _draw_body(canvas, person.body)
        for hand in (person.left_hand, person.right_hand):
            if hand is not None:
                _draw_hand(canvas, hand)
        if person.face is not None:
            _draw_face(canvas, person.face)
    return canvas


__all__ = [
    "BODY_COLORS",
    "BODY_LIMBS",
    "COCO17_TO_OPENPOSE18",
    "DEFAULT_THRESHOLD",
    "HAND_EDGES",
    "HAND_EDGE_COLORS",
    "OPENPOSE18_NAMES",
    "OpenPosePerson",
    "coco17_to_openpose18",
    "person_from_coco",
    "render_openpose",
]
