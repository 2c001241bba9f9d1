"""PoseTrack mAP: poseval semantics on hand-built frames, the real PoseTrack18 sample, evaluator and tool.

Expected APs below are worked out by hand from poseval's rules (VOC AP over the ranked joints of all frames).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from zoo.data.synthetic.moving_figures import posetrack_category
from zoo.evaluation.posetrack import (
    POSEVAL_JOINTS,
    PoseTrackEvaluator,
    evaluate_frames,
    evaluate_posetrack_folders,
    poseval_frames,
)

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "posetrack18"
REAL_VAL = REAL / "annotations" / "val"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import eval_posetrack  # noqa: E402

# A 30 x 40 head box: diagonal 50, head size 0.6 x 50 = 30, so a joint matches up to 15 px away (inclusive).
HEAD = [100.0, 100.0, 30.0, 40.0]


def _pose(origin: tuple[float, float]) -> list[float]:
    """17-slot keypoints: 15 joints on a grid 40 px apart from `origin`, ears (0, 0, 0)."""
    values = []
    for slot in range(17):
        if slot in (3, 4):
            values += [0.0, 0.0, 0.0]
        else:
            values += [origin[0] + 40.0 * (slot % 4), origin[1] + 40.0 * (slot // 4), 1.0]
    return values


def _video(frames: list[list[dict]], ignore: list | None = None) -> dict:
    """A per-video PoseTrack18 dict; `frames` lists the annotations of each frame (image ids filled in)."""
    images, annotations = [], []
    for t, anns in enumerate(frames):
        image_id = 10000010000 + t
        image = {
            "id": image_id,
            "file_name": f"images/val/000001_mpii_test/{t:06d}.jpg",
            "nframes": len(frames),
        }
        if ignore is not None:
            image["ignore_regions_x"] = [[p[0] for p in poly] for poly in ignore]
            image["ignore_regions_y"] = [[p[1] for p in poly] for poly in ignore]
        images.append(image)
        for number, ann in enumerate(anns):
            annotations.append(
                {"id": image_id * 100 + number, "image_id": image_id, "track_id": number, **ann}
            )
    return {"images": images, "annotations": annotations, "categories": [posetrack_category()]}


def _gt(origin: tuple[float, float]) -> dict:
    return {"keypoints": _pose(origin), "bbox_head": HEAD, "bbox": [0, 0, 10, 10]}


def _pred(keypoints: list[float], score: float | None) -> dict:
    return {"keypoints": keypoints, "scores": [] if score is None else [score] * 17}


def _ap(gt: dict, pred: dict) -> np.ndarray:
    result = evaluate_frames(poseval_frames(gt, "gt.json", True), poseval_frames(pred, "pred.json", False))
    return result.ap


def _shifted(keypoints: list[float], dx: float) -> list[float]:
    out = list(keypoints)
    for slot in range(17):
        if out[3 * slot + 2] > 0:
            out[3 * slot] += dx
    return out


def test_ground_truth_as_prediction_gives_100_on_the_real_sample(tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(REAL_VAL, pred)
    result = evaluate_posetrack_folders(REAL_VAL, pred)
    assert result.num_frames == 3
    np.testing.assert_allclose(result.ap, 100.0)
    names = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total")
    assert result.columns() == dict.fromkeys(names, 100.0)


def test_head_size_rule_is_inclusive_at_half_of_0_6_times_the_head_diagonal():
    gt = _video([[_gt((200.0, 200.0))]])
    # 15 px = 0.5 x 30 px matches (<=); 16 px does not. Each joint is one prediction against one GT joint.
    assert np.all(_ap(gt, _video([[_pred(_shifted(_pose((200.0, 200.0)), 15.0), 0.9)]])) == 100.0)
    # Every joint 16 px off: PCKh 0, the prediction matches nobody and all its joints are false positives.
    assert np.all(_ap(gt, _video([[_pred(_shifted(_pose((200.0, 200.0)), 16.0), 0.9)]])) == 0.0)
    # Half the rule (a full diagonal, 25 px, or the box height 24 px) would have matched 16 px: it must not.


def test_matching_keeps_each_predictions_best_gt_before_gts_pick():
    """p0 = g0 exactly; p1 lies on g0 for 12 joints and on g1 for 3: p1's best GT is g0, which p0 takes.

    poseval: p1 stays unmatched, so every joint has ranking TP (p0, 0.9), FP (p1, 0.8) against 2 GT joints:
    recall 0.5 at precision 1, then precision 0.5 -> AP = 0.5 x 1 = 50 for all 15 joints. A matcher that let
    GTs pick first (g1 -> p1) or that matched by score would score p1's three joints on g1 as TPs (AP 100).
    """
    g0, g1 = _pose((100.0, 100.0)), _pose((1000.0, 100.0))
    gt = _video([[{"keypoints": g, "bbox_head": HEAD, "bbox": [0, 0, 1, 1]} for g in (g0, g1)]])
    p1 = list(g0)
    on_g1 = [5, 6, 7]  # three of p1's slots sit on g1's joints
    for slot in on_g1:
        p1[3 * slot : 3 * slot + 2] = g1[3 * slot : 3 * slot + 2]
    ap = _ap(gt, _video([[_pred(g0, 0.9), _pred(p1, 0.8)]]))
    np.testing.assert_allclose(ap, 50.0)


def test_points_inside_ignore_regions_are_deleted_from_predictions_and_gt():
    """A confident false positive inside an ignore polygon is deleted (AP 100); outside it costs AP 50."""
    region = [(800.0, 0.0), (1100.0, 0.0), (1100.0, 400.0), (800.0, 400.0)]
    fp_inside = _pred(_pose((850.0, 50.0)), 1.0)  # every joint strictly inside the polygon
    truth = _pred(_pose((100.0, 100.0)), 0.5)
    pred = _video([[fp_inside, truth]])
    # Ranking per joint: FP (1.0), TP (0.5) over 1 GT joint: recall 1 at precision 0.5 -> AP 50.
    np.testing.assert_allclose(_ap(_video([[_gt((100.0, 100.0))]]), pred), 50.0)
    np.testing.assert_allclose(_ap(_video([[_gt((100.0, 100.0))]], ignore=[region]), pred), 100.0)
    # A GT person entirely inside the region is removed: its missed joints no longer count against recall.
    gt_two = _video([[_gt((100.0, 100.0)), _gt((850.0, 50.0))]], ignore=[region])
    np.testing.assert_allclose(_ap(gt_two, _video([[truth]])), 100.0)
    np.testing.assert_allclose(
        _ap(_video([[_gt((100.0, 100.0)), _gt((850.0, 50.0))]]), _video([[truth]])), 50.0
    )


def test_points_on_the_polygon_border_are_kept():
    """poseval deletes points strictly inside: a joint on the border stays, so its false positive counts."""
    region = [(800.0, 0.0), (1100.0, 0.0), (1100.0, 400.0), (800.0, 400.0)]
    pose = _pose((850.0, 50.0))  # every joint strictly inside ...
    pose[0:2] = [800.0, 200.0]  # ... but the nose (slot 0), which sits on the polygon's left edge
    pred = _video([[_pred(pose, 1.0), _pred(_pose((100.0, 100.0)), 0.5)]])
    ap = _ap(_video([[_gt((100.0, 100.0))]], ignore=[region]), pred)
    nose = POSEVAL_JOINTS.index("nose")
    assert ap[nose] == 50.0  # the kept nose is a false positive ranked first: AP 50
    assert np.all(np.delete(ap, nose) == 100.0)


def test_scores_come_from_scores_and_missing_ones_rank_last():
    gt = _video([[_gt((100.0, 100.0))]])
    far = _pose((1500.0, 900.0))
    # A scoreless false positive gets poseval's -9999 and ranks after the true positive: AP 100.
    np.testing.assert_allclose(_ap(gt, _video([[_pred(far, None), _pred(_pose((100, 100)), 0.3)]])), 100.0)
    # With a higher score it ranks first: AP 50.
    np.testing.assert_allclose(_ap(gt, _video([[_pred(far, 0.9), _pred(_pose((100, 100)), 0.3)]])), 50.0)


def test_unlabelled_frames_are_dropped_with_their_predictions():
    gt = _video([[_gt((100.0, 100.0))], []])  # frame 1 has no annotation
    pred = _video([[_pred(_pose((100.0, 100.0)), 0.5)], [_pred(_pose((400.0, 400.0)), 1.0)]])
    result = evaluate_frames(poseval_frames(gt, "gt", True), poseval_frames(pred, "pred", False))
    assert result.num_frames == 1
    np.testing.assert_allclose(result.ap, 100.0)


def test_joint_without_ground_truth_is_nan_and_left_out_of_the_total():
    truth = _pose((100.0, 100.0))
    gt_kpts = list(truth)
    gt_kpts[0:3] = [0.0, 0.0, 0.0]  # nose unannotated: (0, 0, 0) is no point
    gt = _video([[{"keypoints": gt_kpts, "bbox_head": HEAD, "bbox": [0, 0, 1, 1]}]])
    pred_kpts = list(truth)
    pred_kpts[3 * 16 : 3 * 16 + 3] = [0.0, 0.0, 0.0]  # right ankle not predicted: AP 0, as poseval leaves it
    pred = _video([[_pred(pred_kpts, 0.5)]])
    result = evaluate_frames(poseval_frames(gt, "gt", True), poseval_frames(pred, "pred", False))
    nose, ankle = POSEVAL_JOINTS.index("nose"), POSEVAL_JOINTS.index("right_ankle")
    assert math.isnan(result.ap[nose]) and result.ap[ankle] == 0.0
    assert result.total == pytest.approx((13 * 100.0 + 0.0) / 14)
    assert math.isnan(result.columns()["Head"])


def test_missing_bbox_head_and_wrong_keypoint_counts_name_file_and_record():
    gt = _video([[{"keypoints": _pose((1, 1)), "bbox": [0, 0, 1, 1]}]])
    with pytest.raises(ValueError, match=r"gt\.json: annotation 1000001000000 .*bbox_head"):
        poseval_frames(gt, "gt.json", True)
    bad = _video([[{"keypoints": _pose((1, 1))[:48], "bbox_head": HEAD, "bbox": [0, 0, 1, 1]}]])
    with pytest.raises(ValueError, match=r"gt\.json: annotation 1000001000000 .*48 keypoint values"):
        poseval_frames(bad, "gt.json", True)


def _perturbed_predictions(rng: np.random.Generator) -> list[tuple[str, dict]]:
    files = []
    for path in sorted(REAL_VAL.glob("*.json")):
        data = json.loads(path.read_text())
        pred = copy.deepcopy(data)
        for ann in pred["annotations"]:
            kpts = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            head = np.hypot(*ann["bbox_head"][2:]) * 0.6
            kpts[:, :2] += rng.normal(0.0, 0.3 * head, size=(17, 2)) * (kpts[:, 2:] > 0)
            ann["keypoints"] = kpts.reshape(-1).tolist()
            ann["scores"] = rng.uniform(0.2, 1.0, size=17).tolist()
        files.append((path.name, pred))
    return files


def test_evaluator_protocol_matches_the_folder_evaluation_of_its_written_files(tmp_path):
    rng = np.random.default_rng(0)
    predictions = _perturbed_predictions(rng)
    evaluator = PoseTrackEvaluator(REAL_VAL)
    records = []
    for _, pred in predictions:
        for ann in pred["annotations"]:
            kpts = np.array(ann["keypoints"]).reshape(17, 3)
            records.append((ann["image_id"], kpts[:, :2], np.array(ann["scores"]), ann["track_id"]))
    order = rng.permutation(len(records))  # ranks deliver samples in any order, some twice (padding)
    for start in range(0, len(order), 4):
        chunk = order[start : start + 4].tolist() + [int(order[0])]
        evaluator.update(
            sample_ids=chunk,
            image_ids=[records[i][0] for i in chunk],
            keypoints=np.stack([records[i][1] for i in chunk]),
            keypoint_scores=np.stack([records[i][2] for i in chunk]),
            bbox_scores=np.full(len(chunk), 0.5),
            track_ids=[records[i][3] for i in chunk],
        )
    assert len(evaluator) == len(records)
    metrics = evaluator.compute()
    written = evaluator.write_predictions(tmp_path / "pred")
    assert sorted(p.name for p in written) == sorted(p.name for p in REAL_VAL.glob("*.json"))
    from_files = evaluate_posetrack_folders(REAL_VAL, tmp_path / "pred")
    assert metrics["Total"] == from_files.total
    assert [metrics[f"AP/{name}"] for name in POSEVAL_JOINTS] == from_files.ap.tolist()
    # The box score scales every joint score (joint score = heatmap max x box score); 003418 has one person.
    first = json.loads((tmp_path / "pred" / "003418_mpii_test.json").read_text())["annotations"]
    source = [r for r in records if r[0] == first[0]["image_id"]]
    assert len(first) == len(source) == 1
    assert first[0]["keypoints"][9:15] == [0, 0, 0, 0, 0, 0] and first[0]["scores"][3:5] == [0, 0]  # ears
    expected = (0.5 * source[0][2]).tolist()
    expected[3:5] = [0.0, 0.0]
    assert first[0]["scores"] == pytest.approx(expected, rel=1e-15)
    assert 0.0 < metrics["Total"] < 100.0


def test_written_predictions_refuse_non_finite_numbers(tmp_path):
    evaluator = PoseTrackEvaluator(REAL_VAL)
    image_id = json.loads(next(REAL_VAL.glob("*.json")).read_text())["images"][0]["id"]
    keypoints = np.zeros((1, 17, 2))
    keypoints[0, 5, 0] = np.nan
    evaluator.update([0], [image_id], keypoints, np.ones((1, 17)))
    with pytest.raises(ValueError, match=f"image {image_id}.*non-finite"):
        evaluator.write_predictions(tmp_path)
    assert not list(tmp_path.iterdir())


def test_tool_prints_the_table_and_writes_json(tmp_path, capsys):
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for name, pred in _perturbed_predictions(np.random.default_rng(1)):
        (pred_dir / name).write_text(json.dumps(pred))
    out = tmp_path / "ap.json"
    assert eval_posetrack.main(["--gt", str(REAL_VAL), "--pred", str(pred_dir), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| Head | Shoulder | Elbow | Wrist | Hip | Knee | Ankle | Total |" in printed
    report = json.loads(out.read_text())
    expected = evaluate_posetrack_folders(REAL_VAL, pred_dir)
    assert report["summary"]["Total"] == pytest.approx(expected.total, abs=1e-12)
    assert set(report["ap"]) == set(POSEVAL_JOINTS) and set(report["precision"]) == set(POSEVAL_JOINTS)
    assert report["recall_total"] is not None and report["num_frames"] == 3


def test_tool_names_a_missing_prediction_file(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    assert eval_posetrack.main(["--gt", str(REAL_VAL), "--pred", str(tmp_path / "pred")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("flip", [False, True])
def test_clips_predicted_as_their_ground_truth_score_100_through_the_evaluator(flip):
    """Reader -> crop keypoints -> evaluator: crops mapped back (flips swapped back) give poseval 100."""
    from torch.utils.data import DataLoader

    from zoo.data.posetrack import PoseTrackClipDataset
    from zoo.data.samples import collate_items
    from zoo.data.transforms import TopDownAugmentation

    augmentation = (
        TopDownAugmentation(
            flip_prob=1.0,
            half_body_prob=0.0,
            shift_prob=0.0,
            scale_prob=0.0,
            rotate_prob=0.0,
            photometric=False,
            blur_prob=0.0,
            median_blur_prob=0.0,
            dropout_prob=0.0,
        )
        if flip
        else None
    )
    dataset = PoseTrackClipDataset(REAL_VAL, REAL, offsets=(0,), augmentation=augmentation, seed=0)
    merged = REAL / "annotations" / "test_posetrack18_val.json"
    evaluator = PoseTrackEvaluator(merged)  # the merged file, split into its videos
    for batch in DataLoader(dataset, batch_size=5, collate_fn=collate_items):
        assert bool(batch["flip"].all()) == flip
        # Unlabelled joints are predicted too (at the crop of (0, 0)) but with score 0: they rank after every
        # true positive, so they cost no AP.
        evaluator.update_batch(batch, batch["keypoints"], batch["keypoints_visible"])
    metrics = evaluator.compute()
    assert metrics["Total"] == pytest.approx(100.0) and metrics["Head"] == pytest.approx(100.0)


def test_tied_scores_rank_as_numpys_reversed_argsort():
    """poseval ranks with argsort()[::-1]: of equal scores the later prediction comes first.

    The false positive is listed first and the true positive second, both at 0.5: reversed argsort ranks the
    true positive first (AP 100); a stable descending sort would rank the false positive first (AP 50).
    """
    gt = _video([[_gt((100.0, 100.0))]])
    pred = _video([[_pred(_pose((1500.0, 900.0)), 0.5), _pred(_pose((100.0, 100.0)), 0.5)]])
    np.testing.assert_allclose(_ap(gt, pred), 100.0)


def test_compute_is_repeatable_and_reset_forgets():
    evaluator = PoseTrackEvaluator(REAL_VAL)
    data = json.loads((REAL_VAL / "009473_mpii_test.json").read_text())  # 2 persons, ignore regions
    kpts = np.array([ann["keypoints"] for ann in data["annotations"]]).reshape(-1, 17, 3)
    evaluator.update([0, 1], [data["images"][0]["id"]] * 2, kpts[..., :2], np.ones((2, 17)))
    first = evaluator.compute()
    assert evaluator.compute() == first
    evaluator.reset()
    assert len(evaluator) == 0 and evaluator.compute()["Total"] == 0.0  # nothing predicted: poseval's 0


def test_tool_runs_as_a_script(tmp_path):
    import subprocess

    pred = tmp_path / "pred"
    shutil.copytree(REAL_VAL, pred)
    tool = Path(__file__).resolve().parents[1] / "tools" / "eval_posetrack.py"
    done = subprocess.run(
        [
            sys.executable,
            str(tool),
            "--gt",
            str(REAL_VAL),
            "--pred",
            str(pred),
            "--json",
            str(tmp_path / "a.json"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |" in done.stdout
    assert json.loads((tmp_path / "a.json").read_text())["summary"]["Total"] == 100.0
