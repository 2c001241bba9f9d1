"""SDPose: head shapes, feature sites, losses and the reconstruction switch, flip test, training CLI,
converter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from zoo.backbones import StableDiffusionBackbone
from zoo.codecs import flip_heatmaps
from zoo.data.metainfo import load_metainfo
from zoo.heads.heatmap import HeatmapHead, keypoint_mse_loss
from zoo.models.sdpose import SDPose, SDPoseModule, load_sdpose
from zoo.models.sdpose.convert import (
    convert_head_state_dict,
    convert_official_sdpose,
    is_official_layout,
    load_official_sdpose,
)
from zoo.models.sdpose.model import feature_channels

REPO = Path(__file__).resolve().parent.parent
COCO = load_metainfo("coco")
TINY_INPUT = (96, 128)  # (w, h) as the tiny recipe
TINY_HEATMAP = (24, 32)


@pytest.fixture(autouse=True)
def _one_thread():
    # Two shared cores: extra intra-op threads only add contention.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def backbone(tiny_backbone_dir: Path) -> StableDiffusionBackbone:
    torch.manual_seed(0)
    return StableDiffusionBackbone.from_pretrained(tiny_backbone_dir, with_task_switcher=True)


def _crops(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, TINY_INPUT[1], TINY_INPUT[0], generator=torch.Generator().manual_seed(seed))


def test_head_upsamples_twice_with_official_layout():
    head = HeatmapHead(32, 17)
    assert head(torch.randn(2, 32, 16, 12)).shape == (2, 17, 32, 24)
    # The released checkpoint's names (strict load) and no affine InstanceNorm parameters.
    assert set(head.state_dict()) == {
        "deconv_layers.0.weight",
        "conv_layers.0.weight",
        "conv_layers.0.bias",
        "final_layer.weight",
        "final_layer.bias",
    }
    kinds = [type(m).__name__ for m in head.deconv_layers] + [type(m).__name__ for m in head.conv_layers]
    assert kinds == ["ConvTranspose2d", "InstanceNorm2d", "SiLU", "Conv2d", "InstanceNorm2d", "SiLU"]
    # SD2 body head: 320 -> 320 -> 17, about 1.74 M parameters (reference §1.4).
    assert sum(p.numel() for p in HeatmapHead(320, 17).parameters()) == 320 * 320 * 16 + 320 * 321 + 17 * 321


def test_keypoint_mse_uses_target_weights():
    heatmaps, targets = torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4)
    assert keypoint_mse_loss(heatmaps, targets, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.5)
    assert keypoint_mse_loss(heatmaps, targets).item() == pytest.approx(1.0)


def test_feature_sites_and_heatmaps_at_quarter_resolution(backbone):
    assert feature_channels(backbone.unet, "up_blocks.3") == 32  # the analogue of SD2's 320
    assert feature_channels(backbone.unet, "up_blocks.2") == 64  # the analogue of SD2's 640
    body = SDPose(backbone, 17, "up_blocks.3")
    assert body.head.in_channels == 32
    assert body(_crops()).shape == (2, 17, 32, 24)
    whole = SDPose(backbone, 133, "up_blocks.2")
    assert whole.head.in_channels == 64
    assert whole(_crops()).shape == (2, 133, 32, 24)
    with pytest.raises(ValueError, match="channels"):
        SDPose(backbone, 17, "up_blocks.3", head=HeatmapHead(64, 17))


def _count_unet_batches(model: SDPose) -> list[int]:
    sizes: list[int] = []
    model.backbone.unet.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    return sizes


def test_reconstruction_branch_and_its_switch(backbone):
    model = SDPose(backbone, 17)
    images, clean = _crops(2, 0), _crops(2, 1)
    targets, weights = torch.rand(2, 17, 32, 24), torch.ones(2, 17)
    sizes = _count_unet_batches(model)
    losses = model.training_losses(images, targets, weights, clean, reconstruction_weight=0.5)
    assert set(losses) == {"loss_keypoint", "loss_reconstruction", "loss"}
    assert sizes == [4]  # annotation half + reconstruction half in one call
    expected = losses["loss_keypoint"] + 0.5 * losses["loss_reconstruction"]
    assert losses["loss"].item() == pytest.approx(expected.item())
    # The reconstruction target is the clean crop: a different clean crop changes only that term.
    other = model.training_losses(images, targets, weights, _crops(2, 2), reconstruction_weight=0.5)
    assert other["loss_keypoint"].item() == pytest.approx(losses["loss_keypoint"].item(), rel=1e-5)
    assert other["loss_reconstruction"].item() != pytest.approx(losses["loss_reconstruction"].item())

    sizes.clear()
    off = model.training_losses(images, targets, weights, None, reconstruction_weight=0.0)
    assert set(off) == {"loss_keypoint", "loss"}
    assert sizes == [2]  # no reconstruction half
    assert off["loss"].item() == pytest.approx(off["loss_keypoint"].item())


def test_loss_decreases_on_a_tiny_overfit(backbone):
    torch.manual_seed(0)
    model = SDPose(backbone, 17).train()
    # Each crop shows a bright square where its heatmaps have their block, so a model that learns has to
    # localise: one fixed block for every crop is learnt by the head's bias alone (the best constant map,
    # p * (1 - p) of the target), which is no test of the features.
    images = _crops(4, 3) * 0.2  # [4, 3, 128, 96]
    targets = torch.zeros(4, 17, 32, 24)
    for index, (row, col) in enumerate([(4, 4), (20, 14), (8, 16), (24, 2)]):
        images[index, :, 4 * row : 4 * row + 16, 4 * col : 4 * col + 16] = 1.0
        targets[index, :, row : row + 4, col : col + 4] = 1.0
    weights = torch.ones(4, 17)
    block = targets.mean().item()
    # A pretrained UNet takes a small step, the new head a large one (the recipes' separate learning rates).
    optimizer = torch.optim.AdamW(
        [
            {"params": model.backbone.unet.parameters(), "lr": 1e-4},
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    history = []
    for _ in range(6):
        losses = model.training_losses(images, targets, weights, images, reconstruction_weight=1.0)
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    # Measured on the shipped tiny backbone: keypoint 0.0208 -> 0.0060, reconstruction 0.088 -> 0.018.
    assert history[-1]["loss_keypoint"] < 0.5 * history[0]["loss_keypoint"]
    assert history[-1]["loss_keypoint"] < 0.5 * block * (1 - block)  # well below the best constant map
    assert history[-1]["loss_reconstruction"] < 0.5 * history[0]["loss_reconstruction"]


def test_flip_test_plumbing(backbone):
    model = SDPose(backbone, 17).eval()
    half = _crops(1, 4)[..., : TINY_INPUT[0] // 2]
    symmetric = torch.cat([half, half.flip(-1)], dim=-1)  # [1, 3, 128, 96], equal to its mirror image
    assert torch.equal(symmetric, symmetric.flip(-1))
    heatmaps = model.predict_heatmaps(symmetric, COCO.flip_indices)
    # A symmetric person gives mirror-symmetric, left/right-swapped heatmaps under flip test.
    torch.testing.assert_close(flip_heatmaps(heatmaps, COCO.flip_indices), heatmaps, atol=1e-6, rtol=1e-5)
    # Any crop: flip-tested heatmaps of the mirrored crop are the mirrored heatmaps.
    crop = _crops(1, 5)
    torch.testing.assert_close(
        model.predict_heatmaps(crop.flip(-1), COCO.flip_indices),
        flip_heatmaps(model.predict_heatmaps(crop, COCO.flip_indices), COCO.flip_indices),
        atol=1e-6,
        rtol=1e-5,
    )
    without = model.predict_heatmaps(crop)
    assert not torch.allclose(
        without, flip_heatmaps(model.predict_heatmaps(crop.flip(-1)), COCO.flip_indices)
    )


def _tiny_module(**overrides) -> SDPoseModule:
    torch.manual_seed(0)
    kwargs = dict(input_size=TINY_INPUT, heatmap_size=TINY_HEATMAP, sigma=2.0, blur_kernel_size=11)
    return SDPoseModule(**{**kwargs, **overrides})


def _figure_batch(tmp_path: Path, size: int = 3) -> dict:
    from torch.utils.data import default_collate

    from zoo.data.pose_datamodule import PoseDataModule

    data = PoseDataModule(
        input_size=TINY_INPUT,
        train_images=4,
        val_images=2,
        test_images=2,
        batch_size=size,
        cache_dir=str(tmp_path / "figures"),
        figure_size=(96, 96),
    )
    data.prepare_data()
    dataset = data.dataset("train")
    return default_collate([dataset[i] for i in range(size)])


def test_training_step_logs_each_term(tmp_path: Path):
    batch = _figure_batch(tmp_path)
    for weight, expected in (
        (1.0, {"train/loss_keypoint", "train/loss_reconstruction", "train/loss"}),
        (0.0, {"train/loss_keypoint", "train/loss"}),
    ):
        module = _tiny_module(reconstruction_weight=weight)
        logged: dict = {}
        module.log_dict = lambda values, _logged=logged, **_: _logged.update(
            values
        )  # no trainer: capture the logs
        loss = module.training_step(batch, 0)
        assert set(logged) == expected
        assert loss.item() == pytest.approx(logged["train/loss"].item())


def test_heatmap_size_must_be_a_quarter_of_the_input():
    with pytest.raises(ValueError, match="input/4"):
        _tiny_module(heatmap_size=(48, 64))


def test_fast_dev_run_of_the_tiny_recipe(tmp_path: Path):
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from train import main

    cli = main(
        [
            "fit",
            "--config",
            str(REPO / "configs/tiny/sdpose_body.yaml"),
            "--trainer.fast_dev_run",
            "1",
            "--data.init_args.cache_dir",
            str(tmp_path / "figures"),
            "--data.init_args.train_images",
            "4",
            "--data.init_args.val_images",
            "2",
            "--data.init_args.test_images",
            "2",
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.figure_size",
            "[96, 96]",
            "--checkpoint.dirpath",
            str(tmp_path / "ckpt"),
        ]
    )
    metrics = cli.trainer.callback_metrics
    assert {"train/loss_keypoint", "train/loss_reconstruction", "train/loss", "val/AP", "val/AR"} <= set(
        metrics
    )
    assert 0.0 <= float(metrics["val/AP"]) <= 1.0


# ----------------------------------------------------------------------------------------------------
# converter
def _official_checkpoint(
    tmp_path: Path, tiny_backbone_dir: Path, num_keypoints: int, head_state: dict
) -> Path:
    """A fake checkpoint in the released layout: diffusers subfolders, SDPose_D_Pipeline index, decoder/ head.
    """
    folder = tmp_path / "official"
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(tiny_backbone_dir / part, folder / part)
    # The released UNets carry the task switcher they were trained with
    # (the tiny base UNet, like SD2, has none).
    torch.manual_seed(3)
    StableDiffusionBackbone.from_pretrained(tiny_backbone_dir, with_task_switcher=True).unet.save_pretrained(
        folder / "unet"
    )
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "SDPose_D_Pipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "decoder": ["mmpose", "HeatmapHead"],
            }
        )
    )
    (folder / "decoder").mkdir()
    save_file(head_state, str(folder / "decoder" / "decoder.safetensors"))
    return folder


def _official_head_state(channels: int, num_keypoints: int) -> dict[str, torch.Tensor]:
    # Written by name, not from our module, so a drift in our layout breaks the test.
    generator = torch.Generator().manual_seed(7)
    return {
        "deconv_layers.0.weight": torch.randn(channels, channels, 4, 4, generator=generator) * 0.01,
        "conv_layers.0.weight": torch.randn(channels, channels, 1, 1, generator=generator) * 0.1,
        "conv_layers.0.bias": torch.randn(channels, generator=generator) * 0.1,
        "final_layer.weight": torch.randn(num_keypoints, channels, 1, 1, generator=generator) * 0.1,
        "final_layer.bias": torch.randn(num_keypoints, generator=generator) * 0.1,
    }


def test_official_checkpoint_loads_and_converts(tmp_path: Path, tiny_backbone_dir: Path):
    state = _official_head_state(32, 17)
    folder = _official_checkpoint(tmp_path, tiny_backbone_dir, 17, state)
    assert is_official_layout(folder)
    model, config = load_official_sdpose(folder)
    assert (config["metainfo"], config["feature_site"], config["input_size"], config["sigma"]) == (
        "coco",
        "up_blocks.3",
        [768, 1024],
        6.0,
    )
    for name, tensor in state.items():
        torch.testing.assert_close(model.head.state_dict()[name], tensor)
    converted = convert_official_sdpose(folder, tmp_path / "zoo")
    assert (
        not (converted / "text_encoder").exists()
        and (converted / "empty_prompt_embeds.safetensors").is_file()
    )
    reloaded, reloaded_config = load_sdpose(converted)
    assert reloaded_config["metainfo"] == "coco" and reloaded_config["converted_from"] == str(folder)
    crops = _crops(1, 6)
    torch.testing.assert_close(reloaded.predict_heatmaps(crops), model.predict_heatmaps(crops))


def test_official_wholebody_head_is_recognised(tmp_path: Path, tiny_backbone_dir: Path):
    folder = _official_checkpoint(tmp_path, tiny_backbone_dir, 133, _official_head_state(64, 133))
    model, config = load_official_sdpose(folder)
    assert (config["metainfo"], config["feature_site"]) == ("coco_wholebody", "up_blocks.2")
    assert model(_crops(1)).shape == (1, 133, 32, 24)


def test_head_key_mapping_of_wrapped_and_old_layouts():
    weight = torch.zeros(17, 32, 1, 1)
    old = {
        "decoder.deconv_layers.0.weight": torch.zeros(32, 32, 4, 4),
        "decoder.final_layer.0.weight": torch.zeros(32, 32, 1, 1),
        "decoder.final_layer.0.bias": torch.zeros(32),
        "decoder.final_layer.3.weight": weight,
        "decoder.final_layer.3.bias": torch.zeros(17),
    }
    mapped = convert_head_state_dict(old)
    assert set(mapped) == set(HeatmapHead(32, 17).state_dict())
    assert mapped["final_layer.weight"] is weight
    with pytest.raises(ValueError, match="unexpected head parameters"):
        convert_head_state_dict({"backbone.conv.weight": torch.zeros(1)})


def test_export_folder_round_trip(tmp_path: Path):
    module = _tiny_module().eval()
    with torch.no_grad():
        module.model.head.final_layer.bias.fill_(0.25)  # a non-default weight that must survive the export
    module.export_pretrained(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "zoo_model.json").read_text())
    assert (
        config
        | {
            "family": "sdpose",
            "input_size": [96, 128],
            "heatmap_size": [24, 32],
            "sigma": 2.0,
            "feature_site": "up_blocks.3",
            "metainfo": "coco",
        }
        == config
    )
    model, _ = load_sdpose(tmp_path / "export")
    crops = _crops(2, 8)
    torch.testing.assert_close(model.predict_heatmaps(crops), module.model.predict_heatmaps(crops))
    assert np.allclose(model.head.final_layer.bias.detach().numpy(), 0.25)
