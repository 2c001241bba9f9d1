"""The Mustafar scale-out strategies on 2 CPU processes (gloo): Lightning DDP and the real recipe's FSDP.

A few steps of the tiny stage 2 (from the shipped tiny-mustafar) train on 2 real processes; each check can
fail:
- DDP: both ranks end with bit-identical trained weights (projectors, fusion, LLM), which moved from the
  start, while the SD encoder stays frozen;
- FSDP2 (`fully_shard` per LlamaDecoderLayer and per trainable part, MustafarModule.configure_model, through
  Lightning's ModelParallelStrategy): the same run ends with the weights of the DDP run (same shards, same
  mean gradients), and its test loop generates over sharded weights and gathers as DDP does. The real
  recipe's FSDPStrategy (FSDP1) does not run on the CPU: Lightning refuses it, and torch's
  FullyShardedDataParallel raises "FSDP needs a non-CPU accelerator device" (checked below);
- the test loop under DDP gathers every rank's answers: the question count is the whole held-out set (an odd
  number, so DistributedSampler repeats one on the second rank and the evaluator must drop it), and the
  accuracy equals the one rank 0 computes alone over all the questions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from zoo.cli import QUIET_TRAINER

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "checkpoints/tiny/mustafar"

SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
import torch
from zoo.cli import ZooCLI
from zoo.evaluation.vqa import normalize_answer

out = sys.argv[1]
cli = ZooCLI(args=sys.argv[2:], run=False, save_config_callback=None)
module, trainer = cli.model, cli.trainer
before = {{k: v.detach().clone() for k, v in module.state_dict().items()}}
trainer.fit(module, datamodule=cli.datamodule)
rank = trainer.global_rank
state = trainer.strategy.lightning_module_state_dict()  # full weights (gathered to rank 0 under FSDP)
if state:
    trained = {{k: v.detach().cpu().clone() for k, v in state.items() if k in before}}
    torch.save({{"trained": trained, "before": before}}, f"{{out}}/rank{{rank}}.pt")
alone = None
if {test}:
    metrics = trainer.test(module, datamodule=cli.datamodule, verbose=False)[0]
    if rank == 0 and not module._sharded:  # every question answered here alone, without the other rank
        data = cli.datamodule.dataset("test")
        items = [data[i] for i in range(len(data))]
        module.eval()
        answers = module.answer(
            torch.stack([x["image"] for x in items]), [x["text"] for x in items], [x["text"] for x in items]
        )
        right = [normalize_answer(a) == normalize_answer(x["answer"]) for a, x in zip(answers, items)]
        alone = {{"accuracy": sum(right) / len(right), "count": len(right)}}
    if rank == 0:
        json.dump({{"gathered": {{k: float(v) for k, v in metrics.items()}}, "alone": alone}},
                  open(f"{{out}}/test.json", "w"))
"""

TEST_IMAGES = 5  # 21 held-out questions: odd, so the second rank repeats one


# FSDP2 (torch.distributed.fsdp.fully_shard, MustafarModule.configure_model) through Lightning's
# ModelParallelStrategy, data-parallel only; full weights gathered on rank 0.
FSDP2 = (
    "{class_path: lightning.pytorch.strategies.ModelParallelStrategy, init_args: {data_parallel_size: 2, "
    "tensor_parallel_size: 1, save_distributed_checkpoint: false}}"
)


def _strategy(kind: str) -> str:
    return {"ddp": "ddp", "fsdp2": FSDP2}[kind]


def _run(kind: str, tmp_path: Path, test: bool) -> Path:
    out = tmp_path / kind
    out.mkdir()
    script = tmp_path / f"run_{kind}.py"
    script.write_text(SCRIPT.format(repo=str(REPO_ROOT), test=test))
    args = [
        str(script),
        str(out),
        "--config",
        "configs/tiny/mustafar_stage2.yaml",
        "--model.init_args.init_from",
        str(SHIPPED),
        "--model.init_args.prompt_dropout",
        "0.0",
        "--model.init_args.lr",
        "1e-3",
        "--data.init_args.train_images",
        "8",
        "--data.init_args.val_images",
        "1",
        "--data.init_args.test_images",
        str(TEST_IMAGES),
        "--data.init_args.batch_size",
        "2",
        "--data.init_args.eval_batch_size",
        "2",
        "--data.init_args.cache_dir",
        str(tmp_path / "cache"),
        "--trainer.max_steps",
        "3",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.devices",
        "2",
        "--trainer.strategy",
        _strategy(kind),
        *QUIET_TRAINER,
        "--trainer.default_root_dir",
        str(tmp_path / f"root_{kind}"),
        "--checkpoint.dirpath",
        str(tmp_path / f"ckpt_{kind}"),
        "--checkpoint.monitor",
        "null",
        "--checkpoint.save_top_k",
        "0",
        "--checkpoint.save_last",
        "false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-6000:]
    return out


def _trained(out: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    saved = torch.load(out / f"rank{rank}.pt", weights_only=True)
    return saved["trained"], saved["before"]


def _trainable(state: dict[str, torch.Tensor]) -> list[str]:
    parts = ("sd_projector", "clip_projector", "cross_attention", "language_model", "lm_head")
    return sorted(k for k in state if any(part in k for part in parts))


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (SHIPPED / "zoo_model.json").is_file():
        pytest.skip("checkpoints/tiny/mustafar is not built")
    return _run("ddp", tmp_path_factory.mktemp("mustafar_ddp"), test=True)


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_trained_weights(ddp_run: Path) -> None:
    rank0, before = _trained(ddp_run, 0)
    rank1, _ = _trained(ddp_run, 1)
    names = _trainable(rank0)
    assert names and set(names) == set(_trainable(rank1))
    for name in names:
        assert torch.equal(rank0[name], rank1[name]), name
    moved = [name for name in names if not torch.equal(rank0[name], before[name])]
    assert len(moved) > len(names) // 2  # trained, not a pair of untouched copies
    frozen = [k for k in rank0 if "backbone" in k][:50]
    assert frozen and all(torch.equal(rank0[k], before[k]) for k in frozen)  # the SD encoder stays frozen


@pytest.mark.slow
def test_ddp_test_loop_gathers_every_rank_and_drops_the_repeat(ddp_run: Path) -> None:
    result = json.loads((ddp_run / "test.json").read_text())
    gathered, alone = result["gathered"], result["alone"]
    assert alone["count"] % 2 == 1  # the second rank got a repeated question
    assert gathered["test/count"] == alone["count"]
    assert gathered["test/accuracy"] == pytest.approx(alone["accuracy"], abs=1e-6)  # logged as float32


@pytest.mark.slow
def test_fsdp2_trains_as_ddp_does(ddp_run: Path, tmp_path: Path) -> None:
    fsdp_run = _run("fsdp2", tmp_path, test=True)
    fsdp, _ = _trained(fsdp_run, 0)  # the full weights, gathered on rank 0 only
    assert not (fsdp_run / "rank1.pt").exists()
    ddp, before = _trained(ddp_run, 0)
    names = _trainable(ddp)
    assert set(_trainable(fsdp)) == set(names)
    for name in names:
        torch.testing.assert_close(fsdp[name], ddp[name], atol=1e-5, rtol=1e-4, msg=name)
    assert any(not torch.equal(fsdp[name], before[name]) for name in names)
    # Generation over sharded weights (synced steps on both ranks) answers and gathers as DDP does.
    sharded = json.loads((fsdp_run / "test.json").read_text())["gathered"]
    replicated = json.loads((ddp_run / "test.json").read_text())["gathered"]
    assert sharded["test/count"] == replicated["test/count"]
    assert sharded["test/accuracy"] == pytest.approx(replicated["test/accuracy"], abs=1e-9)


def test_lightning_fsdp_strategy_refuses_the_cpu() -> None:
    """What the real recipe's FSDPStrategy (FSDP1) does on the CPU: Lightning refuses it before torch would
    (torch's FullyShardedDataParallel itself raises "FSDP needs a non-CPU accelerator device")."""
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import FSDPStrategy

    recipe = yaml.safe_load((REPO_ROOT / "configs/mustafar/stage2_finetune.yaml").read_text())
    assert recipe["trainer"]["strategy"]["class_path"] == "lightning.pytorch.strategies.FSDPStrategy"
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        pl.Trainer(accelerator="cpu", devices=2, strategy=FSDPStrategy(), logger=False)
