"""The committed tiny backbone: its files match its recipe, its measured quality reproduces, and it rebuilds."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.tiny import TinyRecipe, build_tiny_backbone, evaluate_vae_roundtrip
from zoo.data.synthetic import SyntheticSceneDataset
from zoo.utils.files import sha256_file


def _record(folder):
    return json.loads((folder / "recipe.json").read_text())


def test_committed_files_match_the_recipe_hashes(tiny_backbone_dir):
    record = _record(tiny_backbone_dir)
    assert {"vae/config.json", "unet/config.json", "empty_prompt_embeds.safetensors"} <= set(record["files"])
    for name, digest in record["files"].items():
        assert sha256_file(tiny_backbone_dir / name) == digest, name
    assert not list(tiny_backbone_dir.rglob("*.bin")), "weights must be safetensors"


def test_recorded_vae_quality_reproduces(tiny_backbone_dir):
    record = _record(tiny_backbone_dir)
    recipe = TinyRecipe(**record["recipe"])
    backbone = StableDiffusionBackbone.from_pretrained(tiny_backbone_dir).eval()
    data = SyntheticSceneDataset(recipe.heldout_scenes, 64, 64, base_seed=recipe.heldout_seed)
    with torch.no_grad():
        quality = evaluate_vae_roundtrip(backbone, [data[i] for i in range(recipe.heldout_scenes)])
    for name, value in record["heldout_quality"].items():
        assert quality[name] == pytest.approx(value, rel=1e-3, abs=1e-4), name


def test_build_writes_a_loadable_folder_with_its_recipe(tmp_path):
    recipe = TinyRecipe(steps=2, batch_size=2, train_scenes=4, heldout_scenes=2)
    record = build_tiny_backbone(tmp_path / "tiny", recipe, progress=False)
    assert record["recipe"]["steps"] == 2
    assert set(record["heldout_quality"]) == {"disparity_absrel", "normals_mean_angle_deg",
                                              "normals_median_angle_deg", "rgb_psnr_db"}
    loaded = StableDiffusionBackbone.from_pretrained(tmp_path / "tiny", load_text_encoder=True)
    assert loaded.vae.config.latent_channels == 4 and loaded.unet.config.class_embed_type == "projection"
    assert loaded.vae.config.scaling_factor != 0.18215  # measured on the training images, not copied from SD


@pytest.mark.slow
def test_rebuild_is_bit_for_bit(tiny_backbone_dir, tmp_path):
    """`make tiny-backbone` reproduces the committed bytes (same recipe, one thread; tens of minutes)."""
    record = _record(tiny_backbone_dir)
    rebuilt = build_tiny_backbone(tmp_path / "tiny", TinyRecipe(**record["recipe"]), progress=False)
    assert rebuilt["files"] == record["files"]
