"""AutoencoderTinyDistillation: Lightning training of a tiny AutoencoderTiny against the frozen tiny VAE."""

from __future__ import annotations

import copy
import math

import lightning.pytorch as pl
import torch

from zoo.backbones import StableDiffusionBackbone
from zoo.models.autoencoder_tiny.model import (
    aligned_crops,
    distillation_images,
    distillation_losses,
    teacher_targets,
    tiny_taesd,
)


def _psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    mse = ((prediction.clamp(-1, 1) - target.clamp(-1, 1)) / 2).pow(2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class AutoencoderTinyDistillation(pl.LightningModule):
    """Distil an AutoencoderTiny (TAESD layout at `width`) from the VAE of `backbone` on synthetic scenes.

    Data: DepthNormalDataModule batches; each scene gives its RGB image, depth target and normal map. The
    frozen teacher's targets are cached per (scene index, flip), since a fixed synthetic item always gives the
    same ones; training uses `crop`-pixel crops (0: whole images).
    """

    family = "autoencoder_tiny"

    def __init__(
        self,
        backbone: str = "checkpoints/tiny/backbone",
        width: int = 32,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        crop: int = 32,
        norm_type: str = "trunc_disparity",
    ):
        super().__init__()
        if crop % 8:
            raise ValueError(f"crop must be a multiple of 8 (the latent grid); got {crop}")
        self.save_hyperparameters()
        self.teacher = StableDiffusionBackbone.from_pretrained(backbone).eval()
        self.teacher.requires_grad_(False)
        self.student = tiny_taesd(width)
        self._cache: dict[tuple[int, bool], tuple[torch.Tensor, ...]] = {}
        self._generator = torch.Generator().manual_seed(0)

    def _targets(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(images [N, 3, H, W], VAE latents [N, 4, h, w], VAE decodes [N, 3, H, W]) of the batch, cached."""
        keys = list(zip(batch["index"].tolist(), batch["flipped"].tolist(), strict=True))
        missing = [row for row, key in enumerate(keys) if key not in self._cache]
        if missing:
            part = {name: value[missing] for name, value in batch.items() if isinstance(value, torch.Tensor)}
            images = distillation_images(part, self.hparams.norm_type)  # [M, 3, 3, H, W]
            flat = images.flatten(0, 1)  # [3M, 3, H, W]
            latents, decoded = teacher_targets(self.teacher, flat)
            for position, row in enumerate(missing):
                rows = slice(3 * position, 3 * position + 3)
                self._cache[keys[row]] = (flat[rows].cpu(), latents[rows].cpu(), decoded[rows].cpu())
        return tuple(torch.cat([self._cache[key][part] for key in keys]).to(self.device) for part in range(3))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Both distillation losses on crops of the batch's RGB, depth-target and normal images."""
        images, latents, decoded = self._targets(batch)
        if self.hparams.crop:
            images, latents, decoded = aligned_crops(
                images, latents, decoded, self.hparams.crop, self._generator
            )
        losses = distillation_losses(self.student, images, latents, decoded)
        self.log_dict(
            {f"train/{name}": value for name, value in losses.items()},
            prog_bar=True,
            batch_size=images.shape[0],
        )
        return losses["loss"]

    @torch.no_grad()
    def _evaluate(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        images = distillation_images(batch, self.hparams.norm_type).flatten(0, 1)  # [3B, 3, H, W]
        latents, vae_decoded = teacher_targets(self.teacher, images)
        student_latents = self.student.encode(images).latents  # [3B, 4, h, w]
        metrics = {
            # Relative to the latents' own spread, so the number reads the same for any scaling factor.
            "encoder_relative_rmse": ((student_latents - latents).pow(2).mean() / latents.var())
            .sqrt()
            .item(),
            "decoder_psnr_vs_vae_db": _psnr(self.student.decode(latents).sample, vae_decoded),
            "tiny_roundtrip_psnr_db": _psnr(self.student.decode(student_latents).sample, images),
            "vae_roundtrip_psnr_db": _psnr(vae_decoded, images),
        }
        self.log_dict(
            {f"{stage}/{name}": value for name, value in metrics.items()},
            batch_size=images.shape[0],
            sync_dist=True,
        )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Held-out agreement with the VAE (latents, decodes) and round-trip PSNR of both autoencoders."""
        self._evaluate(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Same as validation on the test split."""
        self._evaluate(batch, "test")

    def configure_optimizers(self) -> dict:
        """AdamW on the student, cosine-decayed to 0 at max_steps."""
        optimizer = torch.optim.AdamW(
            self.student.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = (
            self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        )
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def export_pretrained(self, folder: str) -> None:
        """Write a TAESD-format folder (config.json, diffusion_pytorch_model.safetensors) for the route."""
        # fp16 on disk keeps the asset within its 2 MB budget; the loader casts to the VAE's dtype.
        copy.deepcopy(self.student).to(torch.float16).save_pretrained(folder, safe_serialization=True)
