"""Mustafar inference: answers to questions about images, and question-conditioned SD features alone."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.stable_diffusion import check_model_folder, resolve_source
from zoo.data.images import ImageInput, load_rgb
from zoo.models import MODEL_CONFIG_FILE
from zoo.models.mustafar.build import load_exported
from zoo.models.mustafar.features import DEFAULT_SITE, DEFAULT_TIMESTEP, SDFeatureExtractor, save_features


def _image_list(images: Sequence[ImageInput] | ImageInput) -> list[ImageInput]:
    """One input or a sequence of them, as a list (nothing decoded yet)."""
    if isinstance(images, (str, torch.Tensor)) or not isinstance(images, Sequence):
        return [images]
    return list(images)


def _pixels(images: list[ImageInput], size: tuple[int, int], first: int = 0) -> torch.Tensor:
    """Decode images (numbered from `first` in errors) in [0, 1], resized to `size` (H, W): [N, 3, H, W]."""
    tensors = []
    for index, image in enumerate(images, start=first):
        rgb = torch.from_numpy(load_rgb(image, f"image {index}")).permute(2, 0, 1)[None]  # [1, 3, h, w]
        if tuple(rgb.shape[-2:]) != tuple(size):
            rgb = F.interpolate(rgb, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
        tensors.append(rgb.clamp(0, 1))
    return torch.cat(tensors)


@dataclass
class MustafarOutput:
    """answers: one string per (image, question); tokens: the encoder's raw tokens by stream, on request
    ({"sd": [N, T_sd, C_sd], "clip": [N, T_clip, C_clip]})."""

    answers: list[str]
    tokens: dict[str, torch.Tensor] | None = None


class MustafarPredictor:
    """Images + questions in, answers out: batched greedy generation through transformers' `generate`."""

    family = "mustafar"

    def __init__(
        self,
        model: Any,
        processor: Any,
        image_size: tuple[int, int],
        sd_prompt: str = "question",
        max_new_tokens: int = 8,
    ) -> None:
        self.model, self.processor = model.eval(), processor
        self.image_size, self.sd_prompt, self.max_new_tokens = tuple(image_size), sd_prompt, max_new_tokens

    @classmethod
    def from_pretrained(
        cls, source: str, device: str | torch.device = "cpu", features_only: bool = False, **kwargs: Any
    ) -> MustafarPredictor | SDFeaturePredictor:
        """An exported Mustafar folder; `features_only=True` (or an SD folder) gives an SDFeaturePredictor."""
        folder = Path(resolve_source(str(source)))
        check_model_folder(folder)  # malformed or absurd configs (llm/, clip/ too) are named before building
        marker = folder / MODEL_CONFIG_FILE
        if (
            features_only
            or not marker.is_file()
            or json.loads(marker.read_text()).get("kind") == "sd_features"
        ):
            return SDFeaturePredictor.from_pretrained(str(source), device=device, **kwargs)
        model, processor, spec, extra = load_exported(folder)
        return cls(
            model.to(device),
            processor,
            spec.image_size,
            extra.get("sd_prompt", "question"),
            extra.get("max_new_tokens", 8),
        )

    @property
    def device(self) -> torch.device:
        """Device of the LLM."""
        return self.model.lm_head.weight.device

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[ImageInput],
        questions: Sequence[str],
        max_new_tokens: int | None = None,
        batch_size: int = 8,
        guidance_scale: float | None = None,
        return_tokens: bool = False,
    ) -> MustafarOutput:
        """Answer question i about image i; `return_tokens` adds the encoder's tokens."""
        images = _image_list(images)  # decoded batch by batch below: memory follows batch_size
        questions = [questions] if isinstance(questions, str) else list(questions)
        if len(questions) != len(images):
            raise ValueError(
                f"{len(images)} images but {len(questions)} questions: give one question per image"
            )
        for index, question in enumerate(questions):
            if not isinstance(question, str) or not question.strip():
                raise ValueError(f"question {index} is empty")
        answers: list[str] = []
        streams: dict[str, list[torch.Tensor]] = {}
        encoder = self.model.model.vision_tower
        for start in range(0, len(questions), batch_size):
            chunk = questions[start : start + batch_size]
            batch = _pixels(images[start : start + batch_size], self.image_size, start).to(self.device)
            prompts = chunk if self.sd_prompt != "none" else None
            scale = 0.0 if prompts is None else guidance_scale
            inputs = {k: v.to(self.device) for k, v in self.processor(chunk).items()}
            generated = self.model.generate(
                **inputs,
                pixel_values=batch,
                encoder_prompts=prompts,
                encoder_guidance_scale=scale,
                do_sample=False,
                max_new_tokens=max_new_tokens or self.max_new_tokens,
                pad_token_id=self.processor.tokenizer.pad_token_id,
            )
            new = generated[:, inputs["input_ids"].shape[1] :]
            answers += [
                a.strip() for a in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
            ]
            if return_tokens:
                for name, value in encoder.raw_tokens(batch, prompts, scale).items():
                    streams.setdefault(name, []).append(value.cpu())
        tokens = {name: torch.cat(parts) for name, parts in streams.items()} if return_tokens else None
        return MustafarOutput(answers, tokens)


class SDFeaturePredictor:
    """Question-conditioned SD features for training one's own heads (`zoo.load("tiny-sd-features")`)."""

    family = "mustafar"

    def __init__(self, extractor: SDFeatureExtractor, image_size: tuple[int, int]) -> None:
        self.extractor, self.image_size = extractor, tuple(image_size)

    @classmethod
    def from_pretrained(
        cls,
        source: str,
        device: str | torch.device = "cpu",
        sites: Sequence[str] | None = None,
        timestep: int | None = None,
        guidance_scale: float | None = None,
        image_size: Sequence[int] | None = None,
    ) -> SDFeaturePredictor:
        """An SD folder/hub id, or a folder whose zoo_model.json names its `backbone` and settings."""
        folder = Path(resolve_source(str(source)))
        record = (
            json.loads((folder / MODEL_CONFIG_FILE).read_text())
            if (folder / MODEL_CONFIG_FILE).is_file()
            else {}
        )
        backbone = StableDiffusionBackbone.from_pretrained(
            record.get("backbone", source), load_text_encoder=True
        )
        extractor = SDFeatureExtractor(
            backbone.to(device).eval(),
            list(sites or record.get("sites", [DEFAULT_SITE])),
            timestep if timestep is not None else record.get("timestep", DEFAULT_TIMESTEP),
            guidance_scale if guidance_scale is not None else record.get("guidance_scale", 0.0),
        )
        return cls(extractor, tuple(image_size or record.get("image_size", (512, 512))))

    @torch.no_grad()
    def __call__(
        self,
        images: Sequence[ImageInput],
        prompts: Sequence[str] | None = None,
        guidance_scale: float | None = None,
        batch_size: int = 8,
        seed: int | None = 0,
    ) -> torch.Tensor:
        """Tokens [N, T, C] (T = token grid of the first site, row-major; C = sum of the sites' channels)."""
        images = _image_list(images)  # decoded batch by batch below: memory follows batch_size
        device = self.extractor.backbone.device
        generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
        parts = []
        for start in range(0, len(images), batch_size):
            chunk = list(prompts[start : start + batch_size]) if prompts is not None else None
            pixels = _pixels(images[start : start + batch_size], self.image_size, start).to(device)
            parts.append(self.extractor(pixels, chunk, guidance_scale, generator=generator).cpu())
        return torch.cat(parts)

    def save(self, tokens: torch.Tensor, path: str | Path) -> Path:
        """Write tokens as safetensors with the extractor's settings as metadata."""
        ex = self.extractor
        return save_features(
            path,
            tokens,
            sites=ex.sites,
            timestep=ex.timestep,
            guidance_scale=ex.guidance_scale,
            image_size=list(self.image_size),
        )
