"""Assembling a Mustafar model from its parts (local folders or configs) and loading an exported folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
)

from zoo.backbones import StableDiffusionBackbone
from zoo.backbones.stable_diffusion import MissingWeightsError, resolve_source
from zoo.models import MODEL_CONFIG_FILE
from zoo.models.mustafar.features import DEFAULT_SITE, DEFAULT_TIMESTEP, SDFeatureExtractor
from zoo.models.mustafar.model import (
    IMAGE_TOKEN,
    PLAIN_TEMPLATE,
    PROMPT_TEMPLATE,
    CLIPTokens,
    MustafarEncoder,
    MustafarForConditionalGeneration,
    MustafarProcessor,
)

ENCODER_FILE = "encoder.safetensors"
TEMPLATES = {"plain": PLAIN_TEMPLATE, "llava": PROMPT_TEMPLATE}
# What to download for each real part (configs/mustafar/ names these folders).
DOWNLOADS = {
    "llm": "lmsys/vicuna-7b-v1.5",
    "clip": "openai/clip-vit-large-patch14-336",
    "tokenizer": "lmsys/vicuna-7b-v1.5",
}


@dataclass
class MustafarSpec:
    """Everything that determines a Mustafar model's architecture (zoo_model.json of an export)."""

    backbone: str = "checkpoints/tiny/backbone"
    llm: str | dict[str, Any] = field(default_factory=dict)  # a causal-LM folder, or LlamaConfig fields
    clip: str | dict[str, Any] | None = None  # a CLIPVisionModel folder, CLIPVisionConfig fields, or None
    tokenizer: str | None = None  # a tokenizer folder (default: the LLM folder)
    fusion: str = "sd"
    sites: list[str] = field(default_factory=lambda: [DEFAULT_SITE])
    timestep: int = DEFAULT_TIMESTEP
    guidance_scale: float = 0.0
    image_size: tuple[int, int] = (512, 512)
    template: str = "llava"
    cross_attention_heads: int = 8
    cache_latents: bool = False


def _missing(part: str, source: str, detail: str) -> MissingWeightsError:
    name = DOWNLOADS[part]
    return MissingWeightsError(
        f"{part} {source!r} is not available here ({detail}). Download it once, e.g. "
        f"`huggingface-cli download "
        f"{name} --local-dir {source}`, or point --model.init_args.{part} at the folder."
    )


def load_tokenizer(source: str) -> Any:
    """A local tokenizer with <image> and a pad token (added, as llava-hf does, when missing)."""
    path = resolve_source(source)
    if not Path(path).is_dir():
        raise _missing("tokenizer", source, "no such folder")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    if tokenizer.pad_token_id is None:
        tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def load_llm(source: str | dict[str, Any], tokenizer: Any, dtype: torch.dtype | None = None) -> Any:
    """The causal LM: from a local folder (embeddings resized for added tokens) or a random LlamaConfig."""
    if isinstance(source, dict):
        config = LlamaConfig(
            **{
                "vocab_size": len(tokenizer),
                "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                **source,
            }
        )
        return LlamaForCausalLM(config)
    path = resolve_source(source)
    if not Path(path).is_dir():
        raise _missing("llm", source, "no such folder")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model


def load_clip(source: str | dict[str, Any] | None) -> CLIPTokens | None:
    """The frozen CLIP vision tower: a local folder, CLIPVisionConfig fields (random init) or None."""
    if source is None:
        return None
    if isinstance(source, dict):
        return CLIPTokens(
            CLIPVisionModel._from_config(CLIPVisionConfig(**source), attn_implementation="sdpa")
        )
    path = resolve_source(source)
    if not Path(path).is_dir():
        raise _missing("clip", source, "no such folder")
    return CLIPTokens(CLIPVisionModel.from_pretrained(path, local_files_only=True))


def build(
    spec: MustafarSpec, dtype: torch.dtype | None = None
) -> tuple[MustafarForConditionalGeneration, Any]:
    """The LLaVA model (encoder attached, image_seq_length set; eval mode) and its processor."""
    if spec.template not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)}; got {spec.template!r}")
    tokenizer_source = spec.tokenizer or (spec.llm if isinstance(spec.llm, str) else None)
    if tokenizer_source is None:
        raise ValueError(
            "a config-built LLM needs `tokenizer` (a folder, e.g. checkpoints/tiny/mustafar/tokenizer)"
        )
    tokenizer = load_tokenizer(tokenizer_source)
    llm = load_llm(spec.llm, tokenizer, dtype)
    clip = load_clip(spec.clip)
    sd = None
    if spec.fusion != "clip":
        backbone = StableDiffusionBackbone.from_pretrained(spec.backbone, load_text_encoder=True).eval()
        sd = SDFeatureExtractor(backbone, spec.sites, spec.timestep, spec.guidance_scale, spec.cache_latents)
    encoder = MustafarEncoder(spec.fusion, llm.config.hidden_size, sd, clip, spec.cross_attention_heads)
    seq_length = encoder.num_tokens(tuple(spec.image_size))
    # LlavaConfig needs a vision config; without CLIP a minimal one stands in (never built).
    unused = CLIPVisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    vision_config = clip.vision.config if clip is not None else unused
    config = LlavaConfig(
        text_config=llm.config,
        vision_config=vision_config,
        image_seq_length=seq_length,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
    )
    model = MustafarForConditionalGeneration.from_parts(config, llm, encoder).eval()  # as from_pretrained
    return model, MustafarProcessor(tokenizer, seq_length, TEMPLATES[spec.template])


def encoder_state(model: MustafarForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The weights of the projectors and the fusion block."""
    encoder = model.model.vision_tower
    return {
        f"{name}.{key}": value.detach().cpu().contiguous()
        for name in ("sd_projector", "clip_projector", "cross_attention")
        if getattr(encoder, name) is not None
        for key, value in getattr(encoder, name).state_dict().items()
    }


def export(
    model: MustafarForConditionalGeneration,
    processor: MustafarProcessor,
    spec: MustafarSpec,
    folder: str | Path,
    save_llm: bool,
    extra: dict[str, Any] | None = None,
    save_clip: bool = False,
) -> None:
    """Write an exported folder: encoder.safetensors, tokenizer/, llm/ (trained or random LLMs), clip/ (random
    towers, also when `save_clip` says one came from an earlier export), zoo_model.json; the SD backbone and
    unchanged pretrained parts are referenced, not copied."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    record = asdict(spec)
    save_file(encoder_state(model), str(folder / ENCODER_FILE))
    processor.tokenizer.save_pretrained(folder / "tokenizer")
    record["tokenizer"] = "tokenizer"
    if save_llm or isinstance(spec.llm, dict):
        from transformers import LlamaForCausalLM as Causal

        with torch.device("meta"):
            causal = Causal(model.config.text_config)
        causal.model, causal.lm_head = model.model.language_model, model.lm_head
        causal.save_pretrained(folder / "llm", safe_serialization=True)
        record["llm"] = "llm"
    if (save_clip or isinstance(spec.clip, dict)) and model.model.vision_tower.clip is not None:
        model.model.vision_tower.clip.vision.save_pretrained(folder / "clip", safe_serialization=True)
        record["clip"] = "clip"
    (folder / MODEL_CONFIG_FILE).write_text(
        json.dumps({"family": "mustafar", **record, **(extra or {})}, indent=2) + "\n"
    )


def read_spec(folder: str | Path) -> tuple[MustafarSpec, dict[str, Any]]:
    """The spec of an exported folder (its subfolders made absolute) and the other zoo_model.json fields."""
    folder = Path(resolve_source(str(folder)))
    marker = folder / MODEL_CONFIG_FILE
    if not marker.is_file():
        raise FileNotFoundError(f"{folder}: no {MODEL_CONFIG_FILE}; not an exported Mustafar folder")
    record = json.loads(marker.read_text())
    known = set(MustafarSpec.__dataclass_fields__)
    spec = MustafarSpec(**{k: v for k, v in record.items() if k in known})
    for part in ("llm", "clip", "tokenizer"):
        value = getattr(spec, part)
        if isinstance(value, str) and (folder / value).is_dir():
            setattr(spec, part, str(folder / value))
    spec.image_size = tuple(spec.image_size)
    return spec, {k: v for k, v in record.items() if k not in known}


def load_exported(
    folder: str | Path, dtype: torch.dtype | None = None
) -> tuple[Any, Any, MustafarSpec, dict]:
    """Model, processor, spec and extra fields of an exported folder (encoder weights loaded strictly)."""
    spec, extra = read_spec(folder)
    model, processor = build(spec, dtype)
    state = load_file(str(Path(resolve_source(str(folder))) / ENCODER_FILE))
    expected = encoder_state(model)
    if set(state) != set(expected):
        raise ValueError(
            f"{folder}/{ENCODER_FILE}: keys {sorted(set(state) ^ set(expected))} do not match the "
            f"{spec.fusion!r} encoder"
        )
    encoder = model.model.vision_tower
    for name in ("sd_projector", "clip_projector", "cross_attention"):
        if getattr(encoder, name) is not None:
            prefix = f"{name}."
            getattr(encoder, name).load_state_dict(
                {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, strict=True
            )
    return model, processor, spec, extra
