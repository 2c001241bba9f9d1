"""Stable Diffusion perception zoo: one shared SD backbone, many perception families."""

from zoo.registry import available_models, load

__all__ = ["available_models", "load"]
__version__ = "0.1.0"
