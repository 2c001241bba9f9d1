"""COCO keypoint evaluation on the real COCO / HumanArt / COCO-WholeBody samples, against mmpose's CocoMetric.

mmpose's metrics import xtcocotools, whose wheels do not load under numpy 2 (not installed here). The mmpose
comparison therefore registers a small stand-in `xtcocotools` package that forwards to pycocotools: `COCO` is
pycocotools' class and `COCOeval(gt, dt, "keypoints", sigmas, use_area=True)` is pycocotools' COCOeval with
`params.kpt_oks_sigmas = sigmas`. Everything else is mmpose's own code: CocoMetric's de-duplication, instance
rescoring, OKS-NMS, results JSON and stats. For standard COCO keypoints pycocotools and xtcocotools compute
the same stats given the same sigmas (ecosystem notes §3.1); the two xtcocotools-only rules
(per-part GT ignore, dropping results without a positive keypoint score) are exercised by the whole-body
tests, not by this comparison.
"""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from zoo.evaluation.coco import STAT_NAMES, CocoKeypointEvaluator, oks_nms

MMPOSE_STATS = {
    "AP": "AP",
    "AP50": "AP .5",
    "AP75": "AP .75",
    "APm": "AP (M)",
    "APl": "AP (L)",
    "AR": "AR",
    "AR50": "AR .5",
    "AR75": "AR .75",
    "ARm": "AR (M)",
    "ARl": "AR (L)",
}


def _gt_predictions(ann_file, parts=("keypoints",)):
    """Ground-truth keypoints of every annotated person as predictions: (image_id, [K, 2], scores [K], area).

    The scores are the labels' visibility (1 labelled, 0 not): a part with no labelled keypoint then has no
    positive score and is dropped from that part's evaluation, as xtcocotools does.
    """
    data = json.loads(ann_file.read_text())
    out = []
    for ann in data["annotations"]:
        if ann["iscrowd"] or ann["num_keypoints"] == 0:
            continue
        flat = np.concatenate([np.asarray(ann[p], dtype=np.float64) for p in parts]).reshape(-1, 3)
        out.append((ann["image_id"], flat[:, :2], (flat[:, 2] > 0).astype(np.float64), float(ann["area"])))
    return out


@pytest.mark.parametrize(
    ("ann", "meta"), [("coco/test_coco.json", "coco"), ("humanart/test_humanart.json", "humanart")]
)
def test_ground_truth_gives_ap_one(realdata, ann, meta):
    evaluator = CocoKeypointEvaluator(realdata / ann, meta)
    for image_id, keypoints, scores, area in _gt_predictions(realdata / ann):
        evaluator.update(image_id, keypoints[None], scores[None], areas=[area])
    stats = evaluator.compute()
    assert list(stats) == list(STAT_NAMES)
    assert stats["AP"] == pytest.approx(1.0) and stats["AR"] == pytest.approx(1.0)
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == pytest.approx(1.0)


def test_wholebody_ground_truth_gives_ap_one_per_part(realdata):
    ann = realdata / "coco" / "test_coco_wholebody.json"
    evaluator = CocoKeypointEvaluator(ann, "coco_wholebody")
    parts = ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")
    for image_id, keypoints, scores, area in _gt_predictions(ann, parts):
        evaluator.update(image_id, keypoints[None], scores[None], areas=[area])
    stats = evaluator.compute()
    for part in ("body", "foot", "face", "left_hand", "right_hand"):
        assert stats[f"{part}/AP"] == pytest.approx(1.0), part
    assert stats["AP"] == pytest.approx(1.0)


def test_wholebody_part_uses_its_own_sigmas_and_ignore(realdata):
    """Breaking only the hands lowers the hand APs, leaves body and face at 1.0 (per-part GT and sigmas)."""
    ann = realdata / "coco" / "test_coco_wholebody.json"
    evaluator = CocoKeypointEvaluator(ann, "coco_wholebody")
    parts = ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts")
    rng = np.random.default_rng(0)
    for image_id, keypoints, scores, area in _gt_predictions(ann, parts):
        keypoints = keypoints.copy()
        keypoints[91:] += rng.normal(0, 15, size=(42, 2))
        evaluator.update(image_id, keypoints[None], scores[None], areas=[area])
    stats = evaluator.compute()
    assert stats["body/AP"] == pytest.approx(1.0) and stats["face/AP"] == pytest.approx(1.0)
    assert stats["left_hand/AP"] < 0.9 and stats["right_hand/AP"] < 0.9


def test_results_file_is_coco_format(realdata, tmp_path):
    ann = realdata / "coco" / "test_coco.json"
    evaluator = CocoKeypointEvaluator(ann, "coco")
    image_id, keypoints, scores, area = _gt_predictions(ann)[0]
    evaluator.update(
        image_id,
        keypoints[None],
        scores[None] * 0.5,
        bbox_scores=[0.8],
        areas=[area],
        bboxes=[[1.0, 2.0, 30.0, 40.0]],
    )
    evaluator.compute(outfile_prefix=tmp_path / "run")
    results = json.loads((tmp_path / "run.keypoints.json").read_text())
    assert results == [
        {
            "image_id": image_id,
            "category_id": 1,
            "score": pytest.approx(0.4),
            "keypoints": pytest.approx(
                np.concatenate([keypoints, scores[:, None] * 0.5], 1).ravel().tolist()
            ),
            "bbox": [1.0, 2.0, 30.0, 40.0],
        }
    ]


def test_rescoring_and_oks_nms():
    sigmas = np.full(3, 0.1, dtype=np.float32)
    base = np.array([[10.0, 10.0], [20.0, 20.0], [30.0, 10.0]])
    keypoints = np.stack([base, base + 0.5, base + 200])  # the second duplicates the first
    keep = oks_nms(keypoints, np.array([0.5, 0.9, 0.7]), np.full(3, 400.0), sigmas, thr=0.9)
    assert keep == [1, 2]


def test_keypoint_threshold_in_score(realdata):
    evaluator = CocoKeypointEvaluator(realdata / "coco" / "test_coco.json", "coco")
    image_id = 785
    scores = np.array([0.1] * 7 + [0.5] * 10)  # only the ten scores above 0.2 count
    evaluator.update(image_id, np.zeros((1, 17, 2)) + 5, scores[None], bbox_scores=[0.5])
    assert evaluator.results()[0]["score"] == pytest.approx(0.25)


def test_rejects_mismatched_metainfo(realdata):
    with pytest.raises(ValueError, match="expects 133"):
        CocoKeypointEvaluator(realdata / "coco" / "test_coco.json", "coco_wholebody")


@pytest.fixture(scope="module")
def mmpose_coco_metric():
    """mmpose's CocoMetric class, importable through the pycocotools-backed `xtcocotools` stand-in
    (see module doc)."""
    pytest.importorskip("mmpose")
    stand_ins = {}
    try:
        import xtcocotools.cocoeval  # noqa: F401
    except (ImportError, ValueError):
        import pycocotools.coco
        import pycocotools.cocoeval
        import pycocotools.mask

        class COCOeval(pycocotools.cocoeval.COCOeval):
            """xtcocotools' signature on pycocotools: the sigmas become params.kpt_oks_sigmas."""

            def __init__(self, gt=None, dt=None, iouType="keypoints", sigmas=None, use_area=True):
                if iouType != "keypoints" or not use_area:
                    raise NotImplementedError(
                        f"stand-in supports iouType='keypoints', use_area=True only, got {iouType}"
                    )
                super().__init__(gt, dt, iouType)
                if sigmas is not None:
                    self.params.kpt_oks_sigmas = np.asarray(sigmas)

        package = types.ModuleType("xtcocotools")
        package.__path__ = []
        cocoeval = types.ModuleType("xtcocotools.cocoeval")
        cocoeval.COCOeval = COCOeval
        stand_ins = {
            "xtcocotools": package,
            "xtcocotools.coco": pycocotools.coco,
            "xtcocotools.mask": pycocotools.mask,
            "xtcocotools.cocoeval": cocoeval,
        }
        for name, module in stand_ins.items():
            sys.modules.setdefault(name, module)
    from mmpose.evaluation.metrics import CocoMetric

    yield CocoMetric
    # Later tests in the session must see the real environment (no xtcocotools).
    for name, module in list(sys.modules.items()):
        if name.startswith("xtcocotools") and module in stand_ins.values():
            del sys.modules[name]


def _perturbed_predictions(ann_file, seed):
    """Noisy GT persons with random keypoint/box scores, near-duplicates (for OKS-NMS) and false positives."""
    rng = np.random.default_rng(seed)
    preds = []
    for image_id, keypoints, _, area in _gt_predictions(ann_file):
        scale = np.sqrt(area)
        noisy = keypoints + rng.normal(0, 0.03 * scale, size=keypoints.shape)
        preds.append(
            (
                image_id,
                noisy,
                rng.uniform(0.05, 1.0, len(keypoints)),
                rng.uniform(0.3, 1.0),
                area * rng.uniform(0.8, 1.5),
            )
        )
        if rng.uniform() < 0.5:
            # A near-duplicate (OKS > 0.9 with the first) that OKS-NMS must suppress unless it scores higher.
            twin = noisy + rng.normal(0, 0.002 * scale, size=keypoints.shape)
            preds.append(
                (image_id, twin, rng.uniform(0.05, 1.0, len(keypoints)), rng.uniform(0.3, 1.0), area)
            )
        # A false positive somewhere else in the image.
        preds.append(
            (
                image_id,
                keypoints + rng.uniform(100, 300, size=2),
                rng.uniform(0, 0.6, len(keypoints)),
                rng.uniform(0.1, 0.6),
                area,
            )
        )
    return preds


@pytest.mark.mmpose
@pytest.mark.parametrize(
    ("ann", "meta_file", "meta"),
    [("coco/test_coco.json", "coco.py", "coco"), ("humanart/test_humanart.json", "humanart.py", "humanart")],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_perturbed_predictions_equal_mmpose_coco_metric(
    realdata, mmpose_coco_metric, ann, meta_file, meta, seed
):
    from pathlib import Path

    import mmpose
    from mmpose.datasets.datasets.utils import parse_pose_metainfo

    ann_file = realdata / ann
    preds = _perturbed_predictions(ann_file, seed)
    metric = mmpose_coco_metric(ann_file=str(ann_file))
    metric.dataset_meta = parse_pose_metainfo(
        {
            "from_file": str(
                Path(mmpose.__file__).parent / ".mim" / "configs" / "_base_" / "datasets" / meta_file
            )
        }
    )
    samples = []
    for index, (image_id, keypoints, scores, bbox_score, area) in enumerate(preds):
        # One top-down sample per person; bbox_scales' product is the area mmpose's OKS-NMS uses.
        samples.append(
            {
                "id": index,
                "img_id": image_id,
                "pred_instances": {
                    "keypoints": keypoints[None].astype(np.float32),
                    "keypoint_scores": scores[None].astype(np.float32),
                    "bbox_scores": np.array([bbox_score], dtype=np.float32),
                },
                "gt_instances": {"bbox_scales": np.array([[area, 1.0]], dtype=np.float32)},
            }
        )
    metric.process([], samples)
    expected = metric.compute_metrics(metric.results)

    evaluator = CocoKeypointEvaluator(ann_file, meta)
    for index, (image_id, keypoints, scores, bbox_score, area) in enumerate(preds):
        evaluator.update(
            image_id,
            keypoints[None].astype(np.float32),
            scores[None].astype(np.float32),
            bbox_scores=np.float32([bbox_score]),
            areas=np.float32([area]) * np.float32(1.0),
            instance_ids=[index],
        )
    stats = evaluator.compute()
    assert 0.0 < stats["AP"] < 1.0  # the perturbation must actually matter
    assert len(evaluator.results()) < len(preds)  # and OKS-NMS must have removed duplicates
    for ours, theirs in MMPOSE_STATS.items():
        assert stats[ours] == pytest.approx(expected[theirs], abs=1e-12), ours
