"""The official SDPose-OOD heatmap decode reproduced operation by operation
(mmpose's UDPHeatmap.decode, numpy).

zoo.codecs.batched computes the same argmax + DARK-UDP refinement in torch with a local blur; its sums run in
a different order, which on flat heatmaps (tiny or random heads, where the Hessian is nearly singular) moves
keypoints by up to 0.02 input pixels. `PosePredictor(sdpose_compat=True)` decodes with this module, one
instance at a time as the official code does, so that equal heatmaps give equal keypoints. Quirks kept on
purpose: a map whose maximum is <= 0 keeps the marker -1 as its integer position and is then refined from
whatever its padded neighbourhood holds (for a negative map: clipped constants, so it stays -1); an all-zero
map divides 0 by 0 and decodes to NaN.
"""

from __future__ import annotations

import cv2
import numpy as np

# mmpose clips the rescaled blurred maps to this range before the log.
_LOG_MIN, _LOG_MAX = 1e-3, 50.0


def heatmap_maximum_official(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer (x, y) float32 [K, 2] of each map's first maximum in row-major order (-1 where it is <= 0),
    [K]."""
    num, height, width = heatmaps.shape
    flat = heatmaps.reshape(num, height * width)
    index = np.argmax(flat, axis=1)  # numpy: the first maximum on ties
    points = np.stack([index % width, index // width], axis=-1).astype(np.float32)  # [K, 2]
    values = np.amax(flat, axis=1)
    points[values <= 0] = -1
    return points, values


def _log_blurred(heatmaps: np.ndarray, kernel_size: int) -> np.ndarray:
    """Log of each map blurred on a zero border, rescaled to its own maximum and clipped: float32 [K, H, W].
    """
    border = (kernel_size - 1) // 2
    logs = np.empty_like(heatmaps)
    with np.errstate(divide="ignore", invalid="ignore"):  # an all-zero map is 0 / 0 here, as in the original
        for k, heatmap in enumerate(heatmaps):
            padded = np.pad(heatmap, border)  # zeros around: the blur must not see the map's own edge values
            blurred = cv2.GaussianBlur(padded, (kernel_size, kernel_size), 0)[border:-border, border:-border]
            logs[k] = blurred * (heatmap.max() / blurred.max())
    np.clip(logs, _LOG_MIN, _LOG_MAX, out=logs)
    return np.log(logs)


def refine_dark_udp_official(points: np.ndarray, heatmaps: np.ndarray, kernel_size: int = 11) -> np.ndarray:
    """One Newton step on the blurred log-maps [K, H, W] from integer points [K, 2]: refined float32 [K, 2].
    """
    num, height, width = heatmaps.shape
    stride = width + 2
    # The neighbourhood is read from the flattened edge-padded maps, as the original indexes them: a -1 marker
    # sits on the padded corner, and its left/upper neighbours then belong to the previous map
    # (or wrap around).
    flat = np.pad(
        _log_blurred(heatmaps.astype(np.float32), kernel_size), ((0, 0), (1, 1), (1, 1)), mode="edge"
    )
    flat = flat.ravel()
    base = (points[:, 0] + 1 + (points[:, 1] + 1) * stride).astype(np.int64) + stride * (
        height + 2
    ) * np.arange(num)

    def at(offset: int) -> np.ndarray:
        return flat[base + offset]  # [K]

    center, right, left, down, up = at(0), at(1), at(-1), at(stride), at(-stride)
    dx = 0.5 * (right - left)
    dy = 0.5 * (down - up)
    dxx = right - 2 * center + left
    dyy = down - 2 * center + up
    dxy = 0.5 * (at(stride + 1) - right - down + center + center - left - up + at(-stride - 1))
    hessian = np.stack([dxx, dxy, dxy, dyy], axis=-1).reshape(num, 2, 2)
    inverse = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))  # float64 [K, 2, 2]
    step = np.einsum("imn,ink->imk", inverse, np.stack([dx, dy], axis=-1)[..., None])[..., 0]  # [K, 2]
    return (points - step).astype(np.float32)


def decode_udp_official(heatmaps: np.ndarray, kernel_size: int = 11) -> tuple[np.ndarray, np.ndarray]:
    """One instance's heatmaps [K, H, W] -> refined keypoints in heatmap pixels float32 [K, 2] and scores [K].

    Scale to input pixels as the official code does with `points / (heatmap_size - 1) * input_size` (float64).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    if heatmaps.ndim != 3:
        raise ValueError(f"decode_udp_official decodes one instance [K, H, W]; got shape {heatmaps.shape}")
    points, scores = heatmap_maximum_official(heatmaps)
    return refine_dark_udp_official(points, heatmaps, kernel_size), scores


__all__ = ["decode_udp_official", "heatmap_maximum_official", "refine_dark_udp_official"]
