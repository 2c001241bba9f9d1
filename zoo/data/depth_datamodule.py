"""Data for Lotus: synthetic scenes by default, Hypersim + Virtual KITTI 2 with the official mixing on
request."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from zoo.data.datamodule import TEST_SEED, VAL_SEED, ZooDataModule
from zoo.data.synthetic import SyntheticSceneDataset


def hflip_sample(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror a sample left-right; the x component of camera-frame normals changes sign."""
    flipped = dict(sample)
    for key in ("image", "depth", "valid", "normals"):
        if key in sample:
            flipped[key] = sample[key].flip(-1)
    if "normals" in sample:
        flipped["normals"] = flipped["normals"] * torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
    return flipped


def resize_sample(sample: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Resize image (bilinear) and depth/normals/valid (nearest, so no invalid value leaks) to `size` (H, W).
    """
    if tuple(sample["image"].shape[-2:]) == tuple(size):
        return sample
    resized = dict(sample)
    resized["image"] = F.interpolate(
        sample["image"][None], size, mode="bilinear", antialias=True, align_corners=False
    )[0]
    for key in ("depth", "normals"):
        if key in sample:
            resized[key] = F.interpolate(sample[key][None], size, mode="nearest-exact")[0]
    resized["valid"] = F.interpolate(sample["valid"][None].float(), size, mode="nearest-exact")[0] > 0.5
    return resized


class AugmentedDataset(Dataset):
    """Wraps a reader: optional resize to a fixed size, random horizontal flip with probability `flip_p`."""

    def __init__(
        self, dataset: Dataset, size: tuple[int, int] | None = None, flip_p: float = 0.5, seed: int = 0
    ):
        self.dataset, self.size, self.flip_p, self.seed = dataset, size, flip_p, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[index]
        sample = {k: v for k, v in sample.items() if isinstance(v, torch.Tensor)}
        if self.size is not None:
            sample = resize_sample(sample, self.size)
        # Seeded per (seed, epoch, index): the same run flips the same samples, whatever the worker layout.
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFFFFFF)
        flipped = self.flip_p > 0 and float(torch.rand((), generator=generator)) < self.flip_p
        if flipped:
            sample = hflip_sample(sample)
        # (index, flipped) identifies the exact pixels of this item: the key of LotusModule's latent cache.
        sample["index"] = torch.tensor(index)
        sample["flipped"] = torch.tensor(flipped)
        return sample


class MixedBatchLoader:
    """Each batch comes whole from one loader, picked with the given probabilities (Lotus: Hypersim p=0.9).

    An epoch is as long as the first loader; the others restart when exhausted.
    """

    def __init__(self, loaders: Sequence[DataLoader], probabilities: Sequence[float], seed: int = 0):
        if len(loaders) != len(probabilities) or abs(sum(probabilities) - 1.0) > 1e-6:
            raise ValueError(f"need one probability per loader summing to 1; got {list(probabilities)}")
        self.loaders, self.probabilities, self.seed = list(loaders), torch.tensor(probabilities), seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loaders[0])

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        iterators = [iter(loader) for loader in self.loaders]
        for _ in range(len(self)):
            pick = int(torch.multinomial(self.probabilities, 1, generator=generator))
            try:
                yield next(iterators[pick])
            except StopIteration:
                if pick == 0:
                    return
                iterators[pick] = iter(self.loaders[pick])
                yield next(iterators[pick])


class DepthNormalDataModule(ZooDataModule):
    """Train/val/test data for depth and normal models.

    source="synthetic" (default): rendered scenes, train seeds 0..train_size-1, held-out val and test seeds.
    source="hypersim_vkitti": the official Lotus mixture (Hypersim resized to `hypersim_size`, Virtual KITTI 2
    cropped by its reader, whole batches from one dataset, Hypersim with probability `hypersim_probability`).
    Validation uses held-out synthetic scenes. The test split is held-out synthetic scenes unless
    `test_dataset` names a benchmark: a depth set
    (nyuv2, kitti, eth3d, scannet, diode; `test_root` + `test_filelist`) or a DSINE normal set as
    "normals:<name>" (nyuv2, scannet, ibims, sintel, oasis; `test_root`, optional split file). Benchmarks are
    read one image per batch (their sizes differ) and scored with their own protocol.
    """

    def __init__(
        self,
        source: str = "synthetic",
        image_size: tuple[int, int] = (64, 64),
        train_size: int = 2048,
        val_size: int = 32,
        test_size: int = 128,
        batch_size: int = 16,
        num_workers: int = 0,
        flip_p: float = 0.5,
        hypersim_root: str | None = None,
        vkitti_root: str | None = None,
        hypersim_size: tuple[int, int] = (576, 768),
        hypersim_probability: float = 0.9,
        seed: int = 0,
        test_dataset: str = "synthetic",
        test_root: str | None = None,
        test_filelist: str | None = None,
    ):
        super().__init__()
        if source not in ("synthetic", "hypersim_vkitti"):
            raise ValueError(f"source must be 'synthetic' or 'hypersim_vkitti'; got {source!r}")
        if source == "hypersim_vkitti" and not (hypersim_root and vkitti_root):
            raise ValueError(
                "source='hypersim_vkitti' needs hypersim_root and vkitti_root (see datasets/README.md)"
            )
        self.save_hyperparameters()

    def _train_loader(self, dataset: Dataset) -> DataLoader:
        hp = self.hparams
        return self.loader(
            dataset, hp.batch_size, hp.num_workers, shuffle=True, drop_last=True, persistent_workers=True
        )

    def train_dataloader(self) -> DataLoader | MixedBatchLoader:
        hp = self.hparams
        if hp.source == "synthetic":
            scenes = SyntheticSceneDataset(hp.train_size, *hp.image_size, base_seed=hp.seed)
            return self._train_loader(AugmentedDataset(scenes, None, hp.flip_p, hp.seed))
        from zoo.data.depth_training import HypersimDataset, VirtualKITTI2Dataset

        hypersim = AugmentedDataset(
            HypersimDataset(hp.hypersim_root), tuple(hp.hypersim_size), hp.flip_p, hp.seed
        )
        vkitti = AugmentedDataset(VirtualKITTI2Dataset(hp.vkitti_root), None, hp.flip_p, hp.seed)
        return MixedBatchLoader(
            [self._train_loader(hypersim), self._train_loader(vkitti)],
            [hp.hypersim_probability, 1.0 - hp.hypersim_probability],
            seed=hp.seed,
        )

    def val_dataloader(self) -> DataLoader:
        hp = self.hparams
        scenes = SyntheticSceneDataset(hp.val_size, *hp.image_size, base_seed=VAL_SEED)
        return self.eval_loader(scenes, hp.batch_size, hp.num_workers, "val")

    def test_dataloader(self) -> DataLoader:
        hp = self.hparams
        if hp.test_dataset == "synthetic":
            scenes = SyntheticSceneDataset(hp.test_size, *hp.image_size, base_seed=TEST_SEED)
            return self.eval_loader(scenes, hp.batch_size, hp.num_workers, "test")
        from zoo.data.depth_benchmarks import DEPTH_EVAL_DATASETS
        from zoo.data.normal_benchmarks import DSINENormalDataset

        if hp.test_root is None:
            raise ValueError(f"test_dataset={hp.test_dataset!r} needs test_root (see datasets/README.md)")
        if hp.test_dataset.startswith("normals:"):
            dataset = DSINENormalDataset(hp.test_root, hp.test_dataset.split(":", 1)[1], hp.test_filelist)
        elif hp.test_dataset in DEPTH_EVAL_DATASETS:
            if hp.test_filelist is None:
                raise ValueError(f"test_dataset={hp.test_dataset!r} needs test_filelist")
            dataset = DEPTH_EVAL_DATASETS[hp.test_dataset](hp.test_root, hp.test_filelist)
        else:
            raise ValueError(
                f"unknown test_dataset {hp.test_dataset!r}; expected 'synthetic', one of "
                f"{sorted(DEPTH_EVAL_DATASETS)} or 'normals:<set>'"
            )
        return self.eval_loader(dataset, 1, hp.num_workers, hp.test_dataset)
