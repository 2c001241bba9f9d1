"""Dataset readers on tiny fixture files written in each dataset's own format."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zoo.data.depth_benchmarks import (
    DEPTH_EVAL_DATASETS,
    DIODEDepthDataset,
    ETH3DDepthDataset,
    KITTIDepthDataset,
    NYUv2DepthDataset,
    ScanNetDepthDataset,
)
from zoo.data.depth_files import DatasetFileError
from zoo.data.depth_training import HypersimDataset, VirtualKITTI2Dataset, hypersim_distance_to_depth
from zoo.data.normal_benchmarks import DSINENormalDataset


def write_rgb(path: Path, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Write a random RGB PNG/JPG and return its uint8 pixels as stored (PNG) or written (JPG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def write_u16(path: Path, values: np.ndarray) -> None:
    """Write a uint16 single-channel PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)


# ---------------------------------------------------------------------------------------------- depth eval
# sets


def test_nyuv2_reads_mm_and_applies_range_and_eigen_crop(tmp_path: Path) -> None:
    pixels = write_rgb(tmp_path / "test/bathroom/rgb_00045.png", 480, 640)
    depth_mm = np.full((480, 640), 2500, np.uint16)
    depth_mm[100, 100] = 0  # hole
    depth_mm[200, 200] = 12000  # beyond 10 m
    write_u16(tmp_path / "test/bathroom/depth_00045.png", depth_mm)
    filelist = ["test/bathroom/rgb_00045.png test/bathroom/depth_00045.png test/bathroom/filled_00045.png"]
    item = NYUv2DepthDataset(tmp_path, filelist)[0]
    assert item["image"].shape == (3, 480, 640) and item["image"].dtype == torch.float32
    torch.testing.assert_close(item["image"], torch.from_numpy(pixels).permute(2, 0, 1).float() / 255)
    assert item["depth"].shape == (1, 480, 640)
    assert item["depth"][0, 300, 300].item() == pytest.approx(2.5)
    valid = item["valid"][0]
    assert valid.dtype == torch.bool
    assert not valid[100, 100] and not valid[200, 200] and valid[300, 300]
    assert not valid[44, 300] and valid[45, 300] and not valid[300, 601] and valid[300, 600]
    assert valid.sum().item() == (471 - 45) * (601 - 41) - 2
    assert item["dataset"] == "nyuv2"
    batch = torch.utils.data.default_collate([item, item])  # items batch with the default collate
    assert batch["depth"].shape == (2, 1, 480, 640) and batch["valid"].dtype == torch.bool


def test_kitti_benchmark_crop_eigen_mask_and_rows_without_gt(tmp_path: Path) -> None:
    height, width = 375, 1242
    write_rgb(tmp_path / "2011_09_26/drive_0002_sync/image_02/data/0000000069.png", height, width)
    depth = np.zeros((height, width), np.uint16)
    depth[-1, :] = 256 * 10  # bottom row: 10 m, inside the benchmark crop
    depth[0, :] = 256 * 20  # top row: cut by the crop
    depth[300, 600] = 256 * 90  # beyond 80 m
    write_u16(tmp_path / "drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png", depth)
    filelist = [
        "2011_09_26/drive_0002_sync/image_02/data/0000000069.png "
        "drive_0002_sync/proj_depth/groundtruth/image_02/0000000069.png 721.5377",
        "2011_09_26/drive_0002_sync/image_02/data/0000000070.png None 721.5377",
    ]
    dataset = KITTIDepthDataset(tmp_path, filelist)
    assert len(dataset) == 1 and dataset.skipped_without_gt == 1 and dataset.extra[0] == ["721.5377"]
    item = dataset[0]
    assert item["image"].shape == (3, 352, 1216) and item["depth"].shape == (1, 352, 1216)
    left = (width - 1216) // 2
    assert item["depth"][0, -1, 0].item() == pytest.approx(10.0)
    assert item["depth"][0, 0].max().item() == 0.0  # the original top rows are gone
    assert item["depth"][0, 300 - (height - 352), 600 - left].item() == pytest.approx(90.0)
    valid = item["valid"][0]
    # Bottom row lies below the Eigen mask (0.9135 * 352 = 321): nothing there counts.
    assert not valid.any()
    assert DEPTH_EVAL_DATASETS["kitti"] is KITTIDepthDataset


def test_scannet_reads_mm(tmp_path: Path) -> None:
    write_rgb(tmp_path / "scene0000_00/color/000000.jpg", 6, 8)
    depth = np.arange(48, dtype=np.uint16).reshape(6, 8) * 250
    write_u16(tmp_path / "scene0000_00/depth/000000.png", depth)
    list_file = tmp_path / "list.txt"
    list_file.write_text("# ScanNet\nscene0000_00/color/000000.jpg scene0000_00/depth/000000.png\n\n")
    item = ScanNetDepthDataset(tmp_path, list_file)[0]
    torch.testing.assert_close(item["depth"][0], torch.from_numpy(depth.astype(np.float32) / 1000))
    assert item["valid"][0].tolist() == ((depth > 1) & (depth < 10000)).tolist()


def test_eth3d_raw_float_with_inf(tmp_path: Path) -> None:
    write_rgb(tmp_path / "rgb/courtyard/images/dslr_images/DSC_0286.JPG", 4, 6)
    depth = np.linspace(0.5, 12.0, 24, dtype="<f4").reshape(4, 6)
    depth[0, 0] = np.inf
    raw = tmp_path / "depth/courtyard/ground_truth_masks/dslr_images/DSC_0286.JPG"
    raw.parent.mkdir(parents=True)
    depth.tofile(raw)
    row = [
        "rgb/courtyard/images/dslr_images/DSC_0286.JPG "
        "depth/courtyard/ground_truth_masks/dslr_images/DSC_0286.JPG"
    ]
    item = ETH3DDepthDataset(tmp_path, row)[0]
    assert item["depth"][0, 0, 0].item() == 0.0 and not item["valid"][0, 0, 0]
    torch.testing.assert_close(item["depth"][0, 1:], torch.from_numpy(depth[1:]))
    assert item["valid"][0, 1:].all()
    raw.write_bytes(b"\x00" * 10)
    with pytest.raises(DatasetFileError, match="DSC_0286.JPG: 10 bytes"):
        ETH3DDepthDataset(tmp_path, row)[0]


def test_diode_npy_depth_and_provided_mask(tmp_path: Path) -> None:
    folder = tmp_path / "val/indoors/scene_00019/scan_00183"
    write_rgb(folder / "00019_00183_indoors_000_010.png", 3, 4)
    depth = np.array([[0.5, 1.0, 2.0, 400.0], [1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]], np.float32)[
        ..., None
    ]
    mask = np.ones((3, 4), np.float32)
    mask[1, 1] = 0
    np.save(folder / "00019_00183_indoors_000_010_depth.npy", depth)
    np.save(folder / "00019_00183_indoors_000_010_depth_mask.npy", mask)
    prefix = "val/indoors/scene_00019/scan_00183/00019_00183_indoors_000_010"
    item = DIODEDepthDataset(tmp_path, [f"{prefix}.png {prefix}_depth.npy {prefix}_depth_mask.npy"])[0]
    expected = (depth[..., 0] > 0.6) & (depth[..., 0] < 350) & (mask > 0)
    assert item["valid"][0].numpy().tolist() == expected.tolist()
    item = DIODEDepthDataset(tmp_path, [f"{prefix}.png {prefix}_depth.npy"])[0]  # mask found by name
    assert item["valid"][0].numpy().tolist() == expected.tolist()


def test_eval_readers_refuse_bad_lists_and_files(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError, match="escapes"):
        NYUv2DepthDataset(tmp_path / "root", ["../outside.png ../outside_depth.png"])
    with pytest.raises(ValueError, match="absolute"):
        NYUv2DepthDataset(tmp_path / "root", ["/etc/passwd depth.png"])
    with pytest.raises(DatasetFileError, match="needs an RGB and a depth column"):
        NYUv2DepthDataset(tmp_path / "root", ["only_rgb.png"])
    with pytest.raises(DatasetFileError, match="no entries"):
        NYUv2DepthDataset(tmp_path / "root", ["# nothing"])
    write_rgb(tmp_path / "root/a.png", 4, 4)
    (tmp_path / "root/a_depth.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetFileError, match="a_depth.png"):
        NYUv2DepthDataset(tmp_path / "root", ["a.png a_depth.png"])[0]
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "root/a_depth.png")  # 8-bit: not depth
    with pytest.raises(DatasetFileError, match="a_depth.png: expected a single-channel 16-bit"):
        NYUv2DepthDataset(tmp_path / "root", ["a.png a_depth.png"])[0]
    write_u16(tmp_path / "root/a_depth.png", np.zeros((5, 4)))
    with pytest.raises(DatasetFileError, match="a_depth.png: depth is"):
        NYUv2DepthDataset(tmp_path / "root", ["a.png a_depth.png"])[0]
    with pytest.raises(DatasetFileError, match="missing.png"):
        NYUv2DepthDataset(tmp_path / "root", ["missing.png a_depth.png"])[0]


# ---------------------------------------------------------------------------------------------- training sets


def hypersim_tree(root: Path, distance: np.ndarray, normals: np.ndarray) -> Path:
    """Write one Hypersim frame with .npy geometry (the converted form of the .hdf5 files)."""
    images = root / "ai_001_001/images"
    rgb = images / "scene_cam_00_final_preview/frame.0000.tonemap.jpg"
    write_rgb(rgb, *distance.shape)
    geometry = images / "scene_cam_00_geometry_hdf5"
    geometry.mkdir(parents=True)
    np.save(geometry / "frame.0000.depth_meters.npy", distance)
    np.save(geometry / "frame.0000.normal_cam.npy", normals)
    return geometry


def test_hypersim_planar_depth_and_outward_normals(tmp_path: Path) -> None:
    height, width = 6, 8
    distance = np.full((height, width), 5.0, np.float32)
    distance[0, 0] = np.nan
    normals = np.zeros((height, width, 3), np.float32)
    normals[..., 0] = 0.6
    normals[..., 2] = 0.8
    geometry = hypersim_tree(tmp_path, distance, normals)
    item = HypersimDataset(tmp_path)[0]
    focal = 886.81 * width / 1024
    # Pixel (row 2, col 5): centre offsets x = 5 - 4 + 0.5, y = 2 - 3 + 0.5.
    expected = 5.0 * focal / math.sqrt(1.5**2 + 0.5**2 + focal**2)
    assert item["depth"][0, 2, 5].item() == pytest.approx(expected, rel=1e-6)
    assert item["depth"][0, 0, 0].item() == 0.0 and not item["valid"][0, 0, 0] and item["valid"][0, 1:].all()
    assert item["normals"][:, 3, 3].tolist() == pytest.approx(
        [-0.6, 0.0, 0.8]
    )  # x negated: inward -> outward
    # At full resolution the formula is Lotus' (1024 x 768, f = 886.81): the corner ray is the longest.
    full = hypersim_distance_to_depth(np.ones((768, 1024), np.float32))
    corner = 886.81 / math.sqrt(511.5**2 + 383.5**2 + 886.81**2)
    assert full[0, 0] == pytest.approx(corner, rel=1e-6) and full.max() < 1.0
    # Camera alignment flips normals that point along the viewing ray
    # (their z goes toward the camera: +z, LUB).
    np.save(geometry / "frame.0000.normal_cam.npy", -normals)  # z = -0.8 after loading: points away
    aligned = HypersimDataset(tmp_path, align_normals=True)[0]["normals"]
    assert aligned[2, 1:].min().item() == pytest.approx(0.8)  # row 0 holds the NaN pixel: no point to compare
    assert (HypersimDataset(tmp_path)[0]["normals"][2] < 0).all()


def test_hypersim_metadata_jsonl_hdf5_and_errors(tmp_path: Path) -> None:
    geometry = hypersim_tree(tmp_path, np.ones((4, 4), np.float32), np.zeros((4, 4, 3), np.float32))
    entry = {
        "file_name": "ai_001_001/images/scene_cam_00_final_preview/frame.0000.tonemap.jpg",
        "depth": "ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.depth_meters.hdf5",
        "normal_cam": "ai_001_001/images/scene_cam_00_geometry_hdf5/frame.0000.normal_cam.hdf5",
    }
    (tmp_path / "metadata.jsonl").write_text(json.dumps(entry) + "\n")
    assert len(HypersimDataset(tmp_path)) == 1
    # An original .hdf5 file is read with h5py, and without h5py the error says how to get it.
    (geometry / "frame.0000.depth_meters.npy").unlink()
    (geometry / "frame.0000.depth_meters.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    try:
        import h5py  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install h5py"):
            HypersimDataset(tmp_path)[0]
    else:
        with pytest.raises(DatasetFileError, match="depth_meters.hdf5"):
            HypersimDataset(tmp_path)[0]
    (tmp_path / "metadata.jsonl").write_text(json.dumps({**entry, "depth": "../../escape.hdf5"}) + "\n")
    with pytest.raises(ValueError, match="escapes"):
        HypersimDataset(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": 1}\n')
    with pytest.raises(DatasetFileError, match="metadata.jsonl:1"):
        HypersimDataset(tmp_path)


def test_virtual_kitti2_cm_valid_sky_and_crop(tmp_path: Path) -> None:
    height, width = 375, 1242
    frames = tmp_path / "Scene02/clone/frames"
    write_rgb(frames / "rgb/Camera_0/rgb_00000.jpg", height, width)
    depth = np.full((height, width), 500, np.uint16)  # 5 m
    depth[-1, -20:] = 8000  # exactly 80 m: sky
    depth[-2, -20:] = 65535  # far plane: sky
    depth[-3, -20:] = 0  # no depth
    write_u16(frames / "depth/Camera_0/depth_00000.png", depth)
    normal = np.full((height, width, 3), 255, np.uint8)
    normal[..., 1] = 0
    (frames / "normal/Camera_0").mkdir(parents=True)
    Image.fromarray(normal).save(frames / "normal/Camera_0/normal_00000.png")
    dataset = VirtualKITTI2Dataset(
        tmp_path, scenes=["02"], conditions=["clone"], cameras=["0"], load_normals=True
    )
    item = dataset[0]
    assert item["image"].shape == (3, 352, 1216) and item["depth"].shape == (1, 352, 1216)
    assert item["depth"][0, 0, 0].item() == pytest.approx(5.0)
    left = (width - 1216) // 2
    column = (
        width - 15 - left
    )  # inside the last 20 original columns, still inside the crop (which ends at 1229)
    assert item["sky"][0, -1, column] and item["sky"][0, -2, column] and not item["valid"][0, -1, column]
    assert not item["valid"][0, -3, column] and not item["sky"][0, -3, column]
    torch.testing.assert_close(item["loss_mask"], item["valid"] | item["sky"])
    no_depth_in_crop = left + 1216 - (width - 20)  # 7 of the 20 zero pixels survive the crop
    assert item["valid"].sum() + item["sky"].sum() + no_depth_in_crop == 352 * 1216
    assert item["normals"][:, 0, 0].tolist() == pytest.approx([1.0, -1.0, 1.0])
    with pytest.raises(DatasetFileError, match="Scene06"):
        VirtualKITTI2Dataset(tmp_path, scenes=["06"], conditions=["clone"], cameras=["0"])


# ---------------------------------------------------------------------------------------------- DSINE normal
# sets


def test_dsine_nyuv2_png_normals_mask_and_intrinsics(tmp_path: Path) -> None:
    write_rgb(tmp_path / "test/000000_img.png", 2, 3)
    png = np.full((2, 3, 3), 255, np.uint8)
    png[0, 0] = 0  # no GT
    Image.fromarray(png).save(tmp_path / "test/000000_normal.png")
    np.save(tmp_path / "test/000000_intrins.npy", np.eye(3))
    item = DSINENormalDataset(tmp_path, "nyuv2", ["test/000000_img.png"])[0]
    assert item["normals"].shape == (3, 2, 3)
    assert item["normals"][:, 1, 1].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert item["valid"][0].tolist() == [[False, True, True], [True, True, True]]
    assert item["intrinsics"].shape == (3, 3)
    assert len(DSINENormalDataset(tmp_path, "nyuv2")) == 1  # discovery without a split file
    with pytest.raises(ValueError, match="escapes"):
        DSINENormalDataset(tmp_path, "nyuv2", ["../../x_img.png"])
    with pytest.raises(KeyError, match="unknown normal eval set"):
        DSINENormalDataset(tmp_path, "middlebury")


def test_dsine_ibims_float_normals(tmp_path: Path) -> None:
    write_rgb(tmp_path / "ibims/corridor_01_img.png", 2, 2)
    normals = np.array([[[0, 0, 1], [0.1, 0.1, 0.1]], [[1, 0, 0], [0, -1, 0]]], np.float32)
    np.save(tmp_path / "ibims/corridor_01_normal.npy", normals)  # converted form of corridor_01_normal.exr
    item = DSINENormalDataset(tmp_path, "ibims")[0]
    assert item["valid"][0].tolist() == [[True, False], [True, True]]  # |n| > 0.5
    torch.testing.assert_close(item["normals"], torch.from_numpy(normals).permute(2, 0, 1))
    (tmp_path / "ibims/corridor_01_normal.npy").unlink()
    (tmp_path / "ibims/corridor_01_normal.exr").write_bytes(b"v/1\x01 not really an exr")
    with pytest.raises(DatasetFileError, match="corridor_01_normal.exr"):
        DSINENormalDataset(tmp_path, "ibims")[0]


def test_dsine_oasis_roi_pickle(tmp_path: Path) -> None:
    write_rgb(tmp_path / "val/100277_DT_img.png", 4, 5)
    roi = np.zeros((2, 3, 3), np.float32)
    roi[..., 0], roi[..., 1], roi[..., 2] = 0.6, 0.0, 0.8
    roi[0, 0] = 0  # outside the object inside the box
    entry = {"min_y": 1, "max_y": 2, "min_x": 2, "max_x": 4, "normal": roi}
    (tmp_path / "val/100277_DT_normal.pkl").write_bytes(pickle.dumps(entry))
    item = DSINENormalDataset(tmp_path, "oasis")[0]
    valid = item["valid"][0]
    assert valid.sum().item() == 5 and valid[2, 4] and not valid[1, 2] and not valid[0, 0]
    assert item["normals"][:, 2, 4].tolist() == pytest.approx([-0.6, 0.0, 0.8])  # x, y negated to LUB
    # A pickle that would run code is refused, not executed.
    (tmp_path / "val/100277_DT_normal.pkl").write_bytes(pickle.dumps({"normal": print}))
    with pytest.raises(DatasetFileError, match="100277_DT_normal.pkl"):
        DSINENormalDataset(tmp_path, "oasis")[0]
    entry["max_x"] = 9  # box outside the image
    (tmp_path / "val/100277_DT_normal.pkl").write_bytes(pickle.dumps(entry))
    with pytest.raises(DatasetFileError, match="does not fit"):
        DSINENormalDataset(tmp_path, "oasis")[0]
