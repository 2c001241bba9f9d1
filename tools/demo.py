#!/usr/bin/env python
"""`make demo`: the shipped tiny models on held-out synthetic data and on real photos, in about a minute.

Verifies the tiny backbone's files against its recipe, evaluates each shipped tiny model on held-out data next
to its trivial baseline, runs the predictors on the real RGB-D and COCO photos, exports ControlNet poses and a
small COCO-OOD with its contact sheet. Pictures and tables go to outputs/demo/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import zoo  # noqa: E402
from zoo.cli import metrics_markdown  # noqa: E402
from zoo.registry import MEASURED_DATASET, REPO_ROOT, get_entry, get_family, tiny_models  # noqa: E402
from zoo.utils.files import atomic_open, atomic_write_text, sha256_file  # noqa: E402
from zoo.visualize import image_grid  # noqa: E402

REALDATA = REPO_ROOT.parent / "shared" / "realdata"


def save_png(array: np.ndarray, path: Path) -> None:
    """Write a uint8 RGB array as PNG atomically."""
    with atomic_open(path) as handle:
        Image.fromarray(array).save(handle, format="PNG")


def check_tiny_backbone() -> str:
    """Verify the committed tiny backbone's hashes and return its quality table."""
    from zoo.backbones.tiny import tiny_backbone_path
    from zoo.recipes.tiny_backbone import describe

    folder = tiny_backbone_path()
    record = json.loads((folder / "recipe.json").read_text())
    bad = [name for name, digest in record["files"].items() if sha256_file(folder / name) != digest]
    if bad:
        raise SystemExit(
            f"tiny backbone files differ from recipe.json: {bad}; rebuild with `make tiny-backbone`"
        )
    return describe(record)


def lotus_demo(name: str, out: Path, scenes: int) -> tuple[str, dict[str, float]]:
    """Evaluate a tiny Lotus model on held-out scenes and predict on the real photos."""
    from zoo.data.datamodule import TEST_SEED
    from zoo.data.images import load_rgb_uint8
    from zoo.data.synthetic import SyntheticSceneDataset
    from zoo.evaluation.depth import DepthEvaluator
    from zoo.evaluation.normals import NormalEvaluator
    from zoo.models.lotus.model import constant_normal_baseline
    from zoo.models.lotus.module import SYNTHETIC_PROTOCOL

    predictor = zoo.load(name)
    entry = get_entry(name)
    data = SyntheticSceneDataset(scenes, 64, 64, base_seed=TEST_SEED)
    batch = torch.utils.data.default_collate([data[i] for i in range(scenes)])
    prediction = predictor(
        batch["image"], processing_resolution=0, batch_size=16, output_type="pt"
    ).prediction
    if predictor.task == "depth":
        evaluator = DepthEvaluator(constant_baseline=True)
        space = "disparity" if predictor.disparity else "depth"
        evaluator.update(prediction, batch["depth"], batch["valid"], SYNTHETIC_PROTOCOL, space)
        scores = evaluator.compute()
        metrics = {
            "AbsRel": scores["abs_rel"],
            "delta1": scores["delta1"],
            "constant AbsRel": scores["constant_baseline_abs_rel"],
        }
    else:
        model, constant = NormalEvaluator(), NormalEvaluator()
        model.update(prediction, batch["normals"], batch["valid"])
        constant.update(
            constant_normal_baseline(batch["normals"], batch["valid"]), batch["normals"], batch["valid"]
        )
        scores = model.compute()
        metrics = {
            "mean deg": scores["mean"],
            "median deg": scores["median"],
            "constant (mean direction) mean deg": constant.compute()["mean"],
        }
    photos = (
        sorted((REALDATA / "rgbd" / "color").glob("*.jpg"))[:2]
        + sorted((REALDATA / "coco").glob("*.jpg"))[:2]
    )
    tiles = []
    for photo in photos:
        result = predictor(photo, processing_resolution=256).prediction[0]
        stem = out / entry.task / photo.stem
        predictor.save(result, stem)
        rgb = np.asarray(Image.fromarray(load_rgb_uint8(photo)).resize((192, 144)))
        vis = np.asarray(Image.fromarray(predictor.visualize(result)).resize((192, 144)))
        tiles += [rgb, vis]
    save_png(image_grid(tiles, columns=4), out / f"{name}_photos.png")
    return name, metrics


def sdpose_demo(name: str, out: Path, images: int) -> tuple[str, dict[str, float]]:
    """Evaluate a tiny SDPose on held-out synthetic figures and draw skeletons on figures and real photos."""
    from zoo.data.coco_files import read_coco
    from zoo.data.images import load_rgb_uint8
    from zoo.data.metainfo import load_metainfo
    from zoo.data.synthetic.figures import write_coco_figures
    from zoo.evaluation.coco import CocoKeypointEvaluator
    from zoo.visualize import draw_skeleton

    predictor = zoo.load(name)
    ann_file, image_dir = write_coco_figures(
        out / "figures", images, seed=3_000_000, split="demo", width=192, height=192
    )
    coco = read_coco(ann_file).data
    evaluator = CocoKeypointEvaluator(ann_file, metainfo="coco")
    boxes = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        boxes[annotation["image_id"]].append([x, y, x + w, y + h])
    paths = [Path(image_dir) / image["file_name"] for image in coco["images"]]
    result = predictor(
        [str(p) for p in paths], boxes=[np.array(boxes[i["id"]]) for i in coco["images"]], flip_test=True
    )
    for image, keypoints, scores, found in zip(
        coco["images"], result.keypoints, result.scores, result.boxes, strict=True
    ):
        xywh = np.concatenate([found[:, :2], found[:, 2:] - found[:, :2]], axis=1)  # [N, 4]
        evaluator.update(image["id"], keypoints, scores, bboxes=xywh)
    metrics = {key: value for key, value in evaluator.compute().items() if key in ("AP", "AP50", "AR")}
    metainfo = load_metainfo("coco")
    tiles = []
    photos = paths[:2] + sorted((REALDATA / "coco").glob("*.jpg"))[:2]
    for photo in photos:
        picture = predictor(str(photo))
        image = draw_skeleton(load_rgb_uint8(photo), picture.keypoints[0], picture.scores[0], metainfo)
        tiles.append(np.asarray(Image.fromarray(image).resize((192, 144))))
    save_png(image_grid(tiles, columns=4), out / f"{name}_skeletons.png")
    return name, metrics


def t2i_demo(name: str, out: Path, steps: int = 20) -> Path:
    """Sample the text-to-image backbone from held-out captions at guidance 1, 3 and 7: a contact sheet."""
    from zoo.data.synthetic.captions import CaptionDataset
    from zoo.recipes.tiny_backbone import GUIDANCE_SCALES, contact_sheet, sheet_rows

    predictor = zoo.load(name)
    data = CaptionDataset(64, "test")
    candidates = [data.item(i) for i in range(len(data))]
    records = [candidates[i] for i in sheet_rows(candidates, rows=8)]
    samples = {}
    for scale in GUIDANCE_SCALES:
        generator = torch.Generator().manual_seed(0)
        samples[scale] = predictor([r.caption for r in records], steps, scale, generator, output_type="np")
    path = out / f"{name}_samples.png"
    contact_sheet(records, samples, path)
    return path


def controlnet_demo(out: Path) -> int:
    """Export the real COCO ground truth as ControlNet OpenPose conditioning images."""
    from zoo.export.controlnet import iter_controlnet_exports, write_controlnet_pose

    count = 0
    for export in iter_controlnet_exports(REALDATA / "coco" / "test_coco_wholebody.json"):
        write_controlnet_pose(out / "controlnet", export)
        count += 1
    return count


def coco_ood_demo(out: Path) -> Path:
    """Build a small COCO-OOD from the real COCO samples and its contact sheet."""
    from zoo.builders import build, write_contact_sheet

    styles = ["oil", "pencil", "watercolor", "cartoon", "corrupt-s3"]
    build(REALDATA / "coco" / "test_coco.json", REALDATA / "coco", out / "coco_ood", styles, progress=False)
    return write_contact_sheet(out / "coco_ood_contact_sheet.png", out / "coco_ood", REALDATA / "coco")


def comparison_table() -> str:
    """Markdown: each shipped model's measured metrics next to its registered comparisons (random UNet)."""
    rows = []
    for entry in tiny_models(rebuild=None):
        measured = entry.all_results().get(MEASURED_DATASET, {})
        for label, metrics in entry.comparison_results().items():
            rows += [
                f"| {entry.name} | {metric} | {measured[metric]:.4g} | {label}: {value:.4g} |"
                for metric, value in sorted(metrics.items())
                if metric in measured
            ]
    if not rows:
        return ""
    header = ["| model | metric | shipped (from the prior) | same recipe and steps |", "|" + " --- |" * 4]
    return "\n".join([*header, *rows]) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Run the demo."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--scenes", type=int, default=64, help="held-out synthetic scenes per Lotus model")
    parser.add_argument("--figures", type=int, default=32, help="held-out synthetic figure images for SDPose")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(0)
    report = ["# Demo results\n", "## Tiny backbone (VAE round trip)\n", check_tiny_backbone()]
    # Every shipped model of the registry, shown by what its family outputs.
    for entry in tiny_models():
        kind = get_family(entry.family).output_kind
        if kind == "dense":
            name, metrics = lotus_demo(entry.name, out, args.scenes)
            report += [f"\n## {name} on {args.scenes} held-out synthetic scenes\n", metrics_markdown(metrics)]
        elif kind == "keypoints":
            name, metrics = sdpose_demo(entry.name, out, args.figures)
            report += [
                f"\n## {name} on {args.figures} held-out synthetic figure images (GT boxes, flip test)\n",
                metrics_markdown(metrics),
            ]
    comparisons = comparison_table()
    if comparisons:
        report += ["\n## What the prior is worth (held-out, as measured by each recipe)\n", comparisons]
    for entry in tiny_models(rebuild="tiny-backbone"):
        if get_family(entry.family).output_kind == "image":
            report += [f"\n{entry.name} samples from held-out captions: {t2i_demo(entry.name, out)}\n"]
    report += [f"\nControlNet OpenPose exports: {controlnet_demo(out)} images in {out / 'controlnet'}\n"]
    report += [f"COCO-OOD contact sheet: {coco_ood_demo(out)}\n"]
    text = "\n".join(report)
    atomic_write_text(out / "results.md", text)
    print(text)
    print(f"pictures and files: {out}/")


if __name__ == "__main__":
    main()
