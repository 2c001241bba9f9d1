"""Every YAML recipe under configs/ parses and runs one step with the tiny backbone in place of real weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

import train as train_tool  # noqa: E402

CONFIGS = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "configs").rglob("*.yaml"))

# Per datamodule: the overrides that shrink its data to a smoke-test size (real-size recipes point at datasets
# that are not here; the synthetic source stands in for them).
DATA_OVERRIDES = {
    "zoo.data.depth_datamodule.DepthNormalDataModule": [
        "--data.init_args.source", "synthetic", "--data.init_args.image_size", "[32, 32]",
        "--data.init_args.train_size", "4", "--data.init_args.val_size", "2", "--data.init_args.test_size", "2",
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
    ],
    "zoo.data.pose_datamodule.PoseDataModule": [
        "--data.init_args.source", "synthetic", "--data.init_args.input_size", "[48, 64]",
        "--data.init_args.train_images", "2", "--data.init_args.val_images", "1", "--data.init_args.test_images", "1",
        "--data.init_args.figure_size", "[64, 64]", "--data.init_args.batch_size", "2",
        "--data.init_args.num_workers", "0",
    ],
}
# Model settings that must follow the shrunken data (crop and heatmap sizes); everything else stays as written.
MODEL_OVERRIDES = {
    "zoo.models.sdpose.SDPoseModule": {"input_size": "[48, 64]", "heatmap_size": "[12, 16]", "sigma": "2.0"},
}


def test_configs_exist():
    assert any("configs/tiny/" in c for c in CONFIGS) and any("configs/lotus/" in c for c in CONFIGS)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_runs_one_step_on_the_tiny_backbone(config, tmp_path):
    recipe = yaml.safe_load((REPO_ROOT / config).read_text())
    data_class = recipe["data"]["class_path"]
    assert data_class in DATA_OVERRIDES, f"{config}: add smoke-test overrides for {data_class}"
    model_overrides = MODEL_OVERRIDES.get(recipe["model"]["class_path"], {})
    data_overrides = list(DATA_OVERRIDES[data_class])
    if "cache_dir" in recipe["data"].get("init_args", {}) or data_class.endswith("PoseDataModule"):
        data_overrides += ["--data.init_args.cache_dir", str(tmp_path / "cache")]
    cli = train_tool.main([
        "fit", "--config", str(REPO_ROOT / config),
        "--model.init_args.backbone", "checkpoints/tiny/backbone",
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
        "--trainer.precision", "32-true", "--trainer.fast_dev_run", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--checkpoint.dirpath", str(tmp_path),
        "--trainer.default_root_dir", str(tmp_path),
        *data_overrides,
        *[arg for key, value in model_overrides.items() for arg in (f"--model.init_args.{key}", value)],
    ])
    assert cli.trainer.global_step == 1
    # What the recipe says is what was built (the real-size settings survive the substitution).
    for key, value in recipe["model"].get("init_args", {}).items():
        if key != "backbone" and key not in model_overrides:
            assert cli.model.hparams[key] == value, f"{config}: model.{key}"
