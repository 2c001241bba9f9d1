"""Depth metrics, least-squares alignment and protocols against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zoo.data.depth_protocols import (
    DEPTH_PROTOCOLS,
    DepthEvalProtocol,
    eval_region_mask,
    get_protocol,
    valid_depth_mask,
)
from zoo.evaluation.depth import (
    DEPTH_METRICS,
    DepthEvaluator,
    align_prediction,
    compute_depth_metrics,
    constant_baseline_metrics,
    evaluate_depth,
    fit_scale_shift,
    resize_prediction,
)

# Five pixels, one row: ratios max(p/g, g/p) are 1, 4/3, 2, 1, 1.8.
GT = torch.tensor([[[1.0, 2.0, 4.0, 8.0, 10.0]]])  # [1, 1, 5]
PRED = torch.tensor([[[1.0, 1.5, 8.0, 8.0, 18.0]]])
OPEN = DepthEvalProtocol("open", 1e-6, 1e6, None)


def test_metrics_match_hand_computed_values() -> None:
    metrics = compute_depth_metrics(PRED, GT)
    assert set(metrics) == set(DEPTH_METRICS)
    expected = {
        "abs_rel": (0 + 0.5 / 2 + 4 / 4 + 0 + 8 / 10) / 5,  # 0.41
        "sq_rel": (0 + 0.25 / 2 + 16 / 4 + 0 + 64 / 10) / 5,
        "rmse": math.sqrt((0 + 0.25 + 16 + 0 + 64) / 5),
        "rmse_log": math.sqrt((math.log(0.75) ** 2 + math.log(2) ** 2 + math.log(1.8) ** 2) / 5),
        "log10": (abs(math.log10(0.75)) + math.log10(2) + math.log10(1.8)) / 5,
        "delta1": 2 / 5,  # ratios 1, 1
        "delta2": 3 / 5,  # + 4/3 < 1.5625
        "delta3": 4 / 5,  # + 1.8 < 1.953125; 2 is above
        "i_rmse": math.sqrt(((2 / 3 - 1 / 2) ** 2 + (1 / 8 - 1 / 4) ** 2 + (1 / 18 - 1 / 10) ** 2) / 5),
    }
    logs = [0.0, math.log(0.75), math.log(2), 0.0, math.log(1.8)]
    mean_log = sum(logs) / 5
    expected["silog_rmse"] = 100 * math.sqrt(sum(d * d for d in logs) / 5 - mean_log**2)
    assert metrics["abs_rel"].item() == pytest.approx(0.41)
    for name, value in expected.items():
        assert metrics[name].item() == pytest.approx(value, rel=1e-9), name


def test_masked_pixels_never_count_even_with_garbage() -> None:
    garbage_pred = torch.cat([PRED, torch.tensor([[[float("nan"), -3.0, 0.0, float("inf")]]])], dim=-1)
    garbage_gt = torch.cat([GT, torch.tensor([[[0.0, float("nan"), -1.0, 5.0]]])], dim=-1)
    mask = torch.zeros_like(garbage_gt, dtype=torch.bool)
    mask[..., :5] = True
    masked = compute_depth_metrics(garbage_pred, garbage_gt, mask)
    plain = compute_depth_metrics(PRED, GT)
    for name in DEPTH_METRICS:
        assert masked[name].item() == pytest.approx(plain[name].item(), rel=1e-12), name


def test_metrics_are_per_image_then_averaged() -> None:
    # Image A: 1 pixel with AbsRel 1; image B: 3 perfect pixels. Pooled would be 0.25, per-image mean is 0.5.
    gt = torch.ones(2, 1, 3)
    pred = torch.ones(2, 1, 3)
    pred[0, 0, 0] = 2.0
    mask = torch.tensor([[[True, False, False]], [[True, True, True]]])
    per_image = compute_depth_metrics(pred, gt, mask)["abs_rel"]
    assert per_image.tolist() == [1.0, 0.0]
    tracker = DepthEvaluator()
    tracker.update(pred, gt, mask, OPEN, alignment="none")
    assert tracker.compute()["abs_rel"] == pytest.approx(0.5)
    assert tracker.count == 2 and tracker.skipped == 0


def test_least_squares_matches_hand_solution_and_numpy() -> None:
    # x = [0, 1, 2], y = [1, 2, 4]: cov = 3, var = 2 -> scale 1.5, shift 7/3 - 1.5.
    scale, shift = fit_scale_shift(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1.0, 2.0, 4.0]]), None)
    assert scale.item() == pytest.approx(1.5)
    assert shift.item() == pytest.approx(7 / 3 - 1.5)
    generator = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 7, 9, generator=generator)
    gt = torch.rand(3, 7, 9, generator=generator) * 5 + 1
    mask = torch.rand(3, 7, 9, generator=generator) > 0.3
    scale, shift = fit_scale_shift(pred, gt, mask)
    for index in range(3):
        x = pred[index][mask[index]].double().numpy()
        y = gt[index][mask[index]].double().numpy()
        solution = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
        assert scale[index].item() == pytest.approx(solution[0], rel=1e-9)
        assert shift[index].item() == pytest.approx(solution[1], rel=1e-9)


def test_depth_space_alignment_recovers_affine_prediction() -> None:
    gt = torch.linspace(0.5, 9.5, 40).reshape(1, 5, 8)
    aligned, scale, shift = align_prediction(2.0 * gt + 3.0, gt, torch.ones_like(gt, dtype=torch.bool))
    assert scale.item() == pytest.approx(0.5) and shift.item() == pytest.approx(-1.5)
    torch.testing.assert_close(aligned, gt.double())


def test_disparity_alignment_uses_positive_pixels_and_clips_disparity() -> None:
    gt = torch.tensor([[[1.0, 2.0, 4.0, 5.0, 0.0]]])
    valid = gt > 0
    pred = 0.2 / torch.where(valid, gt, 1.0) + 0.1  # affine in disparity
    pred[0, 0, 4] = -7.0  # invalid pixel, and pred <= 0: excluded from the fit
    aligned, scale, shift = align_prediction(pred, gt, valid, space="disparity")
    assert scale.item() == pytest.approx(5.0) and shift.item() == pytest.approx(-0.5)
    torch.testing.assert_close(aligned[valid], gt[valid].double())
    # Disparity is clipped to >= 1e-3 before inversion: a pixel aligned to a negative disparity becomes 1000
    # m.
    gt = torch.tensor([[[1.0, 2.0, 4.0, 0.0]]])
    pred = torch.tensor([[[1.0, 0.5, 0.25, -10.0]]])
    aligned, scale, shift = align_prediction(pred, gt, gt > 0, space="disparity")
    assert scale.item() == pytest.approx(1.0) and shift.item() == pytest.approx(0.0, abs=1e-12)
    assert aligned[0, 0, 3].item() == pytest.approx(1000.0)


def test_range_clip_and_floor_are_applied_before_metrics() -> None:
    gt = torch.tensor([[[2.0, 4.0]]])
    metrics = evaluate_depth(torch.tensor([[[20.0, 4.0]]]), gt, None, "nyuv2", alignment="none")
    assert metrics["abs_rel"].item() == pytest.approx((8.0 / 2.0) / 2)  # 20 clipped to max 10
    metrics = evaluate_depth(torch.tensor([[[-5.0, 4.0]]]), gt, None, "nyuv2", alignment="none")
    assert metrics["abs_rel"].item() == pytest.approx((abs(1e-3 - 2.0) / 2.0) / 2)  # clipped to min 1e-3


def test_alignment_at_reduced_resolution_uses_nearest_subsample() -> None:
    generator = torch.Generator().manual_seed(1)
    gt = torch.rand(1, 64, 64, generator=generator) + 1
    pred = gt * 3 + torch.rand(
        1, 64, 64, generator=generator
    )  # not exactly affine: the fit depends on pixels
    mask = torch.ones_like(gt, dtype=torch.bool)
    _, scale, shift = align_prediction(pred, gt, mask, max_resolution=16)
    sub_scale, sub_shift = fit_scale_shift(pred[:, ::4, ::4], gt[:, ::4, ::4], mask[:, ::4, ::4])
    assert scale.item() == pytest.approx(sub_scale.item(), rel=1e-12)
    assert shift.item() == pytest.approx(sub_shift.item(), rel=1e-12)
    _, full_scale, _ = align_prediction(pred, gt, mask)
    assert full_scale.item() != pytest.approx(scale.item(), rel=1e-9)
    _, same_scale, _ = align_prediction(pred, gt, mask, max_resolution=1024)  # larger than the image: no-op
    assert same_scale.item() == pytest.approx(full_scale.item(), rel=1e-12)


def test_degenerate_inputs() -> None:
    gt = torch.tensor([[[1.0, 2.0, 6.0]]])
    empty = torch.zeros_like(gt, dtype=torch.bool)
    with pytest.raises(ValueError, match="no valid pixels"):
        compute_depth_metrics(gt, gt, empty)
    with pytest.raises(ValueError, match="no valid pixels"):
        align_prediction(gt, gt, empty)
    with pytest.raises(ValueError, match="> 0"):
        compute_depth_metrics(torch.tensor([[[0.0, 1.0, 1.0]]]), gt)
    # A constant prediction has no unique LS solution: scale 0 and shift = mean target.
    aligned, scale, shift = align_prediction(torch.full_like(gt, 7.0), gt, None)
    assert scale.item() == 0.0 and shift.item() == pytest.approx(3.0)
    torch.testing.assert_close(aligned, torch.full_like(gt, 3.0).double())
    # The tracker skips images without valid pixels and says how many.
    tracker = DepthEvaluator()
    batch_mask = torch.stack([empty[0], ~empty[0]])
    tracker.update(torch.stack([gt[0], gt[0]]), torch.stack([gt[0], gt[0]]), batch_mask, OPEN)
    assert tracker.count == 1 and tracker.skipped == 1
    assert tracker.compute()["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="no image"):
        DepthEvaluator().compute()
    with pytest.raises(ValueError, match="shape mismatch"):
        compute_depth_metrics(gt, gt[..., :2])
    with pytest.raises(TypeError, match="bool"):
        compute_depth_metrics(gt, gt, torch.ones_like(gt))


def test_constant_baseline_is_the_best_constant() -> None:
    gt = torch.tensor([[[1.0, 2.0, 6.0]]])
    depth_space = constant_baseline_metrics(gt, None, OPEN, alignment="depth")
    expected = (2.0 / 1.0 + 1.0 / 2.0 + 3.0 / 6.0) / 3  # every pixel predicted as mean depth 3
    assert depth_space["abs_rel"].item() == pytest.approx(expected)
    disparity_space = constant_baseline_metrics(gt, None, OPEN, alignment="disparity")
    constant = 1.0 / ((1.0 + 0.5 + 1.0 / 6.0) / 3)  # inverse of the mean disparity
    expected = sum(abs(constant - g) / g for g in (1.0, 2.0, 6.0)) / 3
    assert disparity_space["abs_rel"].item() == pytest.approx(expected)
    # No other constant beats it under the same alignment (all constants align to the same value).
    other = evaluate_depth(torch.full_like(gt, 0.3), gt, None, OPEN, alignment="depth")
    assert other["abs_rel"].item() == pytest.approx(depth_space["abs_rel"].item())


def test_protocol_table_and_masks() -> None:
    assert set(DEPTH_PROTOCOLS) == {"nyuv2", "kitti", "eth3d", "scannet", "diode"}
    nyu = get_protocol("NYUv2")
    assert (nyu.min_depth, nyu.max_depth, nyu.depth_scale) == (1e-3, 10.0, 1000.0)
    assert get_protocol("kitti").depth_scale == 256.0 and get_protocol("kitti").kb_crop
    assert get_protocol("eth3d").alignment_max_resolution == 1024
    assert get_protocol("eth3d").processing_resolution == 768
    assert get_protocol("diode").min_depth == 0.6 and get_protocol("diode").processing_resolution == 640
    with pytest.raises(KeyError, match="unknown depth protocol"):
        get_protocol("middlebury")
    region = eval_region_mask(480, 640, "nyu_eigen")
    assert region.sum().item() == (471 - 45) * (601 - 41)
    assert region[45, 41] and not region[44, 41] and not region[45, 601] and region[470, 600]
    kitti = eval_region_mask(352, 1216, "kitti_eigen")
    rows = torch.nonzero(kitti.any(dim=1)).flatten()
    cols = torch.nonzero(kitti.any(dim=0)).flatten()
    assert (rows[0].item(), rows[-1].item() + 1) == (int(0.3324324 * 352), int(0.91351351 * 352))
    assert (cols[0].item(), cols[-1].item() + 1) == (int(0.0359477 * 1216), int(0.96405229 * 1216))
    depth = torch.tensor([[0.0, 1e-3, 5.0, 10.0, float("inf")]])
    assert valid_depth_mask(depth, get_protocol("scannet")).tolist() == [[False, False, True, False, False]]


def test_resize_prediction_bilinear_to_gt_size() -> None:
    pred = torch.arange(16.0).reshape(1, 1, 4, 4)
    resized = resize_prediction(pred, (8, 8))
    assert resized.shape == (1, 1, 8, 8)
    assert resize_prediction(pred[:, 0], (4, 4)).shape == (1, 4, 4)
    assert resized.min() >= 0 and resized.max() <= 15
