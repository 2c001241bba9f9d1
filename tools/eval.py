#!/usr/bin/env python
"""Evaluate a model: `python tools/eval.py --config CFG.yaml --ckpt_path last.ckpt --out results/`.

Runs the datamodule's test split (held-out data, or a benchmark such as `--data.init_args.test_dataset nyuv2
--data.init_args.test_root datasets/nyuv2 --data.init_args.test_filelist datasets/nyuv2/filelist.txt`) through
Trainer.test and writes `metrics.json` and `metrics.md` to --out. Any LightningCLI override works. Official
weights: `--model.init_args.backbone checkpoints/lotus-depth-d-v2-0-disparity` and no --ckpt_path.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.cli import ZooCLI, metrics_markdown, write_metrics  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Evaluate and write metrics; returns the metrics dict."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", help="Lightning checkpoint to evaluate; without it, the weights the "
                        "config's model loads (e.g. an official checkpoint folder as the backbone) are evaluated")
    parser.add_argument("--out", default="outputs/eval", help="folder for metrics.json and metrics.md")
    known, cli_args = parser.parse_known_args(argv)
    if known.ckpt_path is not None and not Path(known.ckpt_path).is_file():
        parser.error(f"--ckpt_path {known.ckpt_path}: no such checkpoint file")
    cli = ZooCLI(args=[*cli_args, "--trainer.logger", "false"], run=False, save_config_callback=None)
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=known.ckpt_path, weights_only=True)
    metrics = {name: float(value) for result in results for name, value in result.items()}
    json_path, md_path = write_metrics(metrics, known.out)
    print(metrics_markdown(metrics))
    print(f"wrote {json_path} and {md_path}")
    return metrics


if __name__ == "__main__":
    main()
