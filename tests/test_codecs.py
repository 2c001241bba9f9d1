"""UDP heatmap codec: round trip, equality with mmpose's UDPHeatmap, batched decode, flip helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.codecs import UDPHeatmap, decode_udp_batched, flip_heatmaps
from zoo.data.metainfo import load_metainfo

# (input w, h), (heatmap W, H), sigma: mmpose's HRNet-UDP setting and SDPose's 1024x768 setting.
SETTINGS = [((192, 256), (48, 64), 2.0), ((768, 1024), (192, 256), 6.0)]


def _noisy_heatmaps(codec: UDPHeatmap, num: int, seed: int, noise: float = 0.02) -> np.ndarray:
    # Encoded keypoints plus noise: one clear peak per channel, like a trained head's output.
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(num):
        keypoints = rng.uniform([0, 0], np.array(codec.input_size) - 1, size=(17, 2))
        clean = codec.encode(keypoints).heatmaps
        out.append(clean + rng.normal(0, noise, clean.shape).astype(np.float32))
    return np.stack(out)  # [N, K, H, W]


@pytest.mark.parametrize(("input_size", "heatmap_size", "sigma"), SETTINGS)
def test_round_trip_at_heatmap_resolution(input_size, heatmap_size, sigma):
    """Keypoints whose 3-sigma window lies inside the heatmap come back within 0.1 heatmap pixels.

    Nearer the border mmpose's DARK-UDP itself is biased
    (zero-padded blur of a truncated Gaussian, up to about one heatmap pixel), and this codec reproduces
    mmpose there rather than correcting it.
    """
    codec = UDPHeatmap(input_size, heatmap_size, sigma=sigma)
    rng = np.random.default_rng(0)
    margin = 3 * sigma + 1
    heat_xy = rng.uniform(margin, np.array(heatmap_size) - 1 - margin, size=(17, 2))  # heatmap pixels
    keypoints = heat_xy * codec.scale_factor  # input pixels
    encoded = codec.encode(keypoints)
    assert encoded.heatmaps.shape == (17, heatmap_size[1], heatmap_size[0])
    np.testing.assert_array_equal(encoded.keypoint_weights, np.ones(17, dtype=np.float32))
    decoded, scores = codec.decode(encoded.heatmaps)
    # decode scales like mmpose (x / (W - 1) * w): undo exactly that to read heatmap pixels.
    decoded_heat = decoded * (np.array(heatmap_size) - 1) / np.array(input_size)
    assert np.abs(decoded_heat - heat_xy).max() < 0.1
    assert scores.min() > 0.8


def test_encode_visibility_and_out_of_bounds_weights():
    codec = UDPHeatmap((192, 256), (48, 64), sigma=2.0)
    keypoints = np.array([[50.0, 60.0], [-100.0, 60.0], [50.0, 60.0]])
    encoded = codec.encode(keypoints, np.array([1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(encoded.keypoint_weights, [1.0, 0.0, 0.0])
    assert encoded.heatmaps[0].max() > 0.9
    assert not encoded.heatmaps[1:].any()


@pytest.mark.mmpose
@pytest.mark.parametrize(("input_size", "heatmap_size", "sigma"), [*SETTINGS, ((192, 256), (48, 64), 1.5)])
def test_encode_equals_mmpose(input_size, heatmap_size, sigma):
    mm_codecs = pytest.importorskip("mmpose.codecs")
    reference = mm_codecs.UDPHeatmap(input_size, heatmap_size, sigma=sigma)
    codec = UDPHeatmap(input_size, heatmap_size, sigma=sigma)
    rng = np.random.default_rng(1)
    for _ in range(5):
        # Some keypoints outside the input and some unlabelled, to exercise the weight rules.
        keypoints = rng.uniform(-30, np.array(input_size) + 30, size=(1, 17, 2))
        visible = (rng.uniform(size=(1, 17)) > 0.2).astype(np.float32)
        expected = reference.encode(keypoints, visible)
        got = codec.encode(keypoints, visible[0])
        np.testing.assert_allclose(got.heatmaps, expected["heatmaps"], atol=1e-6)
        np.testing.assert_array_equal(got.keypoint_weights, expected["keypoint_weights"][0])


@pytest.mark.mmpose
@pytest.mark.parametrize(("input_size", "heatmap_size", "sigma"), SETTINGS)
def test_decode_equals_mmpose(input_size, heatmap_size, sigma):
    mm_codecs = pytest.importorskip("mmpose.codecs")
    reference = mm_codecs.UDPHeatmap(input_size, heatmap_size, sigma=sigma)
    codec = UDPHeatmap(input_size, heatmap_size, sigma=sigma)
    heatmaps = _noisy_heatmaps(codec, 4, seed=2)
    for instance in heatmaps:
        expected_xy, expected_scores = reference.decode(instance.copy())
        got_xy, got_scores = codec.decode(instance)
        np.testing.assert_allclose(got_xy, expected_xy[0], atol=1e-3)
        np.testing.assert_array_equal(got_scores, expected_scores[0])


@pytest.mark.mmpose
@pytest.mark.parametrize(
    ("noise", "scale"),
    [(0.02, 1.0), (0.0003, 0.0012), (0.02, 80.0)],
    ids=["realistic", "weak-peaks-clamped", "strong-peaks-clamped"],
)
def test_batched_decode_equals_mmpose(noise, scale):
    """Within 0.01 px of mmpose, including maps where mmpose's [1e-3, 50] clamp of the blurred map bites."""
    mm_codecs = pytest.importorskip("mmpose.codecs")
    input_size, heatmap_size = (192, 256), (48, 64)
    reference = mm_codecs.UDPHeatmap(input_size, heatmap_size, sigma=2.0)
    heatmaps = _noisy_heatmaps(UDPHeatmap(input_size, heatmap_size), 32, seed=3, noise=noise) * scale
    keypoints, scores = decode_udp_batched(torch.from_numpy(heatmaps), input_size)
    assert keypoints.shape == (32, 17, 2) and scores.shape == (32, 17)
    for i, instance in enumerate(heatmaps):
        expected_xy, expected_scores = reference.decode(instance.copy())
        np.testing.assert_allclose(keypoints[i].numpy(), expected_xy[0], atol=0.01)
        np.testing.assert_array_equal(scores[i].numpy(), expected_scores[0])


def test_batched_decode_heatmap_space_and_empty_channels():
    heatmaps = torch.zeros(2, 3, 64, 48)
    heatmaps[0, 0, 10, 20] = 1.0  # a single-pixel peak: symmetric, so refinement leaves it in place
    keypoints, scores = decode_udp_batched(heatmaps)
    torch.testing.assert_close(keypoints[0, 0], torch.tensor([20.0, 10.0]), atol=1e-4, rtol=0)
    assert scores[0, 0] == 1.0
    # A channel without a positive maximum decodes to the -1 marker with its (non-positive) score.
    torch.testing.assert_close(keypoints[1, 2], torch.tensor([-1.0, -1.0]))
    assert scores[1, 2] == 0.0
    assert torch.isfinite(keypoints).all()


def test_flip_heatmaps_mirrors_and_swaps():
    meta = load_metainfo("coco")
    codec = UDPHeatmap((192, 256), (48, 64), sigma=2.0)
    keypoints = np.random.default_rng(4).uniform([20, 20], [170, 230], size=(17, 2))
    heatmaps = torch.from_numpy(codec.encode(keypoints).heatmaps)[None]  # [1, 17, 64, 48]
    flipped = flip_heatmaps(heatmaps, meta.flip_indices)
    # Channel k of the flipped maps is the mirror of channel flip_indices[k]: a pure mirror, no shift.
    for k, j in enumerate(meta.flip_indices):
        torch.testing.assert_close(flipped[0, k], heatmaps[0, j].flip(-1))
    # Under UDP the flip of x is (w - 1) - x exactly: the decoded flipped keypoints are the mirrored ones.
    decoded, _ = decode_udp_batched(flipped, codec.input_size)
    mirrored = keypoints[list(meta.flip_indices)].copy()
    mirrored[:, 0] = (codec.input_size[0] - 1) - mirrored[:, 0]
    direct, _ = decode_udp_batched(torch.from_numpy(codec.encode(mirrored).heatmaps)[None], codec.input_size)
    torch.testing.assert_close(decoded, direct, atol=1e-3, rtol=0)
    # Flipping twice restores the input.
    torch.testing.assert_close(flip_heatmaps(flipped, meta.flip_indices), heatmaps)


@pytest.mark.mmpose
def test_flip_heatmaps_equals_mmpose_without_shift():
    """mmpose's flip_heatmaps(flip_mode='heatmap', shift_heatmap=False); loaded from its file since
    mmpose.models needs mmcv."""
    import importlib.util
    from pathlib import Path

    mmpose = pytest.importorskip("mmpose")
    path = Path(mmpose.__file__).parent / "models" / "utils" / "tta.py"
    spec = importlib.util.spec_from_file_location("mmpose_tta", path)
    tta = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tta)
    meta = load_metainfo("coco_wholebody")
    heatmaps = torch.rand(2, 133, 16, 12)
    expected = tta.flip_heatmaps(heatmaps, list(meta.flip_indices), flip_mode="heatmap", shift_heatmap=False)
    torch.testing.assert_close(flip_heatmaps(heatmaps, meta.flip_indices), expected)


def test_input_checks():
    with pytest.raises(ValueError, match="odd"):
        UDPHeatmap((192, 256), (48, 64), blur_kernel_size=10)
    codec = UDPHeatmap((192, 256), (48, 64))
    with pytest.raises(ValueError, match="one instance"):
        codec.encode(np.zeros((2, 17, 2)))
    with pytest.raises(ValueError, match=r"\[K, 64, 48\]"):
        codec.decode(np.zeros((17, 48, 64), dtype=np.float32))
    with pytest.raises(ValueError, match="flip indices"):
        flip_heatmaps(torch.zeros(1, 17, 8, 8), list(range(16)))
