"""The shared Stable Diffusion backbone: VAE, UNet, optional text stack, empty-prompt embedding, surgery,
taps."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.backbones.taps import FeatureTaps
from zoo.backbones.task_switcher import TASK_CODE_DIM, Task, task_codes
from zoo.utils.files import JSONFileError, read_json_file

logger = logging.getLogger(__name__)

EMPTY_PROMPT_FILE = "empty_prompt_embeds.safetensors"
LATENT_FACTOR = 8  # the SD VAE downsamples by 8

# Lotus, SDPose and DiffPose feed the UNet this single timestep.
FINAL_TIMESTEP = 999


class MissingWeightsError(FileNotFoundError):
    """Backbone weights are not available locally; the message says what to download and where."""


class CorruptWeightsError(OSError, ValueError):
    """A weights or config file is present but unreadable (truncated, corrupt, malformed); the message names
    it. A ValueError too, so that the tools report it like any other bad input instead of a traceback."""


class ConfigSizeError(CorruptWeightsError):
    """A model config asks for sizes no real model has; raised before anything is allocated, naming the file
    and the field."""


# The largest value of a config field that real models reach, with room to spare; above it a config is refused
# before any layer is built (a width of 10^6 or a vocabulary of 10^9 would try to allocate terabytes).
# (pattern on the field name, limit, what the field is)
_SIZE_LIMITS = (
    (
        re.compile(
            r"(vocab_size|max_position_embeddings|num_embeddings|num_class_embeds|n_positions|n_ctx|"
            r"num_train_timesteps)$"
        ),
        1 << 21,
        "table length",
    ),
    (
        re.compile(r"(channels|hidden_size|intermediate_size|_dim|^dim|^width|n_embd|d_model|norm_num_groups)$"),
        1 << 17,
        "width",
    ),
    (
        re.compile(r"(layers|layers_per_block|heads|n_layer|n_head|num_blocks|num_frames|num_keypoints|ensemble)$"),
        1 << 10,
        "count",
    ),
    (
        re.compile(r"(sample_size|image_size|input_size|heatmap_size|patch_size|^patch)$"),
        65_535,
        "size in pixels",
    ),
)
# A coarse bound on the weights one config level describes (widest width squared times its layers, or a table
# times the width): above 10^12 values (4 TB in float32) a config is refused even if each field is plausible.
_MAX_ELEMENTS = 10**12
# The files of a model folder whose sizes are checked: the family record, the pipeline index and every
# component's config (unet/, vae/, text_encoder/, llm/, clip/, scheduler/).
_CONFIG_FILES = ("zoo_model.json", "model_index.json", "*/config.json", "*/scheduler_config.json")


def check_config_sizes(config: Any, source: str, where: str = "") -> None:
    """Refuse a parsed config whose size fields are absurd or not sizes: ConfigSizeError naming `source` and
    the field (`llm.hidden_size`, `block_out_channels[0]`)."""
    if isinstance(config, list):
        for index, item in enumerate(config):
            if isinstance(item, (dict, list)):
                check_config_sizes(item, source, f"{where}[{index}]")
        return
    if not isinstance(config, dict):
        return
    widest, layers, table = 0.0, 0.0, 0.0
    for key, value in config.items():
        field = f"{where}.{key}" if where else str(key)
        rule = next((rule for rule in _SIZE_LIMITS if rule[0].search(str(key))), None)
        scalars = isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value)
        if isinstance(value, dict) or (isinstance(value, list) and (rule is None or not scalars)):
            check_config_sizes(value, source, field)
            continue
        if rule is None or value is None:
            continue
        _, limit, kind = rule
        for index, number in enumerate(value if isinstance(value, list) else [value]):
            name = f"{field}[{index}]" if isinstance(value, list) else field
            if number is None:
                continue
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise ConfigSizeError(f"{source}: {name} must be a number (a {kind}); got {number!r}")
            if not (0 <= number <= limit):  # NaN fails this too
                raise ConfigSizeError(
                    f"{source}: {name} = {number!r} is not a plausible {kind} (expected 0 .. {limit}); "
                    "refusing to build the model (a corrupt or hand-edited config?)"
                )
            if kind == "width":
                widest = max(widest, float(number))
            elif kind == "count" and str(key).endswith(("layers", "layers_per_block", "n_layer")):
                layers += float(number)
            elif kind == "table length" and not str(key).endswith("timesteps"):
                table = max(table, float(number))
    elements = max(widest * widest * max(layers, 1.0), table * widest)
    if elements > _MAX_ELEMENTS:
        raise ConfigSizeError(
            f"{source}: {where or 'the config'} describes about {elements:.2g} weights (widest width "
            f"{widest:g}, {layers:g} layers, tables of {table:g}); refusing to build more than "
            f"{_MAX_ELEMENTS:.0e}"
        )


def check_model_folder(source: str | os.PathLike) -> None:
    """Validate the config files of a local model folder before anything is built from them.

    zoo_model.json, model_index.json and each component's config.json / scheduler_config.json must be strict
    JSON objects (CorruptWeightsError naming the file otherwise) with plausible sizes (ConfigSizeError naming
    the file and the field). Hub ids and missing folders are left to the loaders.
    """
    folder = Path(source)
    if not folder.is_dir():
        return
    for pattern in _CONFIG_FILES:
        for path in sorted(folder.glob(pattern)):
            try:
                config = read_json_file(path, "model config")
            except JSONFileError as error:
                raise CorruptWeightsError(f"{error}; re-download or re-export the model") from None
            if not isinstance(config, dict):
                raise CorruptWeightsError(
                    f"{path}: a model config is a JSON object; got {type(config).__name__}"
                )
            check_config_sizes(config, str(path))


# diffusers' wording for a weights or config file that exists but cannot be parsed
# (truncated, corrupt, bad JSON).
_UNREADABLE_WEIGHTS = re.compile(
    r"(?:Unable to load weights from checkpoint file for|the config file at) '([^']+)'"
)


def _missing_weights_message(source: str, detail: str) -> str:
    return (
        f"Stable Diffusion weights {source!r} are not available here ({detail}).\n"
        f"Download them once, e.g. `huggingface-cli download {source} "
        f"--local-dir checkpoints/{Path(source).name}`, then pass the folder "
        f"`checkpoints/{Path(source).name}` (a diffusers folder with vae/, unet/ and either "
        f"{EMPTY_PROMPT_FILE} or text_encoder/ + tokenizer/)."
    )


def _where(source: str, subfolder: str) -> dict[str, str]:
    """from_pretrained arguments for a component: a local subfolder, or a hub id plus `subfolder`."""
    local = Path(source)
    if local.is_dir():
        return {"pretrained_model_name_or_path": str(local / subfolder)}
    return {"pretrained_model_name_or_path": source, "subfolder": subfolder}


def resolve_source(source: str) -> str:
    """Repo-relative folders (configs say `checkpoints/tiny/backbone`) resolve from any working directory."""
    repo_relative = Path(__file__).resolve().parents[2] / source
    if not Path(source).is_absolute() and not Path(source).exists() and repo_relative.is_dir():
        return str(repo_relative)
    return source


def _vae_source(source: str, seen: tuple[str, ...] = ()) -> str:
    """Where the VAE of `source` lives: itself, or the base its model_index.json names as `vae_from`."""
    index = Path(source) / "model_index.json"
    if Path(source).is_dir() and not (Path(source) / "vae").is_dir() and index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptWeightsError(f"{index}: not valid JSON ({error})") from None
        base = data.get("vae_from") if isinstance(data, dict) else None
        if base is not None and not isinstance(base, str):
            raise CorruptWeightsError(f"{index}: 'vae_from' must be a folder or hub id; got {base!r}")
        if base:
            key = str(Path(source).resolve())
            if key in seen:
                chain = " -> ".join([*seen, key])
                raise CorruptWeightsError(
                    f"{index}: 'vae_from' chain loops ({chain}); no folder holds the VAE"
                )
            return _vae_source(resolve_source(base), (*seen, key))  # the base may itself reference another
    return source


def _looks_local(source: str) -> bool:
    """True for strings that are paths rather than hub ids ("org/name")."""
    return source.startswith((".", "/", "~")) or source.count("/") != 1


def _has_component(source: str, subfolder: str) -> bool:
    local = Path(source)
    if local.is_dir():
        return (local / subfolder).is_dir()
    return True  # a hub id: let the loader decide


def replicate_pad(images: torch.Tensor, multiple: int = LATENT_FACTOR) -> torch.Tensor:
    """Pad [B, C, H, W] on the bottom/right by edge replication to a multiple of `multiple`."""
    height, width = images.shape[-2:]
    pad_h, pad_w = (-height) % multiple, (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return images
    return F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")


def sample_latents(
    mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A draw mean + std * eps from a diagonal Gaussian posterior (the same draw as diffusers' `.sample()`).
    """
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + std * noise


def widen_conv_in(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A conv with `in_channels` inputs whose weights repeat the original ones, scaled to keep the activation.

    With in_channels = 2 * original (Lotus-G / Marigold), feeding the same latent to both halves reproduces
    the original conv's output: weights are repeated and halved, the bias is kept.
    """
    if in_channels % conv.in_channels != 0:
        raise ValueError(f"cannot widen conv_in from {conv.in_channels} to {in_channels} channels")
    repeats = in_channels // conv.in_channels
    widened = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        widened.weight.copy_(conv.weight.repeat(1, repeats, 1, 1) / repeats)  # [C_out, in_channels, k, k]
        if conv.bias is not None:
            widened.bias.copy_(conv.bias)
    return widened.to(conv.weight.device, conv.weight.dtype)


class StableDiffusionBackbone(nn.Module):
    """VAE (frozen) + UNet (trainable) + cached empty-prompt embedding, with the text stack optional.

    Every family gets latents, the task switcher, prompt embeddings and feature taps from here.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        empty_prompt_embeds: torch.Tensor,
        scheduler: DDPMScheduler | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any | None = None,
    ):
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        self.unet = unet
        self.text_encoder = text_encoder.requires_grad_(False).eval() if text_encoder is not None else None
        self.tokenizer = tokenizer
        self.scheduler = scheduler or DDPMScheduler(
            beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000
        )
        if empty_prompt_embeds.ndim != 3 or empty_prompt_embeds.shape[0] != 1:
            raise ValueError(f"empty_prompt_embeds must be [1, L, D]; got {tuple(empty_prompt_embeds.shape)}")
        # A buffer so that it follows .to(device) and is saved in Lightning checkpoints.
        self.register_buffer("empty_prompt_embeds", empty_prompt_embeds.detach().clone(), persistent=True)
        self.autocast_dtype: torch.dtype | None = None
        # The one memory format of every VAE/UNet input (configure(channels_last=True) switches it).
        self.channels_last = False
        self._groupnorm_hooks: list[torch.utils.hooks.RemovableHandle] = []

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        with_task_switcher: bool = False,
        unet_in_channels: int | None = None,
        load_text_encoder: bool = False,
        local_files_only: bool | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> StableDiffusionBackbone:
        """Load from a local diffusers folder or a hub id, component by component.

        Works for folders whose model_index.json names a pipeline class diffusers lacks
        (official Lotus/SDPose): only the subfolders are read. `with_task_switcher=True`
        (the choice of the families that use it: Lotus, SDPose) adds the 4-d class projection when the UNet
        lacks it (new, randomly initialised, as the official training scripts do with SD2); a plain SD UNet
        never grows one by default. `unet_in_channels` widens conv_in.
        """
        source = resolve_source(str(source))
        if local_files_only is None:
            local_files_only = not Path(source).is_dir() and os.environ.get("HF_HUB_OFFLINE", "0") == "1"
        if not Path(source).is_dir() and _looks_local(source):
            raise MissingWeightsError(_missing_weights_message(source, "no such folder"))
        common = {"local_files_only": local_files_only}
        if torch_dtype is not None:
            common["torch_dtype"] = torch_dtype
        vae_source = _vae_source(source)
        for folder in dict.fromkeys((source, vae_source)):
            check_model_folder(folder)  # malformed or absurd configs fail here, before any layer is built
        try:
            vae = AutoencoderKL.from_pretrained(**_where(vae_source, "vae"), **common)
            unet_config = UNet2DConditionModel.load_config(
                **_where(source, "unet"), local_files_only=local_files_only
            )
            unet_kwargs: dict[str, Any] = {}
            if with_task_switcher and unet_config.get("class_embed_type") is None:
                # The official recipes start from SD2 and add a fresh projection MLP for the 4-d task code.
                unet_kwargs = {
                    "class_embed_type": "projection",
                    "projection_class_embeddings_input_dim": TASK_CODE_DIM,
                    "low_cpu_mem_usage": False,
                }
            unet = UNet2DConditionModel.from_pretrained(**_where(source, "unet"), **common, **unet_kwargs)
            if unet_kwargs:
                # diffusers leaves weights missing from the checkpoint uninitialised (seen: NaN): give the new
                # projection PyTorch's default initialisation, as a freshly built nn.Linear has.
                for layer in unet.class_embedding.modules():
                    if isinstance(layer, nn.Linear):
                        layer.reset_parameters()
            scheduler = (
                DDPMScheduler.from_pretrained(
                    **_where(source, "scheduler"), local_files_only=local_files_only
                )
                if _has_component(source, "scheduler")
                else None
            )
        except OSError as error:
            if isinstance(error, CorruptWeightsError):
                raise
            unreadable = _UNREADABLE_WEIGHTS.search(str(error))
            if unreadable:  # present but broken: downloading elsewhere would not help
                raise CorruptWeightsError(
                    f"{unreadable[1]}: corrupt, truncated or malformed file; re-download or re-export it"
                ) from error
            raise MissingWeightsError(_missing_weights_message(source, str(error).splitlines()[0])) from error

        text_encoder, tokenizer = None, None
        if load_text_encoder or not _has_empty_prompt_file(source):
            try:
                text_encoder, tokenizer = _load_text_stack(source, common)
            except OSError as error:
                raise MissingWeightsError(
                    _missing_weights_message(
                        source, f"neither {EMPTY_PROMPT_FILE} nor a loadable text_encoder/"
                    )
                ) from error
        empty = _load_empty_prompt(source)
        if empty is None:
            empty = encode_prompts(text_encoder, tokenizer, [""], pad=False)  # [1, 2, D]
        backbone = cls(vae, unet, empty, scheduler, text_encoder if load_text_encoder else None, tokenizer)
        if unet_in_channels is not None and unet_in_channels != unet.config.in_channels:
            backbone.set_unet_in_channels(unet_in_channels)
        return backbone

    def save_pretrained(
        self, folder: str | os.PathLike, include_text_encoder: bool = True, vae_from: str | None = None
    ) -> None:
        """Write a diffusers-style folder: vae/, unet/, scheduler/, [text_encoder/, tokenizer/], empty prompt.

        `vae_from` names the folder or hub id this (frozen, unchanged) VAE was loaded from: the VAE is then
        not written again and from_pretrained reads it from there
        (fine-tuned models of one base share its VAE).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if vae_from is None:
            self.vae.save_pretrained(folder / "vae", safe_serialization=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")
        if include_text_encoder and self.text_encoder is not None:
            self.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
        if include_text_encoder and self.tokenizer is not None:
            self.tokenizer.save_pretrained(folder / "tokenizer")
        save_file(
            {"empty_prompt_embeds": self.empty_prompt_embeds.detach().cpu().contiguous()},
            folder / EMPTY_PROMPT_FILE,
        )
        index = {"_class_name": "StableDiffusionBackbone", "_zoo": "zoo.backbones.StableDiffusionBackbone"}
        if vae_from is not None:
            index["vae_from"] = vae_from
        (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    # ------------------------------------------------------------------ latents
    @property
    def scaling_factor(self) -> float:
        """The VAE's latent scaling factor (0.18215 for SD2)."""
        return float(self.vae.config.scaling_factor)

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @property
    def device(self) -> torch.device:
        """Device of the UNet parameters."""
        return next(self.unet.parameters()).device

    def encode_distribution(
        self, images: torch.Tensor, pad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior of images in [-1, 1] [B, 3, H, W]: scaled (mean, std), each
        [B, 4, ceil(H/8), ceil(W/8)].

        Sizes that are not multiples of 8 are replicate-padded on the bottom/right
        (undo with decode(size=...)); pad=False feeds them as they are (the official Lotus pipeline does).
        """
        mean, std = self._posterior(images, pad)
        return mean * self.scaling_factor, std * self.scaling_factor

    def _posterior(self, images: torch.Tensor, pad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior (mean, std) of [-1, 1] images in the VAE's own, unscaled units, float32
        [B, 4, h, w]."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects [B, 3, H, W] images; got {tuple(images.shape)}")
        pixels = images.to(self.device, self.vae.dtype)
        if pad:
            pixels = replicate_pad(pixels)  # [B, 3, H8, W8]
        with torch.no_grad(), self._autocast():
            posterior = self.vae.encode(self._in_memory_format(pixels)).latent_dist
        return posterior.mean.float(), posterior.std.float()

    def encode(
        self,
        images: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        pad: bool = True,
    ) -> torch.Tensor:
        """Encode images in [-1, 1] [B, 3, H, W] to scaled latents [B, 4, ceil(H/8), ceil(W/8)].

        The posterior mode by default (deterministic); `sample=True` draws from the posterior with `generator`
        (the global RNG when None, as the official Lotus pipeline does). See encode_distribution for padding.
        """
        if not sample:
            return self.encode_distribution(images, pad)[0]
        mean, std = self._posterior(images, pad)
        # Drawn in the VAE's units, then scaled: (mean + std * eps) * f, the official pipelines' order of
        # rounding.
        return sample_latents(mean, std, generator) * self.scaling_factor

    def encode_images(
        self,
        images: torch.Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        pad: bool = True,
    ) -> torch.Tensor:
        """Encode images in [0, 1] [B, 3, H, W] (what readers and predictors hold) to scaled latents; see
        encode."""
        return self.encode(images * 2 - 1, sample, generator, pad)

    def encode_images_distribution(
        self, images: torch.Tensor, pad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The scaled VAE posterior (mean, std) of images in [0, 1]; see encode_distribution."""
        return self.encode_distribution(images * 2 - 1, pad)

    def decode(self, latents: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Decode scaled latents [B, 4, h, w] to images in roughly [-1, 1] [B, 3, 8h, 8w], cropped to `size`.
        """
        latents = self._in_memory_format(latents.to(self.vae.dtype) / self.scaling_factor)
        with self._autocast():
            images = self.vae.decode(latents).sample  # [B, 3, 8h, 8w]
        images = images.float()
        if size is not None:
            images = images[..., : size[0], : size[1]]
        return images

    # ------------------------------------------------------------------ conditioning
    def prompt_embeds(self, batch_size: int) -> torch.Tensor:
        """The cached empty-prompt embedding repeated to the batch: [B, L, D]."""
        return self.empty_prompt_embeds.expand(batch_size, -1, -1)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        """Text embeddings of arbitrary prompts, padded to the tokenizer's max length: [B, 77, D]."""
        if self.text_encoder is None or self.tokenizer is None:
            raise RuntimeError(
                "this backbone was loaded without its text encoder; pass load_text_encoder=True"
            )
        return encode_prompts(self.text_encoder, self.tokenizer, list(prompts), pad=True)

    def task_codes(self, task: Task, batch_size: int) -> torch.Tensor:
        """Task-switcher class labels for a batch: [B, 4]."""
        return task_codes(task, batch_size, self.device)

    # ------------------------------------------------------------------ UNet
    def set_unet_in_channels(self, in_channels: int) -> None:
        """Widen conv_in (4 -> 8 for generative variants) and record it in the UNet config."""
        self.unet.conv_in = widen_conv_in(self.unet.conv_in, in_channels)
        self.unet.register_to_config(in_channels=in_channels)

    def unet_forward(
        self,
        sample: torch.Tensor,
        timestep: int | torch.Tensor = FINAL_TIMESTEP,
        task: Task | Sequence[Task] | None = "annotation",
        encoder_hidden_states: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One UNet call on [B, C, h, w] with the empty prompt and the task code unless given; returns
        [B, 4, h, w].

        `task` may list several tasks for a batch stacked task by task
        (the first B/T rows carry the first code, ...): one call serves the annotation and the reconstruction
        halves of a joint training batch.
        """
        batch = sample.shape[0]
        if encoder_hidden_states is None:
            encoder_hidden_states = self.prompt_embeds(batch)
        if class_labels is None and task is not None and self.unet.config.class_embed_type is not None:
            tasks = [task] if isinstance(task, str) else list(task)
            if batch % len(tasks):
                raise ValueError(f"a batch of {batch} cannot be split evenly into the tasks {tasks}")
            class_labels = torch.cat([self.task_codes(name, batch // len(tasks)) for name in tasks])  # [B, 4]
        if isinstance(timestep, int):
            timestep = torch.full((batch,), timestep, device=sample.device, dtype=torch.long)
        sample = self._in_memory_format(sample)
        with self._autocast():
            out = self.unet(
                sample, timestep, encoder_hidden_states=encoder_hidden_states, class_labels=class_labels
            ).sample
        return out.float()

    def _in_memory_format(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` [B, C, h, w] in the declared memory format: results must not depend on the caller's
        strides."""
        # A channels-last-strided input switches CPU kernels (GroupNorm above all) to a less precise path.
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return tensor.contiguous(memory_format=layout)

    def tap(self, sites: Mapping[str, str]) -> FeatureTaps:
        """Register named feature taps on UNet sites (see zoo.backbones.taps); call .remove() when done."""
        return FeatureTaps(self.unet, sites)

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, timestep: int = FINAL_TIMESTEP
    ) -> torch.Tensor:
        """DDPM forward process q(x_t | x_0) at `timestep` (Lotus-G training)."""
        timesteps = torch.full((latents.shape[0],), timestep, device=latents.device, dtype=torch.long)
        return self.scheduler.add_noise(latents, noise, timesteps)

    # ------------------------------------------------------------------ speed / memory switches
    def configure(
        self,
        autocast_dtype: torch.dtype | str | None = None,
        gradient_checkpointing: bool = False,
        attention: str = "sdpa",
        channels_last: bool = False,
        compile_unet: bool = False,
        vae_dtype: torch.dtype | str | None = None,
    ) -> StableDiffusionBackbone:
        """Apply precision and memory switches; returns self.

        autocast_dtype: "bf16"/"fp16"/None for UNet and VAE calls. attention: "sdpa" (PyTorch scaled dot
        product) or "math" (plain processor, for bit-exact comparisons). vae_dtype casts the frozen VAE.
        channels_last: channels-last weights and inputs (every VAE/UNet input is made contiguous otherwise).
        PyTorch's CPU GroupNorm is imprecise on channels-last float32 input (tiny VAE, 768x1024 black-bordered
        crop: latent 2.0e-3 from a float64 computation, against 1.0e-6 contiguous), so on the CPU the
        GroupNorms still get contiguous input (latent 4.9e-6 from float64); other devices run fully
        channels-last.
        """
        self.autocast_dtype = _dtype(autocast_dtype)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        else:
            self.unet.disable_gradient_checkpointing()
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        if attention not in ("sdpa", "math"):
            raise ValueError(f"attention must be 'sdpa' or 'math'; got {attention!r}")
        processor = AttnProcessor2_0() if attention == "sdpa" else AttnProcessor()
        self.unet.set_attn_processor(processor)
        self.vae.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())
        self.channels_last = channels_last
        layout = torch.channels_last if channels_last else torch.contiguous_format
        self.unet.to(memory_format=layout)
        self.vae.to(memory_format=layout)
        for handle in self._groupnorm_hooks:
            handle.remove()
        self._groupnorm_hooks = []
        if channels_last:
            norms = [
                m for part in (self.unet, self.vae) for m in part.modules() if isinstance(m, nn.GroupNorm)
            ]
            self._groupnorm_hooks = [norm.register_forward_pre_hook(_contiguous_on_cpu) for norm in norms]
        if compile_unet:
            self.unet = torch.compile(self.unet)
        if vae_dtype is not None:
            self.vae.to(_dtype(vae_dtype))
        return self

    def train(self, mode: bool = True) -> StableDiffusionBackbone:
        """Train mode for the UNet only; the frozen VAE and text encoder stay in eval mode."""
        super().train(mode)
        self.vae.eval()
        if self.text_encoder is not None:
            self.text_encoder.eval()
        return self

    def use_tiny_autoencoder(
        self, source: str | os.PathLike | nn.Module | None, mode: str = "tiny-decode"
    ) -> StableDiffusionBackbone:
        """Route decode ("tiny-decode") or encode and decode ("tiny") through AutoencoderTiny; "full" undoes.

        `source`: a TAESD-format folder or hub id (e.g. madebyollin/taesd), or an AutoencoderTiny.
        """
        # Imported here: the route is a module of its own beside this one and needs nothing from it.
        from zoo.backbones.autoencoder_tiny import route_vae

        if isinstance(source, (str, os.PathLike)) and mode in ("tiny-decode", "tiny"):
            source = self.load_tiny_autoencoder(source, self.vae.dtype)
        self.vae = route_vae(self.vae, source, mode)
        return self

    @staticmethod
    def load_tiny_autoencoder(source: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> nn.Module:
        """A frozen AutoencoderTiny from a TAESD-format folder or hub id (safetensors only)."""
        from diffusers import AutoencoderTiny

        source = resolve_source(str(source))

        def missing(detail: str) -> MissingWeightsError:
            return MissingWeightsError(
                f"AutoencoderTiny weights {source!r} are not available here ({detail}).\n"
                "Download them once, e.g. `huggingface-cli download madebyollin/taesd --local-dir "
                "checkpoints/taesd` (TAESD for SD 1.x/2.x latents), then pass the folder `checkpoints/taesd` "
                "(config.json and diffusion_pytorch_model.safetensors); the tiny backbone's is "
                "checkpoints/tiny/taesd."
            )

        if not Path(source).is_dir() and _looks_local(source):
            raise missing("no such folder")
        local_only = Path(source).is_dir() or os.environ.get("HF_HUB_OFFLINE", "0") == "1"
        try:
            tiny = AutoencoderTiny.from_pretrained(
                source, torch_dtype=torch_dtype, use_safetensors=True, local_files_only=local_only
            )
        except OSError as error:
            raise missing(str(error).splitlines()[0]) from error
        return tiny.requires_grad_(False).eval()


def _contiguous_on_cpu(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """GroupNorm pre-hook: contiguous input on the CPU, whose channels-last GroupNorm loses about 3 digits."""
    if args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
        return (args[0].contiguous(), *args[1:])
    return None


def _dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    aliases = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": None,
        "float32": None,
        None: None,
    }
    if isinstance(value, torch.dtype):
        return None if value == torch.float32 else value
    if value not in aliases:
        raise ValueError(f"unknown dtype {value!r}; expected one of {sorted(k for k in aliases if k)}")
    return aliases[value]


def _has_empty_prompt_file(source: str) -> bool:
    return (Path(source) / EMPTY_PROMPT_FILE).is_file()


def _load_empty_prompt(source: str) -> torch.Tensor | None:
    path = Path(source) / EMPTY_PROMPT_FILE
    return load_file(str(path))["empty_prompt_embeds"] if path.is_file() else None


def _load_text_stack(source: str, common: Mapping[str, Any]) -> tuple[nn.Module, Any]:
    from transformers import CLIPTextModel, CLIPTokenizer

    text_kwargs = {k: v for k, v in common.items() if k != "torch_dtype"}
    text_encoder = CLIPTextModel.from_pretrained(**_where(source, "text_encoder"), **text_kwargs)
    tokenizer = CLIPTokenizer.from_pretrained(**_where(source, "tokenizer"), **text_kwargs)
    return text_encoder, tokenizer


def encode_prompts(text_encoder: nn.Module, tokenizer: Any, prompts: list[str], pad: bool) -> torch.Tensor:
    """CLIP hidden states of `prompts`: [B, L, D]; pad=False keeps only BOS/EOS for "" (Lotus/Marigold trick).
    """
    tokens = tokenizer(
        prompts,
        padding="do_not_pad" if not pad else "max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        return text_encoder(tokens.input_ids.to(device))[0].float()
