"""The tiny Mustafar measurements: encoders, guidance and leakage on held-out synthetic VQA, side by side.

    OMP_NUM_THREADS=1 python -m zoo.recipes.mustafar_experiments --out outputs/mustafar_experiments
    ... --variants "sd s=0" clip --steps 100 --test-images 16   # a subset, shorter

Every variant trains the same tiny LLaVA (tiny Llama + fresh projectors, frozen encoders) for the same steps
on the same synthetic VQA pairs, then answers the held-out test images greedily. The Llama is random (default)
or, with `--llm`, every variant starts from the same pretrained one (LLaVA's set-up: the tiny stage 1's LLM),
so the variants differ only in their encoder and its projector. Leakage: the SD prompt in training is the
ground-truth caption (with and without prompt dropout); at test the prompt is the matched caption, a
mismatched caption (another image's, whose answer to the same question differs: `donor_agreement` counts
answers that follow it) or none.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import yaml

from zoo.data.vqa import VQADataModule, majority_answers, synthetic_records
from zoo.evaluation.vqa import normalize_answer
from zoo.models.mustafar.module import MustafarModule

TINY_CONFIG = "configs/tiny/mustafar_stage2.yaml"
ENCODERS = {  # name -> module overrides
    "sd s=0": {"fusion": "sd", "guidance_scale": 0.0},
    "sd s=4": {"fusion": "sd", "guidance_scale": 4.0},
    "clip": {"fusion": "clip"},
    "concat s=0": {"fusion": "concat", "guidance_scale": 0.0},
    "cross_attention s=0": {"fusion": "cross_attention", "guidance_scale": 0.0},
    "cross_attention s=4": {"fusion": "cross_attention", "guidance_scale": 4.0},
}
LEAKAGE = {
    "caption-conditioned, no dropout": {
        "fusion": "sd",
        "guidance_scale": 4.0,
        "sd_prompt": "caption",
        "prompt_dropout": 0.0,
    },
    "caption-conditioned, dropout 0.5": {
        "fusion": "sd",
        "guidance_scale": 4.0,
        "sd_prompt": "caption",
        "prompt_dropout": 0.5,
    },
}
LEAKAGE_EVALS = ("caption", "mismatched_caption", "none")
# What the default run trains (about 30 minutes on one shared CPU thread): SD alone at s = 0 and 4, CLIP
# alone, the tiny-mustafar fusion and the two leakage runs ("concat s=0", "cross_attention s=0" on request).
DEFAULT_VARIANTS = (
    "sd s=0",
    "sd s=4",
    "clip",
    "cross_attention s=4",
    "caption-conditioned, no dropout",
    "caption-conditioned, dropout 0.5",
)


def _model_args(
    backbone: str, overrides: dict[str, Any], lr: float, llm: str | None = None
) -> dict[str, Any]:
    args = yaml.safe_load(Path(TINY_CONFIG).read_text())["model"]["init_args"]
    args.update({"backbone": backbone, "init_from": None, "prompt_dropout": 0.0, "lr": lr, **overrides})
    if llm is not None:  # a pretrained LLM folder (LLaVA's set-up), with the tokenizer saved beside it
        args.update({"llm": llm, "tokenizer": str(Path(llm).parent / "tokenizer")})
    return args


def _unet_hash(backbone: str) -> str:
    from zoo.backbones.stable_diffusion import resolve_source
    from zoo.utils.files import sha256_file

    return sha256_file(Path(resolve_source(backbone)) / "unet" / "diffusion_pytorch_model.safetensors")[:16]


def _backbone_metrics(backbone: str) -> dict[str, float]:
    """The backbone's own held-out text-to-image losses (a trained prior, not a random UNet), if recorded."""
    from zoo.backbones.stable_diffusion import resolve_source

    path = Path(resolve_source(backbone)) / "metrics.json"
    values = json.loads(path.read_text()) if path.is_file() else {}
    names = ("heldout_loss", "heldout_loss_empty_prompt", "heldout_loss_random")
    return {name: values[name] for name in names if name in values}


def _test(trainer: pl.Trainer, module: MustafarModule, data: VQADataModule, eval_prompt: str | None) -> dict:
    module.hparams.eval_sd_prompt = eval_prompt
    results = trainer.test(module, datamodule=data, verbose=False)
    return {k.removeprefix("test/"): float(v) for r in results for k, v in r.items()}


def run(
    out: str,
    backbone: str,
    steps: int,
    train_images: int,
    test_images: int,
    seed: int,
    cache_dir: str | None = "outputs/cache/vqa",
    lr: float = 2e-3,
    variants: tuple[str, ...] = DEFAULT_VARIANTS,
    llm: str | None = None,
) -> dict[str, Any]:
    """Train and test every variant; writes results.json and results.md to `out`; returns the results."""
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = VQADataModule(
        train_images=train_images,
        val_images=8,
        test_images=test_images,
        batch_size=32,
        eval_batch_size=64,
        seed=seed,
        cache_dir=cache_dir,
    )
    _, train_items = synthetic_records(train_images, "train", (64, 64), cache_dir)
    _, test_items = synthetic_records(test_images, "test", (64, 64), cache_dir)
    overall, by_type = majority_answers(train_items)
    right = [
        normalize_answer(item["answer"]) == normalize_answer(by_type.get(item["question_type"], overall))
        for item in test_items
    ]
    results: dict[str, Any] = {
        "steps": steps,
        "lr": lr,
        "llm": llm or "random tiny Llama (configs/tiny/mustafar_stage2.yaml)",
        "seed": seed,
        "train_images": train_images,
        "train_pairs": len(train_items),
        "test_pairs": len(test_items),
        "backbone": backbone,
        "backbone_metrics": _backbone_metrics(backbone),
        "majority_answer": overall,
        "majority_overall_accuracy": sum(i["answer"] == overall for i in test_items) / len(test_items),
        "majority_per_type_accuracy": sum(right) / len(right),
        "encoders": {},
        "leakage": {},
    }
    unknown = sorted(set(variants) - set(ENCODERS) - set(LEAKAGE))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {sorted(ENCODERS) + sorted(LEAKAGE)}")
    for group, table in (("encoders", ENCODERS), ("leakage", LEAKAGE)):
        for name, overrides in table.items():
            if name not in variants:
                continue
            pl.seed_everything(seed)
            started = time.time()
            module = MustafarModule(**_model_args(backbone, overrides, lr, llm))
            trainer = pl.Trainer(
                accelerator="cpu",
                devices=1,
                max_steps=steps,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                limit_val_batches=0,
                gradient_clip_val=1.0,
                enable_model_summary=False,
            )
            trainer.fit(module, datamodule=data)
            evals = LEAKAGE_EVALS if group == "leakage" else (None,)
            record = {
                str(e or overrides.get("sd_prompt", "question")): _test(trainer, module, data, e)
                for e in evals
            }
            record["seconds"] = round(time.time() - started, 1)
            record["unet_sha256"] = _unet_hash(backbone)  # the tiny backbone may be retrained meanwhile
            results[group][name] = record
            print(name, json.dumps(record), flush=True)
            (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    """The two result tables (encoders; leakage) as Markdown."""
    lines = [
        "| encoder | accuracy | count | colour | position | pose |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    lines.append(
        f"| majority answer per question type | {results['majority_per_type_accuracy']:.3f} | | | | |"
    )
    lines.append(
        f"| majority answer overall ({results['majority_answer']}) | "
        f"{results['majority_overall_accuracy']:.3f} | | | | |"
    )
    for name, record in results["encoders"].items():
        metrics = next(v for k, v in record.items() if k != "seconds")
        kinds = [
            metrics.get(f"accuracy/{kind}", float("nan")) for kind in ("count", "colour", "position", "pose")
        ]
        lines.append(
            f"| {name} | {metrics['accuracy']:.3f} | " + " | ".join(f"{v:.3f}" for v in kinds) + " |"
        )
    lines += [
        "",
        "| training | test prompt: GT caption | mismatched caption | donor agreement | no caption |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, record in results["leakage"].items():
        lines.append(
            f"| {name} | {record['caption']['accuracy']:.3f} | {record['mismatched_caption']['accuracy']:.3f}"
            f" | {record['mismatched_caption']['donor_agreement']:.3f} | {record['none']['accuracy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="outputs/mustafar_experiments")
    parser.add_argument("--backbone", default="checkpoints/tiny/backbone")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--cache-dir", default="outputs/cache/vqa")
    parser.add_argument(
        "--variants", nargs="+", default=list(DEFAULT_VARIANTS), help="names from ENCODERS and LEAKAGE"
    )
    parser.add_argument(
        "--llm",
        help="start every variant's LLM from this folder (e.g. outputs/stages/mustafar_stage1/llm, the tiny "
        "stage 1's), the projectors fresh; default: a random tiny Llama",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(
        args.out,
        args.backbone,
        args.steps,
        args.train_images,
        args.test_images,
        args.seed,
        args.cache_dir,
        args.lr,
        tuple(args.variants),
        args.llm,
    )


if __name__ == "__main__":
    main()
