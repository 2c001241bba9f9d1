"""SDPose (2025): top-down pose from SD UNet decoder features and a heatmap head."""

from zoo.models.sdpose.model import SDPose, load_sdpose
from zoo.models.sdpose.module import SDPoseModule

__all__ = ["SDPose", "SDPoseModule", "load_sdpose"]
