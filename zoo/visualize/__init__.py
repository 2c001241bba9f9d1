"""Pictures of predictions (depth, normals, heatmaps, skeletons, grids) and the OpenPose canvas."""

from __future__ import annotations

import importlib
from typing import Any

# Name -> module; resolved on first use so that the OpenPose renderer does not import diffusers' image
# processor.
_EXPORTS = {
    "colorize_depth": "zoo.visualize.pictures",
    "colorize_normals": "zoo.visualize.pictures",
    "colorize_heatmaps": "zoo.visualize.pictures",
    "draw_skeleton": "zoo.visualize.pictures",
    "image_grid": "zoo.visualize.pictures",
    "OpenPosePerson": "zoo.visualize.openpose",
    "coco17_to_openpose18": "zoo.visualize.openpose",
    "person_from_coco": "zoo.visualize.openpose",
    "render_openpose": "zoo.visualize.openpose",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zoo.visualize' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
