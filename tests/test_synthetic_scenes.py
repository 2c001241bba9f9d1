"""Tests of the synthetic 3D scene renderer: determinism, conventions and depth/normal consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.data.synthetic import SceneSample, SyntheticSceneDataset, render_scene
from zoo.data.synthetic.scenes import Material, Room, Scene, Sphere, render

SEEDS = range(8)


def _plain(colour: float) -> Material:
    """A uniform grey material."""
    return Material(np.full(3, colour), np.full(3, colour), "plain", 1.0, np.array([1.0, 0, 0]), np.zeros(3))


def _frontal_scene(focal: float, low: tuple[float, float, float], high: tuple[float, float, float]) -> Scene:
    """A camera looking straight down the world z axis into a room holding a 0.5 m sphere 3 m ahead."""
    room = Room(np.array(low), np.array(high), True, tuple(_plain(0.5) for _ in range(6)))
    return Scene(
        rotation=np.diag([1.0, -1.0, 1.0]),
        focal=focal,
        room=room,
        objects=(Sphere(np.array([0.0, 0.0, 3.0]), 0.5, _plain(0.8)),),
        light=np.array([0.0, 0.0, -1.0]),
        sun=0.8,
        ambient=0.2,
        sky_horizon=np.ones(3),
        sky_zenith=np.ones(3),
        noise=0.0,
        noise_seed=0,
    )


def _points(sample: SceneSample) -> np.ndarray:
    """Back-projected 3D points [H, W, 3] in the OpenCV camera frame."""
    k = sample.intrinsics.astype(np.float64)
    h, w = sample.depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = sample.depth.astype(np.float64)
    return np.stack([(u - k[0, 2]) / k[0, 0] * z, (v - k[1, 2]) / k[1, 1] * z, z], axis=-1)


def _angles_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees between unit vectors [..., 3]."""
    return np.degrees(np.arccos(np.clip((a * b).sum(-1), -1.0, 1.0)))


def test_same_seed_is_bit_identical_and_seeds_differ() -> None:
    first, again, other = render_scene(3, 40, 56), render_scene(3, 40, 56), render_scene(4, 40, 56)
    for name in ("image", "depth", "normals", "valid", "intrinsics"):
        assert np.array_equal(getattr(first, name), getattr(again, name)), name
    assert not np.array_equal(first.image, other.image)
    assert not np.array_equal(first.depth, other.depth)


@pytest.mark.parametrize("height, width", [(64, 64), (48, 80)])
def test_shapes_dtypes_and_ranges(height: int, width: int) -> None:
    for seed in SEEDS:
        s = render_scene(seed, height, width)
        assert s.image.shape == (height, width, 3) and s.image.dtype == np.float32
        assert s.depth.shape == (height, width) and s.depth.dtype == np.float32
        assert s.normals.shape == (height, width, 3) and s.normals.dtype == np.float32
        assert s.valid.shape == (height, width) and s.valid.dtype == bool
        assert s.intrinsics.shape == (3, 3) and s.intrinsics.dtype == np.float32
        assert s.image.min() >= 0.0 and s.image.max() <= 1.0 and s.image.std() > 0.02
        assert s.valid.mean() > 0.5
        assert np.all(s.depth[s.valid] > 0.3) and np.all(s.depth[s.valid] < 12.0)
        assert np.all(s.depth[~s.valid] == 0) and np.all(s.normals[~s.valid] == 0)
        assert s.depth[s.valid].max() / s.depth[s.valid].min() > 2.0  # real depth variation, not a flat wall


def test_some_scenes_show_sky() -> None:
    assert any(not render_scene(seed, 32, 32).valid.all() for seed in range(16))


def test_normals_are_unit_and_face_the_camera() -> None:
    for seed in SEEDS:
        s = render_scene(seed, 48, 48)
        n = s.normals[s.valid].astype(np.float64)
        np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
        # A visible surface faces the viewer: in the visual frame the view ray is (x, -y, -z) of the OpenCV
        # point.
        p = _points(s)[s.valid] * np.array([1.0, -1.0, -1.0])
        assert np.all((n * p).sum(-1) < 1e-6)


def test_normals_agree_with_depth() -> None:
    for seed in SEEDS:
        s = render_scene(seed, 96, 96)
        p = _points(s)  # [H, W, 3]
        du = p[1:-1, 2:] - p[1:-1, :-2]
        dv = p[2:, 1:-1] - p[:-2, 1:-1]
        # Inverse depth is affine in pixel coordinates on a plane: a zero second difference marks smooth
        # pixels (no occlusion edge or crease), where the finite differences see a single surface.
        inv = np.where(s.valid, 1.0 / np.maximum(s.depth, 1e-6), 0.0).astype(np.float64)
        curv_u = np.abs(inv[1:-1, 2:] - 2 * inv[1:-1, 1:-1] + inv[1:-1, :-2])
        curv_v = np.abs(inv[2:, 1:-1] - 2 * inv[1:-1, 1:-1] + inv[:-2, 1:-1])
        smooth = (np.maximum(curv_u, curv_v) < 1e-3 * inv[1:-1, 1:-1]) & s.valid[1:-1, 1:-1]
        smooth &= s.valid[2:, 1:-1] & s.valid[:-2, 1:-1] & s.valid[1:-1, 2:] & s.valid[1:-1, :-2]
        assert smooth.mean() > 0.3, seed
        n = np.cross(
            dv[smooth], du[smooth]
        )  # OpenCV frame, towards the camera for image axes u right, v down
        n = n / np.linalg.norm(n, axis=-1, keepdims=True) * np.array([1.0, -1.0, -1.0])  # visual convention
        error = _angles_deg(n, s.normals[1:-1, 1:-1][smooth].astype(np.float64))
        assert np.median(error) < 0.5, (seed, np.median(error))
        assert np.percentile(error, 90) < 2.0, (seed, np.percentile(error, 90))


def test_fronto_parallel_wall_and_sphere() -> None:
    # Narrow view (focal = 2 image widths): the 4 m front wall fills every pixel the sphere leaves free.
    s = render(_frontal_scene(2.0, (-5.0, -5.0, -5.0), (5.0, 5.0, 4.0)), 33, 33)
    assert s.valid.all()
    np.testing.assert_array_equal(s.intrinsics, np.array([[66, 0, 16], [0, 66, 16], [0, 0, 1]], np.float32))
    assert s.depth[16, 16] == pytest.approx(2.5)  # front of the sphere
    np.testing.assert_allclose(s.normals[16, 16], [0.0, 0.0, 1.0], atol=1e-6)
    for corner in [(0, 0), (0, 32), (32, 0), (32, 32)]:
        assert s.depth[corner] == 4.0
        np.testing.assert_array_equal(s.normals[corner], [0.0, 0.0, 1.0])
    # The light shines from the camera: the sphere's centre faces it and is brighter than its rim.
    assert s.image[16, 16].mean() > s.image[16, 8].mean()


def test_floor_depth_and_normal() -> None:
    # Camera 1 m above an endless floor, looking level: rows below the centre see the floor at depth f /
    # (v - cy).
    s = render(_frontal_scene(0.5, (-1e3, -1.0, -1e3), (1e3, 1e3, 1e3)), 32, 32)
    f, cy = float(s.intrinsics[0, 0]), float(s.intrinsics[1, 2])
    rows = np.arange(24, 32)
    np.testing.assert_allclose(s.depth[24:, 0], f / (rows - cy), rtol=1e-6)
    np.testing.assert_allclose(s.normals[24:, 0], np.tile([0.0, 1.0, 0.0], (8, 1)), atol=1e-6)


def test_scene_does_not_depend_on_resolution() -> None:
    small, large = render_scene(5, 33, 33), render_scene(5, 65, 65)
    assert small.depth[16, 16] == pytest.approx(large.depth[32, 32], rel=1e-6)
    np.testing.assert_allclose(small.normals[16, 16], large.normals[32, 32], atol=1e-6)


def test_dataset_returns_documented_tensors() -> None:
    dataset = SyntheticSceneDataset(length=3, height=32, width=48, base_seed=10)
    assert len(dataset) == 3
    item = dataset[2]
    assert item["image"].shape == (3, 32, 48) and item["image"].dtype == torch.float32
    assert item["depth"].shape == (1, 32, 48) and item["depth"].dtype == torch.float32
    assert item["normals"].shape == (3, 32, 48) and item["normals"].dtype == torch.float32
    assert item["valid"].shape == (1, 32, 48) and item["valid"].dtype == torch.bool
    assert item["index"].item() == 2 and item["index"].dtype == torch.long
    sample = render_scene(12, 32, 48)
    assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), sample.image)
    assert np.array_equal(item["depth"][0].numpy(), sample.depth)
    assert np.array_equal(item["normals"].permute(1, 2, 0).numpy(), sample.normals)
    with pytest.raises(IndexError):
        dataset[3]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=2)))
    assert batch["image"].shape == (2, 3, 32, 48) and batch["index"].tolist() == [0, 1]
