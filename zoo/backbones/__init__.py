"""The shared Stable Diffusion backbone, its task switcher, feature taps and the tiny backbone."""

from zoo.backbones.stable_diffusion import (
    FINAL_TIMESTEP,
    ConfigSizeError,
    CorruptWeightsError,
    MissingWeightsError,
    StableDiffusionBackbone,
    check_model_folder,
    replicate_pad,
    widen_conv_in,
)
from zoo.backbones.taps import FeatureTaps, tapped
from zoo.backbones.task_switcher import task_code, task_codes

__all__ = [
    "FINAL_TIMESTEP",
    "ConfigSizeError",
    "CorruptWeightsError",
    "FeatureTaps",
    "MissingWeightsError",
    "StableDiffusionBackbone",
    "check_model_folder",
    "replicate_pad",
    "tapped",
    "task_code",
    "task_codes",
    "widen_conv_in",
]
