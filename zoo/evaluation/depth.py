"""Affine-invariant depth evaluation: the Marigold metrics and least-squares alignment under a protocol.

Follows the protocol that Marigold and Lotus share (reference notes `lotus_marigold.md` §2.1–2.3):

1. the prediction is resized to the ground-truth size (bilinear + antialias, `resize_prediction`);
2. scale and shift are fitted by least squares on the valid pixels, either to the GT depth (`space="depth"`)
or to the GT disparity 1/d
(`space="disparity"`, pixels with gt > 0 and pred > 0 only; the aligned disparity is clipped to >= 1e-3
and inverted),
optionally on a nearest-downsampled copy (`max_resolution`);
3. the aligned depth is clipped to the dataset's [min_depth, max_depth], then to >= 1e-6;
4. each metric is computed per image on the valid mask, and a dataset's score is the mean over images.

The protocols themselves (depth range, crops, eval masks) are dataset facts in `zoo.data.depth_protocols`.

All functions take batches: prediction, ground truth and mask are [B, H, W] or [B, 1, H, W]
(a single [H, W] image is accepted too). Work is done in float64 so that sums over millions of pixels stay
exact enough.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

from zoo.data.depth_protocols import AlignmentSpace, DepthEvalProtocol, get_protocol
from zoo.evaluation.base import RecordEvaluator

# Metric keys in reporting order, with the names Marigold's `metric.py` gives them.
DEPTH_METRICS: tuple[str, ...] = (
    "abs_rel",
    "sq_rel",
    "rmse",
    "rmse_log",
    "log10",
    "delta1",
    "delta2",
    "delta3",
    "i_rmse",
    "silog_rmse",
)
MARIGOLD_METRIC_NAMES: dict[str, str] = {
    "abs_rel": "abs_relative_difference",
    "sq_rel": "squared_relative_difference",
    "rmse": "rmse_linear",
    "rmse_log": "rmse_log",
    "log10": "log10",
    "delta1": "delta1_acc",
    "delta2": "delta2_acc",
    "delta3": "delta3_acc",
    "i_rmse": "i_rmse",
    "silog_rmse": "silog_rmse",
}
# Metrics where higher is better (the rest are errors).
HIGHER_IS_BETTER = frozenset({"delta1", "delta2", "delta3"})

# Disparity below this is clipped before inversion, so a far or negative aligned value becomes 1000 m, then
# the dataset's max_depth (Marigold's `least_square_disparity`).
MIN_ALIGNED_DISPARITY = 1e-3
# Final floor on the prediction so that log and 1/x stay finite (Marigold clips to 1e-6 after the range clip).
MIN_EVAL_DEPTH = 1e-6


def resize_prediction(prediction: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize [B, 1, h, w] (or [B, h, w]) predictions to the GT size with bilinear + antialias, as the
    protocol does."""
    squeeze = prediction.ndim == 3
    batch = prediction[:, None] if squeeze else prediction  # [B, 1, h, w]
    if tuple(batch.shape[-2:]) != tuple(size):
        batch = F.interpolate(batch.float(), size=size, mode="bilinear", align_corners=False, antialias=True)
    return batch[:, 0] if squeeze else batch


def _as_batch(tensor: torch.Tensor, name: str) -> torch.Tensor:
    """View [H, W], [B, H, W] or [B, 1, H, W] as [B, H, W]."""
    if tensor.ndim == 2:
        return tensor[None]
    if tensor.ndim == 3:
        return tensor
    if tensor.ndim == 4 and tensor.shape[1] == 1:
        return tensor[:, 0]
    raise ValueError(f"{name}: expected [H, W], [B, H, W] or [B, 1, H, W]; got shape {tuple(tensor.shape)}")


def _check_inputs(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bring prediction, target and mask to [B, H, W] (float64, float64, bool) and check they match."""
    pred = _as_batch(torch.as_tensor(prediction), "prediction").double()
    gt = _as_batch(torch.as_tensor(target), "target").double()
    if mask is None:
        valid = torch.ones_like(gt, dtype=torch.bool)
    else:
        valid = _as_batch(torch.as_tensor(mask), "mask")
        if valid.dtype != torch.bool:
            raise TypeError(f"mask: expected a bool tensor; got {valid.dtype}")
    if not (pred.shape == gt.shape == valid.shape):
        raise ValueError(
            f"shape mismatch: prediction {tuple(pred.shape)}, target {tuple(gt.shape)}, "
            f"mask {tuple(valid.shape)}"
        )
    return pred, gt, valid.to(gt.device)


def _downsample_for_alignment(
    pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, max_resolution: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest-downsample [B, H, W] inputs so the longer edge is at most max_resolution
    (no-op if already smaller)."""
    if max_resolution is None:
        return pred, gt, valid
    height, width = gt.shape[-2:]
    factor = min(max_resolution / height, max_resolution / width)
    if factor >= 1:
        return pred, gt, valid
    stacked = torch.stack([pred, gt, valid.double()], dim=1)  # [B, 3, H, W]
    small = F.interpolate(stacked, scale_factor=factor, mode="nearest")  # [B, 3, h, w]
    return small[:, 0], small[:, 1], small[:, 2] > 0.5


def _masked_values(
    tensor: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the valid pixels of [B, H, W] as a flat tensor with their batch index, plus per-image counts
    [B].

    Working on the gathered pixels only means garbage (NaN, inf, <= 0) outside the mask is never touched, and
    the cost scales with the valid pixels rather than the frame.
    """
    batch_index = torch.nonzero(valid)[:, 0]  # [N]
    count = valid.sum(dim=(-1, -2)).double()  # [B]
    return tensor[valid], batch_index, count


def _per_image_mean(values: torch.Tensor, batch_index: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean of flat per-pixel values [N] within each image -> [B]."""
    sums = torch.zeros_like(count).index_add_(0, batch_index, values.double())
    return sums / count


def _require_pixels(count: torch.Tensor, hint: str) -> None:
    """Raise ValueError naming the batch items that have no valid pixel."""
    if bool((count == 0).any()):
        empty = torch.nonzero(count == 0).flatten().tolist()
        raise ValueError(f"no valid pixels in batch item(s) {empty}{hint}")


def fit_scale_shift(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares scale and shift per image so that scale * prediction + shift ~ target on mask; returns
    [B], [B].

    Closed form of min ||s * p + t - y||^2. Degenerate images: a prediction that is constant on the mask
    (or a single valid pixel) gets scale 0 and shift = mean target, the best constant, which is what any LS
    solver's fitted values equal there; an image with no valid pixel raises ValueError.
    """
    pred, gt, valid = _check_inputs(prediction, target, mask)
    x, batch_index, count = _masked_values(pred, valid)  # [N], [N], [B]
    y = gt[valid]
    _require_pixels(count, " to align")
    mean_x = _per_image_mean(x, batch_index, count)  # [B]
    mean_y = _per_image_mean(y, batch_index, count)
    # Centred sums are better conditioned than raw second moments for large depths.
    dx = x - mean_x[batch_index]  # [N]
    dy = y - mean_y[batch_index]
    var_x = _per_image_mean(dx * dx, batch_index, count)  # [B]
    cov_xy = _per_image_mean(dx * dy, batch_index, count)
    # Relative threshold: a variance at rounding level of the values means the prediction is constant.
    mean_sq = _per_image_mean(x * x, batch_index, count)
    degenerate = var_x <= 1e-12 * mean_sq.clamp_min(1e-300)
    scale = torch.where(degenerate, torch.zeros_like(var_x), cov_xy / torch.where(degenerate, 1.0, var_x))
    shift = mean_y - scale * mean_x
    return scale, shift


def depth_to_disparity(depth: torch.Tensor) -> torch.Tensor:
    """1 / depth where depth > 0, else 0."""
    positive = depth > 0
    return torch.where(positive, 1.0 / torch.where(positive, depth, 1.0), torch.zeros_like(depth))


def align_prediction(
    prediction: torch.Tensor,
    target_depth: torch.Tensor,
    mask: torch.Tensor | None,
    space: AlignmentSpace = "depth",
    max_resolution: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Align an affine-invariant prediction to GT depth; returns
    (aligned depth [B, H, W], scale [B], shift [B]).

    `space="depth"`: prediction is affine-invariant depth, fitted to GT depth on `mask`.
    `space="disparity"`: prediction is affine-invariant disparity, fitted to 1/GT on
    `mask & gt > 0 & pred > 0`; the aligned disparity is clipped to >= 1e-3 and inverted to depth.
    `space="none"`: the prediction is already metric depth (scale 1, shift 0). `max_resolution`: solve on a
    nearest-downsampled copy whose longer edge is at most this (ETH3D uses 1024); the fitted scale and shift
    are applied at full resolution.
    """
    pred, gt, valid = _check_inputs(prediction, target_depth, mask)
    batch = pred.shape[0]
    if space == "none":
        return pred, torch.ones(batch, dtype=pred.dtype), torch.zeros(batch, dtype=pred.dtype)
    if space == "depth":
        fit_target, fit_mask = gt, valid
    elif space == "disparity":
        fit_target = depth_to_disparity(gt)
        fit_mask = valid & (gt > 0) & (pred > 0)
    else:
        raise ValueError(f"alignment space must be 'depth', 'disparity' or 'none'; got {space!r}")
    small_pred, small_target, small_mask = _downsample_for_alignment(
        pred, fit_target, fit_mask, max_resolution
    )
    scale, shift = fit_scale_shift(small_pred, small_target, small_mask)
    aligned = pred * scale[:, None, None] + shift[:, None, None]  # [B, H, W]
    if space == "disparity":
        aligned = 1.0 / aligned.clamp_min(MIN_ALIGNED_DISPARITY)
    return aligned, scale, shift


def compute_depth_metrics(
    prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """The Marigold metric set per image on the mask; returns {name: [B]}
    (prediction and target must be > 0 there).

    AbsRel = mean |p - g| / g; SqRel = mean (p - g)^2 / g; RMSE = sqrt(mean (p - g)^2); RMSE log = sqrt(mean
    (ln p - ln g)^2); log10 = mean |log10 p - log10 g|; delta_k = fraction with max(p/g, g/p) < 1.25^k; i_rmse
    = sqrt(mean (1/p - 1/g)^2); silog_rmse = 100 * sqrt(mean d^2 - (mean d)^2) with d = ln p - ln g. Ratios
    are fractions (papers print AbsRel and delta1 x 100). An image with an empty mask raises ValueError.
    """
    pred, gt, valid = _check_inputs(prediction, target, mask)
    p, batch_index, count = _masked_values(pred, valid)  # [N], [N], [B]
    g = gt[valid]
    _require_pixels(count, "; skip such images before computing metrics")
    if not bool(((p > 0) & (g > 0) & torch.isfinite(p) & torch.isfinite(g)).all()):
        raise ValueError(
            "prediction and target must be finite and > 0 on valid pixels (clip before evaluating)"
        )

    def mean(values: torch.Tensor) -> torch.Tensor:
        return _per_image_mean(values, batch_index, count)  # [B]

    diff = p - g
    log_diff = torch.log(p) - torch.log(g)
    ratio = torch.maximum(p / g, g / p)
    silog_var = (mean(log_diff**2) - mean(log_diff) ** 2).clamp_min(0.0)  # rounding can dip below 0
    return {
        "abs_rel": mean(diff.abs() / g),
        "sq_rel": mean(diff**2 / g),
        "rmse": mean(diff**2).sqrt(),
        "rmse_log": mean(log_diff**2).sqrt(),
        "log10": mean((torch.log10(p) - torch.log10(g)).abs()),
        "delta1": mean((ratio < 1.25).double()),
        "delta2": mean((ratio < 1.25**2).double()),
        "delta3": mean((ratio < 1.25**3).double()),
        "i_rmse": mean((1.0 / p - 1.0 / g) ** 2).sqrt(),
        "silog_rmse": silog_var.sqrt() * 100.0,
    }


def evaluate_depth(
    prediction: torch.Tensor,
    target_depth: torch.Tensor,
    mask: torch.Tensor | None,
    protocol: DepthEvalProtocol | str,
    alignment: AlignmentSpace | None = None,
    max_resolution: int | None = None,
) -> dict[str, torch.Tensor]:
    """Align, clip to the protocol's depth range and score a batch; returns {metric: [B]} plus "scale" and
    "shift".

    `mask` is the GT validity (e.g. from `valid_depth_mask` or a reader's "valid"); the prediction must
    already be at GT resolution (`resize_prediction`). `alignment` and `max_resolution` default to the
    protocol's.
    """
    protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
    space = protocol.alignment if alignment is None else alignment
    max_res = protocol.alignment_max_resolution if max_resolution is None else max_resolution
    aligned, scale, shift = align_prediction(prediction, target_depth, mask, space, max_res)
    aligned = aligned.clamp(protocol.min_depth, protocol.max_depth).clamp_min(MIN_EVAL_DEPTH)
    metrics = compute_depth_metrics(aligned, target_depth, mask)
    metrics["scale"] = scale
    metrics["shift"] = shift
    return metrics


def constant_baseline_metrics(
    target_depth: torch.Tensor,
    mask: torch.Tensor | None,
    protocol: DepthEvalProtocol | str,
    alignment: AlignmentSpace | None = None,
    max_resolution: int | None = None,
) -> dict[str, torch.Tensor]:
    """Metrics of the best constant prediction under the same alignment: the floor a model has to beat.

    With least-squares scale and shift, every constant prediction aligns to the same value, the LS-optimal
    constant: the mean GT depth on the mask (depth space) or the inverse of the mean GT disparity
    (disparity space). So this scores a prediction of ones through `evaluate_depth`; no constant can do better
    under that alignment.
    """
    ones = torch.ones_like(_as_batch(torch.as_tensor(target_depth), "target"), dtype=torch.float64)
    return evaluate_depth(ones, target_depth, mask, protocol, alignment, max_resolution)


class DepthEvaluator(RecordEvaluator):
    """Per-image depth metrics averaged over a split (Marigold's MetricTracker), on any number of ranks.

    One record per image, keyed by its sample id: the metrics of the aligned prediction and, with
    `constant_baseline`, of the best constant prediction under the same alignment (reported as
    `constant_baseline_abs_rel`). Images without a valid pixel are skipped and counted (`skipped`).
    """

    def __init__(self, constant_baseline: bool = False) -> None:
        super().__init__()
        self.constant_baseline = constant_baseline
        self._next_id = 0

    def update(
        self,
        prediction: torch.Tensor,
        target_depth: torch.Tensor,
        mask: torch.Tensor,
        protocol: DepthEvalProtocol | str,
        alignment: AlignmentSpace | None = None,
        max_resolution: int | None = None,
        sample_ids: Sequence[Hashable] | None = None,
    ) -> None:
        """Score a batch with `evaluate_depth` ([B, H, W] or [B, 1, H, W]) and keep one record per image."""
        valid = _as_batch(torch.as_tensor(mask), "mask")
        batch = valid.shape[0]
        if sample_ids is None:
            sample_ids = [("call", self._next_id + index) for index in range(batch)]
            self._next_id += batch
        if len(sample_ids) != batch:
            raise ValueError(f"{len(sample_ids)} sample ids for a batch of {batch}")
        has_pixels = valid.flatten(1).any(dim=1)  # [B]
        keep = torch.nonzero(has_pixels).flatten()
        scores: dict[str, torch.Tensor] = {}
        baseline: dict[str, torch.Tensor] = {}
        if keep.numel():
            pred = _as_batch(torch.as_tensor(prediction), "prediction")[keep]
            gt = _as_batch(torch.as_tensor(target_depth), "target")[keep]
            scores = evaluate_depth(pred, gt, valid[keep], protocol, alignment, max_resolution)
            if self.constant_baseline:
                baseline = constant_baseline_metrics(gt, valid[keep], protocol, alignment, max_resolution)
        row = {int(index): position for position, index in enumerate(keep.tolist())}
        for index, sample_id in enumerate(sample_ids):
            if index not in row:
                self._add(sample_id, None)
                continue
            record = {name: float(scores[name][row[index]]) for name in DEPTH_METRICS}
            if baseline:
                record["constant_baseline_abs_rel"] = float(baseline["abs_rel"][row[index]])
            self._add(sample_id, record)

    @property
    def count(self) -> int:
        """Images scored on this rank."""
        return sum(record is not None for record in self._records.values())

    @property
    def skipped(self) -> int:
        """Images without a valid pixel on this rank."""
        return sum(record is None for record in self._records.values())

    def _compute(self, records: list[dict[str, float] | None]) -> dict[str, float]:
        scored = [record for record in records if record is not None]
        if not scored:
            raise ValueError(f"no image was scored ({len(records)} skipped for lack of valid pixels)")
        # Records arrive in sample-id order, so the sums are the same on one rank or many.
        return {name: math.fsum(record[name] for record in scored) / len(scored) for name in scored[0]}
