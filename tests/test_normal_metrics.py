"""DSINE normal metrics against hand-computed angles, masks, pooling and degenerate inputs."""

from __future__ import annotations

import math

import pytest
import torch

from zoo.evaluation.normals import (
    NORMAL_METRICS,
    NormalEvaluator,
    angular_error,
    compute_normal_metrics,
    summarize_angular_errors,
)


def tilted(angles_deg: list[float], length: float = 1.0) -> torch.Tensor:
    """Normals [1, 3, 1, N] tilted from +z by the given angles in the x-z plane, scaled by `length`."""
    radians = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    vectors = torch.stack([torch.sin(radians), torch.zeros_like(radians), torch.cos(radians)])  # [3, N]
    return (vectors * length)[None, :, None, :]


def up(count: int) -> torch.Tensor:
    """GT normals [1, 3, 1, N] all equal to +z."""
    return tilted([0.0] * count)


def test_angles_of_simple_vectors() -> None:
    pred = torch.tensor([[1.0, 0, 0], [2.0, 0, 0], [1.0, 1.0, 0], [-1.0, 0, 0]]).T[
        None, :, None, :
    ]  # [1, 3, 1, 4]
    gt = torch.tensor([[0.0, 1, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0]]).T[None, :, None, :]
    errors = angular_error(pred, gt)[0, 0]
    assert errors.tolist() == pytest.approx([90.0, 0.0, 45.0, 180.0], abs=1e-6)


def test_metrics_match_hand_computed_values() -> None:
    angles = [0.0, 6.0, 10.0, 20.0, 40.0]
    # Predictions of length 3 check that they are normalised before the angle is taken.
    metrics = compute_normal_metrics(tilted(angles, length=3.0), up(5))
    assert set(metrics) == set(NORMAL_METRICS)
    assert metrics["mean"] == pytest.approx(76.0 / 5, abs=1e-6)
    assert metrics["median"] == pytest.approx(10.0, abs=1e-6)
    assert metrics["rmse"] == pytest.approx(math.sqrt((36 + 100 + 400 + 1600) / 5), abs=1e-6)
    assert metrics["pct_5"] == pytest.approx(20.0)
    assert metrics["pct_7.5"] == pytest.approx(40.0)
    assert metrics["pct_11.25"] == pytest.approx(60.0)
    assert metrics["pct_22.5"] == pytest.approx(80.0)
    assert metrics["pct_30"] == pytest.approx(80.0)


def test_mask_excludes_pixels_and_garbage() -> None:
    pred = tilted([0.0, 6.0, 10.0, 20.0, 40.0, 0.0])
    pred[0, :, 0, 5] = torch.tensor([float("nan"), 1.0, 1.0])
    mask = torch.tensor([True] * 5 + [False])[None, None, None, :]  # [1, 1, 1, 6]
    masked = compute_normal_metrics(pred, up(6), mask)
    plain = compute_normal_metrics(pred[..., :5], up(5))
    assert masked == pytest.approx(plain)


def test_accumulator_pools_pixels_over_images() -> None:
    accumulator = NormalEvaluator()
    accumulator.update(tilted([10.0]), up(1))  # image 1: one pixel
    accumulator.update(tilted([2.0, 2.0, 2.0]), up(3))  # image 2: three pixels
    pooled = accumulator.compute()
    assert accumulator.count == 4
    assert pooled["mean"] == pytest.approx(16.0 / 4, abs=1e-9)  # the per-image mean of means would be 6
    assert pooled["median"] == pytest.approx(2.0, abs=1e-3)
    assert pooled["pct_5"] == pytest.approx(75.0)
    # Even counts average the two middle values, as numpy's median: (2 + 10) / 2 after adding another 10.
    accumulator.update(tilted([10.0, 10.0]), up(2))
    assert accumulator.compute()["median"] == pytest.approx(6.0, abs=1e-3)
    reference = summarize_angular_errors(torch.tensor([10.0, 2.0, 2.0, 2.0, 10.0, 10.0]))
    assert accumulator.compute() == pytest.approx(reference, abs=1e-3)


def test_accumulator_matches_direct_metrics_on_random_normals() -> None:
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 8, 8, generator=generator)
    gt = torch.randn(2, 3, 8, 8, generator=generator)
    mask = torch.rand(2, 1, 8, 8, generator=generator) > 0.4
    accumulator = NormalEvaluator()
    for index in range(2):
        accumulator.update(pred[index : index + 1], gt[index : index + 1], mask[index : index + 1])
    assert accumulator.compute() == pytest.approx(compute_normal_metrics(pred, gt, mask), abs=1e-3)


def test_degenerate_inputs() -> None:
    with pytest.raises(ValueError, match="no valid pixels"):
        compute_normal_metrics(tilted([1.0]), up(1), torch.zeros(1, 1, 1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="no valid pixels"):
        NormalEvaluator().compute()
    with pytest.raises(ValueError, match="shape mismatch"):
        angular_error(tilted([1.0, 2.0]), up(1))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        angular_error(torch.zeros(1, 2, 1, 1), torch.zeros(1, 2, 1, 1))
    with pytest.raises(TypeError, match="bool"):
        compute_normal_metrics(tilted([1.0]), up(1), torch.ones(1, 1, 1, 1))
    # A zero-length prediction has no direction: it scores 90 degrees instead of NaN.
    assert angular_error(torch.zeros(1, 3, 1, 1), up(1)).item() == pytest.approx(90.0)
    accumulator = NormalEvaluator()
    accumulator.update(
        tilted([5.0]), up(1), torch.zeros(1, 1, 1, 1, dtype=torch.bool)
    )  # nothing valid: no-op
    assert accumulator.count == 0
