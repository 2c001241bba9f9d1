"""Articulated figures moving over video frames, written in the PoseTrack18 per-video layout (deterministic).

Each video holds 1..`max_people` of the stick figures of `zoo.data.synthetic.figures`: every figure walks
along a smooth path while its pose blends between random key poses. Three corruptions make a single frame
ambiguous and its neighbours informative:

- occlusion: with `occlusion_prob` per frame and figure, a background-coloured square patch (half-side
  `occluder_size` x the figure's height) centred on one of its joints hides it (a passing object); at 0.2 the
  patch hides a whole body part (two to four joints); the joints stay annotated, as PoseTrack annotates
  occluded joints. Draws are independent per frame, so an occluded key frame usually has a clean neighbour;
- motion blur: with `blur_prob` per frame, the frame is smeared along the figures' mean motion;
- dropped frames: with `drop_prob` per frame, the capture repeats the previous picture while the people move
  on; such frames are listed but not labelled (`is_labeled` false), so they only ever appear as neighbours.

Keypoints use the 17-slot PoseTrack order (head_bottom / head_top in the eye slots, ears 0, 0, 0); joints
outside the picture are (0, 0, 0). `bbox_head` is the head disc's box, so poseval's head size applies. Video
folders are named `NNNNNN_mpii_<split>` and image ids are 1 * 10^10 + video * 10^4 + frame, because poseval's
converter parses exactly that pattern.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from zoo.data.metainfo import load_metainfo

# The still-image figures' own drawing and posing: one renderer for both generators.
from zoo.data.synthetic.figures import (
    _HEAD_RADIUS,
    _LEFT,
    _MARK,
    _RIGHT,
    _SKIN,
    _TORSO_COLOUR,
    _background,
    _draw_figure,
    _jitter,
    _pose_keypoints,
)
from zoo.utils.files import atomic_write_bytes, atomic_write_json

# Frames between two key poses of a figure's motion.
_POSE_PERIOD = 6


@dataclass(frozen=True)
class MovingPerson:
    """One figure in one frame: PoseTrack keypoints, person box and head box."""

    track_id: int
    keypoints: np.ndarray  # [17, 3] float32 (x, y, v) in PoseTrack's 17-slot order; v 1 inside, 0 outside
    bbox: tuple[float, float, float, float]  # (x, y, w, h) of the figure's silhouette, clipped to the frame
    bbox_head: tuple[float, float, float, float]  # (x, y, w, h) of the head disc


@dataclass(frozen=True)
class MovingVideo:
    """The rendered frames of one video and the figures in each."""

    frames: list[np.ndarray]  # T x [H, W, 3] uint8
    people: list[list[MovingPerson]]  # per frame
    dropped: list[bool]  # per frame: the picture repeats the previous one
    occluded: list[bool]  # per frame: some joint is covered by an occluder patch
    blurred: list[bool]  # per frame
    # per frame: the occluder patches drawn, (track_id, x1, y1, x2, y2) in pixels (x2, y2 exclusive)
    occluders: list[list[tuple[int, int, int, int, int]]] = field(default_factory=list)


def _to_posetrack(points: np.ndarray, height: float) -> tuple[np.ndarray, np.ndarray, float]:
    """COCO-17 figure points [17, 2] -> PoseTrack slots [17, 2], the head centre [2] and its radius."""
    head = (points[3] + points[4]) / 2  # the figures draw the head disc between the ears
    neck = (points[5] + points[6]) / 2
    up = (head - neck) / max(float(np.linalg.norm(head - neck)), 1e-6)
    radius = _HEAD_RADIUS * height
    slots = points.copy()
    slots[1] = head - up * radius  # head_bottom, in the left_eye slot
    slots[2] = head + up * radius  # head_top, in the right_eye slot
    slots[3] = slots[4] = 0.0  # ears are never annotated in PoseTrack
    return slots, head, radius


def _motion_blur(image: np.ndarray, direction: np.ndarray, length: int) -> np.ndarray:
    """Smear an image [H, W, 3] along `direction` over `length` pixels (a line kernel)."""
    size = 2 * length + 1
    kernel = np.zeros((size, size), dtype=np.float32)
    unit = direction / max(float(np.linalg.norm(direction)), 1e-6)
    for step in np.linspace(-length, length, 4 * length + 1):
        col, row = np.round(np.array([length, length]) + unit * step).astype(int)
        kernel[row, col] = 1.0
    return cv2.filter2D(image, -1, kernel / kernel.sum(), borderType=cv2.BORDER_REFLECT)


def render_moving_video(
    seed: int,
    num_frames: int = 12,
    width: int = 256,
    height: int = 256,
    max_people: int = 2,
    occlusion_prob: float = 0.35,
    blur_prob: float = 0.25,
    drop_prob: float = 0.1,
    occluder_size: float = 0.12,
) -> MovingVideo:
    """Render one video; the same arguments always give the same pixels and annotations."""
    if num_frames < 1 or width < 32 or height < 32:
        raise ValueError(f"need >= 1 frame of at least 32x32; got {num_frames} frames of {width}x{height}")
    rng = np.random.default_rng(seed)
    background = _background(rng, width, height)
    count = int(rng.integers(1, max_people + 1))
    slot = width / count
    figures = []
    for index in range(count):
        size = rng.uniform(0.45, 0.8) * height
        start = np.array(
            [slot * (index + 0.5 + rng.uniform(-0.2, 0.2)), height * 0.5 + size * rng.uniform(0, 0.15)]
        )
        velocity = rng.normal(0.0, 0.012 * width, size=2) * np.array([1.0, 0.3])
        anchors = [_pose_keypoints(rng, size, np.zeros(2)) for _ in range(num_frames // _POSE_PERIOD + 2)]
        colours = {
            "left": _jitter(rng, _LEFT),
            "right": _jitter(rng, _RIGHT),
            "torso": _jitter(rng, _TORSO_COLOUR, 40.0),
            "skin": _jitter(rng, _SKIN),
            "mark": _MARK,
        }
        figures.append((size, start, velocity, anchors, colours))
    frames, people, dropped, occluded, blurred, occluders = [], [], [], [], [], []
    for t in range(num_frames):
        canvas = background.copy()
        frame_people, motion, covered, patches = [], np.zeros(2), False, []
        for track_id, (size, start, velocity, anchors, colours) in enumerate(figures):
            phase = t / _POSE_PERIOD
            k, frac = int(phase), phase - int(phase)
            blend = (1 - math.cos(math.pi * frac)) / 2  # smooth in and out of each key pose
            hip = start + velocity * t + np.array([0.0, 0.02 * size * math.sin(0.9 * t)])  # walking bob
            points = np.round((1 - blend) * anchors[k] + blend * anchors[k + 1] + hip, 2)  # [17, 2]
            _draw_figure(canvas, points, size, colours)
            silhouette = np.zeros((height, width), dtype=np.uint8)
            _draw_figure(silhouette, points, size, {key: np.array([255]) for key in colours})
            if rng.random() < occlusion_prob:
                # A background-textured patch over one joint: the picture hides it, the annotation keeps it.
                joint = points[int(rng.integers(5, 17))]
                half = int(occluder_size * size)
                x0, y0 = int(joint[0]) - half, int(joint[1]) - half
                xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + 2 * half, width), min(y0 + 2 * half, height)
                if xb > xa and yb > ya:
                    canvas[ya:yb, xa:xb] = _jitter(
                        rng, np.array(background[ya:yb, xa:xb].mean(axis=(0, 1))), 10
                    )
                    covered = True
                    patches.append((track_id, xa, ya, xb, yb))
            motion += velocity
            slots, head, radius = _to_posetrack(points, size)
            inside = (
                (slots[:, 0] >= 0)
                & (slots[:, 0] <= width - 1)
                & (slots[:, 1] >= 0)
                & (slots[:, 1] <= height - 1)
            )
            inside[3:5] = False
            keypoints = np.zeros((17, 3), dtype=np.float32)
            keypoints[inside, :2] = slots[inside]
            keypoints[inside, 2] = 1.0
            rows, cols = np.nonzero(silhouette > 127)
            if not inside.any() or rows.size == 0:
                continue  # the figure has left the picture
            box = (
                float(cols.min()),
                float(rows.min()),
                float(cols.max() + 1 - cols.min()),
                float(rows.max() + 1 - rows.min()),
            )
            head_box = (
                round(float(head[0] - radius), 2),
                round(float(head[1] - radius), 2),
                round(2 * radius, 2),
                round(2 * radius, 2),
            )
            frame_people.append(MovingPerson(track_id, np.round(keypoints, 2), box, head_box))
        blur = rng.random() < blur_prob
        if blur:
            canvas = _motion_blur(
                canvas, motion if motion.any() else np.array([1.0, 0.0]), int(rng.integers(3, 7))
            )
        drop = t > 0 and rng.random() < drop_prob
        frames.append(frames[-1].copy() if drop else canvas)
        people.append(frame_people)
        dropped.append(drop)
        occluded.append(covered)
        blurred.append(blur)
        occluders.append(patches)
    return MovingVideo(
        frames=frames,
        people=people,
        dropped=dropped,
        occluded=occluded,
        blurred=blurred,
        occluders=occluders,
    )


def posetrack_category() -> dict[str, Any]:
    """The PoseTrack "person" category: the 17 slot names and the 1-based skeleton, from the metainfo."""
    meta = load_metainfo("posetrack18")
    return {
        "supercategory": "person",
        "id": 1,
        "name": "person",
        "keypoints": list(meta.keypoint_names),
        "skeleton": [[a + 1, b + 1] for a, b in meta.skeleton_links],
    }


def _jpeg_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def video_seed(seed: int, index: int) -> int:
    """The render seed of video `index` of a split written from `seed`, stable across numpy versions."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def write_posetrack_videos(
    root: str | os.PathLike,
    num_videos: int,
    seed: int = 0,
    split: str = "val",
    num_frames: int = 12,
    width: int = 256,
    height: int = 256,
    **render_options: Any,
) -> Path:
    """Write videos as PoseTrack18 does; returns the annotation folder `root/annotations/<split>`.

    Frames go to `root/images/<split>/<video>/NNNNNN.jpg`, one JSON per video to the annotation folder.
    Video i is rendered from `video_seed(seed, i)`: the same arguments write identical bytes.
    """
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1; got {num_videos}")
    root = Path(root)
    ann_dir = root / "annotations" / split
    category = posetrack_category()
    for index in range(num_videos):
        video = render_moving_video(video_seed(seed, index), num_frames, width, height, **render_options)
        name = f"{index + 1:06d}_mpii_{split}"
        images, annotations = [], []
        for t, (frame, people) in enumerate(zip(video.frames, video.people, strict=True)):
            image_id = 10**10 + (index + 1) * 10**4 + t
            file_name = f"images/{split}/{name}/{t:06d}.jpg"
            atomic_write_bytes(root / file_name, _jpeg_bytes(frame))
            labelled = not video.dropped[t] and bool(people)
            images.append(
                {
                    "id": image_id,
                    "frame_id": image_id,
                    "vid_id": f"{index + 1:06d}",
                    "file_name": file_name,
                    "nframes": num_frames,
                    "is_labeled": labelled,
                    "width": width,
                    "height": height,
                    "ignore_regions_x": [],
                    "ignore_regions_y": [],
                }
            )
            if not labelled:
                continue
            for number, person in enumerate(people):
                annotations.append(
                    {
                        "id": image_id * 100 + number,
                        "image_id": image_id,
                        "track_id": person.track_id,
                        "category_id": 1,
                        "bbox": [round(v, 2) for v in person.bbox],
                        "bbox_head": list(person.bbox_head),
                        "keypoints": [round(float(v), 2) for v in person.keypoints.reshape(-1)],
                        "scores": [],
                        "num_keypoints": int(np.count_nonzero(person.keypoints[:, 2])),
                        "iscrowd": False,
                    }
                )
        atomic_write_json(
            ann_dir / f"{name}.json", {"images": images, "annotations": annotations, "categories": [category]}
        )
    return ann_dir


__all__ = [
    "MovingPerson",
    "MovingVideo",
    "posetrack_category",
    "render_moving_video",
    "write_posetrack_videos",
]
