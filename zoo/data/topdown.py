"""Top-down COCO-style keypoint datasets (COCO body, COCO-WholeBody, HumanArt): one person crop per item.

Instances come from ground-truth boxes or from a person-detection result file (COCO results format), with
mmpose's BaseCocoStyleDataset semantics: GT boxes are clipped to the image, crowd and keypoint-less instances
are skipped in top-down mode, detections keep category 1 above a score threshold and carry dummy keypoints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.coco_files import (
    CocoFileError,
    CocoImage,
    Detection,
    keypoint_parts,
    read_coco,
    read_detections,
)
from zoo.data.images import load_rgb_uint8
from zoo.data.metainfo import PoseMetainfo, load_metainfo
from zoo.data.transforms import BBOX_PADDING, TopDownAugmentation, TopDownTransform, bbox_xywh_to_xyxy
from zoo.utils.files import safe_join


@dataclass(frozen=True)
class PoseInstance:
    """One person to crop: its image, box, keypoints and the ids the evaluator needs."""

    image_id: int
    image_path: Path
    image_size: tuple[int, int]  # (w, h)
    bbox: np.ndarray  # [4] float32 (x1, y1, x2, y2) in image pixels
    bbox_score: float  # 1.0 for ground-truth boxes
    keypoints: np.ndarray  # [K, 2] float32 image pixels (zeros for detections)
    keypoints_visible: np.ndarray  # [K] float32, 1 where labelled (COCO v > 0)
    num_keypoints: int
    area: float
    iscrowd: bool
    instance_id: int  # annotation id, or the running index of a detection (as mmpose)
    category_id: int


def _image_paths(
    images: Sequence[CocoImage], image_root: Path, strip_prefixes: Sequence[str]
) -> dict[int, Path]:
    """Map image id -> file path under `image_root`, refusing names that escape it.

    Some releases name files from the dataset's parent folder (HumanArt: "HumanArt/images/..."); when the
    first image is missing as named but exists without one of `strip_prefixes`, that prefix is dropped for
    every image.
    """
    if not images:
        return {}
    first = images[0].file_name
    strip = ""
    if not safe_join(image_root, first).is_file():
        strip = next(
            (
                p
                for p in strip_prefixes
                if first.startswith(p) and safe_join(image_root, first[len(p) :]).is_file()
            ),
            "",
        )
    paths = {}
    for image in images:
        name = image.file_name
        safe_join(image_root, name)  # refuse escaping names even when a prefix is stripped below
        paths[image.id] = safe_join(image_root, name[len(strip) :] if name.startswith(strip) else name)
    return paths


def _is_valid_instance(instance: PoseInstance) -> bool:
    """mmpose's top-down filter: no crowds, at least one labelled keypoint, a non-empty box."""
    width, height = instance.bbox[2:] - instance.bbox[:2]
    return (
        not instance.iscrowd
        and instance.num_keypoints > 0
        and width > 0
        and height > 0
        and float(np.max(instance.keypoints)) > 0
    )


def load_pose_instances(
    ann_file: str | os.PathLike,
    image_root: str | os.PathLike,
    num_keypoints: int,
    keypoint_fields: Sequence[str] = ("keypoints",),
    bbox_file: str | os.PathLike | None = None,
    bbox_score_thr: float = 0.0,
    skip_invalid: bool = True,
    strip_prefixes: Sequence[str] = (),
) -> list[PoseInstance]:
    """Read the person instances of a COCO-style keypoint file (GT boxes) or of a detection result file."""
    coco = read_coco(ann_file, "annotation", annotation_fields=("id", "image_id"))
    images = coco.images_by_id
    paths = _image_paths(coco.images, Path(image_root), strip_prefixes)
    if bbox_file is not None:
        return _detection_instances(
            read_detections(bbox_file),
            str(bbox_file),
            coco.name,
            images,
            paths,
            num_keypoints,
            bbox_score_thr,
        )
    instances = []
    for index, ann in enumerate(coco.annotations):
        if "bbox" not in ann or any(name not in ann for name in keypoint_fields):
            continue
        image = images[ann["image_id"]]
        width, height = image.width, image.height
        # mmpose clips GT boxes to the last pixel centre before taking centre and scale.
        x1, y1, x2, y2 = bbox_xywh_to_xyxy(np.asarray(ann["bbox"][:4], dtype=np.float64))
        bbox = np.array(
            [
                np.clip(x1, 0, width - 1),
                np.clip(y1, 0, height - 1),
                np.clip(x2, 0, width - 1),
                np.clip(y2, 0, height - 1),
            ],
            dtype=np.float32,
        )
        raw = np.concatenate([np.asarray(ann[name], dtype=np.float32) for name in keypoint_fields]).reshape(
            -1, 3
        )
        if raw.shape[0] != num_keypoints:
            fields = ", ".join(map(repr, keypoint_fields))
            raise CocoFileError(
                f"{coco.where(index)}: has {raw.shape[0]} keypoints in {fields}, expected {num_keypoints}"
            )
        visible = (raw[:, 2] > 0).astype(np.float32)  # [K]
        area = ann.get("area")
        if area is None:  # mmpose's stand-in for a missing segmentation area
            area = max(float((bbox[2] - bbox[0]) * (bbox[3] - bbox[1])) * 0.53, 1.0)
        instances.append(
            PoseInstance(
                image_id=ann["image_id"],
                image_path=paths[ann["image_id"]],
                image_size=(width, height),
                bbox=bbox,
                bbox_score=1.0,
                keypoints=np.ascontiguousarray(raw[:, :2]),
                keypoints_visible=visible,
                num_keypoints=int(ann.get("num_keypoints", int(np.count_nonzero(raw[:, :2].max(axis=1))))),
                area=float(area),
                iscrowd=bool(ann.get("iscrowd", 0)),
                instance_id=ann["id"],
                category_id=ann.get("category_id", 1),
            )
        )
    return [inst for inst in instances if _is_valid_instance(inst)] if skip_invalid else instances


def _detection_instances(
    detections: list[Detection],
    det_name: str,
    ann_name: str,
    images: dict[int, CocoImage],
    paths: dict[int, Path],
    num_keypoints: int,
    bbox_score_thr: float,
) -> list[PoseInstance]:
    """Person detections (category 1 at or above the score threshold) as instances with dummy keypoints."""
    instances = []
    # Ids count every person detection, kept or not, so they stay stable across score thresholds (as mmpose).
    person_index = 0
    for det in detections:
        if det.category_id != 1:
            continue
        index, person_index = person_index, person_index + 1
        if det.score < bbox_score_thr:
            continue
        image = images.get(det.image_id)
        if image is None:
            raise CocoFileError(
                f"{det_name}: results[{det.index}]['image_id']: image {det.image_id} is not in {ann_name}"
            )
        bbox = bbox_xywh_to_xyxy(det.bbox).astype(np.float32)
        instances.append(
            PoseInstance(
                image_id=det.image_id,
                image_path=paths[det.image_id],
                image_size=(image.width, image.height),
                bbox=bbox,
                bbox_score=det.score,
                keypoints=np.zeros((num_keypoints, 2), dtype=np.float32),
                keypoints_visible=np.ones(num_keypoints, dtype=np.float32),
                num_keypoints=0,
                area=max(float((bbox[2] - bbox[0]) * (bbox[3] - bbox[1])) * 0.53, 1.0),
                iscrowd=False,
                instance_id=index,
                category_id=1,
            )
        )
    return instances


class TopDownPoseDataset(Dataset):
    """COCO-style top-down keypoint dataset: each item is one person crop with keypoints in crop pixels.

    Items are dicts of tensors: "image" [3, h, w] float in [0, 1] (the network input, corrupted when
    training), "clean_image" [3, h, w] (the crop before the corruption block), "keypoints" [K, 2] (crop
    pixels), "keypoints_visible" [K], and the meta the evaluator needs: "image_id", "instance_id", "bbox" [4]
    (x1, y1, x2, y2 in the image), "bbox_score", "area", "center" [2], "scale" [2], "rotation", "flip",
    "image_size" [2] (w, h), "warp_matrix" [2, 3] float64 (image -> crop;
    `zoo.data.transforms.keypoints_to_image` inverts it).
    """

    default_metainfo: str = "coco"
    strip_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_root: str | os.PathLike,
        input_size: tuple[int, int] = (192, 256),
        bbox_file: str | os.PathLike | None = None,
        bbox_score_thr: float = 0.0,
        augmentation: TopDownAugmentation | None = None,
        padding: float = BBOX_PADDING,
        skip_invalid: bool = True,
        metainfo: str | PoseMetainfo | None = None,
        seed: int | None = None,
    ) -> None:
        """`input_size` is the crop (w, h); `augmentation` None gives deterministic evaluation crops."""
        self.metainfo = (
            load_metainfo(metainfo or self.default_metainfo)
            if not isinstance(metainfo, PoseMetainfo)
            else metainfo
        )
        self.instances = load_pose_instances(
            ann_file,
            image_root,
            num_keypoints=self.metainfo.num_keypoints,
            # Whole-body keypoints are the parts' fields concatenated in keypoint order, as mmpose reads them.
            keypoint_fields=tuple(part.field for part in keypoint_parts(self.metainfo)),
            bbox_file=bbox_file,
            bbox_score_thr=bbox_score_thr,
            skip_invalid=skip_invalid,
            strip_prefixes=self.strip_prefixes,
        )
        self.transform = TopDownTransform(
            input_size,
            padding=padding,
            augmentation=augmentation,
            flip_indices=self.metainfo.flip_indices,
            upper_body_ids=self.metainfo.upper_body_ids,
            lower_body_ids=self.metainfo.lower_body_ids,
        )
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw of a seeded dataset (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.instances)

    def _rng(self, index: int) -> np.random.Generator:
        # Seeded: the same (seed, epoch, index) gives the same crop in any worker; unseeded: fresh OS entropy,
        # so forked DataLoader workers never repeat each other's draws.
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        instance = self.instances[index]
        image = load_rgb_uint8(instance.image_path)  # [H, W, 3]
        if (image.shape[1], image.shape[0]) != instance.image_size:
            raise ValueError(
                f"{instance.image_path}: image is {image.shape[1]}x{image.shape[0]} but the annotation says "
                f"{instance.image_size[0]}x{instance.image_size[1]}"
            )
        rng = self._rng(index) if self.transform.augmentation is not None else None
        sample = self.transform(image, instance.bbox, instance.keypoints, instance.keypoints_visible, rng)
        geometry = sample["geometry"]
        return {
            "image": _to_chw_float(sample["image"]),  # [3, h, w]
            "clean_image": _to_chw_float(sample["clean_image"]),  # [3, h, w]
            "keypoints": torch.from_numpy(sample["keypoints"]),  # [K, 2]
            "keypoints_visible": torch.from_numpy(sample["keypoints_visible"]),  # [K]
            "image_id": instance.image_id,
            "instance_id": instance.instance_id,
            "bbox": torch.from_numpy(instance.bbox.copy()),  # [4]
            "bbox_score": instance.bbox_score,
            "area": instance.area,
            "center": torch.tensor(geometry.center, dtype=torch.float64),  # [2]
            "scale": torch.tensor(geometry.scale, dtype=torch.float64),  # [2]
            "rotation": geometry.rotation,
            "flip": geometry.flip,
            "image_size": torch.tensor(instance.image_size),  # [2] (w, h)
            "warp_matrix": torch.from_numpy(geometry.matrix()),  # [2, 3] float64
        }


def _to_chw_float(image: np.ndarray) -> torch.Tensor:
    """uint8 [h, w, 3] -> float32 [3, h, w] in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


class CocoPoseDataset(TopDownPoseDataset):
    """COCO person keypoints (17 body joints), top-down."""

    default_metainfo = "coco"


class CocoWholeBodyPoseDataset(TopDownPoseDataset):
    """COCO-WholeBody (133 = body 17 + foot 6 + face 68 + hands 2 x 21), top-down."""

    default_metainfo = "coco_wholebody"


class HumanArtPoseDataset(TopDownPoseDataset):
    """HumanArt (COCO-17 keypoints on art, virtual and real humans), top-down."""

    default_metainfo = "humanart"
    # File names start with "HumanArt/images/": `image_root` may be the dataset's parent folder or its images
    # folder.
    strip_prefixes = ("HumanArt/images/",)
