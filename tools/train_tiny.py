#!/usr/bin/env python
"""Retrain a shipped tiny model from scratch: train, test on held-out data, export to checkpoints/tiny/.

    python tools/train_tiny.py configs/tiny/lotus_depth_d.yaml --out checkpoints/tiny/lotus_depth_d
    python tools/train_tiny.py configs/tiny/mustafar_stage1.yaml configs/tiny/mustafar_stage2.yaml \
        --out checkpoints/tiny/mustafar  # stages in order: each starts from the previous one's export
    python tools/train_tiny.py --all # every model the registry ships (make tiny-models), one at a time

Extra arguments are LightningCLI overrides (e.g. `--trainer.max_steps 100`), given to every stage. Stages
before the last export to outputs/stages/<config stem> and the next stage gets
`--model.init_args.init_from` that folder (zoo.cli.train_stages); a registry entry lists its earlier stages in
`stages`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.cli import metrics_markdown, train_stages  # noqa: E402
from zoo.registry import tiny_models  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Run and print the held-out metrics."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "config", nargs="*", help="a YAML under configs/tiny/, or several: stages trained in order"
    )
    parser.add_argument("--out", help="export folder, e.g. checkpoints/tiny/lotus_depth_d")
    parser.add_argument("--all", action="store_true", help="retrain every shipped model of the registry")
    known, overrides = parser.parse_known_args(argv)
    if known.all == bool(known.config or known.out):
        parser.error("give CONFIG --out DIR, or --all")
    jobs = (
        [([*entry.stages, entry.config], entry.checkpoint) for entry in tiny_models()]
        if known.all
        else [(known.config, known.out)]
    )
    if any(out is None for _, out in jobs):
        parser.error("CONFIG needs --out")
    records = {}
    for configs, out in jobs:
        records[out] = train_stages(configs, out, overrides)
        print(f"{out}:\n{metrics_markdown(records[out]['metrics'])}")
    return records


if __name__ == "__main__":
    main()
