"""Shared pytest fixtures: locations of the real sample data and the tiny backbone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _realdata_root() -> Path:
    # CI lays shared/ beside the clone; ZOO_REALDATA overrides for other layouts.
    return Path(os.environ.get("ZOO_REALDATA", REPO_ROOT.parent / "shared" / "realdata"))


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Root of the real COCO / HumanArt / PoseTrack18 / RGB-D samples (read-only)."""
    root = _realdata_root()
    if not root.is_dir():
        pytest.fail(f"real sample data not found at {root}; set ZOO_REALDATA to its folder")
    return root


@pytest.fixture(scope="session")
def tiny_backbone_dir() -> Path:
    """The committed tiny backbone folder (diffusers layout)."""
    from zoo.backbones.tiny import tiny_backbone_path

    path = tiny_backbone_path()
    if not (path / "unet").is_dir():
        pytest.fail(f"tiny backbone missing at {path}; run `make tiny-backbone`")
    return path


@pytest.fixture()
def tiny_backbone(tiny_backbone_dir: Path):
    """A fresh StableDiffusionBackbone loaded from the tiny assets (float32, eval mode)."""
    import torch

    from zoo.backbones import StableDiffusionBackbone

    torch.manual_seed(0)
    return StableDiffusionBackbone.from_pretrained(tiny_backbone_dir, load_text_encoder=True).eval()
