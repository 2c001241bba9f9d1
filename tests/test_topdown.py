"""Top-down COCO / COCO-WholeBody / HumanArt readers on the real samples, and their crops against mmpose."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.data.images import load_rgb_uint8
from zoo.data.topdown import (
    CocoPoseDataset,
    CocoWholeBodyPoseDataset,
    HumanArtPoseDataset,
    load_pose_instances,
)
from zoo.data.transforms import TopDownAugmentation, keypoints_to_image


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize(
    ("dataset_class", "folder", "ann_name", "num_keypoints"),
    [
        (CocoPoseDataset, "coco", "test_coco.json", 17),
        (CocoWholeBodyPoseDataset, "coco", "test_coco_wholebody.json", 133),
        (HumanArtPoseDataset, "humanart", "test_humanart.json", 17),
    ],
)
def test_readers_load_every_instance(realdata: Path, dataset_class, folder, ann_name, num_keypoints) -> None:
    ann_file = realdata / folder / ann_name
    annotations = _json(ann_file)["annotations"]
    everything = dataset_class(ann_file, realdata / folder, skip_invalid=False)
    assert [inst.instance_id for inst in everything.instances] == [ann["id"] for ann in annotations]
    # Top-down training skips crowds and people without labelled keypoints (mmpose's filter).
    usable = dataset_class(ann_file, realdata / folder)
    expected = [a["id"] for a in annotations if not a["iscrowd"] and a["num_keypoints"] > 0]
    assert [inst.instance_id for inst in usable.instances] == expected
    for inst in everything.instances:
        assert inst.image_path.is_file()
        assert inst.keypoints.shape == (num_keypoints, 2) and inst.keypoints_visible.shape == (num_keypoints,)
    if folder == "coco":
        assert (len(everything), len(usable)) == (14, 12)


def test_wholebody_concatenates_parts_in_mmpose_order(realdata: Path) -> None:
    ann_file = realdata / "coco" / "test_coco_wholebody.json"
    ann = _json(ann_file)["annotations"][0]
    inst = CocoWholeBodyPoseDataset(ann_file, realdata / "coco").instances[0]
    raw = np.array(
        ann["keypoints"] + ann["foot_kpts"] + ann["face_kpts"] + ann["lefthand_kpts"] + ann["righthand_kpts"]
    ).reshape(-1, 3)
    np.testing.assert_allclose(inst.keypoints, raw[:, :2], rtol=1e-6)
    np.testing.assert_array_equal(inst.keypoints_visible, (raw[:, 2] > 0).astype(np.float32))


def test_items_and_inverse_map(realdata: Path) -> None:
    dataset = CocoPoseDataset(realdata / "coco" / "test_coco.json", realdata / "coco", input_size=(192, 256))
    batch = torch.utils.data.default_collate([dataset[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 256, 192) and batch["image"].dtype == torch.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
    assert torch.equal(batch["image"], batch["clean_image"])  # evaluation crops are not corrupted
    assert batch["keypoints"].shape == (3, 17, 2) and batch["keypoints_visible"].shape == (3, 17)
    back = keypoints_to_image(batch["keypoints"].numpy(), batch["warp_matrix"].numpy(), batch["flip"].numpy())
    for i in range(3):
        inst = dataset.instances[i]
        assert batch["image_id"][i] == inst.image_id and batch["instance_id"][i] == inst.instance_id
        labelled = inst.keypoints_visible > 0
        np.testing.assert_allclose(back[i][labelled], inst.keypoints[labelled], atol=1e-3)


def test_training_items_round_trip_through_flips(realdata: Path) -> None:
    dataset = CocoPoseDataset(
        realdata / "coco" / "test_coco.json",
        realdata / "coco",
        input_size=(48, 64),
        augmentation=TopDownAugmentation(),
        seed=0,
    )
    items = [dataset[i] for i in range(len(dataset))]
    assert any(item["flip"] for item in items) and not all(item["flip"] for item in items)
    for index, item in enumerate(items):
        inst = dataset.instances[index]
        back = keypoints_to_image(
            item["keypoints"].numpy(),
            item["warp_matrix"].numpy(),
            item["flip"],
            dataset.metainfo.flip_indices,
        )
        labelled = inst.keypoints_visible > 0
        np.testing.assert_allclose(back[labelled], inst.keypoints[labelled], atol=1e-3)
        assert not torch.equal(item["image"], item["clean_image"])  # the dropout hole is always there
    again = dataset[0]
    assert torch.equal(again["image"], items[0]["image"])  # seeded: same (seed, epoch, index), same crop
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["clean_image"], items[0]["clean_image"])


@pytest.mark.mmpose
def test_crops_equal_mmpose_topdown_affine(realdata: Path, mmpose_topdown_affine) -> None:
    bbox_ops = pytest.importorskip("mmpose.structures.bbox")
    dataset = CocoPoseDataset(
        realdata / "coco" / "test_coco.json", realdata / "coco", input_size=(192, 256), skip_invalid=False
    )
    affine = mmpose_topdown_affine((192, 256))
    for index, inst in enumerate(dataset.instances):
        item = dataset[index]
        image = (item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        source = load_rgb_uint8(inst.image_path)
        center, scale = bbox_ops.bbox_xyxy2cs(inst.bbox[None], padding=1.25)
        results = affine(
            {
                "img": source,
                "bbox_center": center,
                "bbox_scale": scale,
                "keypoints": inst.keypoints[None].copy(),
            }
        )
        np.testing.assert_allclose(item["keypoints"].numpy(), results["transformed_keypoints"][0], atol=2e-3)
        np.testing.assert_allclose(item["scale"].numpy(), results["input_scale"], rtol=1e-6)
        diff = np.abs(image.astype(int) - results["img"].astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float64 vs float32 matrix: rounding only


def test_detection_boxes(realdata: Path) -> None:
    ann_file, det_file = (
        realdata / "coco" / "test_coco.json",
        realdata / "coco" / "test_coco_det_AP_H_56.json",
    )
    detections = [d for d in _json(det_file) if d["category_id"] == 1]
    dataset = CocoPoseDataset(ann_file, realdata / "coco", bbox_file=det_file)
    assert len(dataset) == len(detections) == 118
    strong = CocoPoseDataset(ann_file, realdata / "coco", bbox_file=det_file, bbox_score_thr=0.5)
    assert len(strong) == sum(d["score"] >= 0.5 for d in detections) > 0
    first = strong.instances[0]
    det = next(d for d in detections if d["score"] >= 0.5)
    x, y, w, h = det["bbox"]
    np.testing.assert_allclose(first.bbox, [x, y, x + w, y + h], rtol=1e-6)
    assert first.bbox_score == pytest.approx(det["score"])
    item = strong[0]
    assert item["image"].shape == (3, 256, 192) and item["bbox_score"] == pytest.approx(det["score"])
    humanart = HumanArtPoseDataset(
        realdata / "humanart" / "test_humanart.json",
        realdata / "humanart",
        bbox_file=realdata / "humanart" / "test_humanart_det_AP_H_56.json",
    )
    assert len(humanart) == 13 and humanart[0]["keypoints"].shape == (17, 2)


def test_humanart_accepts_both_layouts(realdata: Path, tmp_path: Path) -> None:
    ann_file = realdata / "humanart" / "test_humanart.json"
    # The realdata folder is the images folder itself; the official layout has "HumanArt/images/..." below
    # root.
    direct = HumanArtPoseDataset(ann_file, realdata / "humanart")
    assert all(inst.image_path.is_file() for inst in direct.instances)
    for (
        inst
    ) in direct.instances:  # copies, not a symlink: safe_join resolves links and refuses ones that leave root
        target = tmp_path / "HumanArt" / "images" / inst.image_path.relative_to(realdata / "humanart")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inst.image_path, target)
    official = HumanArtPoseDataset(ann_file, tmp_path)
    assert [p.image_path.name for p in official.instances] == [p.image_path.name for p in direct.instances]


@pytest.mark.parametrize("file_name", ["../000000000785.jpg", "/etc/passwd", "a/../../x.jpg"])
def test_refuses_escaping_file_names(realdata: Path, tmp_path: Path, file_name: str) -> None:
    coco = _json(realdata / "coco" / "test_coco.json")
    coco["images"][0]["file_name"] = file_name
    ann_file = tmp_path / "escape.json"
    ann_file.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match="escapes|absolute"):
        load_pose_instances(ann_file, realdata / "coco", num_keypoints=17)


def test_missing_files_are_named(realdata: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoPoseDataset(tmp_path / "none.json", realdata / "coco")
    with pytest.raises(FileNotFoundError, match="detection file"):
        CocoPoseDataset(
            realdata / "coco" / "test_coco.json", realdata / "coco", bbox_file=tmp_path / "none.json"
        )
