"""Accuracy cost of the fast autoencoder path: each tiny model with the full VAE, tiny decode and tiny both.

Every row is the model's own held-out test split (the one its metrics.json was measured on), run through the
same LightningModule test step; only the backbone's autoencoder route changes between rows.
"""

from __future__ import annotations

from pathlib import Path

from zoo.backbones.autoencoder_tiny import VAE_MODES
from zoo.registry import REPO_ROOT

TINY_TAESD = REPO_ROOT / "checkpoints" / "tiny" / "taesd"

# (tiny model, its recipe, the metric that summarises it, lower is better, does the model decode?)
TINY_MODELS = (
    ("lotus_depth_d", "depth AbsRel", "abs_rel", True, True),
    ("lotus_depth_g", "depth AbsRel", "abs_rel", True, True),
    ("lotus_normal_d", "normals mean angle (deg)", "mean", True, True),
    ("sdpose_body", "pose AP", "AP", False, False),
)


def _test_metrics(name: str, taesd: str | Path, mode: str, dry_run: bool) -> dict[str, float]:
    """Test metrics of the shipped tiny model `name` with the backbone's autoencoder route set to `mode`."""
    from zoo.cli import QUIET_TRAINER, ZooCLI

    args = [
        "--config",
        str(REPO_ROOT / "configs" / "tiny" / f"{name}.yaml"),
        "--model.init_args.backbone",
        str(REPO_ROOT / "checkpoints" / "tiny" / name),
        *QUIET_TRAINER,
    ]
    if dry_run:
        args += ["--trainer.limit_test_batches", "1"]
    cli = ZooCLI(args=args, run=False, save_config_callback=None)
    cli.model.backbone.use_tiny_autoencoder(taesd, mode)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)
    return {key.removeprefix("test/"): float(value) for result in results for key, value in result.items()}


def run(
    taesd: str | Path = TINY_TAESD,
    dry_run: bool = False,
    out: str | Path | None = None,
    models: list[str] | None = None,
) -> dict[str, float]:
    """Print (and write to `out`) each tiny model's accuracy per autoencoder route; return the numbers.

    `models` keeps a subset of TINY_MODELS (by folder name, e.g. ["lotus_depth_g"]), in the table's order.
    """
    known = [spec[0] for spec in TINY_MODELS]
    unknown = sorted(set(models or ()) - set(known))
    if unknown:
        raise ValueError(f"unknown tiny models {unknown}; choose from {known}")
    results: dict[str, float] = {}
    rows = []
    for name, label, key, lower_is_better, decodes in TINY_MODELS:
        if models and name not in models:
            continue
        values = {}
        for mode in VAE_MODES:
            if mode == "tiny-decode" and not decodes:
                continue  # pose reads UNet features and never decodes: identical to the full VAE
            values[mode] = _test_metrics(name, taesd, mode, dry_run)[key]
            results[f"{name}_{mode}"] = values[mode]
        cells = [name, label, f"{values['full']:.4f}"]
        for mode in VAE_MODES[1:]:
            if mode not in values:
                cells.append("= full (never decodes)")
                continue
            change = values[mode] - values["full"]
            worse = change > 0 if lower_is_better else change < 0
            cells.append(
                f"{values[mode]:.4f} ({'+' if change >= 0 else ''}{change:.4f}{', worse' if worse else ''})"
            )
        rows.append("| " + " | ".join(cells) + " |")
    text = (
        "\n".join(
            [
                "Accuracy of the tiny models on their held-out synthetic test splits, AutoencoderTiny "
                f"{Path(taesd).name}" + (" (dry run: one batch)" if dry_run else ""),
                "",
                '| model | metric | full VAE | vae="tiny-decode" | vae="tiny" |',
                "| --- | --- | ---: | ---: | ---: |",
                *rows,
            ]
        )
        + "\n"
    )
    print(text)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    return results


__all__ = ["TINY_MODELS", "TINY_TAESD", "run"]
