"""Synthetic data generators, deterministic by seed."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from zoo.data.synthetic.scenes import SceneSample, SyntheticSceneDataset, render_scene

__all__ = [
    "SceneSample",
    "SyntheticSceneDataset",
    "generator_fingerprint",
    "render_scene",
    "source_fingerprint",
]


def source_fingerprint(folder: Path) -> str:
    """8 hex digits of the source of every .py file directly under `folder`."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:8]


@functools.cache
def generator_fingerprint() -> str:
    """The source fingerprint of these generators: part of every on-disk cache key of rendered synthetic
    sets, so a changed generator renders afresh instead of reusing stale pixels."""
    return source_fingerprint(Path(__file__).parent)
