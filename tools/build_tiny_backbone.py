#!/usr/bin/env python
"""Build the tiny backbone (SD2-shaped, small width) and train its VAE on synthetic scenes.

`python tools/build_tiny_backbone.py --out checkpoints/tiny/backbone` rebuilds the committed assets; the recipe
(seed, steps, data), the measured VAE round-trip quality and the file hashes go to `<out>/recipe.json`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.backbones.tiny import TinyRecipe, build_tiny_backbone, describe  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Build, report and return the recipe record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="checkpoints/tiny/backbone")
    defaults = TinyRecipe()
    for field in fields(TinyRecipe):
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(getattr(defaults, field.name)),
                            default=getattr(defaults, field.name))
    args = parser.parse_args(argv)
    recipe = TinyRecipe(**{field.name: getattr(args, field.name) for field in fields(TinyRecipe)})
    record = build_tiny_backbone(args.out, recipe)
    print(describe(record))
    return record


if __name__ == "__main__":
    main()
