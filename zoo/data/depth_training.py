"""Depth and normal training sets of Lotus: Hypersim and Virtual KITTI 2 (layouts in datasets/README.md).

Hypersim: planar depth from distance-to-camera, outward camera-space normals. Virtual KITTI 2: depth PNG in
cm, valid and sky masks. Items are dicts: "image" float32 [3, H, W] in [0, 1], "depth" float32 [1, H, W]
metres (0 where unknown), "valid" bool [1, H, W], optional "normals" float32 [3, H, W] (DSINE/Lotus
orientation), "path" and the extras named in each class docstring. Broken files raise DatasetFileError naming
the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.depth_files import (
    DatasetFileError,
    PathLike,
    check_same_size,
    read_array,
    read_depth_png,
    read_rgb_tensor,
)
from zoo.data.depth_protocols import kb_crop
from zoo.data.images import ImageLoadError, pil_to_array, read_image_file
from zoo.utils.files import safe_join

# Hypersim renders every frame at 1024 x 768 with this focal length in pixels (reference §1.5).
HYPERSIM_FOCAL = 886.81
HYPERSIM_WIDTH = 1024
# Virtual KITTI 2: depth PNG in centimetres; 1e-5 < d < 80 m is valid, d >= 80 m is sky (reference §1.5).
VKITTI_MIN_DEPTH = 1e-5
VKITTI_MAX_DEPTH = 80.0
VKITTI_SCENES = ("02", "06", "18", "20")  # Lotus' training scenes (Scene01 left out)
VKITTI_CONDITIONS = (
    "15-deg-left",
    "15-deg-right",
    "30-deg-left",
    "30-deg-right",
    "clone",
    "fog",
    "morning",
    "overcast",
    "rain",
    "sunset",
)


def hypersim_distance_to_depth(distance: np.ndarray, focal: float = HYPERSIM_FOCAL) -> np.ndarray:
    """Hypersim distance-to-camera [H, W] as planar depth: d * f / ||(x, y, f)||, x and y at pixel centres."""
    height, width = distance.shape
    x = np.linspace(-0.5 * width + 0.5, 0.5 * width - 0.5, width, dtype=np.float32)  # [W]
    y = np.linspace(-0.5 * height + 0.5, 0.5 * height - 0.5, height, dtype=np.float32)  # [H]
    ray_norm = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + np.float32(focal) ** 2)  # [H, W]
    return (distance * (np.float32(focal) / ray_norm)).astype(np.float32)


def orient_normals_to_camera(normals: np.ndarray, depth: np.ndarray, focal: float) -> np.ndarray:
    """Flip normals [H, W, 3] (x left, y up, z back) facing away from the camera, as GeoWizard/Lotus do.

    The pixel's 3D point in camera coordinates (x right, y down, z forward) is depth * K^-1 [u, v, 1] with
    principal point (W/2, H/2); a normal n is flipped where n . p < 0 in those mixed axes, which after
    negating x, y and z into the normal's frame means the normal points along the viewing ray.
    """
    height, width = depth.shape
    u = (np.arange(width, dtype=np.float32) - width / 2) / focal  # [W]
    v = (np.arange(height, dtype=np.float32) - height / 2) / focal  # [H]
    points = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((height, width), np.float32)), -1)
    points = points * depth[..., None]  # [H, W, 3]
    facing_away = (normals * points).sum(-1) < 0  # [H, W]
    return np.where(facing_away[..., None], -normals, normals).astype(np.float32)


class HypersimDataset(Dataset):
    """Hypersim frames: tonemapped RGB, planar depth (`depth_meters`), outward camera normals (`normal_cam`).

    Finds `*.tonemap.jpg` under `root` (or reads `root/metadata.jsonl` as written by Lotus'
    process_hypersim.py). Normals: x negated (inward to outward, DSINE/Lotus orientation);
    `align_normals=True` also flips normals that face away from the camera (Lotus' `--align_cam_normal`).
    "valid" marks finite, positive depth (Lotus filters NaN frames offline and uses no mask; frames kept with
    NaN pixels get them masked here rather than poisoning losses). The focal length 886.81 px is Hypersim's at
    1024 px width; other widths scale it.
    """

    def __init__(self, root: PathLike, load_normals: bool = True, align_normals: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFileError(f"{self.root}: Hypersim root folder not found")
        self.load_normals = load_normals
        self.align_normals = align_normals
        self.samples = self._find_samples()
        if not self.samples:
            raise DatasetFileError(f"{self.root}: no '*.tonemap.jpg' frames found")

    def _find_samples(self) -> list[tuple[Path, Path, Path]]:
        """(rgb, depth, normal) paths from metadata.jsonl or a walk of the tree."""
        metadata = self.root / "metadata.jsonl"
        samples = []
        if metadata.is_file():
            for number, line in enumerate(metadata.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    rel = (entry["file_name"], entry["depth"], entry["normal_cam"])
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise DatasetFileError(f"{metadata}:{number}: bad entry ({error})") from error
                samples.append(tuple(safe_join(self.root, name) for name in rel))
            return samples
        for rgb in sorted(self.root.rglob("*.tonemap.jpg")):
            geometry = rgb.parent.parent / rgb.parent.name.replace("final_preview", "geometry_hdf5")
            frame = rgb.name[: -len("tonemap.jpg")]
            samples.append(
                (rgb, geometry / f"{frame}depth_meters.hdf5", geometry / f"{frame}normal_cam.hdf5")
            )
        return samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb_path, depth_path, normal_path = self.samples[index]
        image = read_rgb_tensor(rgb_path)  # [3, H, W]
        distance = read_array(depth_path, "Hypersim distance").astype(np.float32)
        if distance.ndim != 2:
            raise DatasetFileError(
                f"{depth_path}: expected an [H, W] distance map; got shape {distance.shape}"
            )
        focal = HYPERSIM_FOCAL * distance.shape[1] / HYPERSIM_WIDTH
        finite = np.isfinite(distance) & (distance > 0)
        depth = np.where(finite, hypersim_distance_to_depth(np.where(finite, distance, 0), focal), 0)
        sample: dict[str, Any] = {
            "image": image,
            "depth": torch.from_numpy(depth.astype(np.float32))[None],  # [1, H, W]
            "valid": torch.from_numpy(finite)[None],
            "path": str(rgb_path),
        }
        check_same_size(image, sample["depth"], depth_path, "depth")
        if self.load_normals:
            normals = read_array(normal_path, "Hypersim normals").astype(np.float32)
            if normals.ndim != 3 or normals.shape[-1] != 3:
                raise DatasetFileError(
                    f"{normal_path}: expected [H, W, 3] normals; got shape {normals.shape}"
                )
            normals = np.nan_to_num(normals, nan=0.0)
            normals[..., 0] *= -1  # inward -> outward (Lotus' hypersim transform)
            if self.align_normals:
                normals = orient_normals_to_camera(normals, depth, focal)
            sample["normals"] = torch.from_numpy(np.clip(normals, -1, 1)).permute(2, 0, 1).contiguous()
            check_same_size(image, sample["normals"], normal_path, "normals")
        return sample


class VirtualKITTI2Dataset(Dataset):
    """Virtual KITTI 2 frames with depth in metres, "valid" (1e-5 < d < 80), "sky" (d >= 80) and "loss_mask".

    "loss_mask" = valid | sky is what Lotus trains on: sky is kept and lands at the far end after
    normalisation. `kb_crop=True` (Lotus' VKITTITransform) cuts the bottom-centre 352 x 1216 window of every
    map. `load_normals=True` reads Lotus' precomputed `frames/normal/Camera_c/normal_XXXXX.png` (8-bit, n = v
    / 127.5 - 1).
    """

    def __init__(
        self,
        root: PathLike,
        scenes: Sequence[str] = VKITTI_SCENES,
        conditions: Sequence[str] = VKITTI_CONDITIONS,
        cameras: Sequence[str] = ("0", "1"),
        kb_crop: bool = True,
        load_normals: bool = False,
    ) -> None:
        self.root = Path(root)
        self.kb_crop = kb_crop
        self.load_normals = load_normals
        self.samples: list[Path] = []
        for scene in scenes:
            for condition in conditions:
                for camera in cameras:
                    folder = safe_join(self.root, f"Scene{scene}/{condition}/frames/rgb/Camera_{camera}")
                    if not folder.is_dir():
                        raise DatasetFileError(f"{folder}: Virtual KITTI 2 folder not found")
                    self.samples.extend(sorted(folder.glob("rgb_*.jpg")))
        if not self.samples:
            raise DatasetFileError(f"{self.root}: no Virtual KITTI 2 'rgb_*.jpg' frames in the chosen scenes")

    @staticmethod
    def sibling(rgb_path: Path, kind: str) -> Path:
        """Path of the depth or normal file that belongs to an RGB frame (rgb -> kind in folder and name)."""
        camera_dir = rgb_path.parent
        frames_dir = camera_dir.parent.parent
        name = rgb_path.name.replace("rgb_", f"{kind}_", 1).replace(".jpg", ".png")
        return frames_dir / kind / camera_dir.name / name

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb_path = self.samples[index]
        depth_path = self.sibling(rgb_path, "depth")
        image = read_rgb_tensor(rgb_path)
        depth = torch.from_numpy(read_depth_png(depth_path, 100.0))[None]  # cm -> m, [1, H, W]
        check_same_size(image, depth, depth_path, "depth")
        maps = {"image": image, "depth": depth}
        if self.load_normals:
            normal_path = self.sibling(rgb_path, "normal")
            try:
                normal_png = pil_to_array(read_image_file(normal_path).convert("RGB"))  # [H, W, 3] uint8
            except ImageLoadError as error:
                raise DatasetFileError(str(error)) from error
            maps["normals"] = torch.from_numpy(normal_png.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
            check_same_size(image, maps["normals"], normal_path, "normals")
        if self.kb_crop:
            try:
                maps = {key: kb_crop(value) for key, value in maps.items()}
            except ValueError as error:
                raise DatasetFileError(f"{rgb_path}: {error}") from error
        depth = maps["depth"]
        valid = (depth > VKITTI_MIN_DEPTH) & (depth < VKITTI_MAX_DEPTH)
        sky = (depth > VKITTI_MIN_DEPTH) & (depth >= VKITTI_MAX_DEPTH)
        return {**maps, "valid": valid, "sky": sky, "loss_mask": valid | sky, "path": str(rgb_path)}
