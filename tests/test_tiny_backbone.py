"""The committed tiny backbone: files match its recipe, its measured quality reproduces, it rebuilds."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zoo.backbones import StableDiffusionBackbone
from zoo.data.synthetic import SyntheticSceneDataset
from zoo.recipes.tiny_backbone import TinyRecipe, build_tiny_backbone, evaluate_vae_roundtrip
from zoo.registry import REPO_ROOT
from zoo.utils.files import sha256_file
from zoo.utils.platform import (
    PIN_VARIABLES,
    PORTABLE_PLATFORM,
    cpu_model,
    kernel_environment,
    kernel_platform,
    platform_differences,
    select_kernels,
    unpinned_environment,
)

# The VAE the shipped tiny models reference (vae_from): it must never change.
SHIPPED_VAE_SHA256 = "e751b44e6340b917f1159238564b6b2dc68f1e39e6030b7368618f2199cf471f"


def _record(folder):
    return json.loads((folder / "recipe.json").read_text())


def test_committed_files_match_the_recipe_hashes(tiny_backbone_dir):
    record = _record(tiny_backbone_dir)
    assert {"vae/config.json", "unet/config.json", "empty_prompt_embeds.safetensors"} <= set(record["files"])
    for name, digest in record["files"].items():
        assert sha256_file(tiny_backbone_dir / name) == digest, name
    assert record["files"]["vae/diffusion_pytorch_model.safetensors"] == SHIPPED_VAE_SHA256
    assert not list(tiny_backbone_dir.rglob("*.bin")), "weights must be safetensors"
    size = sum(p.stat().st_size for p in tiny_backbone_dir.rglob("*") if p.is_file())
    assert size < 30 * 2**20, f"tiny backbone is {size / 2**20:.1f} MiB"


def test_committed_unet_is_a_text_to_image_unet(tiny_backbone_dir):
    loaded = StableDiffusionBackbone.from_pretrained(tiny_backbone_dir, with_task_switcher=False)
    assert loaded.unet.config.class_embed_type is None  # as SD2: families add the task switcher
    assert loaded.scheduler.config.prediction_type == "epsilon"
    switched = StableDiffusionBackbone.from_pretrained(tiny_backbone_dir, with_task_switcher=True)
    assert switched.unet.class_embedding.linear_1.in_features == 4


def test_recorded_vae_quality_reproduces(tiny_backbone_dir):
    record = _record(tiny_backbone_dir)
    recipe = TinyRecipe(**record["recipe"])
    backbone = StableDiffusionBackbone.from_pretrained(tiny_backbone_dir).eval()
    data = SyntheticSceneDataset(recipe.heldout_scenes, 64, 64, base_seed=recipe.heldout_seed)
    with torch.no_grad():
        quality = evaluate_vae_roundtrip(backbone, [data[i] for i in range(recipe.heldout_scenes)])
    for name, value in record["heldout_quality"].items():
        assert quality[name] == pytest.approx(value, rel=1e-3, abs=1e-4), name


def test_backbone_package_imports_nothing_above_utils_and_data():
    """zoo.backbones is a library layer: its recipe lives in zoo.recipes."""
    for path in (Path(__file__).resolve().parents[1] / "zoo" / "backbones").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zoo."):
                assert node.module.split(".")[1] in ("backbones", "utils", "data"), (path.name, node.module)


def test_build_writes_a_loadable_folder_with_its_recipe(tmp_path):
    recipe = TinyRecipe(
        steps=2, batch_size=2, train_scenes=4, heldout_scenes=2, t2i_steps=2, t2i_train_size=64, t2i_heldout=8
    )
    record = build_tiny_backbone(tmp_path / "tiny", recipe, progress=False)
    assert record["recipe"]["steps"] == 2 and record["t2i_steps"] == 2
    assert set(record["heldout_quality"]) == {
        "disparity_absrel",
        "normals_mean_angle_deg",
        "normals_median_angle_deg",
        "rgb_psnr_db",
    }
    assert set(record["t2i_quality"]["heldout_loss"]) == {"trained", "trained_empty_prompt", "random"}
    loaded = StableDiffusionBackbone.from_pretrained(
        tmp_path / "tiny", load_text_encoder=True, with_task_switcher=False
    )
    assert loaded.vae.config.latent_channels == 4 and loaded.unet.config.class_embed_type is None
    assert loaded.vae.config.scaling_factor != 0.18215  # measured on the training images, not copied from SD
    assert "_name_or_path" not in json.loads((tmp_path / "tiny" / "unet" / "config.json").read_text())


def _differing_files(rebuilt: dict, record: dict) -> list[str]:
    return sorted(name for name, digest in record["files"].items() if rebuilt["files"].get(name) != digest)


@pytest.mark.slow
def test_text_to_image_stage_rebuilds_bit_for_bit(tiny_backbone_dir, tmp_path):
    """Stage 2 from the committed VAE (`--vae-from`) reproduces every committed file (about 45 minutes)."""
    record = _record(tiny_backbone_dir)
    rebuilt = build_tiny_backbone(
        tmp_path / "tiny", TinyRecipe(**record["recipe"]), progress=False, vae_from=tiny_backbone_dir
    )
    assert rebuilt["files"] == record["files"], (
        f"{_differing_files(rebuilt, record)} differ; recorded on {record['platform']}, "
        f"rebuilt on {rebuilt['platform']}"
    )


@pytest.mark.slow
def test_rebuild_is_bit_for_bit(tiny_backbone_dir, tmp_path):
    """`make tiny-backbone` reproduces the committed bytes (same recipe, one thread; about 80 minutes) on the
    recorded platform, CPU model included: another CPU model's native kernels may round otherwise, and the
    assertion then names both platforms."""
    record = _record(tiny_backbone_dir)
    rebuilt = build_tiny_backbone(tmp_path / "tiny", TinyRecipe(**record["recipe"]), progress=False)
    assert rebuilt["files"] == record["files"], (
        f"{_differing_files(rebuilt, record)} differ; VAE stage recorded on {record['vae_platform']}, "
        f"text-to-image stage on {record['platform']}; rebuilt on {rebuilt['platform']}"
    )


def test_reused_vae_stage_gives_the_same_bytes_and_refuses_another_recipe(tmp_path):
    recipe = TinyRecipe(
        steps=2, batch_size=2, train_scenes=4, heldout_scenes=2, t2i_steps=2, t2i_train_size=64, t2i_heldout=8
    )
    full = build_tiny_backbone(tmp_path / "full", recipe, progress=False)
    reused = build_tiny_backbone(tmp_path / "reused", recipe, progress=False, vae_from=tmp_path / "full")
    assert reused["files"] == full["files"]
    assert reused["heldout_quality"] == full["heldout_quality"] and reused["vae_stage_reused"]
    other = dataclasses.replace(recipe, kl_weight=1e-3)
    with pytest.raises(ValueError, match="kl_weight"):
        build_tiny_backbone(tmp_path / "other", other, progress=False, vae_from=tmp_path / "full")


def test_kernel_environment_selects_the_recorded_kernels():
    assert kernel_environment({"cpu_capability": "AVX512", "onednn_max_cpu_isa": "unset"}) == {
        "ATEN_CPU_CAPABILITY": "avx512"  # oneDNN chose by its CPU: nothing to pin
    }
    assert kernel_environment({"cpu_capability": "AVX2", "onednn_max_cpu_isa": "AVX2"}) == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    }
    here = kernel_platform()
    assert platform_differences(here, here) == []
    older = {**here, "torch": "1.0"}
    assert platform_differences(older, here) == [f"torch: recorded '1.0', here {here['torch']!r}"]


def test_portable_kernels_are_selected_only_with_their_whole_environment(monkeypatch):
    assert kernel_environment(PORTABLE_PLATFORM) == {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_CBWR": "COMPATIBLE",
        "ZOO_CPU_KERNELS": "portable",
    }
    for name in PIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert select_kernels() == "native" and "kernels" not in kernel_platform()
    monkeypatch.setenv("ZOO_CPU_KERNELS", "fast")
    with pytest.raises(ValueError, match="ZOO_CPU_KERNELS='fast'"):
        select_kernels()
    monkeypatch.setenv("ZOO_CPU_KERNELS", "portable")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    with pytest.raises(ValueError, match="ATEN_CPU_CAPABILITY=avx2"):  # too late to take effect here
        select_kernels()
    assert torch.backends.mkldnn.enabled  # refused before switching anything


def test_native_platform_records_the_cpu_model_and_portable_does_not(monkeypatch):
    for name in PIN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    native = kernel_platform()
    assert native["cpu_model"] == cpu_model() and cpu_model() != ""
    if Path("/proc/cpuinfo").is_file():
        assert "family" in native["cpu_model"]  # read from /proc/cpuinfo, not the masked marketing name
    monkeypatch.setenv("ZOO_CPU_KERNELS", "portable")
    assert "cpu_model" not in kernel_platform()  # portable bytes do not depend on it
    recorded_elsewhere = {**native, "cpu_model": "GenuineIntel family 6 model 143 stepping 8 (Xeon)"}
    assert platform_differences(recorded_elsewhere, native) == [
        f"cpu_model: recorded {recorded_elsewhere['cpu_model']!r}, here {native['cpu_model']!r}"
    ]
    assert platform_differences(recorded_elsewhere, native, advisory=False) == []  # named, not refused


# A few AdamW steps of a small conv/GroupNorm/linear net on one thread: the hash of its weights.
_KERNEL_PROBE = """
import hashlib, torch
from zoo.utils.platform import select_kernels
select_kernels()
torch.set_num_threads(1)
torch.manual_seed(0)
net = torch.nn.Sequential(
    torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.GroupNorm(8, 32), torch.nn.SiLU(),
    torch.nn.Conv2d(32, 32, 3, padding=1, stride=2), torch.nn.Flatten(), torch.nn.Linear(32 * 16 * 16, 8),
)
optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
for _ in range(3):
    loss = net(torch.randn(4, 3, 32, 32)).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest())
"""


def _probe_hash(environment: dict[str, str]) -> str:
    result = subprocess.run(
        [sys.executable, "-c", _KERNEL_PROBE],
        capture_output=True,
        text=True,
        timeout=300,
        env={**unpinned_environment(), **environment, "OMP_NUM_THREADS": "1"},
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_portable_kernels_round_the_same_whatever_isa_onednn_may_use():
    """oneDNN's ISA changes the bytes of the native path (the control: were it not to, this test could not
    fail), and not those of the portable one, where oneDNN is off."""
    sse = {"ONEDNN_MAX_CPU_ISA": "SSE41"}
    assert _probe_hash({}) != _probe_hash(sse)
    portable = kernel_environment(PORTABLE_PLATFORM)
    assert _probe_hash(portable) == _probe_hash({**portable, **sse})


def _platform_record(folder: Path, platform: dict) -> Path:
    folder.mkdir()
    (folder / "recipe.json").write_text(json.dumps({"platform": platform, "vae_platform": platform}))
    return folder


def _build_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "build_tiny_backbone.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**unpinned_environment(), "OMP_NUM_THREADS": "1"},
    )


def test_build_tool_restarts_on_the_recorded_kernels(tmp_path):
    # DEFAULT (no vector extension) runs on every CPU, and differs from what torch picks here by itself.
    # Another CPU model is named but does not stop the build (its native kernels may still round the same).
    here = kernel_platform()
    elsewhere = "GenuineIntel family 6 model 143 stepping 8 (Xeon)"
    recorded = {**here, "cpu_capability": "DEFAULT", "cpu_model": elsewhere}
    reference = _platform_record(tmp_path / "reference", recorded)
    tiny = "--steps 2 --batch-size 2 --train-scenes 4 --heldout-scenes 2 --t2i-steps 2 --t2i-train-size 64"
    tiny = [*tiny.split(), "--t2i-heldout", "8", "--contact-sheet", ""]
    result = _build_tool("--out", str(tmp_path / "tiny"), "--kernels-from", str(reference), *tiny)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"cpu_model: recorded {elsewhere!r}, here {here['cpu_model']!r}" in result.stderr
    record = _record(tmp_path / "tiny")
    assert record["platform"] == record["vae_platform"] == {**recorded, "cpu_model": here["cpu_model"]}


def test_build_tool_builds_on_portable_kernels(tmp_path):
    tiny = "--steps 2 --batch-size 2 --train-scenes 4 --heldout-scenes 2 --t2i-steps 2 --t2i-train-size 64"
    tiny = [*tiny.split(), "--t2i-heldout", "8", "--contact-sheet", ""]
    result = _build_tool("--out", str(tmp_path / "tiny"), "--portable-kernels", *tiny)
    assert result.returncode == 0, result.stderr[-2000:]
    record = _record(tmp_path / "tiny")
    for platform in (record["platform"], record["vae_platform"]):
        assert {name: platform.get(name) for name in PORTABLE_PLATFORM} == PORTABLE_PLATFORM
    # A rebuild of that record (`--kernels-from` it) selects the same kernels again.
    assert kernel_environment(record["platform"]) == kernel_environment(PORTABLE_PLATFORM)


def test_build_tool_refuses_kernels_this_cpu_cannot_run(tmp_path):
    reference = _platform_record(tmp_path / "reference", {**kernel_platform(), "cpu_capability": "ZVECTOR"})
    result = _build_tool("--out", str(tmp_path / "tiny"), "--kernels-from", str(reference))
    assert result.returncode != 0
    assert "cpu_capability: recorded 'ZVECTOR'" in result.stderr and "--kernels-from ''" in result.stderr
    assert not (tmp_path / "tiny").exists()  # refused before anything was written
