"""The LightningCLI behind tools/train.py and tools/eval.py: any family from a YAML config."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from zoo.utils.files import atomic_write_json, atomic_write_text
from zoo.utils.platform import kernel_platform, select_kernels

# LightningCLI overrides for a run that only computes (tests, measurements): no logger, bar or summary.
QUIET_TRAINER = (
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--trainer.enable_model_summary",
    "false",
)
STAGE_ROOT = "outputs/stages"  # where train_stages exports the stages before the last
DEFAULT_TRAINER: dict[str, Any] = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "outputs", "name": "train"},
    },
}


class ZooCLI(LightningCLI):
    """LightningCLI with the zoo's defaults: any LightningModule/DataModule by class_path, TensorBoard,
    last.ckpt."""

    def __init__(self, args: list[str] | None = None, run: bool = True, **kwargs: Any):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        select_kernels()  # ZOO_CPU_KERNELS=portable: CPU-independent bytes (zoo.utils.platform)
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            seed_everything_default=0,
            trainer_defaults=DEFAULT_TRAINER,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001
        """Always checkpoint (with last.ckpt); configurable as `checkpoint.*` in YAML or on the command line.
        """
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 1})


def metrics_markdown(metrics: dict[str, float], title: str = "metric") -> str:
    """Two-column Markdown table of scalar metrics, sorted by name."""
    lines = [f"| {title} | value |", "| --- | --- |"]
    for name, value in sorted(metrics.items()):
        shown = f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else str(value)
        lines.append(f"| {name} | {shown} |")
    return "\n".join(lines) + "\n"


def write_metrics(metrics: dict[str, float], out_dir: str | Path, stem: str = "metrics") -> tuple[Path, Path]:
    """Write metrics as `<stem>.json` and `<stem>.md` in `out_dir` atomically; returns both paths."""
    out_dir = Path(out_dir)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    atomic_write_json(json_path, metrics)
    atomic_write_text(md_path, metrics_markdown(metrics))
    return json_path, md_path


def train_evaluate_export(config: str, out: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Train a config to the end, test it on its held-out split, export a predictor folder with its record.

    Writes `<out>/` (the model's export_pretrained folder), `<out>/metrics.json` (test metrics) and
    `<out>/recipe.json` (config, overrides, command, steps, seed, wall time, metrics). Returns the record.
    """
    import time

    import yaml

    started = time.time()
    args = ["--config", config, *(overrides or [])]
    cli = ZooCLI(args=args, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    metrics = {
        name.removeprefix("test/"): float(value) for result in results for name, value in result.items()
    }
    out = Path(out)
    cli.model.export_pretrained(str(out))
    record = {
        "config": config,
        "overrides": overrides or [],
        "command": f"python tools/train_tiny.py {config} --out {out.as_posix()}",
        "steps": int(cli.trainer.global_step),
        "seed": cli.config.get("seed_everything"),
        "train_and_test_seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        # The kernel path and thread count decide the bytes as much as the seed does (zoo.utils.platform).
        "platform": kernel_platform(),
        "threads": torch.get_num_threads(),
        "resolved_config": yaml.safe_load(Path(config).read_text()),
        "metrics": metrics,
    }
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_json(out / "recipe.json", record)
    return record


def train_stages(
    configs: list[str],
    out: str | Path,
    overrides: list[str] | None = None,
    stage_root: str | Path = STAGE_ROOT,
) -> dict[str, Any]:
    """Train a chain of configs (LLaVA's stage 1 then stage 2), each starting from the previous export.

    Every config but the last is trained, tested and exported to `<stage_root>/<config stem>`, and the next
    one gets `--model.init_args.init_from <that folder>` (after `overrides`, which every stage receives); the
    last one exports to `out`, whose recipe.json then also holds the earlier stages' records (`stages`), the
    chained command and the total wall time. One config is plain `train_evaluate_export`.
    """
    if not configs:
        raise ValueError("train_stages needs at least one config")
    records: list[dict[str, Any]] = []
    previous: Path | None = None
    for index, config in enumerate(configs):
        target = Path(out) if index == len(configs) - 1 else Path(stage_root) / Path(config).stem
        chained = [] if previous is None else ["--model.init_args.init_from", previous.as_posix()]
        records.append(train_evaluate_export(config, target, [*(overrides or []), *chained]))
        previous = target
    if len(records) == 1:
        return records[0]
    final = {
        **records[-1],
        "command": f"python tools/train_tiny.py {' '.join(configs)} --out {Path(out).as_posix()}",
        "stages": records[:-1],
        "total_seconds": round(sum(record["train_and_test_seconds"] for record in records), 1),
    }
    atomic_write_json(Path(out) / "recipe.json", final)
    return final
