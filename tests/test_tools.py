"""tools/train.py and tools/eval.py end to end: TensorBoard logs, last.ckpt, explicit resume, seeds, metrics
files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "tools"))

import eval as eval_tool  # noqa: E402
import train as train_tool  # noqa: E402

CONFIG = str(REPO_ROOT / "configs" / "tiny" / "lotus_depth_d.yaml")


def _small(tmp: Path, steps: int, name: str = "run", checkpoint_dir: bool = True) -> list[str]:
    return [
        "--config",
        CONFIG,
        "--trainer.max_steps",
        str(steps),
        "--trainer.val_check_interval",
        "2",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(tmp / "logs"),
        "--trainer.logger.init_args.name",
        name,
        *(["--checkpoint.dirpath", str(tmp / name / "checkpoints")] if checkpoint_dir else []),
        "--data.init_args.image_size",
        "[32, 32]",
        "--data.init_args.train_size",
        "8",
        "--data.init_args.val_size",
        "2",
        "--data.init_args.test_size",
        "4",
        "--data.init_args.batch_size",
        "2",
    ]


def _unet_weights(cli) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.backbone.unet.state_dict().items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two steps of tiny Lotus-D training through tools/train.py."""
    tmp = tmp_path_factory.mktemp("train")
    cli = train_tool.main(["fit", *_small(tmp, 2)])
    return tmp, cli


def test_training_writes_last_checkpoint_and_tensorboard_logs(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tmp, cli = trained
    assert cli.trainer.global_step == 2
    last = tmp / "run" / "checkpoints" / "last.ckpt"
    assert last.is_file()
    # The checkpoint is plain data: it loads with weights_only=True.
    state = torch.load(last, weights_only=True, map_location="cpu")
    assert state["global_step"] == 2
    events = list((tmp / "logs" / "run").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    accumulator = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/loss_annotation", "train/loss_reconstruction", "val/abs_rel"} <= scalars
    assert "val/depth" in accumulator.Tags()["images"]
    assert (tmp / "logs" / "run" / "version_0" / "config.yaml").is_file()


def test_resume_from_an_explicit_checkpoint_continues_the_step_count(trained, tmp_path):
    tmp, first = trained
    last = tmp / "run" / "checkpoints" / "last.ckpt"
    resumed = train_tool.main(["fit", *_small(tmp_path, 4, "resumed"), "--ckpt_path", str(last)])
    assert resumed.trainer.global_step == 4
    # Resuming restored the optimiser: AdamW's step counter continued from the checkpoint.
    state = resumed.trainer.optimizers[0].state
    assert int(next(iter(state.values()))["step"]) == 4


def test_same_seed_same_weights_and_another_seed_differs(tmp_path):
    runs = [
        train_tool.main(
            [
                "fit",
                *_small(tmp_path / str(i), 1),
                "--seed_everything",
                str(seed),
                "--trainer.limit_val_batches",
                "0",
            ]
        )
        for i, seed in enumerate((3, 3, 4))
    ]
    weights = [_unet_weights(cli) for cli in runs]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert any(not torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_train_evaluate_export_records_the_kernel_platform_and_threads(tmp_path):
    """A tiny model's recipe.json names what its bytes depend on besides the seed: libraries, kernels."""
    from zoo.cli import train_evaluate_export
    from zoo.utils.platform import kernel_platform

    args = [arg for arg in _small(tmp_path, 1, checkpoint_dir=False) if arg not in ("--config", CONFIG)]
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = train_evaluate_export(CONFIG, tmp_path / "export", args)
    finally:
        torch.set_num_threads(previous)
    written = json.loads((tmp_path / "export" / "recipe.json").read_text())
    assert written["platform"] == kernel_platform() == record["platform"]
    assert written["platform"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert written["threads"] == 1 and written["steps"] == 1


def test_eval_writes_json_and_markdown(trained, tmp_path):
    tmp, _ = trained
    last = tmp / "run" / "checkpoints" / "last.ckpt"
    args = _small(tmp_path, 2, checkpoint_dir=False)
    metrics = eval_tool.main([*args, "--ckpt_path", str(last), "--out", str(tmp_path / "eval")])
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert written == metrics
    assert {"test/abs_rel", "test/delta1", "test/constant_baseline_abs_rel"} <= set(written)
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| test/abs_rel |" in table


def test_eval_refuses_a_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        eval_tool.main(["--config", CONFIG, "--ckpt_path", str(tmp_path / "none.ckpt")])
    assert "no such checkpoint" in capsys.readouterr().err


def test_eval_scores_a_benchmark_reader_with_its_protocol(trained, tmp_path):
    """tools/eval.py on an NYUv2-layout fixture: the reader, the Eigen-crop protocol and native resolution."""
    import numpy as np
    from PIL import Image

    root = tmp_path / "nyuv2"
    (root / "test" / "room").mkdir(parents=True)
    rows = []
    rng = np.random.default_rng(0)
    for index in range(2):
        rgb = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
        depth = (np.linspace(800, 6000, 640)[None].repeat(480, 0)).astype(np.uint16)  # millimetres
        Image.fromarray(rgb).save(root / "test" / "room" / f"rgb_{index}.png")
        Image.fromarray(depth).save(root / "test" / "room" / f"depth_{index}.png")
        rows.append(f"test/room/rgb_{index}.png test/room/depth_{index}.png")
    (root / "list.txt").write_text("\n".join(rows) + "\n")
    tmp, _ = trained
    metrics = eval_tool.main(
        [
            *_small(tmp_path, 2, checkpoint_dir=False),
            "--ckpt_path",
            str(tmp / "run" / "checkpoints" / "last.ckpt"),
            "--data.init_args.test_dataset",
            "nyuv2",
            "--data.init_args.test_root",
            str(root),
            "--data.init_args.test_filelist",
            str(root / "list.txt"),
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    assert 0 < metrics["test/abs_rel"] < 10 and 0 <= metrics["test/delta1"] <= 1
    # A constant aligned in disparity space scores the same on both identical-GT images: a finite, positive
    # floor.
    assert metrics["test/constant_baseline_abs_rel"] > 0


def test_eval_refuses_empty_ground_truth_with_a_named_error(tmp_path, realdata, capsys):
    ann = tmp_path / "empty.json"
    image = {"id": 785, "file_name": "000000000785.jpg", "width": 640, "height": 425}
    ann.write_text(
        json.dumps(
            {
                "images": [image],
                "annotations": [],
                "categories": [{"id": 1, "name": "person", "keypoints": [], "skeleton": []}],
            }
        )
    )
    with pytest.raises(SystemExit) as exit_info:
        eval_tool.main(
            [
                "--config",
                str(REPO_ROOT / "configs/tiny/sdpose_body.yaml"),
                "--model.init_args.backbone",
                "checkpoints/tiny/sdpose_body",
                "--data.init_args.source",
                "coco",
                "--data.init_args.val_ann_file",
                str(ann),
                "--data.init_args.val_image_root",
                str(realdata / "coco"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
    assert exit_info.value.code == 2
    assert "empty.json" in capsys.readouterr().err and not (tmp_path / "out" / "metrics.json").exists()
