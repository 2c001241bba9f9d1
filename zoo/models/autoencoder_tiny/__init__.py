"""A tiny AutoencoderTiny (TAESD layout) distilled from the tiny backbone's VAE: the measured fast path."""

from zoo.models.autoencoder_tiny.model import distillation_images, distillation_losses, tiny_taesd
from zoo.models.autoencoder_tiny.module import AutoencoderTinyDistillation

__all__ = ["AutoencoderTinyDistillation", "distillation_images", "distillation_losses", "tiny_taesd"]
