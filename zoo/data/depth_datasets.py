"""Readers for the depth and normal datasets of the Lotus / Marigold protocols (layouts in datasets/README.md).

Training: Hypersim (planar depth from distance-to-camera, outward camera-space normals) and Virtual KITTI 2 (depth PNG
in cm, valid and sky masks). Depth evaluation, in the layout of Marigold's packaged eval sets: NYUv2, KITTI (benchmark
crop + Eigen mask), ETH3D, ScanNet, DIODE. Normal evaluation, in the layout of DSINE's `dsine_eval`: NYUv2, ScanNet,
iBims-1, Sintel, OASIS.

Every reader is a torch Dataset whose items are dicts:
  "image"   float32 [3, H, W] in [0, 1]
  "depth"   float32 [1, H, W] metres, 0 where unknown          (depth sets)
  "normals" float32 [3, H, W], DSINE/Lotus orientation          (normal sets, optional for training sets)
  "valid"   bool    [1, H, W] pixels that count                 (evaluation: the protocol's mask)
  "path"    str     the RGB file; plus dataset-specific extras named in each class docstring.
Broken files raise DatasetFileError naming the file; list entries that escape the root are refused.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.images import ImageLoadError, load_rgb, pil_to_array, read_image_file
from zoo.evaluation.depth import KB_CROP_SIZE, DepthEvalProtocol, get_protocol, valid_depth_mask
from zoo.utils.files import safe_join

PathLike = str | os.PathLike

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


class DatasetFileError(ValueError):
    """A dataset file is missing, unreadable or has unexpected content; the message names the file."""


# ----------------------------------------------------------------------------------------------------------------
# File helpers


def read_rgb_tensor(path: PathLike) -> torch.Tensor:
    """Read an RGB image file as float32 [3, H, W] in [0, 1] through the project's one image loader."""
    try:
        rgb = load_rgb(path)  # [H, W, 3]
    except (ImageLoadError, ValueError) as error:
        raise DatasetFileError(str(error)) from error
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def read_depth_png(path: PathLike, scale: float) -> np.ndarray:
    """Read a single-channel 16-bit depth PNG and divide by `scale` (1000: mm, 256: KITTI, 100: cm) -> [H, W] metres."""
    try:
        array = pil_to_array(read_image_file(path))
    except ImageLoadError as error:
        raise DatasetFileError(str(error)) from error
    # PIL gives uint16 for 16-bit PNGs, or int32 (mode "I") on some builds; an 8-bit or colour file is not depth.
    if array.ndim != 2 or array.dtype not in (np.uint16, np.int32):
        raise DatasetFileError(
            f"{path}: expected a single-channel 16-bit depth PNG; got dtype {array.dtype}, shape {array.shape}"
        )
    return array.astype(np.float32) / np.float32(scale)


def load_npy(path: PathLike, what: str) -> np.ndarray:
    """np.load without pickles, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"{path}: no such file ({what})")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise DatasetFileError(f"{path}: not a readable .npy array ({what}): {error}") from error


def read_hdf5_dataset(path: PathLike, key: str = "dataset") -> np.ndarray:
    """Read one array from an HDF5 file (Hypersim stores each map under "dataset"); needs h5py."""
    try:
        import h5py  # optional: only Hypersim's original files need it
    except ImportError as error:
        raise ImportError(
            f"{path}: reading Hypersim .hdf5 files needs h5py (pip install h5py), "
            "or convert them once to .npy files beside them (see datasets/README.md)"
        ) from error
    try:
        with h5py.File(path, "r") as handle:
            return np.asarray(handle[key])
    except (OSError, KeyError) as error:
        raise DatasetFileError(f"{path}: cannot read HDF5 dataset {key!r}: {error}") from error


def read_array(path: Path, what: str) -> np.ndarray:
    """Read a .hdf5 map, or its converted .npy sibling when the .hdf5 is absent."""
    if path.suffix == ".hdf5" and not path.is_file() and path.with_suffix(".npy").is_file():
        path = path.with_suffix(".npy")
    if path.suffix == ".npy":
        return load_npy(path, what)
    if not path.is_file():
        raise DatasetFileError(f"{path}: no such file ({what}; a converted .npy beside it is also accepted)")
    return read_hdf5_dataset(path)


def read_filelist(filelist: PathLike | Sequence[str]) -> list[list[str]]:
    """Split a Marigold/DSINE file list (a path or lines) into whitespace-separated columns; skips blanks and #."""
    if isinstance(filelist, (str, os.PathLike)) and Path(filelist).is_file():
        lines = Path(filelist).read_text(encoding="utf-8").splitlines()
    elif isinstance(filelist, (str, os.PathLike)):
        raise DatasetFileError(f"{filelist}: file list not found")
    else:
        lines = list(filelist)
    rows = [line.split() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not rows:
        raise DatasetFileError(
            f"{filelist if isinstance(filelist, (str, os.PathLike)) else 'file list'}: no entries"
        )
    return rows


def kb_crop(array: torch.Tensor) -> torch.Tensor:
    """KITTI benchmark crop of [..., H, W]: the bottom-centre 352 x 1216 window."""
    height, width = array.shape[-2:]
    crop_h, crop_w = KB_CROP_SIZE
    if height < crop_h or width < crop_w:
        raise ValueError(f"KITTI benchmark crop needs at least {crop_h} x {crop_w}; got {height} x {width}")
    top = height - crop_h
    left = (width - crop_w) // 2
    return array[..., top : top + crop_h, left : left + crop_w]


def _check_same_size(image: torch.Tensor, other: torch.Tensor, path: PathLike, what: str) -> None:
    """Refuse annotation maps whose size differs from the image's."""
    if tuple(image.shape[-2:]) != tuple(other.shape[-2:]):
        raise DatasetFileError(
            f"{path}: {what} is {tuple(other.shape[-2:])} but the image is {tuple(image.shape[-2:])}"
        )


# ----------------------------------------------------------------------------------------------------------------
# Training sets


def hypersim_distance_to_depth(distance: np.ndarray, focal: float = HYPERSIM_FOCAL) -> np.ndarray:
    """Convert Hypersim distance-to-camera [H, W] to planar depth: d * f / ||(x, y, f)|| with x, y at pixel centres."""
    height, width = distance.shape
    x = np.linspace(-0.5 * width + 0.5, 0.5 * width - 0.5, width, dtype=np.float32)  # [W]
    y = np.linspace(-0.5 * height + 0.5, 0.5 * height - 0.5, height, dtype=np.float32)  # [H]
    ray_norm = np.sqrt(x[None, :] ** 2 + y[:, None] ** 2 + np.float32(focal) ** 2)  # [H, W]
    return (distance * (np.float32(focal) / ray_norm)).astype(np.float32)


def orient_normals_to_camera(normals: np.ndarray, depth: np.ndarray, focal: float) -> np.ndarray:
    """Flip normals [H, W, 3] (x left, y up, z back) that face away from the camera, as GeoWizard/Lotus align them.

    The pixel's 3D point in camera coordinates (x right, y down, z forward) is depth * K^-1 [u, v, 1] with principal
    point (W/2, H/2); a normal n is flipped where n . p < 0 in those mixed axes, which after negating x, y and z
    into the normal's frame means the normal points along the viewing ray.
    """
    height, width = depth.shape
    u = (np.arange(width, dtype=np.float32) - width / 2) / focal  # [W]
    v = (np.arange(height, dtype=np.float32) - height / 2) / focal  # [H]
    points = np.stack(np.broadcast_arrays(u[None, :], v[:, None], np.ones((height, width), np.float32)), -1)
    points = points * depth[..., None]  # [H, W, 3]
    facing_away = (normals * points).sum(-1) < 0  # [H, W]
    return np.where(facing_away[..., None], -normals, normals).astype(np.float32)


class HypersimDataset(Dataset):
    """Hypersim frames: tonemapped RGB, planar depth from `depth_meters`, outward camera-space normals from `normal_cam`.

    Finds `*.tonemap.jpg` under `root` (or reads `root/metadata.jsonl` as written by Lotus' process_hypersim.py).
    Normals: x negated (inward to outward, DSINE/Lotus orientation); `align_normals=True` also flips normals that
    face away from the camera (Lotus' `--align_cam_normal`). "valid" marks finite, positive depth (Lotus filters NaN
    frames offline and uses no mask; frames kept with NaN pixels get them masked here rather than poisoning losses).
    The focal length 886.81 px is Hypersim's at 1024 px width; other widths scale it.
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
        _check_same_size(image, sample["depth"], depth_path, "depth")
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
            _check_same_size(image, sample["normals"], normal_path, "normals")
        return sample


class VirtualKITTI2Dataset(Dataset):
    """Virtual KITTI 2 frames with depth in metres, "valid" (1e-5 < d < 80), "sky" (d >= 80) and "loss_mask".

    "loss_mask" = valid | sky is what Lotus trains on: sky is kept and lands at the far end after normalisation.
    `kb_crop=True` (Lotus' VKITTITransform) cuts the bottom-centre 352 x 1216 window of every map.
    `load_normals=True` reads Lotus' precomputed `frames/normal/Camera_c/normal_XXXXX.png` (8-bit, n = v / 127.5 - 1).
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
        _check_same_size(image, depth, depth_path, "depth")
        maps = {"image": image, "depth": depth}
        if self.load_normals:
            normal_path = self.sibling(rgb_path, "normal")
            try:
                normal_png = pil_to_array(read_image_file(normal_path).convert("RGB"))  # [H, W, 3] uint8
            except ImageLoadError as error:
                raise DatasetFileError(str(error)) from error
            maps["normals"] = torch.from_numpy(normal_png.astype(np.float32) / 127.5 - 1.0).permute(2, 0, 1)
            _check_same_size(image, maps["normals"], normal_path, "normals")
        if self.kb_crop:
            try:
                maps = {key: kb_crop(value) for key, value in maps.items()}
            except ValueError as error:
                raise DatasetFileError(f"{rgb_path}: {error}") from error
        depth = maps["depth"]
        valid = (depth > VKITTI_MIN_DEPTH) & (depth < VKITTI_MAX_DEPTH)
        sky = (depth > VKITTI_MIN_DEPTH) & (depth >= VKITTI_MAX_DEPTH)
        return {**maps, "valid": valid, "sky": sky, "loss_mask": valid | sky, "path": str(rgb_path)}


# ----------------------------------------------------------------------------------------------------------------
# Depth evaluation sets (Marigold's packaged layout: a root folder and a file list "rgb depth [extra...]")


class MarigoldDepthEvalDataset(Dataset):
    """A Marigold-layout depth eval set: rows "rgb depth [...]" relative to `root`, decoded by the protocol.

    Items carry "valid" = the protocol's mask (depth range, Eigen crop / mask, DIODE's own mask) and "dataset" (the
    protocol's name; the DepthEvalProtocol itself is `dataset.protocol`). Rows whose depth column is "None" (KITTI frames without GT) are skipped and counted in
    `skipped_without_gt`.
    """

    def __init__(
        self, root: PathLike, filelist: PathLike | Sequence[str], protocol: DepthEvalProtocol | str
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFileError(f"{self.root}: dataset root folder not found")
        self.protocol = get_protocol(protocol) if isinstance(protocol, str) else protocol
        rows = read_filelist(filelist)
        for row in rows:
            if len(row) < 2:
                raise DatasetFileError(f"{filelist}: row {' '.join(row)!r} needs an RGB and a depth column")
        self.skipped_without_gt = sum(1 for row in rows if row[1] == "None")
        # Resolve every path up front so that a list escaping the root fails at construction, not mid-evaluation.
        self.samples = [
            (safe_join(self.root, row[0]), safe_join(self.root, row[1])) for row in rows if row[1] != "None"
        ]
        self.extra = [
            row[2:] for row in rows if row[1] != "None"
        ]  # e.g. KITTI's focal length, DIODE's mask file

    def __len__(self) -> int:
        return len(self.samples)

    def read_depth(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        """Decode the GT depth of one sample to [H, W] metres (0 or inf where unknown); image_size is the RGB's (H, W)."""
        depth_path = self.samples[index][1]
        if self.protocol.depth_scale is None:
            raise TypeError(f"{type(self).__name__} must decode {self.protocol.name} depth files")
        return read_depth_png(depth_path, self.protocol.depth_scale)

    def extra_mask(self, index: int, shape: tuple[int, int]) -> torch.Tensor | None:
        """A dataset-provided validity mask [H, W], if the dataset has one."""
        return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        rgb_path, depth_path = self.samples[index]
        image = read_rgb_tensor(rgb_path)
        depth = torch.from_numpy(
            np.ascontiguousarray(self.read_depth(index, tuple(image.shape[-2:])), np.float32)
        )
        if depth.ndim != 2:
            raise DatasetFileError(
                f"{depth_path}: expected an [H, W] depth map; got shape {tuple(depth.shape)}"
            )
        _check_same_size(image, depth, depth_path, "depth")
        extra = self.extra_mask(index, tuple(depth.shape))
        if self.protocol.kb_crop:
            try:
                image, depth = kb_crop(image), kb_crop(depth)
            except ValueError as error:
                raise DatasetFileError(f"{rgb_path}: {error}") from error
        valid = valid_depth_mask(depth, self.protocol)  # [H, W]
        if extra is not None:
            valid &= extra
        depth = torch.where(torch.isfinite(depth), depth, torch.zeros_like(depth))  # inf / NaN mean "unknown"
        return {
            "image": image,
            "depth": depth[None],
            "valid": valid[None],
            "path": str(rgb_path),
            "depth_path": str(depth_path),
            "dataset": self.protocol.name,  # a string, so that default_collate can batch items
        }


class NYUv2DepthDataset(MarigoldDepthEvalDataset):
    """NYUv2 Eigen test split (654): depth PNG in mm, 1e-3 < d < 10, Eigen crop rows 45:471, cols 41:601."""

    def __init__(self, root: PathLike, filelist: PathLike | Sequence[str]) -> None:
        super().__init__(root, filelist, "nyuv2")


class KITTIDepthDataset(MarigoldDepthEvalDataset):
    """KITTI Eigen test split (652 with GT): depth PNG / 256, 1e-5 < d < 80, benchmark crop 352 x 1216, Eigen mask.

    The third column (focal length) is kept in `extra`; rows with depth "None" are skipped.
    """

    def __init__(self, root: PathLike, filelist: PathLike | Sequence[str]) -> None:
        super().__init__(root, filelist, "kitti")


class ScanNetDepthDataset(MarigoldDepthEvalDataset):
    """ScanNet validation sample (800): depth PNG in mm, 1e-3 < d < 10."""

    def __init__(self, root: PathLike, filelist: PathLike | Sequence[str]) -> None:
        super().__init__(root, filelist, "scannet")


class ETH3DDepthDataset(MarigoldDepthEvalDataset):
    """ETH3D (454): depth is raw little-endian float32 at the RGB size (6048 x 4032), inf = no depth; d > 1e-5."""

    def __init__(self, root: PathLike, filelist: PathLike | Sequence[str]) -> None:
        super().__init__(root, filelist, "eth3d")

    def read_depth(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        depth_path = self.samples[index][1]
        if not depth_path.is_file():
            raise DatasetFileError(f"{depth_path}: no such file (ETH3D depth)")
        # The raw file has no header: its size is known from the RGB frame it belongs to.
        height, width = image_size
        expected = width * height * 4
        if depth_path.stat().st_size != expected:
            raise DatasetFileError(
                f"{depth_path}: {depth_path.stat().st_size} bytes; expected {expected} for float32 at {width}x{height}"
            )
        depth = np.fromfile(depth_path, dtype="<f4").reshape(height, width)
        return np.where(np.isinf(depth), 0.0, depth).astype(np.float32)


class DIODEDepthDataset(MarigoldDepthEvalDataset):
    """DIODE validation (771, indoor + outdoor): depth and mask as .npy, 0.6 < d < 350 and the provided mask.

    The mask is the row's third column, or the depth file with `_depth.npy` replaced by `_depth_mask.npy`.
    """

    def __init__(self, root: PathLike, filelist: PathLike | Sequence[str]) -> None:
        super().__init__(root, filelist, "diode")

    def read_depth(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        depth_path = self.samples[index][1]
        depth = load_npy(depth_path, "DIODE depth").astype(np.float32)
        return depth.squeeze(-1) if depth.ndim == 3 and depth.shape[-1] == 1 else depth

    def extra_mask(self, index: int, shape: tuple[int, int]) -> torch.Tensor:
        extra = self.extra[index]
        depth_path = self.samples[index][1]
        mask_path = (
            safe_join(self.root, extra[0])
            if extra
            else depth_path.with_name(depth_path.name.replace("_depth.npy", "_depth_mask.npy"))
        )
        mask = load_npy(mask_path, "DIODE depth mask")
        mask = mask.squeeze(-1) if mask.ndim == 3 and mask.shape[-1] == 1 else mask
        if mask.shape != shape:
            raise DatasetFileError(f"{mask_path}: mask shape {mask.shape} does not match depth {shape}")
        return torch.from_numpy(mask > 0)


DEPTH_EVAL_DATASETS: dict[str, type[MarigoldDepthEvalDataset]] = {
    "nyuv2": NYUv2DepthDataset,
    "kitti": KITTIDepthDataset,
    "eth3d": ETH3DDepthDataset,
    "scannet": ScanNetDepthDataset,
    "diode": DIODEDepthDataset,
}


# ----------------------------------------------------------------------------------------------------------------
# Normal evaluation sets (DSINE's dsine_eval layout: <name>/<scene>/<id>_img.png + _normal.* + _intrins.npy)


@dataclass(frozen=True)
class NormalEvalSet:
    """How one DSINE eval set stores GT normals and which pixels count."""

    name: str
    normal_suffix: str  # "_normal.png", "_normal.exr" or "_normal.pkl"
    mask_rule: Literal["png_nonzero", "norm_above_half", "roi"]
    num_images: int


NORMAL_EVAL_SETS: dict[str, NormalEvalSet] = {
    "nyuv2": NormalEvalSet("nyuv2", "_normal.png", "png_nonzero", 654),  # GeoNet GT
    "scannet": NormalEvalSet("scannet", "_normal.png", "png_nonzero", 300),  # FrameNet GT
    "ibims": NormalEvalSet("ibims", "_normal.exr", "norm_above_half", 100),
    "sintel": NormalEvalSet("sintel", "_normal.exr", "norm_above_half", 1064),
    "oasis": NormalEvalSet("oasis", "_normal.pkl", "roi", 10000),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for OASIS' normal files: allows numpy arrays and nothing else, so a file cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_oasis_normals(path: PathLike, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """OASIS ROI normals: the pickled box is pasted into an [H, W, 3] map, x and y negated to LUB; mask = ROI != 0."""
    try:
        with open(path, "rb") as handle:
            entry = _NumpyOnlyUnpickler(handle).load()
        top, bottom = int(entry["min_y"]), int(entry["max_y"])
        left, right = int(entry["min_x"]), int(entry["max_x"])
        roi = np.asarray(entry["normal"], dtype=np.float32)
    except FileNotFoundError as error:
        raise DatasetFileError(f"{path}: no such file (OASIS normals)") from error
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise DatasetFileError(f"{path}: not an OASIS normal pickle ({error})") from error
    box = (bottom - top + 1, right - left + 1, 3)
    if roi.shape != box or top < 0 or left < 0 or bottom >= height or right >= width:
        raise DatasetFileError(
            f"{path}: ROI {roi.shape} at y {top}..{bottom}, x {left}..{right} does not fit the image"
        )
    normals = np.zeros((height, width, 3), np.float32)
    normals[top : bottom + 1, left : right + 1] = roi
    normals[..., :2] *= -1  # OASIS is right-down-back; DSINE/Lotus use left-up-back
    mask = np.zeros((height, width), bool)
    mask[top : bottom + 1, left : right + 1] = np.any(roi != 0, axis=-1)
    return normals, mask


def read_exr_normals(path: Path) -> np.ndarray:
    """Float normals [H, W, 3] (RGB order) from an OpenEXR file, or from a converted .npy beside it."""
    converted = path.with_suffix(".npy")
    if not path.is_file() and converted.is_file():
        return load_npy(converted, "normals").astype(np.float32)
    if not path.is_file():
        raise DatasetFileError(f"{path}: no such file (normals; a converted .npy beside it is also accepted)")
    # OpenCV reads EXR only when built with OpenEXR and allowed by this variable, read at its first EXR call.
    os.environ.setdefault("OPENCV_IO_ENABLE_OPENEXR", "1")
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if bgr is None:
        raise DatasetFileError(
            f"{path}: OpenCV could not read this EXR (this OpenCV build may lack OpenEXR); convert it once to "
            f"{converted.name} ([H, W, 3] float32, RGB order) as datasets/README.md describes"
        )
    if bgr.ndim != 3 or bgr.shape[-1] < 3:
        raise DatasetFileError(f"{path}: expected a 3-channel EXR; got shape {bgr.shape}")
    return np.ascontiguousarray(bgr[..., 2::-1], dtype=np.float32)


class DSINENormalDataset(Dataset):
    """One DSINE normal eval set (nyuv2, scannet, ibims, sintel, oasis) under `root` = dsine_eval/<name>.

    Samples are `<scene>/<id>_img.png` entries of `split_file` (DSINE's split list), or every `*_img.*` under root.
    GT: 8-bit PNG (n = v / 255 * 2 - 1, valid where the PNG is non-zero) for NYUv2/ScanNet; float EXR (valid where
    |n| > 0.5) for iBims/Sintel; pickled ROI (valid inside the ROI, x and y negated) for OASIS. Items add
    "intrinsics" [3, 3] when `<id>_intrins.npy` exists.
    """

    def __init__(self, root: PathLike, name: str, split_file: PathLike | Sequence[str] | None = None) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFileError(f"{self.root}: DSINE eval folder not found")
        if name not in NORMAL_EVAL_SETS:
            raise KeyError(f"unknown normal eval set {name!r}; known: {', '.join(NORMAL_EVAL_SETS)}")
        self.spec = NORMAL_EVAL_SETS[name]
        if split_file is None:
            self.samples = sorted(p for p in self.root.rglob("*_img.*") if p.is_file())
        else:
            self.samples = [safe_join(self.root, row[0]) for row in read_filelist(split_file)]
        if not self.samples:
            raise DatasetFileError(f"{self.root}: no '*_img.*' images found")
        for path in self.samples:
            if "_img" not in path.name:
                raise DatasetFileError(f"{path}: DSINE image names end in '_img.<ext>'")

    def __len__(self) -> int:
        return len(self.samples)

    def _sibling(self, image_path: Path, suffix: str) -> Path:
        """The annotation file of an image: `<id>_img.png` -> `<id><suffix>`."""
        stem = image_path.name.rsplit("_img", 1)[0]
        return image_path.with_name(stem + suffix)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path = self.samples[index]
        image = read_rgb_tensor(image_path)
        height, width = image.shape[-2:]
        normal_path = self._sibling(image_path, self.spec.normal_suffix)
        if self.spec.mask_rule == "png_nonzero":
            try:
                png = pil_to_array(read_image_file(normal_path).convert("RGB"))  # [H, W, 3] uint8
            except ImageLoadError as error:
                raise DatasetFileError(str(error)) from error
            mask = png.astype(np.int64).sum(-1) > 0  # black = no GT (before the [-1, 1] mapping)
            normals = png.astype(np.float32) / 255.0 * 2.0 - 1.0
        elif self.spec.mask_rule == "norm_above_half":
            normals = read_exr_normals(normal_path)
            if normals.shape != (height, width, 3):
                raise DatasetFileError(
                    f"{normal_path}: normals {normals.shape} do not match image {(height, width)}"
                )
            mask = np.linalg.norm(normals, axis=-1) > 0.5
        else:
            normals, mask = read_oasis_normals(normal_path, height, width)
        sample = {
            "image": image,
            "normals": torch.from_numpy(np.ascontiguousarray(normals)).permute(2, 0, 1).contiguous(),
            "valid": torch.from_numpy(mask)[None],
            "path": str(image_path),
        }
        _check_same_size(image, sample["normals"], normal_path, "normals")
        intrinsics_path = self._sibling(image_path, "_intrins.npy")
        if intrinsics_path.is_file():
            intrinsics = load_npy(intrinsics_path, "intrinsics")
            if intrinsics.shape != (3, 3):
                raise DatasetFileError(f"{intrinsics_path}: expected a 3 x 3 matrix; got {intrinsics.shape}")
            sample["intrinsics"] = torch.from_numpy(intrinsics.astype(np.float32))
        return sample
