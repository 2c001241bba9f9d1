"""PosePredictor on the real COCO samples: whole-image, caller and detection-file boxes; batching; flip; HOG.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from zoo.data.images import load_rgb_uint8
from zoo.data.transforms import bbox_xywh_to_xyxy, bbox_xyxy_to_center_scale, fix_aspect_ratio
from zoo.inference.pose import PosePredictor, detection_boxes
from zoo.models.sdpose import SDPoseModule

INPUT_SIZE = (96, 128)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> PosePredictor:
    """A predictor from a freshly exported tiny SDPose (the export path, independent of the shipped weights).
    """
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = SDPoseModule(input_size=INPUT_SIZE, heatmap_size=(24, 32), sigma=2.0, blur_kernel_size=11)
    folder = tmp_path_factory.mktemp("sdpose") / "export"
    module.export_pretrained(folder)
    return PosePredictor.from_pretrained(folder)


@pytest.fixture(scope="module")
def coco(realdata: Path) -> dict:
    gt = json.loads((realdata / "coco" / "test_coco.json").read_text())
    images = sorted(gt["images"], key=lambda image: image["id"])
    return {
        "root": realdata / "coco",
        "paths": [realdata / "coco" / image["file_name"] for image in images],
        "ids": [image["id"] for image in images],
        "sizes": [(image["width"], image["height"]) for image in images],
        "annotations": gt["annotations"],
    }


# Planted peaks: keypoint k of every crop at this crop pixel (x, y); heatmaps are the codec's Gaussians there.
# Kept 4 heatmap pixels from the border, where the truncated Gaussian and the blur's zero padding bias DARK.
PLANTED = np.stack([np.linspace(16, 79, 17), np.linspace(16, 111, 17)], axis=-1)  # [17, 2] crop pixels


@pytest.fixture()
def planted(predictor: PosePredictor, monkeypatch: pytest.MonkeyPatch) -> PosePredictor:
    """The predictor with its network replaced by known heatmaps, to check the crop -> image mapping exactly.
    """
    from zoo.codecs import UDPHeatmap

    heatmaps = torch.from_numpy(
        UDPHeatmap(INPUT_SIZE, (24, 32), sigma=2.0).encode(PLANTED).heatmaps
    )  # [17, 32, 24]
    monkeypatch.setattr(
        predictor.model,
        "predict_heatmaps",
        lambda crops, flip_indices=None: heatmaps.expand(len(crops), -1, -1, -1).clone(),
    )
    return predictor


def _crop_regions(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corner [N, 2] and size [N, 2] of the image region each crop covers
    (box x1.25, widened to 3:4)."""
    center, scale = bbox_xyxy_to_center_scale(boxes)
    scale = fix_aspect_ratio(scale, INPUT_SIZE[0] / INPUT_SIZE[1])
    return center - scale / 2, scale


def _assert_planted(keypoints: np.ndarray, boxes: np.ndarray) -> None:
    """UDP: crop pixel 0 .. size-1 spans the crop region, so the planted points land at known image positions.
    """
    corner, size = _crop_regions(np.asarray(boxes, dtype=np.float64))
    expected = corner[:, None] + PLANTED[None] * (size[:, None] / (np.array(INPUT_SIZE) - 1))  # [N, 17, 2]
    # Within a quarter of a crop pixel (DARK on an exact Gaussian), expressed in image pixels.
    np.testing.assert_allclose(keypoints, expected, atol=0.25 * (size / (np.array(INPUT_SIZE) - 1)).max())
    assert (keypoints >= corner[:, None] - 1).all() and (keypoints <= (corner + size)[:, None] + 1).all()


def test_whole_image_boxes(predictor: PosePredictor, coco: dict):
    out = predictor([str(p) for p in coco["paths"]], box_source="whole_image")
    assert len(out) == len(coco["paths"])
    for keypoints, scores, boxes, (width, height) in zip(
        out.keypoints, out.scores, out.boxes, coco["sizes"], strict=True
    ):
        assert keypoints.shape == (1, 17, 2) and scores.shape == (1, 17)
        np.testing.assert_array_equal(boxes, [[0, 0, width - 1, height - 1]])
        assert np.isfinite(keypoints).all()


def test_whole_image_coordinates(planted: PosePredictor, coco: dict):
    out = planted([str(p) for p in coco["paths"]])
    for keypoints, boxes in zip(out.keypoints, out.boxes, strict=True):
        _assert_planted(keypoints, boxes)


def test_caller_boxes_pool_crops_across_images(predictor: PosePredictor, coco: dict):
    boxes = []
    for image_id in coco["ids"]:
        anns = [a for a in coco["annotations"] if a["image_id"] == image_id and a["num_keypoints"] > 0]
        boxes.append(bbox_xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)))
    boxes.append(np.zeros((0, 4)))  # an image without persons
    images = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in coco["paths"]] + [
        np.zeros((32, 32, 3), np.uint8)
    ]
    pooled = predictor(images, boxes=boxes, batch_size=16)
    one_by_one = predictor(images, boxes=boxes, batch_size=1)
    for index, image_boxes in enumerate(boxes):
        keypoints, scores = pooled.keypoints[index], pooled.scores[index]
        assert keypoints.shape == (len(image_boxes), 17, 2) and scores.shape == (len(image_boxes), 17)
        # Same persons in the same order; the untrained head's flat maps make DARK amplify float noise a
        # little.
        np.testing.assert_allclose(scores, one_by_one.scores[index], atol=1e-5)
        if len(image_boxes):
            assert np.median(np.abs(keypoints - one_by_one.keypoints[index])) < 1e-2
    assert sum(len(k) for k in pooled.keypoints) == sum(len(b) for b in boxes) > 4


def test_caller_box_coordinates(planted: PosePredictor, coco: dict):
    anns = [a for a in coco["annotations"] if a["image_id"] == coco["ids"][0]]
    boxes = bbox_xywh_to_xyxy(np.array([a["bbox"] for a in anns], dtype=np.float64))
    out = planted(str(coco["paths"][0]), boxes=[boxes])
    _assert_planted(out.keypoints[0], boxes)


def test_detection_file_boxes_and_flip_test(predictor: PosePredictor, coco: dict):
    boxes, scores = detection_boxes(coco["root"] / "test_coco_det_AP_H_56.json", coco["ids"], score_thr=0.3)
    assert any(len(b) for b in boxes)
    out = predictor([str(p) for p in coco["paths"]], boxes=boxes, box_scores=scores, flip_test=True)
    for keypoints, image_boxes, image_scores, got_scores in zip(
        out.keypoints, boxes, scores, out.box_scores, strict=True
    ):
        assert keypoints.shape == (len(image_boxes), 17, 2)
        np.testing.assert_array_equal(got_scores, image_scores)


def test_detection_box_coordinates(planted: PosePredictor, coco: dict):
    boxes, _ = detection_boxes(coco["root"] / "test_coco_det_AP_H_56.json", coco["ids"])
    out = planted([str(p) for p in coco["paths"]], boxes=boxes)
    for keypoints, image_boxes in zip(out.keypoints, boxes, strict=True):
        if len(image_boxes):
            _assert_planted(keypoints, image_boxes)


def test_box_checks(predictor: PosePredictor, coco: dict):
    path = str(coco["paths"][0])
    with pytest.raises(ValueError, match="one \\[N, 4\\] array per image"):
        predictor([path, path], boxes=[np.zeros((1, 4))])
    with pytest.raises(ValueError, match="x2 > x1"):
        predictor(path, boxes=[np.array([[10, 10, 5, 20]])])
    with pytest.raises(ValueError, match="box_source"):
        predictor(path, box_source="yolo")


def test_hog_detector_finds_the_batter(predictor: PosePredictor, coco: dict):
    """OpenCV's weight-free HOG people detector (OpenCV is pinned below 5, which dropped it)."""
    path = next(p for p in coco["paths"] if p.name == "000000196141.jpg")
    out = predictor(str(path), box_source="hog")
    assert len(out.boxes[0]) >= 1
    assert out.keypoints[0].shape == (len(out.boxes[0]), 17, 2)
    height, width = load_rgb_uint8(path).shape[:2]
    assert (out.boxes[0][:, [0, 2]] <= width).all() and (out.boxes[0][:, [1, 3]] <= height).all()


def test_shipped_tiny_model_finds_held_out_figures(tmp_path: Path):
    """The committed tiny SDPose localises unseen figures (OKS AP well above chance) through the predictor."""
    from zoo.data.synthetic.figures import write_coco_figures
    from zoo.evaluation.coco import CocoKeypointEvaluator
    from zoo.registry import load
    from zoo.visualize import draw_skeleton

    ann_file, image_dir = write_coco_figures(tmp_path, 8, seed=2_000_000, split="test", width=192, height=192)
    gt = json.loads(ann_file.read_text())
    predictor = load("tiny-sdpose-body")
    ids = [image["id"] for image in gt["images"]]
    boxes = [
        np.clip(
            bbox_xywh_to_xyxy(
                np.array(
                    [a["bbox"] for a in gt["annotations"] if a["image_id"] == i and a["num_keypoints"] > 0]
                ).reshape(-1, 4)
            ),
            0,
            191,
        )
        for i in ids
    ]
    out = predictor([image_dir / image["file_name"] for image in gt["images"]], boxes=boxes, flip_test=True)
    evaluator = CocoKeypointEvaluator(ann_file, "coco")
    for image_id, keypoints, scores in zip(ids, out.keypoints, out.scores, strict=True):
        if len(keypoints):
            evaluator.update(image_id, keypoints, scores)
    assert evaluator.compute()["AP"] > 0.4
    image = cv2.cvtColor(cv2.imread(str(image_dir / gt["images"][0]["file_name"])), cv2.COLOR_BGR2RGB)
    drawn = draw_skeleton(image, out.keypoints[0], out.scores[0], out.metainfo)
    assert drawn.shape == image.shape and (drawn != image).any()


def test_inputs_are_decoded_as_their_crops_run(
    planted: PosePredictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Memory follows batch_size: 24 mixed-size files with 0-3 persons each at batch size 4 are decoded one at
    a time, each crop batch runs as soon as it is full, and the batches are those of pooling every crop first.
    """
    import weakref

    from zoo.inference import pose

    rng = np.random.default_rng(0)
    paths, boxes = [], []
    for index in range(24):
        width, height = 40 + 16 * (index % 5), 32 + 8 * (index % 3)
        path = tmp_path / f"{index:02d}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        paths.append(path)
        boxes.append(np.array([[1, 1, width - 2, height - 3]] * (index % 4), dtype=np.float64).reshape(-1, 4))
    alive, events = {"now": 0, "peak": 0}, []
    original_load, original_predict = pose.load_rgb_uint8, PosePredictor._predict_crops

    def released() -> None:
        alive["now"] -= 1

    def counting_load(image, name=None) -> np.ndarray:
        array = original_load(image, name)
        alive["now"] += 1
        alive["peak"] = max(alive["peak"], alive["now"])
        weakref.finalize(array, released)
        events.append("decode")
        return array

    def counting_predict(self, crops, *args):
        events.append(len(crops))
        return original_predict(self, crops, *args)

    monkeypatch.setattr(pose, "load_rgb_uint8", counting_load)
    monkeypatch.setattr(PosePredictor, "_predict_crops", counting_predict)
    out = planted(paths, boxes=boxes, batch_size=4)
    # Each image is decoded, then a batch runs as soon as its crops make 4: never all decodes first.
    expected, pooled = [], 0
    for image_boxes in boxes:
        expected.append("decode")
        for _ in image_boxes:
            pooled += 1
            if pooled == 4:
                expected.append(4)
                pooled = 0
    assert events == expected + ([pooled] if pooled else [])
    assert alive["peak"] <= 1  # one decoded image at a time, never 24 (nor more than batch_size)
    for keypoints, image_boxes in zip(out.keypoints, boxes, strict=True):
        assert keypoints.shape == (len(image_boxes), 17, 2)
        if len(image_boxes):
            _assert_planted(keypoints, image_boxes)
    with pytest.raises(ValueError, match="one \\[N, 4\\] array per image"):
        planted(paths, boxes=boxes[:-1])
    assert events.count("decode") == 24  # the boxes were refused before any image was decoded
