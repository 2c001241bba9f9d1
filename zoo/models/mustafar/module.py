"""MustafarModule: LLaVA-style training of Mustafar (stage 1 captions, stage 2 VQA) on the family base."""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.evaluation.base import Evaluator, sample_ids
from zoo.evaluation.vqa import MMVPPairAccuracy, MultipleChoiceAccuracy, VQAAccuracy
from zoo.models.base import FamilyModule
from zoo.models.mustafar.build import TEMPLATES, MustafarSpec, build, export, load_exported
from zoo.models.mustafar.features import DEFAULT_SITE, DEFAULT_TIMESTEP
from zoo.models.mustafar.model import MustafarProcessor

SD_PROMPTS = ("none", "question", "caption", "mismatched_caption")
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # LLaVA's LoRA


class MustafarModule(FamilyModule):
    """Trains the projectors (stage 1) or projectors + LLM (stage 2) of a Mustafar LLaVA model.

    `sd_prompt` is what the SD encoder is conditioned on in training ("none": unconditional, LLaVA stage 1 on
    captions; "question": stage 2; "caption": the ground-truth caption, the leakage set-up of the paper), each
    dropped to "" with probability `prompt_dropout`. `eval_sd_prompt` (default: as in training) may be
    "mismatched_caption": the caption of another image whose answer to the same question differs; the metric
    `donor_agreement` then counts answers that follow the injected caption instead of the image. `init_from`
    starts from an exported folder or a Lightning checkpoint of the same architecture (stage 2 from stage 1).
    `lora_rank` > 0 (with `train_llm` false) trains peft LoRA adapters on every Llama projection instead of
    the LLM, merged into the exported LLM.
    Optimiser: AdamW, linear warm-up over `warmup_ratio` of the steps, cosine decay to 0 (LLaVA-1.5).
    """

    family = "mustafar"

    def __init__(
        self,
        backbone: str = "checkpoints/tiny/backbone",
        llm: str | dict[str, Any] = "checkpoints/vicuna-7b-v1.5",
        clip: str | dict[str, Any] | None = None,
        tokenizer: str | None = None,
        fusion: str = "sd",
        sites: list[str] | None = None,
        timestep: int = DEFAULT_TIMESTEP,
        guidance_scale: float = 0.0,
        image_size: tuple[int, int] = (512, 512),
        template: str = "llava",
        cross_attention_heads: int = 8,
        cache_latents: bool = False,
        sd_prompt: str = "question",
        eval_sd_prompt: str | None = None,
        prompt_dropout: float = 0.0,
        train_llm: bool = True,
        lora_rank: int = 0,
        lora_alpha: float = 16.0,
        init_from: str | None = None,
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_ratio: float = 0.03,
        max_new_tokens: int = 8,
        gradient_checkpointing: bool = False,
        log_images_every_n_val: int = 1,
        ema_decay: float | None = None,
    ) -> None:
        super().__init__(ema_decay, log_images_every_n_val)
        self.save_hyperparameters()
        for name, value in (("sd_prompt", sd_prompt), ("eval_sd_prompt", eval_sd_prompt or sd_prompt)):
            if value not in SD_PROMPTS:
                raise ValueError(f"{name} must be one of {SD_PROMPTS}; got {value!r}")
        if not 0 <= prompt_dropout <= 1:
            raise ValueError(f"prompt_dropout must lie in [0, 1]; got {prompt_dropout}")
        self.spec = MustafarSpec(
            backbone,
            llm,
            clip,
            tokenizer,
            fusion,
            list(sites or [DEFAULT_SITE]),
            timestep,
            guidance_scale,
            tuple(image_size),
            template,
            cross_attention_heads,
            cache_latents,
        )
        if init_from is not None and not str(init_from).endswith(".ckpt"):
            self.model, self.processor, loaded, _ = load_exported(init_from)
            for field_name in ("fusion", "sites", "timestep"):
                if getattr(loaded, field_name) != getattr(self.spec, field_name):
                    raise ValueError(
                        f"init_from {init_from}: {field_name} {getattr(loaded, field_name)!r} differs "
                        f"from this config's {getattr(self.spec, field_name)!r}"
                    )
            self.spec.llm, self.spec.clip, self.spec.tokenizer = loaded.llm, loaded.clip, loaded.tokenizer
            if self.encoder.sd is not None:  # guidance and caching are stage settings, not weights
                self.encoder.sd.guidance_scale = float(guidance_scale)
                self.encoder.sd.cache_latents = cache_latents
            if tuple(image_size) != loaded.image_size or template != loaded.template:
                self.processor = self._processor()
        else:
            self.model, self.processor = build(self.spec)
            if init_from is not None:  # a Lightning checkpoint of the same architecture (real stage 1 -> 2)
                state = torch.load(init_from, map_location="cpu", weights_only=True)["state_dict"]
                self.load_state_dict(state, strict=True)
        if lora_rank and train_llm:
            raise ValueError("lora_rank trains LoRA adapters of a frozen LLM: set train_llm false with it")
        self.model.model.language_model.requires_grad_(train_llm)
        self.model.lm_head.requires_grad_(train_llm)
        if lora_rank:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(r=lora_rank, lora_alpha=lora_alpha, target_modules=list(LORA_TARGETS))
            self.model.model.language_model = get_peft_model(self.model.model.language_model, config)
        if gradient_checkpointing:
            self.model.model.language_model.gradient_checkpointing_enable()
        self._rng = random.Random(0)
        self._majority: tuple[str, dict[str, str]] | None = None
        self._sharded = False  # configure_model applied FSDP2
        # build() returns the model in eval mode (as from_pretrained) and Lightning keeps the modes it finds:
        # train mode for the trainable parts (the frozen SD and CLIP towers keep eval mode themselves).
        self.model.train()
        self.setup_ema()

    def configure_model(self) -> None:
        """FSDP2 under Lightning's ModelParallelStrategy (unlike FSDPStrategy, it runs on the CPU with gloo).

        Every LlamaDecoderLayer, the token embeddings, the LLM, lm_head and each trainable encoder part become
        `fully_shard` units over the data-parallel mesh, under one root unit, the LLaVA model (whose group
        keeps the rest, the frozen SD and CLIP towers included). A no-op without a device mesh (every other
        strategy) and when already sharded.
        """
        mesh = self.device_mesh
        if mesh is None or self._sharded:
            return
        from torch.distributed.fsdp import fully_shard

        mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        language = self.model.model.language_model
        for layer in language.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(language.embed_tokens, mesh=mesh)  # LlavaModel embeds the ids outside the LLM's forward
        fully_shard(language, mesh=mesh)
        fully_shard(self.model.lm_head, mesh=mesh)
        for module in self.encoder.trainable_modules():
            fully_shard(module, mesh=mesh)
        # One root for all of them (training and every generate step call the LLaVA model): its own group
        # holds the rest, the frozen towers included, gathered for each forward.
        fully_shard(self.model, mesh=mesh)
        self._sharded = True

    def _processor(self) -> MustafarProcessor:
        """A processor for this config's image size and template (image_seq_length follows)."""
        length = self.encoder.num_tokens(tuple(self.spec.image_size))
        self.model.config.image_seq_length = length
        return MustafarProcessor(self.processor.tokenizer, length, TEMPLATES[self.spec.template])

    @property
    def _random_clip(self) -> bool:
        """The config builds the CLIP tower from a config (random init), not from a pretrained folder."""
        return isinstance(self.hparams.clip, dict) and self.encoder.clip is not None

    @property
    def encoder(self) -> nn.Module:
        """The Mustafar visual encoder (SD extractor, CLIP, projectors, fusion)."""
        return self.model.model.vision_tower

    def trainable_parameters(self) -> Iterable[nn.Parameter]:
        """Projectors and fusion, plus the LLM when `train_llm` (its LoRA adapters with `lora_rank`)."""
        params = [p for module in self.encoder.trainable_modules() for p in module.parameters()]
        if self.hparams.lora_rank:
            return params + [p for p in self.model.model.language_model.parameters() if p.requires_grad]
        if self.hparams.train_llm:
            params += list(self.model.model.language_model.parameters())
            params += [p for p in self.model.lm_head.parameters() if all(p is not q for q in params)]
        return params

    # ------------------------------------------------------------------ prompts
    def sd_prompts(self, batch: dict[str, Any], mode: str, dropout: float) -> list[str] | None:
        """The SD encoder's prompt per item for `mode`, each dropped to "" with probability `dropout`."""
        if mode == "none" or self.encoder.sd is None:
            return None
        field_name = {"question": "text", "caption": "caption", "mismatched_caption": "donor_caption"}[mode]
        prompts = list(batch[field_name])
        return ["" if dropout and self._rng.random() < dropout else prompt for prompt in prompts]

    def _scale_for(self, prompts: Sequence[str] | None) -> float | None:
        # Without prompts the encoder runs its unconditional pass only.
        return 0.0 if prompts is None else None

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Next-token loss on the answer (or caption) tokens."""
        hp = self.hparams
        inputs = self.processor(batch["text"], batch["answer"], padding_side="right")
        prompts = self.sd_prompts(batch, hp.sd_prompt, hp.prompt_dropout)
        out = self.model(
            **{k: v.to(self.device) for k, v in inputs.items()},
            pixel_values=batch["image"],
            encoder_prompts=prompts,
            encoder_guidance_scale=self._scale_for(prompts),
        )
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return out.loss

    @torch.no_grad()
    def answer(
        self,
        images: torch.Tensor,
        questions: Sequence[str],
        sd_prompts: Sequence[str] | None,
        max_new_tokens: int | None = None,
    ) -> list[str]:
        """Greedy answers of a batch (left-padded prompts, one generate call)."""
        inputs = {k: v.to(self.device) for k, v in self.processor(questions).items()}
        if self._sharded:  # generate reads the image features outside the root's forward: gather them first
            self.model.unshard()
        generated = self.model.generate(
            **inputs,
            pixel_values=images.to(self.device),
            encoder_prompts=sd_prompts,
            encoder_guidance_scale=self._scale_for(sd_prompts),
            max_new_tokens=max_new_tokens or self.hparams.max_new_tokens,
            do_sample=False,
            pad_token_id=self.processor.tokenizer.pad_token_id,
            # Sharded weights are gathered by collective calls: every rank runs the same number of steps.
            synced_gpus=self._sharded and torch.distributed.is_initialized(),
        )
        if self._sharded:
            self.model.reshard()
        new = generated[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.processor.tokenizer.batch_decode(new, skip_special_tokens=True)]

    # ------------------------------------------------------------------ evaluation
    def _evaluator_kind(self) -> str:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "evaluator_kind", "vqa")

    def make_evaluators(self, stage: str) -> dict[str, Evaluator]:
        """Exact-match VQA (+ donor agreement under a mismatched caption), MMVP pairs or multiple choice."""
        kind = self._evaluator_kind() if stage == "test" else "vqa"
        if kind == "mmvp":
            return {"mmvp": MMVPPairAccuracy()}
        if kind == "multiple_choice":
            return {"multiple_choice": MultipleChoiceAccuracy()}
        evaluators: dict[str, Evaluator] = {"vqa": VQAAccuracy()}
        if (self.hparams.eval_sd_prompt or self.hparams.sd_prompt) == "mismatched_caption":
            evaluators["donor"] = VQAAccuracy()
        self._majority = self._majority_answers() if stage == "test" else None
        if self._majority is not None:
            evaluators["majority"] = VQAAccuracy()
        return evaluators

    def _majority_answers(self) -> tuple[str, dict[str, str]] | None:
        """The training set's most frequent answer overall and per question type, on synthetic VQA data."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        hparams = getattr(datamodule, "hparams", {})
        if not (hparams.get("source") == "synthetic" and hparams.get("task") == "vqa"):
            return None
        from zoo.data.vqa import majority_answers

        return majority_answers(datamodule.dataset("train").items)

    def evaluation_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> None:
        """Generate answers and score them."""
        mode = self.hparams.eval_sd_prompt or self.hparams.sd_prompt
        prompts = self.sd_prompts(batch, mode, 0.0)
        predictions = self.answer(batch["image"], batch["text"], prompts)
        ids = list(sample_ids(batch, len(predictions)))
        for name, evaluator in self.evaluators.items():
            if name == "vqa":
                evaluator.update(ids, predictions, batch["answer"], batch["question_type"])
            elif name == "majority":  # the baseline that answers each question type's majority answer
                overall, by_type = self._majority
                guesses = [by_type.get(kind, overall) for kind in batch["question_type"]]
                evaluator.update(ids, guesses, batch["answer"], batch["question_type"])
            elif name == "donor":
                keep = [i for i, donor in enumerate(batch["donor_answer"]) if donor]
                evaluator.update(
                    [ids[i] for i in keep],
                    [predictions[i] for i in keep],
                    [batch["donor_answer"][i] for i in keep],
                )
            elif name == "mmvp":
                evaluator.update(ids, predictions, batch["answer"], [int(p) for p in batch["pair_id"]])
            else:
                evaluator.update(
                    ids,
                    predictions,
                    [o.split("\n") for o in batch["options"]],
                    [int(i) for i in batch["answer_index"]],
                )

    def epoch_metrics(self, results: dict[str, dict[str, float]]) -> dict[str, float]:
        """VQA metrics unprefixed; the donor evaluator's accuracy as donor_agreement; on synthetic test data
        the baseline answering each question type's majority answer as majority_accuracy(/<type>)."""
        metrics: dict[str, float] = {}
        for name, values in results.items():
            if name == "donor":
                metrics["donor_agreement"] = values["accuracy"]
            elif name == "majority":
                metrics.update({f"majority_{k}": v for k, v in values.items() if k.startswith("accuracy")})
            else:
                metrics.update(values)
        return metrics

    # ------------------------------------------------------------------ optimisation / export
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the trainable parameters; linear warm-up then cosine decay to 0, per step."""
        hp = self.hparams
        optimizer = self.adamw(
            [{"params": list(self.trainable_parameters()), "lr": hp.lr}], hp.weight_decay, hp.betas
        )
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = max(int(math.ceil(hp.warmup_ratio * total)), 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(total - warmup, 1))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def export_weights(self, folder: Path) -> None:
        """encoder.safetensors, tokenizer/, llm/ when trained (LoRA merged in), clip/ when random-init."""
        # A tower the config builds at random travels with every export, also after a stage chain (where the
        # spec names the earlier stage's copy, not a lasting pretrained folder).
        save_clip = self._random_clip
        if not self.hparams.lora_rank:
            export(
                self.model,
                self.processor,
                self.spec,
                folder,
                save_llm=self.hparams.train_llm,
                save_clip=save_clip,
            )
            return
        adapted = self.model.model.language_model
        # Merge a copy: the training model keeps its adapters.
        self.model.model.language_model = copy.deepcopy(adapted).merge_and_unload()
        try:
            export(self.model, self.processor, self.spec, folder, save_llm=True, save_clip=save_clip)
        finally:
            self.model.model.language_model = adapted

    def export_config(self) -> dict[str, Any]:
        """zoo_model.json: the spec (export rewrote the subfolder names) plus generation defaults."""
        record = asdict(self.spec)
        for part in ("llm", "clip", "tokenizer"):
            if (
                isinstance(record[part], dict)
                or (part == "llm" and (self.hparams.train_llm or self.hparams.lora_rank))
                or (part == "clip" and self._random_clip)
                or part == "tokenizer"
            ):
                record[part] = part
        record["max_new_tokens"] = self.hparams.max_new_tokens
        record["sd_prompt"] = self.hparams.sd_prompt
        return record
