#!/usr/bin/env python
"""Annotate a folder of images or a COCO image list with pose, depth and normal models, or videos with video
pose models.

    python tools/annotate.py --input photos/ --models tiny-sdpose-body tiny-lotus-depth-d --out annotations/
    python tools/annotate.py --coco-images val.json --image-root val2017/ --models sdpose-body \\
        --boxes det-file person_detections.json --controlnet --out out/
    python tools/annotate.py --input photos/ --models lotus-depth-d --out out/ --devices 4 --strategy ddp
    python tools/annotate.py --model tiny-diffpose --input clip.mp4 --out out/ --boxes hog --controlnet

Writes per model `<out>/<name>/` (name: the task, or the model name when two models share a task): COCO
keypoint results.json + annotations.json + skeleton overlays (pose), or <stem>.png/.npy/_vis.png
(depth, normals); and `<out>/failures.json` listing every input that could not be annotated, with the reason.
A killed run restarted with the same command continues where it stopped and ends with the same bytes as an
uninterrupted one.

Which annotator a model gets is its family's `annotator_adapter` in the registry (zoo/model_zoo.py): video
pose models (DiffPose) name zoo.inference.annotate.video.VideoPoseAdapter, whose inputs are videos. Their
--input is a video file, a frame folder, or a folder of both (each child one video), and they write
`<out>/video_pose/<video>/`: posetrack.json (per-video PoseTrack18, what tools/eval_posetrack.py and poseval
read), overlay/NNNNNN.png + overlay.mp4 (--visualize), controlnet/NNNNNN.png|.json (--controlnet) and
done.json (written last); `<out>/video_pose/failures.json` lists the videos that could not be read. A rerun
skips the videos whose done.json matches its settings and redoes the others; every file is written
atomically.
"""

from __future__ import annotations

import argparse
import json
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
    source.add_argument(
        "--input",
        type=Path,
        help="folder of images (searched recursively); for video models a video file, a frame folder or a "
        "folder of them",
    )
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
        "--model",
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
    video = parser.add_argument_group("video models (DiffPose)")
    video.add_argument("--steps", type=int, help="DDIM steps (default: the model's)")
    video.add_argument(
        "--ensemble", type=int, help="diffusion initialisations averaged (default: the model's)"
    )
    video.add_argument("--fps", type=float, default=10.0, help="frame rate of overlay.mp4 (default 10)")
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


def _adapter(model: str) -> Any:
    """The annotator adapter class the registry names for a model name or exported folder (None: unknown
    here, zoo.load reports it)."""
    from zoo.registry import get_entry, get_family

    try:
        if Path(model, "zoo_model.json").is_file():
            family = json.loads(Path(model, "zoo_model.json").read_text())["family"]
        else:
            family = get_entry(model).family
        spec = get_family(family)
    except (KeyError, TypeError, ValueError):
        return None
    return spec.resolve("annotator_adapter") if spec.annotator_adapter is not None else None


def _annotate_videos(parser: argparse.ArgumentParser, args: argparse.Namespace, adapters: list[Any]) -> int:
    """Video models: one VideoAnnotator per model (its adapter builds it) over the videos of --input."""
    if args.input is None:
        parser.error("video models take --input (a video file, a frame folder or a folder of them)")
    if args.devices > 1 or args.num_nodes > 1:
        parser.error("--devices / --num-nodes scale out image annotation only")
    if args.boxes[0] == "det-file":
        parser.error("video models take --boxes whole_image or hog")
    for name in ("steps", "ensemble"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1; got {getattr(args, name)}")
    if args.fps <= 0:
        parser.error(f"--fps must be positive; got {args.fps}")
    from zoo.inference.annotate.video import list_videos
    from zoo.utils.files import check_output_location

    try:
        videos = list_videos(args.input)
        check_output_location(
            args.out,
            {"input": args.input},
            may_contain=[args.input] if args.input.is_dir() else [],
            what="output folder",
        )
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    options: dict[str, Any] = {
        "box_source": "whole_frame" if args.boxes[0] == "whole_image" else "hog",
        "flip_test": args.flip_test,
    }
    options |= {
        name: getattr(args, name) for name in ("steps", "ensemble") if getattr(args, name) is not None
    }

    import zoo

    try:
        predictors = [zoo.load(name, device=args.device) for name in args.models]
        names = _output_names(args.models, predictors)
        for name, predictor, adapter in zip(names, predictors, adapters, strict=True):
            annotator = adapter.annotator(
                predictor,
                args.out / name,
                controlnet=args.controlnet,
                overlay=args.visualize,
                overlay_mp4=args.visualize,
                fps=args.fps,
                resume=args.resume,
                **options,
            )
            summary = annotator.run(videos)
            failures = args.out / name / "failures.json"
            print(
                f"{name}: annotated {len(summary.done)} of {len(videos)} videos ({len(summary.skipped)} "
                f"already done, {len(summary.failures)} failed, listed in {failures})"
            )
    except (AnnotationError, FileNotFoundError, KeyError, ValueError, OutputWriteError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the annotation; return 0 when it finished (failures are listed, not fatal), 2 on bad arguments."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # The registry's annotator adapter of each model says what it annotates: images (default) or videos.
    adapters = [_adapter(model) for model in args.models]
    video = [getattr(adapter, "inputs", "images") == "videos" for adapter in adapters]
    if any(video):
        if not all(video):
            parser.error(
                "video models ("
                + ", ".join(m for m, v in zip(args.models, video, strict=True) if v)
                + ") and image models take different inputs: annotate with them in separate runs"
            )
        return _annotate_videos(parser, args, adapters)
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
