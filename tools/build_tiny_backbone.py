#!/usr/bin/env python
"""Build the tiny backbone (SD2-shaped, small width): its VAE, then text encoder and UNet as text-to-image.

`python tools/build_tiny_backbone.py --out checkpoints/tiny/backbone` rebuilds the committed assets bit
for bit (zoo.recipes.tiny_backbone); the recipe (seeds, steps, data), the measurements and the file
hashes go to `<out>/recipe.json`. Run it with OMP_NUM_THREADS=1 (the Makefile does).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.recipes.tiny_backbone import (  # noqa: E402
    CONTACT_SHEET,
    TinyRecipe,
    build_tiny_backbone,
    describe,
    flat_metrics,
    measure_text_to_image,
)
from zoo.utils.files import atomic_write_json  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Build, report and return the recipe record."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="checkpoints/tiny/backbone")
    parser.add_argument(
        "--contact-sheet", default=CONTACT_SHEET, help="PNG of held-out samples ('' for none)"
    )
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="only re-measure the text-to-image quality of an existing folder into its recipe.json",
    )
    parser.add_argument(
        "--vae-from",
        help="reuse the VAE of this built backbone (same VAE-stage recipe: same bytes), not train one",
    )
    defaults = TinyRecipe()
    for field in fields(TinyRecipe):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
        )
    args = parser.parse_args(argv)
    recipe = TinyRecipe(**{field.name: getattr(args, field.name) for field in fields(TinyRecipe)})
    sheet = args.contact_sheet or None
    if args.measure_only:
        path = Path(args.out) / "recipe.json"
        record = json.loads(path.read_text())
        record["t2i_quality"] = measure_text_to_image(args.out, recipe, recipe.t2i_heldout, sheet=sheet)
        atomic_write_json(path, record)
        atomic_write_json(Path(args.out) / "metrics.json", flat_metrics(record["t2i_quality"]))
    else:
        record = build_tiny_backbone(args.out, recipe, sheet=sheet, vae_from=args.vae_from)
    print(describe(record))
    return record


if __name__ == "__main__":
    main()
