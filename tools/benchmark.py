#!/usr/bin/env python
"""Benchmarks with printed tables; every ratio is measured side by side within one run.

    python tools/benchmark.py lotus     # predictor vs bare calls vs diffusers Marigold; training memory
    python tools/benchmark.py pose      # batched heatmap decoding vs mmpose; persons/s of the top-down model
    python tools/benchmark.py cocood    # COCO-OOD images/s per style with 1 and 2 workers
    python tools/benchmark.py all
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def main(argv: list[str] | None = None) -> None:
    """Run the chosen benchmark(s)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["lotus", "pose", "cocood", "all"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (pinned: shared machines thrash)")
    parser.add_argument("--coco-ann", default=str(REALDATA / "coco" / "test_coco.json"))
    parser.add_argument("--coco-images", default=str(REALDATA / "coco"))
    args = parser.parse_args(argv)
    if args.which in ("lotus", "all"):
        from zoo.benchmarks import lotus

        lotus.run(threads=args.threads)
    if args.which in ("pose", "all"):
        from zoo.benchmarks import pose_codec, pose_model

        pose_codec.run(threads=args.threads)
        pose_model.run()
    if args.which in ("cocood", "all"):
        from zoo.benchmarks import cocood

        cocood.run(args.coco_ann, args.coco_images)


if __name__ == "__main__":
    main()
