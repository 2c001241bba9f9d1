"""COCO-OOD layout: where a built split keeps its images, annotations and manifest.

OUT/<split>/images/<file_name>   the restyled image, same size and relative path as the source
OUT/<split>/annotations.json     the input annotations; only `info.coco_ood` and file suffixes differ
OUT/<split>/manifest.json        per image: style, seed, parameters, source and output SHA-256
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SplitPaths:
    """Where one split's files live."""

    name: str
    root: Path
    images: Path
    annotations: Path
    manifest: Path


def split_paths(out: str | os.PathLike, name: str) -> SplitPaths:
    """Paths of split `name` under output root `out`."""
    root = Path(out) / name
    return SplitPaths(name, root, root / "images", root / "annotations.json", root / "manifest.json")


__all__ = ["SplitPaths", "split_paths"]
