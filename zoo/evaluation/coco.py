"""COCO keypoint OKS AP (body and whole-body) with mmpose CocoMetric semantics on top of pycocotools."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from zoo.data.coco_files import CocoFileError, keypoint_parts, read_coco
from zoo.data.metainfo import PoseMetainfo, load_metainfo
from zoo.evaluation.base import RecordEvaluator
from zoo.utils.files import atomic_write_text

logger = logging.getLogger(__name__)

# Names of pycocotools' 10 keypoint stats, in its order.
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
SCORE_MODES = ("bbox", "keypoint", "bbox_keypoint", "bbox_rle")
NMS_MODES = ("oks_nms", "none")
# Ground-truth fields that pycocotools reads from every annotation.
GT_FIELDS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")


@contextlib.contextmanager
def _quiet() -> Any:
    # pycocotools prints progress and tables to stdout; keep them in the debug log instead.
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if buffer.getvalue().strip():
        logger.debug("pycocotools:\n%s", buffer.getvalue().rstrip())


def oks_iou(
    keypoints: np.ndarray, others: np.ndarray, area: float, other_areas: np.ndarray, sigmas: np.ndarray
) -> np.ndarray:
    """OKS between one instance [K, 2+] and others [M, K, 2+], over all keypoints, areas averaged
    (mmpose OKS-NMS)."""
    variances = (2 * sigmas) ** 2  # [K]
    dist2 = ((others[..., :2] - keypoints[None, :, :2]) ** 2).sum(-1)  # [M, K]
    scale = (area + other_areas)[:, None] / 2 + np.spacing(1)  # [M, 1]
    return np.exp(-dist2 / variances / scale / 2).mean(-1)  # [M]


def oks_nms(
    keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray, thr: float
) -> list[int]:
    """Greedy OKS-NMS: indices of kept instances, highest score first; drops instances with OKS > thr to a
    kept one."""
    # argsort-then-reverse (not a stable descending sort) is how mmpose orders ties; keep it for equal
    # results.
    order = np.argsort(scores)[::-1]
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        overlap = oks_iou(keypoints[best], keypoints[rest], areas[best], areas[rest], sigmas)
        order = rest[overlap <= thr]
    return keep


@dataclass
class _Instance:
    """One predicted person as the evaluator keeps it until `evaluate`."""

    instance_id: int
    image_id: int
    category_id: int
    keypoints: np.ndarray  # [K, 2]
    keypoint_scores: np.ndarray  # [K]
    bbox_score: float
    area: float
    bbox: np.ndarray | None  # [4] xywh


class CocoKeypointEvaluator(RecordEvaluator):
    """Accumulate top-down predictions, rescore, OKS-NMS and compute COCO keypoint AP/AR like mmpose's
    CocoMetric.

    For COCO-WholeBody metainfo (several parts) it reports the whole-body stats under the plain names and each
    part's stats under "<part>/<stat>" (body, foot, face, left_hand, right_hand), like CocoWholeBodyMetric's
    per-part COCOeval runs. One record per instance id (the top-down sample): `compute()` gathers them from
    every rank, keeps the first of a repeated id (mmpose de-duplicates by sample id too) and evaluates them in
    id order, so one process and N processes give the same numbers.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        metainfo: PoseMetainfo | str = "coco",
        score_mode: str = "bbox_keypoint",
        keypoint_score_thr: float = 0.2,
        nms_mode: str = "oks_nms",
        nms_thr: float = 0.9,
    ) -> None:
        if score_mode not in SCORE_MODES:
            raise ValueError(f"score_mode must be one of {SCORE_MODES}, got {score_mode!r}")
        if nms_mode not in NMS_MODES:
            raise ValueError(f"nms_mode must be one of {NMS_MODES}, got {nms_mode!r}")
        self.metainfo = load_metainfo(metainfo) if isinstance(metainfo, str) else metainfo
        self.ann_file = Path(ann_file)
        gt = read_coco(self.ann_file, require_annotations=True, annotation_fields=GT_FIELDS)
        if not isinstance(gt.data.get("categories"), list):
            raise CocoFileError(f"{gt.name}: lacks the 'categories' list that COCO evaluation needs")
        self.gt_dataset = gt.data
        # Each part's keypoints under its annotation field, in keypoint order (body only: COCO's "keypoints").
        self._parts = keypoint_parts(self.metainfo)
        self.score_mode = score_mode
        self.keypoint_score_thr = keypoint_score_thr
        self.nms_mode = nms_mode
        self.nms_thr = nms_thr
        self.is_wholebody = len(self.metainfo.parts) > 1
        self._check_gt_layout()
        self._image_ids = {image.id for image in gt.images}
        super().__init__()

    def _check_gt_layout(self) -> None:
        # Fail at construction, not after a long inference run, when the annotation file and metainfo
        # disagree.
        for index, ann in enumerate(self.gt_dataset["annotations"]):
            num = sum(len(ann.get(part.field, [])) // 3 for part in self._parts)
            if num != self.metainfo.num_keypoints:
                raise CocoFileError(
                    f"{self.ann_file}: annotations[{index}] (id {ann['id']}) has {num} keypoints, "
                    f"metainfo {self.metainfo.name!r} expects {self.metainfo.num_keypoints}"
                )

    def update(
        self,
        image_id: int,
        keypoints: np.ndarray,
        keypoint_scores: np.ndarray,
        bbox_scores: np.ndarray | None = None,
        areas: np.ndarray | None = None,
        bboxes: np.ndarray | None = None,
        instance_ids: Sequence[int] | None = None,
        category_id: int = 1,
    ) -> None:
        """Add the N persons predicted in one image: keypoints [N, K, 2] (image pixels), scores [N, K], box
        scores [N].

        `areas` [N] is the instance area used by OKS-NMS (mmpose: the product of the padded box scale);
        without it the keypoints' extent is used. `bboxes` [N, 4] (x, y, w, h) go to the results file;
        pycocotools then uses their area for the medium/large split of unmatched detections. `instance_ids`
        de-duplicate repeated instances within an image (as mmpose does by sample id); by default every
        instance is unique.
        """
        if image_id not in self._image_ids:
            raise KeyError(f"image id {image_id} is not in {self.ann_file}")
        keypoints = np.asarray(keypoints, dtype=np.float64)
        keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
        num, k = keypoints.shape[:2]
        if keypoints.shape != (num, self.metainfo.num_keypoints, 2):
            raise ValueError(
                f"keypoints must be [N, {self.metainfo.num_keypoints}, 2], got {keypoints.shape}"
            )
        if keypoint_scores.shape != (num, k):
            raise ValueError(f"keypoint_scores must be [{num}, {k}], got {keypoint_scores.shape}")
        bbox_scores = (
            np.ones(num) if bbox_scores is None else np.asarray(bbox_scores, dtype=np.float64).reshape(num)
        )
        if areas is None:
            # mmpose's fallback: the area of the keypoints' bounding rectangle.
            extent = keypoints.max(axis=1) - keypoints.min(axis=1)  # [N, 2]
            areas = extent[:, 0] * extent[:, 1]
        areas = np.asarray(areas, dtype=np.float64).reshape(num)
        if bboxes is not None:
            bboxes = np.asarray(bboxes, dtype=np.float64).reshape(num, 4)
        if instance_ids is None:
            first = len(self._records)
            instance_ids = range(first, first + num)
        elif len(instance_ids) != num:
            raise ValueError(f"{len(instance_ids)} instance ids for {num} instances")
        for i in range(num):
            self._add(
                int(instance_ids[i]),
                _Instance(
                    instance_id=int(instance_ids[i]),
                    image_id=int(image_id),
                    category_id=int(category_id),
                    keypoints=keypoints[i],
                    keypoint_scores=keypoint_scores[i],
                    bbox_score=float(bbox_scores[i]),
                    area=float(areas[i]),
                    bbox=None if bboxes is None else bboxes[i],
                ),
            )

    def _score(self, instance: _Instance) -> float:
        # Instance confidence used for ranking in COCOeval and for OKS-NMS (mmpose CocoMetric score modes).
        scores = instance.keypoint_scores
        if self.score_mode == "bbox":
            return instance.bbox_score
        if self.score_mode == "keypoint":
            return float(np.mean(scores))
        if self.score_mode == "bbox_rle":
            return float(instance.bbox_score + np.mean(scores) + np.max(scores))
        confident = scores[scores > self.keypoint_score_thr]
        return instance.bbox_score * (float(np.mean(confident)) if confident.size else 0.0)

    def results(self) -> list[dict[str, Any]]:
        """Predictions of all ranks after de-duplication, rescoring and OKS-NMS, in COCO results format."""
        return self._results([instance for _, instance in self.merged_records()])

    def _results(self, instances: list[_Instance]) -> list[dict[str, Any]]:
        by_image: dict[int, dict[int, _Instance]] = defaultdict(dict)
        for instance in instances:  # already one per instance id, in id order
            by_image[instance.image_id][instance.instance_id] = instance
        results = []
        for image_id in by_image:
            instances = [by_image[image_id][key] for key in sorted(by_image[image_id])]
            scores = np.array([self._score(instance) for instance in instances])
            if self.nms_mode == "oks_nms":
                keep = oks_nms(
                    np.stack([instance.keypoints for instance in instances]),
                    scores,
                    np.array([instance.area for instance in instances]),
                    self.metainfo.sigmas,
                    self.nms_thr,
                )
            else:
                keep = list(range(len(instances)))
            for index in keep:
                results.append(self._to_coco(instances[index], float(scores[index])))
        return results

    def _to_coco(self, instance: _Instance, score: float) -> dict[str, Any]:
        # Keypoint triplets are (x, y, score), as COCO results store them.
        triplets = np.concatenate([instance.keypoints, instance.keypoint_scores[:, None]], axis=1)  # [K, 3]
        result: dict[str, Any] = {
            "image_id": instance.image_id,
            "category_id": instance.category_id,
            "score": score,
        }
        for part in self._parts:
            result[part.field] = triplets[part.slice].ravel().tolist()
        if instance.bbox is not None:
            result["bbox"] = instance.bbox.tolist()
        return result

    def compute(self, outfile_prefix: str | os.PathLike | None = None) -> dict[str, float]:
        """AP/AR stats over the predictions of all ranks; writes `<prefix>.keypoints.json` when a prefix is
        given."""
        return self._compute([instance for _, instance in self.merged_records()], outfile_prefix)

    def _compute(
        self, instances: list[_Instance], outfile_prefix: str | os.PathLike | None = None
    ) -> dict[str, float]:
        results = self._results(instances)
        if outfile_prefix is not None:
            atomic_write_text(f"{os.fspath(outfile_prefix)}.keypoints.json", json.dumps(results))
        if not results:
            raise ValueError("no predictions to evaluate: call update() first")
        whole = (0, self.metainfo.num_keypoints)
        stats = dict(zip(STAT_NAMES, self._evaluate_part(results, whole), strict=True))
        if self.is_wholebody:
            for part, span in self.metainfo.parts.items():
                part_stats = self._evaluate_part(results, span)
                stats.update(
                    {f"{part}/{name}": value for name, value in zip(STAT_NAMES, part_stats, strict=True)}
                )
        return stats

    def _flat(self, record: dict[str, Any]) -> list[float]:
        """The keypoint triplets of a GT annotation or a result, parts concatenated in keypoint order."""
        return [value for part in self._parts for value in record[part.field]]

    def _evaluate_part(self, results: list[dict[str, Any]], span: tuple[int, int]) -> list[float]:
        # pycocotools sees one keypoint set per run: the slice [start, end) of every GT and result.
        # Two rules of xtcocotools (mmpose's backend) are applied here because pycocotools lacks them:
        # a GT is ignored when none of *this part's* keypoints is labelled, and a result with no positive
        # keypoint score in the part is dropped.
        start, end = span
        gt_dataset = {key: value for key, value in self.gt_dataset.items() if key != "annotations"}
        gt_anns = []
        for ann in self.gt_dataset["annotations"]:
            part = self._flat(ann)[3 * start : 3 * end]
            gt_ann = {key: ann[key] for key in GT_FIELDS}
            gt_ann["keypoints"] = part
            gt_ann["num_keypoints"] = int(np.count_nonzero(np.asarray(part[2::3]) > 0))
            gt_anns.append(gt_ann)
        gt_dataset["annotations"] = gt_anns

        dt_anns = []
        for index, result in enumerate(results):
            flat = self._flat(result)
            part = flat[3 * start : 3 * end]
            if not np.any(np.asarray(part[2::3]) > 0):
                continue
            if "bbox" in result:
                x0, y0, w, h = result["bbox"]
            else:
                # COCO loadRes' keypoint branch: box and area from the result's "keypoints" field, which for
                # whole-body results holds only the 17 body keypoints.
                body = np.asarray(result["keypoints"], dtype=np.float64).reshape(-1, 3)
                x0, y0 = body[:, 0].min(), body[:, 1].min()
                w, h = body[:, 0].max() - x0, body[:, 1].max() - y0
            dt_anns.append(
                {
                    "id": index + 1,
                    "image_id": result["image_id"],
                    "category_id": result["category_id"],
                    "keypoints": part,
                    "score": result["score"],
                    "bbox": [float(x0), float(y0), float(w), float(h)],
                    "area": float(w * h),
                    "iscrowd": 0,
                }
            )
        dt_dataset = {
            "images": gt_dataset["images"],
            "categories": copy.deepcopy(gt_dataset["categories"]),
            "annotations": dt_anns,
        }
        with _quiet():
            coco_gt, coco_dt = COCO(), COCO()
            coco_gt.dataset, coco_dt.dataset = gt_dataset, dt_dataset
            coco_gt.createIndex()
            coco_dt.createIndex()
            coco_eval = COCOeval(coco_gt, coco_dt, "keypoints")
            # The dataset's sigmas (float32, as mmpose passes them) instead of pycocotools' built-in COCO-17
            # set.
            coco_eval.params.kpt_oks_sigmas = self.metainfo.sigmas[start:end]
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        return [float(value) for value in coco_eval.stats]


__all__ = ["STAT_NAMES", "CocoKeypointEvaluator", "oks_iou", "oks_nms"]
