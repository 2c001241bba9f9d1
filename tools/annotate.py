#!/usr/bin/env python
"""Annotate a folder of images or a COCO image list with pose, depth and normal models.

    python tools/annotate.py --input photos/ --models tiny-sdpose-body tiny-lotus-depth-d --out annotations/
    python tools/annotate.py --coco-images val.json --image-root val2017/ --models sdpose-body \\
        --boxes det-file person_detections.json --controlnet --out out/
    python tools/annotate.py --input photos/ --models lotus-depth-d --out out/ --devices 4 --strategy ddp

Writes per model `<out>/<name>/` (name: the task, or the model name when two models share a task): COCO
keypoint results.json + annotations.json + skeleton overlays (pose), or <stem>.png/.npy/_vis.png
(depth, normals); and `<out>/failures.json` listing every input that could not be annotated, with the reason.
A killed run restarted with the same command continues where it stopped and ends with the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Run from a checkout without installing: make the repository's `zoo` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.data.coco_files import read_detections  # noqa: E402
from zoo.inference.annotate import (  # noqa: E402
    DEFAULT_MAX_PIXELS,
    AnnotationError,
    Annotator,
    check_locations,
    check_options,
    list_inputs,
    predictor_task,
)
from zoo.utils.files import OutputWriteError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", type=Path, help="folder of images (searched recursively)")
    source.add_argument(
        "--coco-images", type=Path, help="COCO JSON whose images[].file_name lists the images"
    )
    parser.add_argument(
        "--image-root",
        type=Path,
        help="folder the COCO file names are relative to (default: the COCO file's folder)",
    )
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="registered model names (see `zoo.available_models()`) or exported model folders",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--boxes",
        nargs="+",
        default=["whole_image"],
        metavar="SOURCE",
        help="person boxes for pose: whole_image (default), hog, or det-file PATH "
        "(COCO detection results, image ids as in --coco-images)",
    )
    parser.add_argument("--batch-size", type=int, default=4, help="images per model call (default 4)")
    parser.add_argument("--device", default="cpu", help="torch device of a single-process run (default cpu)")
    parser.add_argument(
        "--flip-test", action="store_true", help="pose: average with mirrored crops (2x cost)"
    )
    parser.add_argument(
        "--processing-resolution",
        type=int,
        help="depth/normals: long side the model runs at (default: the model's, 768 for SD2)",
    )
    parser.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue a previous run in --out (default); --no-resume redoes every image",
    )
    parser.add_argument(
        "--controlnet",
        action="store_true",
        help="pose: also write ControlNet OpenPose conditioning PNG + pose JSON per image",
    )
    parser.add_argument(
        "--visualize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pose: write skeleton overlays (default on; depth/normals always write _vis.png)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"report images with more pixels as too large (default {DEFAULT_MAX_PIXELS}; 0: no "
        "limit but the decoder's decompression-bomb guard)",
    )
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding images")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    scale = parser.add_argument_group(
        "scale-out through Lightning (used when --devices > 1 or --num-nodes > 1)"
    )
    scale.add_argument("--devices", type=int, default=1, help="processes (GPUs) per node")
    scale.add_argument("--num-nodes", type=int, default=1, help="nodes")
    scale.add_argument(
        "--strategy", default="ddp", help="Lightning strategy (default ddp; ddp_spawn also works)"
    )
    scale.add_argument(
        "--accelerator", help="Lightning accelerator (default: cpu for --device cpu, else gpu)"
    )
    return parser


def _box_options(parser: argparse.ArgumentParser, boxes: Sequence[str]) -> dict[str, Any]:
    """--boxes values as Annotator keyword arguments."""
    if len(boxes) == 1 and boxes[0] in ("whole_image", "hog"):
        return {"box_source": boxes[0]}
    if len(boxes) == 2 and boxes[0] == "det-file":
        if not Path(boxes[1]).is_file():
            parser.error(f"--boxes det-file {boxes[1]}: no such file")
        return {"det_file": Path(boxes[1])}
    parser.error(f"--boxes must be whole_image, hog or det-file PATH; got {' '.join(boxes)}")
    raise AssertionError  # parser.error exits


def _output_names(models: Sequence[str], predictors: Sequence[Any]) -> list[str]:
    """Each model's output folder: its task when no other model has that task, else its name."""
    tasks = [predictor_task(p) for p in predictors]
    names = [Path(m).name if Path(m).is_dir() else m for m in models]
    if len(set(names)) != len(names):
        raise AnnotationError(f"models {list(models)} would share an output folder; pass each model once")
    return [task if tasks.count(task) == 1 else name for task, name in zip(tasks, names, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the annotation; return 0 when it finished (failures are listed, not fatal), 2 on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.image_root is not None and args.coco_images is None:
        parser.error("--image-root goes with --coco-images")
    boxes = _box_options(parser, args.boxes)
    if args.max_pixels < 0:
        parser.error(f"--max-pixels must be positive, or 0 for no limit; got {args.max_pixels}")
    if args.devices < 1 or args.num_nodes < 1:
        parser.error(f"--devices and --num-nodes must be at least 1; got {args.devices}, {args.num_nodes}")
    inputs = args.input if args.input is not None else args.coco_images
    # Checked before any model is loaded: a bad value fails every image alike, so it is an error of the run.
    try:
        check_options(args.batch_size, args.processing_resolution, args.max_pixels or None, args.num_workers)
        check_locations(args.out, inputs, args.image_root)
        # Malformed input files too (a COCO list, a detection file): they name the file, record and field.
        list_inputs(inputs, args.image_root)
        if "det_file" in boxes:
            read_detections(boxes["det_file"])
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    distributed = args.devices > 1 or args.num_nodes > 1

    import zoo

    try:
        # Scale-out loads on the CPU; Lightning moves each rank's copy to its device.
        predictors = [zoo.load(name, device="cpu" if distributed else args.device) for name in args.models]
        annotator = Annotator(
            dict(zip(_output_names(args.models, predictors), predictors, strict=True)),
            args.out,
            batch_size=args.batch_size,
            processing_resolution=args.processing_resolution,
            flip_test=args.flip_test,
            visualize=args.visualize,
            controlnet=args.controlnet,
            resume=args.resume,
            max_pixels=args.max_pixels or None,
            num_workers=args.num_workers,
            progress=not args.no_progress,
            **boxes,
        )
        if distributed:
            from zoo.inference.distributed import annotate_distributed

            accelerator = args.accelerator or ("cpu" if args.device == "cpu" else "gpu")
            summary = annotate_distributed(
                annotator,
                inputs,
                args.image_root,
                accelerator=accelerator,
                devices=args.devices,
                num_nodes=args.num_nodes,
                strategy=args.strategy,
            )
        else:
            summary = annotator.run(inputs, args.image_root)
    except (AnnotationError, FileNotFoundError, KeyError, ValueError, OutputWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary is not None:  # None on the non-zero ranks of a scale-out run
        computed = "?" if summary.computed is None else summary.computed
        print(
            f"annotated {summary.annotated} of {summary.images} images ({summary.failed} failed, listed in "
            f"{args.out / 'failures.json'}); computed {computed} predictions in this run"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
