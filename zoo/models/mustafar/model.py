"""Mustafar: SD features (+ CLIP) as the visual encoder of a transformers LLaVA model.

The encoder (`MustafarEncoder`) fuses question-conditioned SD tokens with CLIP tokens and projects them with
LLaVA's 2-layer GELU MLP; `MustafarForConditionalGeneration` is transformers' `LlavaForConditionalGeneration`
whose `get_image_features` runs this encoder with the question as the SD prompt, so the placeholder scatter,
the loss, `generate` (which calls `get_image_features` once before prefill) and `image_seq_length` are
transformers' own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel

from zoo.heads.projector import MLPProjector
from zoo.models.mustafar.features import SDFeatureExtractor

FUSIONS = ("sd", "clip", "concat", "cross_attention")
IMAGE_TOKEN = "<image>"
PROMPT_TEMPLATE = "USER: <image>\n{question} ASSISTANT:"  # llava-1.5-hf's conversation format
PLAIN_TEMPLATE = "<image>\n"  # LLaVA's stage-1 "plain" format: the caption follows the image directly
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's pixel normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_FEATURE_LAYER = -2  # LLaVA-1.5's mm_vision_select_layer


class CLIPTokens(nn.Module):
    """A frozen CLIPVisionModel as LLaVA reads it: layer -2, CLS dropped -> [B, N_clip, C_clip]."""

    def __init__(self, vision: nn.Module, feature_layer: int = CLIP_FEATURE_LAYER) -> None:
        super().__init__()
        self.vision = vision.requires_grad_(False).eval()
        self.feature_layer = feature_layer
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def hidden_size(self) -> int:
        """C_clip."""
        return self.vision.config.hidden_size

    @property
    def num_tokens(self) -> int:
        """N_clip = (image_size / patch_size)^2 (the CLS token is dropped)."""
        return (self.vision.config.image_size // self.vision.config.patch_size) ** 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] -> patch tokens [B, N_clip, C_clip] (resized to the tower's size)."""
        size = self.vision.config.image_size
        pixels = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
        pixels = ((pixels.clamp(0, 1) - self.mean) / self.std).to(self.vision.dtype)  # [B, 3, S, S]
        with torch.no_grad():
            hidden = self.vision(pixel_values=pixels, output_hidden_states=True).hidden_states[
                self.feature_layer
            ]
        return hidden[:, 1:].float()  # [B, N_clip, C_clip]

    def train(self, mode: bool = True) -> CLIPTokens:
        """The tower stays frozen in eval mode."""
        super().train(mode)
        self.vision.eval()
        return self


class CrossAttentionFusion(nn.Module):
    """CLIP tokens query the SD tokens; the result is added to the CLIP tokens (zero at initialisation)."""

    def __init__(self, clip_dim: int, sd_dim: int, heads: int) -> None:
        super().__init__()
        if clip_dim % heads:
            raise ValueError(f"cross-attention fusion: {heads} heads do not divide the CLIP width {clip_dim}")
        self.norm_query = nn.LayerNorm(clip_dim)
        self.norm_context = nn.LayerNorm(sd_dim)
        self.attention = nn.MultiheadAttention(clip_dim, heads, kdim=sd_dim, vdim=sd_dim, batch_first=True)
        # Zero output projection: training starts from the CLIP-only model and learns what SD adds.
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)

    def forward(self, clip: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        """clip [B, N_clip, C_clip], sd [B, N_sd, C_sd] -> [B, N_clip, C_clip]."""
        attended, _ = self.attention(
            self.norm_query(clip), self.norm_context(sd), self.norm_context(sd), need_weights=False
        )
        return clip + attended


class MustafarEncoder(nn.Module):
    """Visual tokens for the LLM: SD only, CLIP only, both as one sequence ("concat"), or CLIP x SD attention.

    Each stream goes through its own LLaVA projector (2-layer GELU MLP to the LLM width); "concat" places the
    CLIP tokens first, then the SD tokens. The SD extractor and the CLIP tower are frozen; projectors and
    fusion train.
    """

    def __init__(
        self,
        fusion: str,
        text_hidden: int,
        sd: SDFeatureExtractor | None = None,
        clip: CLIPTokens | None = None,
        cross_attention_heads: int = 8,
    ) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}; got {fusion!r}")
        if fusion != "clip" and sd is None:
            raise ValueError(f"fusion {fusion!r} needs the SD feature extractor")
        if fusion != "sd" and clip is None:
            raise ValueError(f"fusion {fusion!r} needs a CLIP vision tower")
        self.fusion = fusion
        self.sd = sd if fusion != "clip" else None
        self.clip = clip if fusion != "sd" else None
        self.sd_projector = MLPProjector(sd.feature_dim, text_hidden) if fusion in ("sd", "concat") else None
        self.clip_projector = MLPProjector(clip.hidden_size, text_hidden) if fusion != "sd" else None
        self.cross_attention = (
            CrossAttentionFusion(clip.hidden_size, sd.feature_dim, cross_attention_heads)
            if fusion == "cross_attention"
            else None
        )

    def trainable_modules(self) -> list[nn.Module]:
        """The projectors and the fusion block (what stage 1 trains)."""
        return [m for m in (self.sd_projector, self.clip_projector, self.cross_attention) if m is not None]

    def num_tokens(self, image_size: tuple[int, int]) -> int:
        """Image tokens per image for images of `image_size` (H, W): the LLaVA `image_seq_length`."""
        if self.fusion == "sd":
            return self.sd.num_tokens(image_size)
        if self.fusion == "concat":
            return self.clip.num_tokens + self.sd.num_tokens(image_size)
        return self.clip.num_tokens

    def raw_tokens(
        self,
        images: torch.Tensor,
        prompts: Sequence[str] | None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Raw tokens before projection: {"sd": [B, N_sd, C_sd], "clip": [B, N_clip, C_clip]}."""
        tokens = {}
        if self.sd is not None:
            tokens["sd"] = self.sd(images, prompts, guidance_scale=guidance_scale, generator=generator)
        if self.clip is not None:
            tokens["clip"] = self.clip(images)
        return tokens

    def forward(
        self,
        images: torch.Tensor,
        prompts: Sequence[str] | None = None,
        guidance_scale: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images [B, 3, H, W] in [0, 1] and the SD prompts -> LLM-width image tokens [B, N, D_llm]."""
        tokens = self.raw_tokens(images, prompts, guidance_scale, generator)
        if self.fusion == "sd":
            return self.sd_projector(tokens["sd"])
        if self.fusion == "clip":
            return self.clip_projector(tokens["clip"])
        if self.fusion == "concat":
            return torch.cat([self.clip_projector(tokens["clip"]), self.sd_projector(tokens["sd"])], dim=1)
        return self.clip_projector(self.cross_attention(tokens["clip"], tokens["sd"]))


class MustafarLlavaModel(LlavaModel):
    """transformers' LlavaModel with the Mustafar encoder as its vision tower (attached by `set_encoder`)."""

    def __init__(self, config: LlavaConfig) -> None:
        # LlavaModel.__init__ would build a CLIP tower and projector from vision_config; ours are given
        LlavaPreTrainedModel.__init__(self, config)
        from transformers import AutoModel

        self.language_model = AutoModel.from_config(config.text_config)
        self.vision_tower: MustafarEncoder | None = None
        self.multi_modal_projector = None
        self.post_init()

    def set_encoder(self, encoder: MustafarEncoder) -> None:
        """Attach the visual encoder (its projectors are part of it)."""
        self.vision_tower = encoder

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        encoder_prompts: Sequence[str] | None = None,
        encoder_guidance_scale: float | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPooling:
        """Projected image tokens of images [B, 3, H, W] in [0, 1]; `encoder_prompts` are the SD prompts."""
        if self.vision_tower is None:
            raise RuntimeError(
                "MustafarLlavaModel has no encoder: call set_encoder(MustafarEncoder(...)) first"
            )
        features = self.vision_tower(pixel_values, encoder_prompts, encoder_guidance_scale)  # [B, N, D_llm]
        return BaseModelOutputWithPooling(last_hidden_state=features, pooler_output=list(features))


class MustafarForConditionalGeneration(LlavaForConditionalGeneration):
    """LlavaForConditionalGeneration on MustafarLlavaModel: `forward`/`generate` take `encoder_prompts`
    (the SD prompts) and `encoder_guidance_scale` (not `guidance_scale`: generate reads that as text CFG)."""

    def __init__(self, config: LlavaConfig) -> None:
        LlavaPreTrainedModel.__init__(self, config)
        self.model = MustafarLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_parts(
        cls, config: LlavaConfig, language_model: PreTrainedModel, encoder: MustafarEncoder
    ) -> MustafarForConditionalGeneration:
        """Assemble from a causal LM (its decoder and lm_head are moved in, not copied) and the encoder."""
        with torch.device("meta"):  # no second, random copy of the LLM's weights
            model = cls(config)
        model.model.language_model = language_model.model
        model.lm_head = language_model.lm_head
        model.model.set_encoder(encoder)
        return model

    def check_image_tokens(self, input_ids: torch.Tensor | None, features: torch.Tensor) -> None:
        """Each sequence must hold exactly one image's worth of placeholders (clear error otherwise)."""
        if input_ids is None:
            return
        counts = (input_ids == self.config.image_token_id).sum(dim=1).tolist()
        expected = features.shape[1]
        if len(counts) != features.shape[0] or any(count != expected for count in counts):
            raise ValueError(
                f"image tokens and image features do not match: the encoder gives {features.shape[0]} images "
                f"x {expected} tokens, the {len(counts)} sequences hold {counts} image tokens (id "
                f"{self.config.image_token_id}); expand '{IMAGE_TOKEN}' to image_seq_length="
                f"{self.config.image_seq_length} copies (MustafarProcessor does)"
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        encoder_prompts: Sequence[str] | None = None,
        encoder_guidance_scale: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """LLaVA's forward; the image features are computed here so that the SD prompts reach the encoder."""
        if pixel_values is not None:
            if mm_encoder_outputs:
                raise ValueError("pass either pixel_values or mm_encoder_outputs, not both")
            features = self.model.get_image_features(pixel_values, encoder_prompts, encoder_guidance_scale)
            mm_encoder_outputs = {"image": features}
        if mm_encoder_outputs and mm_encoder_outputs.get("image") is not None:
            self.check_image_tokens(input_ids, mm_encoder_outputs["image"].last_hidden_state)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )


class MustafarProcessor:
    """Prompts as llava-1.5-hf builds them: each `<image>` expands to `image_seq_length` image tokens.

    `template` is PROMPT_TEMPLATE ("USER: <image>\\n{question} ASSISTANT:", answer " {answer}</s>") or
    PLAIN_TEMPLATE (stage 1: the image, then the caption). Labels are -100 on the prompt and on padding.
    """

    def __init__(self, tokenizer: Any, image_seq_length: int, template: str = PROMPT_TEMPLATE) -> None:
        if IMAGE_TOKEN not in tokenizer.get_vocab():
            raise ValueError(f"the tokenizer has no {IMAGE_TOKEN!r} token: add it as a special token")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        self.tokenizer, self.image_seq_length, self.template = tokenizer, image_seq_length, template
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    def prompt(self, question: str) -> str:
        """The text prompt of one question (before image-token expansion)."""
        return self.template.format(question=question)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def __call__(
        self, questions: Sequence[str], answers: Sequence[str] | None = None, padding_side: str = "left"
    ) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask [B, L] (+ labels with answers): BOS, prompt, image tokens, answer."""
        tok = self.tokenizer
        expanded = IMAGE_TOKEN * self.image_seq_length
        rows, targets = [], []
        for index, question in enumerate(questions):
            prompt = self.prompt(question).replace(IMAGE_TOKEN, expanded)
            ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + self._ids(prompt)
            label = [-100] * len(ids)
            if answers is not None:
                answer = self._ids(" " + answers[index].strip()) + [tok.eos_token_id]
                ids, label = ids + answer, label + answer
            rows.append(ids)
            targets.append(label)
        length = max(len(ids) for ids in rows)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for ids, label in zip(rows, targets, strict=True):
            pad = length - len(ids)
            before, after = (pad, 0) if padding_side == "left" else (0, pad)
            batch["input_ids"].append([tok.pad_token_id] * before + ids + [tok.pad_token_id] * after)
            batch["attention_mask"].append([0] * before + [1] * len(ids) + [0] * after)
            batch["labels"].append([-100] * before + label + [-100] * after)
        out = {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}
        if answers is None:
            del out["labels"]
        return out
