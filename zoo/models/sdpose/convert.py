"""Load and convert the official released SDPose checkpoints (teemosliang/SDPose-Body, -Wholebody).

Official layout (reference §1.4): diffusers folders unet/ (with the 4-d task-switcher projection), vae/,
text_encoder/, tokenizer/, scheduler/, a model_index.json naming SDPose_D_Pipeline (a class diffusers lacks),
and the mmpose HeatmapHead state dict in decoder/decoder.safetensors. No empty-prompt cache and no
zoo_model.json: the backbone computes the empty prompt from the text encoder once, and the head's shapes say
body or whole-body.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from zoo.backbones import FINAL_TIMESTEP, StableDiffusionBackbone
from zoo.data.metainfo import load_metainfo
from zoo.data.transforms import BBOX_PADDING
from zoo.heads.heatmap import HeatmapHead
from zoo.models import MODEL_CONFIG_FILE
from zoo.models.sdpose.model import (
    HEAD_FILE,
    OFFICIAL_FEATURE_SITES,
    SDPose,
    feature_channels,
    save_head,
)
from zoo.utils.files import atomic_write_json

# Official codec and crop (reference §1.4 / §2): UDPHeatmap sigma 6, 768x1024 input, 192x256 heatmaps.
OFFICIAL_CODEC = {"input_size": [768, 1024], "heatmap_size": [192, 256], "sigma": 6.0, "blur_kernel_size": 11}
# Keypoint count of the released heads -> dataset metainfo.
OFFICIAL_SCHEMES = {17: "coco", 133: "coco_wholebody"}
# Prefixes that wrappers put in front of the head's own names (DDP, pipelines, mmpose estimators).
_PREFIXES = ("module.", "decoder.", "head.", "keypoint_head.")


def is_official_layout(folder: str | os.PathLike) -> bool:
    """True for a folder with unet/ and the official head file decoder/decoder.safetensors."""
    folder = Path(folder)
    return (folder / "unet").is_dir() and (folder / HEAD_FILE).is_file()


def convert_head_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an official/mmpose HeatmapHead state dict onto zoo.heads.HeatmapHead names.

    Wrapper prefixes are stripped, parameter-free entries of the loss module dropped, and the pre-1.0 mmpose
    layout (intermediate convs stored as `final_layer.<i>.*` before the output conv) is split into
    `conv_layers.<i>.*` and `final_layer.*`.
    """
    converted: dict[str, torch.Tensor] = {}
    old_final_indices = set()
    for key, tensor in state.items():
        name = key
        for prefix in _PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix) :]
        if name.startswith("loss_module."):
            continue
        parts = name.split(".")
        if parts[0] == "final_layer" and len(parts) == 3:  # pre-1.0: final_layer.<i>.<param>
            old_final_indices.add(int(parts[1]))
        converted[name] = tensor
    if old_final_indices:
        # The old Sequential held conv blocks of 3 modules (conv, norm, act) then the output conv at the end.
        last = max(old_final_indices)
        remapped = {}
        for name, tensor in converted.items():
            parts = name.split(".")
            if parts[0] == "final_layer" and len(parts) == 3:
                index = int(parts[1])
                name = f"final_layer.{parts[2]}" if index == last else f"conv_layers.{index}.{parts[2]}"
            remapped[name] = tensor
        converted = remapped
    unknown = sorted(
        n for n in converted if n.split(".")[0] not in ("deconv_layers", "conv_layers", "final_layer")
    )
    if unknown:
        raise ValueError(
            f"unexpected head parameters {unknown[:5]}: not an SDPose/mmpose HeatmapHead state dict"
        )
    return converted


def official_config(unet: torch.nn.Module, head_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """zoo_model.json content for an official checkpoint, read off the head's shapes and the UNet config."""
    num_keypoints = int(head_state["final_layer.weight"].shape[0])
    if num_keypoints not in OFFICIAL_SCHEMES:
        raise ValueError(f"official SDPose heads have 17 or 133 keypoints; this one has {num_keypoints}")
    metainfo = OFFICIAL_SCHEMES[num_keypoints]
    site = OFFICIAL_FEATURE_SITES[metainfo]
    in_channels = int(
        head_state["deconv_layers.0.weight"].shape[0]
    )  # ConvTranspose2d weight: [in, out, 4, 4]
    if in_channels != feature_channels(unet, site):
        raise ValueError(
            f"the head takes {in_channels} channels but {site} of this UNet has "
            f"{feature_channels(unet, site)}"
        )
    return {
        "family": "sdpose",
        "metainfo": metainfo,
        "num_keypoints": num_keypoints,
        "feature_site": site,
        "timestep": FINAL_TIMESTEP,
        "bbox_padding": BBOX_PADDING,
        **OFFICIAL_CODEC,
    }


def load_official_sdpose(
    folder: str | os.PathLike, torch_dtype: torch.dtype | None = None
) -> tuple[SDPose, dict[str, Any]]:
    """Build SDPose from an official checkpoint folder: (model in eval mode, its zoo_model.json config)."""
    folder = Path(folder)
    if not is_official_layout(folder):
        raise FileNotFoundError(f"{folder} lacks unet/ or {HEAD_FILE}: not an official SDPose checkpoint")
    backbone = StableDiffusionBackbone.from_pretrained(
        folder, with_task_switcher=True, torch_dtype=torch_dtype
    )
    state = convert_head_state_dict(load_file(str(folder / HEAD_FILE)))
    config = official_config(backbone.unet, state)
    deconv = [int(state["deconv_layers.0.weight"].shape[1])]
    conv = [int(state["conv_layers.0.weight"].shape[0])] if "conv_layers.0.weight" in state else []
    head = HeatmapHead(
        feature_channels(backbone.unet, config["feature_site"]), config["num_keypoints"], deconv, conv
    )
    head.load_state_dict(state, strict=True)
    load_metainfo(config["metainfo"])  # fail now, not at prediction time, if the scheme is unknown
    return SDPose(backbone, config["num_keypoints"], config["feature_site"], head).eval(), config


def convert_official_sdpose(source: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Write an official checkpoint as a zoo folder (no text encoder, cached empty prompt, zoo_model.json)."""
    model, config = load_official_sdpose(source)
    destination = Path(destination)
    model.backbone.save_pretrained(destination, include_text_encoder=False)
    save_head(model.head, destination)
    atomic_write_json(destination / MODEL_CONFIG_FILE, {**config, "converted_from": str(source)})
    return destination
