"""Per-task adapters: how the Annotator drives one predictor, names its outputs and merges its records."""

from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from zoo.inference.annotate.inputs import ImageItem
from zoo.inference.annotate.state import STATE_DIR
from zoo.utils.files import atomic_open, atomic_write_json, move_into_place, safe_join, sha256_file

RESULTS_FILE = "results.json"
ANNOTATIONS_FILE = "annotations.json"
# Rounding makes the JSON independent of float noise below what a keypoint or score can mean.
COORD_DECIMALS = 2
SCORE_DECIMALS = 4
KEYPOINT_SCORE_THR = 0.2  # mmpose's instance rescoring threshold ("bbox_keypoint" score mode)
VISIBLE_SCORE_THR = (
    0.3  # a keypoint above this is "visible" (v=2) in the annotation file and drawn in overlays
)
# What a dense predictor's `save(prediction, stem)` writes, as suffixes of the stem.
DENSE_KINDS = (".npy", ".png", "_vis.png")
_STAGING_STEM = "x"  # dotless, so that a `save` deriving names by `with_suffix` cannot lose part of the stem


def _rounded(values: Any, decimals: int) -> Any:
    """Nested lists of Python floats rounded to `decimals` (-0.0 written as 0.0 for stable bytes)."""
    return (np.round(np.asarray(values, dtype=np.float64), decimals) + 0.0).tolist()


@dataclass(frozen=True)
class AnnotateOptions:
    """The Annotator's settings that adapters read (each adapter takes what concerns its task)."""

    processing_resolution: int | None = None
    box_source: str = "whole_image"
    det_file: str | os.PathLike | None = None
    flip_test: bool = False
    visualize: bool = True
    controlnet: bool = False
    coco_annotations: bool = True


def adapter_class(predictor: Any) -> type[TaskAdapter]:
    """The TaskAdapter that the predictor's family names in the registry."""
    from zoo.registry import get_family

    family = getattr(predictor, "family", None)
    if not isinstance(family, str):
        raise TypeError(f"{type(predictor).__name__} names no family: it is not a predictor of the zoo")
    spec = get_family(family)
    if spec.annotator_adapter is None:
        raise TypeError(f"family {family!r} has no Annotator adapter: its predictors do not annotate images")
    return spec.resolve("annotator_adapter")


def predictor_task(predictor: Any) -> str:
    """The output folder kind of a predictor ("pose", "depth", "normals", ...), as its adapter names it."""
    return adapter_class(predictor).task_of(predictor)


class TaskAdapter(ABC):
    """How the Annotator drives one predictor: predict a batch, write per-image files, merge at the end."""

    kind = ""

    def __init__(self, key: str, predictor: Any, out_dir: Path, options: AnnotateOptions) -> None:
        self.key, self.predictor, self.out_dir = key, predictor, out_dir / key

    @classmethod
    def task_of(cls, predictor: Any) -> str:
        """The task this adapter annotates with `predictor` (its default output folder)."""
        return cls.kind

    def settings(self) -> dict[str, Any]:
        """Everything the outputs depend on besides the images and weights; a resumed run must match it."""
        return {"task": self.kind, "predictor": type(self.predictor).__name__}

    @abstractmethod
    def outputs(self, item: ImageItem) -> list[str]:
        """The files written for `item`, relative to `out_dir` (POSIX)."""

    def merged_files(self) -> list[str]:
        """The files `merge` writes, relative to `out_dir`."""
        return []

    @abstractmethod
    def predict(
        self, images: list[np.ndarray], items: list[ImageItem], write: list[bool]
    ) -> list[dict[str, Any]]:
        """Predict a batch and write the files of the images marked in `write`; return each image's record
        payload."""

    def merge(self, records: list[tuple[ImageItem, dict[str, Any]]]) -> dict[str, Path]:
        """Write the task's merged files from all records; return them by name."""
        return {}


class DenseAdapter(TaskAdapter):
    """Lotus depth or normals: `<stem>.png`, `.npy` and `_vis.png` per image, encoded by the predictor's
    `save`."""

    def __init__(self, key: str, predictor: Any, out_dir: Path, options: AnnotateOptions) -> None:
        super().__init__(key, predictor, out_dir, options)
        self.kind = self.task_of(predictor)
        self.processing_resolution = options.processing_resolution
        self.staging = out_dir / STATE_DIR / key / "staging"

    @classmethod
    def task_of(cls, predictor: Any) -> str:
        """ "depth" or "normals"."""
        return predictor.task

    def settings(self) -> dict[str, Any]:
        """Task settings plus the processing resolution."""
        return {
            **super().settings(),
            "processing_resolution": self.processing_resolution,
            "disparity": bool(getattr(self.predictor, "disparity", False)),
        }

    def outputs(self, item: ImageItem) -> list[str]:
        """`<stem>.npy`, `<stem>.png`, `<stem>_vis.png`."""
        return [item.stem + kind for kind in DENSE_KINDS]

    def predict(
        self, images: list[np.ndarray], items: list[ImageItem], write: list[bool]
    ) -> list[dict[str, Any]]:
        """One predictor call for the batch, then the three files of each image to write."""
        # Generative (Lotus-G) noise is drawn from a generator seeded by the batch's names: reruns draw the
        # same.
        names = "\n".join(i.file_name for i in items)
        seed = int.from_bytes(hashlib.sha256(os.fsencode(names)).digest()[:8], "little")
        generator = torch.Generator(device=self.predictor.backbone.device).manual_seed(seed)
        output = self.predictor(
            images,
            processing_resolution=self.processing_resolution,
            batch_size=len(images),
            generator=generator,
            output_type="np",
        )
        for item, prediction in zip(items, output.prediction, strict=True):
            if not np.isfinite(prediction).all():
                raise ValueError(f"{item.file_name}: the model predicted NaN or infinite values")
        for item, prediction, wanted in zip(items, output.prediction, write, strict=True):
            if wanted:
                self._save(item, prediction)
        return [{} for _ in items]

    def _save(self, item: ImageItem, prediction: np.ndarray) -> None:
        """Encode through `save` in a private staging folder, then rename each file to its output name."""
        self.staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.staging) as folder:
            self.predictor.save(prediction, Path(folder) / _STAGING_STEM)
            written = sorted(os.listdir(folder))
            expected = sorted(_STAGING_STEM + kind for kind in DENSE_KINDS)
            if written != expected:
                raise RuntimeError(
                    f"{type(self.predictor).__name__}.save wrote {written}; expected {expected}"
                )
            for kind in DENSE_KINDS:
                target = safe_join(self.out_dir, item.stem + kind, "output folder")
                move_into_place(Path(folder) / (_STAGING_STEM + kind), target)


class PoseAdapter(TaskAdapter):
    """Top-down pose: people per image in the records; COCO results and annotation files at the end."""

    kind = "pose"

    def __init__(self, key: str, predictor: Any, out_dir: Path, options: AnnotateOptions) -> None:
        from zoo.data.coco_files import read_detections
        from zoo.inference.pose import BOX_SOURCES, detection_boxes, hog_person_boxes

        super().__init__(key, predictor, out_dir, options)
        box_source, det_file, flip_test = options.box_source, options.det_file, options.flip_test
        visualize, controlnet, coco_annotations = (
            options.visualize,
            options.controlnet,
            options.coco_annotations,
        )
        if det_file is None and box_source not in BOX_SOURCES:
            raise ValueError(
                f"box_source must be one of {BOX_SOURCES} or a det_file be given; got {box_source!r}"
            )
        if det_file is None and box_source == "hog":
            try:  # fail now, not after the first batch, when this OpenCV has no HOG people detector
                hog_person_boxes(np.zeros((64, 32, 3), dtype=np.uint8))
            except RuntimeError as error:
                raise ValueError(str(error)) from error
        self.box_source, self.flip_test = box_source, flip_test
        self.visualize, self.controlnet, self.coco_annotations = visualize, controlnet, coco_annotations
        self.det_file = Path(det_file) if det_file is not None else None
        # Parsed and validated (finite boxes and scores) once here, not per batch: image id ->
        # (boxes, scores).
        self.detections: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.det_file is not None:
            ids = sorted({detection.image_id for detection in read_detections(self.det_file)})
            self.detections = dict(
                zip(ids, zip(*detection_boxes(self.det_file, ids), strict=True), strict=True)
            )

    def settings(self) -> dict[str, Any]:
        """Task settings plus the box source (with the detection file's hash) and flip test."""
        return {
            **super().settings(),
            "box_source": "det_file" if self.det_file is not None else self.box_source,
            "det_file_sha256": sha256_file(self.det_file) if self.det_file is not None else None,
            "flip_test": self.flip_test,
            "visualize": self.visualize,
            "controlnet": self.controlnet,
        }

    def outputs(self, item: ImageItem) -> list[str]:
        """`<stem>_vis.png` and `controlnet/<stem>.png|.json`, as enabled."""
        return ([item.stem + "_vis.png"] if self.visualize else []) + (
            [f"controlnet/{item.stem}.png", f"controlnet/{item.stem}.json"] if self.controlnet else []
        )

    def merged_files(self) -> list[str]:
        """results.json and annotations.json."""
        return [RESULTS_FILE] + ([ANNOTATIONS_FILE] if self.coco_annotations else [])

    def predict(
        self, images: list[np.ndarray], items: list[ImageItem], write: list[bool]
    ) -> list[dict[str, Any]]:
        """One predictor call for the batch (all people's crops pooled); overlays and ControlNet files per
        image."""
        kwargs: dict[str, Any] = {"box_source": self.box_source}
        if self.det_file is not None:
            none = (np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32))
            pairs = [self.detections.get(item.image_id, none) for item in items]
            kwargs["boxes"], kwargs["box_scores"] = [b for b, _ in pairs], [s for _, s in pairs]
        output = self.predictor(images, flip_test=self.flip_test, batch_size=max(len(images), 1), **kwargs)
        payloads = []
        for index, item in enumerate(items):
            people = []
            for points, scores, box, box_score in zip(
                output.keypoints[index],
                output.scores[index],
                output.boxes[index],
                output.box_scores[index],
                strict=True,
            ):
                if not (
                    np.isfinite(points).all()
                    and np.isfinite(scores).all()
                    and np.isfinite(box).all()
                    and np.isfinite(box_score)
                ):
                    raise ValueError(
                        f"{item.file_name}: the model predicted NaN or infinite keypoints or boxes"
                    )
                confident = scores[scores > KEYPOINT_SCORE_THR]
                score = float(box_score) * (float(confident.mean()) if confident.size else 0.0)
                people.append(
                    {
                        "keypoints": _rounded(points, COORD_DECIMALS),  # [K, 2]
                        "keypoint_scores": _rounded(scores, SCORE_DECIMALS),  # [K]
                        "score": _rounded(score, SCORE_DECIMALS),
                        "bbox": _rounded([box[0], box[1], box[2] - box[0], box[3] - box[1]], COORD_DECIMALS),
                    }
                )
            payloads.append({"people": people})
        for item, image, payload, wanted in zip(items, images, payloads, write, strict=True):
            if wanted:
                # Pictures are drawn from the rounded numbers, so they match what results.json says.
                self._write_pictures(item, image, payload)
        return payloads

    def _arrays(self, payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints [N, K, 2] and scores [N, K] of a record."""
        k = self.predictor.metainfo.num_keypoints
        people = payload["people"]
        points = np.asarray([p["keypoints"] for p in people], dtype=np.float64).reshape(len(people), k, 2)
        scores = np.asarray([p["keypoint_scores"] for p in people], dtype=np.float64).reshape(len(people), k)
        return points, scores

    def _write_pictures(self, item: ImageItem, image: np.ndarray, payload: dict[str, Any]) -> None:
        points, scores = self._arrays(payload)
        height, width = image.shape[:2]
        if self.visualize:
            from zoo.visualize import draw_skeleton

            rgb = np.round(image * 255.0).astype(np.uint8)
            overlay = draw_skeleton(rgb, points, scores, self.predictor.metainfo, threshold=VISIBLE_SCORE_THR)
            with atomic_open(safe_join(self.out_dir, item.stem + "_vis.png", "output folder")) as handle:
                Image.fromarray(overlay).save(handle, format="PNG")
        if self.controlnet:
            from zoo.export.controlnet import ImagePoses, export_image, write_controlnet_pose

            people = [np.concatenate([p, s[:, None]], axis=1) for p, s in zip(points, scores, strict=True)]
            poses = ImagePoses(item.image_id, item.file_name, width, height, people)
            write_controlnet_pose(self.out_dir / "controlnet", replace(export_image(poses), stem=item.stem))

    def merge(self, records: list[tuple[ImageItem, dict[str, Any]]]) -> dict[str, Path]:
        """results.json (COCO results) and, if asked, annotations.json (images + people as COCO annotations).
        """
        results, images, annotations = [], [], []
        for item, record in sorted(records, key=lambda pair: pair[0].image_id):
            images.append(
                {
                    "id": item.image_id,
                    "file_name": item.file_name,
                    "width": record["width"],
                    "height": record["height"],
                }
            )
            points, scores = self._arrays(record)
            for person, p, s in zip(record["people"], points, scores, strict=True):
                triplets = np.concatenate([p, s[:, None]], axis=1)  # [K, 3] = x, y, score
                results.append(
                    {
                        "image_id": item.image_id,
                        "category_id": 1,
                        "keypoints": triplets.ravel().tolist(),
                        "score": person["score"],
                        "bbox": person["bbox"],
                    }
                )
                visible = s > VISIBLE_SCORE_THR
                # COCO ground truth: unlabelled points are (0, 0, 0), labelled ones (x, y, 2).
                labelled = np.where(
                    visible[:, None], np.concatenate([p, np.full_like(s, 2.0)[:, None]], 1), 0.0
                )
                x, y, w, h = person["bbox"]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": item.image_id,
                        "category_id": 1,
                        "iscrowd": 0,
                        "keypoints": (labelled + 0.0).ravel().tolist(),
                        "num_keypoints": int(visible.sum()),
                        "bbox": person["bbox"],
                        "area": _rounded(w * h, COORD_DECIMALS),
                        "score": person["score"],
                    }
                )
        files = {RESULTS_FILE: self.out_dir / RESULTS_FILE}
        atomic_write_json(files[RESULTS_FILE], results)
        if self.coco_annotations:
            metainfo = self.predictor.metainfo
            category = {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(metainfo.keypoint_names),
                "skeleton": [[a + 1, b + 1] for a, b in metainfo.skeleton_links],
            }  # COCO links are 1-based
            files[ANNOTATIONS_FILE] = self.out_dir / ANNOTATIONS_FILE
            atomic_write_json(
                files[ANNOTATIONS_FILE],
                {"images": images, "annotations": annotations, "categories": [category]},
            )
        return files
