"""DiffPoseModule: Lightning training and PoseTrack evaluation of DiffPose on the shared family base."""

from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.backbones import StableDiffusionBackbone
from zoo.codecs import UDPHeatmap, decode_udp_batched, flip_heatmaps
from zoo.data.metainfo import load_metainfo
from zoo.data.transforms import BBOX_PADDING, decoded_to_crop, keypoints_to_image
from zoo.evaluation.base import Evaluator, sample_ids
from zoo.evaluation.posetrack import PoseTrackEvaluator
from zoo.models.base import FamilyModule
from zoo.models.diffpose.model import DiffPose, model_config, save_diffpose
from zoo.visualize import draw_skeleton, image_grid

# The test split's extra measurements: the paper's two claims (steps, ensemble) and the one-frame baseline.
DEFAULT_TEST_VARIANTS: tuple[dict[str, Any], ...] = (
    {"name": "T1", "single_frame": True},
    *({"name": f"s{s}_e{e}", "steps": s, "ensemble": e} for s in (1, 2, 4) for e in (1, 4)),
)


class DiffPoseModule(FamilyModule):
    """Lightning training/evaluation of DiffPose; sizes are (w, h) as in mmpose.

    Training: the frames of all clips of a batch through the UNet as one [B*T] batch, STRL, and the heatmap
    diffusion loss (x0 prediction at a uniform random step, MSE with the codec's target weights). AdamW on the
    UNet (`lr`) and the new STRL + decoder (`head_lr`), linear warm-up, step decays at fractions of the run;
    `lr` 0 freezes the UNet. With `single_frame_prob`, that fraction of the training clips is given only its
    key frame (repeated, as the one-frame path does at inference), so the same weights also serve T = 1 and
    the test split's one-frame baseline is measured in distribution. Validation/test sample with DDIM
    (`steps`, `ensemble`, optional flip test), map the keypoints back to frame pixels and score PoseTrack
    mAP against the datamodule's `val_ann_file` / `test_ann_file`. The test split also scores `test_variants`
    (other steps / ensemble sizes, and the same model given only the key frame) from the same backbone
    features, and logs persons/s of each.
    """

    family = "diffpose"

    def __init__(
        self,
        backbone: str = "checkpoints/tiny/backbone",
        metainfo: str = "posetrack18",
        input_size: tuple[int, int] = (192, 256),
        sigma: float = 2.0,
        blur_kernel_size: int = 11,
        num_frames: int = 3,
        feature_site: str = "up_blocks.3",
        width: int = 256,
        patch: int = 2,
        strl_layers: int = 4,
        decoder_layers: int = 1,
        heads: int = 8,
        signal_scale: float = 2.0,
        steps: int = 1,
        ensemble: int = 4,
        eta: float = 1.0,
        flip_test: bool = False,
        keypoint_loss_weight: float = 1.0,
        lr: float = 3e-5,
        head_lr: float = 5e-4,
        weight_decay: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_steps: int = 500,
        lr_milestones: tuple[float, ...] = (0.8, 0.95),
        lr_gamma: float = 0.1,
        single_frame_prob: float = 0.0,
        test_variants: list[dict[str, Any]] | None = None,
        eval_seed: int = 0,
        gradient_checkpointing: bool = False,
        log_images_every_n_val: int = 1,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(ema_decay, log_images_every_n_val)
        self.save_hyperparameters()
        self.metainfo = load_metainfo(metainfo)
        sd = StableDiffusionBackbone.from_pretrained(backbone, with_task_switcher=True)
        sd.configure(gradient_checkpointing=gradient_checkpointing)
        self.model = DiffPose(
            sd,
            self.metainfo.num_keypoints,
            tuple(input_size),
            num_frames,
            None,
            feature_site,
            width,
            patch,
            strl_layers,
            decoder_layers,
            heads,
            signal_scale,
        ).train()  # from_pretrained leaves the UNet in eval mode
        self.codec = UDPHeatmap(
            tuple(input_size), self.model.heatmap_size, sigma=sigma, blur_kernel_size=blur_kernel_size
        )
        if lr == 0:
            sd.unet.requires_grad_(False)
        self.test_variants = [
            dict(v) for v in (DEFAULT_TEST_VARIANTS if test_variants is None else test_variants)
        ]
        self._timing: dict[str, float] = {}
        self.setup_ema()

    @property
    def backbone(self) -> StableDiffusionBackbone:
        """The shared SD backbone inside the model."""
        return self.model.backbone

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """The UNet's (unless frozen) and the STRL's and decoder's parameters."""
        unet = self.backbone.unet.parameters() if self.hparams.lr > 0 else iter(())
        return chain(unet, self.model.head_parameters())

    # ------------------------------------------------------------------ steps

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Heatmap diffusion loss of the key frames, conditioned on each clip's F_t."""
        targets, weights = self.codec.encode_batch(batch["keypoints"], batch["keypoints_visible"])
        frames = batch["frames"]  # [B, T, 3, H, W]
        per_frame = self.model.clip_frame_features(frames)  # [B, T, C, h, w]
        if self.hparams.single_frame_prob > 0 and per_frame.shape[1] > 1:
            single = torch.rand(per_frame.shape[0], device=per_frame.device) < self.hparams.single_frame_prob
            key = per_frame[:, self.model.key_index : self.model.key_index + 1].expand_as(per_frame)
            per_frame = torch.where(single[:, None, None, None, None], key, per_frame)
        features = self.model.clip_features(per_frame)  # [B, D, H, W]
        loss = self.model.training_loss(
            features, targets, weights, loss_weight=self.hparams.keypoint_loss_weight
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=targets.shape[0])
        return loss

    def _generator(self, batch_idx: int) -> torch.Generator:
        # Evaluation noise depends only on the seed and the batch: reruns give the same numbers.
        return torch.Generator().manual_seed(self.hparams.eval_seed * 1_000_003 + batch_idx)

    def to_image(self, heatmaps: torch.Tensor, batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps [B, K, h, w] -> frame-pixel keypoints [B, K, 2] and scores [B, K] (heatmap maxima)."""
        hp = self.hparams
        keypoints, scores = decode_udp_batched(heatmaps, hp.input_size, hp.blur_kernel_size)
        crop = decoded_to_crop(keypoints.cpu().numpy(), hp.input_size)  # [B, K, 2] crop pixels
        image = keypoints_to_image(
            crop, batch["warp_matrix"].cpu().numpy(), batch["flip"].cpu().numpy(), self.metainfo.flip_indices
        )
        return image, scores.cpu().numpy()

    def _features(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame UNet features [B', T, C, h, w] of clips [B', T, 3, H, W] (B' = 2B under flip test)."""
        if self.hparams.flip_test:
            frames = torch.cat([frames, frames.flip(-1)])
        batch, count = frames.shape[:2]
        return self.model.frame_features(frames.flatten(0, 1)).unflatten(0, (batch, count))

    def _sample(
        self, clip_features: torch.Tensor, steps: int, ensemble: int, generator: torch.Generator
    ) -> torch.Tensor:
        heatmaps = self.model.sample(clip_features, steps, ensemble, self.hparams.eta, generator)
        if not self.hparams.flip_test:
            return heatmaps
        half = heatmaps.shape[0] // 2
        return (heatmaps[:half] + flip_heatmaps(heatmaps[half:], self.metainfo.flip_indices)) * 0.5

    # ------------------------------------------------------------------ evaluation
    def make_evaluators(self, stage: str) -> dict[str, Evaluator]:
        """PoseTrack mAP against the datamodule's ground truth of the stage (one per test variant on "test").
        """
        datamodule = getattr(self.trainer, "datamodule", None)
        gt = getattr(datamodule, f"{stage}_ann_file", None)
        if gt is None:
            raise RuntimeError(
                f"DiffPoseModule evaluation needs a datamodule with `{stage}_ann_file` (PoseTrack GT)"
            )
        names = ["posetrack"] + ([v["name"] for v in self.test_variants] if stage == "test" else [])
        self._timing = {name: 0.0 for name in ["shared", *names]}
        self._persons = 0
        return {name: PoseTrackEvaluator(gt) for name in names}

    def _update(self, name: str, heatmaps: torch.Tensor, batch: dict[str, Any]) -> np.ndarray:
        keypoints, scores = self.to_image(heatmaps, batch)
        size = keypoints.shape[0]
        self.evaluators[name].update(
            list(sample_ids(batch, size)),
            batch["image_id"].tolist(),
            keypoints,
            scores,
            bbox_scores=batch["bbox_score"].cpu().numpy(),
            track_ids=batch["track_id"].tolist(),
        )
        return keypoints

    def _timed(self, name: str, fn: Any) -> Any:
        started = time.perf_counter()
        out = fn()
        self._timing[name] += time.perf_counter() - started
        return out

    def evaluation_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> torch.Tensor:
        """Predict the key frames (default steps / ensemble, then each test variant from the same features).
        """
        hp = self.hparams
        frames = batch["frames"]
        self._persons += frames.shape[0]
        per_frame = self._timed("shared", lambda: self._features(frames))  # [B', T, C, h, w]
        clip = self._timed("shared", lambda: self.model.clip_features(per_frame))  # [B', D, H, W]
        heatmaps = self._timed(
            "posetrack", lambda: self._sample(clip, hp.steps, hp.ensemble, self._generator(batch_idx))
        )
        self._update("posetrack", heatmaps, batch)
        if stage == "test":
            key = per_frame[:, self.model.key_index if frames.shape[1] > 1 else 0][
                :, None
            ]  # [B', 1, C, h, w]
            for variant in self.test_variants:
                name = variant["name"]

                def run(variant: dict[str, Any] = variant) -> torch.Tensor:
                    source = self.model.clip_features(key) if variant.get("single_frame") else clip
                    steps, ensemble = variant.get("steps", hp.steps), variant.get("ensemble", hp.ensemble)
                    return self._sample(source, steps, ensemble, self._generator(batch_idx))

                self._update(name, self._timed(name, run), batch)
        return heatmaps

    def epoch_metrics(self, results: dict[str, dict[str, float]]) -> dict[str, float]:
        """The default setting's table (Head ... Total) and mAP, then mAP and persons/s of every test variant.
        """
        main = results["posetrack"]
        metrics = {
            name: main[name] for name in ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle")
        }
        metrics["mAP"] = main["Total"]
        shared = self._timing.get("shared", 0.0)
        for name, values in results.items():
            if name == "posetrack":
                continue
            metrics[f"mAP_{name}"] = values["Total"]
            seconds = shared + self._timing.get(name, 0.0)
            if seconds > 0:
                metrics[f"persons_per_s_{name}"] = self._persons / seconds
        return metrics

    def log_pictures(self, batch: dict[str, Any], outputs: torch.Tensor) -> list[tuple[str, np.ndarray]]:
        """Key-frame crops with the predicted skeleton, up to four."""
        keypoints, scores = decode_udp_batched(
            outputs, self.hparams.input_size, self.hparams.blur_kernel_size
        )
        crop = decoded_to_crop(keypoints.cpu().numpy(), self.hparams.input_size)
        key = batch["frames"].shape[1] // 2
        tiles = []
        for i in range(min(4, outputs.shape[0])):
            rgb = (batch["frames"][i, key].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
            tiles.append(draw_skeleton(rgb, crop[i], scores[i].cpu().numpy(), self.metainfo))
        return [("val/pose", image_grid(tiles, columns=len(tiles)))]

    # ------------------------------------------------------------------ optimisation / export
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: UNet at `lr`, STRL + decoder at `head_lr`; warm-up from 1e-3, x`lr_gamma` at each milestone.
        """
        hp = self.hparams
        groups = [{"params": self.model.head_parameters(), "lr": hp.head_lr}]
        if hp.lr > 0:
            groups.insert(0, {"params": list(self.backbone.unet.parameters()), "lr": hp.lr})
        optimizer = self.adamw(groups, hp.weight_decay, hp.betas)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        milestones = [int(fraction * total) for fraction in hp.lr_milestones]

        def factor(step: int) -> float:
            warmup = 1.0 if step >= hp.warmup_steps else 1e-3 + (1 - 1e-3) * step / max(hp.warmup_steps, 1)
            return warmup * hp.lr_gamma ** sum(step >= m for m in milestones)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export_weights(self, folder: Path) -> None:
        """Backbone (UNet only when trained; the frozen VAE referenced from the base) and the DiffPose
        weights."""
        self.backbone.save_pretrained(folder, include_text_encoder=False, vae_from=self.hparams.backbone)
        save_diffpose(self.model, folder)

    def export_config(self) -> dict[str, Any]:
        """What VideoPosePredictor needs: metainfo, architecture, codec and the sampling defaults."""
        hp = self.hparams
        return {
            "metainfo": hp.metainfo,
            **model_config(self.model),
            "sigma": hp.sigma,
            "blur_kernel_size": hp.blur_kernel_size,
            "bbox_padding": BBOX_PADDING,
            "steps": hp.steps,
            "ensemble": hp.ensemble,
            "eta": hp.eta,
        }
