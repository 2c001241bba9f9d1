#!/usr/bin/env python
"""Train any family from a YAML config: `python tools/train.py fit --config configs/tiny/lotus_depth_d.yaml`.

All LightningCLI options work: `--trainer.max_steps 100`, `--model.init_args.lr 1e-4`, `--seed_everything 1`,
`--ckpt_path outputs/train/version_0/checkpoints/last.ckpt` (resume from an explicit checkpoint),
`--print_config`. Logs (TensorBoard scalars and images) and checkpoints (with last.ckpt) go to outputs/train/.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.cli import ZooCLI  # noqa: E402


def main(args: list[str] | None = None) -> ZooCLI:
    """Run the training CLI; returns it so that tests can inspect the trainer and model."""
    return ZooCLI(args=args)


if __name__ == "__main__":
    main()
