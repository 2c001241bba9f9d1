"""UDP Gaussian heatmap codec (Huang et al. 2020) with DARK-UDP decoding, following mmpose's `UDPHeatmap`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from zoo.codecs.batched import decode_udp_batched


class EncodedHeatmaps(NamedTuple):
    """Training targets of one instance."""

    heatmaps: np.ndarray  # [K, H, W] float32
    keypoint_weights: np.ndarray  # [K] float32


class UDPHeatmap:
    """Encode keypoints (input-image pixels) to UDP Gaussian heatmaps and decode heatmaps back with DARK-UDP.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        heatmap_size: Sequence[int],
        sigma: float = 2.0,
        blur_kernel_size: int = 11,
    ) -> None:
        if len(input_size) != 2 or len(heatmap_size) != 2:
            raise ValueError(f"input_size and heatmap_size are (w, h); got {input_size} and {heatmap_size}")
        if min(heatmap_size) < 2 or min(input_size) < 2:
            raise ValueError(f"sizes must be at least 2 pixels; got {input_size} and {heatmap_size}")
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if blur_kernel_size % 2 != 1:
            raise ValueError(f"blur_kernel_size must be odd, got {blur_kernel_size}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.sigma = float(sigma)
        self.blur_kernel_size = int(blur_kernel_size)
        # UDP maps pixel centres onto pixel centres: corner pixel 0 -> 0 and w-1 -> W-1.
        self.scale_factor = ((np.array(self.input_size) - 1) / (np.array(self.heatmap_size) - 1)).astype(
            np.float32
        )  # [2]

    def __repr__(self) -> str:
        return (
            f"UDPHeatmap(input_size={self.input_size}, heatmap_size={self.heatmap_size}, "
            f"sigma={self.sigma}, blur_kernel_size={self.blur_kernel_size})"
        )

    def encode_batch(
        self, keypoints: torch.Tensor, visible: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Targets of a batch of instances: keypoints [B, K, 2] and visibilities [B, K] (crop pixels) ->
        heatmaps [B, K, h, w] and keypoint weights [B, K], on the keypoints' device."""
        encoded = [
            self.encode(k, v) for k, v in zip(keypoints.cpu().numpy(), visible.cpu().numpy(), strict=True)
        ]
        heatmaps = torch.from_numpy(np.stack([e.heatmaps for e in encoded])).to(keypoints.device)
        weights = torch.from_numpy(np.stack([e.keypoint_weights for e in encoded])).to(keypoints.device)
        return heatmaps, weights

    def encode(self, keypoints: np.ndarray, keypoints_visible: np.ndarray | None = None) -> EncodedHeatmaps:
        """Encode one instance's keypoints [K, 2] (or [1, K, 2]) and visibilities [K] into heatmaps and
        weights."""
        keypoints = np.asarray(keypoints)
        if keypoints.ndim == 3:
            if keypoints.shape[0] != 1:
                raise ValueError(f"UDPHeatmap encodes one instance at a time, got {keypoints.shape[0]}")
            keypoints = keypoints[0]
        if keypoints.ndim != 2 or keypoints.shape[1] < 2:
            raise ValueError(f"keypoints must be [K, 2], got shape {keypoints.shape}")
        num = keypoints.shape[0]
        if keypoints_visible is None:
            keypoints_visible = np.ones(num, dtype=np.float32)
        keypoints_visible = np.asarray(keypoints_visible).reshape(-1)
        if keypoints_visible.shape[0] != num:
            raise ValueError(f"{keypoints_visible.shape[0]} visibilities for {num} keypoints")

        width, height = self.heatmap_size
        mu_exact = keypoints[:, :2] / self.scale_factor  # [K, 2] in heatmap pixels
        radius = self.sigma * 3  # 3-sigma window
        window = 2 * radius + 1
        # The window is placed around the rounded keypoint; int casts truncate toward zero as in mmpose.
        mu = (mu_exact + 0.5).astype(np.int64)  # [K, 2]
        low = (mu - radius).astype(np.int64)  # [K, 2] first window pixel (left, top)
        high = (mu + radius + 1).astype(np.int64)  # [K, 2] one past the last (right, bottom)
        labelled = keypoints_visible >= 0.5
        outside = (low[:, 0] >= width) | (low[:, 1] >= height) | (high[:, 0] < 0) | (high[:, 1] < 0)
        keypoint_weights = keypoints_visible.astype(np.float32)
        keypoint_weights[labelled & outside] = 0
        active = labelled & ~outside

        # Window centre inside the window's own coordinates, carrying the sub-pixel offset of the keypoint.
        centre = window // 2 + (mu_exact - mu)  # [K, 2]

        def profile(axis: int, size: int) -> np.ndarray:
            # The Gaussian is separable: exp(-(dx^2 + dy^2) / 2s^2) = exp(-dx^2 / 2s^2) * exp(-dy^2 / 2s^2).
            pixels = np.arange(size)[None, :]  # [1, S]
            offset = (pixels - low[:, axis : axis + 1]).astype(
                np.float32
            )  # [K, S] position inside the window
            inside = (offset >= 0) & (pixels < high[:, axis : axis + 1]) & (offset < window)
            gauss = np.exp(-((offset - centre[:, axis : axis + 1]) ** 2) / (2 * self.sigma**2))
            return (gauss * inside).astype(np.float32)  # [K, S]

        heatmaps = np.zeros((num, height, width), dtype=np.float32)
        heatmaps[active] = (
            profile(1, height)[active, :, None] * profile(0, width)[active, None, :]
        )  # [K, H, W]
        return EncodedHeatmaps(heatmaps, keypoint_weights)

    def decode(self, heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decode one instance's heatmaps [K, H, W] to keypoints [K, 2] in input pixels and scores [K]."""
        heatmaps = np.asarray(heatmaps, dtype=np.float32)
        if heatmaps.ndim != 3 or tuple(heatmaps.shape[:0:-1]) != self.heatmap_size:
            raise ValueError(
                f"heatmaps must be [K, {self.heatmap_size[1]}, {self.heatmap_size[0]}], got {heatmaps.shape}"
            )
        keypoints, scores = decode_udp_batched(
            torch.from_numpy(heatmaps)[None], self.input_size, self.blur_kernel_size
        )  # [1, K, 2], [1, K]
        return keypoints[0].numpy(), scores[0].numpy()

    def decode_batch(self, heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of heatmaps [N, K, H, W] to keypoints [N, K, 2] in input pixels and scores [N, K].
        """
        if tuple(heatmaps.shape[:1:-1]) != self.heatmap_size:
            raise ValueError(
                f"heatmaps must be [N, K, {self.heatmap_size[1]}, {self.heatmap_size[0]}], "
                f"got {tuple(heatmaps.shape)}"
            )
        return decode_udp_batched(heatmaps, self.input_size, self.blur_kernel_size)


__all__ = ["EncodedHeatmaps", "UDPHeatmap"]
