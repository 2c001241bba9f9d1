"""PoseTrack multi-person pose AP exactly as the official poseval computes it, and its prediction files.

Semantics of poseval's `evaluateAP` (leonid-pishchulin/poseval: `py/eval_helpers.py`, `py/convert.py`), step
by step, so that every per-joint AP and the total agree with it:

- A PoseTrack18 file goes through poseval's converter: the category's keypoint names map to its 15 joint ids
  (0 r_ankle ... 12 neck = head_bottom, 13 nose, 14 head_top; ears are dropped); a keypoint is a point unless
  it is exactly (0, 0) with visibility 0; a point's score is `scores[slot]` when `scores` is non-empty, else
  -9999. The head box is `bbox_head` (x1 = x, x2 = x + w, ...).
- Prediction frames pair with ground-truth frames by position; frames whose ground truth has no annotation
  (unlabelled frames) are dropped with their predictions.
- In frames with ignore polygons (`ignore_regions_x/y`), every ground-truth and predicted point strictly
  inside one (shapely `contains`) is deleted and persons left without points are removed.
- Matching per frame: distance / (0.6 x head-box diagonal) <= 0.5 matches a joint; PCKh of a (prediction,
  ground truth) pair is the fraction of the ground truth's points matched; each prediction keeps its best
  ground truth (first on ties), each ground truth then takes its best remaining prediction (first on ties;
  none when that PCKh is 0). Joints of unmatched predictions are false positives.
- Per joint, all predicted joints of all frames are ranked by score (numpy's default argsort, reversed: the
  same call as poseval, so ties break the same way), and AP is the VOC area under the interpolated
  precision/recall curve, in percent. A joint with no prediction gets AP 0; one with predictions but no ground
  truth gets NaN. Total = mean of the non-NaN joint APs; the table's Head = mean(head_top, neck, nose), the
  other columns the mean of their left and right joints.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from zoo.data import metainfo
from zoo.data.metainfo import load_metainfo
from zoo.data.posetrack import read_json_file
from zoo.data.transforms import keypoints_to_image
from zoo.evaluation.base import RecordEvaluator
from zoo.evaluation.base import sample_ids as batch_sample_ids
from zoo.utils.files import atomic_write_text

logger = logging.getLogger(__name__)

# poseval's 15 evaluated joints in id order and the PoseTrack18 keypoint name of each (its converter's names).
_POSEVAL_TABLE = json.loads((Path(metainfo.__file__).parent / "posetrack18.json").read_text())[
    "poseval_joints"
]
POSEVAL_JOINTS: tuple[str, ...] = tuple(joint["name"] for joint in _POSEVAL_TABLE)
POSEVAL_KEYPOINTS: tuple[str, ...] = tuple(joint["keypoint"] for joint in _POSEVAL_TABLE)
NUM_JOINTS = len(POSEVAL_JOINTS)
MIN_SCORE = -9999.0  # poseval's score of a predicted point without one
PCKH_THRESHOLD = 0.5
HEAD_SIZE_FACTOR = 0.6
# Summary columns of poseval's printed table: poseval joint ids averaged per column.
SUMMARY_COLUMNS: dict[str, tuple[int, ...]] = {
    "Head": (14, 12, 13),
    "Shoulder": (8, 9),
    "Elbow": (7, 10),
    "Wrist": (6, 11),
    "Hip": (2, 3),
    "Knee": (1, 4),
    "Ankle": (0, 5),
}


@dataclass
class PosevalPerson:
    """One person of one frame in poseval's 15 joints."""

    points: np.ndarray  # [15, 2] float64 (x, y); meaningful where `has`
    has: np.ndarray  # [15] bool, the joint is a point of this person
    scores: np.ndarray  # [15] float64, the point's score (MIN_SCORE when the file gives none)
    head_size: float | None  # 0.6 x head-box diagonal; None without a head box
    record: str  # file and annotation id, for messages


@dataclass
class PosevalFrame:
    """One frame: its persons and the ignore polygons of its ground truth."""

    name: str  # file and image id, for messages
    people: list[PosevalPerson]
    ignore_regions: list[Any]  # shapely Polygons


def _conversion_table(path: Path, data: dict) -> list[int | None]:
    """poseval id of each keypoint slot of the file's category (None for the ears)."""
    categories = data.get("categories")
    if not categories or len(categories) != 1 or categories[0].get("name") != "person":
        raise ValueError(f"{path}: poseval needs exactly one category, named 'person'")
    names = categories[0].get("keypoints", [])
    if len(names) not in (15, 17):
        raise ValueError(f"{path}: the category lists {len(names)} keypoints; poseval accepts 15 or 17")
    table = [POSEVAL_KEYPOINTS.index(name) if name in POSEVAL_KEYPOINTS else None for name in names]
    missing = [name for i, name in enumerate(POSEVAL_KEYPOINTS) if i not in table]
    if missing:
        raise ValueError(f"{path}: the category lacks the keypoints {missing}")
    return table


def _head_size(head: Sequence[float]) -> float:
    # The same numbers in the same order as poseval: x2 = x + w first, then the norm of (x2 - x1, y2 - y1).
    x1, y1, x2, y2 = head[0], head[1], head[0] + head[2], head[1] + head[3]
    return HEAD_SIZE_FACTOR * np.linalg.norm(np.subtract([x2, y2], [x1, y1]))


def _person(path: Path, ann: dict, table: list[int | None], ground_truth: bool) -> PosevalPerson:
    record = f"{path}: annotation {ann.get('id')} (image {ann.get('image_id')})"
    raw = ann.get("keypoints")
    if raw is None:  # a PoseTrack21 box-only person: no points
        raw = [0] * (3 * len(table))
    if len(raw) != 3 * len(table):
        raise ValueError(
            f"{record} has {len(raw)} keypoint values; expected {3 * len(table)} ({len(table)} x 3)"
        )
    keypoints = np.asarray(raw, dtype=np.float64).reshape(len(table), 3)
    scores_raw = ann.get("scores") or []
    if scores_raw and len(scores_raw) < len(table):
        raise ValueError(f"{record} has {len(scores_raw)} scores for {len(table)} keypoints")
    points = np.zeros((NUM_JOINTS, 2))
    has = np.zeros(NUM_JOINTS, dtype=bool)
    scores = np.full(NUM_JOINTS, np.nan)
    for slot, joint in enumerate(table):
        if joint is None:
            continue
        x, y, visible = keypoints[slot]
        # poseval's converter drops exactly the unannotated encoding (0, 0, v=0); any other point counts.
        if x == 0 and y == 0 and visible == 0:
            continue
        points[joint] = (x, y)
        has[joint] = True
        value = scores_raw[slot] if scores_raw else MIN_SCORE
        scores[joint] = np.nan if value is None else float(value)
    head = ann.get("bbox_head")
    if head is not None and len(head) != 4:
        raise ValueError(f"{record} has a bbox_head of {len(head)} values; expected 4 (x, y, w, h)")
    if ground_truth and head is None and has.any():
        raise ValueError(f"{record} has labelled keypoints but no 'bbox_head' (poseval's distance reference)")
    return PosevalPerson(
        points=points,
        has=has,
        scores=scores,
        head_size=None if head is None else _head_size(head),
        record=record,
    )


def _polygons(path: Path, image: dict) -> list[Any]:
    if "ignore_regions_x" not in image or "ignore_regions_y" not in image:
        return []
    polygons = []
    for index, (xs, ys) in enumerate(zip(image["ignore_regions_x"], image["ignore_regions_y"], strict=False)):
        coords = [[x, y] for x, y in zip(xs, ys, strict=False)]  # poseval pairs them with zip, too
        try:
            polygons.append(shapely.Polygon(coords))
        except (ValueError, shapely.errors.GEOSException) as error:
            raise ValueError(
                f"{path}: image {image.get('id')} ignore region {index} is no polygon ({error})"
            ) from error
    return polygons


def poseval_frames(data: dict, path: str | os.PathLike, ground_truth: bool) -> list[PosevalFrame]:
    """The frames of one video's PoseTrack18 dict as poseval's converter sees them, in `images` order."""
    path = Path(path)
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path}: not a PoseTrack18 file (no 'images' list)")
    table = _conversion_table(path, data)
    folders = {Path(str(image.get("file_name", ""))).parent.name.split("_")[0] for image in data["images"]}
    if len(folders) > 1:
        # poseval's converter would keep only the first video of such a file and silently drop the rest.
        raise ValueError(
            f"{path}: images of {len(folders)} videos ({sorted(folders)}); poseval takes one per file"
        )
    if not ground_truth and any(not ann.get("scores") for ann in data.get("annotations", [])):
        logger.warning("%s: predictions without 'scores' get poseval's fallback score %s", path, MIN_SCORE)
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for ann in data.get("annotations", []):
        by_image[ann.get("image_id")].append(ann)
    frames = []
    for image in data["images"]:
        anns = by_image.get(image.get("id"), [])
        frames.append(
            PosevalFrame(
                name=f"{path}: image {image.get('id')}",
                people=[_person(path, ann, table, ground_truth) for ann in anns],
                ignore_regions=_polygons(path, image) if ground_truth else [],
            )
        )
    return frames


def _delete_ignored(people: list[PosevalPerson], polygons: list[Any]) -> list[PosevalPerson]:
    """Delete points strictly inside any polygon; drop persons left without points (poseval, both sides)."""
    kept = []
    for person in people:
        ids = np.flatnonzero(person.has)
        has = person.has.copy()  # the parsed frames stay untouched: an evaluator computes more than once
        if ids.size:
            points = shapely.points(person.points[ids])
            inside = np.zeros(ids.size, dtype=bool)
            for polygon in polygons:
                inside |= shapely.contains(polygon, points)
            has[ids[inside]] = False
        if has.any():
            kept.append(replace(person, has=has))
    return kept


def _match_frame(gt: list[PosevalPerson], pred: list[PosevalPerson]) -> tuple[list, list, np.ndarray]:
    """poseval's assignGTmulti on one frame: per-joint prediction (scores, labels) and GT counts [15]."""
    scores = [[] for _ in range(NUM_JOINTS)]
    labels = [[] for _ in range(NUM_JOINTS)]
    has_gt = np.array([p.has for p in gt], dtype=bool).reshape(len(gt), NUM_JOINTS)
    has_pr = np.array([p.has for p in pred], dtype=bool).reshape(len(pred), NUM_JOINTS)
    match = np.zeros((len(pred), len(gt), NUM_JOINTS), dtype=bool)
    if pred and gt:
        for person in gt:
            if person.head_size is None:
                raise ValueError(f"{person.record} has no 'bbox_head' (poseval's distance reference)")
        head = np.array([p.head_size for p in gt])  # [G]
        gt_points = np.stack([p.points for p in gt])  # [G, 15, 2]
        pr_points = np.stack([p.points for p in pred])  # [P, 15, 2]
        valid = has_pr[:, None, :] & has_gt[None, :, :]  # [P, G, 15]
        delta = gt_points[None] - pr_points[:, None]  # [P, G, 15, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = np.sqrt(delta[..., 0] ** 2 + delta[..., 1] ** 2) / head[None, :, None]  # [P, G, 15]
            # poseval takes np.linalg.norm of each 2-vector; the last bit may differ from the vectorised form,
            # so distances within a hair of the threshold are recomputed exactly its way.
            for p, g, j in zip(*np.nonzero(valid & (np.abs(dist - PCKH_THRESHOLD) < 1e-9)), strict=True):
                dist[p, g, j] = (
                    np.linalg.norm(np.subtract(gt_points[g, j], pr_points[p, j])) / gt[g].head_size
                )
        match = valid & (dist <= PCKH_THRESHOLD)
        num_gt = has_gt.sum(axis=1)  # [G]
        pck = match.sum(axis=2).astype(np.float64)  # [P, G]
        labelled = num_gt > 0
        pck[:, labelled] = pck[:, labelled] / num_gt[labelled]
        best_gt = np.argmax(pck, axis=1)  # [P]; each prediction keeps only its best ground truth
        pck = np.where(np.arange(len(gt))[None, :] == best_gt[:, None], pck, 0.0)
        pr_to_gt = np.argmax(pck, axis=0)  # [G]; each ground truth then takes its best prediction
        pr_to_gt[np.max(pck, axis=0) == 0] = -1
    for p, person in enumerate(pred):
        matched = np.flatnonzero(pr_to_gt == p) if (pred and gt) else np.zeros(0, dtype=int)
        hits = match[p, matched[0]] if matched.size else np.zeros(NUM_JOINTS, dtype=bool)
        for j in np.flatnonzero(person.has):
            scores[j].append(person.scores[j])
            labels[j].append(bool(hits[j]))
    return scores, labels, has_gt.sum(axis=0)


def _voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """poseval's VOCap: area under the precision envelope at the recall steps."""
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))


@dataclass(frozen=True)
class PoseTrackAPResult:
    """Per-joint AP, precision and recall (percent, poseval's 15 joint ids) with their totals."""

    ap: np.ndarray  # [15]
    precision: np.ndarray  # [15], at the last ranked prediction
    recall: np.ndarray  # [15], at the last ranked prediction
    num_frames: int  # labelled frames evaluated

    @property
    def total(self) -> float:
        """Mean AP over the joints (NaN joints left out), poseval's Total."""
        return _nan_skipping_mean(self.ap)

    def columns(self) -> dict[str, float]:
        """The printed table: Head, Shoulder, Elbow, Wrist, Hip, Knee, Ankle, Total."""
        table = {name: float(np.mean(self.ap[list(ids)])) for name, ids in SUMMARY_COLUMNS.items()}
        table["Total"] = self.total
        return table

    def metrics(self) -> dict[str, float]:
        """Flat metrics: the columns, `AP/<joint>`, and precision/recall totals and per joint."""
        out = self.columns()
        for j, name in enumerate(POSEVAL_JOINTS):
            out[f"AP/{name}"] = float(self.ap[j])
            out[f"precision/{name}"] = float(self.precision[j])
            out[f"recall/{name}"] = float(self.recall[j])
        out["precision/Total"] = _nan_skipping_mean(self.precision)
        out["recall/Total"] = _nan_skipping_mean(self.recall)
        return out

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary; NaN (a joint predicted but never annotated) becomes null."""

        def clean(value: float) -> float | None:
            return None if math.isnan(value) else float(value)

        return {
            "joints": list(POSEVAL_JOINTS),
            "ap": {name: clean(float(v)) for name, v in zip(POSEVAL_JOINTS, self.ap, strict=True)},
            "precision": {
                name: clean(float(v)) for name, v in zip(POSEVAL_JOINTS, self.precision, strict=True)
            },
            "recall": {name: clean(float(v)) for name, v in zip(POSEVAL_JOINTS, self.recall, strict=True)},
            "summary": {name: clean(v) for name, v in self.columns().items()},
            "precision_total": clean(_nan_skipping_mean(self.precision)),
            "recall_total": clean(_nan_skipping_mean(self.recall)),
            "num_frames": self.num_frames,
        }


def _nan_skipping_mean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def evaluate_frames(gt_frames: list[PosevalFrame], pred_frames: list[PosevalFrame]) -> PoseTrackAPResult:
    """poseval's multi-person AP over paired frames (same length, same order)."""
    if len(gt_frames) != len(pred_frames):
        raise ValueError(f"{len(pred_frames)} prediction frames for {len(gt_frames)} ground-truth frames")
    scores = [[] for _ in range(NUM_JOINTS)]
    labels = [[] for _ in range(NUM_JOINTS)]
    num_gt = np.zeros(NUM_JOINTS)
    kept = 0
    for gt_frame, pred_frame in zip(gt_frames, pred_frames, strict=True):
        if not gt_frame.people:  # unlabelled frame: dropped with its predictions
            continue
        kept += 1
        gt, pred = gt_frame.people, pred_frame.people
        if gt_frame.ignore_regions:
            gt = _delete_ignored(gt, gt_frame.ignore_regions)
            pred = _delete_ignored(pred, gt_frame.ignore_regions)
        frame_scores, frame_labels, frame_gt = _match_frame(gt, pred)
        for j in range(NUM_JOINTS):
            scores[j] += frame_scores[j]
            labels[j] += frame_labels[j]
        num_gt += frame_gt
    ap, precision, recall = np.zeros(NUM_JOINTS), np.zeros(NUM_JOINTS), np.zeros(NUM_JOINTS)
    for j in range(NUM_JOINTS):
        if not scores[j]:
            continue  # no prediction of this joint: poseval leaves AP, precision and recall at 0
        order = np.array(scores[j], dtype=np.float64).argsort()[::-1]  # poseval's ranking, ties included
        hits = np.cumsum(np.array(labels[j], dtype=bool)[order])  # [N]
        with np.errstate(divide="ignore", invalid="ignore"):
            rec = hits / num_gt[j]  # NaN when the joint has no ground truth, as in poseval
        prec = hits / np.arange(1, hits.size + 1)
        ap[j] = _voc_ap(rec, prec) * 100
        precision[j] = prec[-1] * 100
        recall[j] = rec[-1] * 100
    return PoseTrackAPResult(ap=ap, precision=precision, recall=recall, num_frames=kept)


def _pair_files(gt_dir: Path, pred_dir: Path) -> list[tuple[Path, Path]]:
    # glob order, as poseval reads them: the order of sequences decides how tied scores rank.
    gt_files = [Path(p) for p in glob.glob(os.path.join(str(gt_dir), "*.json"))]
    if not gt_files:
        raise FileNotFoundError(f"ground-truth folder {gt_dir} holds no *.json files")
    pairs = []
    for gt_file in gt_files:
        pred_file = pred_dir / gt_file.name
        if not pred_file.is_file():
            raise FileNotFoundError(f"prediction file {pred_file} does not exist (ground truth {gt_file})")
        pairs.append((gt_file, pred_file))
    return pairs


def evaluate_posetrack_folders(gt_dir: str | os.PathLike, pred_dir: str | os.PathLike) -> PoseTrackAPResult:
    """poseval's AP of a folder of per-video PoseTrack18 predictions against a folder of ground truth."""
    gt_frames, pred_frames = [], []
    for gt_file, pred_file in _pair_files(Path(gt_dir), Path(pred_dir)):
        gt = poseval_frames(read_json_file(gt_file, "ground-truth file"), gt_file, ground_truth=True)
        pred = poseval_frames(read_json_file(pred_file, "prediction file"), pred_file, ground_truth=False)
        if len(gt) != len(pred):
            raise ValueError(f"{pred_file}: {len(pred)} prediction frames for {len(gt)} ground-truth frames")
        gt_frames += gt
        pred_frames += pred
    return evaluate_frames(gt_frames, pred_frames)


def format_table(result: PoseTrackAPResult) -> str:
    """The Head / Shoulder / Elbow / Wrist / Hip / Knee / Ankle / Total AP table as Markdown."""
    columns = result.columns()
    header = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join(" ---: " for _ in columns) + "|"
    row = "| " + " | ".join(f"{value:.1f}" for value in columns.values()) + " |"
    return "\n".join([header, rule, row])


def _numpy(value: Any) -> np.ndarray:
    """Tensors (any device) and sequences as float64 / int numpy arrays."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _finite(values: Sequence[float], what: str) -> list[float]:
    values = [float(v) for v in values]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} holds a non-finite value: {values}")
    return values


@dataclass(frozen=True)
class _Prediction:
    """One predicted person, kept by the evaluator until `compute` or `write_predictions`."""

    image_id: int
    keypoints: np.ndarray  # [17, 2] image pixels
    scores: np.ndarray  # [17] joint score = heatmap max x box score
    track_id: int | None
    bbox: np.ndarray | None  # [4] (x, y, w, h)


def _split_videos(path: Path, data: dict) -> list[tuple[str, dict]]:
    """A PoseTrack18 dict per video: a per-video file as it is, a merged file split by frame folder."""
    folders: dict[str, list[dict]] = defaultdict(list)
    for image in data.get("images", []):
        folders[Path(str(image.get("file_name", ""))).parent.name].append(image)
    if len(folders) == 1:  # a per-video file keeps its own name, as poseval pairs files by name
        return [(path.stem, data)]
    videos = []
    for folder, images in folders.items():
        ids = {image["id"] for image in images}
        annotations = [ann for ann in data.get("annotations", []) if ann.get("image_id") in ids]
        videos.append((folder, {**data, "images": images, "annotations": annotations}))
    return videos


class PoseTrackEvaluator(RecordEvaluator):
    """PoseTrack mAP of top-down predictions on a ground-truth split, equal to poseval on the written files.

    `gt` is a folder of per-video PoseTrack18/21 files or one file (per-video or merged; a merged file is
    split by frame folder). One record per predicted person, keyed by its sample id (the dataset index), so
    that `compute()` is rank-correct and ignores padding duplicates. A person's joint scores are the heatmap
    maxima times its box score (DCPose's convention). Videos are evaluated in sorted name order.
    """

    def __init__(self, gt: str | os.PathLike) -> None:
        super().__init__()
        path = Path(gt)
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        if not files:
            raise FileNotFoundError(f"ground-truth folder {path} holds no *.json files")
        self.videos: list[tuple[str, Path, dict]] = []
        for file in files:
            for name, data in _split_videos(file, read_json_file(file, "ground-truth file")):
                self.videos.append((name, file, data))
        self.videos.sort(key=lambda video: video[0])
        self._gt_frames = [poseval_frames(data, file, ground_truth=True) for _, file, data in self.videos]
        self._image_ids = {image["id"] for _, _, data in self.videos for image in data["images"]}
        names = self.videos[0][2]["categories"][0]["keypoints"] if self.videos else []
        self._num_slots = len(names)
        self._evaluated_slots = [name in POSEVAL_KEYPOINTS for name in names]

    def update(
        self,
        sample_ids: Sequence[Hashable],
        image_ids: Sequence[int],
        keypoints: np.ndarray,
        keypoint_scores: np.ndarray,
        bbox_scores: Sequence[float] | None = None,
        track_ids: Sequence[int] | None = None,
        bboxes: np.ndarray | None = None,
    ) -> None:
        """Add N persons: keypoints [N, 17, 2] (image pixels), heatmap maxima [N, 17], box scores [N]."""
        keypoints = np.asarray(keypoints, dtype=np.float64)
        keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
        num = len(sample_ids)
        if keypoints.shape != (num, self._num_slots, 2) or keypoint_scores.shape != (num, self._num_slots):
            raise ValueError(
                f"expected keypoints [{num}, {self._num_slots}, 2] and scores [{num}, {self._num_slots}]; "
                f"got {keypoints.shape} and {keypoint_scores.shape}"
            )
        if len(image_ids) != num:
            raise ValueError(f"{len(image_ids)} image ids for {num} predictions")
        box_scores = np.ones(num) if bbox_scores is None else np.asarray(bbox_scores, dtype=np.float64)
        for i, sample_id in enumerate(sample_ids):
            image_id = int(image_ids[i])
            if image_id not in self._image_ids:
                raise KeyError(f"image id {image_id} (sample {sample_id}) is not in the ground truth")
            self._add(
                sample_id,
                _Prediction(
                    image_id=image_id,
                    keypoints=keypoints[i],
                    scores=keypoint_scores[i] * box_scores[i],
                    track_id=None if track_ids is None else int(track_ids[i]),
                    bbox=None if bboxes is None else np.asarray(bboxes[i], dtype=np.float64),
                ),
            )

    def update_batch(self, batch: dict[str, Any], keypoints: Any, maxvals: Any) -> None:
        """Add a batch of PoseTrack clips: crop-pixel keypoints [B, 17, 2] and heatmap maxima [B, 17].

        The batch's `warp_matrix` and `flip` map the keypoints back to the key frame (left/right ids and their
        maxima swapped back for flipped crops); `sample_id`, `image_id`, `bbox_score`, `track_id` and `bbox`
        come with it.
        """
        size = len(batch["image_id"])
        flip = _numpy(batch.get("flip", np.zeros(size))).astype(bool)  # [B]
        flip_indices = load_metainfo("posetrack18").flip_indices
        # [B, 17, 2] key-frame pixels, ids swapped back where flipped; the maxima [B, 17] follow their ids.
        points = keypoints_to_image(_numpy(keypoints), _numpy(batch["warp_matrix"]), flip, flip_indices)
        maxvals = _numpy(maxvals).astype(np.float64)
        maxvals = np.where(flip[:, None], maxvals[:, list(flip_indices)], maxvals)
        boxes = _numpy(batch["bbox"]) if "bbox" in batch else None  # [B, 4] x1, y1, x2, y2
        xywh = None if boxes is None else np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        self.update(
            sample_ids=list(batch_sample_ids(batch, size)),
            image_ids=[int(i) for i in _numpy(batch["image_id"])],
            keypoints=points,
            keypoint_scores=maxvals,
            bbox_scores=_numpy(batch["bbox_score"]) if "bbox_score" in batch else None,
            track_ids=[int(i) for i in _numpy(batch["track_id"])] if "track_id" in batch else None,
            bboxes=xywh,
        )

    def prediction_files(self) -> list[tuple[str, dict]]:
        """(file name, PoseTrack18 dict) per ground-truth video with the merged predictions of all ranks."""
        return self._prediction_files([record for _, record in self.merged_records()])

    def _prediction_files(self, records: list[_Prediction]) -> list[tuple[str, dict]]:
        by_image: dict[int, list[_Prediction]] = defaultdict(list)
        for record in records:  # in sample-id order
            by_image[record.image_id].append(record)
        files = []
        for name, _, data in self.videos:
            annotations = []
            for image in data["images"]:
                used: set[int] = set()
                for index, record in enumerate(by_image.get(image["id"], [])):
                    track_id = (
                        record.track_id if record.track_id is not None and record.track_id >= 0 else index
                    )
                    if track_id in used:  # poseval refuses repeated track ids within a frame
                        track_id = max(used) + 1
                    used.add(track_id)
                    annotations.append(self._annotation(image["id"], index, track_id, record))
            files.append(
                (
                    f"{name}.json",
                    {"images": data["images"], "annotations": annotations, "categories": data["categories"]},
                )
            )
        return files

    def _annotation(self, image_id: int, index: int, track_id: int, record: _Prediction) -> dict[str, Any]:
        what = f"prediction for image {image_id}"
        keypoints, scores = [], []
        for evaluated, (x, y), score in zip(
            self._evaluated_slots, record.keypoints, record.scores, strict=True
        ):
            # Slots poseval does not score (the ears) are written as PoseTrack's unannotated (0, 0, 0).
            keypoints += [*_finite([x, y], f"{what}: keypoint"), 1] if evaluated else [0.0, 0.0, 0]
            scores += _finite([score], f"{what}: scores") if evaluated else [0.0]
        ann = {
            "image_id": image_id,
            "id": image_id * 100 + index,
            "track_id": track_id,
            "category_id": 1,
            "keypoints": keypoints,
            "scores": scores,
        }
        if record.bbox is not None:
            ann["bbox"] = _finite(record.bbox, f"{what}: bbox")
        return ann

    def write_predictions(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write one official per-video PoseTrack18 prediction file per ground-truth video (atomically)."""
        out_dir = Path(out_dir)
        paths = []
        for file_name, data in self.prediction_files():
            path = out_dir / file_name
            atomic_write_text(path, json.dumps(data, allow_nan=False) + "\n")
            paths.append(path)
        return paths

    def _compute(self, records: list[_Prediction]) -> dict[str, float]:
        gt_frames, pred_frames = [], []
        for (file_name, data), frames in zip(self._prediction_files(records), self._gt_frames, strict=True):
            gt_frames += frames
            pred_frames += poseval_frames(data, file_name, ground_truth=False)
        return evaluate_frames(gt_frames, pred_frames).metrics()


__all__ = [
    "MIN_SCORE",
    "NUM_JOINTS",
    "PCKH_THRESHOLD",
    "POSEVAL_JOINTS",
    "POSEVAL_KEYPOINTS",
    "PoseTrackAPResult",
    "PoseTrackEvaluator",
    "PosevalFrame",
    "PosevalPerson",
    "SUMMARY_COLUMNS",
    "evaluate_frames",
    "evaluate_posetrack_folders",
    "format_table",
    "poseval_frames",
]
