"""File readers shared by the depth and normal datasets: RGB, 16-bit depth PNG, .npy, HDF5 and file lists.

Broken files raise DatasetFileError naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from zoo.data.images import ImageLoadError, load_rgb, pil_to_array, read_image_file

PathLike = str | os.PathLike


class DatasetFileError(ValueError):
    """A dataset file is missing, unreadable or has unexpected content; the message names the file."""


def read_rgb_tensor(path: PathLike) -> torch.Tensor:
    """Read an RGB image file as float32 [3, H, W] in [0, 1] through the project's one image loader."""
    try:
        rgb = load_rgb(path)  # [H, W, 3]
    except (ImageLoadError, ValueError) as error:
        raise DatasetFileError(str(error)) from error
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()


def read_depth_png(path: PathLike, scale: float) -> np.ndarray:
    """Read a 16-bit depth PNG divided by `scale` (1000: mm, 256: KITTI, 100: cm) as [H, W] metres."""
    try:
        array = pil_to_array(read_image_file(path))
    except ImageLoadError as error:
        raise DatasetFileError(str(error)) from error
    # PIL gives uint16 for 16-bit PNGs, or int32 (mode "I") on some builds; 8-bit or colour is not depth.
    if array.ndim != 2 or array.dtype not in (np.uint16, np.int32):
        raise DatasetFileError(
            f"{path}: expected a single-channel 16-bit depth PNG; "
            f"got dtype {array.dtype}, shape {array.shape}"
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
    """Split a Marigold/DSINE file list (path or lines) into whitespace-separated columns; skip blanks, #."""
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


def check_same_size(image: torch.Tensor, other: torch.Tensor, path: PathLike, what: str) -> None:
    """Refuse annotation maps whose size differs from the image's."""
    if tuple(image.shape[-2:]) != tuple(other.shape[-2:]):
        raise DatasetFileError(
            f"{path}: {what} is {tuple(other.shape[-2:])} but the image is {tuple(image.shape[-2:])}"
        )
