"""Build COCO-OOD splits (restyled / corrupted copies of a COCO keypoint set) with resumable, sharded workers.

    python tools/build_coco_ood.py --ann A.json --image-root IMAGES --out OUT [--styles oil pencil] \
        [--workers 2]
    python tools/build_coco_ood.py ... --shard 0/2    (and 1/2, maybe elsewhere; copy outputs into one OUT)
    python tools/build_coco_ood.py --merge --ann A.json --out OUT \
        [--contact-sheet sheet.png --image-root IMAGES]
"""

from __future__ import annotations

import argparse
import math
import sys

from zoo.builders import (
    CocoOodError,
    available_styles,
    build,
    default_styles,
    merge,
    parse_shard,
    write_contact_sheet,
)
from zoo.data.coco_files import CocoFileError
from zoo.utils.files import OutputLocationError, check_output_location


def _check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad values and output locations at start-up (exit 2 with the reason), before any work."""
    if args.controlnet and not args.diffusion_weights:
        parser.error("--controlnet needs --diffusion-weights")
    limits = [
        ("--workers", args.workers, 1, None),
        ("--seed", args.seed, 0, None),
        ("--jpeg-quality", args.jpeg_quality, 1, 100),
        ("--diffusion-steps", args.diffusion_steps, 1, None),
        ("--diffusion-max-side", args.diffusion_max_side, 8, None),
    ]
    for option, value, low, high in limits:
        if value < low or (high is not None and value > high):
            parser.error(
                f"{option} must be {f'in {low}..{high}' if high else f'at least {low}'}; got {value}"
            )
    if args.diffusion_max_side % 8:
        parser.error(
            f"--diffusion-max-side must be a multiple of 8 (the latent factor); got {args.diffusion_max_side}"
        )
    if not (args.checkpoint_seconds >= 0 and math.isfinite(args.checkpoint_seconds)):
        parser.error(f"--checkpoint-seconds must be a finite number >= 0; got {args.checkpoint_seconds}")
    try:
        parse_shard(args.shard)
        inputs = {"image root": args.image_root, "annotation file": args.ann}
        if args.out is not None:
            check_output_location(args.out, inputs, what="output root")
        if args.contact_sheet is not None:
            # The sheet is one more output: it may not replace the annotation file or a source image.
            check_output_location(args.contact_sheet, inputs, what="contact sheet")
    except (CocoOodError, OutputLocationError) as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, build or merge, optionally write a contact sheet."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ann", help="COCO keypoint annotation file")
    parser.add_argument("--image-root", help="folder the annotation file names are relative to")
    parser.add_argument("--out", help="output root (one folder per split); must not overlap the inputs")
    parser.add_argument(
        "--styles", nargs="+", help=f"splits to build (default: {' '.join(default_styles())})"
    )
    parser.add_argument("--seed", type=int, default=0, help="global seed; per-image seeds derive from it")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--shard", default="0/1", help="build images i::n only (i/n); merge the shards afterwards"
    )
    parser.add_argument(
        "--merge", action="store_true", help="combine the shard records under --out into the splits"
    )
    parser.add_argument(
        "--format",
        dest="image_format",
        choices=["jpg", "png"],
        default="jpg",
        help="output encoding (jpg keeps the COCO file names)",
    )
    parser.add_argument("--jpeg-quality", type=int, default=95)
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=2.0,
        help="how often the progress record is saved (a killed run redoes at most this much)",
    )
    parser.add_argument(
        "--contact-sheet", metavar="PNG", help="write a grid: original + each split per image"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--list-styles", action="store_true", help="print every registered style and exit")
    parser.add_argument(
        "--diffusion-weights",
        metavar="DIR",
        help="local diffusers SD folder: registers sd-ukiyoe, sd-monet, sd-sketch",
    )
    parser.add_argument(
        "--controlnet", metavar="DIR", help="OpenPose ControlNet folder: also registers sd-pose-*"
    )
    parser.add_argument("--diffusion-steps", type=int, default=30)
    parser.add_argument(
        "--diffusion-max-side",
        type=int,
        default=512,
        help="processing long side of the diffusion styles (outputs keep the exact size)",
    )
    parser.add_argument("--diffusion-device", default="cpu")
    parser.add_argument("--diffusion-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    if args.diffusion_weights:
        from zoo.builders.diffusion_styles import register_diffusion_styles

        try:
            register_diffusion_styles(
                args.diffusion_weights,
                args.controlnet,
                steps=args.diffusion_steps,
                max_side=args.diffusion_max_side,
                device=args.diffusion_device,
                torch_dtype=args.diffusion_dtype,
            )
        except CocoOodError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2

    if args.list_styles:
        defaults = set(default_styles())
        for name in available_styles():
            print(f"{name}{'  (default)' if name in defaults else ''}")
        return 0
    needed = (
        ["ann", "out"]
        + ([] if args.merge else ["image_root"])
        + (["image_root"] if args.contact_sheet else [])
    )
    missing = sorted({f"--{name.replace('_', '-')}" for name in needed if getattr(args, name) is None})
    if missing:
        parser.error(f"missing {', '.join(missing)}")
    try:
        if args.merge:
            splits = merge(args.ann, args.out)
        else:
            splits = build(
                args.ann,
                args.image_root,
                args.out,
                args.styles,
                seed=args.seed,
                workers=args.workers,
                shard=parse_shard(args.shard),
                image_format=args.image_format,
                jpeg_quality=args.jpeg_quality,
                progress=not args.no_progress,
                checkpoint_seconds=args.checkpoint_seconds,
            )
        if splits is None:
            print(f"shard {args.shard} done; run every shard, then --merge")
            if args.contact_sheet:
                print("contact sheet skipped: it needs the merged splits")
            return 0
        for paths in splits.values():
            print(f"{paths.name}: {paths.annotations}  {paths.images}")
        if args.contact_sheet:
            print(
                "contact sheet: "
                f"{write_contact_sheet(args.contact_sheet, args.out, args.image_root, list(splits))}"
            )
    # CocoFileError: annotations a style cannot use (a whole-body part of the wrong length).
    except (CocoOodError, CocoFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
