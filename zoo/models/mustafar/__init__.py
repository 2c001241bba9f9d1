"""Mustafar (2025): question-conditioned SD UNet features as the visual encoder of a LLaVA-style model."""

from zoo.models.mustafar.features import (
    DEFAULT_SITE,
    DEFAULT_TIMESTEP,
    SDFeatureExtractor,
    load_features,
    save_features,
)
from zoo.models.mustafar.model import (
    FUSIONS,
    MustafarEncoder,
    MustafarForConditionalGeneration,
    MustafarLlavaModel,
    MustafarProcessor,
)
from zoo.models.mustafar.module import MustafarModule

__all__ = [
    "DEFAULT_SITE",
    "DEFAULT_TIMESTEP",
    "FUSIONS",
    "MustafarEncoder",
    "MustafarForConditionalGeneration",
    "MustafarLlavaModel",
    "MustafarModule",
    "MustafarProcessor",
    "SDFeatureExtractor",
    "load_features",
    "save_features",
]
