"""Data for text-to-image training: captioned synthetic images (zoo.data.synthetic.captions), three splits."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from zoo.data.datamodule import ZooDataModule
from zoo.data.synthetic.captions import CaptionDataset


class RenderOnce(Dataset):
    """Keeps each rendered item after its first use, the image as uint8 (as a PNG would store it).

    Rendering costs as much as a tiny training step; synthetic items are fixed per index, so epochs after the
    first only read memory (about 12 KB per 64x64 item).
    """

    def __init__(self, dataset: CaptionDataset):
        self.dataset = dataset
        self._items: dict[int, tuple[torch.Tensor, str]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        """An image_text item: image [3, H, W] in [0, 1] (8-bit steps), text (the caption), index []."""
        if index not in self._items:
            item = self.dataset[index]
            self._items[index] = ((item["image"] * 255).round().to(torch.uint8), item["text"])
        image, text = self._items[index]
        return {"image": image.float() / 255, "text": text, "index": torch.tensor(index, dtype=torch.long)}


class CaptionDataModule(ZooDataModule):
    """Train/val/test splits of captioned images (image_text items; evaluation items carry sample_id).

    No flips: captions name left and right. The shuffle order comes from a generator seeded by `seed`, so a
    run is repeatable whatever else touched the global RNG.
    """

    sample_kind = "image_text"

    def __init__(
        self,
        train_size: int = 8192,
        val_size: int = 64,
        test_size: int = 256,
        image_size: tuple[int, int] = (64, 64),
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        height, width = image_size
        self.train_set = RenderOnce(CaptionDataset(train_size, "train", height, width))
        self.val_set = RenderOnce(CaptionDataset(val_size, "val", height, width))
        self.test_set = RenderOnce(CaptionDataset(test_size, "test", height, width))

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (full batches only)."""
        sampler = RandomSampler(self.train_set, generator=torch.Generator().manual_seed(self.hparams.seed))
        return self.loader(
            self.train_set, self.hparams.batch_size, self.hparams.num_workers, sampler=sampler, drop_last=True
        )

    def val_dataloader(self) -> DataLoader:
        """Held-out validation batches in order."""
        return self.eval_loader(
            self.val_set, self.hparams.batch_size, self.hparams.num_workers, "captions val"
        )

    def test_dataloader(self) -> DataLoader:
        """Held-out test batches in order."""
        return self.eval_loader(
            self.test_set, self.hparams.batch_size, self.hparams.num_workers, "captions test"
        )
