"""Surface-normal evaluation with the DSINE protocol: angular errors pooled over all valid pixels of a
dataset.

Reference notes `lotus_marigold.md` §2.4: angular error = acos(cosine similarity) in degrees (both vectors are
normalised first, so predictions need not be unit length); metrics are mean, median, RMSE and the percentage
of pixels under 5, 7.5, 11.25, 22.5 and 30 degrees, over all valid pixels of the whole dataset
(not a mean of per-image means). Normals are [B, 3, H, W]; masks [B, 1, H, W] or [B, H, W] bool.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from zoo.evaluation.base import Evaluator, gather_objects

# DSINE's a1..a5 thresholds in degrees.
NORMAL_THRESHOLDS: tuple[float, ...] = (5.0, 7.5, 11.25, 22.5, 30.0)
# "pct_11.25" = % of pixels with error < 11.25 degrees
# (DSINE calls these a1..a5; explicit names avoid mixing up "a5" = under 30 degrees with "under 5 degrees").
NORMAL_METRICS: tuple[str, ...] = ("mean", "median", "rmse") + tuple(f"pct_{t:g}" for t in NORMAL_THRESHOLDS)
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
    """Per-pixel angle in degrees between two normal maps [B, 3, H, W] -> [B, H, W]; both are normalised
    first."""
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
    """DSINE metrics of a flat tensor of angular errors (degrees): mean, median, rmse and % under each
    threshold."""
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
    """DSINE metrics of one batch, pooled over its valid pixels (use NormalEvaluator for a dataset)."""
    errors = angular_error(prediction, target)
    return summarize_angular_errors(errors[_as_mask(mask, errors.shape)])


# Bin width of the coarse histogram that answers the median only when the exact window missed it (see below).
FALLBACK_BIN_DEGREES = 1e-3
# Exact error values kept at most (float64: 32 MB); a full window is shrunk to half around the running median.
DEFAULT_WINDOW_CAPACITY = 4_000_000


class ExactMedianWindow:
    """The exact median of a stream of values in [0, 180] without keeping the stream.

    Values are kept exactly while they fit (`capacity`); when the store is full it is cut to the
    `capacity / 2` values around the running median and becomes a window [low, high]: later values inside it
    are kept, values outside only counted (`below`, `above`). The k-th smallest value of the stream is exact
    whenever its rank falls inside the window, which is the case for the median of any stream whose median
    settles (every real benchmark: the window holds millions of values around it). If it does not
    (an adversarial order), the median comes from a 0.001-degree histogram (error at most 5e-4 degrees) and
    `exact` says so. Windows of several ranks merge into their intersection, so the result does not depend on
    how the stream was split.
    """

    def __init__(self, capacity: int = DEFAULT_WINDOW_CAPACITY) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be >= 2; got {capacity}")
        self.capacity = capacity
        self.low, self.high = -math.inf, math.inf
        self.below = self.above = 0
        self._values: list[np.ndarray] = []
        self._stored = 0
        self.histogram = np.zeros(math.ceil(180.0 / FALLBACK_BIN_DEGREES), dtype=np.int64)
        self.exact = True

    @property
    def count(self) -> int:
        """Number of values added."""
        return self.below + self._stored + self.above

    def add(self, values: np.ndarray) -> None:
        """Add a flat float64 array of values in [0, 180]."""
        bins = np.clip((values / FALLBACK_BIN_DEGREES).astype(np.int64), 0, self.histogram.size - 1)
        self.histogram += np.bincount(bins, minlength=self.histogram.size)
        inside = (values >= self.low) & (values <= self.high)
        self.below += int((values < self.low).sum())
        self.above += int((values > self.high).sum())
        self._values.append(values[inside])
        self._stored += int(inside.sum())
        if self._stored > self.capacity:
            self._shrink()

    def _sorted(self) -> np.ndarray:
        merged = np.sort(np.concatenate(self._values)) if self._values else np.zeros(0)
        self._values = [merged]
        return merged

    def _shrink(self) -> None:
        stored = self._sorted()
        middle = (self.count - 1) // 2 - self.below  # position of the running median inside the store
        keep = self.capacity // 4
        start = min(max(middle - keep, 0), stored.size - 2 * keep)
        kept = stored[start : start + 2 * keep]
        self.below += start
        self.above += stored.size - start - kept.size
        self.low, self.high = float(kept[0]), float(kept[-1])
        self._values, self._stored = [kept], kept.size

    def merge(self, others: Sequence[ExactMedianWindow]) -> ExactMedianWindow:
        """One window holding the values of `self` and `others` (their intersection stays exact)."""
        merged = ExactMedianWindow(self.capacity)
        windows = [self, *others]
        merged.low = max(window.low for window in windows)
        merged.high = min(window.high for window in windows)
        for window in windows:
            stored = window._sorted()
            inside = stored[(stored >= merged.low) & (stored <= merged.high)]
            merged.below += window.below + int((stored < merged.low).sum())
            merged.above += window.above + int((stored > merged.high).sum())
            merged._values.append(inside)
            merged._stored += inside.size
            merged.histogram += window.histogram
            merged.exact &= window.exact
        if merged.low > merged.high:  # disjoint windows (a value stream split adversarially): histogram only
            merged.exact = False
        return merged

    def _value_at(self, rank: int, stored: np.ndarray) -> float:
        if self.below <= rank < self.below + stored.size and self.low <= self.high:
            return float(stored[rank - self.below])
        self.exact = False
        index = int(np.searchsorted(np.cumsum(self.histogram), rank + 1))
        return (index + 0.5) * FALLBACK_BIN_DEGREES

    def median(self) -> float:
        """The median (the mean of the two middle values for an even count, as np.median)."""
        if self.count == 0:
            raise ValueError("no values: cannot take a median")
        stored = self._sorted()
        middle = self.count // 2
        if self.count % 2:
            return self._value_at(middle, stored)
        return 0.5 * (self._value_at(middle - 1, stored) + self._value_at(middle, stored))


class NormalEvaluator(Evaluator):
    """DSINE metrics pooled over every valid pixel of a split, on any number of ranks.

    Sums and threshold counts are exact; the median is exact through `ExactMedianWindow` (bounded memory).
    A padding DistributedSampler gives each rank at most one repeated sample, always its last: so the last
    sample of each rank is held back in full (one image of errors) and only counted at `compute()` if no other
    rank saw it. A repeated sample anywhere else cannot be taken back out of the pooled sums and raises.
    """

    def __init__(self, window_capacity: int = DEFAULT_WINDOW_CAPACITY) -> None:
        self.window_capacity = window_capacity
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen so far."""
        self._window = ExactMedianWindow(self.window_capacity)
        self._sums = np.zeros(2, dtype=np.float64)  # sum and sum of squares of the errors
        self._counts = np.zeros(
            1 + len(NORMAL_THRESHOLDS), dtype=np.int64
        )  # pixels, pixels under each threshold
        self._streamed: set[Hashable] = set()
        self._held: tuple[Hashable, np.ndarray] | None = None
        self._next_id = 0
        self.median_exact = True

    @property
    def count(self) -> int:
        """Valid pixels added on this rank."""
        return int(self._counts[0]) + (0 if self._held is None else self._held[1].size)

    def update(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        sample_ids: Sequence[Hashable] | None = None,
    ) -> None:
        """Add the valid pixels of a batch of predicted and GT normals ([B, 3, H, W], mask [B, 1, H, W])."""
        errors = angular_error(prediction, target)  # [B, H, W]
        valid = _as_mask(mask, errors.shape)
        if sample_ids is None:
            sample_ids = [("call", self._next_id + index) for index in range(errors.shape[0])]
            self._next_id += errors.shape[0]
        if len(sample_ids) != errors.shape[0]:
            raise ValueError(f"{len(sample_ids)} sample ids for a batch of {errors.shape[0]}")
        for sample_id, image_errors, image_valid in zip(sample_ids, errors, valid, strict=True):
            self.update_errors(image_errors[image_valid], sample_id)

    def update_errors(self, errors: torch.Tensor, sample_id: Hashable | None = None) -> None:
        """Add the angular errors (degrees, any shape; all entries count) of one sample."""
        values = torch.as_tensor(errors).double().flatten().cpu().numpy()
        if values.size and bool(((values < 0) | (values > 180) | np.isnan(values)).any()):
            raise ValueError("angular errors must lie in [0, 180] degrees")
        if sample_id is None:
            sample_id = ("call", self._next_id)
            self._next_id += 1
        if sample_id in self._streamed or (self._held is not None and self._held[0] == sample_id):
            return  # the same sample again on this rank: it is not new evidence
        if self._held is not None:
            self._stream(*self._held)
        self._held = (sample_id, values)

    def _stream(self, sample_id: Hashable, values: np.ndarray) -> None:
        self._streamed.add(sample_id)
        if values.size == 0:
            return
        self._counts[0] += values.size
        self._sums[0] += values.sum()
        self._sums[1] += np.square(values).sum()
        for index, threshold in enumerate(NORMAL_THRESHOLDS):
            self._counts[1 + index] += int((values < threshold).sum())
        self._window.add(values)

    def compute(self) -> dict[str, float]:
        """DSINE metrics over the pixels of all ranks (raises if none)."""
        states = gather_objects((self._streamed, self._held, self._counts, self._sums, self._window))
        seen: set[Hashable] = set()
        for streamed, *_ in states:
            repeated = seen & streamed
            if repeated:
                raise ValueError(
                    f"samples {sorted(map(str, repeated))[:5]} were evaluated on two ranks in the middle "
                    "of an epoch: pooled normal metrics cannot drop them; use a sampler that repeats "
                    "only at the end"
                )
            seen |= streamed
        held = []
        for _, sample, *_ in states:
            if sample is not None and sample[0] not in seen:
                seen.add(sample[0])
                held.append(sample[1])
        counts = sum(state[2] for state in states)
        sums = sum(state[3] for state in states)
        window = states[0][4].merge([state[4] for state in states[1:]])
        for values in held:
            counts[0] += values.size
            sums[0] += values.sum()
            sums[1] += np.square(values).sum()
            for index, threshold in enumerate(NORMAL_THRESHOLDS):
                counts[1 + index] += int((values < threshold).sum())
            if values.size:
                window.add(values)
        total = int(counts[0])
        if total == 0:
            raise ValueError("no valid pixels were added: cannot compute normal metrics")
        metrics = {"mean": sums[0] / total, "median": window.median(), "rmse": math.sqrt(sums[1] / total)}
        self.median_exact = window.exact
        for index, threshold in enumerate(NORMAL_THRESHOLDS):
            metrics[f"pct_{threshold:g}"] = 100.0 * int(counts[1 + index]) / total
        return {name: float(value) for name, value in metrics.items()}
