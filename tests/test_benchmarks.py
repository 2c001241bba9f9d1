"""Every benchmark mode runs in its dry-run form (one iteration at tiny sizes on the CPU), so none can rot."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from zoo.registry import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "tools"))
import benchmark  # noqa: E402


# diffpose: its dry run (half a minute) is tests/test_diffpose.py::test_video_folder_and_benchmark_dry_run.
@pytest.mark.parametrize("mode", ["lotus", "pose", "cocood", "mustafar", "memory"])
def test_tiny_benchmark_modes_dry_run(mode: str, realdata: Path, capsys: pytest.CaptureFixture) -> None:
    benchmark.main(
        [
            mode,
            "--dry-run",
            "--coco-ann",
            str(realdata / "coco" / "test_coco.json"),
            "--coco-images",
            str(realdata / "coco"),
        ]
    )
    assert "|" in capsys.readouterr().out  # a table was printed


def test_autoencoder_accuracy_dry_run(tmp_path: Path) -> None:
    import torch

    from zoo.models.autoencoder_tiny import tiny_taesd

    # Any TAESD-format folder runs the code path; the shipped one is tested in tests/test_autoencoder_tiny.py.
    torch.manual_seed(0)
    taesd = tiny_taesd(8)
    last = [module for module in taesd.decoder.modules() if isinstance(module, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.bias += 0.5  # decodes near mid-grey: a positive disparity to align, as a trained decoder gives
    taesd.save_pretrained(tmp_path / "taesd", safe_serialization=True)
    out = tmp_path / "accuracy.md"
    benchmark.main(["autoencoder", "--dry-run", "--taesd", str(tmp_path / "taesd"), "--out", str(out)])
    text = out.read_text()
    rows = ("| lotus_depth_d | depth AbsRel |", "| lotus_depth_g | depth AbsRel |", "| lotus_normal_d |")
    for row in (*rows, "| sdpose_body | pose AP |"):
        assert row in text, row
    # A subset keeps its rows only; an unknown name is refused with the known ones.
    subset = ["--models", "sdpose_body"]
    benchmark.main(
        ["autoencoder", "--dry-run", "--taesd", str(tmp_path / "taesd"), "--out", str(out), *subset]
    )
    assert "| sdpose_body | pose AP |" in out.read_text() and "lotus_depth_d" not in out.read_text()
    with pytest.raises(ValueError, match="choose from"):
        benchmark.main(["autoencoder", "--dry-run", "--models", "lotus_depth_x"])


def test_sd2_scale_dry_run_prints_every_table(tmp_path: Path) -> None:
    out = tmp_path / "sd2.md"
    benchmark.main(["lotus", "--scale", "sd2", "--dry-run", "--out", str(out)])
    text = out.read_text()
    for title in (
        "Cost split",
        "Lotus predictors vs their bare calls",
        "MarigoldNormalsPipeline, v1-0 paper",
        "Fast autoencoder",
        "SDPose top-down",
        "gradient checkpointing",
    ):
        assert title in text, title
    assert "composed from measured costs" in text and "| measured |" in text
    assert "interleaved pairs" in text and "median of pair ratios" in text


def test_sd2_ratio_section_alone(tmp_path: Path) -> None:
    out = tmp_path / "ratio.md"
    benchmark.main(["lotus", "--scale", "sd2", "--only", "ratio", "--dry-run", "--out", str(out)])
    text = out.read_text()
    assert "Lotus predictors vs their bare calls" in text and "load average" in text.splitlines()[0]
    assert "| LotusPredictor D / bare" in text and "| LotusPredictor G (1 step) / bare" in text
    assert "Cost split" not in text and "Marigold" not in text  # the other sections did not run


def test_interleaved_pairs_alternate_the_order_and_pair_the_ratios(monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.benchmarks import timing

    calls: list[str] = []
    # A takes 2 s and B 1 s, except that a load burst doubles the second pair's A.
    seconds = iter([2.0, 1.0, 1.0, 4.0, 2.0, 1.0])
    monkeypatch.setattr(timing, "_timed", lambda fn: (fn(), next(seconds))[1])
    paired = timing.interleaved_pairs(lambda: calls.append("a"), lambda: calls.append("b"), 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert paired.a == [2.0, 4.0, 2.0] and paired.b == [1.0, 1.0, 1.0]
    assert paired.pair_ratios == [2.0, 4.0, 2.0]
    assert paired.median_ratio == 2.0 and paired.min_ratio == 2.0  # the burst moves neither
    with pytest.raises(ValueError, match="pairs"):
        timing.interleaved_pairs(lambda: None, lambda: None, 0)


def test_inside_timer_counts_the_wrapped_calls_and_restores_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    import torch

    from zoo.benchmarks import timing

    model = torch.nn.Linear(2, 2)
    clock = iter([1.0, 3.5])  # one wrapped call, from 1.0 s to 3.5 s
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    with timing.InsideTimer([(model, "forward")]) as inside:
        model(torch.zeros(1, 2))
        assert "forward" in vars(model)
    assert inside.seconds == 2.5 and "forward" not in vars(model)
    model(torch.zeros(1, 2))  # unwrapped again: a consulted clock would raise StopIteration


def test_sd2_configs_are_the_published_sd2_base_architectures() -> None:
    from zoo.benchmarks.sd2 import load_config

    unet, vae, text = load_config("unet"), load_config("vae"), load_config("text_encoder")
    assert unet["block_out_channels"] == [320, 640, 1280, 1280] and unet["cross_attention_dim"] == 1024
    assert unet["attention_head_dim"] == [5, 10, 20, 20] and unet["use_linear_projection"] is True
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["scaling_factor"] == 0.18215
    assert text["hidden_size"] == 1024 and text["num_hidden_layers"] == 23


def test_gpu_benchmark_dry_run_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    benchmark.main(["gpu", "--dry-run", "--out", str(out)])
    text = out.read_text()
    assert text.startswith("DRY RUN") and "torch" in text.splitlines()[0]
    for cell in ("| fp16 |", "| bf16 |", "| TAESD |", "dynamo only (dry run)", "persons/s", "images/s"):
        assert cell in text, cell


def test_sd2_unets_share_all_weights_but_conv_in_and_the_class_embedding() -> None:
    from zoo.benchmarks.sd2 import build_sd2

    parts = build_sd2(dry_run=True)
    shared = parts.unet_d.down_blocks[0].resnets[0].conv1.weight
    for unet in (parts.unet_g, parts.unet_marigold):
        assert unet.down_blocks[0].resnets[0].conv1.weight.data_ptr() == shared.data_ptr()
    assert parts.unet_g.conv_in.in_channels == 8 and parts.unet_d.conv_in.in_channels == 4
    assert parts.unet_marigold.conv_in.weight.data_ptr() == parts.unet_g.conv_in.weight.data_ptr()
    assert parts.unet_marigold.config.class_embed_type is None and parts.unet_g.class_embedding is not None
    assert parts.empty_prompt_embeds.shape == (1, 2, 32)
