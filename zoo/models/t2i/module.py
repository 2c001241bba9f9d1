"""TextToImageModule: Lightning training of a text-to-image UNet (and text encoder) as SD2-base is trained."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.stable_diffusion import encode_prompts, sample_latents
from zoo.evaluation.base import Evaluator, sample_ids
from zoo.models.base import FamilyModule
from zoo.models.t2i.evaluation import DenoisingLossEvaluator, band_name
from zoo.models.t2i.model import TextToImage


class TextToImageModule(FamilyModule):
    """Epsilon-prediction training on VAE latents with caption dropout for classifier-free guidance.

    `backbone` is a diffusers folder with a text stack and a UNet without class embedding. Validation and test
    report the held-out denoising loss per timestep band (seeded timesteps and noise), with the caption and
    without it (`loss_uncond*`): the gap is what the caption tells the UNet.
    """

    family = "t2i"

    def __init__(
        self,
        backbone: str = "checkpoints/tiny/backbone",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 200,
        lr_schedule: str = "cosine",
        caption_dropout: float = 0.1,
        train_text_encoder: bool = True,
        cache_latents: bool = True,
        sample_posterior: bool = True,
        ema_decay: float | None = None,
    ):
        super().__init__(ema_decay)
        self.save_hyperparameters()
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine'; got {lr_schedule!r}")
        sd = StableDiffusionBackbone.from_pretrained(
            backbone, with_task_switcher=False, load_text_encoder=True
        )
        self.model = TextToImage(sd.train(), train_text_encoder)
        # training index -> CPU posterior (mean, std), [4, h, w] each: the frozen VAE gives the same.
        self._latent_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.setup_ema()

    @property
    def backbone(self) -> StableDiffusionBackbone:
        """The SD backbone inside the model."""
        return self.model.backbone

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The UNet's parameters, then the text encoder's when it trains."""
        parameters = list(self.backbone.unet.parameters())
        if self.hparams.train_text_encoder:
            parameters += list(self.backbone.text_encoder.parameters())
        return parameters

    # ------------------------------------------------------------------ training
    def _posteriors(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled VAE posterior (mean, std) of training images, [B, 4, h, w] each (cached by index)."""
        if not self.hparams.cache_latents:
            return self.backbone.encode_distribution(batch["image"] * 2 - 1)
        keys = batch["index"].tolist()
        missing = [row for row, key in enumerate(keys) if key not in self._latent_cache]
        if missing:
            mean, std = self.backbone.encode_distribution(batch["image"][missing] * 2 - 1)
            for position, row in enumerate(missing):
                self._latent_cache[keys[row]] = (mean[position].cpu(), std[position].cpu())
        return tuple(
            torch.stack([self._latent_cache[key][part] for key in keys]).to(self.device) for part in (0, 1)
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Posterior-sampled latents, captions dropped to "" with probability caption_dropout, epsilon MSE."""
        mean, std = self._posteriors(batch)
        latents = sample_latents(mean, std) if self.hparams.sample_posterior else mean  # [B, 4, h, w]
        drop = torch.rand(len(batch["text"])) < self.hparams.caption_dropout
        prompts = [
            "" if dropped else text for text, dropped in zip(batch["text"], drop.tolist(), strict=True)
        ]
        loss = self.model.training_loss(latents, prompts)
        self.log("train/loss", loss, prog_bar=True, batch_size=latents.shape[0])
        return loss

    # ------------------------------------------------------------------ evaluation
    def make_evaluators(self, stage: str) -> dict[str, Evaluator]:
        """One denoising-loss evaluator."""
        return {"loss": DenoisingLossEvaluator()}

    def evaluation_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        """Seeded per-band losses of the posterior means, with the caption and with "" (same draws)."""
        mean, _ = self.backbone.encode_distribution(
            batch["image"] * 2 - 1
        )  # [B, 4, h, w]; not the training cache
        losses: dict[str, torch.Tensor] = {}
        for name, prompts in (("loss", batch["text"]), ("loss_uncond", [""] * mean.shape[0])):
            bands = self.model.banded_losses(mean, prompts, torch.Generator().manual_seed(batch_idx))
            losses.update({f"{name}_{band_name(band)}": values.cpu() for band, values in bands.items()})
        self.evaluators["loss"].update(sample_ids(batch, mean.shape[0]), losses)

    # ------------------------------------------------------------------ optimisation / export
    def configure_optimizers(self) -> dict:
        """AdamW on the UNet (and text encoder); linear warm-up, then constant or cosine to 0 at max_steps."""
        hp = self.hparams
        optimizer = self.adamw(
            [{"params": list(self.trainable_parameters()), "lr": hp.lr}], hp.weight_decay, hp.betas
        )
        total = (
            self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        )
        warmup = max(hp.warmup_steps, 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if hp.lr_schedule == "constant":
                return 1.0
            return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def export_weights(self, folder: Path) -> None:
        """UNet, text stack, scheduler and the empty prompt they give; the VAE is referenced by vae_from."""
        sd = self.backbone
        # Lotus/SDPose condition on the unpadded empty prompt: recompute it with the trained text encoder.
        sd.empty_prompt_embeds.copy_(encode_prompts(sd.text_encoder, sd.tokenizer, [""], pad=False))
        sd.save_pretrained(folder, vae_from=self.hparams.backbone)

    def export_config(self) -> dict[str, Any]:
        """Nothing beyond the family: the folder itself says everything the predictor needs."""
        return {}
