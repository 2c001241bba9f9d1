"""Surface-normal benchmarks in the layout of DSINE's `dsine_eval`: NYUv2, ScanNet, iBims-1, Sintel, OASIS.

Each set is `<name>/<scene>/<id>_img.png` with `<id>_normal.*` and optionally `<id>_intrins.npy`
(datasets/README.md). Items are dicts: "image" float32 [3, H, W] in [0, 1], "normals" float32 [3, H, W]
(DSINE/Lotus orientation), "valid" bool [1, H, W], "path", and "intrinsics" [3, 3] where given. Broken files
raise DatasetFileError naming the file.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.depth_files import (
    DatasetFileError,
    PathLike,
    check_same_size,
    load_npy,
    read_filelist,
    read_rgb_tensor,
)
from zoo.data.images import ImageLoadError, pil_to_array, read_image_file
from zoo.utils.files import safe_join


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
    """OASIS ROI normals: the pickled box in an [H, W, 3] map, x and y negated (LUB); mask = ROI != 0."""
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
            f"{path}: OpenCV could not read this EXR (this OpenCV build may lack OpenEXR); convert it once "
            f"to {converted.name} ([H, W, 3] float32, RGB order) as datasets/README.md describes"
        )
    if bgr.ndim != 3 or bgr.shape[-1] < 3:
        raise DatasetFileError(f"{path}: expected a 3-channel EXR; got shape {bgr.shape}")
    return np.ascontiguousarray(bgr[..., 2::-1], dtype=np.float32)


class DSINENormalDataset(Dataset):
    """One DSINE normal eval set (nyuv2, scannet, ibims, sintel, oasis) under `root` = dsine_eval/<name>.

    Samples are `<scene>/<id>_img.png` entries of `split_file` (DSINE's split list), or every `*_img.*` under
    root. GT: 8-bit PNG (n = v / 255 * 2 - 1, valid where the PNG is non-zero) for NYUv2/ScanNet; float EXR
    (valid where |n| > 0.5) for iBims/Sintel; pickled ROI (valid inside the ROI, x and y negated) for OASIS.
    Items add "intrinsics" [3, 3] when `<id>_intrins.npy` exists.
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
        check_same_size(image, sample["normals"], normal_path, "normals")
        intrinsics_path = self._sibling(image_path, "_intrins.npy")
        if intrinsics_path.is_file():
            intrinsics = load_npy(intrinsics_path, "intrinsics")
            if intrinsics.shape != (3, 3):
                raise DatasetFileError(f"{intrinsics_path}: expected a 3 x 3 matrix; got {intrinsics.shape}")
            sample["intrinsics"] = torch.from_numpy(intrinsics.astype(np.float32))
        return sample
