"""The tiny backbone as a text-to-image model: captions, text encoder, CFG sampling, held-out loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data.caption_datamodule import CaptionDataModule
from zoo.data.synthetic.captions import COLOURS, POSES, CaptionDataset, pose_class, render_captioned
from zoo.inference.t2i import TextToImagePredictor
from zoo.models.t2i.evaluation import caption_checks, caption_following
from zoo.recipes.tiny_backbone import heldout_band_losses, initial_components


@pytest.fixture(scope="module")
def predictor(tiny_backbone_dir) -> TextToImagePredictor:
    """The shipped tiny backbone as a text-to-image predictor."""
    return TextToImagePredictor.from_pretrained(str(tiny_backbone_dir))


@pytest.fixture(scope="module")
def t2i_record(tiny_backbone_dir) -> dict:
    """The measured text-to-image quality recorded in the backbone's recipe.json."""
    return json.loads((tiny_backbone_dir / "recipe.json").read_text())["t2i_quality"]


def test_captions_are_deterministic_and_name_what_is_there():
    first, again = render_captioned(123), render_captioned(123)
    assert first.caption == again.caption and np.array_equal(first.image, again.image)
    records = [CaptionDataset(64, "train").item(i) for i in range(64)]
    assert {r.kind for r in records} == {"scene", "figures"}
    for record in records:
        assert record.image.shape == (64, 64, 3) and 0 <= record.image.min() and record.image.max() <= 1
        assert len(record.caption) <= 75  # fits the 77-token character-level tokenizer with BOS/EOS
        assert all(len(answer.split()) == 1 for _, answer in record.questions)
        for obj in record.objects:
            assert obj.colour in record.caption and obj.colour in COLOURS
        assert all(pose in POSES for pose in record.poses)


def test_position_questions_are_balanced_and_follow_the_geometry():
    answers = []
    for record in (CaptionDataset(200, "train").item(i) for i in range(200)):
        by_name = {f"{o.colour} {o.shape}": o for o in record.objects}
        for question, answer in record.questions:
            if " or " not in question:
                continue
            answers.append(answer)
            first, second = sorted(by_name.values(), key=lambda o: question.index(f"{o.colour} {o.shape}"))
            if answer in ("left", "right"):  # the asked object's image position decides the answer
                assert (first.x < second.x) == (answer == "left"), question
            else:  # only stacked pairs are asked above/below: the object resting on the other is above
                assert (first.on is not None) == (answer == "above"), question
    counts = {answer: answers.count(answer) for answer in ("left", "right", "above", "below")}
    assert counts["left"] == counts["right"] > 10 and counts["above"] == counts["below"] > 5, counts


def test_heldout_split_shares_no_image_with_training():
    train = {CaptionDataset(128, "train").item(i).image.tobytes() for i in range(128)}
    test = {CaptionDataset(128, "test").item(i).image.tobytes() for i in range(128)}
    assert not train & test


def test_pose_class_reads_the_wrists():
    keypoints = np.zeros((17, 3))
    keypoints[[5, 6], 1] = 50.0  # shoulders
    keypoints[[9, 10], 1] = 80.0  # wrists below (image y grows downwards)
    assert pose_class(keypoints) == "down"
    keypoints[9, 1] = 20.0
    assert pose_class(keypoints) == "waving"
    keypoints[10, 1] = 20.0
    assert pose_class(keypoints) == "up"


def test_datamodule_gives_image_text_batches():
    data = CaptionDataModule(train_size=8, val_size=4, test_size=4, batch_size=4)
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and len(batch["text"]) == 4
    val = next(iter(data.val_dataloader()))
    assert val["sample_id"].tolist() == [0, 1, 2, 3]


def test_caption_checks_pass_on_the_real_images():
    """The pixel measurement is right on the generator's own images (its ceiling for generated ones)."""
    records = [CaptionDataset(96, "test").item(i) for i in range(96)]
    rates = caption_following(records, np.stack([r.image for r in records]))
    assert rates["colour_rate"] > 0.9 and rates["order_rate"] > 0.8
    assert caption_checks(records[0], np.zeros((64, 64, 3))).get("colour", False) is False


def test_text_encoder_separates_captions_that_differ_in_one_word(predictor):
    embeds = predictor.model.embed(
        ["a red sphere on the left", "a blue sphere on the left", "a red sphere on the left"]
    )  # [3, 77, D]
    torch.testing.assert_close(embeds[0], embeds[2])
    # After the differing word the causal encoder's states differ too: compare mean states over the caption.
    change = (embeds[0, :26] - embeds[1, :26]).norm() / embeds[0, :26].norm()
    assert change > 0.05


def test_cfg_sampling_is_deterministic_for_a_seed(predictor):
    prompts = ["a red box in the middle", "two blue spheres"]
    first = predictor(prompts, 4, 3.0, torch.Generator().manual_seed(0), output_type="pt")
    again = predictor(prompts, 4, 3.0, torch.Generator().manual_seed(0), output_type="pt")
    other = predictor(prompts, 4, 3.0, torch.Generator().manual_seed(1), output_type="pt")
    assert first.shape == (2, 3, 64, 64) and 0 <= first.min() and first.max() <= 1
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, other)
    unguided = predictor(prompts, 4, 1.0, torch.Generator().manual_seed(0), output_type="pt")
    assert not torch.equal(first, unguided)
    pictures = predictor("a person waving", 2, 7.0, torch.Generator().manual_seed(0))
    assert pictures[0].size == (64, 64)


def test_shipped_unet_beats_the_random_unet_on_heldout_captions(predictor, t2i_record):
    """On 32 held-out items the trained UNet's loss is below the random initial UNet's by half the margin
    recorded on 256 (recipe.json: t2i_quality.heldout_loss_margin)."""
    data = CaptionDataset(32, "test")
    records = [data.item(i) for i in range(32)]
    trained = heldout_band_losses(predictor.model, records)
    shipped_unet = predictor.backbone.unet
    predictor.backbone.unet = initial_components(0)[3].eval()
    try:
        random = heldout_band_losses(predictor.model, records)
    finally:
        predictor.backbone.unet = shipped_unet
    assert random["all"] - trained["all"] > 0.5 * t2i_record["heldout_loss_margin"] > 0
    for band, value in trained.items():
        assert value < random[band], band


def test_registry_entry_and_export_round_trip(tiny_backbone_dir, tmp_path):
    import zoo
    from zoo.models.t2i import TextToImageModule

    assert isinstance(zoo.load("tiny-sd"), TextToImagePredictor)
    module = TextToImageModule(backbone=str(tiny_backbone_dir)).eval()
    module.export_pretrained(tmp_path / "export")
    predictor = zoo.load(str(tmp_path / "export"))
    assert isinstance(predictor, TextToImagePredictor) and not (tmp_path / "export" / "vae").exists()
    reference = TextToImagePredictor.from_pretrained(str(tiny_backbone_dir))
    images = [
        p("a green sphere", 2, 3.0, torch.Generator().manual_seed(0), output_type="pt")
        for p in (predictor, reference)
    ]
    torch.testing.assert_close(images[0], images[1])


def test_prior_worth_starts_differ_only_in_the_unet_weights(tmp_path):
    from safetensors.torch import load_file

    from zoo.recipes.prior_worth import BACKBONE, random_unet_backbone
    from zoo.utils.files import sha256_file

    weights = Path("unet") / "diffusion_pytorch_model.safetensors"
    folder = random_unet_backbone(tmp_path / "random")
    shipped = {p.relative_to(BACKBONE) for p in BACKBONE.rglob("*") if p.is_file()}
    assert shipped == {p.relative_to(folder) for p in folder.rglob("*") if p.is_file()}
    for name in shipped - {weights, Path("unet") / "config.json"}:
        assert sha256_file(BACKBONE / name) == sha256_file(folder / name), name
    configs = [json.loads((root / "unet" / "config.json").read_text()) for root in (BACKBONE, folder)]
    trained_config, random_config = ({k: v for k, v in c.items() if not k.startswith("_")} for c in configs)
    assert trained_config == random_config
    trained, random = load_file(BACKBONE / weights), load_file(folder / weights)
    assert trained.keys() == random.keys() and not all(torch.equal(trained[k], random[k]) for k in trained)
    again = load_file(random_unet_backbone(tmp_path / "again") / weights)
    assert all(torch.equal(random[k], again[k]) for k in random)  # seeded


def test_prior_worth_random_start_copies_the_given_prior(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from zoo.recipes.prior_worth import BACKBONE, random_unet_backbone, run

    prior = tmp_path / "longer_prior"
    shutil.copytree(BACKBONE, prior)
    embeds = prior / "empty_prompt_embeds.safetensors"
    save_file({k: v + 1.0 for k, v in load_file(embeds).items()}, embeds)  # differs from the shipped one
    folder = random_unet_backbone(tmp_path / "random", prior=prior)
    copied = load_file(folder / "empty_prompt_embeds.safetensors")
    assert all(torch.equal(copied[k], v) for k, v in load_file(embeds).items())
    with pytest.raises(FileNotFoundError, match="--prior"):
        run("configs/tiny/lotus_depth_d.yaml", 1, tmp_path / "out", prior=tmp_path / "missing")
