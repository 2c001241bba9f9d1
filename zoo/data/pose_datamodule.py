"""Data for top-down pose models: synthetic figures by default, COCO / COCO-WholeBody / HumanArt by config."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from zoo.data.coco_files import keypoint_parts, read_coco
from zoo.data.datamodule import TEST_SEED, VAL_SEED, EpochSampler, ZooDataModule
from zoo.data.synthetic import generator_fingerprint
from zoo.data.synthetic.figures import write_coco_figures
from zoo.data.topdown import (
    CocoPoseDataset,
    CocoWholeBodyPoseDataset,
    HumanArtPoseDataset,
    TopDownAugmentation,
    TopDownPoseDataset,
)
from zoo.utils.files import atomic_write_json

DATASETS: dict[str, type[TopDownPoseDataset]] = {
    "synthetic": CocoPoseDataset,
    "coco": CocoPoseDataset,
    "coco_wholebody": CocoWholeBodyPoseDataset,
    "humanart": HumanArtPoseDataset,
}
# Dataset class per keypoint layout of the synthetic source.
SYNTHETIC_LAYOUTS: dict[str, type[TopDownPoseDataset]] = {
    "coco": CocoPoseDataset,
    "coco_wholebody": CocoWholeBodyPoseDataset,
}
# Held-out figure sets are drawn from seeds far from the training seed (as the depth datamodule does).
def figure_split(
    cache_dir: str | os.PathLike, split: str, num_images: int, seed: int, size: tuple[int, int]
) -> Path:
    """Folder of one cached synthetic figure set, keyed by everything that changes its content."""
    return Path(cache_dir) / f"{split}_seed{seed}_n{num_images}_{size[0]}x{size[1]}_{generator_fingerprint()}"


class PoseDataModule(ZooDataModule):
    """Top-down train/val/test crops with keypoints in crop pixels and the meta the evaluator needs.

    source="synthetic" (default): COCO-format figure images (zoo.data.synthetic.figures) written once under
    `cache_dir`, training from `seed`, validation and test from held-out seeds, ground-truth boxes.
    source="coco" | "coco_wholebody" | "humanart": the readers of zoo.data.topdown on the files named by
    `train_ann_file`, `train_image_root`, `val_*`, `test_*` (relative to `data_root`); `val_bbox_file` /
    `test_bbox_file` give person detections (COCO results format) instead of ground-truth boxes.
    `input_size` is the crop (w, h). `augmentation` overrides fields of TopDownAugmentation
    (mmpose/SDPose defaults). `synthetic_layout` "coco_wholebody" writes the figures in the COCO-WholeBody
    layout (their 17 body joints labelled, feet, face and hands unlabelled), so whole-body recipes run end to
    end without the dataset; the real sources ignore it (their layout is the source's).
    """

    def __init__(
        self,
        source: str = "synthetic",
        input_size: tuple[int, int] = (768, 1024),
        batch_size: int = 16,
        num_workers: int = 0,
        seed: int = 0,
        augmentation: dict[str, Any] | None = None,
        train_images: int = 2000,
        val_images: int = 50,
        test_images: int = 200,
        figure_size: tuple[int, int] = (192, 192),
        cache_dir: str = "outputs/cache/pose_figures",
        data_root: str | None = None,
        train_ann_file: str | None = None,
        train_image_root: str | None = None,
        val_ann_file: str | None = None,
        val_image_root: str | None = None,
        val_bbox_file: str | None = None,
        test_ann_file: str | None = None,
        test_image_root: str | None = None,
        test_bbox_file: str | None = None,
        bbox_score_thr: float = 0.0,
        synthetic_layout: str = "coco",
    ) -> None:
        super().__init__()
        if source not in DATASETS:
            raise ValueError(f"source must be one of {sorted(DATASETS)}; got {source!r}")
        if synthetic_layout not in SYNTHETIC_LAYOUTS:
            raise ValueError(
                f"synthetic_layout must be one of {sorted(SYNTHETIC_LAYOUTS)}; got {synthetic_layout!r}"
            )
        known = {f.name for f in fields(TopDownAugmentation)}
        unknown = sorted(set(augmentation or {}) - known)
        if unknown:
            raise ValueError(f"unknown augmentation settings {unknown}; known: {sorted(known)}")
        if source != "synthetic" and not (val_ann_file and val_image_root):
            raise ValueError(
                f"source={source!r} needs at least val_ann_file and val_image_root (see datasets/README.md)"
            )
        self.save_hyperparameters()
        self.augmentation = TopDownAugmentation(**_tuples(augmentation or {}))

    # ------------------------------------------------------------------ files
    def _synthetic(self, split: str) -> tuple[Path, Path]:
        hp = self.hparams
        count, seed = {
            "train": (hp.train_images, hp.seed),
            "val": (hp.val_images, VAL_SEED),
            "test": (hp.test_images, TEST_SEED),
        }[split]
        root = figure_split(hp.cache_dir, split, count, seed, tuple(hp.figure_size))
        suffix = "_wholebody" if hp.synthetic_layout == "coco_wholebody" else ""
        return root / "annotations" / f"person_keypoints_{split}{suffix}.json", root / split

    def _files(self, split: str) -> tuple[Path, Path, Path | None]:
        """(annotation file, image folder, detection file or None) of a split."""
        hp = self.hparams
        if hp.source == "synthetic":
            return (*self._synthetic(split), None)
        ann, images = getattr(hp, f"{split}_ann_file"), getattr(hp, f"{split}_image_root")
        bbox = getattr(hp, f"{split}_bbox_file", None)
        if split == "test" and ann is None:  # COCO has no public test keypoints: evaluate on val
            ann, images, bbox = hp.val_ann_file, hp.val_image_root, hp.val_bbox_file
        if ann is None or images is None:
            raise ValueError(f"source={hp.source!r}: set {split}_ann_file and {split}_image_root")
        root = Path(hp.data_root) if hp.data_root else Path()
        return root / ann, root / images, (root / bbox if bbox else None)

    @property
    def val_ann_file(self) -> Path:
        """Ground truth of the validation split (what the evaluator scores against)."""
        return self._files("val")[0]

    @property
    def test_ann_file(self) -> Path:
        """Ground truth of the test split."""
        return self._files("test")[0]

    def prepare_data(self) -> None:
        """Render the synthetic figure sets once into the cache (skipped when already complete)."""
        hp = self.hparams
        if hp.source != "synthetic":
            return
        for split in ("train", "val", "test"):
            ann_file, _ = self._synthetic(split)
            if (
                ann_file.is_file()
            ):  # the annotation file is written last: its presence means the set is complete
                continue
            count, seed = {
                "train": (hp.train_images, hp.seed),
                "val": (hp.val_images, VAL_SEED),
                "test": (hp.test_images, TEST_SEED),
            }[split]
            body_file, _ = write_coco_figures(ann_file.parent.parent, count, seed, split, *hp.figure_size)
            if body_file != ann_file:
                _write_wholebody_layout(body_file, ann_file)

    # ------------------------------------------------------------------ datasets / loaders
    def dataset(self, split: str) -> TopDownPoseDataset:
        """The top-down dataset of a split (augmented for "train", deterministic crops otherwise)."""
        ann_file, image_root, bbox_file = self._files(split)
        train = split == "train"
        dataset_class = (
            SYNTHETIC_LAYOUTS[self.hparams.synthetic_layout]
            if self.hparams.source == "synthetic"
            else DATASETS[self.hparams.source]
        )
        return dataset_class(
            ann_file,
            image_root,
            input_size=tuple(self.hparams.input_size),
            bbox_file=None if train else bbox_file,
            bbox_score_thr=self.hparams.bbox_score_thr,
            augmentation=self.augmentation if train else None,
            seed=self.hparams.seed if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented crops; the last incomplete batch is dropped."""
        hp = self.hparams
        dataset = self.dataset("train")
        # No persistent workers: each epoch's workers must copy the dataset after set_epoch.
        return self.loader(
            dataset, hp.batch_size, hp.num_workers, sampler=EpochSampler(dataset, hp.seed), drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        """Held-out crops in file order."""
        hp = self.hparams
        return self.eval_loader(
            self.dataset("val"), hp.batch_size, hp.num_workers, f"val split {self.val_ann_file}"
        )

    def test_dataloader(self) -> DataLoader:
        """Test crops in file order."""
        hp = self.hparams
        return self.eval_loader(
            self.dataset("test"), hp.batch_size, hp.num_workers, f"test split {self.test_ann_file}"
        )


def _write_wholebody_layout(body_file: Path, out_file: Path) -> None:
    """Copy a COCO-17 annotation file into the COCO-WholeBody layout with the non-body parts unlabelled."""
    coco = read_coco(body_file).data
    extra = keypoint_parts("coco_wholebody")[1:]  # every part after the body joints
    for ann in coco["annotations"]:
        for part in extra:
            ann[part.field] = [0.0] * (3 * part.count)
    atomic_write_json(out_file, coco)


def _tuples(settings: dict[str, Any]) -> dict[str, Any]:
    # YAML gives lists where TopDownAugmentation's frozen fields expect tuples.
    return {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()}
