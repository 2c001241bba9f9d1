"""Inference API: predictors per task, the Annotator for many images, and its Lightning scale-out."""

from __future__ import annotations

import importlib
from typing import Any

# Name -> module; resolved on first use so that importing one predictor does not import every family's stack.
_EXPORTS = {
    "LotusOutput": "zoo.inference.lotus",
    "LotusPredictor": "zoo.inference.lotus",
    "PoseOutput": "zoo.inference.pose",
    "PosePredictor": "zoo.inference.pose",
    "detection_boxes": "zoo.inference.pose",
    "AnnotationError": "zoo.inference.annotate",
    "AnnotationSummary": "zoo.inference.annotate",
    "Annotator": "zoo.inference.annotate",
    "ImageItem": "zoo.inference.annotate",
    "check_options": "zoo.inference.annotate",
    "list_inputs": "zoo.inference.annotate",
    "AnnotationModule": "zoo.inference.distributed",
    "ShardSampler": "zoo.inference.distributed",
    "annotate_distributed": "zoo.inference.distributed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zoo.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
