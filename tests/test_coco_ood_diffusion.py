"""COCO-OOD diffusion back-ends on tiny random SD / ControlNet folders: plumbing, sizes, determinism,
annotations.

The UNet and ControlNet are random, so the images are noise: what is checked is that the real diffusers
pipelines run through the builder, keep every annotation and image size, are deterministic by seed, and that
the ControlNet sees this project's own OpenPose render of the ground truth.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_coco_ood import assert_only_allowed_differences, tree

from zoo.builders import (
    CocoOodError,
    available_styles,
    build,
    default_styles,
    get_style,
    split_paths,
    styles,
    verify,
)
from zoo.builders.diffusion_styles import (
    SD_COMPONENTS,
    STYLE_PROMPTS,
    DiffusionWeightsError,
    SDControlNetPoseStyle,
    SDImg2ImgStyle,
    processing_size,
    register_diffusion_styles,
)
from zoo.data.images import load_rgb_uint8
from zoo.export.controlnet import export_image, read_coco_poses
from zoo.visualize.openpose import person_from_coco, render_openpose

# Two DDIM steps (4 * 0.5) with classifier-free guidance on, at a 64-pixel long side: seconds for the whole
# module.
TINY = {"steps": 4, "strength": 0.5, "guidance_scale": 2.0, "max_side": 64}
IMAGE_IDS = (785, 40083)  # one person; three annotations of which one has no keypoints
NAMES = ["sd-monet", "sd-pose-monet"]


@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> tuple[Path, Path]:
    """(SD folder, ControlNet folder): the tiny backbone's VAE and text stack with a plain random
    text-to-image UNet."""
    from diffusers import ControlNetModel, DDIMScheduler, UNet2DConditionModel

    root = tmp_path_factory.mktemp("weights")
    sd, controlnet = root / "tiny-sd", root / "tiny-controlnet"
    for component in ("vae", "text_encoder", "tokenizer"):
        shutil.copytree(tiny_backbone_dir / component, sd / component)
    # The settings SD's own scheduler configs carry; the pipelines warn about (and patch) any others.
    DDIMScheduler.from_pretrained(
        tiny_backbone_dir / "scheduler", steps_offset=1, clip_sample=False
    ).save_pretrained(sd / "scheduler")
    config = {
        key: value
        for key, value in UNet2DConditionModel.load_config(tiny_backbone_dir / "unet").items()
        if not key.startswith("_")
    }
    # An img2img UNet has no task-switcher projection.
    config.update(class_embed_type=None, projection_class_embeddings_input_dim=None)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**config)
    unet.save_pretrained(sd / "unet")
    ControlNetModel.from_unet(unet).save_pretrained(controlnet)
    return sd, controlnet


@pytest.fixture(scope="module")
def coco2(tmp_path_factory: pytest.TempPathFactory, realdata: Path) -> tuple[Path, Path]:
    """(annotation file, image root): a two-image subset of the real COCO samples, copied."""
    root = tmp_path_factory.mktemp("coco2")
    source = json.loads((realdata / "coco" / "test_coco.json").read_text())
    subset = {
        **source,
        "images": [image for image in source["images"] if image["id"] in IMAGE_IDS],
        "annotations": [ann for ann in source["annotations"] if ann["image_id"] in IMAGE_IDS],
    }
    (root / "images").mkdir()
    for image in subset["images"]:
        shutil.copy(realdata / "coco" / image["file_name"], root / "images" / image["file_name"])
    ann = root / "person_keypoints.json"
    ann.write_text(json.dumps(subset))
    return ann, root / "images"


@pytest.fixture(scope="module")
def registered(sd_folders: tuple[Path, Path]) -> Iterator[list[str]]:
    """Register one img2img and one ControlNet style for this module, restoring the registry afterwards."""
    saved = dict(styles._REGISTRY)
    names = [
        style.name
        for style in register_diffusion_styles(*sd_folders, {"monet": STYLE_PROMPTS["monet"]}, **TINY)
    ]
    yield names
    styles._REGISTRY.clear()
    styles._REGISTRY.update(saved)


@pytest.fixture(scope="module")
def reference(
    coco2: tuple[Path, Path], registered: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Both diffusion splits built once with seed 0."""
    out = tmp_path_factory.mktemp("ood") / "out"
    build(*coco2, out, registered, seed=0, progress=False)
    return out


def test_registered_styles_are_off_by_default(registered: list[str]) -> None:
    assert registered == NAMES
    assert set(NAMES) <= set(available_styles())
    assert not set(NAMES) & set(default_styles())
    described = get_style("sd-pose-monet").describe()
    assert described["weights"].startswith("tiny-sd@") and described["controlnet"].startswith(
        "tiny-controlnet@"
    )
    assert described["prompt"] == STYLE_PROMPTS["monet"] and described["steps"] == TINY["steps"]


def test_annotations_kept_sizes_kept_and_params_recorded(coco2: tuple[Path, Path], reference: Path) -> None:
    source = json.loads(coco2[0].read_text())
    sizes = {image["id"]: (image["height"], image["width"]) for image in source["images"]}
    for name in NAMES:
        paths = split_paths(reference, name)
        assert_only_allowed_differences(source, json.loads(paths.annotations.read_text()), name, ".jpg")
        assert verify(reference, name) == []
        manifest = json.loads(paths.manifest.read_text())
        assert [record["image_id"] for record in manifest["images"]] == sorted(IMAGE_IDS)
        for record in manifest["images"]:
            assert load_rgb_uint8(paths.images / record["file_name"]).shape == (*sizes[record["image_id"]], 3)
            params = record["params"]
            assert {
                "seed",
                "prompt",
                "negative_prompt",
                "strength",
                "steps",
                "guidance_scale",
                "weights",
            } <= set(params)
            assert (params["steps"], params["strength"], params["guidance_scale"]) == (4, 0.5, 2.0)
            assert params["weights"] == manifest["header"]["style"]["weights"]
            # 640x425 and 500x333 shrink to a 64-pixel long side, sides rounded to multiples of 8.
            assert params["processing_size"] == [64, 40]
        assert ("controlnet" in manifest["images"][0]["params"]) == (name == "sd-pose-monet")


def test_same_seed_same_bytes_other_seed_other_images(
    coco2: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    build(*coco2, tmp_path / "again", NAMES, seed=0, progress=False)
    assert tree(tmp_path / "again") == tree(reference)
    build(*coco2, tmp_path / "other", NAMES, seed=1, progress=False)
    for name in NAMES:
        first = json.loads(split_paths(reference, name).manifest.read_text())["images"]
        second = json.loads(split_paths(tmp_path / "other", name).manifest.read_text())["images"]
        for a, b in zip(first, second, strict=True):
            assert a["sha256"] != b["sha256"] and a["params"]["seed"] != b["params"]["seed"]


def test_controlnet_sees_the_exported_gt_pose(
    coco2: tuple[Path, Path], registered: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diffusers import StableDiffusionControlNetImg2ImgPipeline

    seen: list[np.ndarray] = []
    original = StableDiffusionControlNetImg2ImgPipeline.__call__

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append(np.asarray(kwargs["control_image"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionControlNetImg2ImgPipeline, "__call__", spy)
    build(*coco2, tmp_path / "out", ["sd-pose-monet"], seed=0, progress=False)

    style = get_style("sd-pose-monet")
    annotations = json.loads(coco2[0].read_text())["annotations"]
    poses = read_coco_poses(coco2[0])  # images in id order, as the builder visits them
    assert len(seen) == len(poses) == 2
    for control, image in zip(seen, poses, strict=True):
        size = processing_size(image.width, image.height, TINY["max_side"])
        people = [person_from_coco(points, image.width, image.height) for points in image.keypoints]
        expected = render_openpose(people, size[1], size[0])
        assert control.shape == (size[1], size[0], 3)
        assert np.array_equal(control, expected) and expected.any()
        # At the image's own size the style's conditioning is exactly the exporter's image for the GT.
        own = [ann for ann in annotations if ann["image_id"] == image.image_id]
        assert np.array_equal(
            style.conditioning_image(own, image.width, image.height), export_image(image).image
        )


def test_exact_size_for_sides_that_are_not_multiples_of_8(sd_folders: tuple[Path, Path]) -> None:
    style = SDImg2ImgStyle(sd_folders[0], "a sketch", **{**TINY, "max_side": None})
    image = np.random.default_rng(0).integers(0, 256, (23, 37, 3), dtype=np.uint8)
    styled, params = style.apply(image, np.random.default_rng(1), [])
    assert styled.shape == image.shape and styled.dtype == np.uint8
    assert params["processing_size"] == [40, 24]
    # Pickled into a worker, the style carries its settings but not the loaded pipeline, and renders the same
    # bytes.
    clone = pickle.loads(pickle.dumps(style))
    assert clone._pipe is None
    assert np.array_equal(clone.apply(image, np.random.default_rng(1), [])[0], styled)


def test_missing_or_unusable_weights_name_the_folder(
    sd_folders: tuple[Path, Path], tiny_backbone_dir: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "stable-diffusion-2-base"
    with pytest.raises(DiffusionWeightsError, match="stable-diffusion-2-base.*does not exist"):
        SDImg2ImgStyle(missing, "a sketch")
    partial = tmp_path / "partial"
    for component in SD_COMPONENTS:
        if component != "unet":
            (partial / component).mkdir(parents=True)
    with pytest.raises(DiffusionWeightsError, match=r"partial lacks unet/"):
        register_diffusion_styles(partial)
    with pytest.raises(CocoOodError, match="ControlNet weights folder .*no-controlnet does not exist"):
        SDControlNetPoseStyle(sd_folders[0], tmp_path / "no-controlnet", "a sketch")
    # The tiny backbone is a text-to-image model (no class embedding, as SD2): it restyles.
    restyled, _ = SDImg2ImgStyle(tiny_backbone_dir, "a sketch", **TINY).apply(
        np.zeros((16, 16, 3), np.uint8), np.random.default_rng(0), []
    )
    assert restyled.shape == (16, 16, 3) and restyled.dtype == np.uint8
    # A perception UNet with the task switcher is refused on load, with the reason.
    import shutil

    import torch

    from zoo.backbones import StableDiffusionBackbone

    perception_dir = tmp_path / "perception"
    shutil.copytree(tiny_backbone_dir, perception_dir)
    shutil.rmtree(perception_dir / "unet")
    torch.manual_seed(0)
    switched = StableDiffusionBackbone.from_pretrained(tiny_backbone_dir, with_task_switcher=True)
    switched.unet.save_pretrained(perception_dir / "unet")
    perception = SDImg2ImgStyle(perception_dir, "a sketch", **TINY)
    with pytest.raises(DiffusionWeightsError, match="class embedding"):
        perception.apply(np.zeros((16, 16, 3), np.uint8), np.random.default_rng(0), [])


def test_settings_that_would_run_no_step_are_refused(sd_folders: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="steps \\* strength"):
        SDImg2ImgStyle(sd_folders[0], "a sketch", steps=2, strength=0.3)


def test_two_worker_processes_give_the_same_bytes(
    coco2: tuple[Path, Path], reference: Path, tmp_path: Path
) -> None:
    # Each spawned worker unpickles the styles without a pipeline and loads its own.
    build(*coco2, tmp_path / "workers", NAMES, seed=0, workers=2, progress=False)
    assert tree(tmp_path / "workers") == tree(reference)


def test_prompt_following_check_reads_the_colour_shift() -> None:
    from zoo.data.synthetic.captions import COLOURS
    from zoo.recipes.tiny_ood_styles import shifted_colour

    grey = np.full((16, 16, 3), 128, np.uint8)
    for colour, albedo in COLOURS.items():
        tinted = (0.7 * grey + 0.3 * 255 * np.asarray(albedo)).astype(np.uint8)
        assert shifted_colour(grey, tinted) == colour
        assert shifted_colour(tinted, grey) != colour  # moving away from a colour is not following it
