"""Diffusion back-ends for COCO-OOD: SD img2img and SD + ControlNet OpenPose restyling of the annotated pose.

Both need downloaded weights (a local diffusers Stable Diffusion folder, plus an OpenPose ControlNet folder
for the pose variant), so they are off by default and registered on request with `register_diffusion_styles`.

Size contract: the builder requires the input size back exactly. The pipelines need sides that are multiples
of 8 (the VAE's factor), and full-resolution diffusion is slow, so each image is resized to a *processing
size*: scaled down (never up) so that its long side is at most `max_side`, then each side rounded to the
nearest multiple of 8. The pipeline runs at that size and its output is resized back to the exact input size.
The resize is per axis, so normalised keypoint positions, and with them the OpenPose conditioning, stay
aligned with the annotations.
"""

from __future__ import annotations

import functools
import hashlib
import os
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from zoo.builders.coco_ood import CocoOodError
from zoo.builders.styles import Annotations, Params, Style, register_style
from zoo.data.coco_files import person_keypoints, read_coco
from zoo.utils.files import sha256_file
from zoo.utils.threads import pinned_threads
from zoo.visualize.openpose import DEFAULT_THRESHOLD, person_from_coco, render_openpose

# Style prompts after COCO-OOD's three style splits (Ukiyo-e, Monet oil painting, colour sketch). The paper
# used CycleGAN / StyTR-2 / an image editor, not prompts; these texts are this project's wording of the same
# styles.
STYLE_PROMPTS: dict[str, str] = {
    "ukiyoe": "an ukiyo-e Japanese woodblock print, flat colours, bold black outlines, washi paper texture",
    "monet": "an impressionist oil painting by Claude Monet, thick visible brush strokes, soft natural light",
    "sketch": "a colour pencil sketch on white paper, loose hatched strokes, hand-drawn illustration",
}
NEGATIVE_PROMPT = "photo, photograph, photorealistic, blurry, deformed, extra limbs"
SD_COMPONENTS: tuple[str, ...] = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")
SIZE_MULTIPLE = 8  # the SD VAE downsamples by 8
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class DiffusionWeightsError(CocoOodError):
    """Diffusion weights are missing or unusable; the message names the folder and what it should contain."""


def processing_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) the pipeline runs at: down to `max_side` (None: no limit), sides multiples of 8."""
    scale = min(1.0, max_side / max(width, height)) if max_side else 1.0

    def fit(side: int) -> int:
        return max(SIZE_MULTIPLE, round(side * scale / SIZE_MULTIPLE) * SIZE_MULTIPLE)

    return fit(width), fit(height)


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize RGB uint8 [H, W, 3] to (width, height); area averaging when shrinking, cubic when enlarging."""
    height, width = image.shape[:2]
    if (width, height) == size:
        return image
    shrinking = size[0] * size[1] < width * height
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


@functools.lru_cache(maxsize=16)
def _folder_sha256(folder: str, signature: tuple[tuple[str, int, int], ...]) -> str:
    """SHA-256 over (relative path, file SHA-256) of the files in `signature`; cached per signature."""
    digest = hashlib.sha256()
    for relative, _, _ in signature:
        digest.update(f"{relative}\0{sha256_file(Path(folder) / relative)}\n".encode())
    return digest.hexdigest()


def weights_id(folder: str | os.PathLike, subfolders: Sequence[str] = ()) -> str:
    """`<folder name>@<sha256 prefix>` of the weight files (in `subfolders`, or all) to pin in a manifest.

    Content hashes rather than paths, so that shards built on machines with different checkouts still merge;
    the hash is computed once per process for an unchanged folder (a full SD2 download takes tens of seconds).
    """
    root = Path(folder).resolve()
    tops = [root / name for name in subfolders] if subfolders else [root]
    files = sorted(path for top in tops for path in top.rglob("*") if path.is_file())
    signature = tuple(
        (str(path.relative_to(root)), path.stat().st_size, path.stat().st_mtime_ns) for path in files
    )
    return f"{root.name}@{_folder_sha256(str(root), signature)[:16]}"


def _check_sd_folder(folder: Path) -> None:
    """Refuse a Stable Diffusion folder that does not exist or lacks a component the pipelines load."""
    if not folder.is_dir():
        raise DiffusionWeightsError(
            f"Stable Diffusion weights folder {folder} does not exist. Download a diffusers text-to-image "
            "model once, e.g. `huggingface-cli download stabilityai/stable-diffusion-2-base --local-dir "
            "checkpoints/stable-diffusion-2-base`, and pass that folder."
        )
    missing = [name for name in SD_COMPONENTS if not (folder / name).is_dir()]
    if missing:
        raise DiffusionWeightsError(
            f"Stable Diffusion weights folder {folder} lacks {', '.join(name + '/' for name in missing)}; "
            f"a diffusers folder for img2img has {', '.join(name + '/' for name in SD_COMPONENTS)}."
        )


def _check_controlnet_folder(folder: Path) -> None:
    """Refuse a ControlNet folder that does not exist or has no diffusers config."""
    if not (folder / "config.json").is_file():
        state = "has no config.json" if folder.is_dir() else "does not exist"
        raise DiffusionWeightsError(
            f"ControlNet weights folder {folder} {state}. Download an OpenPose ControlNet in diffusers "
            "format trained for the same base model (for SD 2.1 e.g. "
            "thibaud/controlnet-sd21-openpose-diffusers) and pass its folder."
        )


class _StableDiffusionStyle(Style):
    """Shared parts of the SD back-ends: settings, lazy pipeline, sizes, seeding and the manifest record."""

    default = False  # needs downloaded weights

    def __init__(
        self,
        weights: str | os.PathLike,
        prompt: str,
        *,
        name: str,
        strength: float,
        guidance_scale: float,
        steps: int,
        negative_prompt: str,
        max_side: int | None,
        device: str,
        torch_dtype: str,
    ) -> None:
        """Check the settings and the weights folder now; load the pipeline on the first `apply`."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1]; got {strength}")
        if int(steps * strength) < 1:
            # img2img runs int(steps * strength) denoising steps; zero would return the encoded input
            # unchanged.
            raise ValueError(f"steps * strength must be >= 1 (got {steps} * {strength})")
        if guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0; got {guidance_scale}")
        if max_side is not None and max_side < SIZE_MULTIPLE:
            raise ValueError(f"max_side must be >= {SIZE_MULTIPLE} or None; got {max_side}")
        if torch_dtype not in _DTYPES:
            raise ValueError(f"torch_dtype must be one of {', '.join(_DTYPES)}; got {torch_dtype!r}")
        self.weights = Path(weights)
        _check_sd_folder(self.weights)
        self.name = name
        self.prompt = prompt
        self.negative_prompt = negative_prompt
        self.strength = float(strength)
        self.guidance_scale = float(guidance_scale)
        self.steps = int(steps)
        self.max_side = max_side
        self.device = device
        self.torch_dtype = torch_dtype
        self._pipe: Any = None
        self._ids: dict[str, str] = {}

    def __getstate__(self) -> dict[str, Any]:
        """Pickle settings only: each worker process loads its own pipeline."""
        return {**self.__dict__, "_pipe": None}

    # ------------------------------------------------------------------ weights
    def _weight_ids(self) -> dict[str, str]:
        """Content ids of the weight folders used, computed once (kept when pickled into workers)."""
        if not self._ids:
            self._ids = {"weights": weights_id(self.weights, SD_COMPONENTS)}
        return self._ids

    def _load_components(self) -> dict[str, Any]:
        """VAE, UNet, text stack (through the shared backbone loader) and a DDIM scheduler from the config."""
        from diffusers import DDIMScheduler

        from zoo.backbones.stable_diffusion import StableDiffusionBackbone

        try:
            backbone = StableDiffusionBackbone.from_pretrained(
                self.weights, with_task_switcher=False, load_text_encoder=True, local_files_only=True
            )
            # DDIM (eta 0) is deterministic given the start noise and good at few steps; the folder's config
            # keeps the model's beta schedule and prediction type (epsilon for SD2-base, v for SD2 768).
            scheduler = DDIMScheduler.from_pretrained(self.weights / "scheduler", local_files_only=True)
        except OSError as error:  # the backbone's MissingWeightsError included
            raise DiffusionWeightsError(
                f"cannot load Stable Diffusion weights from {self.weights}: {error}"
            ) from error
        if backbone.unet.config.class_embed_type is not None:
            raise DiffusionWeightsError(
                f"the UNet in {self.weights / 'unet'} has a class embedding "
                f"({backbone.unet.config.class_embed_type}), i.e. it is a perception UNet with a task "
                "switcher; img2img needs a text-to-image UNet such as SD2's"
            )
        return {
            "vae": backbone.vae,
            "unet": backbone.unet.eval(),
            "text_encoder": backbone.text_encoder,
            "tokenizer": backbone.tokenizer,
            "scheduler": scheduler,
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }

    @abstractmethod
    def _build_pipeline(self) -> Any:
        """Assemble this back-end's diffusers pipeline from local components."""

    @property
    def pipeline(self) -> Any:
        """The diffusers pipeline, loaded on first use and placed on `device` in `torch_dtype`."""
        if self._pipe is None:
            pipe = self._build_pipeline()
            pipe.set_progress_bar_config(disable=True)  # the builder shows its own progress
            dtype = _DTYPES[self.torch_dtype]
            # Components load in float32; casting only when asked avoids diffusers' warning about casting with
            # to().
            self._pipe = pipe.to(self.device) if dtype == torch.float32 else pipe.to(self.device, dtype)
        return self._pipe

    # ------------------------------------------------------------------ running
    def _pipeline_inputs(
        self, annotations: Annotations, width: int, height: int, size: tuple[int, int]
    ) -> dict[str, Any]:
        """Extra pipeline arguments for one image at processing size `size` (width, height)."""
        return {}

    def _settings(self) -> Params:
        """The settings that shape every image (recorded per image and in the split header)."""
        return {
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "strength": self.strength,
            "steps": self.steps,
            "guidance_scale": self.guidance_scale,
            "max_side": self.max_side,
        }

    def apply(
        self, image: np.ndarray, rng: np.random.Generator, annotations: Annotations
    ) -> tuple[np.ndarray, Params]:
        """Restyle at the processing size with a seeded generator; return the input size and the settings."""
        height, width = image.shape[:2]
        size = processing_size(width, height, self.max_side)
        # A fresh torch generator per image, seeded from the builder's per-image stream: order/worker
        # independent.
        seed = int(rng.integers(2**63))
        generator = torch.Generator(self.device).manual_seed(seed)
        # One thread: CPU reductions depend on the thread count, and the bytes must not depend on the process
        # (the builder parallelises over --workers instead).
        with pinned_threads(1):
            result = self.pipeline(
                prompt=self.prompt,
                negative_prompt=self.negative_prompt,
                image=Image.fromarray(_resize(image, size)),
                strength=self.strength,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                generator=generator,
                output_type="np",
                **self._pipeline_inputs(annotations, width, height, size),
            ).images  # [1, h, w, 3] float in [0, 1]
        styled = np.round(np.asarray(result[0], np.float32) * 255.0).clip(0, 255).astype(np.uint8)
        if styled.shape != (size[1], size[0], 3):
            raise RuntimeError(f"{self.name}: pipeline returned {styled.shape} for processing size {size}")
        params = {"seed": seed, **self._settings(), "processing_size": list(size), **self._weight_ids()}
        return _resize(styled, (width, height)), params

    def describe(self) -> Params:
        """Back-end, settings, weight ids and the library versions and device that the pixels depend on."""
        import diffusers

        return {
            **super().describe(),
            **self._settings(),
            **self._weight_ids(),
            "scheduler": "DDIMScheduler",
            "device": self.device,
            "torch_dtype": self.torch_dtype,
            "libraries": {"diffusers": diffusers.__version__, "torch": torch.__version__},
        }


class SDImg2ImgStyle(_StableDiffusionStyle):
    """Stable Diffusion img2img restyling with a style prompt (diffusers' StableDiffusionImg2ImgPipeline)."""

    def __init__(
        self,
        weights: str | os.PathLike,
        prompt: str,
        *,
        name: str = "sd-img2img",
        strength: float = 0.55,
        guidance_scale: float = 7.5,
        steps: int = 30,
        negative_prompt: str = NEGATIVE_PROMPT,
        max_side: int | None = 512,
        device: str = "cpu",
        torch_dtype: str = "float32",
    ) -> None:
        """Restyle with `prompt` from the diffusers folder `weights`; `strength`: how much is redrawn."""
        super().__init__(
            weights,
            prompt,
            name=name,
            strength=strength,
            guidance_scale=guidance_scale,
            steps=steps,
            negative_prompt=negative_prompt,
            max_side=max_side,
            device=device,
            torch_dtype=torch_dtype,
        )

    def _build_pipeline(self) -> Any:
        """StableDiffusionImg2ImgPipeline without a safety checker."""
        from diffusers import StableDiffusionImg2ImgPipeline

        return StableDiffusionImg2ImgPipeline(**self._load_components())


class SDControlNetPoseStyle(_StableDiffusionStyle):
    """SD + OpenPose ControlNet img2img, conditioned on this project's render of the image's GT keypoints."""

    def __init__(
        self,
        weights: str | os.PathLike,
        controlnet: str | os.PathLike,
        prompt: str,
        *,
        name: str = "sd-pose",
        strength: float = 0.8,
        guidance_scale: float = 7.5,
        steps: int = 30,
        conditioning_scale: float = 1.0,
        negative_prompt: str = NEGATIVE_PROMPT,
        max_side: int | None = 512,
        threshold: float = DEFAULT_THRESHOLD,
        hands: bool = True,
        face: bool = True,
        device: str = "cpu",
        torch_dtype: str = "float32",
    ) -> None:
        """Restyle with `prompt`, steering the person to the annotated pose with the ControlNet `controlnet`.

        `threshold`, `hands` and `face` select keypoints as zoo.export.controlnet does (COCO visibility 1 and
        2 are drawn with the default threshold; hands and face only exist in COCO-WholeBody annotations).
        """
        super().__init__(
            weights,
            prompt,
            name=name,
            strength=strength,
            guidance_scale=guidance_scale,
            steps=steps,
            negative_prompt=negative_prompt,
            max_side=max_side,
            device=device,
            torch_dtype=torch_dtype,
        )
        self.controlnet = Path(controlnet)
        _check_controlnet_folder(self.controlnet)
        self.conditioning_scale = float(conditioning_scale)
        self.threshold = float(threshold)
        self.hands = hands
        self.face = face

    def _weight_ids(self) -> dict[str, str]:
        """SD and ControlNet content ids."""
        if not self._ids:
            self._ids = {**super()._weight_ids(), "controlnet": weights_id(self.controlnet)}
        return self._ids

    def _settings(self) -> Params:
        """Common settings plus the ControlNet scale and the keypoint selection."""
        return {
            **super()._settings(),
            "conditioning_scale": self.conditioning_scale,
            "threshold": self.threshold,
            "hands": self.hands,
            "face": self.face,
        }

    def _build_pipeline(self) -> Any:
        """StableDiffusionControlNetImg2ImgPipeline with the OpenPose ControlNet, without a safety checker."""
        from diffusers import ControlNetModel, StableDiffusionControlNetImg2ImgPipeline

        try:
            controlnet = ControlNetModel.from_pretrained(self.controlnet, local_files_only=True)
        except OSError as error:
            raise DiffusionWeightsError(
                f"cannot load the ControlNet from {self.controlnet}: {error}"
            ) from error
        return StableDiffusionControlNetImg2ImgPipeline(
            **self._load_components(), controlnet=controlnet.eval()
        )

    def conditioning_image(
        self, annotations: Annotations, width: int, height: int, size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """OpenPose render of the annotated people: uint8 [h, w, 3] RGB at `size` (w, h; default: the image).

        The people are read exactly as zoo.export.controlnet reads GT (crowd and keypoint-free annotations
        skipped); their normalised coordinates are drawn on the processing canvas, so at the image size this
        equals the export.
        """
        # The one COCO reader validates this image's annotations; a placeholder image id ties them together.
        coco = read_coco(
            {
                "images": [{"id": 0, "file_name": "image", "width": width, "height": height}],
                "annotations": [{**annotation, "image_id": 0} for annotation in annotations],
            }
        )
        people = [
            person_from_coco(points, width, height, self.threshold, self.hands, self.face)
            for points in person_keypoints(coco)[0]
        ]
        canvas_width, canvas_height = size or (width, height)
        return render_openpose(people, canvas_height, canvas_width)

    def _pipeline_inputs(
        self, annotations: Annotations, width: int, height: int, size: tuple[int, int]
    ) -> dict[str, Any]:
        """The pose conditioning at the processing size, and that size, so the pipeline resizes nothing."""
        control = self.conditioning_image(annotations, width, height, size)
        return {
            "control_image": Image.fromarray(control),
            "controlnet_conditioning_scale": self.conditioning_scale,
            "width": size[0],
            "height": size[1],
        }


def register_diffusion_styles(
    weights: str | os.PathLike,
    controlnet: str | os.PathLike | None = None,
    prompts: Mapping[str, str] = STYLE_PROMPTS,
    *,
    replace: bool = False,
    **options: Any,
) -> list[Style]:
    """Register `sd-<key>` img2img styles per prompt, and `sd-pose-<key>` ControlNet styles when given one.

    `options` (steps, strength, guidance_scale, max_side, device, torch_dtype, ...) go to every style; the
    folders are checked here, so a missing download fails before any image is touched.
    """
    styles: list[Style] = [
        SDImg2ImgStyle(weights, prompt, name=f"sd-{key}", **options) for key, prompt in prompts.items()
    ]
    if controlnet is not None:
        styles += [
            SDControlNetPoseStyle(weights, controlnet, prompt, name=f"sd-pose-{key}", **options)
            for key, prompt in prompts.items()
        ]
    return [register_style(style, replace=replace) for style in styles]
