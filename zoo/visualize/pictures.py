"""Pictures of predictions: depth colormaps, normal maps, heatmaps and image grids (numpy uint8 RGB)."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor


def colorize_depth(
    depth: np.ndarray | torch.Tensor, disparity: bool = False, color_map: str = "Spectral"
) -> np.ndarray:
    """Depth or disparity in [0, 1] ([H, W] or [H, W, 1]) -> uint8 RGB [H, W, 3]; near is red, far is blue.

    Disparity is large when near, so it is reversed first to keep the colours meaning the same thing.
    """
    values = torch.as_tensor(np.asarray(depth, dtype=np.float32))
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]  # only the channel axis goes: a 1-pixel-wide [H, 1] map stays 2-d
    if values.ndim != 2:
        raise ValueError(f"expected a single depth map [H, W] or [H, W, 1]; got shape {tuple(values.shape)}")
    if disparity:
        values = 1.0 - values
    image = MarigoldImageProcessor.visualize_depth(values.clamp(0, 1)[None, None], color_map=color_map)[0]
    return np.asarray(image)


def colorize_normals(normals: np.ndarray | torch.Tensor) -> np.ndarray:
    """Unit normals [H, W, 3] (X right, Y up, Z to the viewer) -> uint8 RGB [H, W, 3] as (n + 1) / 2."""
    values = torch.as_tensor(np.asarray(normals, dtype=np.float32))
    if values.ndim != 3 or values.shape[-1] != 3:
        raise ValueError(f"expected normals [H, W, 3]; got shape {tuple(values.shape)}")
    image = MarigoldImageProcessor.visualize_normals(values.permute(2, 0, 1)[None].clamp(-1, 1))[0]
    return np.asarray(image)


def colorize_heatmaps(heatmaps: np.ndarray | torch.Tensor) -> np.ndarray:
    """Keypoint heatmaps [K, H, W] -> uint8 RGB [H, W, 3]: the per-pixel maximum over joints in Spectral."""
    values = torch.as_tensor(np.asarray(heatmaps, dtype=np.float32))
    peak = values.amax(dim=0).clamp(0, 1)  # [H, W]
    return colorize_depth(1.0 - peak)


def image_grid(images: list[np.ndarray], columns: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized uint8 RGB images [H, W, 3] into a grid with black padding."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    height, width = images[0].shape[:2]
    rows = (len(images) + columns - 1) // columns
    grid = np.zeros((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        if image.shape[:2] != (height, width):
            raise ValueError(f"image {index} has size {image.shape[:2]}, expected {(height, width)}")
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        grid[top : top + height, left : left + width] = image
    return grid


def draw_skeleton(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray | None,
    metainfo: object,
    threshold: float = 0.3,
    radius: int | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """Draw persons' keypoints [N, K, 2] (or [K, 2]) in metainfo colours over a copy of uint8 RGB [H, W, 3].

    `metainfo` is a `zoo.data.metainfo.PoseMetainfo` (skeleton links and colours); keypoints with a score
    below `threshold` and links touching them are skipped.
    """
    import cv2

    canvas = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).copy())
    points = np.asarray(keypoints, dtype=np.float64).reshape(-1, metainfo.num_keypoints, 2)  # [N, K, 2]
    confidence = (
        np.ones(points.shape[:2])
        if scores is None
        else np.asarray(scores, dtype=np.float64).reshape(points.shape[:2])
    )
    # Line widths grow with the image so that skeletons stay visible on large photos and small crops alike.
    size = max(canvas.shape[:2])
    radius = radius or max(1, size // 160)
    thickness = thickness or max(1, size // 240)
    for person, person_scores in zip(points, confidence, strict=True):
        shown = (person_scores >= threshold) & np.isfinite(person).all(axis=1)
        for (a, b), colour in zip(metainfo.skeleton_links, metainfo.skeleton_link_colors, strict=True):
            if shown[a] and shown[b]:
                start = tuple(int(round(v)) for v in person[a])
                end = tuple(int(round(v)) for v in person[b])
                cv2.line(canvas, start, end, tuple(int(c) for c in colour), thickness, cv2.LINE_AA)
        for k in np.flatnonzero(shown):
            centre = tuple(int(round(v)) for v in person[k])
            colour = tuple(int(c) for c in metainfo.keypoint_colors[k])
            cv2.circle(canvas, centre, radius, colour, -1, cv2.LINE_AA)
    return canvas
