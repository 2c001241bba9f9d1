"""Typed batch items: one image, a clip of T frames, or an image with text; their collate functions.

Every dataset of the zoo returns dicts of one of these kinds. The keys listed here are the contract between
readers and models; a dataset may add its own (boxes, masks, ids), which are collated the same way. Each item
carries `sample_id`, its index in the split: evaluators key their state by it so that distributed evaluation
can merge ranks and drop the repeats of a padding sampler (see zoo.evaluation.base).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, TypedDict

import torch
from torch.utils.data import Dataset, default_collate

SampleKind = Literal["image", "clip", "image_text"]


class ImageItem(TypedDict, total=False):
    """One image (or one top-down crop) and its targets."""

    image: torch.Tensor  # [3, H, W] float in [0, 1]
    sample_id: int


class ClipItem(TypedDict, total=False):
    """T frames of one video around a key frame, cropped with one box; targets are the key frame's."""

    frames: torch.Tensor  # [T, 3, H, W] float in [0, 1]; the key frame is frames[key_index]
    key_index: int
    sample_id: int


class ImageTextItem(TypedDict, total=False):
    """An image with its text (a caption, or a question and its answer)."""

    image: torch.Tensor  # [3, H, W] float in [0, 1]
    text: str
    sample_id: int


# What each kind must hold, and the shape of its pixel tensor (checked on the first item of a dataset).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "clip": ("frames", "key_index"),
    "image_text": ("image", "text"),
}
_PIXEL_DIMS = {"image": ("image", 3), "clip": ("frames", 4), "image_text": ("image", 3)}


def check_item(kind: SampleKind, item: dict[str, Any], where: str) -> None:
    """Raise a clear error when `item` (from `where`) is not a valid item of `kind`."""
    if kind not in REQUIRED_KEYS:
        raise ValueError(f"unknown sample kind {kind!r}; expected one of {sorted(REQUIRED_KEYS)}")
    if not isinstance(item, dict):
        raise TypeError(f"{where}: items must be dicts; got {type(item).__name__}")
    missing = [key for key in REQUIRED_KEYS[kind] if key not in item]
    if missing:
        raise KeyError(f"{where}: a {kind!r} item needs {missing}; it has {sorted(item)}")
    key, dims = _PIXEL_DIMS[kind]
    pixels = item[key]
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != dims or pixels.shape[-3] != 3:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"{where}: {key!r} must be a {dims}-d tensor with 3 channels at dim -3; got {shape}")


def collate_items(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors and numbers (torch's default collate); strings and other values stay as lists."""
    batch: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], str | bytes) or values[0] is None:
            batch[key] = values
        else:
            batch[key] = default_collate(values)
    return batch


COLLATE: dict[str, Callable[[Sequence[dict[str, Any]]], dict[str, Any]]] = {
    "image": collate_items,  # [B, 3, H, W]
    "clip": collate_items,  # frames [B, T, 3, H, W]
    "image_text": collate_items,  # image [B, 3, H, W], text list[str]
}


class IndexedDataset(Dataset):
    """A dataset whose items gain `sample_id` (their index) and are checked against their kind once."""

    def __init__(self, dataset: Dataset, kind: SampleKind, name: str = "dataset") -> None:
        self.dataset, self.kind, self.name = dataset, kind, name
        self._checked = False

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        if not self._checked:
            check_item(self.kind, item, f"{self.name}[{index}]")
            self._checked = True
        item["sample_id"] = index
        return item
