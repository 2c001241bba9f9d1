"""LotusModule: Lightning training and evaluation of Lotus-G/D."""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.stable_diffusion import sample_latents
from zoo.data.depth_targets import is_disparity_norm, normalize_depth
from zoo.evaluation.depth import (
    DepthEvalProtocol,
    DepthMetricTracker,
    constant_baseline_metrics,
    get_protocol,
)
from zoo.evaluation.normals import NormalMetricAccumulator
from zoo.models.lotus.model import (
    Lotus,
    LotusTask,
    Mode,
    constant_normal_baseline,
    encode_target_distribution,
    latent_valid_mask,
)
from zoo.visualize import colorize_depth, colorize_normals, image_grid

# Synthetic scenes span about 0.5-10 m; the protocol only bounds valid GT and the aligned prediction.
SYNTHETIC_PROTOCOL = DepthEvalProtocol("synthetic", 1e-3, 20.0, None)


class LotusModule(pl.LightningModule):
    """Lightning training/evaluation of Lotus-G/D (official defaults: AdamW 3e-5 constant, wd 1e-2, t=999).

    `backbone` is a diffusers folder or hub id (stabilityai/stable-diffusion-2-base for the official recipe,
    checkpoints/tiny/backbone for the embedded default). Gradient clipping (1.0) is a Trainer option.
    """

    def __init__(
        self,
        backbone: str = "checkpoints/tiny/backbone",
        mode: Mode = "d",
        task: LotusTask = "depth",
        norm_type: str = "trunc_disparity",
        lr: float = 3e-5,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        reconstruction_weight: float = 1.0,
        sample_posterior: bool = True,
        ema_decay: float | None = None,
        gradient_checkpointing: bool = False,
        log_images_every_n_val: int = 1,
        lotus_compat: bool = False,
        cache_latents: bool = False,
        lr_schedule: str = "constant",
    ):
        super().__init__()
        self.save_hyperparameters()
        sd = StableDiffusionBackbone.from_pretrained(backbone, unet_in_channels=8 if mode == "g" else None)
        # diffusers returns loaded models in eval mode; the UNet trains (the frozen VAE stays in eval mode).
        sd.configure(gradient_checkpointing=gradient_checkpointing).train()
        self.model = Lotus(sd, mode, task)
        self.ema = None
        if ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(sd.unet.parameters(), decay=ema_decay)
        from zoo.inference.lotus import LotusPredictor

        # Evaluation runs the predictor's own steps on this module's weights (no second copy of inference).
        self._predictor = LotusPredictor(sd, mode, task, disparity=task == "depth" and is_disparity_norm(norm_type),
                                         lotus_compat=lotus_compat)
        self._depth_tracker, self._baseline_tracker = DepthMetricTracker(), DepthMetricTracker()
        self._normal_tracker, self._constant_normal_tracker = NormalMetricAccumulator(), NormalMetricAccumulator()
        self._val_runs = 0
        # (index, flipped) -> CPU posteriors (image mean, image std, target mean, target std), each [4, h, w].
        self._latent_cache: dict[tuple[int, bool], tuple[torch.Tensor, ...]] = {}

    @property
    def backbone(self) -> StableDiffusionBackbone:
        """The shared SD backbone inside the model."""
        return self.model.backbone

    # ------------------------------------------------------------------ steps
    def _posteriors(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """VAE posteriors (image mean, image std, target mean, target std) of a batch, each [B, 4, h, w].

        With cache_latents, items seen before (same dataset index and flip) reuse their posteriors: the frozen VAE
        would return the same numbers. Only valid for datasets whose items are fixed per (index, flip).
        """
        keys = list(zip(batch["index"].tolist(), batch["flipped"].tolist(), strict=True)) if self.hparams.cache_latents else []
        missing = [row for row, key in enumerate(keys) if key not in self._latent_cache]
        if not self.hparams.cache_latents or missing:
            rows = missing if self.hparams.cache_latents else list(range(batch["image"].shape[0]))
            part = {name: value[rows] for name, value in batch.items() if isinstance(value, torch.Tensor)}
            encoded = (*self.backbone.encode_distribution(part["image"] * 2 - 1),
                       *encode_target_distribution(self.backbone, self.hparams.task, part, self.hparams.norm_type))
            if not self.hparams.cache_latents:
                return encoded
            for position, row in enumerate(rows):
                self._latent_cache[keys[row]] = tuple(t[position].detach().cpu() for t in encoded)
        return tuple(torch.stack([self._latent_cache[key][part] for key in keys]).to(self.device) for part in range(4))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Encode image and target (posterior samples, as the official scripts), then the joint latent MSE."""
        hp = self.hparams
        image_mean, image_std, target_mean, target_std = self._posteriors(batch)
        image_latents = sample_latents(image_mean, image_std) if hp.sample_posterior else image_mean  # [B, 4, h, w]
        target_latents = sample_latents(target_mean, target_std) if hp.sample_posterior else target_mean
        # Virtual KITTI supervises sky too (loss_mask = valid | sky); other readers supervise valid pixels.
        mask = latent_valid_mask(batch.get("loss_mask", batch["valid"]))  # [B, 4, h, w]
        losses = self.model.training_losses(image_latents, target_latents, mask, hp.reconstruction_weight)
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, prog_bar=True,
                      batch_size=image_latents.shape[0])
        return losses["loss"]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        """Advance the EMA of the UNet after each optimiser step."""
        if self.ema is not None:
            self.ema.to(self.device)
            self.ema.step(self.backbone.unet.parameters())

    @torch.no_grad()
    def predict_batch(
        self, images: torch.Tensor, generator: torch.Generator | None = None, processing_resolution: int = 0
    ) -> torch.Tensor:
        """Images in [0, 1] [B, 3, H, W] -> depth/disparity in [0, 1] [B, 1, H, W] or unit normals [B, 3, H, W]."""
        return self._predictor.predict_tensor(images, processing_resolution, True, generator)[0]

    def _evaluate_batch(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        # Benchmark readers name their protocol (depth range, crop, processing resolution); synthetic data has none.
        protocol = get_protocol(batch["dataset"][0]) if "dataset" in batch else SYNTHETIC_PROTOCOL
        # G draws its noise from a generator seeded by the batch index, so evaluation is repeatable.
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        prediction = self.predict_batch(batch["image"], generator, protocol.processing_resolution)
        valid = batch["valid"]
        if self.hparams.task == "depth":
            alignment = "disparity" if is_disparity_norm(self.hparams.norm_type) else "depth"
            self._depth_tracker.evaluate_and_update(prediction, batch["depth"], valid, protocol, alignment)
            self._baseline_tracker.update(constant_baseline_metrics(batch["depth"], valid, protocol, alignment))
        else:
            self._normal_tracker.update(prediction, batch["normals"], valid)
            self._constant_normal_tracker.update(constant_normal_baseline(batch["normals"], valid),
                                                 batch["normals"], valid)
        if batch_idx == 0 and stage == "val":
            self._log_images(batch, prediction)

    def _log_images(self, batch: dict[str, torch.Tensor], prediction: torch.Tensor) -> None:
        self._val_runs += 1
        writer = getattr(self.logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image") or self._val_runs % self.hparams.log_images_every_n_val:
            return
        tiles = []
        disparity = is_disparity_norm(self.hparams.norm_type)
        for index in range(min(4, prediction.shape[0])):
            rgb = (batch["image"][index].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
            if self.hparams.task == "depth":
                # GT in the model's own target space (normalised per image) so both columns share one colour scale.
                target = normalize_depth(batch["depth"][index], batch["valid"][index], self.hparams.norm_type)
                tiles += [rgb, colorize_depth(((target[0] + 1) / 2).cpu(), disparity=disparity),
                          colorize_depth(prediction[index, 0].cpu(), disparity=disparity)]
            else:
                tiles += [rgb, colorize_normals(batch["normals"][index].permute(1, 2, 0).cpu()),
                          colorize_normals(prediction[index].permute(1, 2, 0).cpu())]
        grid = image_grid(tiles, columns=3)  # image | ground truth | prediction
        writer.add_image(f"val/{self.hparams.task}", grid, self.global_step, dataformats="HWC")

    def _epoch_metrics(self) -> dict[str, float]:
        if self.hparams.task == "depth":
            metrics = self._depth_tracker.compute()
            baseline = self._baseline_tracker.compute()
            metrics["constant_baseline_abs_rel"] = baseline["abs_rel"]
            self._depth_tracker.reset()
            self._baseline_tracker.reset()
        else:
            metrics = self._normal_tracker.compute()
            metrics["constant_baseline_mean"] = self._constant_normal_tracker.compute()["mean"]
            self._normal_tracker.reset()
            self._constant_normal_tracker.reset()
        return metrics

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Predict the held-out batch and accumulate metrics (and a picture for TensorBoard)."""
        self._evaluate_batch(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Same as validation on the test split."""
        self._evaluate_batch(batch, batch_idx, "test")

    def on_validation_epoch_start(self) -> None:
        """Evaluate the EMA weights when EMA is on."""
        if self.ema is not None:
            self.ema.store(self.backbone.unet.parameters())
            self.ema.copy_to(self.backbone.unet.parameters())

    def on_validation_epoch_end(self) -> None:
        """Log the dataset-level metrics; restore the raw weights after EMA evaluation."""
        self.log_dict({f"val/{k}": v for k, v in self._epoch_metrics().items()})
        if self.ema is not None:
            self.ema.restore(self.backbone.unet.parameters())

    def on_test_epoch_end(self) -> None:
        """Log the dataset-level test metrics."""
        self.log_dict({f"test/{k}": v for k, v in self._epoch_metrics().items()})

    # ------------------------------------------------------------------ optimisation / checkpoints
    def configure_optimizers(self) -> dict:
        """AdamW on the UNet only (official: 3e-5 constant, wd 1e-2, eps 1e-8); "cosine" decays to 0 at max_steps."""
        hp = self.hparams
        if hp.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be 'constant' or 'cosine'; got {hp.lr_schedule!r}")
        optimizer = torch.optim.AdamW(self.backbone.unet.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                                      betas=tuple(hp.betas), eps=1e-8)
        if hp.lr_schedule == "constant":
            return {"optimizer": optimizer}
        total = self.trainer.max_steps if self.trainer.max_steps > 0 else self.trainer.estimated_stepping_batches
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the EMA state with the checkpoint."""
        if self.ema is not None:
            checkpoint["ema_state"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the EMA state."""
        if self.ema is not None and "ema_state" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema_state"])

    def export_pretrained(self, folder: str, use_ema: bool = True) -> None:
        """Write a predictor-ready folder: the backbone with the trained UNet and zoo_model.json."""
        from zoo.utils.files import atomic_write_json

        if self.ema is not None and use_ema:
            self.ema.store(self.backbone.unet.parameters())
            self.ema.copy_to(self.backbone.unet.parameters())
        # The frozen VAE is the one the backbone was loaded from: reference it instead of copying it.
        self.backbone.save_pretrained(folder, include_text_encoder=False, vae_from=self.hparams.backbone)
        if self.ema is not None and use_ema:
            self.ema.restore(self.backbone.unet.parameters())
        hp = self.hparams
        atomic_write_json(f"{folder}/zoo_model.json", {
            "family": "lotus", "mode": hp.mode, "task": hp.task, "norm_type": hp.norm_type,
            "disparity": hp.task == "depth" and is_disparity_norm(hp.norm_type),
        })
