"""The tiny backbone: SD2-shaped VAE/UNet/CLIP/scheduler builders at a small width; loading the shipped one.

Its training recipe (VAE, then text encoder and UNet as text-to-image) lives in zoo.recipes.tiny_backbone.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from zoo.backbones.stable_diffusion import StableDiffusionBackbone

TEXT_WIDTH = 32


def tiny_vae() -> AutoencoderKL:
    """AutoencoderKL with the SD layout (8x downsampling, 4 latent channels) at a small width."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
    )


def tiny_unet() -> UNet2DConditionModel:
    """UNet2DConditionModel with SD2's block layout and cross-attention, no class embedding (as SD2).

    Families that use the Lotus/SDPose task switcher add the 4-d projection when they load it. Latents are 8x8
    for the 64x64 training images.
    """
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=(
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=TEXT_WIDTH,
        norm_num_groups=8,
        use_linear_projection=True,  # as in SD 2.x
    )


def tiny_scheduler() -> DDPMScheduler:
    """SD2-base's training schedule: scaled-linear betas 0.00085-0.012 over 1000 steps, epsilon prediction."""
    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="epsilon",
        clip_sample=False,
        steps_offset=1,
    )


def _bytes_to_unicode() -> list[str]:
    # Byte-level BPE alphabet: printable bytes map to themselves, the rest to code points above 255.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer written locally (no merges): every byte is a token."""
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(tokens)}, merges=[], model_max_length=77
    )


def tiny_text_encoder(vocab_size: int) -> CLIPTextModel:
    """A two-layer CLIP text encoder of width 32."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config)


def tiny_backbone_path() -> Path:
    """Folder of the committed tiny backbone."""
    return Path(__file__).resolve().parents[2] / "checkpoints" / "tiny" / "backbone"


def load_tiny_backbone(**kwargs) -> StableDiffusionBackbone:
    """Load the committed tiny backbone (kwargs go to StableDiffusionBackbone.from_pretrained)."""
    path = tiny_backbone_path()
    if not (path / "vae").is_dir():
        raise FileNotFoundError(f"tiny backbone missing at {path}; rebuild it with `make tiny-backbone`")
    return StableDiffusionBackbone.from_pretrained(path, **kwargs)


__all__ = [
    "TEXT_WIDTH",
    "load_tiny_backbone",
    "tiny_backbone_path",
    "tiny_scheduler",
    "tiny_text_encoder",
    "tiny_tokenizer",
    "tiny_unet",
    "tiny_vae",
]
