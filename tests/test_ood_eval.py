"""tools/eval.py --ood-root: the shipped tiny SDPose on synthetic figures and their COCO-OOD splits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from zoo.builders import build
from zoo.data.synthetic.figures import write_coco_figures
from zoo.evaluation.ood import drop_table, find_splits

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

import eval as eval_tool  # noqa: E402


def test_drop_table_values():
    table = drop_table({"original": {"AP": 0.8}, "oil": {"AP": 0.6}, "sketch": {"AP": 0.8}})
    assert "| oil | 0.6000 | 25.0% |" in table and "| sketch | 0.8000 | 0.0% |" in table
    with pytest.raises(KeyError, match="original"):
        drop_table({"oil": {"AP": 0.1}})


def test_find_splits_needs_finished_splits(tmp_path):
    with pytest.raises(FileNotFoundError, match="no split folders"):
        find_splits(tmp_path)


def test_ood_table_of_the_tiny_pose_model(tmp_path):
    ann, images = write_coco_figures(
        tmp_path / "figures", 6, seed=5_000_000, split="val", width=192, height=192
    )
    build(ann, images, tmp_path / "ood", ["corrupt-s5", "pencil"], progress=False)
    out = tmp_path / "eval"
    metrics = eval_tool.main(
        [
            "--config",
            str(REPO_ROOT / "configs" / "tiny" / "sdpose_body.yaml"),
            "--model.init_args.backbone",
            "checkpoints/tiny/sdpose_body",
            "--data.init_args.source",
            "coco",
            "--data.init_args.val_ann_file",
            str(ann),
            "--data.init_args.val_image_root",
            str(images),
            "--data.init_args.test_ann_file",
            str(ann),
            "--data.init_args.test_image_root",
            str(images),
            "--data.init_args.batch_size",
            "8",
            "--trainer.enable_progress_bar",
            "false",
            "--ood-root",
            str(tmp_path / "ood"),
            "--out",
            str(out),
        ]
    )
    ood = json.loads((out / "ood.json").read_text())
    assert set(ood) == {"original", "corrupt-s5", "pencil"}
    assert ood["original"] == metrics
    # The shipped model finds the figures, and heavy corruption costs it AP.
    assert metrics["test/AP"] > 0.4
    assert ood["corrupt-s5"]["test/AP"] < metrics["test/AP"]
    table = (out / "ood.md").read_text()
    assert table.count("\n") == 2 + 3 and "| corrupt-s5 |" in table
