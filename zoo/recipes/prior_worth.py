"""What the text-to-image prior is worth to a tiny recipe: trained from the prior UNet vs from a random one.

    OMP_NUM_THREADS=1 python -m zoo.recipes.prior_worth configs/tiny/lotus_depth_d.yaml --steps 600 \
        --out outputs/prior_worth/lotus_depth_d_600

Both runs train `config` unchanged except for `--trainer.max_steps` (the cosine schedule follows it) and the
backbone folder: the prior itself (the tiny backbone, or `--prior DIR`, e.g. a longer text-to-image stage
built with `tools/build_tiny_backbone.py --vae-from`), or a copy whose UNet is re-initialised (PyTorch's
default initialisation, seeded) and everything else (VAE, text encoder, empty-prompt embedding) the same
bytes. So the difference between the two results is the UNet's pretraining alone. Writes `<out>/results.json`
(both held-out test metrics, the command, seconds) and each run's export under `<out>/<start>/`.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from zoo.cli import train_evaluate_export
from zoo.registry import REPO_ROOT
from zoo.utils.files import atomic_write_json

BACKBONE = REPO_ROOT / "checkpoints" / "tiny" / "backbone"
RANDOM_UNET_SEED = 0


def random_unet_backbone(folder: Path, seed: int = RANDOM_UNET_SEED, prior: Path = BACKBONE) -> Path:
    """A copy of the `prior` backbone under `folder`, its UNet re-initialised from its config with `seed`."""
    from diffusers import UNet2DConditionModel

    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(prior, folder, ignore=shutil.ignore_patterns("unet"))
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(prior / "unet"))
    unet.save_pretrained(folder / "unet")
    return folder


def run(
    config: str, steps: int, out: Path, extra: list[str] | None = None, prior: Path = BACKBONE
) -> dict[str, Any]:
    """Train `config` for `steps` from the `prior` UNet and from a random one; test both; write results.json.

    `extra`: further LightningCLI overrides for both runs (e.g. `--model.init_args.lr 1e-4`).
    """
    extra = list(extra or [])
    if not (prior / "unet" / "config.json").is_file():
        raise FileNotFoundError(f"--prior {prior}: not a backbone folder (no unet/config.json)")
    out.mkdir(parents=True, exist_ok=True)
    random_start = random_unet_backbone(out / "random_unet_backbone", prior=prior)
    starts = {"trained prior": prior, "random UNet": random_start}
    prior_option = [] if prior == BACKBONE else [f"--prior {prior.as_posix()}"]
    results: dict[str, Any] = {
        "config": config,
        "steps": steps,
        "command": " ".join(
            [
                "python -m zoo.recipes.prior_worth",
                config,
                f"--steps {steps} --out {out.as_posix()}",
                *prior_option,
                *extra,
            ]
        ),
        "threads": torch.get_num_threads(),
        "random_unet_seed": RANDOM_UNET_SEED,
    }
    for start, backbone in starts.items():
        started = time.time()
        overrides = [
            "--model.init_args.backbone",
            str(backbone),
            "--trainer.max_steps",
            str(steps),
            "--trainer.enable_progress_bar",
            "false",
            *extra,
        ]
        record = train_evaluate_export(config, out / start.replace(" ", "_"), overrides)
        results[start] = {"metrics": record["metrics"], "seconds": round(time.time() - started, 1)}
        atomic_write_json(out / "results.json", results)  # each finished start survives a later failure
    return results


# The indoor sensor range of NYUv2/ScanNet-style evaluation (metres), no crop: the real frames are indoor.
INDOOR_RGBD = ("indoor-rgbd", 1e-3, 10.0, None)


def real_rgbd_depth(
    folders: dict[str, str | Path], rgbd_root: str | Path, processing_resolution: int = 64
) -> dict[str, dict[str, float]]:
    """label -> depth metrics of each Lotus depth export on the real RGB-D frames (outside training data).

    Predictions are affine-aligned to the sensor depth in disparity space (how Lotus disparity models are
    scored), over the valid sensor pixels, image by image, averaged over the frames.
    """
    from zoo.data.depth_protocols import DepthEvalProtocol
    from zoo.data.rgbd import RealRGBDDataset
    from zoo.evaluation.depth import DepthEvaluator
    from zoo.inference.lotus import LotusPredictor

    frames = RealRGBDDataset(rgbd_root)
    protocol = DepthEvalProtocol(*INDOOR_RGBD)
    results = {}
    for label, folder in folders.items():
        predictor = LotusPredictor.from_pretrained(str(folder))
        evaluator = DepthEvaluator()
        for index in range(len(frames)):
            frame = frames[index]
            prediction = predictor(
                frame["image"][None], processing_resolution=processing_resolution, output_type="pt"
            ).prediction  # [1, 1, H, W] at the frame's size
            evaluator.update(
                prediction, frame["depth"], frame["valid"], protocol, "disparity", sample_ids=[index]
            )
        results[label] = {name: float(value) for name, value in evaluator.compute().items()}
    return results


def main(argv: list[str] | None = None) -> None:
    """Run and print both starts' metrics side by side."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", help="a YAML under configs/tiny/")
    parser.add_argument("--steps", type=int, help="training steps of both runs")
    parser.add_argument("--out", help="results folder")
    parser.add_argument("--prior", default=str(BACKBONE), help="the pretrained backbone folder")
    parser.add_argument(
        "--real-rgbd",
        nargs="+",
        metavar="LABEL=FOLDER",
        help="instead of training: score Lotus depth exports on the real RGB-D frames (--rgbd-root)",
    )
    parser.add_argument("--rgbd-root", default=str(REPO_ROOT.parent / "shared" / "realdata" / "rgbd"))
    args, extra = parser.parse_known_args(argv)
    if args.real_rgbd:
        folders = dict(item.split("=", 1) for item in args.real_rgbd)
        scores = real_rgbd_depth(folders, args.rgbd_root)
        if args.out:
            atomic_write_json(Path(args.out), {"rgbd_root": args.rgbd_root, "results": scores})
        print("| model | AbsRel | delta1 |\n| --- | --- | --- |")
        for label, metrics in scores.items():
            print(f"| {label} | {metrics['abs_rel']:.4f} | {metrics['delta1']:.4f} |")
        return
    if not (args.config and args.steps and args.out):
        parser.error("give CONFIG --steps N --out DIR (or --real-rgbd LABEL=FOLDER ...)")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1; got {args.steps}")
    results = run(args.config, args.steps, Path(args.out), extra, Path(args.prior))
    trained, random = results["trained prior"]["metrics"], results["random UNet"]["metrics"]
    print("| metric | trained prior | random UNet |\n| --- | --- | --- |")
    for name in sorted(trained):
        print(f"| {name} | {trained[name]:.4f} | {random.get(name, float('nan')):.4f} |")


if __name__ == "__main__":
    main()
