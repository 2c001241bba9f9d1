"""TextToImagePredictor: images from prompts with classifier-free guidance and a diffusers scheduler."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from diffusers import SchedulerMixin
from PIL import Image

from zoo.backbones import StableDiffusionBackbone
from zoo.models.t2i.model import TextToImage


class TextToImagePredictor:
    """Sampling from a text-to-image backbone folder (e.g. checkpoints/tiny/backbone) in batches.

    `scheduler` is any diffusers scheduler built from the backbone's config (DDIM, eta 0, when None): the same
    prompts, options and generator seed give the same pixels.
    """

    family = "t2i"

    def __init__(
        self,
        model: TextToImage,
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        scheduler: SchedulerMixin | None = None,
    ):
        self.model = model
        self.num_inference_steps = num_inference_steps
        self.guidance_scale = guidance_scale
        self.scheduler = scheduler

    @property
    def backbone(self) -> StableDiffusionBackbone:
        """The SD backbone."""
        return self.model.backbone

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype | None = None,
        **kwargs: Any,
    ) -> TextToImagePredictor:
        """Load a diffusers-style folder with a text stack and a UNet without class embedding."""
        backbone = StableDiffusionBackbone.from_pretrained(
            source, with_task_switcher=False, load_text_encoder=True, torch_dtype=torch_dtype
        )
        return cls(TextToImage(backbone.to(device).eval(), train_text_encoder=False), **kwargs)

    def _fresh_scheduler(self) -> SchedulerMixin | None:
        """A new instance per batch: multistep schedulers keep state between steps."""
        return None if self.scheduler is None else type(self.scheduler).from_config(self.scheduler.config)

    @torch.no_grad()
    def __call__(
        self,
        prompts: str | Sequence[str],
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
        height: int = 64,
        width: int = 64,
        batch_size: int = 16,
        output_type: Literal["pil", "np", "pt"] = "pil",
    ) -> list[Image.Image] | np.ndarray | torch.Tensor:
        """One image per prompt: PIL (uint8), np [N, H, W, 3] or pt [N, 3, H, W] with values in [0, 1]."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts:
            raise ValueError("no prompts given")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'pt'; got {output_type!r}")
        if height % 8 or width % 8:
            raise ValueError(f"height and width must be multiples of 8; got {height}x{width}")
        steps = num_inference_steps or self.num_inference_steps
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        chunks = [
            self.model.sample(
                prompts[start : start + batch_size],
                steps,
                scale,
                generator,
                height,
                width,
                self._fresh_scheduler(),
            )
            for start in range(0, len(prompts), batch_size)
        ]
        images = torch.cat(chunks).cpu()  # [N, 3, H, W]
        if output_type == "pt":
            return images
        array = images.permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
        if output_type == "np":
            return array
        return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in array]
