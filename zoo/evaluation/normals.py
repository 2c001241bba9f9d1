"""Surface-normal evaluation with the DSINE protocol: angular errors pooled over all valid pixels of a dataset.

Reference notes `lotus_marigold.md` §2.4: angular error = acos(cosine similarity) in degrees (both vectors are
normalised first, so predictions need not be unit length); metrics are mean, median, RMSE and the percentage of
pixels under 5, 7.5, 11.25, 22.5 and 30 degrees, over all valid pixels of the whole dataset (not a mean of per-image
means). Normals are [B, 3, H, W]; masks [B, 1, H, W] or [B, H, W] bool.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# DSINE's a1..a5 thresholds in degrees.
NORMAL_THRESHOLDS: tuple[float, ...] = (5.0, 7.5, 11.25, 22.5, 30.0)
# "pct_11.25" = % of pixels with error < 11.25 degrees (DSINE calls these a1..a5; explicit names avoid mixing up
# "a5" = under 30 degrees with "under 5 degrees").
NORMAL_METRICS: tuple[str, ...] = ("mean", "median", "rmse") + tuple(f"pct_{t:g}" for t in NORMAL_THRESHOLDS)
# Histogram bin width for the pooled median: storing every pixel's error of a dataset (654 x 307k for NYUv2) would
# take GBs, while 0.001-degree bins bound the median's error by half a bin.
MEDIAN_BIN_DEGREES = 1e-3
# Same epsilon as torch's cosine_similarity default, so zero vectors give 90 degrees rather than NaN.
_EPS = 1e-8


def _as_normals(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """View [3, H, W] or [B, 3, H, W] as [B, 3, H, W] float64."""
    tensor = torch.as_tensor(tensor)
    if tensor.ndim == 3:
        tensor = tensor[None]
    if tensor.ndim != 4 or tensor.shape[1] != 3:
        raise ValueError(f"{name}: expected [3, H, W] or [B, 3, H, W]; got shape {tuple(tensor.shape)}")
    return tensor.double()


def angular_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel angle in degrees between two normal maps [B, 3, H, W] -> [B, H, W]; both are normalised first."""
    pred = _as_normals(prediction, "prediction")
    gt = _as_normals(target, "target")
    if pred.shape != gt.shape:
        raise ValueError(f"shape mismatch: prediction {tuple(pred.shape)}, target {tuple(gt.shape)}")
    cosine = F.cosine_similarity(pred, gt, dim=1, eps=_EPS).clamp(-1.0, 1.0)  # [B, H, W]
    return torch.rad2deg(torch.acos(cosine))


def _as_mask(mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    """Bring a mask to [B, H, W] bool matching the error map."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool)
    mask = torch.as_tensor(mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask: expected a bool tensor; got {mask.dtype}")
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    elif mask.ndim == 2:
        mask = mask[None]
    if mask.shape != shape:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not match normals {tuple(shape)}")
    return mask


def summarize_angular_errors(errors: torch.Tensor) -> dict[str, float]:
    """DSINE metrics of a flat tensor of angular errors (degrees): mean, median, rmse and % under each threshold."""
    errors = torch.as_tensor(errors).double().flatten()
    if errors.numel() == 0:
        raise ValueError("no valid pixels: cannot summarise an empty set of angular errors")
    ordered = errors.sort().values
    middle = ordered.numel() // 2
    # Even counts average the two middle values, as np.median does (torch.median would return the lower one).
    median = ordered[middle] if ordered.numel() % 2 else 0.5 * (ordered[middle - 1] + ordered[middle])
    metrics = {
        "mean": float(errors.mean()),
        "median": float(median),
        "rmse": float(errors.square().mean().sqrt()),
    }
    for threshold in NORMAL_THRESHOLDS:
        metrics[f"pct_{threshold:g}"] = 100.0 * float((errors < threshold).double().mean())
    return metrics


def compute_normal_metrics(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, float]:
    """DSINE metrics of one batch, pooled over its valid pixels (use NormalMetricAccumulator for a dataset)."""
    errors = angular_error(prediction, target)
    return summarize_angular_errors(errors[_as_mask(mask, errors.shape)])


class NormalMetricAccumulator:
    """Pools angular errors over a dataset: exact sums and threshold counts, median from a 0.001-degree histogram."""

    def __init__(self) -> None:
        self._bins = math.ceil(180.0 / MEDIAN_BIN_DEGREES)
        self.reset()

    def reset(self) -> None:
        """Forget all pixels seen so far."""
        self.count = 0
        self._sum = 0.0
        self._sum_sq = 0.0
        self._below = [0] * len(NORMAL_THRESHOLDS)
        self._histogram = torch.zeros(self._bins, dtype=torch.int64)

    def update(
        self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        """Add the valid pixels of a batch of predicted and GT normals ([B, 3, H, W], mask [B, 1, H, W])."""
        errors = angular_error(prediction, target)  # [B, H, W]
        self.update_errors(errors[_as_mask(mask, errors.shape)])

    def update_errors(self, errors: torch.Tensor) -> None:
        """Add precomputed angular errors in degrees (any shape; all entries count)."""
        errors = torch.as_tensor(errors).double().flatten().cpu()
        if errors.numel() == 0:
            return
        if bool(((errors < 0) | (errors > 180) | torch.isnan(errors)).any()):
            raise ValueError("angular errors must lie in [0, 180] degrees")
        self.count += errors.numel()
        self._sum += float(errors.sum())
        self._sum_sq += float(errors.square().sum())
        for index, threshold in enumerate(NORMAL_THRESHOLDS):
            self._below[index] += int((errors < threshold).sum())
        bins = (errors / MEDIAN_BIN_DEGREES).long().clamp_(0, self._bins - 1)
        self._histogram += torch.bincount(bins, minlength=self._bins)

    def _median(self) -> float:
        """Median from the histogram: centre of the bin(s) holding the middle element(s), as np.median averages."""
        cumulative = torch.cumsum(self._histogram, dim=0)

        def value_at(rank: int) -> float:  # rank is 0-based in sorted order
            index = int(torch.searchsorted(cumulative, torch.tensor(rank + 1)))
            return (index + 0.5) * MEDIAN_BIN_DEGREES

        middle = self.count // 2
        if self.count % 2:
            return value_at(middle)
        return 0.5 * (value_at(middle - 1) + value_at(middle))

    def compute(self) -> dict[str, float]:
        """DSINE metrics over all pixels added so far (raises if none)."""
        if self.count == 0:
            raise ValueError("no valid pixels were added: cannot compute normal metrics")
        metrics = {
            "mean": self._sum / self.count,
            "median": self._median(),
            "rmse": math.sqrt(self._sum_sq / self.count),
        }
        for threshold, below in zip(NORMAL_THRESHOLDS, self._below, strict=True):
            metrics[f"pct_{threshold:g}"] = 100.0 * below / self.count
        return metrics
