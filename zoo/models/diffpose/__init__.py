"""DiffPose (ICCV 2023): video pose by conditional heatmap diffusion on SD UNet features of neighbouring
frames."""

from zoo.models.diffpose.model import DiffPose, load_diffpose

__all__ = ["DiffPose", "load_diffpose"]
