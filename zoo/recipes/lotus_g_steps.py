"""Tiny Lotus-G depth at 1, 2 and 4 inference steps on its held-out test split, written into its metrics.

    OMP_NUM_THREADS=1 python -m zoo.recipes.lotus_g_steps            # checkpoints/tiny/lotus_depth_g
    OMP_NUM_THREADS=1 python -m zoo.recipes.lotus_g_steps --dry-run  # one test batch, nothing written

Every row is the model's own test split (configs/tiny/lotus_depth_g.yaml: the 128 held-out scenes its
metrics.json was measured on) through the same LotusModule test step with `num_inference_steps` set; G draws
each batch's noise from a generator seeded by the batch's first sample id, so the rows differ only by the
steps, and the 1-step row reproduces metrics.json. A random UNet of the same architecture is measured on the
same split: the floor a trained model has to clear. Writes `abs_rel_steps{N}` / `delta1_steps{N}` into
`<checkpoint>/metrics.json` and the whole record (with seconds per image and the command) under
`inference_steps` in `<checkpoint>/recipe.json`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from zoo.registry import REPO_ROOT
from zoo.utils.files import atomic_write_json, read_json_file

CONFIG = REPO_ROOT / "configs" / "tiny" / "lotus_depth_g.yaml"
CHECKPOINT = REPO_ROOT / "checkpoints" / "tiny" / "lotus_depth_g"
STEPS = (1, 2, 4)
COMMAND = "OMP_NUM_THREADS=1 python -m zoo.recipes.lotus_g_steps"
RANDOM_UNET_SEED = 0


def heldout_metrics(
    checkpoint: str | Path = CHECKPOINT,
    steps: int = 1,
    limit_test_batches: int | None = None,
    random_unet: bool = False,
    config: str | Path = CONFIG,
) -> dict[str, float]:
    """Test metrics of the exported Lotus-G folder `checkpoint` at `steps` inference steps.

    `limit_test_batches` keeps the first batches of the split (the first 16 x N scenes); `random_unet`
    replaces the trained UNet by a freshly initialised one of the same config (seed RANDOM_UNET_SEED).
    Adds `seconds_per_image`: the test loop's wall time over the images it scored.
    """
    from diffusers import UNet2DConditionModel

    from zoo.cli import QUIET_TRAINER, ZooCLI

    args = [
        "--config",
        str(config),
        "--model.init_args.backbone",
        str(checkpoint),
        "--model.init_args.num_inference_steps",
        str(steps),
        *QUIET_TRAINER,
    ]
    if limit_test_batches is not None:
        args += ["--trainer.limit_test_batches", str(limit_test_batches)]
    cli = ZooCLI(args=args, run=False, save_config_callback=None)
    if random_unet:
        torch.manual_seed(RANDOM_UNET_SEED)
        trained = cli.model.backbone.unet
        cli.model.backbone.unet = UNet2DConditionModel.from_config(trained.config).eval()
    started = time.perf_counter()
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    seconds = time.perf_counter() - started
    metrics = {key.removeprefix("test/"): float(value) for result in results for key, value in result.items()}
    images = len(cli.datamodule.test_dataloader().dataset)
    if limit_test_batches is not None:
        images = min(images, limit_test_batches * cli.datamodule.hparams.batch_size)
    metrics["seconds_per_image"] = seconds / images
    return metrics


def measure(
    checkpoint: str | Path = CHECKPOINT, steps: tuple[int, ...] = STEPS, limit_test_batches: int | None = None
) -> dict[str, Any]:
    """abs_rel / delta1 (and seconds per image) per number of steps, and of a random UNet at 1 step."""
    rows = {n: heldout_metrics(checkpoint, n, limit_test_batches) for n in steps}
    random = heldout_metrics(checkpoint, 1, limit_test_batches, random_unet=True)
    first = rows[min(steps)]
    return {
        "command": COMMAND,
        "config": str(Path(CONFIG).relative_to(REPO_ROOT)),
        "split": "test (held-out synthetic scenes)",
        "limit_test_batches": limit_test_batches,
        "steps": {
            str(n): {key: row[key] for key in ("abs_rel", "delta1", "seconds_per_image")}
            for n, row in rows.items()
        },
        "constant_baseline_abs_rel": first["constant_baseline_abs_rel"],
        # What the test suite checks the shipped model against (tests/test_lotus.py).
        "baseline_margin": first["constant_baseline_abs_rel"] - first["abs_rel"],
        "random_unet": {key: random[key] for key in ("abs_rel", "delta1")},
        "random_unet_margin": random["constant_baseline_abs_rel"] - random["abs_rel"],
        "torch": torch.__version__,
    }


def flat_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The registry's view: abs_rel_steps{N} and delta1_steps{N} for every measured N."""
    return {
        f"{key}_steps{n}": values[key]
        for n, values in record["steps"].items()
        for key in ("abs_rel", "delta1")
    }


def write(checkpoint: str | Path, record: dict[str, Any]) -> None:
    """Merge the per-steps metrics into metrics.json and the record into recipe.json (`inference_steps`)."""
    checkpoint = Path(checkpoint)
    metrics = read_json_file(checkpoint / "metrics.json", "metrics")
    atomic_write_json(checkpoint / "metrics.json", {**metrics, **flat_metrics(record)})
    recipe = read_json_file(checkpoint / "recipe.json", "recipe")
    atomic_write_json(checkpoint / "recipe.json", {**recipe, "inference_steps": record})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Measure and write (or print only, with --dry-run)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", default=str(CHECKPOINT))
    parser.add_argument("--dry-run", action="store_true", help="one test batch; nothing is written")
    args = parser.parse_args(argv)
    record = measure(args.checkpoint, limit_test_batches=1 if args.dry_run else None)
    lines = ["| steps | AbsRel | delta1 | seconds per image |", "| ---: | ---: | ---: | ---: |"]
    for n, values in record["steps"].items():
        lines.append(
            f"| {n} | {values['abs_rel']:.4f} | {values['delta1']:.4f} | {values['seconds_per_image']:.4f} |"
        )
    print("\n".join(lines))
    print(
        f"constant baseline AbsRel {record['constant_baseline_abs_rel']:.4f}; random UNet AbsRel "
        f"{record['random_unet']['abs_rel']:.4f}, delta1 {record['random_unet']['delta1']:.4f}"
    )
    if not args.dry_run:
        write(args.checkpoint, record)
    return record


if __name__ == "__main__":
    main()
