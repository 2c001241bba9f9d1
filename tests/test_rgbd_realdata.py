"""Real RGB-D sensor frames (Redwood, NYUv2 raw, SUN RGB-D, TUM): conversions and the evaluator on real holes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data.depth_files import DatasetFileError
from zoo.data.depth_protocols import DepthEvalProtocol
from zoo.data.rgbd import (
    RealRGBDDataset,
    load_rgbd_frame,
    nyu_raw_to_depth,
    read_nyu_raw_depth,
    read_redwood_depth,
    sun_raw_to_depth,
)
from zoo.evaluation.depth import DEPTH_METRICS, evaluate_depth

# Indoor sensor protocol for these frames: the NYU/ScanNet depth range, no crop.
INDOOR = DepthEvalProtocol("indoor-rgbd", 1e-3, 10.0, None)


@pytest.fixture(scope="module")
def frames(realdata: Path) -> list[dict]:
    dataset = RealRGBDDataset(realdata / "rgbd")
    return [dataset[index] for index in range(len(dataset))]


def test_all_conventions_found(frames: list[dict]) -> None:
    conventions = [frame["convention"] for frame in frames]
    assert conventions == ["redwood"] * 5 + ["nyu", "sun", "tum"]


def test_converted_depth_is_plausible_indoor_range_with_real_holes(frames: list[dict]) -> None:
    for frame in frames:
        depth, valid = frame["depth"], frame["valid"]
        assert frame["image"].shape == (3, 480, 640) and depth.shape == (1, 480, 640)
        values = depth[valid]
        name = f"{frame['convention']} {frame['path']}"
        assert 0.3 <= values.min().item() and values.max().item() <= 10.0, name
        assert 1.0 <= values.median().item() <= 5.0, name
        assert 0.5 < valid.float().mean().item() < 0.99, name  # mostly valid, with sensor holes


def test_toolbox_conversion_formulas() -> None:
    # NYU: values come out of a big-endian PGM read byte-swapped; raw 1000 -> 351.3 / 92.5 m; 2047 = no
    # reading.
    swapped = np.array(
        [(1000 & 0xFF) << 8 | 1000 >> 8, (2047 & 0xFF) << 8 | 2047 >> 8, (1092 & 0xFF) << 8 | 1092 >> 8]
    )
    depth = nyu_raw_to_depth(swapped)
    assert depth[0] == pytest.approx(351.3 / 92.5)
    assert depth[1] == 0.0
    assert depth[2] == pytest.approx(10.0)  # 351.3 / 0.5 m clamped to the toolbox's 10 m
    # SUN: 1234 mm stored rotated left by 3 bits.
    stored = np.array(
        [((1234 << 3) | (1234 >> 13)) & 0xFFFF, ((9000 << 3) | (9000 >> 13)) & 0xFFFF], np.uint16
    )
    assert sun_raw_to_depth(stored).tolist() == pytest.approx(
        [1.234, 8.0]
    )  # 9 m clamped to the toolbox's 8 m


def test_nyu_pgm_matches_manual_big_endian_parse(realdata: Path) -> None:
    path = realdata / "rgbd/other_formats/NYU_depth.pgm"
    data = path.read_bytes()
    header_end = data.index(b"65535") + len("65535") + 1  # "P5 640 480 65535\n"
    big_endian = np.frombuffer(data, dtype=">u2", offset=header_end).reshape(480, 640)
    raw = big_endian.byteswap()  # the Kinect wrote little-endian values under a big-endian header
    expected = np.where(raw < 1092.5, np.minimum(351.3 / (1092.5 - raw.astype(np.float64)), 10.0), 0.0)
    np.testing.assert_allclose(read_nyu_raw_depth(path), expected, rtol=1e-6)


@pytest.fixture(scope="module")
def batch(frames: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames as one batch (they share 480 x 640): depth [8, 1, H, W] and valid [8, 1, H, W]."""
    return torch.stack([frame["depth"] for frame in frames]), torch.stack(
        [frame["valid"] for frame in frames]
    )


def test_ground_truth_as_prediction_is_perfect(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    depth, valid = batch
    for alignment in ("none", "depth"):
        metrics = evaluate_depth(depth, depth, valid, INDOOR, alignment=alignment)
        assert metrics["abs_rel"].shape == (8,)
        assert metrics["abs_rel"].abs().max().item() < 1e-6, alignment
        assert metrics["delta1"].tolist() == [1.0] * 8


def test_affine_disparity_scores_like_ground_truth_and_holes_never_count(
    batch: tuple[torch.Tensor, torch.Tensor],
) -> None:
    depth, valid = batch
    disparity = torch.where(
        valid, 1.0 / depth.double().clamp_min(1e-6), torch.zeros_like(depth, dtype=torch.float64)
    )
    reference = evaluate_depth(disparity, depth, valid, INDOOR, alignment="disparity")
    assert reference["abs_rel"].abs().max().item() < 1e-6
    assert reference["delta1"].tolist() == [1.0] * 8
    generator = torch.Generator().manual_seed(0)
    for scale, shift in ((0.37, 2.0), (1e-3, -1e-4)):
        prediction = scale * disparity + shift
        # Garbage in the holes: NaN, negative and huge values must not change anything.
        noise = torch.rand(depth.shape, generator=generator)
        garbage = torch.where(noise < 0.3, float("nan"), torch.where(noise < 0.6, -5.0, 1e6)).double()
        prediction = torch.where(valid, prediction, garbage)
        metrics = evaluate_depth(prediction, depth, valid, INDOOR, alignment="disparity")
        torch.testing.assert_close(metrics["scale"], torch.full((8,), 1 / scale, dtype=torch.float64))
        for name in DEPTH_METRICS:
            # silog is 100 x the sqrt of a variance, so rounding shows up far more there than elsewhere.
            tolerance = 1e-3 if name == "silog_rmse" else 1e-6
            torch.testing.assert_close(metrics[name], reference[name], atol=tolerance, rtol=0, msg=name)


def test_holes_in_ground_truth_never_count(frames: list[dict]) -> None:
    frame = frames[0]
    depth, valid = frame["depth"], frame["valid"]
    generator = torch.Generator().manual_seed(1)
    prediction = depth * (1 + 0.1 * torch.rand(depth.shape, generator=generator))  # imperfect on valid pixels
    before = evaluate_depth(prediction, depth, valid, INDOOR, alignment="depth")
    corrupted_gt = torch.where(valid, depth, torch.full_like(depth, 123.0))
    after = evaluate_depth(prediction, corrupted_gt, valid, INDOOR, alignment="depth")
    for name in DEPTH_METRICS:
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-12), name
    assert before["abs_rel"].item() > 0.01


def test_bad_rgbd_files_are_named(tmp_path: Path, realdata: Path) -> None:
    color = realdata / "rgbd/color/00000.jpg"
    with pytest.raises(DatasetFileError, match="00000.jpg: expected a single-channel 16-bit"):
        read_redwood_depth(color)
    with pytest.raises(KeyError, match="unknown RGB-D convention"):
        load_rgbd_frame(color, realdata / "rgbd/depth/00000.png", "kinect2")
    broken = tmp_path / "depth.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DatasetFileError, match="depth.png"):
        load_rgbd_frame(color, broken, "redwood")
