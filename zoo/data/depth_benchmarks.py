"""Depth benchmark sets in the layout of Marigold's packaged eval sets: NYUv2, KITTI, ETH3D, ScanNet, DIODE.

Each set is a root folder and a file list ("rgb depth [extra...]", datasets/README.md) evaluated under its
protocol (`zoo.data.depth_protocols`: depth range, crop, eval mask). Items are dicts: "image" float32 [3, H,
W] in [0, 1], "depth" float32 [1, H, W] metres (0 where unknown), "valid" bool [1, H, W] (the protocol's
mask), "path", "depth_path" and "dataset". Broken files raise DatasetFileError naming the file; entries
escaping the root are refused.
"""

from __future__ import annotations

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
    load_npy,
    read_depth_png,
    read_filelist,
    read_rgb_tensor,
)
from zoo.data.depth_protocols import DepthEvalProtocol, get_protocol, kb_crop, valid_depth_mask
from zoo.utils.files import safe_join


class MarigoldDepthEvalDataset(Dataset):
    """A Marigold-layout depth eval set: rows "rgb depth [...]" relative to `root`, decoded by the protocol.

    Items carry "valid" = the protocol's mask (depth range, Eigen crop / mask, DIODE's own mask) and "dataset"
    (the protocol's name; the DepthEvalProtocol itself is `dataset.protocol`). Rows whose depth column is
    "None" (KITTI frames without GT) are skipped and counted in `skipped_without_gt`.
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
        # Resolve every path up front so that a list escaping the root fails at construction, not
        # mid-evaluation.
        self.samples = [
            (safe_join(self.root, row[0]), safe_join(self.root, row[1])) for row in rows if row[1] != "None"
        ]
        self.extra = [
            row[2:] for row in rows if row[1] != "None"
        ]  # e.g. KITTI's focal length, DIODE's mask file

    def __len__(self) -> int:
        return len(self.samples)

    def read_depth(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        """GT depth of one sample as [H, W] metres (0 or inf where unknown); image_size is the RGB (H, W)."""
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
        check_same_size(image, depth, depth_path, "depth")
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
    """KITTI Eigen test split (652 with GT): depth PNG / 256, 1e-5 < d < 80, crop 352 x 1216, Eigen mask.

    The third column (focal length) is kept in `extra`; rows with depth "None" are skipped.
    """

    def __init__(self, root: PathLike, filelist: PathLike | Sequence[str]) -> None:
        super().__init__(root, filelist, "kitti")


class ScanNetDepthDataset(MarigoldDepthEvalDataset):
    """ScanNet validation sample (800): depth PNG in mm, 1e-3 < d < 10."""

    def __init__(self, root: PathLike, filelist: PathLike | Sequence[str]) -> None:
        super().__init__(root, filelist, "scannet")


class ETH3DDepthDataset(MarigoldDepthEvalDataset):
    """ETH3D (454): depth is raw little-endian float32 at the RGB size (6048 x 4032), inf = none; d > 1e-5."""

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
                f"{depth_path}: {depth_path.stat().st_size} bytes; "
                f"expected {expected} for float32 at {width}x{height}"
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
