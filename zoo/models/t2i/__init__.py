"""Text-to-image family: the tiny backbone's UNet and text encoder trained as SD2-base is trained."""

from zoo.models.t2i.model import TIMESTEP_BANDS, TextToImage
from zoo.models.t2i.module import TextToImageModule

__all__ = ["TIMESTEP_BANDS", "TextToImage", "TextToImageModule"]
