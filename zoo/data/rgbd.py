"""Readers for real RGB-D sensor frames in the Redwood, NYUv2 raw Kinect, SUN RGB-D and TUM RGB-D file
conventions.

Each converter follows its dataset's own toolbox and returns float32 depth in metres with 0 where the sensor
gave
nothing; the frames in ../shared/realdata/rgbd use them (`RealRGBDDataset`). Conventions:
- Redwood: uint16 PNG in millimetres, 0 = no depth.
- TUM RGB-D: uint16 PNG, metres x 5000, 0 = no depth.
- SUN RGB-D: uint16 PNG whose 16 bits are rotated right by 3, then millimetres; the SUN toolbox clamps to 8 m.
- NYUv2 raw: PGM of the Kinect's raw disparity, byte-swapped relative to the PGM's big-endian header (the NYU
  toolbox applies swapbytes after imread; Open3D's create_from_nyu_format swaps the bytes it read big-endian);
  depth = 351.3 / (1092.5 - raw), <= 0 means no depth (raw 2047 is the Kinect's "no reading"); the toolbox
  clamps to 10 m.
Clamped far values are kept (as the toolboxes do) but left out of "valid", so they never count in evaluation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.depth_files import DatasetFileError, read_rgb_tensor
from zoo.data.images import ImageLoadError, pil_to_array, read_image_file

RGBDFormat = Literal["redwood", "tum", "sun", "nyu"]

# NYU Depth v2 toolbox camera_params.m: depth = depthParam1 / (depthParam2 - raw), clamped to maxDepth.
NYU_DEPTH_PARAM1 = 351.3
NYU_DEPTH_PARAM2 = 1092.5
NYU_MAX_DEPTH = 10.0
# SUN RGB-D toolbox read3dPoints.m clamps depth above 8 m.
SUN_MAX_DEPTH = 8.0
TUM_DEPTH_FACTOR = 5000.0


def _read_uint16(path: str | os.PathLike, what: str) -> np.ndarray:
    """Read a single-channel 16-bit image file as uint16 [H, W] (PIL's decoding of PNG/PGM byte order)."""
    try:
        array = pil_to_array(read_image_file(path))
    except ImageLoadError as error:
        raise DatasetFileError(str(error)) from error
    if array.ndim != 2 or array.dtype not in (np.uint16, np.int32) or array.min() < 0 or array.max() > 65535:
        raise DatasetFileError(
            f"{path}: expected a single-channel 16-bit {what}; got dtype {array.dtype}, shape {array.shape}"
        )
    return array.astype(np.uint16)


def read_redwood_depth(path: str | os.PathLike) -> np.ndarray:
    """Redwood depth PNG (uint16 mm) -> float32 [H, W] metres, 0 = invalid."""
    return _read_uint16(path, "Redwood depth PNG").astype(np.float32) / np.float32(1000.0)


def read_tum_depth(path: str | os.PathLike) -> np.ndarray:
    """TUM RGB-D depth PNG (uint16, metres x 5000) -> float32 [H, W] metres, 0 = invalid."""
    return _read_uint16(path, "TUM depth PNG").astype(np.float32) / np.float32(TUM_DEPTH_FACTOR)


def sun_raw_to_depth(raw: np.ndarray, max_depth: float = SUN_MAX_DEPTH) -> np.ndarray:
    """SUN RGB-D stored uint16 -> metres: rotate the 16 bits right by 3, read as mm, clamp to max_depth."""
    raw = raw.astype(np.uint16)
    millimetres = (raw >> np.uint16(3)) | (raw << np.uint16(13))  # uint16 arithmetic drops the high bits
    return np.minimum(millimetres.astype(np.float32) / np.float32(1000.0), np.float32(max_depth))


def read_sun_depth(path: str | os.PathLike, max_depth: float = SUN_MAX_DEPTH) -> np.ndarray:
    """SUN RGB-D depth PNG -> float32 [H, W] metres (0 = invalid, values above max_depth clamped to it)."""
    return sun_raw_to_depth(_read_uint16(path, "SUN RGB-D depth PNG"), max_depth)


def nyu_raw_to_depth(pgm_values: np.ndarray, max_depth: float = NYU_MAX_DEPTH) -> np.ndarray:
    """NYU raw Kinect values as a PGM reader decodes them (big-endian) -> metres, 0 = invalid, clamped to
    max_depth."""
    values = pgm_values.astype(np.uint16)
    raw = ((values & np.uint16(0x00FF)) << np.uint16(8)) | (values >> np.uint16(8))  # swap bytes
    depth = NYU_DEPTH_PARAM1 / (NYU_DEPTH_PARAM2 - raw.astype(np.float64))
    depth = np.where(depth > 0, np.minimum(depth, max_depth), 0.0)
    return depth.astype(np.float32)


def read_nyu_raw_depth(path: str | os.PathLike, max_depth: float = NYU_MAX_DEPTH) -> np.ndarray:
    """NYUv2 raw Kinect depth PGM -> float32 [H, W] metres
    (0 = invalid, values above max_depth clamped to it)."""
    return nyu_raw_to_depth(_read_uint16(path, "NYU raw depth PGM"), max_depth)


@dataclass(frozen=True)
class RGBDConvention:
    """How one RGB-D dataset stores depth: the converter and the far limit above which depth is not trusted.
    """

    read_depth: Callable[[str | os.PathLike], np.ndarray]
    max_valid_depth: float  # depth >= this is not valid (the clamp value of the toolboxes, inf where none)


RGBD_CONVENTIONS: dict[str, RGBDConvention] = {
    "redwood": RGBDConvention(read_redwood_depth, float("inf")),
    "tum": RGBDConvention(read_tum_depth, float("inf")),
    "sun": RGBDConvention(read_sun_depth, SUN_MAX_DEPTH),
    "nyu": RGBDConvention(read_nyu_raw_depth, NYU_MAX_DEPTH),
}


def load_rgbd_frame(
    color_path: str | os.PathLike, depth_path: str | os.PathLike, convention: RGBDFormat
) -> dict[str, Any]:
    """Read one RGB-D pair as a reader item: image [3, H, W], depth [1, H, W] metres, valid [1, H, W], paths.
    """
    if convention not in RGBD_CONVENTIONS:
        raise KeyError(f"unknown RGB-D convention {convention!r}; known: {', '.join(RGBD_CONVENTIONS)}")
    spec = RGBD_CONVENTIONS[convention]
    image = read_rgb_tensor(color_path)
    depth = torch.from_numpy(spec.read_depth(depth_path))  # [H, W]
    if tuple(depth.shape) != tuple(image.shape[-2:]):
        raise DatasetFileError(
            f"{depth_path}: depth {tuple(depth.shape)} does not match image {tuple(image.shape[-2:])}"
        )
    valid = (depth > 0) & (depth < spec.max_valid_depth)
    return {
        "image": image,
        "depth": depth[None],
        "valid": valid[None],
        "path": str(color_path),
        "depth_path": str(depth_path),
        "convention": convention,
    }


class RealRGBDDataset(Dataset):
    """The real RGB-D sample folder: Redwood `color/*.jpg` + `depth/*.png`, and
    `other_formats/{NYU,SUN,TUM}_*`."""

    # other_formats/ file pairs and their conventions.
    OTHER_FORMATS: tuple[tuple[str, str, RGBDFormat], ...] = (
        ("NYU_color.ppm", "NYU_depth.pgm", "nyu"),
        ("SUN_color.jpg", "SUN_depth.png", "sun"),
        ("TUM_color.png", "TUM_depth.png", "tum"),
    )

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetFileError(f"{self.root}: RGB-D folder not found")
        self.frames: list[tuple[Path, Path, RGBDFormat]] = []
        for color in sorted((self.root / "color").glob("*.jpg")):
            depth = self.root / "depth" / f"{color.stem}.png"
            if not depth.is_file():
                raise DatasetFileError(f"{depth}: no depth frame for {color}")
            self.frames.append((color, depth, "redwood"))
        for color_name, depth_name, convention in self.OTHER_FORMATS:
            color = self.root / "other_formats" / color_name
            if color.is_file():
                self.frames.append((color, self.root / "other_formats" / depth_name, convention))
        if not self.frames:
            raise DatasetFileError(
                f"{self.root}: no RGB-D frames (expected color/ + depth/ or other_formats/)"
            )

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict[str, Any]:
        color, depth, convention = self.frames[index]
        return load_rgbd_frame(color, depth, convention)
