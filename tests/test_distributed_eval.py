"""Evaluation is the same on one process and on two: the evaluator protocol gathers before it computes.

Real 2-process runs (Lightning DDP, gloo on the CPU) of tools/eval.py and of a validation inside `fit` with
the shipped tiny models, against one process; plus the merge rules
(padding repeats, sample-id order, the exact streaming median) with several ranks simulated in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data.depth_protocols import DepthEvalProtocol
from zoo.evaluation import base as evaluation_base
from zoo.evaluation import normals as normals_module
from zoo.evaluation.depth import DepthEvaluator
from zoo.evaluation.normals import ExactMedianWindow, NormalEvaluator, summarize_angular_errors

REPO_ROOT = Path(__file__).resolve().parent.parent
OPEN = DepthEvalProtocol("open", 1e-6, 1e6, None)  # no range clipping: the merge tests compare evaluators


# ---------------------------------------------------------------------------------------------- real DDP
def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )


# Five held-out samples in batches of one: two ranks get three each, so Lightning's DistributedSampler repeats
# sample 0 on rank 1, and the evaluators must not count it twice.
TINY_RUNS = {
    "sdpose": [
        "--config",
        "configs/tiny/sdpose_body.yaml",
        "--model.init_args.backbone",
        "checkpoints/tiny/sdpose_body",
        "--data.init_args.test_images",
        "5",
        "--data.init_args.val_images",
        "5",
        "--data.init_args.batch_size",
        "1",
    ],
    "lotus": [
        "--config",
        "configs/tiny/lotus_depth_d.yaml",
        "--model.init_args.backbone",
        "checkpoints/tiny/lotus_depth_d",
        "--data.init_args.test_size",
        "5",
        "--data.init_args.val_size",
        "5",
        "--data.init_args.batch_size",
        "1",
    ],
}


def _eval(family: str, devices: int, tmp_path: Path) -> dict[str, float]:
    out = tmp_path / f"{family}_{devices}"
    args = [
        "tools/eval.py",
        *TINY_RUNS[family],
        "--out",
        str(out),
        "--trainer.devices",
        str(devices),
        "--trainer.accelerator",
        "cpu",
        "--trainer.enable_progress_bar",
        "false",
    ]
    if family == "sdpose":
        args += ["--data.init_args.cache_dir", str(tmp_path / "cache")]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    result = _run(args)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("family", ["sdpose", "lotus"])
def test_eval_tool_on_two_ddp_processes_equals_one(family: str, tmp_path: Path) -> None:
    single = _eval(family, 1, tmp_path)
    double = _eval(family, 2, tmp_path)
    assert single.keys() == double.keys() and single
    for name, value in single.items():
        assert double[name] == pytest.approx(value, abs=1e-9), name
    headline = "test/AP" if family == "sdpose" else "test/abs_rel"
    assert 0 < single[headline] < 1  # a real score, not an empty or degenerate one


VALIDATE_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from zoo.cli import ZooCLI
cli = ZooCLI(args=sys.argv[1:], run=False, save_config_callback=None)
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
if cli.trainer.global_rank == 0:
    metrics = {{k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}}
    open({out!r}, "w").write(json.dumps(metrics))
"""


def _validate_in_fit(devices: int, tmp_path: Path) -> dict[str, float]:
    out = tmp_path / f"val_{devices}.json"
    script = tmp_path / "validate.py"
    script.write_text(VALIDATE_SCRIPT.format(repo=str(REPO_ROOT), out=str(out)))
    # One training step at learning rate 0 (the weights stay the shipped ones), then the validation of `fit`,
    # which under DDP runs through the DistributedDataParallel wrapper with padded, even shards.
    args = [
        str(script),
        *TINY_RUNS["sdpose"],
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--data.init_args.train_images",
        "4",
        "--data.init_args.num_workers",
        "0",
        "--model.init_args.lr",
        "0.0",
        "--model.init_args.head_lr",
        "0.0",
        "--trainer.max_steps",
        "1",
        "--trainer.val_check_interval",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.devices",
        str(devices),
        "--trainer.default_root_dir",
        str(tmp_path / f"fit_{devices}"),
        "--checkpoint.dirpath",
        str(tmp_path),
    ]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    result = _run(args)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def test_validation_during_fit_on_two_ddp_processes_equals_one(tmp_path: Path) -> None:
    single = _validate_in_fit(1, tmp_path)
    double = _validate_in_fit(2, tmp_path)
    assert "val/AP" in single and single.keys() == double.keys()
    for name, value in single.items():
        assert double[name] == pytest.approx(value, abs=1e-9), name


# ---------------------------------------------------------------------------------------------- merge rules
def _ranks(monkeypatch: pytest.MonkeyPatch, states: list) -> None:
    """Make gather_objects return the given per-rank states (rank 0 first) instead of this process's alone."""
    monkeypatch.setattr(evaluation_base, "gather_objects", lambda value: states)
    monkeypatch.setattr(normals_module, "gather_objects", lambda value: states)


def _depth_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    gt = 1 + 5 * torch.rand(1, 1, 6, 6, generator=generator)
    pred = gt * (1 + 0.2 * torch.rand(1, 1, 6, 6, generator=generator))
    return pred, gt, torch.ones_like(gt, dtype=torch.bool)


def test_depth_evaluator_merges_ranks_and_drops_padding_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    batches = {index: _depth_batch(index) for index in range(5)}
    single = DepthEvaluator()
    for index, (pred, gt, valid) in batches.items():
        single.update(pred, gt, valid, OPEN, sample_ids=[index])
    expected = single.compute()
    # DistributedSampler over 5 samples and 2 ranks: rank 0 gets 0, 2, 4; rank 1 gets 1, 3 and 0 again.
    rank0, rank1 = DepthEvaluator(), DepthEvaluator()
    for evaluator, ids in ((rank0, [0, 2, 4]), (rank1, [1, 3, 0])):
        for index in ids:
            evaluator.update(*batches[index], OPEN, sample_ids=[index])
    _ranks(monkeypatch, [rank0._records, rank1._records])
    assert rank0.compute() == expected  # exactly: same records, same order
    # Without the de-duplication the repeated sample would weigh twice.
    doubled = np.mean([single._records[i]["abs_rel"] for i in (0, 1, 2, 3, 4, 0)])
    assert doubled != pytest.approx(expected["abs_rel"], abs=1e-12)


def test_normal_evaluator_merges_ranks_and_drops_the_last_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    generator = torch.Generator().manual_seed(0)
    images = {
        index: (torch.randn(1, 3, 5, 7, generator=generator), torch.randn(1, 3, 5, 7, generator=generator))
        for index in range(5)
    }
    single = NormalEvaluator()
    for index, (pred, gt) in images.items():
        single.update(pred, gt, sample_ids=[index])
    expected = single.compute()
    all_errors = torch.cat([torch.as_tensor(single_errors(*images[i])) for i in range(5)])
    assert expected == pytest.approx(summarize_angular_errors(all_errors), abs=1e-12)  # exact median too
    ranks = [NormalEvaluator(), NormalEvaluator()]
    for evaluator, ids in zip(ranks, ([0, 2, 4], [1, 3, 0]), strict=True):
        for index in ids:
            evaluator.update(*images[index], sample_ids=[index])
    states = [(e._streamed, e._held, e._counts, e._sums, e._window) for e in ranks]
    _ranks(monkeypatch, states)
    assert ranks[0].compute() == pytest.approx(expected, abs=1e-12)


def test_normal_evaluator_refuses_a_repeat_it_cannot_take_back(monkeypatch: pytest.MonkeyPatch) -> None:
    pred, gt = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4)
    ranks = [NormalEvaluator(), NormalEvaluator()]
    for evaluator, ids in zip(ranks, ([0, 1], [0, 2]), strict=True):  # sample 0 first on both ranks
        for index in ids:
            evaluator.update(pred, gt, sample_ids=[index])
    _ranks(monkeypatch, [(e._streamed, e._held, e._counts, e._sums, e._window) for e in ranks])
    with pytest.raises(ValueError, match="two ranks"):
        ranks[0].compute()


def single_errors(pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """Angular errors of one image, flat."""
    from zoo.evaluation.normals import angular_error

    return angular_error(pred, gt).flatten().numpy()


@pytest.mark.parametrize("count", [1, 2, 999, 1000, 5001, 20001])
def test_exact_median_window_is_exact_past_its_capacity(count: int) -> None:
    rng = np.random.default_rng(count)
    values = rng.uniform(0, 180, count) ** 1.3 / 180**0.3  # skewed, so the median is not the midpoint
    window = ExactMedianWindow(capacity=1000)  # up to 20x fewer kept values than the stream holds
    for chunk in np.array_split(values, 37):
        window.add(chunk)
    assert window.median() == float(np.median(values))  # bit for bit, not within a histogram bin
    assert window.exact and window.count == count


def test_exact_median_window_merges_and_says_when_it_had_to_approximate() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.uniform(0, 90, 3000), rng.uniform(0, 90, 2000)]
    windows = []
    for part in parts:
        window = ExactMedianWindow(capacity=256)
        window.add(part)
        windows.append(window)
    merged = windows[0].merge(windows[1:])
    assert merged.median() == float(np.median(np.concatenate(parts))) and merged.exact
    # An adversarial stream: the running median drifts out of the window; the histogram answers within 5e-4.
    drift = ExactMedianWindow(capacity=16)
    stream = np.concatenate([np.full(100, 10.0), np.linspace(100, 170, 400)])
    for chunk in np.array_split(stream, 50):
        drift.add(chunk)
    assert drift.median() == pytest.approx(float(np.median(stream)), abs=5e-4)
    assert not drift.exact
