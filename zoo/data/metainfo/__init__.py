"""Keypoint dataset metainfo (names, symmetry, skeleton, OKS sigmas) loaded from the JSON data files beside
this module."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

_DATA_DIR = Path(__file__).resolve().parent

# Dataset aliases: the name a user or config may write -> the data file that describes it.
_ALIASES = {
    "coco": "coco",
    "coco17": "coco",
    "coco_ood": "coco",
    "humanart": "humanart",
    "human_art": "humanart",
    "coco_wholebody": "coco_wholebody",
    "wholebody": "coco_wholebody",
    # PoseTrack21 re-annotates the PoseTrack18 videos in the same 17-slot layout.
    "posetrack18": "posetrack18",
    "posetrack21": "posetrack18",
    "posetrack": "posetrack18",
}


@dataclass(frozen=True)
class PoseMetainfo:
    """Parsed keypoint metainfo of one dataset (the fields of mmpose's `parse_pose_metainfo`, as ids)."""

    name: str
    keypoint_names: tuple[str, ...]
    flip_indices: tuple[int, ...]
    flip_pairs: tuple[tuple[int, int], ...]
    upper_body_ids: tuple[int, ...]
    lower_body_ids: tuple[int, ...]
    skeleton_links: tuple[tuple[int, int], ...]
    keypoint_colors: np.ndarray  # [K, 3] uint8
    skeleton_link_colors: np.ndarray  # [L, 3] uint8
    joint_weights: np.ndarray  # [K] float32
    sigmas: np.ndarray  # [K] float32, as mmpose passes them to COCOeval and OKS-NMS
    # Whole-body part name -> [start, end) slice into the keypoints; {"body": (0, K)} for body-only sets.
    parts: Mapping[str, tuple[int, int]]

    @property
    def num_keypoints(self) -> int:
        """Number of keypoints K."""
        return len(self.keypoint_names)

    def keypoint_id(self, name: str) -> int:
        """Index of the keypoint called `name`."""
        try:
            return self.keypoint_names.index(name)
        except ValueError:
            raise KeyError(
                f"{self.name} has no keypoint {name!r}; known: {', '.join(self.keypoint_names)}"
            ) from None


def available_metainfo() -> list[str]:
    """Names accepted by `load_metainfo` (canonical names and aliases)."""
    return sorted(_ALIASES)


def _frozen(array: np.ndarray) -> np.ndarray:
    # The metainfo is cached and shared: make its arrays read-only so no caller can corrupt it.
    array.setflags(write=False)
    return array


@functools.cache
def load_metainfo(name: str) -> PoseMetainfo:
    """Load the metainfo of a keypoint dataset by name ("coco", "humanart", "coco_wholebody")."""
    key = name.lower().replace("-", "_")
    if key not in _ALIASES:
        raise KeyError(f"unknown keypoint dataset {name!r}; known: {', '.join(available_metainfo())}")
    raw = json.loads((_DATA_DIR / f"{_ALIASES[key]}.json").read_text())
    names = tuple(kpt["name"] for kpt in raw["keypoints"])
    name2id = {kpt_name: i for i, kpt_name in enumerate(names)}
    if len(name2id) != len(names):
        raise ValueError(f"{raw['name']}: duplicate keypoint names")
    # A keypoint without a swap partner maps to itself under a horizontal flip.
    flip_indices = tuple(name2id[kpt["swap"]] if kpt["swap"] else i for i, kpt in enumerate(raw["keypoints"]))
    if any(flip_indices[j] != i for i, j in enumerate(flip_indices)):
        raise ValueError(f"{raw['name']}: swap partners are not symmetric")
    num = len(names)
    parts = {
        part: (int(start), int(end)) for part, (start, end) in raw.get("parts", {"body": [0, num]}).items()
    }
    return PoseMetainfo(
        name=raw["name"],
        keypoint_names=names,
        flip_indices=flip_indices,
        flip_pairs=tuple((i, j) for i, j in enumerate(flip_indices) if i < j),
        upper_body_ids=tuple(i for i, kpt in enumerate(raw["keypoints"]) if kpt["type"] == "upper"),
        lower_body_ids=tuple(i for i, kpt in enumerate(raw["keypoints"]) if kpt["type"] == "lower"),
        skeleton_links=tuple((name2id[a], name2id[b]) for a, b in (link["link"] for link in raw["skeleton"])),
        keypoint_colors=_frozen(np.array([kpt["color"] for kpt in raw["keypoints"]], dtype=np.uint8)),
        skeleton_link_colors=_frozen(np.array([link["color"] for link in raw["skeleton"]], dtype=np.uint8)),
        joint_weights=_frozen(np.array(raw["joint_weights"], dtype=np.float32)),
        sigmas=_frozen(np.array(raw["sigmas"], dtype=np.float32)),
        parts=MappingProxyType(parts),
    )


__all__ = ["PoseMetainfo", "available_metainfo", "load_metainfo"]
