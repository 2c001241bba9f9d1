"""Lotus (ICLR 2025): depth and normals by single-step x0 prediction on the shared SD backbone."""

from zoo.models.lotus.model import Lotus, decode_prediction
from zoo.models.lotus.module import LotusModule

__all__ = ["Lotus", "LotusModule", "decode_prediction"]
