"""Every YAML recipe under configs/ parses and runs one step with the tiny backbone in place of real weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

import train as train_tool  # noqa: E402

from zoo.registry import family_of_module  # noqa: E402

CONFIGS = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "configs").rglob("*.yaml"))


def test_configs_exist():
    assert any("configs/tiny/" in c for c in CONFIGS) and any("configs/lotus/" in c for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_runs_one_step_on_the_tiny_backbone(config, tmp_path):
    recipe = yaml.safe_load((REPO_ROOT / config).read_text())
    # The family spec knows how to shrink its recipes to a one-step smoke run.
    spec = family_of_module(recipe["model"]["class_path"])
    overrides = [arg.replace("{tmp}", str(tmp_path)) for arg in spec.smoke_overrides]
    model_overrides = {
        arg.removeprefix("--model.init_args.") for arg in overrides[::2] if arg.startswith("--model.")
    }
    cli = train_tool.main(
        [
            "fit",
            "--config",
            str(REPO_ROOT / config),
            "--model.init_args.backbone",
            "checkpoints/tiny/backbone",
            "--trainer.accelerator",
            "cpu",
            "--trainer.devices",
            "1",
            "--trainer.strategy",
            "auto",
            "--trainer.precision",
            "32-true",
            "--trainer.fast_dev_run",
            "1",
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--checkpoint.dirpath",
            str(tmp_path),
            "--trainer.default_root_dir",
            str(tmp_path),
            *overrides,
        ]
    )
    assert cli.trainer.global_step == 1
    # What the recipe says is what was built (the real-size settings survive the substitution).
    for key, value in recipe["model"].get("init_args", {}).items():
        if key != "backbone" and key not in model_overrides:
            assert cli.model.hparams[key] == value, f"{config}: model.{key}"
