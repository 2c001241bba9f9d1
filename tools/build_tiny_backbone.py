#!/usr/bin/env python
"""Build the tiny backbone (SD2-shaped, small width): its VAE, then text encoder and UNet as text-to-image.

`python tools/build_tiny_backbone.py --out checkpoints/tiny/backbone` rebuilds the committed assets bit
for bit (zoo.recipes.tiny_backbone); the recipe (seeds, steps, data), the measurements and the file
hashes go to `<out>/recipe.json`. Run it with OMP_NUM_THREADS=1 (the Makefile does).

The bytes depend on the CPU kernels as well (zoo.utils.platform): the tool runs on the kernels recorded in
`--kernels-from`'s recipe.json (the committed backbone by default), restarting itself with the environment
that selects them, and refuses to start where this CPU cannot run them. `--kernels-from ''` builds on
whatever the environment selects. oneDNN's and MKL's native kernels also depend on the CPU model, not only
on its instruction set; `--portable-kernels` builds on kernels that do not (oneDNN and NNPACK off, MKL's
COMPATIBLE branch, ATen's AVX2 kernels; about 3.4x slower), which a rebuild of that record then selects.
"""

from __future__ import annotations

import argparse
import json
import os
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
from zoo.utils.platform import (  # noqa: E402
    PIN_VARIABLES,
    PORTABLE_PLATFORM,
    kernel_environment,
    kernel_platform,
    platform_differences,
    recorded_platform,
    unpinned_environment,
)


def rebuild_platform(folder: str | Path, reuses_vae: bool) -> dict[str, str]:
    """The kernel platform a rebuild of `folder` must run on: its text-to-image stage's. That stage ran the
    VAE stage too unless the VAE was reused (its platform is then recorded apart, where known): warn when
    a full rebuild may not match the VAE."""
    platform = recorded_platform(folder)
    vae_platform = json.loads((Path(folder) / "recipe.json").read_text()).get("vae_platform")
    if reuses_vae or vae_platform == platform:
        return platform
    if isinstance(vae_platform, dict):
        problem = f"the VAE stage ran on {vae_platform}, the text-to-image stage on {platform}"
    else:
        problem = f"the VAE stage's platform is {vae_platform!r}"
    print(f"{folder}: {problem}; the VAE may not rebuild bit for bit (--vae-from reuses it)", file=sys.stderr)
    return platform


def pin_kernels(platform: dict[str, str], argv: list[str]) -> None:
    """Restart this tool under the environment that selects `platform`'s kernels, unless it has it; refuse,
    naming the fields, where the process still does not run on them (a CPU without that ISA, other library
    versions); only warn where the CPU model alone differs."""
    environment = kernel_environment(platform)
    if any(os.environ.get(name) != environment.get(name) for name in PIN_VARIABLES):
        # torch is imported already and reads the variables once; the restarted process sees them first.
        # A pin the platform does not name is dropped (e.g. MKL_CBWR for a record built without it).
        restarted = {**unpinned_environment(), **environment}
        os.execve(sys.executable, [sys.executable, __file__, *argv], restarted)
    here = kernel_platform()
    differences = platform_differences(platform, here, advisory=False)
    if differences:
        raise RuntimeError(
            "this machine cannot reproduce the recorded bytes (" + "; ".join(differences) + "); pass "
            "--kernels-from '' to build on its own kernels anyway"
        )
    for difference in platform_differences(platform, here, advisory=True):
        print(
            f"{difference}: the native kernels may round otherwise on this CPU, so the bytes may differ "
            "(--portable-kernels builds bytes that do not depend on it)",
            file=sys.stderr,
        )


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
    parser.add_argument(
        "--kernels-from",
        default="checkpoints/tiny/backbone",
        help="run on the CPU kernels recorded in this backbone's recipe.json ('' for the environment's own)",
    )
    parser.add_argument(
        "--portable-kernels",
        action="store_true",
        help="build on kernels that round the same on any AVX2 CPU (zoo.utils.platform.PORTABLE_PLATFORM; "
        "about 3.4x slower), not on --kernels-from's",
    )
    defaults = TinyRecipe()
    for field in fields(TinyRecipe):
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            type=type(getattr(defaults, field.name)),
            default=getattr(defaults, field.name),
        )
    args = parser.parse_args(argv)
    if args.portable_kernels and not args.measure_only:
        pin_kernels(PORTABLE_PLATFORM, sys.argv[1:] if argv is None else argv)
    elif args.kernels_from and not args.measure_only:
        platform = rebuild_platform(args.kernels_from, reuses_vae=args.vae_from is not None)
        pin_kernels(platform, sys.argv[1:] if argv is None else argv)
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
