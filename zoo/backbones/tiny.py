"""The tiny backbone: SD2-shaped VAE/UNet/CLIP at a small width, with a VAE trained on synthetic images."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from zoo.backbones.stable_diffusion import StableDiffusionBackbone, encode_prompts
from zoo.backbones.task_switcher import TASK_CODE_DIM
from zoo.data.depth_targets import HIGH_QUANTILE, LOW_QUANTILE, RANGE_EPS, normalize_depth, target_to_rgb
from zoo.evaluation.normals import angular_error
from zoo.utils.files import atomic_write_json, sha256_file

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
    """UNet2DConditionModel with SD2's block layout, cross-attention and the 4-d task-switcher projection."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=TEXT_WIDTH,
        norm_num_groups=8,
        use_linear_projection=True,  # as in SD 2.x
        class_embed_type="projection",
        projection_class_embeddings_input_dim=TASK_CODE_DIM,
    )


def _bytes_to_unicode() -> list[str]:
    # Byte-level BPE alphabet: printable bytes map to themselves, the rest to code points above 255.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def tiny_tokenizer() -> CLIPTokenizer:
    """A character-level CLIP tokenizer written locally (no merges): every byte is a token."""
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={token: index for index, token in enumerate(tokens)}, merges=[], model_max_length=77)


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


@dataclass
class TinyRecipe:
    """Everything that determines the tiny backbone's bytes."""

    seed: int = 0
    steps: int = 3000
    batch_size: int = 8
    learning_rate: float = 2e-3
    crop: int = 64
    train_scenes: int = 512
    heldout_scenes: int = 64
    heldout_seed: int = 1_000_000
    kl_weight: float = 1e-6
    threads: int = 1


def _vae_training_images(scenes: list, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One batch of [B, 3, crop, crop] images in [-1, 1]: RGB renders, depth targets and normal maps, mixed."""
    batch = []
    for sample in scenes:
        kind = int(torch.randint(3, (1,), generator=generator))
        if kind == 0:
            image = sample["image"] * 2 - 1
        elif kind == 1:
            image = target_to_rgb(normalize_depth(sample["depth"], sample["valid"], "trunc_disparity"))
        else:
            image = sample["normals"]
        height, width = image.shape[-2:]
        top = int(torch.randint(height - crop + 1, (1,), generator=generator))
        left = int(torch.randint(width - crop + 1, (1,), generator=generator))
        batch.append(image[:, top : top + crop, left : left + crop])
    return torch.stack(batch)


def evaluate_vae_roundtrip(backbone: StableDiffusionBackbone, scenes: list) -> dict[str, float]:
    """VAE round-trip quality on held-out scenes: disparity AbsRel, normal angular error, RGB PSNR."""
    absrel, angles, psnr = [], [], []
    for sample in scenes:
        depth, valid = sample["depth"], sample["valid"]
        target = normalize_depth(depth, valid, "trunc_disparity")  # [1, H, W]
        images = torch.stack([target_to_rgb(target), sample["normals"], sample["image"] * 2 - 1])  # [3, 3, H, W]
        recon = backbone.decode(backbone.encode(images), size=images.shape[-2:]).clamp(-1, 1)
        # Disparity: invert the normalisation with the same quantiles, score where the target was not clipped.
        disparity = 1.0 / depth.clamp_min(1e-8)
        quantiles = torch.quantile(disparity[valid & (depth > 0)], torch.tensor([LOW_QUANTILE, HIGH_QUANTILE]))
        scale = (quantiles[1] - quantiles[0] + RANGE_EPS) / 2.0
        predicted = (recon[0].mean(0, keepdim=True) + 1.0) * scale + quantiles[0]
        inside = valid & (target.abs() < 1.0)
        absrel.append(((predicted - disparity).abs() / disparity)[inside].mean().item())
        angles.append(angular_error(recon[1], sample["normals"])[0][valid[0]])
        mse = ((recon[2] - images[2]) / 2).pow(2).mean().item()
        psnr.append(10 * math.log10(1.0 / max(mse, 1e-12)))
    all_angles = torch.cat(angles)
    return {
        "disparity_absrel": float(np.mean(absrel)),
        "normals_mean_angle_deg": float(all_angles.mean()),
        "normals_median_angle_deg": float(all_angles.median()),
        "rgb_psnr_db": float(np.mean(psnr)),
    }


def build_tiny_backbone(out: str | Path, recipe: TinyRecipe | None = None, progress: bool = True) -> dict:
    """Build the tiny backbone from scratch, train its VAE, measure it and save it under `out`.

    Returns the recipe record written to `out/recipe.json` (recipe, measured quality, file hashes).
    """
    recipe = recipe or TinyRecipe()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)  # a fixed thread count keeps CPU reductions, hence bytes, reproducible
    try:
        return _build(out, recipe, progress)
    finally:
        torch.set_num_threads(previous_threads)


def _build(out: str | Path, recipe: TinyRecipe, progress: bool) -> dict:
    from zoo.data.synthetic.scenes import SyntheticSceneDataset

    torch.manual_seed(recipe.seed)
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(len(tokenizer)).eval()
    vae, unet = tiny_vae(), tiny_unet()
    empty = encode_prompts(text_encoder, tokenizer, [""], pad=False)  # [1, 2, 32]
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, prediction_type="sample")
    backbone = StableDiffusionBackbone(vae, unet, empty, scheduler, text_encoder, tokenizer)

    train_set = SyntheticSceneDataset(recipe.train_scenes, 96, 96, base_seed=recipe.seed)
    heldout = [SyntheticSceneDataset(recipe.heldout_scenes, 64, 64, base_seed=recipe.heldout_seed)[i]
               for i in range(recipe.heldout_scenes)]
    scenes = [train_set[i] for i in range(len(train_set))]

    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, recipe.learning_rate, total_steps=recipe.steps,
                                                   pct_start=0.05)
    generator = torch.Generator().manual_seed(recipe.seed)
    started = time.time()
    for _ in tqdm(range(recipe.steps), desc="tiny VAE", disable=not progress):
        picks = torch.randint(len(scenes), (recipe.batch_size,), generator=generator).tolist()
        images = _vae_training_images([scenes[i] for i in picks], recipe.crop, generator)  # [B, 3, c, c]
        posterior = vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, images) + recipe.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    vae.requires_grad_(False).eval()

    # Like SD's 0.18215: scale latents to unit standard deviation over the training images.
    with torch.no_grad():
        probe = _vae_training_images(scenes[:96], recipe.crop, torch.Generator().manual_seed(1))
        std = vae.encode(probe).latent_dist.mode().std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    with torch.no_grad():
        quality = evaluate_vae_roundtrip(backbone, heldout)

    out = Path(out)
    backbone.save_pretrained(out)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != "recipe.json")
    record = {
        "recipe": asdict(recipe),
        "train_seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        "heldout_quality": {k: round(v, 5) for k, v in quality.items()},
        "files": {str(p.relative_to(out)): sha256_file(p) for p in files},
    }
    atomic_write_json(out / "recipe.json", record)
    return record


def tiny_backbone_path() -> Path:
    """Folder of the committed tiny backbone."""
    return Path(__file__).resolve().parents[2] / "checkpoints" / "tiny" / "backbone"


def load_tiny_backbone(**kwargs) -> StableDiffusionBackbone:
    """Load the committed tiny backbone (kwargs go to StableDiffusionBackbone.from_pretrained)."""
    path = tiny_backbone_path()
    if not (path / "vae").is_dir():
        raise FileNotFoundError(f"tiny backbone missing at {path}; rebuild it with `make tiny-backbone`")
    return StableDiffusionBackbone.from_pretrained(path, **kwargs)


def describe(record: dict) -> str:
    """A printable quality table of a recipe record."""
    quality = record["heldout_quality"]
    rows = [("disparity AbsRel (target <= 0.03)", quality["disparity_absrel"]),
            ("normals mean angle deg (target <= 4)", quality["normals_mean_angle_deg"]),
            ("normals median angle deg", quality["normals_median_angle_deg"]),
            ("RGB PSNR dB", quality["rgb_psnr_db"])]
    return "\n".join(["| VAE round trip on held-out scenes | value |", "| --- | --- |"]
                     + [f"| {name} | {value:.4f} |" for name, value in rows]) + "\n"


__all__ = ["TinyRecipe", "build_tiny_backbone", "load_tiny_backbone", "tiny_backbone_path", "describe",
           "tiny_vae", "tiny_unet", "tiny_tokenizer", "tiny_text_encoder", "evaluate_vae_roundtrip"]
