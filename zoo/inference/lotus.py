"""LotusPredictor: depth/disparity or surface normals from images, in the style of diffusers' Marigold
pipelines."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from zoo.backbones import StableDiffusionBackbone
from zoo.data.images import ImageInput, load_rgb
from zoo.models import MODEL_CONFIG_FILE
from zoo.models.lotus.model import Lotus, check_inference_steps
from zoo.utils.files import atomic_open
from zoo.visualize import colorize_depth, colorize_normals


@dataclass
class LotusOutput:
    """Predictions of one call.

    prediction: depth/disparity in [0, 1] (np: [N, H, W, 1], pt: [N, 1, H, W]) or unit normals in [-1, 1]
    (np: [N, H, W, 3], pt: [N, 3, H, W]); a list of per-image arrays when the inputs differ in size.
    latent: the predicted x0 latents [N, 4, h, w] (pass to the next frame for temporal consistency).
    """

    prediction: np.ndarray | torch.Tensor | list
    latent: torch.Tensor | None = None


class LotusPredictor:
    """Lotus-G/D inference: one VAE encode, one UNet call at t=999 and one VAE decode per image
    (Lotus-G: one UNet call per `num_inference_steps`, 1 by default).

    Default mode is deterministic (posterior mode, replicate padding to x8, Marigold post-processing, bilinear
    resize back). `lotus_compat=True` reproduces the official pipeline exactly: a posterior *sample* from the
    global RNG, no padding, per-channel clamp then mean, un-normalised normals and nearest resize back.
    """

    family = "lotus"
    default_processing_resolution = 768

    def __init__(
        self,
        backbone: StableDiffusionBackbone,
        mode: Literal["g", "d"],
        task: Literal["depth", "normals"],
        disparity: bool = False,
        lotus_compat: bool = False,
    ):
        self.model = Lotus(backbone, mode, task)
        self.disparity = disparity
        self.lotus_compat = lotus_compat

    @property
    def backbone(self) -> StableDiffusionBackbone:
        """The SD backbone."""
        return self.model.backbone

    @property
    def task(self) -> str:
        """ "depth" or "normals"."""
        return self.model.task

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        mode: Literal["g", "d"] | None = None,
        task: Literal["depth", "normals"] | None = None,
        disparity: bool | None = None,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype | None = None,
        lotus_compat: bool = False,
        vae: Literal["full", "tiny-decode", "tiny"] = "full",
        tiny_autoencoder: str | None = None,
    ) -> LotusPredictor:
        """Load a folder exported by this project (zoo_model.json) or an official Lotus folder / hub id.

        Official checkpoints carry no zoo_model.json: pass mode, task and disparity (the registry does).
        `vae="tiny-decode"|"tiny"` decodes (and encodes) with the AutoencoderTiny folder `tiny_autoencoder`.
        """
        meta: dict[str, Any] = {}
        marker = Path(source) / MODEL_CONFIG_FILE
        if marker.is_file():
            meta = json.loads(marker.read_text())
        mode = mode or meta.get("mode")
        task = task or meta.get("task")
        disparity = meta.get("disparity", False) if disparity is None else disparity
        if mode is None or task is None:
            raise ValueError(f"{source}: no zoo_model.json; pass mode ('g'/'d') and task ('depth'/'normals')")
        backbone = StableDiffusionBackbone.from_pretrained(
            source, with_task_switcher=True, torch_dtype=torch_dtype
        )
        backbone.use_tiny_autoencoder(tiny_autoencoder, vae)
        return cls(backbone.to(device).eval(), mode, task, disparity, lotus_compat)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
        """One input or a batch of them -> a list of inputs, not yet decoded."""
        if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
            images = list(images)
        elif not isinstance(images, list | tuple):
            images = [images]
        if len(images) == 0:
            raise ValueError("no images given")
        return list(images)

    @staticmethod
    def _decode(images: Sequence[ImageInput], first: int) -> list[torch.Tensor]:
        """Inputs -> [3, H, W] tensors in [0, 1]; decoded batch by batch so memory follows batch_size."""
        return [
            torch.from_numpy(load_rgb(image, name=f"image {first + i}")).permute(2, 0, 1)
            for i, image in enumerate(images)
        ]

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput],
        processing_resolution: int | None = None,
        match_input_resolution: bool = True,
        batch_size: int = 1,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: Literal["np", "pt"] = "np",
        show_progress_bar: bool = False,
        num_inference_steps: int = 1,
    ) -> LotusOutput:
        """Predict depth/disparity or normals for one image or a batch (paths, PIL, numpy, tensors).

        `num_inference_steps` (Lotus-G only): 1 by default, the official single step from noise at t=999;
        more runs DDIM on the x0 predictions (Lotus.predict_latents), one UNet call per step. Lotus-D is a
        single regression call and takes 1.
        """
        check_inference_steps(self.model.mode, num_inference_steps)
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type must be 'np' or 'pt'; got {output_type!r}")
        if processing_resolution is None:
            processing_resolution = self.default_processing_resolution
        if processing_resolution < 0 or (processing_resolution % 8 and not self.lotus_compat):
            raise ValueError(
                f"processing_resolution must be 0 or a positive multiple of 8; got {processing_resolution}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if latents is not None and generator is not None:
            raise ValueError("pass either latents or generator, not both")
        inputs = self._as_list(images)
        if latents is not None and latents.shape[0] != len(inputs):
            raise ValueError(f"latents has batch {latents.shape[0]} but {len(inputs)} images were given")
        predictions: list[torch.Tensor] = []
        out_latents: list[torch.Tensor] = []
        starts = range(0, len(inputs), batch_size)
        for start in tqdm(starts, desc="Lotus", disable=not show_progress_bar):
            chunk = self._decode(inputs[start : start + batch_size], start)
            # Images of different sizes in one chunk are run one by one (they cannot share a tensor).
            groups = [chunk] if len({tuple(t.shape) for t in chunk}) == 1 else [[t] for t in chunk]
            offset = start
            for group in groups:
                chunk_latents = None if latents is None else latents[offset : offset + len(group)]
                prediction, latent = self.model.predict(
                    torch.stack(group),
                    processing_resolution,
                    match_input_resolution,
                    generator,
                    chunk_latents,
                    compat=self.lotus_compat,
                    num_inference_steps=num_inference_steps,
                )
                predictions.extend(prediction.cpu())
                out_latents.extend(latent.cpu())
                offset += len(group)
        return LotusOutput(
            self._format(predictions, output_type),
            torch.stack(out_latents) if len({tuple(t.shape) for t in out_latents}) == 1 else None,
        )

    @staticmethod
    def _format(predictions: list[torch.Tensor], output_type: str) -> np.ndarray | torch.Tensor | list:
        same_size = len({tuple(p.shape) for p in predictions}) == 1
        if output_type == "pt":
            return torch.stack(predictions) if same_size else predictions
        arrays = [p.permute(1, 2, 0).numpy() for p in predictions]  # [H, W, C]
        return np.stack(arrays) if same_size else arrays

    @torch.no_grad()
    def predict_video(
        self,
        frames: Sequence[ImageInput],
        blend: float = 0.1,
        generator: torch.Generator | None = None,
        **kwargs: Any,
    ) -> list[np.ndarray]:
        """Frame-by-frame video prediction; Lotus-G shares one noise latent across frames and blends in the
        previous frame's x0 latent, `(1 - blend) * common + blend * previous`, against flicker.

        Lotus-D is deterministic per frame and has no noise to share, so its frames are independent.
        """
        outputs, previous, common = [], None, None
        for frame in frames:
            if self.model.mode == "g":
                if common is None:
                    shape_source = self(frame, generator=generator, output_type="pt", **kwargs).latent
                    common = torch.randn(shape_source.shape, generator=generator)
                start = common if previous is None else (1 - blend) * common + blend * previous
                result = self(frame, latents=start, **kwargs)
                previous = result.latent
            else:
                result = self(frame, **kwargs)
            outputs.append(result.prediction[0])
        return outputs

    # ------------------------------------------------------------------ pictures and files
    def visualize(self, prediction: np.ndarray) -> np.ndarray:
        """One prediction [H, W, C] -> uint8 RGB picture (Spectral depth, near = red; normals as RGB)."""
        if self.task == "depth":
            return colorize_depth(prediction, disparity=self.disparity)
        return colorize_normals(prediction)

    def save(self, prediction: np.ndarray, stem: str | Path) -> list[Path]:
        """Write `<stem>.png` (16-bit depth, or 8-bit RGB normals), `<stem>.npy` and `<stem>_vis.png`
        atomically."""
        from PIL import Image

        stem = Path(stem)
        # Suffixes are appended, never substituted: a stem such as "frame.0001" keeps its ".0001".
        written = [stem.with_name(stem.name + suffix) for suffix in (".npy", ".png", "_vis.png")]
        with atomic_open(written[0]) as handle:
            np.save(handle, prediction.astype(np.float32))
        if self.task == "depth":
            # Linear [0, 1] -> [0, 65535] as Marigold's export (whose PIL call fails on Pillow >= 11).
            png = Image.fromarray(np.round(np.clip(prediction[..., 0], 0, 1) * 65535).astype(np.uint16))
        else:
            png = Image.fromarray(self.visualize(prediction))
        for path, image in ((written[1], png), (written[2], Image.fromarray(self.visualize(prediction)))):
            with atomic_open(path) as handle:
                image.save(handle, format="PNG")
        return written
