"""COCO-OOD's diffusion styles on the tiny backbone: does restyling follow the prompt? A picture and a rate.

    OMP_NUM_THREADS=1 python -m zoo.recipes.tiny_ood_styles --out outputs/tiny_ood_styles \
        [--sheet docs/tiny_coco_ood_styles.jpg]

The tiny prior knows only the words of its captions (five colours, spheres, boxes, figures), so the prompts
here name colours ("a red sphere", ...) instead of COCO-OOD's painting styles. A restyled image follows its
prompt when its mean colour moved from the input's towards the named colour: the hue of the shift of the mean
opponent-colour vector is nearest to that colour's hue (the hues of the text-to-image colour checks). Every
real COCO sample of the shared data is restyled by both back-ends of
zoo.builders.diffusion_styles: img2img, and img2img + OpenPose ControlNet with the image's annotated people.
No tiny ControlNet is trained: it is diffusers' `ControlNetModel.from_unet` of the tiny UNet, whose zero
convolutions pass no pose signal, so its rows show the prompt following of the UNet through the ControlNet
pipeline, not pose control. Baseline: the same pipelines with a random UNet of the same config (chance 1/5).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zoo.backbones.stable_diffusion import resolve_source
from zoo.builders.diffusion_styles import SDControlNetPoseStyle, SDImg2ImgStyle
from zoo.data.synthetic.captions import COLOUR_HUES, COLOURS
from zoo.utils.files import atomic_write_json
from zoo.visualize.pictures import image_grid

BACKBONE = "checkpoints/tiny/backbone"
PROMPTS = {colour: f"a {colour} sphere" for colour in COLOURS}
# The tiny prior was trained on 64x64 images: restyle at that size. 20 DDIM steps at strength 0.4 redraw 8
# of them (0.6 and more turn every photo into a grey room of the prior); guidance 7 as in the t2i checks.
OPTIONS = {"steps": 20, "strength": 0.4, "guidance_scale": 7.0, "max_side": 64, "negative_prompt": ""}
SHEET_SIDE = 96  # pixels per picture on the contact sheet


def _mean_chroma(image: np.ndarray) -> np.ndarray:
    """Mean opponent-colour vector [2] of a uint8 RGB image [H, W, 3] (the hue plane of colour_masks)."""
    red, green, blue = np.moveaxis(image.astype(np.float64) / 255.0, -1, 0)
    return np.array([(2 * red - green - blue).mean() / 2.0, np.sqrt(3.0) / 2.0 * (green - blue).mean()])


def shifted_colour(source: np.ndarray, restyled: np.ndarray) -> str:
    """The named colour whose hue is nearest to the direction the restyling moved the image's mean colour."""
    shift = _mean_chroma(restyled) - _mean_chroma(source)
    hue = np.degrees(np.arctan2(shift[1], shift[0])) % 360.0
    return min(COLOUR_HUES, key=lambda name: abs((hue - COLOUR_HUES[name] + 180.0) % 360.0 - 180.0))


def _weights(root: Path, random_unet: bool) -> tuple[Path, Path]:
    """(SD folder, ControlNet folder) of the tiny backbone, or of its copy whose UNet is random (seed 0)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    backbone = Path(resolve_source(BACKBONE))
    sd, controlnet = root / "sd", root / "controlnet"
    if random_unet:
        shutil.copytree(backbone, sd, ignore=shutil.ignore_patterns("unet"))
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(backbone / "unet"))
        unet.save_pretrained(sd / "unet")
    else:
        sd = backbone
        unet = UNet2DConditionModel.from_pretrained(backbone / "unet")
    ControlNetModel.from_unet(unet).save_pretrained(controlnet)
    return sd, controlnet


def _samples(coco_dir: Path) -> list[tuple[str, np.ndarray, list[dict[str, Any]]]]:
    """(file name, uint8 RGB image, its annotations) of every image of the real COCO sample."""
    coco = json.loads((coco_dir / "test_coco.json").read_text())
    samples = []
    for image in sorted(coco["images"], key=lambda record: record["id"]):
        pixels = np.asarray(Image.open(coco_dir / image["file_name"]).convert("RGB"))
        annotations = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        samples.append((image["file_name"], pixels, annotations))
    return samples


def _thumbnail(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((SHEET_SIDE, SHEET_SIDE), Image.BICUBIC))


def run(coco_dir: Path, out: Path, sheet: Path | None, seed: int = 0) -> dict[str, Any]:
    """Restyle every sample with every prompt, both back-ends, trained and random UNet; write results.json."""
    samples = _samples(coco_dir)
    results: dict[str, Any] = {"prompts": PROMPTS, "options": OPTIONS, "images": [s[0] for s in samples]}
    rows: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for unet in ("trained", "random"):
            sd, controlnet = _weights(Path(scratch) / unet, random_unet=unet == "random")
            for backend in ("img2img", "controlnet"):
                styles = {
                    colour: SDImg2ImgStyle(sd, prompt, name=f"sd-{colour}", **OPTIONS)
                    if backend == "img2img"
                    else SDControlNetPoseStyle(sd, controlnet, prompt, name=f"sd-pose-{colour}", **OPTIONS)
                    for colour, prompt in PROMPTS.items()
                }
                followed = []
                for index, (name, image, annotations) in enumerate(samples):
                    row = rows.setdefault(f"{unet} {backend} {name}", [_thumbnail(image)])
                    for colour, style in styles.items():
                        rng = np.random.default_rng([seed, index])  # same start noise for every prompt
                        restyled, _ = style.apply(image, rng, annotations)
                        followed.append(shifted_colour(image, restyled) == colour)
                        row.append(_thumbnail(restyled))
                results[f"follow_rate/{unet}/{backend}"] = float(np.mean(followed))
    results["chance"] = 1.0 / len(COLOURS)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    if sheet is not None:
        shown = [picture for key, row in rows.items() if key.startswith("trained") for picture in row]
        Image.fromarray(image_grid(shown, columns=1 + len(PROMPTS))).save(sheet, quality=85)
    return results


def main(argv: list[str] | None = None) -> None:
    """Run and print the follow rates."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--coco", default="../shared/realdata/coco", help="folder with test_coco.json + images"
    )
    parser.add_argument("--out", default="outputs/tiny_ood_styles")
    parser.add_argument("--sheet", help="contact sheet PNG: per image, the input and one output per prompt")
    args = parser.parse_args(argv)
    results = run(Path(args.coco), Path(args.out), Path(args.sheet) if args.sheet else None)
    for key, value in results.items():
        if key.startswith("follow_rate") or key == "chance":
            print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main()
