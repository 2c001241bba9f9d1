"""Outputs do not depend on how input tensors are strided: backbone entries and every predictor (issue 15)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.backbones import StableDiffusionBackbone
from zoo.codecs import decode_udp_batched
from zoo.data.images import load_rgb_uint8
from zoo.data.transforms import TopDownTransform

PHOTO = "coco/000000196141.jpg"
BOXES = np.array([[50.0, 60.0, 250.0, 400.0], [300.0, 80.0, 420.0, 330.0]], dtype=np.float32)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same values as a contiguous, a channels-last and a non-contiguous (strided view) tensor."""
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype)
    wide[..., ::2] = x
    views = {
        "contiguous": x.contiguous(),
        "channels_last": x.contiguous(memory_format=torch.channels_last)
        if x.ndim == 4
        else x.permute(1, 2, 0).contiguous().permute(2, 0, 1),
        "strided": wide[..., ::2],
    }
    assert not views["strided"].is_contiguous() and not views["channels_last"].is_contiguous()
    for view in views.values():
        assert torch.equal(view, x)
    return views


def _crops(realdata: Path, size: tuple[int, int]) -> torch.Tensor:
    """Black-bordered UDP crops of a real photo in [-1, 1] [2, 3, h, w]: where CPU GroupNorm layouts disagree
    most."""
    image = load_rgb_uint8(realdata / PHOTO)
    transform = TopDownTransform(size)
    crops = [transform(image, box, np.zeros((17, 2)), np.zeros(17))["image"] for box in BOXES]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 127.5 - 1  # [2, 3, h, w]


@pytest.fixture(scope="module")
def backbone(tiny_backbone_dir: Path) -> StableDiffusionBackbone:
    return StableDiffusionBackbone.from_pretrained(tiny_backbone_dir).eval()


def _entries(backbone: StableDiffusionBackbone, pixels: torch.Tensor, latents: torch.Tensor) -> dict:
    """Outputs of the three entries for inputs in every layout."""
    with torch.no_grad():
        return {
            "encode": {name: backbone.encode_distribution(x)[0] for name, x in _layouts(pixels).items()},
            "decode": {name: backbone.decode(x) for name, x in _layouts(latents).items()},
            "unet": {name: backbone.unet_forward(x) for name, x in _layouts(latents).items()},
        }


@pytest.mark.parametrize("channels_last", [False, True])
def test_backbone_entries_ignore_input_strides(
    backbone: StableDiffusionBackbone, realdata: Path, channels_last
):
    model = copy.deepcopy(backbone).configure(channels_last=channels_last)
    pixels = _crops(realdata, (192, 256))
    with torch.no_grad():
        latents = model.encode(pixels)  # [2, 4, 32, 24]
    for entry, outputs in _entries(model, pixels, latents).items():
        reference = outputs["contiguous"]
        for name, output in outputs.items():
            assert torch.equal(output, reference), (
                f"{entry} with a {name} input differs (channels_last={channels_last})"
            )


def _latent_error(
    model: StableDiffusionBackbone, exact: StableDiffusionBackbone, pixels: torch.Tensor
) -> float:
    with torch.no_grad():
        value = model.encode(pixels).double()
        reference = exact.vae.encode(pixels.double()).latent_dist.mean * exact.scaling_factor
    return float((value - reference).abs().max())


def test_channels_last_on_cpu_keeps_contiguous_accuracy(backbone: StableDiffusionBackbone, realdata: Path):
    """The issue's probe (latent vs float64) on a black-bordered 384x512 crop: channels-last costs no
    accuracy."""
    pixels = _crops(realdata, (384, 512))[:1]
    exact = copy.deepcopy(backbone).double()
    contiguous = _latent_error(backbone, exact, pixels)
    channels_last = copy.deepcopy(backbone).configure(channels_last=True)
    assert channels_last.vae.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # Plain channels-last GroupNorm on the CPU is about 1000x further from float64 than the contiguous one.
    assert contiguous < 5e-6
    assert _latent_error(channels_last, exact, pixels) < 4 * max(contiguous, 2e-6)


def test_configure_switches_the_declared_format_back(backbone: StableDiffusionBackbone, realdata: Path):
    model = copy.deepcopy(backbone).configure(channels_last=True).configure(channels_last=False)
    assert model.channels_last is False and not model._groupnorm_hooks
    assert all(p.is_contiguous() for p in model.parameters())
    pixels = _crops(realdata, (96, 128))
    with torch.no_grad():
        assert torch.equal(model.encode(pixels), backbone.encode(pixels))


def test_pose_predictor_ignores_input_strides(realdata: Path):
    predictor = zoo.load("tiny-sdpose-body")
    image = (
        torch.from_numpy(load_rgb_uint8(realdata / PHOTO)).permute(2, 0, 1).contiguous()
    )  # [3, H, W] uint8
    outputs = {name: predictor([x], boxes=[BOXES], flip_test=True) for name, x in _layouts(image).items()}
    for name, out in outputs.items():
        assert np.array_equal(out.keypoints[0], outputs["contiguous"].keypoints[0]), name
        assert np.array_equal(out.scores[0], outputs["contiguous"].scores[0]), name
    # The predictor's own crop batch is channels-last strided: its scores must equal a contiguous batch's.
    transform = TopDownTransform(predictor.input_size)
    crops = [
        transform(load_rgb_uint8(realdata / PHOTO), box, np.zeros((17, 2)), np.zeros(17))["image"]
        for box in BOXES
    ]
    batch = torch.from_numpy(np.stack(crops)).float().div(255).permute(0, 3, 1, 2).contiguous()
    heatmaps = predictor.model.predict_heatmaps(batch, predictor.metainfo.flip_indices)
    _, scores = decode_udp_batched(heatmaps)
    assert np.array_equal(outputs["contiguous"].scores[0], scores.numpy())


def test_lotus_predictor_ignores_input_strides(realdata: Path):
    predictor = zoo.load("tiny-lotus-depth-d")
    image = torch.from_numpy(load_rgb_uint8(realdata / PHOTO)[:128, :160]).permute(2, 0, 1).float() / 255
    batch = image[None]  # [1, 3, 128, 160]
    results = {
        name: predictor(x, processing_resolution=64, output_type="pt").prediction
        for name, x in _layouts(batch).items()
    }
    for name, prediction in results.items():
        assert torch.equal(prediction, results["contiguous"]), name
    # The model's tensor core (no loading step in between) at native resolution: straight into the backbone.
    native = {name: predictor.model.predict(x)[0] for name, x in _layouts(batch).items()}
    for name, prediction in native.items():
        assert torch.equal(prediction, native["contiguous"]), name
