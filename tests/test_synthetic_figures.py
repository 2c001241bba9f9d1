"""Synthetic articulated figures: determinism, annotation consistency and the written COCO dataset."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zoo.data.synthetic.figures import render_figures, write_coco_figures
from zoo.data.topdown import CocoPoseDataset


def test_render_is_deterministic_by_seed() -> None:
    first, second, other = render_figures(3), render_figures(3), render_figures(4)
    np.testing.assert_array_equal(first.image, second.image)
    assert len(first.people) == len(second.people)
    for a, b in zip(first.people, second.people, strict=True):
        np.testing.assert_array_equal(a.keypoints, b.keypoints)
        assert a.bbox == b.bbox and a.area == b.area
    assert not np.array_equal(first.image, other.image)


def test_annotations_are_consistent_with_the_pixels() -> None:
    counts, flags = [], set()
    for seed in range(40):
        rendered = render_figures(seed, width=128, height=96)
        assert rendered.image.shape == (96, 128, 3) and rendered.image.dtype == np.uint8
        counts.append(len(rendered.people))
        for person in rendered.people:
            keypoints = person.keypoints  # [17, 3]
            flags.update(int(v) for v in keypoints[:, 2])
            outside = keypoints[:, 2] == 0
            assert (keypoints[outside, :2] == 0).all()  # COCO: unlabelled joints at (0, 0)
            inside = ~outside
            assert (keypoints[inside, 0] >= -0.5).all() and (keypoints[inside, 0] < 127.5).all()
            x, y, w, h = person.bbox
            assert (keypoints[inside, 0] >= x - 1).all() and (keypoints[inside, 0] <= x + w + 1).all()
            assert (keypoints[inside, 1] >= y - 1).all() and (keypoints[inside, 1] <= y + h + 1).all()
            assert person.num_keypoints == int(inside.sum())
            # Visible joints lie on the figure's own visible pixels; occluded ones on someone else's.
            visible_mask = mask_utils.decode(
                {**person.segmentation, "counts": person.segmentation["counts"].encode()}
            )
            assert person.area == visible_mask.sum()
            for kx, ky, _ in keypoints[keypoints[:, 2] == 2]:
                assert visible_mask[int(round(ky)), int(round(kx))]
            for kx, ky, _ in keypoints[keypoints[:, 2] == 1]:
                assert not visible_mask[int(round(ky)), int(round(kx))]
    assert set(counts) == {1, 2, 3}
    assert flags == {0, 1, 2}  # out-of-image, occluded and visible joints all occur


def test_sides_have_distinct_colours() -> None:
    # Left limbs are green and right limbs orange: the left wrist pixel is greener than the right one.
    greener = 0
    for seed in range(20):
        rendered = render_figures(seed)
        for person in rendered.people:
            (lx, ly, lv), (rx, ry, rv) = person.keypoints[9], person.keypoints[10]
            if lv == 2 and rv == 2:
                left = rendered.image[int(round(ly)), int(round(lx))].astype(int)
                right = rendered.image[int(round(ry)), int(round(rx))].astype(int)
                greener += int(left[1] - left[0] > right[1] - right[0])
                greener -= int(left[1] - left[0] <= right[1] - right[0])
    assert greener > 10


def test_written_dataset_is_byte_identical_and_loads(tmp_path: Path) -> None:
    ann_a, images_a = write_coco_figures(
        tmp_path / "a", num_images=6, seed=7, split="val", width=128, height=96
    )
    ann_b, images_b = write_coco_figures(
        tmp_path / "b", num_images=6, seed=7, split="val", width=128, height=96
    )
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 7
    for name in files_a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (
        ann_a == tmp_path / "a" / "annotations" / "person_keypoints_val.json"
        and images_a == tmp_path / "a" / "val"
    )

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann_a))
        category = coco.loadCats(1)[0]
        assert len(category["keypoints"]) == 17 and category["keypoints"][9] == "left_wrist"
        assert all(1 <= a <= 17 and 1 <= b <= 17 for a, b in category["skeleton"])
        assert len(coco.getImgIds()) == 6
        # Ground truth given back as predictions scores AP 1: boxes, areas and keypoints agree with each
        # other.
        results = [
            {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
            for a in coco.loadAnns(coco.getAnnIds())
        ]
        evaluator = COCOeval(coco, coco.loadRes(results), "keypoints")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)

    dataset = CocoPoseDataset(ann_a, images_a, input_size=(48, 64), skip_invalid=False)
    assert len(dataset) == len(coco.getAnnIds())
    item = dataset[0]
    labelled = item["keypoints_visible"] > 0
    assert ((item["keypoints"][labelled] >= -1) & (item["keypoints"][labelled] <= 64)).all()


def test_more_images_extend_fewer(tmp_path: Path) -> None:
    write_coco_figures(tmp_path / "small", num_images=2, seed=1, width=64, height=64)
    write_coco_figures(tmp_path / "large", num_images=3, seed=1, width=64, height=64)
    for name in ("000001.png", "000002.png"):
        assert (tmp_path / "small" / "train" / name).read_bytes() == (
            tmp_path / "large" / "train" / name
        ).read_bytes()
    with pytest.raises(ValueError, match="num_images"):
        write_coco_figures(tmp_path / "none", num_images=0)
