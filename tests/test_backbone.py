"""The shared backbone contract (DESIGN.md section 3) on the tiny backbone."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from zoo.backbones import MissingWeightsError, StableDiffusionBackbone, task_code, widen_conv_in
from zoo.backbones.stable_diffusion import EMPTY_PROMPT_FILE


def test_task_codes_are_the_official_values():
    annotation = task_code("annotation")
    reconstruction = task_code("reconstruction")
    s1, c1 = math.sin(1.0), math.cos(1.0)
    assert torch.allclose(annotation, torch.tensor([s1, 0.0, c1, 1.0]))
    assert torch.allclose(reconstruction, torch.tensor([0.0, s1, 1.0, c1]))
    with pytest.raises(ValueError, match="unknown task"):
        task_code("depth")  # type: ignore[arg-type]


def test_save_load_round_trip_is_exact(tiny_backbone, tmp_path):
    tiny_backbone.save_pretrained(tmp_path / "copy")
    index = json.loads((tmp_path / "copy" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionBackbone"
    loaded = StableDiffusionBackbone.from_pretrained(tmp_path / "copy").eval()
    assert loaded.text_encoder is None  # inference needs only the cached empty prompt
    torch.testing.assert_close(loaded.empty_prompt_embeds, tiny_backbone.empty_prompt_embeds)
    for name, tensor in tiny_backbone.unet.state_dict().items():
        assert torch.equal(tensor, loaded.unet.state_dict()[name]), name
    latents = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(loaded.unet_forward(latents), tiny_backbone.unet_forward(latents))


def test_empty_prompt_is_bos_eos_only(tiny_backbone):
    embeds = tiny_backbone.empty_prompt_embeds
    assert embeds.shape == (1, 2, tiny_backbone.text_encoder.config.hidden_size)
    # Recomputing through the text stack gives the cached value (do_not_pad: BOS + EOS).
    from zoo.backbones.stable_diffusion import encode_prompts

    torch.testing.assert_close(
        encode_prompts(tiny_backbone.text_encoder, tiny_backbone.tokenizer, [""], pad=False), embeds
    )
    assert tiny_backbone.prompt_embeds(3).shape == (3, 2, embeds.shape[-1])


def test_arbitrary_prompts_differ(tiny_backbone):
    embeds = tiny_backbone.encode_prompts(["a red ball", "two blue cubes"])
    assert embeds.shape[:2] == (2, 77)
    assert not torch.allclose(embeds[0], embeds[1])


@pytest.mark.parametrize("size", [(37, 53), (64, 64), (9, 8)])
def test_encode_decode_keeps_odd_sizes(tiny_backbone, size):
    images = torch.rand(2, 3, *size) * 2 - 1
    latents = tiny_backbone.encode(images)
    assert latents.shape == (2, 4, math.ceil(size[0] / 8), math.ceil(size[1] / 8))
    decoded = tiny_backbone.decode(latents, size=size)
    assert decoded.shape == (2, 3, *size)


def test_encode_mode_is_deterministic_and_sample_is_not(tiny_backbone):
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(tiny_backbone.encode(images), tiny_backbone.encode(images))
    first = tiny_backbone.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    again = tiny_backbone.encode(images, sample=True, generator=torch.Generator().manual_seed(1))
    other = tiny_backbone.encode(images, sample=True, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)


def test_conv_in_widening_reproduces_the_original_output():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 16, 3, padding=1)
    widened = widen_conv_in(conv, 8)
    latent = torch.randn(2, 4, 7, 5)
    torch.testing.assert_close(widened(torch.cat([latent, latent], dim=1)), conv(latent))
    assert torch.equal(widened.bias, conv.bias)


def test_backbone_widening_updates_config(tiny_backbone):
    latent = torch.randn(1, 4, 4, 4)
    before = tiny_backbone.unet_forward(latent)
    tiny_backbone.set_unet_in_channels(8)
    assert tiny_backbone.unet.config.in_channels == 8
    torch.testing.assert_close(
        tiny_backbone.unet_forward(torch.cat([latent, latent], 1)), before, atol=1e-5, rtol=1e-4
    )


def test_feature_taps_shapes(tiny_backbone):
    channels = tiny_backbone.unet.config.block_out_channels
    sites = {
        "up3": "up_blocks.3",
        "up2": "up_blocks.2",
        "query": "up_blocks.1.attentions.1.transformer_blocks.0.attn2:query",
        "down0": "down_blocks.0",
    }
    taps = tiny_backbone.tap(sites)
    latents = torch.randn(3, 4, 16, 12)
    tiny_backbone.unet_forward(latents)
    features = taps.pop()
    taps.remove()
    assert features["up3"].shape == (3, channels[0], 16, 12)  # last up block: 1/8 of the input image
    assert features["up2"].shape == (3, channels[1], 16, 12)
    assert features["down0"].shape == (3, channels[0], 8, 6)  # after the first downsample
    # up_blocks.1 runs at 1/4 of the latent; the query has one token per position.
    inner_dim = tiny_backbone.unet.up_blocks[1].attentions[1].transformer_blocks[0].attn2.to_q.out_features
    assert features["query"].shape == (3, 4 * 3, inner_dim)
    with pytest.raises(ValueError, match="no module"):
        tiny_backbone.tap({"bad": "up_blocks.9"})


def test_taps_see_batches_of_frames(tiny_backbone):
    frames = torch.randn(2 * 3, 4, 8, 8)  # [B * T, 4, h, w]
    with_taps = tiny_backbone.tap({"up3": "up_blocks.3"})
    tiny_backbone.unet_forward(frames)
    features = with_taps.pop()["up3"].unflatten(0, (2, 3))  # [B, T, C, h, w]
    with_taps.remove()
    assert features.shape[:2] == (2, 3)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_backbone):
    torch.manual_seed(0)
    latents = torch.randn(2, 4, 8, 8)
    taps = tiny_backbone.tap({"up3": "up_blocks.3"})

    def gradients() -> dict[str, torch.Tensor]:
        tiny_backbone.unet.zero_grad(set_to_none=True)
        out = tiny_backbone.unet_forward(latents)
        loss = out.pow(2).mean() + taps.pop()["up3"].pow(2).mean()
        loss.backward()
        return {n: p.grad.clone() for n, p in tiny_backbone.unet.named_parameters() if p.grad is not None}

    tiny_backbone.train()
    plain = gradients()
    tiny_backbone.configure(gradient_checkpointing=True)
    assert tiny_backbone.unet.is_gradient_checkpointing
    checkpointed = gradients()
    taps.remove()
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_bf16_autocast_runs(tiny_backbone):
    tiny_backbone.configure(autocast_dtype="bf16")
    images = torch.rand(1, 3, 24, 24) * 2 - 1
    latents = tiny_backbone.encode(images)
    out = tiny_backbone.unet_forward(latents)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="unknown dtype"):
        tiny_backbone.configure(autocast_dtype="int8")


def test_missing_weights_error_says_what_to_download(tmp_path):
    with pytest.raises(MissingWeightsError, match="huggingface-cli download") as info:
        StableDiffusionBackbone.from_pretrained(tmp_path / "nowhere")
    assert "nowhere" in str(info.value)
    with pytest.raises(MissingWeightsError, match="stabilityai/stable-diffusion-2-base"):
        StableDiffusionBackbone.from_pretrained("stabilityai/stable-diffusion-2-base", local_files_only=True)


def test_folder_without_empty_prompt_or_text_encoder_is_refused(tiny_backbone_dir, tmp_path):
    folder = tmp_path / "partial"
    for part in ("vae", "unet"):
        shutil.copytree(tiny_backbone_dir / part, folder / part)
    with pytest.raises(MissingWeightsError, match=EMPTY_PROMPT_FILE):
        StableDiffusionBackbone.from_pretrained(folder)


def _write_official_lotus_like_folder(source: StableDiffusionBackbone, folder: Path) -> None:
    """Lay out a folder like jingheya/lotus-depth-g-*: unknown pipeline class, 8-channel UNet with projection.
    """
    source.set_unet_in_channels(8)
    for name, module in (("vae", source.vae), ("unet", source.unet), ("text_encoder", source.text_encoder)):
        module.save_pretrained(folder / name, safe_serialization=True)
    source.tokenizer.save_pretrained(folder / "tokenizer")
    source.scheduler.save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "LotusGPipeline",
        "_diffusers_version": "0.28.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
    }
    (folder / "model_index.json").write_text(json.dumps(index))


def test_loads_an_official_lotus_style_folder(tiny_backbone_dir, tmp_path):
    # An official Lotus folder carries the task switcher it was trained with; loading it needs no flag.
    source = StableDiffusionBackbone.from_pretrained(
        tiny_backbone_dir, with_task_switcher=True, load_text_encoder=True
    )
    source.eval()
    folder = tmp_path / "lotus-depth-g"
    _write_official_lotus_like_folder(source, folder)
    loaded = StableDiffusionBackbone.from_pretrained(folder)
    assert loaded.unet.config.in_channels == 8
    assert loaded.unet.config.class_embed_type == "projection"
    torch.testing.assert_close(loaded.empty_prompt_embeds, source.empty_prompt_embeds)
    sample = torch.randn(1, 8, 4, 4)
    torch.testing.assert_close(loaded.unet_forward(sample), source.unet_forward(sample))


def test_the_task_switcher_is_the_family_s_explicit_choice(tiny_backbone, tmp_path):
    from diffusers import UNet2DConditionModel

    config = dict(tiny_backbone.unet.config)
    config.update(class_embed_type=None, projection_class_embeddings_input_dim=None)
    plain = UNet2DConditionModel.from_config(config)
    folder = tmp_path / "sd2"
    tiny_backbone.save_pretrained(folder)
    shutil.rmtree(folder / "unet")
    plain.save_pretrained(folder / "unet")
    # An SD2-style UNet loaded plainly (a text-conditioned family) never grows a random class embedding ...
    kept = StableDiffusionBackbone.from_pretrained(folder)
    assert kept.unet.class_embedding is None
    # ... while Lotus and SDPose ask for the 4-d task switcher, as their official recipes add it to SD2.
    loaded = StableDiffusionBackbone.from_pretrained(folder, with_task_switcher=True)
    assert loaded.unet.config.class_embed_type == "projection"
    assert loaded.unet.class_embedding.linear_1.in_features == 4
    # The new projection is initialised (diffusers alone left it uninitialised), so the UNet runs finite.
    assert all(torch.isfinite(p).all() for p in loaded.unet.class_embedding.parameters())
    assert torch.isfinite(loaded.unet_forward(torch.randn(1, 4, 8, 8))).all()


def test_channels_last_and_math_attention_give_the_same_outputs(tiny_backbone):
    latents = torch.randn(2, 4, 8, 8)
    reference = tiny_backbone.unet_forward(latents)
    tiny_backbone.configure(attention="math", channels_last=True)
    torch.testing.assert_close(tiny_backbone.unet_forward(latents), reference, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="attention must be"):
        tiny_backbone.configure(attention="flash3")


def test_exports_can_reference_the_vae_of_their_base(tiny_backbone, tiny_backbone_dir, tmp_path):
    tiny_backbone.save_pretrained(
        tmp_path / "model", include_text_encoder=False, vae_from=str(tiny_backbone_dir)
    )
    assert not (tmp_path / "model" / "vae").exists()
    loaded = StableDiffusionBackbone.from_pretrained(tmp_path / "model")
    for name, tensor in tiny_backbone.vae.state_dict().items():
        assert torch.equal(tensor, loaded.vae.state_dict()[name]), name
    # A chain of references resolves too (a model fine-tuned from an exported model).
    loaded.save_pretrained(tmp_path / "second", include_text_encoder=False, vae_from=str(tmp_path / "model"))
    again = StableDiffusionBackbone.from_pretrained(tmp_path / "second")
    images = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(again.encode(images), tiny_backbone.encode(images))
