"""Benchmark: Mustafar encoder images/s at s = 0 and s = 4 (one batched UNet call); tokens per site."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from zoo.backbones import StableDiffusionBackbone
from zoo.benchmarks.timing import best_of
from zoo.models.mustafar.features import DEFAULT_SITE, SDFeatureExtractor, site_channels
from zoo.registry import REPO_ROOT
from zoo.utils.threads import pinned_threads

TINY_BACKBONE = REPO_ROOT / "checkpoints" / "tiny" / "backbone"
SD2_UNET = REPO_ROOT / "zoo" / "backbones" / "configs" / "sd2_base" / "unet.json"
SITES = (
    DEFAULT_SITE,  # U-L1-R1-B0-Cross-Q
    "up_blocks.1.attentions.2.transformer_blocks.0.attn2:query",  # U-L1-R2-B0-Cross-Q
    "up_blocks.2.attentions.1.transformer_blocks.0.attn2:query",  # U-L2-R1-B0-Cross-Q
    "down_blocks.2.attentions.0.transformer_blocks.0.attn2:query",  # D-L2-R0-B0-Cross-Q
)
QUESTION = "how many red spheres are there?"


def _sd2_tokens(site: str, resolution: int) -> tuple[int, int]:
    """(tokens, channels) of an SD 2.x site at `resolution` from the UNet config (no weights needed)."""
    config = json.loads(SD2_UNET.read_text())
    blocks, widths = len(config["block_out_channels"]), config["block_out_channels"]
    kind, index = site.split(".")[0], int(site.split(".")[1])
    level = index if kind == "down_blocks" else blocks - 1 - index
    side = math.ceil(resolution / 8 / 2**level)
    return side * side, widths[level]


def _has_site(unet: torch.nn.Module, site: str) -> bool:
    try:
        site_channels(unet, site)
    except ValueError:
        return False
    return True


def run(
    backbone: str | Path = TINY_BACKBONE,
    batch_size: int = 8,
    image_size: int = 64,
    repeats: int = 5,
    threads: int = 1,
    dry_run: bool = False,
    metrics_out: str | Path | None = None,
) -> dict[str, float]:
    """Time the extractor at s = 0 and s = 4 on the tiny backbone; print the tables; return the numbers."""
    if dry_run:
        batch_size, repeats = 1, 1
    with pinned_threads(threads):
        sd = StableDiffusionBackbone.from_pretrained(backbone, load_text_encoder=True).eval()
        extractor = SDFeatureExtractor(sd, [DEFAULT_SITE])
        images = torch.rand(batch_size, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        prompts = [QUESTION] * batch_size
        seconds = {
            scale: best_of(lambda scale=scale: extractor(images, prompts, guidance_scale=scale), repeats)
            for scale in (0.0, 4.0)
        }
        present = [
            site for site in SITES if _has_site(sd.unet, site)
        ]  # the tiny UNet has 2 attentions per block
        tokens = {
            site: SDFeatureExtractor(sd, [site]).num_tokens((image_size, image_size)) for site in present
        }
    results = {
        "images_per_s_s0": batch_size / seconds[0.0],
        "images_per_s_s4": batch_size / seconds[4.0],
        "cost_ratio_s4_s0": seconds[4.0] / seconds[0.0],
        "tokens_per_image": float(tokens[DEFAULT_SITE]),
        "channels": float(extractor.feature_dim),
    }
    print(
        f"Mustafar SD encoder ({Path(backbone).name}, {threads} thread(s), batch {batch_size} of "
        f"{image_size}x{image_size}, t=50, {DEFAULT_SITE})"
    )
    print("| guidance | UNet calls | images/s | cost vs s = 0 |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| s = 0 (unconditional only) | 1 x {batch_size} | {results['images_per_s_s0']:.1f} | 1.00x |")
    print(
        f"| s = 4 (uncond + cond, one batched call) | 1 x {2 * batch_size} | "
        f"{results['images_per_s_s4']:.1f} | "
        f"{results['cost_ratio_s4_s0']:.2f}x |"
    )
    print()
    print(f"| site | tiny: tokens x channels at {image_size} px | SD 2.1-base: tokens x channels at 512 px |")
    print("| --- | ---: | ---: |")
    for site in SITES:
        sd2 = _sd2_tokens(site, 512)
        tiny = f"{tokens[site]} x {site_channels(sd.unet, site)}" if site in tokens else "no such site"
        print(f"| `{site}` | {tiny} | {sd2[0]} x {sd2[1]} |")
    if metrics_out is not None:
        Path(metrics_out).write_text(
            json.dumps({k: round(v, 4) for k, v in results.items()}, indent=2) + "\n"
        )
    return results


if __name__ == "__main__":
    run()
