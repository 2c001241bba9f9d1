"""Dataset metainfo: shapes, symmetry and agreement with mmpose's parsed metainfo."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.data.metainfo import available_metainfo, load_metainfo

COCO_SIGMAS = [
    0.026,
    0.025,
    0.025,
    0.035,
    0.035,
    0.079,
    0.079,
    0.072,
    0.072,
    0.062,
    0.062,
    0.107,
    0.107,
    0.087,
    0.087,
    0.089,
    0.089,
]


def test_coco_facts():
    meta = load_metainfo("coco")
    assert meta.num_keypoints == 17
    assert meta.keypoint_names[0] == "nose" and meta.keypoint_names[16] == "right_ankle"
    assert meta.flip_pairs == ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
    np.testing.assert_allclose(meta.sigmas, COCO_SIGMAS, rtol=1e-6)
    assert meta.sigmas.dtype == np.float32
    assert list(meta.joint_weights) == pytest.approx(
        [1.0] * 7 + [1.2, 1.2, 1.5, 1.5, 1.0, 1.0, 1.2, 1.2, 1.5, 1.5]
    )
    assert dict(meta.parts) == {"body": (0, 17)}
    assert meta.keypoint_id("left_wrist") == 9


@pytest.mark.parametrize("name", ["coco", "humanart", "coco_wholebody"])
def test_flip_indices_are_an_involution(name):
    meta = load_metainfo(name)
    flip = np.array(meta.flip_indices)
    assert np.array_equal(flip[flip], np.arange(meta.num_keypoints))
    for i, j in meta.flip_pairs:
        name_i, name_j = meta.keypoint_names[i], meta.keypoint_names[j]
        assert name_i.replace("left", "right") == name_j or "left" not in name_i


def test_wholebody_parts_partition_133():
    meta = load_metainfo("coco_wholebody")
    assert meta.num_keypoints == 133
    spans = list(meta.parts.values())
    assert spans[0][0] == 0 and spans[-1][1] == 133
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert {k: e - s for k, (s, e) in meta.parts.items()} == {
        "body": 17,
        "foot": 6,
        "face": 68,
        "left_hand": 21,
        "right_hand": 21,
    }


def test_humanart_uses_coco17():
    coco, humanart = load_metainfo("coco"), load_metainfo("HumanArt")
    assert humanart.keypoint_names == coco.keypoint_names
    np.testing.assert_array_equal(humanart.sigmas, coco.sigmas)
    assert humanart.flip_indices == coco.flip_indices


def test_unknown_name_lists_known_ones():
    with pytest.raises(KeyError, match="coco_wholebody"):
        load_metainfo("mpii")
    assert "coco" in available_metainfo()


def test_arrays_are_read_only():
    with pytest.raises(ValueError):
        load_metainfo("coco").sigmas[0] = 1.0


@pytest.mark.mmpose
@pytest.mark.parametrize(
    ("name", "config"),
    [("coco", "coco.py"), ("humanart", "humanart.py"), ("coco_wholebody", "coco_wholebody.py")],
)
def test_matches_mmpose_parse_pose_metainfo(name, config):
    """Every field equals mmpose's own dataset config, read with mmengine
    (mmpose.datasets needs xtcocotools to import).

    Flip pairs compare as a set: mmpose's parser lists each pair in both orders.
    """
    pytest.importorskip("mmengine")
    mmpose = pytest.importorskip("mmpose")
    from pathlib import Path

    from mmengine import Config

    cfg = Path(mmpose.__file__).parent / ".mim" / "configs" / "_base_" / "datasets" / config
    info = Config.fromfile(str(cfg)).dataset_info
    ref_names = [info["keypoint_info"][i]["name"] for i in range(len(info["keypoint_info"]))]
    name2id = {n: i for i, n in enumerate(ref_names)}
    meta = load_metainfo(name)
    assert list(meta.keypoint_names) == ref_names
    ref_flip = [
        name2id[kpt["swap"]] if kpt["swap"] else i
        for i, kpt in ((i, info["keypoint_info"][i]) for i in range(len(ref_names)))
    ]
    assert list(meta.flip_indices) == ref_flip
    ref_links = [
        tuple(name2id[n] for n in info["skeleton_info"][i]["link"]) for i in range(len(info["skeleton_info"]))
    ]
    assert list(meta.skeleton_links) == ref_links
    np.testing.assert_array_equal(meta.sigmas, np.array(info["sigmas"], dtype=np.float32))
    np.testing.assert_array_equal(meta.joint_weights, np.array(info["joint_weights"], dtype=np.float32))
    ref_colors = np.array([info["keypoint_info"][i]["color"] for i in range(len(ref_names))], dtype=np.uint8)
    np.testing.assert_array_equal(meta.keypoint_colors, ref_colors)
    types = [info["keypoint_info"][i]["type"] for i in range(len(ref_names))]
    assert list(meta.upper_body_ids) == [i for i, t in enumerate(types) if t == "upper"]
    assert list(meta.lower_body_ids) == [i for i, t in enumerate(types) if t == "lower"]
    assert {frozenset(p) for p in meta.flip_pairs} == {
        frozenset((i, j)) for i, j in enumerate(ref_flip) if i != j
    }
