#!/usr/bin/env python
"""Retrain a shipped tiny model from scratch: train, test on held-out data, export to checkpoints/tiny/.

    python tools/train_tiny.py configs/tiny/lotus_depth_d.yaml --out checkpoints/tiny/lotus_depth_d

Extra arguments are LightningCLI overrides (e.g. `--trainer.max_steps 100`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.cli import metrics_markdown, train_evaluate_export  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    """Run and print the held-out metrics."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a YAML under configs/tiny/")
    parser.add_argument("--out", required=True, help="export folder, e.g. checkpoints/tiny/lotus_depth_d")
    known, overrides = parser.parse_known_args(argv)
    record = train_evaluate_export(known.config, known.out, overrides)
    print(metrics_markdown(record["metrics"]))
    return record


if __name__ == "__main__":
    main()
