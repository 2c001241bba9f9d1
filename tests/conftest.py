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
    root = _realdata_root().resolve()  # resolved: readers refuse files whose real path leaves the root
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
    """A fresh StableDiffusionBackbone loaded from the tiny assets with the task switcher (float32, eval)."""
    import torch

    from zoo.backbones import StableDiffusionBackbone

    torch.manual_seed(0)  # the task switcher the families add to the (SD2-like) tiny UNet is seeded
    return StableDiffusionBackbone.from_pretrained(
        tiny_backbone_dir, with_task_switcher=True, load_text_encoder=True
    ).eval()


@pytest.fixture(scope="session")
def mmpose_topdown_affine():
    """mmpose's TopdownAffine(use_udp=True) factory, loaded from its file
    (`mmpose.datasets` needs xtcocotools).

    Loaded once per process: mmpose's registry refuses a second registration of TopdownAffine, so a module
    that another test already imported (through `mmpose.datasets`) is reused.
    """
    import importlib.util
    import sys

    mmpose = pytest.importorskip("mmpose")
    module = sys.modules.get("mmpose.datasets.transforms.topdown_transforms") or sys.modules.get(
        "mmpose_topdown_transforms"
    )
    if module is None:
        from mmpose.registry import TRANSFORMS

        path = Path(mmpose.__file__).parent / "datasets" / "transforms" / "topdown_transforms.py"
        spec = importlib.util.spec_from_file_location("mmpose_topdown_transforms", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["mmpose_topdown_transforms"] = module
        # Loading the file registered TopdownAffine; free the name so that a later `import mmpose.datasets`
        # (the mmpose metric tests) can register mmpose's own copy instead of failing as a duplicate.
        TRANSFORMS._module_dict.pop("TopdownAffine", None)
    return lambda input_size: module.TopdownAffine(input_size=input_size, use_udp=True)
