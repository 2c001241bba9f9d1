"""Depth evaluation protocols of the benchmarks: valid depth range, crops, eval masks, processing defaults.

These are facts about the datasets (Lotus' depth eval configs, reference notes `lotus_marigold.md` §2.3): the
readers apply the crops and masks, and `zoo.evaluation.depth` scores predictions under the same protocol.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

# Space in which an affine-invariant prediction is aligned to the ground truth ("none": already metric depth).
AlignmentSpace = Literal["depth", "disparity", "none"]


@dataclass(frozen=True)
class DepthEvalProtocol:
    """Per-dataset evaluation settings: depth range, crop or eval mask, resolution, alignment defaults."""

    name: str
    min_depth: float  # valid GT is min_depth < d < max_depth (strict, as Marigold's `_get_valid_mask`)
    max_depth: float
    depth_scale: float | None  # PNG value / depth_scale = metres; None for float formats
    eval_mask: Literal["nyu_eigen", "kitti_eigen"] | None = None
    kb_crop: bool = (
        False  # KITTI benchmark crop (bottom-centre 352 x 1216) of RGB and GT before anything else
    )
    processing_resolution: int = 0  # Lotus' processing_res: longest edge the model sees; 0 = native
    alignment_max_resolution: int | None = None  # LS solved on a copy downsampled to this longest edge
    alignment: AlignmentSpace = (
        "depth"  # default space; disparity models (Lotus v2) evaluate with "disparity"
    )
    num_images: int | None = None  # size of the standard test split, for checking a download


# Lotus' depth eval configs (`datasets/eval/depth/configs/*.yaml`), reference §2.3.
DEPTH_PROTOCOLS: dict[str, DepthEvalProtocol] = {
    "nyuv2": DepthEvalProtocol("nyuv2", 1e-3, 10.0, 1000.0, eval_mask="nyu_eigen", num_images=654),
    "kitti": DepthEvalProtocol(
        "kitti", 1e-5, 80.0, 256.0, eval_mask="kitti_eigen", kb_crop=True, num_images=652
    ),
    "eth3d": DepthEvalProtocol(
        "eth3d",
        1e-5,
        math.inf,
        None,
        processing_resolution=768,
        alignment_max_resolution=1024,
        num_images=454,
    ),
    "scannet": DepthEvalProtocol("scannet", 1e-3, 10.0, 1000.0, num_images=800),
    "diode": DepthEvalProtocol("diode", 0.6, 350.0, None, processing_resolution=640, num_images=771),
}

# Eigen et al.'s NYUv2 evaluation crop: rows 45:471, cols 41:601 of the 480 x 640 frame.
NYU_EIGEN_CROP = (45, 471, 41, 601)
# Eigen valid region of KITTI as fractions of the (benchmark-cropped) GT height and width (BTS / Marigold).
KITTI_EIGEN_FRACTIONS = (0.3324324, 0.91351351, 0.0359477, 0.96405229)
KB_CROP_SIZE = (352, 1216)


def get_protocol(name: str) -> DepthEvalProtocol:
    """Look up a dataset's depth protocol by name (nyuv2, kitti, eth3d, scannet, diode)."""
    key = name.lower()
    if key not in DEPTH_PROTOCOLS:
        raise KeyError(f"unknown depth protocol {name!r}; known: {', '.join(DEPTH_PROTOCOLS)}")
    return DEPTH_PROTOCOLS[key]


def eval_region_mask(
    height: int, width: int, kind: str | None, device: torch.device | None = None
) -> torch.Tensor:
    """Boolean [H, W] mask of the evaluated region: Eigen crop (NYU), Eigen mask (KITTI) or everything."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    if kind is None:
        mask[:] = True
    elif kind == "nyu_eigen":
        top, bottom, left, right = NYU_EIGEN_CROP
        mask[top:bottom, left:right] = True
    elif kind == "kitti_eigen":
        top, bottom, left, right = KITTI_EIGEN_FRACTIONS
        mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    else:
        raise ValueError(f"unknown eval mask {kind!r}; expected 'nyu_eigen', 'kitti_eigen' or None")
    return mask


def valid_depth_mask(depth: torch.Tensor, protocol: DepthEvalProtocol) -> torch.Tensor:
    """GT validity under a protocol: finite, inside (min_depth, max_depth) and inside the eval region."""
    region = eval_region_mask(depth.shape[-2], depth.shape[-1], protocol.eval_mask, depth.device)
    in_range = (depth > protocol.min_depth) & (depth < protocol.max_depth) & torch.isfinite(depth)
    return in_range & region


def kb_crop(array: torch.Tensor) -> torch.Tensor:
    """KITTI benchmark crop of [..., H, W]: the bottom-centre 352 x 1216 window."""
    height, width = array.shape[-2:]
    crop_h, crop_w = KB_CROP_SIZE
    if height < crop_h or width < crop_w:
        raise ValueError(f"KITTI benchmark crop needs at least {crop_h} x {crop_w}; got {height} x {width}")
    top = height - crop_h
    left = (width - crop_w) // 2
    return array[..., top : top + crop_h, left : left + crop_w]


__all__ = [
    "DEPTH_PROTOCOLS",
    "KB_CROP_SIZE",
    "KITTI_EIGEN_FRACTIONS",
    "NYU_EIGEN_CROP",
    "AlignmentSpace",
    "DepthEvalProtocol",
    "eval_region_mask",
    "get_protocol",
    "kb_crop",
    "valid_depth_mask",
]
