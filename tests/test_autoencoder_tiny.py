"""The fast autoencoder path: AutoencoderTiny routes in the backbone, the predictors' vae=, the tiny TAESD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.backbones import MissingWeightsError, StableDiffusionBackbone
from zoo.backbones.autoencoder_tiny import TinyAutoencoderRoute
from zoo.models.autoencoder_tiny import tiny_taesd
from zoo.registry import REPO_ROOT

SHIPPED = REPO_ROOT / "checkpoints" / "tiny" / "taesd"


@pytest.fixture(scope="module")
def taesd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random narrow AutoencoderTiny saved as a TAESD-format folder."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("taesd")
    tiny_taesd(8).save_pretrained(folder, safe_serialization=True)
    return folder


def test_routes_send_decode_or_both_through_the_tiny_autoencoder(tiny_backbone, taesd_folder: Path) -> None:
    full_vae = tiny_backbone.vae
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = tiny_backbone.encode(images)  # [2, 4, 4, 4]
    full_decoded = tiny_backbone.decode(latents)
    tiny = StableDiffusionBackbone.load_tiny_autoencoder(taesd_folder)
    with torch.no_grad():
        tiny_latents, tiny_decoded = tiny.encode(images).latents, tiny.decode(latents).sample

    tiny_backbone.use_tiny_autoencoder(taesd_folder, "tiny-decode")
    assert isinstance(tiny_backbone.vae, TinyAutoencoderRoute)
    assert torch.allclose(tiny_backbone.encode(images), latents)  # encoding stays with the VAE
    # TAESD decodes scaled latents directly: the route undoes the backbone's division by the scaling factor.
    assert torch.allclose(tiny_backbone.decode(latents), tiny_decoded, atol=1e-5)
    assert tiny_backbone.scaling_factor == full_vae.config.scaling_factor

    tiny_backbone.use_tiny_autoencoder(taesd_folder, "tiny")
    assert torch.allclose(tiny_backbone.encode(images), tiny_latents, atol=1e-5)
    mean, std = tiny_backbone.encode_distribution(images)
    assert torch.equal(std, torch.zeros_like(mean))  # TAESD is deterministic: sampling returns the mean
    assert torch.allclose(tiny_backbone.encode(images, sample=True), mean)

    tiny_backbone.use_tiny_autoencoder(None, "full")
    assert tiny_backbone.vae is full_vae
    assert torch.equal(tiny_backbone.decode(latents), full_decoded)


def test_a_routed_backbone_exports_the_full_vae(tiny_backbone, taesd_folder: Path, tmp_path: Path) -> None:
    tiny_backbone.use_tiny_autoencoder(taesd_folder, "tiny")
    tiny_backbone.save_pretrained(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "vae" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKL"


def test_missing_or_unnamed_tiny_autoencoder_errors(tiny_backbone, tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="madebyollin/taesd") as error:
        tiny_backbone.use_tiny_autoencoder(tmp_path / "nowhere", "tiny")
    assert "nowhere" in str(error.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingWeightsError, match="empty"):
        tiny_backbone.use_tiny_autoencoder(tmp_path / "empty", "tiny-decode")
    with pytest.raises(ValueError, match="needs tiny_autoencoder"):
        tiny_backbone.use_tiny_autoencoder(None, "tiny")
    with pytest.raises(ValueError, match="vae must be one of"):
        tiny_backbone.use_tiny_autoencoder(tmp_path, "fast")


def test_predictors_take_the_vae_switch(taesd_folder: Path) -> None:
    from zoo.inference.lotus import LotusPredictor
    from zoo.inference.pose import PosePredictor

    image = np.random.default_rng(0).random((32, 32, 3)).astype(np.float32)
    lotus = LotusPredictor.from_pretrained(
        str(REPO_ROOT / "checkpoints" / "tiny" / "lotus_depth_d"),
        vae="tiny-decode",
        tiny_autoencoder=str(taesd_folder),
    )
    assert isinstance(lotus.backbone.vae, TinyAutoencoderRoute) and lotus.backbone.vae.mode == "tiny-decode"
    assert lotus(image, processing_resolution=32).prediction.shape == (1, 32, 32, 1)
    pose = PosePredictor.from_pretrained(
        REPO_ROOT / "checkpoints" / "tiny" / "sdpose_body", vae="tiny", tiny_autoencoder=taesd_folder
    )
    assert pose.model.backbone.vae.mode == "tiny"
    assert pose((image * 255).astype(np.uint8)).keypoints[0].shape == (1, 17, 2)


BUILD = "python tools/train_tiny.py configs/tiny/taesd.yaml --out checkpoints/tiny/taesd"


@pytest.mark.skipif(not (SHIPPED / "config.json").is_file(), reason=f"not built yet: {BUILD}")
def test_shipped_tiny_taesd_is_small_and_follows_the_tiny_vae(tiny_backbone) -> None:
    size = sum(path.stat().st_size for path in SHIPPED.rglob("*") if path.is_file())
    assert size <= 2 * 1024 * 1024, f"{SHIPPED} holds {size} bytes (budget 2 MB)"
    from zoo.data.synthetic import SyntheticSceneDataset

    scenes = [SyntheticSceneDataset(4, 64, 64, base_seed=3_000_000)[i] for i in range(4)]
    images = torch.stack([scene["image"] for scene in scenes]) * 2 - 1  # [4, 3, 64, 64], never trained on
    latents = tiny_backbone.encode(images)
    decoded = tiny_backbone.decode(latents)
    tiny = StableDiffusionBackbone.load_tiny_autoencoder(SHIPPED)
    assert tiny.dtype == torch.float32  # stored in fp16, loaded in the VAE's dtype
    with torch.no_grad():
        encoder_error = (tiny.encode(images).latents - latents).pow(2).mean() / latents.var()
        decoder_mse = ((tiny.decode(latents).sample.clamp(-1, 1) - decoded.clamp(-1, 1)) / 2).pow(2).mean()
    assert encoder_error.sqrt() < 0.5
    assert 10 * torch.log10(1 / decoder_mse) > 20  # dB against the VAE's own decode
