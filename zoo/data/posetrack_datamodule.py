"""Clips for video pose models: synthetic moving figures by default, PoseTrack18 / PoseTrack21 by config."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from zoo.data.datamodule import TEST_SEED, VAL_SEED, EpochSampler, ZooDataModule
from zoo.data.posetrack import DEFAULT_OFFSETS, DETECTION_SCORE_THR, PoseTrackClipDataset
from zoo.data.synthetic import generator_fingerprint
from zoo.data.synthetic.moving_figures import write_posetrack_videos
from zoo.data.transforms import TopDownAugmentation

SOURCES = ("synthetic", "posetrack18", "posetrack21")
# Held-out synthetic videos come from seeds far from the training seed (as the image datamodules do).
def video_split(
    cache_dir: str | os.PathLike,
    split: str,
    videos: int,
    seed: int,
    frames: int,
    size: tuple[int, int],
    render: dict[str, Any],
) -> Path:
    """Folder of one cached synthetic video set, keyed by everything that changes its content."""
    options = "".join(f"_{key}{value}" for key, value in sorted(render.items()))
    return Path(cache_dir) / (
        f"{split}_seed{seed}_v{videos}_f{frames}_{size[0]}x{size[1]}{options}_{generator_fingerprint()}"
    )


class PoseTrackDataModule(ZooDataModule):
    """Top-down clips (frames [T, 3, h, w] around a labelled key frame, one box per clip) and their ground
    truth.

    source="synthetic" (default): moving figures in the PoseTrack18 layout
    (zoo.data.synthetic.moving_figures), written once under `cache_dir`; training videos from `seed`,
    validation and test from held-out seeds;
    `render` passes occlusion / blur / drop probabilities to the generator. source="posetrack18" |
    "posetrack21": the official layout under `data_root`
    (`train_ann`, `val_ann`, `test_ann`: a per-video annotation folder or a merged file, relative to
    `data_root`; frames under `data_root` as the files name them);
    `val_bbox_file` / `test_bbox_file` give person detections (COCO results, kept from `bbox_score_thr`)
    instead of GT boxes. `offsets` are the clip's frames relative to the key frame (default t-1, t, t+1);
    `input_size` the crop (w, h). `augmentation` overrides fields of TopDownAugmentation; one draw covers a
    whole clip.
    """

    sample_kind = "clip"

    def __init__(
        self,
        source: str = "synthetic",
        input_size: tuple[int, int] = (192, 256),
        offsets: Sequence[int] = DEFAULT_OFFSETS,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
        augmentation: dict[str, Any] | None = None,
        train_videos: int = 200,
        val_videos: int = 8,
        test_videos: int = 30,
        video_frames: int = 12,
        video_size: tuple[int, int] = (256, 256),
        render: dict[str, Any] | None = None,
        cache_dir: str = "outputs/cache/moving_figures",
        data_root: str | None = None,
        train_ann: str | None = None,
        val_ann: str | None = None,
        test_ann: str | None = None,
        val_bbox_file: str | None = None,
        test_bbox_file: str | None = None,
        bbox_score_thr: float = DETECTION_SCORE_THR,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}; got {source!r}")
        known = {f.name for f in fields(TopDownAugmentation)}
        unknown = sorted(set(augmentation or {}) - known)
        if unknown:
            raise ValueError(f"unknown augmentation settings {unknown}; known: {sorted(known)}")
        if source != "synthetic" and not (data_root and val_ann):
            raise ValueError(f"source={source!r} needs data_root and val_ann (see datasets/README.md)")
        self.save_hyperparameters()
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in (augmentation or {}).items()}
        self.augmentation = TopDownAugmentation(**settings)

    # ------------------------------------------------------------------ files
    def _synthetic_root(self, split: str) -> Path:
        hp = self.hparams
        videos, seed = {
            "train": (hp.train_videos, hp.seed),
            "val": (hp.val_videos, VAL_SEED),
            "test": (hp.test_videos, TEST_SEED),
        }[split]
        return video_split(
            hp.cache_dir, split, videos, seed, hp.video_frames, tuple(hp.video_size), hp.render or {}
        )

    def _files(self, split: str) -> tuple[Path, Path, Path | None]:
        """(annotations: per-video folder or merged file, image root, detection file or None) of a split."""
        hp = self.hparams
        if hp.source == "synthetic":
            root = self._synthetic_root(split)
            return root / "annotations" / split, root, None
        ann = getattr(hp, f"{split}_ann")
        bbox = getattr(hp, f"{split}_bbox_file", None)
        if split == "test" and ann is None:  # PoseTrack's test labels are not public: evaluate on val
            ann, bbox = hp.val_ann, hp.val_bbox_file
        if ann is None:
            raise ValueError(f"source={hp.source!r}: set {split}_ann")
        root = Path(hp.data_root)
        return root / ann, root, (root / bbox if bbox else None)

    @property
    def val_ann_file(self) -> Path:
        """Ground truth of the validation split (what the PoseTrack evaluator scores against)."""
        return self._files("val")[0]

    @property
    def test_ann_file(self) -> Path:
        """Ground truth of the test split."""
        return self._files("test")[0]

    def prepare_data(self) -> None:
        """Render the synthetic videos once into the cache (skipped when complete)."""
        hp = self.hparams
        if hp.source != "synthetic":
            return
        for split in ("train", "val", "test"):
            root = self._synthetic_root(split)
            done = root / "complete"
            if done.is_file():  # written last: its presence means every video of the set is there
                continue
            videos, seed = {
                "train": (hp.train_videos, hp.seed),
                "val": (hp.val_videos, VAL_SEED),
                "test": (hp.test_videos, TEST_SEED),
            }[split]
            write_posetrack_videos(
                root, videos, seed, split, hp.video_frames, *hp.video_size, **(hp.render or {})
            )
            done.write_text("ok\n")

    # ------------------------------------------------------------------ datasets / loaders
    def dataset(self, split: str, offsets: Sequence[int] | None = None) -> PoseTrackClipDataset:
        """The clip dataset of a split (augmented for "train"); `offsets` overrides the configured frames."""
        ann, image_root, bbox_file = self._files(split)
        train = split == "train"
        return PoseTrackClipDataset(
            ann,
            image_root,
            input_size=tuple(self.hparams.input_size),
            offsets=tuple(self.hparams.offsets if offsets is None else offsets),
            bbox_file=None if train else bbox_file,
            bbox_score_thr=self.hparams.bbox_score_thr,
            augmentation=self.augmentation if train else None,
            seed=self.hparams.seed if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled, augmented clips; the last incomplete batch is dropped."""
        hp = self.hparams
        dataset = self.dataset("train")
        return self.loader(
            dataset, hp.batch_size, hp.num_workers, sampler=EpochSampler(dataset, hp.seed), drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        """Held-out clips in file order."""
        return self.eval_loader(self.dataset("val"), self.hparams.batch_size, self.hparams.num_workers, "val")

    def test_dataloader(self) -> DataLoader:
        """Test clips in file order."""
        return self.eval_loader(
            self.dataset("test"), self.hparams.batch_size, self.hparams.num_workers, "test"
        )
