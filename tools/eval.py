#!/usr/bin/env python
"""Evaluate a model: `python tools/eval.py --config CFG.yaml --ckpt_path last.ckpt --out results/`.

Runs the datamodule's test split (held-out data, or a benchmark such as `--data.init_args.test_dataset nyuv2
--data.init_args.test_root datasets/nyuv2 --data.init_args.test_filelist datasets/nyuv2/filelist.txt`) through
Trainer.test and writes `metrics.json` and `metrics.md` to --out. Any LightningCLI override works. Official
weights: `--model.init_args.backbone checkpoints/lotus-depth-d-v2-0-disparity` and no --ckpt_path.

Out of domain: `--ood-root OUT` (a tools/build_coco_ood.py output) evaluates the pose model on the configured
test split ("original") and on every COCO-OOD split (same image ids, people and person boxes), then prints and
writes `ood.json` / `ood.md`: AP per split and the drop relative to the original.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zoo.cli import ZooCLI, metrics_markdown, write_metrics  # noqa: E402
from zoo.data.coco_files import CocoFileError  # noqa: E402
from zoo.data.datamodule import EmptySplitError  # noqa: E402
from zoo.evaluation.ood import drop_table, find_splits  # noqa: E402
from zoo.registry import get_family  # noqa: E402
from zoo.utils.files import atomic_write_json, atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Evaluate and write metrics; returns the metrics dict."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--ckpt_path",
        help="Lightning checkpoint to evaluate; without it, the weights the "
        "config's model loads (e.g. an official checkpoint folder as the backbone) are evaluated",
    )
    parser.add_argument("--out", default="outputs/eval", help="folder for metrics.json and metrics.md")
    parser.add_argument(
        "--ood-root", help="COCO-OOD output folder: also evaluate every split and print the drop"
    )
    known, cli_args = parser.parse_known_args(argv)
    if known.ckpt_path is not None and not Path(known.ckpt_path).is_file():
        parser.error(f"--ckpt_path {known.ckpt_path}: no such checkpoint file")
    cli = ZooCLI(args=[*cli_args, "--trainer.logger", "false"], run=False, save_config_callback=None)

    def test(datamodule) -> dict[str, float]:  # noqa: ANN001
        try:
            results = cli.trainer.test(
                cli.model, datamodule=datamodule, ckpt_path=known.ckpt_path, weights_only=True
            )
        except (
            CocoFileError,
            EmptySplitError,
        ) as error:  # the same named validation errors as every other tool
            parser.exit(2, f"error: {error}\n")
        metrics = {name: float(value) for result in results for name, value in result.items()}
        if not metrics:
            parser.exit(2, "error: the test split produced no metrics (no samples were evaluated)\n")
        return metrics

    metrics = test(cli.datamodule)
    json_path, md_path = write_metrics(metrics, known.out)
    print(metrics_markdown(metrics))
    print(f"wrote {json_path} and {md_path}")
    if known.ood_root:
        family = getattr(cli.model, "family", "")
        ood_spec = get_family(family).ood if family else None
        if ood_spec is None:
            raise SystemExit(
                f"--ood-root: family {family or type(cli.model).__name__!r} has no COCO-OOD evaluation"
            )
        ood = {"original": metrics}
        for split in find_splits(known.ood_root):
            # Same datamodule settings (person boxes included); only the test images and their copy of the GT
            # change.
            settings = {
                key: value for key, value in cli.datamodule.hparams.items() if not key.startswith("_")
            }
            settings.update(
                {
                    ood_spec.ann_field: str(split.annotations.resolve()),
                    ood_spec.image_field: str(split.images.resolve()),
                }
            )
            ood[split.name] = test(type(cli.datamodule)(**settings))
        metric = ood_spec.metric
        table = drop_table({name: {metric: m[f"test/{metric}"]} for name, m in ood.items()}, metric=metric)
        atomic_write_json(Path(known.out) / "ood.json", ood)
        atomic_write_text(Path(known.out) / "ood.md", table)
        print(table)
    return metrics


if __name__ == "__main__":
    main()
