"""The tiny backbone's recipe: the VAE on synthetic renders, then text encoder and UNet as SD2-base.

Stage 1 (`build_vae_stage`) builds every component at the recipe seed and trains the VAE on synthetic renders,
depth and normal maps; stage 2 (`train_text_to_image`) trains the UNet and text encoder on captioned
images through the training CLI with configs/tiny/backbone_t2i.yaml; `install_text_to_image` writes the
trained weights into the folder. `build_tiny_backbone` runs all three and records seeds, steps, quality
and file hashes in recipe.json. One thread throughout: a fixed thread count keeps CPU reductions, hence
bytes, reproducible.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from tqdm import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from zoo.backbones.stable_diffusion import StableDiffusionBackbone, encode_prompts
from zoo.backbones.tiny import tiny_scheduler, tiny_text_encoder, tiny_tokenizer, tiny_unet, tiny_vae
from zoo.data.depth_targets import HIGH_QUANTILE, LOW_QUANTILE, RANGE_EPS, normalize_depth, target_to_rgb
from zoo.data.synthetic.captions import CaptionDataset, CaptionedImage
from zoo.evaluation.normals import angular_error
from zoo.models.t2i.evaluation import band_name, caption_following
from zoo.models.t2i.model import TextToImage
from zoo.utils.files import atomic_write_json, sha256_file
from zoo.utils.platform import kernel_platform, select_kernels

T2I_CONFIG = "configs/tiny/backbone_t2i.yaml"
CONTACT_SHEET = "docs/tiny_sd_samples.png"
GUIDANCE_SCALES = (1.0, 3.0, 7.0)
MEASUREMENT_FILES = ("recipe.json", "metrics.json")
VAE_FILES = ("vae/config.json", "vae/diffusion_pytorch_model.safetensors")


@dataclass
class TinyRecipe:
    """Everything that determines the tiny backbone's bytes (VAE stage fields, then text-to-image stage)."""

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
    t2i_config: str = T2I_CONFIG
    t2i_steps: int = 0  # 0: the config's trainer.max_steps; set only for quick test builds
    t2i_train_size: int = 0  # 0: the config's data.train_size
    t2i_heldout: int = 256  # held-out captioned items measured (loss, caption following); no effect on bytes


def initial_components(seed: int) -> tuple[CLIPTokenizer, CLIPTextModel, AutoencoderKL, UNet2DConditionModel]:
    """Tokenizer, text encoder, VAE and UNet at their random initialisation, drawn in order from `seed`."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    text_encoder = tiny_text_encoder(len(tokenizer)).eval()
    return tokenizer, text_encoder, tiny_vae(), tiny_unet()


def _vae_training_images(scenes: list, crop: int, generator: torch.Generator) -> torch.Tensor:
    """One batch of [B, 3, crop, crop] images in [-1, 1]: RGB renders, depth targets, normal maps, mixed."""
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
        images = torch.stack(
            [target_to_rgb(target), sample["normals"], sample["image"] * 2 - 1]
        )  # [3, 3, H, W]
        recon = backbone.decode(backbone.encode(images), size=images.shape[-2:]).clamp(-1, 1)
        # Disparity: invert the normalisation with the same quantiles, score where the target was not clipped.
        disparity = 1.0 / depth.clamp_min(1e-8)
        quantiles = torch.quantile(
            disparity[valid & (depth > 0)], torch.tensor([LOW_QUANTILE, HIGH_QUANTILE])
        )
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


def build_vae_stage(out: str | Path, recipe: TinyRecipe, progress: bool = True) -> dict:
    """Stage 1: all components at the recipe seed, the VAE trained and measured; saved under `out`.

    Returns {"vae_train_seconds", "heldout_quality", "vae_platform"}. The UNet and text encoder stay random.
    """
    from zoo.data.synthetic.scenes import SyntheticSceneDataset

    tokenizer, text_encoder, vae, unet = initial_components(recipe.seed)
    empty = encode_prompts(text_encoder, tokenizer, [""], pad=False)  # [1, 2, 32]
    backbone = StableDiffusionBackbone(vae, unet, empty, tiny_scheduler(), text_encoder, tokenizer)

    train_set = SyntheticSceneDataset(recipe.train_scenes, 96, 96, base_seed=recipe.seed)
    heldout = [
        SyntheticSceneDataset(recipe.heldout_scenes, 64, 64, base_seed=recipe.heldout_seed)[i]
        for i in range(recipe.heldout_scenes)
    ]
    scenes = [train_set[i] for i in range(len(train_set))]

    vae.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, recipe.learning_rate, total_steps=recipe.steps, pct_start=0.05
    )
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
    backbone.save_pretrained(out)
    return {
        "vae_train_seconds": round(time.time() - started, 1),
        "heldout_quality": {k: round(v, 5) for k, v in quality.items()},
        "vae_platform": kernel_platform(),
    }


# The recipe fields stage 1 depends on (all but the text-to-image ones): a VAE built with the same values is
# the same bytes on the same kernel platform.
VAE_STAGE_FIELDS = tuple(field.name for field in fields(TinyRecipe) if not field.name.startswith("t2i_"))


def _save_with_empty_prompt(
    out: str | Path,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    vae: AutoencoderKL,
    unet: UNet2DConditionModel,
) -> None:
    """Save the components as a backbone folder, with the empty-prompt embedding this text encoder gives."""
    empty = encode_prompts(text_encoder, tokenizer, [""], pad=False)  # [1, 2, 32]
    StableDiffusionBackbone(vae, unet, empty, tiny_scheduler(), text_encoder, tokenizer).save_pretrained(out)


def _vae_hashes(folder: str | Path) -> dict[str, str]:
    return {name: sha256_file(Path(folder) / name) for name in VAE_FILES}


def reuse_vae_stage(built: str | Path, out: str | Path, recipe: TinyRecipe) -> dict:
    """Stage 1 without its training: `built`'s VAE, every other component at its seeded initialisation.

    The result under `out` is what `build_vae_stage(out, recipe)` writes on `built`'s kernel platform (the VAE
    stage is deterministic there; see `kernel_platform`), so a text-to-image stage can be re-run (a longer
    one, another config) without the VAE's half hour, on any machine. Refuses a `built` folder whose recorded
    VAE-stage recipe differs from `recipe` (naming the field). Returns what `build_vae_stage` returns, read
    from `built`'s recipe.json.
    """
    built = Path(built)
    record_path = built / "recipe.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{record_path}: no recipe.json, so its VAE stage is unknown")
    record = json.loads(record_path.read_text())
    for name in VAE_STAGE_FIELDS:
        if record["recipe"].get(name) != getattr(recipe, name):
            raise ValueError(
                f"{record_path}: VAE-stage field {name!r} is {record['recipe'].get(name)!r}, the recipe says "
                f"{getattr(recipe, name)!r}; its VAE is not this recipe's"
            )
    tokenizer, text_encoder, _, unet = initial_components(recipe.seed)
    trained_vae = AutoencoderKL.from_pretrained(built / "vae")
    vae = tiny_vae()
    vae.load_state_dict(trained_vae.state_dict())
    vae.register_to_config(scaling_factor=trained_vae.config.scaling_factor)
    _save_with_empty_prompt(out, tokenizer, text_encoder, vae, unet)
    if _vae_hashes(out) != _vae_hashes(built):
        raise RuntimeError(f"reusing {built}'s VAE changed its bytes: {_vae_hashes(out)}")
    return {
        "vae_train_seconds": record["vae_train_seconds"],
        "heldout_quality": record["heldout_quality"],
        "vae_platform": record.get("vae_platform", "unrecorded"),
        "vae_stage_reused": True,
    }


def train_text_to_image(out: str | Path, recipe: TinyRecipe) -> torch.nn.Module:
    """Stage 2: train the folder's UNet and text encoder with the training CLI and the recipe's config.

    Returns the trained TextToImageModule. The command is the one `tools/train.py fit` runs.
    """
    from zoo.cli import ZooCLI

    config = Path(recipe.t2i_config)
    config = config if config.is_absolute() else Path(__file__).resolve().parents[2] / config  # from any cwd
    args = ["fit", "--config", str(config), "--model.init_args.backbone", str(out)]
    if recipe.t2i_steps:
        args += ["--trainer.max_steps", str(recipe.t2i_steps)]
    if recipe.t2i_train_size:
        args += ["--data.init_args.train_size", str(recipe.t2i_train_size)]
    return ZooCLI(args=args).model


def install_text_to_image(out: str | Path, module: torch.nn.Module) -> None:
    """Write the trained UNet and text encoder (and the empty prompt they give) into the backbone folder.

    Weights go into freshly built components so that the saved configs carry no load path; the VAE is rebuilt
    the same way and its bytes must not change (the shipped tiny models reference it).
    """
    before = _vae_hashes(out)
    trained = module.backbone
    tokenizer = tiny_tokenizer()
    text_encoder, vae, unet = tiny_text_encoder(len(tokenizer)).eval(), tiny_vae(), tiny_unet()
    for fresh, weights in ((text_encoder, trained.text_encoder), (vae, trained.vae), (unet, trained.unet)):
        fresh.load_state_dict(weights.state_dict())
    vae.register_to_config(scaling_factor=trained.vae.config.scaling_factor)
    _save_with_empty_prompt(out, tokenizer, text_encoder, vae, unet)
    after = _vae_hashes(out)
    if after != before:
        raise RuntimeError(f"installing the text-to-image weights changed the VAE files: {before} -> {after}")


def heldout_band_losses(
    model: TextToImage,
    records: list[CaptionedImage],
    seed: int = 0,
    batch_size: int = 32,
    captions: bool = True,
) -> dict[str, float]:
    """Mean held-out epsilon MSE per timestep band (seeded) of `model` on captioned records, by band name.

    `captions=False` conditions on the empty prompt instead (same timesteps and noise): the gap to the
    captioned loss is what the text encoder tells the UNet.
    """
    totals: dict[str, float] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = torch.stack([torch.from_numpy(r.image).permute(2, 0, 1) for r in chunk])  # [B, 3, H, W]
        latents = model.backbone.encode(images * 2 - 1)  # [B, 4, h, w] posterior means
        generator = torch.Generator().manual_seed(seed + start)
        prompts = [r.caption if captions else "" for r in chunk]
        for band, losses in model.banded_losses(latents, prompts, generator).items():
            totals[band_name(band)] = totals.get(band_name(band), 0.0) + float(losses.sum())
    losses = {name: total / len(records) for name, total in totals.items()}
    losses["all"] = float(np.mean(list(losses.values())))
    return losses


def measure_text_to_image(
    out: str | Path,
    recipe: TinyRecipe,
    heldout: int = 256,
    sampled: int = 96,
    steps: int = 20,
    guidance_scales: tuple[float, ...] = GUIDANCE_SCALES,
    sheet: str | Path | None = None,
) -> dict:
    """Held-out loss (trained, trained given "", random initial UNet) per band; caption following.

    Records come from the test split of the captions generator (losses on `heldout`, samples for the first
    `sampled`); samples use DDIM with `steps` steps, a generator seeded by the recipe seed per guidance scale.
    Writes the contact sheet to `sheet` when given.
    """
    from zoo.inference.t2i import TextToImagePredictor

    data = CaptionDataset(heldout, "test")
    records = [data.item(i) for i in range(heldout)]
    predictor = TextToImagePredictor.from_pretrained(str(out))
    trained = heldout_band_losses(predictor.model, records, recipe.seed)
    unconditional = heldout_band_losses(predictor.model, records, recipe.seed, captions=False)
    random_unet = initial_components(recipe.seed)[3].eval()
    trained_unet, predictor.backbone.unet = predictor.backbone.unet, random_unet
    random = heldout_band_losses(predictor.model, records, recipe.seed)
    predictor.backbone.unet = trained_unet
    shown = records[:sampled]
    following = {"real images": caption_following(shown, np.stack([r.image for r in shown]))}
    samples = {}
    for scale in guidance_scales:
        generator = torch.Generator().manual_seed(recipe.seed)
        samples[scale] = predictor(
            [r.caption for r in shown], steps, scale, generator, batch_size=64, output_type="np"
        )
        following[f"guidance {scale:g}"] = caption_following(shown, samples[scale])
    if sheet is not None:
        picks = sheet_rows(shown)
        contact_sheet(
            [shown[i] for i in picks], {scale: images[picks] for scale, images in samples.items()}, sheet
        )
    rounded = {
        name: {band: round(value, 5) for band, value in losses.items()}
        for name, losses in (
            ("trained", trained),
            ("trained_empty_prompt", unconditional),
            ("random", random),
        )
    }
    return {
        "heldout_items": heldout,
        "sampled_items": len(shown),
        "ddim_steps": steps,
        "heldout_loss": rounded,
        "heldout_loss_margin": round(random["all"] - trained["all"], 5),
        "caption_following": {
            name: {k: round(v, 4) for k, v in rates.items()} for name, rates in following.items()
        },
    }


def sheet_rows(records: list[CaptionedImage], rows: int = 10) -> list[int]:
    """Indices of the first records of each caption form, round robin, for a varied contact sheet."""
    forms: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        form = (
            record.kind
            if record.kind == "figures"
            else "left of"
            if " left of " in record.caption
            else "above"
            if " above " in record.caption
            else "count"
            if not record.caption.startswith("a ")
            else "one"
        )
        forms.setdefault(form, []).append(index)
    picks, depth = [], 0
    while len(picks) < rows and any(depth < len(v) for v in forms.values()):
        picks += [v[depth] for v in forms.values() if depth < len(v)][: rows - len(picks)]
        depth += 1
    return picks


def contact_sheet(
    records: list[CaptionedImage], samples: dict[float, np.ndarray], path: str | Path, scale: int = 2
) -> None:
    """PNG grid: a row per record (caption, held-out image, a sample per guidance scale), a header row."""
    from PIL import Image, ImageDraw

    size = records[0].image.shape[0] * scale
    text_width, header = 210, 18
    columns = ["held-out image", *[f"guidance {g:g}" for g in samples]]
    sheet = Image.new("RGB", (text_width + size * len(columns), header + size * len(records)), "white")
    draw = ImageDraw.Draw(sheet)
    for column, title in enumerate(columns):
        draw.text((text_width + column * size + 4, 3), title, fill="black")
    for row, record in enumerate(records):
        top = header + row * size
        draw.text((4, top + size // 2 - 6), record.caption, fill="black")
        tiles = [record.image, *[images[row] for images in samples.values()]]
        for column, tile in enumerate(tiles):
            picture = Image.fromarray((np.clip(tile, 0, 1) * 255).round().astype(np.uint8))
            sheet.paste(picture.resize((size, size), Image.NEAREST), (text_width + column * size, top))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def flat_metrics(t2i_quality: dict) -> dict[str, float]:
    """The registry's view of the measurements (metrics.json): losses and caption-following rates, flat."""
    losses = t2i_quality["heldout_loss"]
    metrics = {
        "heldout_loss": losses["trained"]["all"],
        "heldout_loss_random": losses["random"]["all"],
        "heldout_loss_empty_prompt": losses["trained_empty_prompt"]["all"],
    }
    for band in losses["trained"]:
        if band != "all":
            metrics[f"heldout_loss_{band}"] = losses["trained"][band]
            metrics[f"heldout_loss_random_{band}"] = losses["random"][band]
    for name, rates in t2i_quality["caption_following"].items():
        suffix = "real" if name == "real images" else "g" + name.removeprefix("guidance ")
        metrics.update(
            {
                f"{check.removesuffix('_rate')}_rate_{suffix}": value
                for check, value in rates.items()
                if check.endswith("_rate")
            }
        )
    return metrics


def file_hashes(out: str | Path) -> dict[str, str]:
    """sha256 of every file of the folder except the measurement records (recipe.json, metrics.json)."""
    out = Path(out)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in MEASUREMENT_FILES)
    return {str(p.relative_to(out)): sha256_file(p) for p in files}


def build_tiny_backbone(
    out: str | Path,
    recipe: TinyRecipe | None = None,
    progress: bool = True,
    sheet: str | Path | None = None,
    vae_from: str | Path | None = None,
) -> dict:
    """Build the tiny backbone from scratch (both stages) under `out`, measure it (contact sheet to `sheet`).

    `vae_from`: a backbone built with the same VAE-stage recipe whose VAE is reused (`reuse_vae_stage`)
    instead of trained again; the bytes are the same either way. Returns the record written to recipe.json.
    """
    recipe = recipe or TinyRecipe()
    select_kernels()  # before the first convolution: the VAE stage's bytes depend on it too
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(recipe.threads)
    try:
        started = time.time()
        record = {
            "recipe": asdict(recipe),
            "torch": torch.__version__,
            "platform": kernel_platform(),
            **(
                reuse_vae_stage(vae_from, out, recipe)
                if vae_from is not None
                else build_vae_stage(out, recipe, progress)
            ),
        }
        t2i_started = time.time()
        module = train_text_to_image(out, recipe)
        install_text_to_image(out, module)
        record["t2i_steps"] = int(module.trainer.global_step)
        record["t2i_train_seconds"] = round(time.time() - t2i_started, 1)
        record["train_seconds"] = round(time.time() - started, 1)
        record["files"] = file_hashes(out)
        record["t2i_quality"] = measure_text_to_image(out, recipe, recipe.t2i_heldout, sheet=sheet)
    finally:
        torch.set_num_threads(previous_threads)
    atomic_write_json(Path(out) / "recipe.json", record)
    atomic_write_json(Path(out) / "metrics.json", flat_metrics(record["t2i_quality"]))
    return record


def describe(record: dict) -> str:
    """Markdown tables of a recipe record: VAE round trip, held-out denoising loss, caption following."""
    quality = record["heldout_quality"]
    rows = [
        ("disparity AbsRel (target <= 0.03)", quality["disparity_absrel"]),
        ("normals mean angle deg (target <= 4)", quality["normals_mean_angle_deg"]),
        ("normals median angle deg", quality["normals_median_angle_deg"]),
        ("RGB PSNR dB", quality["rgb_psnr_db"]),
    ]
    text = (
        "\n".join(
            ["| VAE round trip on held-out scenes | value |", "| --- | --- |"]
            + [f"| {name} | {value:.4f} |" for name, value in rows]
        )
        + "\n"
    )
    t2i = record.get("t2i_quality")
    if t2i is None:
        return text
    losses = t2i["heldout_loss"]
    text += "\n| timestep band | trained UNet | trained, empty prompt | random UNet |\n"
    text += "| --- | --- | --- | --- |\n"
    text += "".join(
        f"| {band} | {losses['trained'][band]:.4f} | {losses['trained_empty_prompt'][band]:.4f} | "
        f"{losses['random'][band]:.4f} |\n"
        for band in losses["trained"]
    )
    following = t2i["caption_following"]
    checks = sorted(
        name.removesuffix("_rate") for name in next(iter(following.values())) if name.endswith("_rate")
    )
    text += (
        "\n| images | "
        + " | ".join(f"{c} (n={next(iter(following.values()))[c + '_n']})" for c in checks)
        + " |\n"
    )
    text += (
        "| --- |"
        + " --- |" * len(checks)
        + "\n"
        + "".join(
            f"| {name} | " + " | ".join(f"{rates[c + '_rate']:.3f}" for c in checks) + " |\n"
            for name, rates in following.items()
        )
    )
    return text
