"""PoseTrack multi-person pose AP of a tracker's or pose model's output, exactly as poseval computes it.

    python tools/eval_posetrack.py --gt annotations/val/ --pred predictions/ --json posetrack_ap.json

Both folders hold per-video PoseTrack18 JSON files (the official layout poseval takes); every ground-truth
file needs a prediction file of the same name with the same frames. Prints the Head / Shoulder / Elbow /
Wrist / Hip / Knee / Ankle / Total AP table; `--json` writes per-joint AP, the summary columns, precision
and recall (null where poseval gives NaN: a joint predicted but never annotated). No py-motmetrics needed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# Run from a checkout without installing: make the repository's `zoo` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from zoo.evaluation.posetrack import evaluate_posetrack_folders, format_table  # noqa: E402
from zoo.utils.files import atomic_write_json  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gt", required=True, type=Path, help="folder of per-video ground-truth JSON files")
    parser.add_argument("--pred", required=True, type=Path, help="folder of per-video prediction JSON files")
    parser.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Evaluate, print the table, optionally write the JSON; 0 on success, 2 on bad input."""
    args = build_parser().parse_args(argv)
    for option, folder in (("--gt", args.gt), ("--pred", args.pred)):
        if not folder.is_dir():
            print(f"error: {option} {folder} is not a folder", file=sys.stderr)
            return 2
    try:
        result = evaluate_posetrack_folders(args.gt, args.pred)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"PoseTrack AP over {result.num_frames} labelled frames")
    print(format_table(result))
    if args.json is not None:
        atomic_write_json(args.json, result.to_json())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
