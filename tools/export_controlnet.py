"""Export COCO keypoint annotations or results as ControlNet OpenPose conditioning PNGs and pose JSON.

    python tools/export_controlnet.py --annotations person_keypoints_val2017.json --out controlnet/
    python tools/export_controlnet.py --results results.json --annotations person_keypoints_val2017.json \
        --out out/

Writes `<stem>.png` (RGB skeleton on black, as controlnet_aux draws it) and `<stem>.json` (OpenPose / ComfyUI
POSE_KEYPOINT, normalised coordinates) per image, where the stem is the image's COCO file_name, suffix kept
(`a.jpg` -> `a.jpg.png`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

# Run from a checkout without installing: make the repository's `zoo` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from zoo.data.images import ImageLoadError  # noqa: E402
from zoo.export.controlnet import (  # noqa: E402
    DEFAULT_THRESHOLD,
    ExportInputError,
    export_image,
    is_previous_export,
    output_paths,
    read_coco_poses,
    write_controlnet_pose,
)
from zoo.utils.files import OutputLocationError, check_output_location  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--annotations",
        required=True,
        type=Path,
        help="COCO keypoint annotation file: the poses, or with --results the image list (file names, sizes)",
    )
    parser.add_argument(
        "--results", type=Path, help="COCO keypoint results file (list of image_id/keypoints/score)"
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output folder for <stem>.png and <stem>.json"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="keypoints whose score (or COCO visibility) is not above this are missing "
        f"(default {DEFAULT_THRESHOLD})",
    )
    parser.add_argument(
        "--hands",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw and write hands of whole-body keypoints (default on)",
    )
    parser.add_argument(
        "--face",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw and write face landmarks of whole-body keypoints (default on)",
    )
    parser.add_argument(
        "--image-root",
        type=Path,
        help="image folder, read only for images whose COCO entry has no width/height",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the export; return 0 on success, 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not (math.isfinite(args.threshold) and args.threshold >= 0):
        parser.error(f"--threshold must be a finite number >= 0; got {args.threshold}")
    try:
        # The outputs may not overlap what is read: the annotation and results files and the image folder.
        check_output_location(
            args.out,
            {
                "annotation file": args.annotations,
                "results file": args.results,
                "image root": args.image_root,
            },
            what="output folder",
        )
    except OutputLocationError as error:
        parser.error(str(error))
    try:
        images = read_coco_poses(args.annotations, args.results, args.image_root)
        # Check every output name before writing anything, so a bad file_name never leaves a partial export.
        seen: dict[str, str] = {}
        for image in images:
            try:
                paths = output_paths(args.out, image.stem)
            except ValueError as error:
                raise ExportInputError(f"{args.annotations}: image id {image.image_id}: {error}") from error
            if not is_previous_export(*paths):
                raise ExportInputError(
                    f"{paths[0]} or {paths[1]} exists and was not written by an export; "
                    "refusing to replace it (choose an empty output folder)"
                )
            if image.stem in seen:
                raise ExportInputError(
                    f"{args.annotations}: file names {seen[image.stem]!r} and {image.file_name!r} "
                    f"would both be exported as {image.stem!r}"
                )
            seen[image.stem] = image.file_name
    except (ExportInputError, ImageLoadError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for image in tqdm(images, desc="export controlnet", unit="image"):
        write_controlnet_pose(args.out, export_image(image, args.threshold, args.hands, args.face))
    print(f"wrote {len(images)} conditioning images and pose JSON files to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
