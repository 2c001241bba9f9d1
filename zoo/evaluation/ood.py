"""Out-of-domain comparison: one metric per COCO-OOD split next to the original, with the relative drop."""

from __future__ import annotations

import os
from pathlib import Path

from zoo.data.coco_ood import SplitPaths, split_paths


def find_splits(out: str | os.PathLike) -> list[SplitPaths]:
    """The finished splits of a COCO-OOD output root (folders with annotations.json and images/), sorted."""
    root = Path(out)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: COCO-OOD output folder not found")
    splits = [split_paths(root, child.name) for child in sorted(root.iterdir()) if child.is_dir()]
    splits = [split for split in splits if split.annotations.is_file() and split.images.is_dir()]
    if not splits:
        raise FileNotFoundError(f"{root}: no split folders with annotations.json and images/")
    return splits


def drop_table(results: dict[str, dict[str, float]], metric: str = "AP", original: str = "original") -> str:
    """Markdown table of `metric` per split and its drop relative to the original: (original - split) /
    original."""
    if original not in results:
        raise KeyError(f"results have no {original!r} row")
    base = results[original][metric]
    lines = [f"| split | {metric} | drop vs {original} |", "| --- | ---: | ---: |"]
    for name, metrics in results.items():
        value = metrics[metric]
        drop = (base - value) / base if base > 0 else float("nan")
        lines.append(f"| {name} | {value:.4f} | {'—' if name == original else f'{100 * drop:.1f}%'} |")
    return "\n".join(lines) + "\n"
