#!/usr/bin/env python
"""Benchmarks with printed tables; every ratio is measured side by side within one run.

    python tools/benchmark.py lotus              # tiny backbone: predictor vs bare calls vs Marigold; memory
    python tools/benchmark.py lotus --scale sd2  # SD2-base size (random weights): cost split, Lotus vs bare
                                                 # calls and Marigold, TAESD, SDPose persons/s, memory
    python tools/benchmark.py lotus --scale sd2 --only ratio --threads 1  # the predictors vs their bare
                                                 # calls alone, in --pairs interleaved pairs
    python tools/benchmark.py pose               # batched heatmap decoding vs mmpose; tiny top-down persons/s
    python tools/benchmark.py cocood             # COCO-OOD images/s per style with 1 and 2 workers
    python tools/benchmark.py autoencoder        # tiny models' accuracy: full VAE vs tiny decode vs tiny both
    python tools/benchmark.py diffpose           # DiffPose video persons/s vs steps x ensemble; feature reuse
    python tools/benchmark.py mustafar           # Mustafar SD encoder images/s at s = 0 and s = 4; tokens
    python tools/benchmark.py memory             # pose predictor peak memory, 8 vs 64 mixed-size images
    python tools/benchmark.py gpu                # the prepared CUDA run (make benchmark-gpu), table to --out
    python tools/benchmark.py all

--dry-run runs any mode once at tiny sizes on the CPU (what tests/test_benchmarks.py does).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def main(argv: list[str] | None = None) -> None:
    """Run the chosen benchmark(s)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    modes = ["lotus", "pose", "cocood", "autoencoder", "diffpose", "mustafar", "memory", "gpu", "all"]
    parser.add_argument("which", choices=modes)
    parser.add_argument("--scale", choices=["tiny", "sd2"], default="tiny",
                        help="tiny: the committed tiny backbone; sd2: SD2-base architectures, random weights")
    parser.add_argument("--resolution", type=int, default=512,
                        help="--scale sd2 processing resolution (or 768)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (pinned: shared machines thrash); default 1, 2 with --scale sd2")
    parser.add_argument("--pairs", type=int, default=3,
                        help="--scale sd2: interleaved predictor / bare-call pairs per Lotus mode")
    parser.add_argument("--only", choices=["ratio"], default=None,
                        help="--scale sd2: run one section alone (ratio: the predictors vs their bare calls)")
    parser.add_argument("--dry-run", action="store_true", help="one iteration at tiny sizes on the CPU")
    parser.add_argument("--out", default=None,
                        help="also write the tables here (gpu: outputs/benchmark_gpu.md)")
    parser.add_argument("--taesd", default=None,
                        help="autoencoder: AutoencoderTiny folder (checkpoints/tiny/taesd)")
    parser.add_argument("--models", default=None,
                        help="autoencoder: comma-separated tiny models (default all), e.g. lotus_depth_g")
    parser.add_argument("--coco-ann", default=str(REALDATA / "coco" / "test_coco.json"))
    parser.add_argument("--coco-images", default=str(REALDATA / "coco"))
    args = parser.parse_args(argv)
    threads = args.threads or (2 if args.scale == "sd2" else 1)
    if args.which in ("lotus", "all") or (args.which == "pose" and args.scale == "sd2"):
        if args.scale == "sd2":
            from zoo.benchmarks import sd2

            sd2.run(
                resolution=args.resolution,
                threads=threads,
                dry_run=args.dry_run,
                out=args.out,
                pairs=args.pairs,
                only=args.only,
            )
        else:
            from zoo.benchmarks import lotus

            lotus.run(threads=threads, dry_run=args.dry_run)
    if args.which in ("pose", "all") and args.scale == "tiny":
        from zoo.benchmarks import pose_codec, pose_model

        pose_codec.run(threads=threads, dry_run=args.dry_run)
        pose_model.run(threads=threads, dry_run=args.dry_run)
    if args.which in ("cocood", "all"):
        from zoo.benchmarks import cocood

        cocood.run(args.coco_ann, args.coco_images, dry_run=args.dry_run)
    if args.which in ("autoencoder", "all"):
        from zoo.benchmarks import autoencoder

        models = args.models.split(",") if args.models else None
        taesd = args.taesd or autoencoder.TINY_TAESD
        autoencoder.run(taesd, dry_run=args.dry_run, out=args.out, models=models)
    if args.which in ("diffpose", "all"):
        from zoo.benchmarks import diffpose

        diffpose.run(threads=threads, dry_run=args.dry_run)
    if args.which in ("mustafar", "all"):
        from zoo.benchmarks import mustafar

        mustafar.run(threads=threads, dry_run=args.dry_run)
    if args.which in ("memory", "all"):
        from zoo.benchmarks import memory

        memory.run(threads=threads, dry_run=args.dry_run)
    if args.which == "gpu":
        from zoo.benchmarks import gpu

        gpu.run(out=args.out or "outputs/benchmark_gpu.md", dry_run=args.dry_run)


if __name__ == "__main__":
    main()
