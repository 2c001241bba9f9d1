"""Annotator: run pose, depth and normal predictors over a folder or a COCO image list, resumably and atomically.

Layout of an output folder (`<key>` is the predictor's name, by default its task):

    failures.json                    every input that could not be annotated: [{file, reason[, models]}]
    <pose key>/results.json          COCO keypoint results (image_id, category_id 1, keypoints, score, bbox)
    <pose key>/annotations.json      the same people as a COCO keypoint annotation file (with the image list)
    <pose key>/<stem>_vis.png        skeleton overlays; <pose key>/controlnet/<stem>.png|.json on request
    <dense key>/<stem>.png|.npy|_vis.png   16-bit depth or RGB normals, float32 array, colour picture
    .annotate/                       resume state: lock, per-model settings and one small JSON record per image
                                     (records/<sha256 of the file name>.json, in 256 sub-folders)

Why the outputs are byte-identical however often a run is killed and restarted:
- every file is written through a temp file and a rename (`zoo.utils.files.atomic_open`), and an image's record is
  written after its outputs, so a record means "all outputs of this image exist and are complete";
- batches are fixed chunks of the sorted image list, and a batch is always recomputed whole, because the models'
  float results depend (in the last bits) on which images share a batch;
- the merged files are rebuilt from the records at the end, sorted, with rounded floats, as canonical JSON.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from zoo.data.images import ImageLoadError, load_rgb
from zoo.utils.files import atomic_write_json, safe_join, sha256_file

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
STATE_DIR = ".annotate"
FAILURES_FILE = "failures.json"
RESULTS_FILE = "results.json"
ANNOTATIONS_FILE = "annotations.json"
# Bigger images are reported instead of decoded: a 64-MP photo is already ~0.8 GB as float32 RGB, and the models
# work at a bounded resolution anyway (Lotus: processing_resolution on the long side; pose: fixed-size crops).
DEFAULT_MAX_PIXELS = 8192 * 8192
# Rounding makes the JSON independent of float noise below what a keypoint or score can mean.
COORD_DECIMALS = 2
SCORE_DECIMALS = 4
KEYPOINT_SCORE_THR = 0.2  # mmpose's instance rescoring threshold ("bbox_keypoint" score mode)
VISIBLE_SCORE_THR = 0.3  # a keypoint above this is "visible" (v=2) in the annotation file and drawn in overlays
# atomic_open's temp files: "." + name + "." + mkstemp's 8 random characters + ".tmp".
_TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


class AnnotationError(RuntimeError):
    """The run cannot start or finish (state from other settings, another run holding the folder, ...)."""


@dataclass(frozen=True)
class ImageItem:
    """One input image: its COCO id, name relative to the image root, file and output stem."""

    image_id: int
    file_name: str  # POSIX path relative to the root; the COCO file_name
    path: Path | None  # None when the name was refused (escapes the root)
    stem: str  # output name without extension, relative, POSIX
    error: str | None = None  # why it cannot be read, known before loading


@dataclass
class LoadedBatch:
    """A batch of images as the dataset yields it: arrays for the readable ones, reasons for the others."""

    items: list[ImageItem]
    images: list[np.ndarray | None]  # float32 [H, W, 3] in [0, 1]
    errors: list[str | None]


@dataclass
class AnnotationSummary:
    """What a run did: image counts, and how many image-model predictions were computed (not reused) now."""

    images: int
    annotated: int  # images every model annotated
    failed: int  # images with at least one failure
    computed: int | None = None  # image-model predictions run now (None: not counted)
    files: dict[str, str] = field(default_factory=dict)  # merged file name -> path


# ---------------------------------------------------------------------------------------------------- inputs
def _output_stems(file_names: Sequence[str]) -> list[str]:
    """Output stems (file name minus suffix); names that would share a stem keep their suffix as "_ext"."""
    plain = [PurePosixPath(name).with_suffix("").as_posix() for name in file_names]
    counts: dict[str, int] = {}
    for stem in plain:
        counts[stem] = counts.get(stem, 0) + 1
    return [
        stem if counts[stem] == 1 else f"{stem}_{PurePosixPath(name).suffix.lstrip('.')}"
        for stem, name in zip(plain, file_names, strict=True)
    ]


def list_folder(folder: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[ImageItem]:
    """Images under `folder` (recursive, by extension, hidden entries skipped), sorted by relative path; ids 1..N."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    names = []
    for directory, subdirs, files in os.walk(root):
        # The output folder may sit inside the input folder; its pictures are not inputs.
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and (Path(directory, d).resolve() != skip)]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                names.append(Path(directory, name).relative_to(root).as_posix())
    names.sort()
    # Ids follow the sorted names so that the same folder always gets the same ids.
    return [
        ImageItem(index + 1, name, root / name, stem)
        for index, (name, stem) in enumerate(zip(names, _output_stems(names), strict=True))
    ]


def list_coco(coco_file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[ImageItem]:
    """The images of a COCO file (`images[].id`, `.file_name`) under `image_root` (default: the file's folder)."""
    coco_file = Path(coco_file)
    data = json.loads(coco_file.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{coco_file}: expected a COCO dict with an 'images' list")
    root = Path(image_root) if image_root is not None else coco_file.parent
    entries: dict[int, str] = {}
    for index, image in enumerate(data["images"]):
        where = f"{coco_file}: images[{index}]"
        if not isinstance(image, dict) or not isinstance(image.get("id"), int):
            raise ValueError(f"{where}: expected an object with an integer 'id'")
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            raise ValueError(f"{where}: 'file_name' must be a non-empty string")
        if image["id"] in entries:
            raise ValueError(f"{where}: duplicate image id {image['id']}")
        entries[image["id"]] = image["file_name"].replace("\\", "/")
    names = [entries[i] for i in sorted(entries)]
    if len(set(names)) != len(names):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise ValueError(f"{coco_file}: file_name {duplicate!r} appears under two image ids")
    items = []
    for (image_id, name), stem in zip(sorted(entries.items()), _output_stems(names), strict=True):
        try:
            items.append(ImageItem(image_id, name, safe_join(root, name), stem))
        except ValueError as error:  # a name escaping the root is one bad entry, not a reason to stop
            items.append(ImageItem(image_id, name, None, PurePosixPath(name).name, error=str(error)))
    return items


def list_inputs(inputs: str | os.PathLike, image_root: str | os.PathLike | None = None,
                exclude: str | os.PathLike | None = None) -> list[ImageItem]:
    """A folder of images, or a COCO JSON file of images under `image_root`."""
    path = Path(inputs)
    if path.is_dir():
        if image_root is not None:
            raise ValueError("image_root is only for a COCO image list; a folder is its own root")
        return list_folder(path, exclude)
    if path.is_file() and path.suffix.lower() == ".json":
        return list_coco(path, image_root)
    raise FileNotFoundError(f"{path}: expected a folder of images or a COCO .json image list")


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as float32 RGB [H, W, 3] in [0, 1] (EXIF orientation applied; gray, RGBA, 16-bit converted).

    Raises ImageLoadError for unreadable files and for images above `max_pixels`, checked from the header before
    anything is decoded.
    """
    size = None
    try:
        with Image.open(path) as probe:  # lazy: reads the header only
            size = probe.size
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{path}: image too large ({error})") from error
    except Exception:  # noqa: BLE001 - read_image_file below names the exact problem
        pass
    if size is not None and max_pixels is not None and size[0] * size[1] > max_pixels:
        raise ImageLoadError(
            f"{path}: image too large ({size[0]}x{size[1]} is above max_pixels={max_pixels}); "
            "raise max_pixels to annotate it at the models' bounded processing resolution"
        )
    return load_rgb(path)


def _reason(error: BaseException, path: Path | None) -> str:
    """A failure reason without the file's absolute path, so that failures.json does not depend on where data lives."""
    text = str(error)
    if path is not None and text.startswith(f"{path}: "):
        text = text[len(f"{path}: "):]
    return text if isinstance(error, (ImageLoadError, ValueError)) else f"{type(error).__name__}: {text}"


class BatchDataset(Dataset):
    """Fixed batches of images, loaded in DataLoader workers; a bad file becomes a reason, not an error."""

    def __init__(self, batches: Sequence[Sequence[ImageItem]], max_pixels: int | None) -> None:
        self.batches = [list(items) for items in batches]
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, position: int) -> LoadedBatch:
        items = self.batches[position]
        images: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for item in items:
            image, error = None, item.error
            if error is None:
                try:
                    image = load_image(item.path, self.max_pixels)
                except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
                    error = _reason(exc, item.path)
            images.append(image)
            errors.append(error)
        return LoadedBatch(items, images, errors)


# ---------------------------------------------------------------------------------------------------- tasks
def _rounded(values: np.ndarray, decimals: int) -> list:
    """Nested lists of Python floats rounded to `decimals` (-0.0 written as 0.0 for stable bytes)."""
    return (np.round(np.asarray(values, dtype=np.float64), decimals) + 0.0).tolist()


class _Task(ABC):
    """How the Annotator drives one predictor: predict a batch, write per-image files, merge at the end."""

    kind = ""

    def __init__(self, key: str, predictor: Any, out_dir: Path) -> None:
        self.key, self.predictor, self.out_dir = key, predictor, out_dir / key

    def settings(self) -> dict[str, Any]:
        """Everything the outputs depend on besides the images and weights; a resumed run must match it."""
        return {"task": self.kind, "predictor": type(self.predictor).__name__}

    @abstractmethod
    def predict(self, images: list[np.ndarray], items: list[ImageItem], write: list[bool]) -> list[dict[str, Any]]:
        """Predict a batch and write the files of the images marked in `write`; return each image's record payload."""

    def merge(self, records: list[tuple[ImageItem, dict[str, Any]]]) -> dict[str, Path]:
        """Write the task's merged files from all records; return them by name."""
        return {}


class _DenseTask(_Task):
    """Lotus depth or normals: `<stem>.png`, `.npy` and `_vis.png` per image through the predictor's `save`."""

    def __init__(self, key: str, predictor: Any, out_dir: Path, processing_resolution: int | None) -> None:
        super().__init__(key, predictor, out_dir)
        self.kind = predictor.task
        self.processing_resolution = processing_resolution

    def settings(self) -> dict[str, Any]:
        """Task settings plus the processing resolution."""
        return {**super().settings(), "processing_resolution": self.processing_resolution,
                "disparity": bool(getattr(self.predictor, "disparity", False))}

    def predict(self, images: list[np.ndarray], items: list[ImageItem], write: list[bool]) -> list[dict[str, Any]]:
        """One predictor call for the batch, then the three files of each image to write."""
        # Generative (Lotus-G) noise is drawn from a generator seeded by the batch's names: reruns draw the same.
        seed = int.from_bytes(hashlib.sha256("\n".join(i.file_name for i in items).encode()).digest()[:8], "little")
        generator = torch.Generator(device=self.predictor.backbone.device).manual_seed(seed)
        output = self.predictor(images, processing_resolution=self.processing_resolution,
                                batch_size=len(images), generator=generator, output_type="np")
        payloads = []
        for item, prediction, wanted in zip(items, output.prediction, write, strict=True):
            if wanted:
                self.predictor.save(prediction, safe_join(self.out_dir, item.stem))
            payloads.append({})

        return payloads


class _PoseTask(_Task):
    """Top-down pose: people per image in the records; COCO results and annotation files at the end."""

    kind = "pose"

    def __init__(
        self,
        key: str,
        predictor: Any,
        out_dir: Path,
        box_source: str,
        det_file: str | os.PathLike | None,
        flip_test: bool,
        visualize: bool,
        controlnet: bool,
        coco_annotations: bool,
    ) -> None:
        from zoo.inference.pose import BOX_SOURCES, detection_boxes, hog_person_boxes

        super().__init__(key, predictor, out_dir)
        if det_file is None and box_source not in BOX_SOURCES:
            raise ValueError(f"box_source must be one of {BOX_SOURCES} or a det_file be given; got {box_source!r}")
        if det_file is None and box_source == "hog":
            try:  # fail now, not after the first batch, when this OpenCV has no HOG people detector
                hog_person_boxes(np.zeros((64, 32, 3), dtype=np.uint8))
            except RuntimeError as error:
                raise ValueError(str(error)) from error
        self.box_source, self.flip_test = box_source, flip_test
        self.visualize, self.controlnet, self.coco_annotations = visualize, controlnet, coco_annotations
        self.det_file = Path(det_file) if det_file is not None else None
        # Parsed once here (a COCO detection file can be large), not per batch: image id -> (boxes, scores).
        self.detections: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if self.det_file is not None:
            entries = json.loads(self.det_file.read_text())
            if not isinstance(entries, list) or not all(isinstance(e, dict) and "image_id" in e for e in entries):
                raise ValueError(f"{det_file}: expected a COCO detection results list of {{image_id, bbox, ...}}")
            ids = sorted({int(e["image_id"]) for e in entries})
            self.detections = dict(zip(ids, zip(*detection_boxes(self.det_file, ids), strict=True), strict=True))

    def settings(self) -> dict[str, Any]:
        """Task settings plus the box source (with the detection file's hash) and flip test."""
        return {
            **super().settings(),
            "box_source": "det_file" if self.det_file is not None else self.box_source,
            "det_file_sha256": sha256_file(self.det_file) if self.det_file is not None else None,
            "flip_test": self.flip_test, "visualize": self.visualize, "controlnet": self.controlnet,
        }

    def predict(self, images: list[np.ndarray], items: list[ImageItem], write: list[bool]) -> list[dict[str, Any]]:
        """One predictor call for the batch (all people's crops pooled); overlays and ControlNet files per image."""
        kwargs: dict[str, Any] = {"box_source": self.box_source}
        if self.det_file is not None:
            none = (np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32))
            pairs = [self.detections.get(item.image_id, none) for item in items]
            kwargs["boxes"], kwargs["box_scores"] = [b for b, _ in pairs], [s for _, s in pairs]
        output = self.predictor(images, flip_test=self.flip_test, batch_size=max(len(images), 1), **kwargs)
        payloads = []
        for index, (item, image) in enumerate(zip(items, images, strict=True)):
            people = []
            for points, scores, box, box_score in zip(output.keypoints[index], output.scores[index],
                                                      output.boxes[index], output.box_scores[index], strict=True):
                confident = scores[scores > KEYPOINT_SCORE_THR]
                score = float(box_score) * (float(confident.mean()) if confident.size else 0.0)
                people.append({
                    "keypoints": _rounded(points, COORD_DECIMALS),  # [K, 2]
                    "keypoint_scores": _rounded(scores, SCORE_DECIMALS),  # [K]
                    "score": _rounded(score, SCORE_DECIMALS),
                    "bbox": _rounded([box[0], box[1], box[2] - box[0], box[3] - box[1]], COORD_DECIMALS),
                })
            payload = {"people": people}
            if write[index]:
                # Pictures are drawn from the rounded numbers, so they match what results.json says.
                self._write_pictures(item, image, payload)
            payloads.append(payload)
        return payloads

    def _arrays(self, payload: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints [N, K, 2] and scores [N, K] of a record."""
        k = self.predictor.metainfo.num_keypoints
        people = payload["people"]
        points = np.asarray([p["keypoints"] for p in people], dtype=np.float64).reshape(len(people), k, 2)
        scores = np.asarray([p["keypoint_scores"] for p in people], dtype=np.float64).reshape(len(people), k)
        return points, scores

    def _write_pictures(self, item: ImageItem, image: np.ndarray, payload: dict[str, Any]) -> None:
        from zoo.utils.files import atomic_open

        points, scores = self._arrays(payload)
        height, width = image.shape[:2]
        if self.visualize:
            from zoo.visualize import draw_skeleton

            rgb = np.round(image * 255.0).astype(np.uint8)
            overlay = draw_skeleton(rgb, points, scores, self.predictor.metainfo, threshold=VISIBLE_SCORE_THR)
            with atomic_open(safe_join(self.out_dir, item.stem + "_vis.png")) as handle:
                Image.fromarray(overlay).save(handle, format="PNG")
        if self.controlnet:
            from zoo.export.controlnet import ImagePoses, export_image, write_controlnet_pose

            people = [np.concatenate([p, s[:, None]], axis=1) for p, s in zip(points, scores, strict=True)]
            poses = ImagePoses(item.image_id, item.file_name, width, height, people)
            write_controlnet_pose(self.out_dir / "controlnet", replace(export_image(poses), stem=item.stem))

    def merge(self, records: list[tuple[ImageItem, dict[str, Any]]]) -> dict[str, Path]:
        """results.json (COCO results) and, if asked, annotations.json (images + people as COCO annotations)."""
        results, images, annotations = [], [], []
        for item, record in sorted(records, key=lambda pair: pair[0].image_id):
            images.append({"id": item.image_id, "file_name": item.file_name,
                           "width": record["width"], "height": record["height"]})
            points, scores = self._arrays(record)
            for person, p, s in zip(record["people"], points, scores, strict=True):
                triplets = np.concatenate([p, s[:, None]], axis=1)  # [K, 3] = x, y, score
                results.append({"image_id": item.image_id, "category_id": 1, "keypoints": triplets.ravel().tolist(),
                                "score": person["score"], "bbox": person["bbox"]})
                visible = s > VISIBLE_SCORE_THR
                # COCO ground truth: unlabelled points are (0, 0, 0), labelled ones (x, y, 2).
                labelled = np.where(visible[:, None], np.concatenate([p, np.full_like(s, 2.0)[:, None]], 1), 0.0)
                x, y, w, h = person["bbox"]
                annotations.append({
                    "id": len(annotations) + 1, "image_id": item.image_id, "category_id": 1, "iscrowd": 0,
                    "keypoints": (labelled + 0.0).ravel().tolist(), "num_keypoints": int(visible.sum()),
                    "bbox": person["bbox"], "area": _rounded(w * h, COORD_DECIMALS), "score": person["score"],
                })
        files = {RESULTS_FILE: self.out_dir / RESULTS_FILE}
        atomic_write_json(files[RESULTS_FILE], results)
        if self.coco_annotations:
            metainfo = self.predictor.metainfo
            category = {"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(metainfo.keypoint_names),
                        "skeleton": [[a + 1, b + 1] for a, b in metainfo.skeleton_links]}  # COCO links are 1-based
            files[ANNOTATIONS_FILE] = self.out_dir / ANNOTATIONS_FILE
            atomic_write_json(files[ANNOTATIONS_FILE],
                              {"images": images, "annotations": annotations, "categories": [category]})
        return files


def predictor_task(predictor: Any) -> str:
    """"pose", "depth" or "normals" from what the predictor offers."""
    task = getattr(predictor, "task", None)
    if task in ("depth", "normals"):
        return task
    if hasattr(predictor, "metainfo"):
        return "pose"
    raise TypeError(f"{type(predictor).__name__} is neither a pose predictor (metainfo) nor a depth/normals "
                    "predictor (task)")


# ---------------------------------------------------------------------------------------------------- annotator
class Annotator:
    """Annotate many images with any set of predictors (pose, depth, normals), batched, atomically and resumably.

    `predictors` maps output names to predictors (`zoo.load(...)`); a list is keyed by task ("pose", "depth",
    "normals"). `box_source` is "whole_image" or "hog", or `det_file` gives a COCO detection results file.
    Images above `max_pixels` are reported as too large (None: only the loader's decompression-bomb limit).
    `resume=False` forgets previous records (outputs are overwritten as images are redone).
    """

    def __init__(
        self,
        predictors: Mapping[str, Any] | Sequence[Any],
        out_dir: str | os.PathLike,
        batch_size: int = 4,
        processing_resolution: int | None = None,
        box_source: str = "whole_image",
        det_file: str | os.PathLike | None = None,
        flip_test: bool = False,
        visualize: bool = True,
        controlnet: bool = False,
        coco_annotations: bool = True,
        resume: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        num_workers: int = 0,
        progress: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if not isinstance(predictors, Mapping):
            kinds = [predictor_task(p) for p in predictors]
            if len(set(kinds)) != len(kinds):
                raise ValueError(f"two predictors share a task ({kinds}); pass a dict of names to predictors")
            predictors = dict(zip(kinds, predictors, strict=True))
        if not predictors:
            raise ValueError("no predictors given")
        self.out_dir = Path(out_dir)
        self.batch_size, self.resume, self.max_pixels = batch_size, resume, max_pixels
        self.num_workers, self.progress = num_workers, progress
        self.tasks: dict[str, _Task] = {}
        for key, predictor in predictors.items():
            if not key or key.startswith(".") or "/" in key or "\\" in key:
                raise ValueError(f"predictor name {key!r} must be a plain folder name")
            if predictor_task(predictor) == "pose":
                self.tasks[key] = _PoseTask(key, predictor, self.out_dir, box_source, det_file, flip_test,
                                            visualize, controlnet, coco_annotations)
            else:
                self.tasks[key] = _DenseTask(key, predictor, self.out_dir, processing_resolution)
        self._lock: TextIO | None = None
        self.computed = 0  # image-model predictions run by this process

    @property
    def predictors(self) -> dict[str, Any]:
        """The predictors by output name."""
        return {key: task.predictor for key, task in self.tasks.items()}

    # ------------------------------------------------------------------ state
    def record_path(self, key: str, item: ImageItem) -> Path:
        """Where predictor `key`'s done-record of `item` lives (its existence means: all its files are complete)."""
        # Named by a hash of the file name: any COCO file_name (even one refused as escaping the root) gets a safe,
        # distinct record; two-character folders keep directories small for millions of images.
        digest = hashlib.sha256(item.file_name.encode("utf-8")).hexdigest()
        return self.out_dir / STATE_DIR / key / "records" / digest[:2] / f"{digest}.json"

    def _settings(self, key: str) -> dict[str, Any]:
        return {**self.tasks[key].settings(), "batch_size": self.batch_size, "max_pixels": self.max_pixels}

    def list_inputs(self, inputs: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[ImageItem]:
        """The run's images (a folder, or a COCO image list under `image_root`), never the output folder's files."""
        return list_inputs(inputs, image_root, exclude=self.out_dir)

    def batches(self, items: Sequence[ImageItem]) -> list[list[ImageItem]]:
        """The fixed batches: consecutive chunks of the sorted image list."""
        return [list(items[start : start + self.batch_size]) for start in range(0, len(items), self.batch_size)]

    def pending(self, batch: Sequence[ImageItem]) -> list[str]:
        """Names of the predictors that still lack a record for some image of `batch`."""
        return [key for key in self.tasks if not all(self.record_path(key, item).is_file() for item in batch)]

    def prepare(self, items: Sequence[ImageItem]) -> list[list[ImageItem]]:
        """Lock the output folder, check or reset resume state, drop stale temp files; return the batches to run.

        Call once per run, in one process, before any batch is processed.
        """
        state = self.out_dir / STATE_DIR
        self.lock()
        # Temp files of a killed run: nobody else writes here (we hold the lock), so they are garbage.
        for directory, _, files in os.walk(self.out_dir):
            for name in files:
                if _TEMP_FILE.match(name):
                    Path(directory, name).unlink()
        for key in self.tasks:
            settings_path = state / key / "settings.json"
            if not self.resume and (state / key).exists():
                shutil.rmtree(state / key)
            wanted = self._settings(key)
            if settings_path.is_file():
                found = json.loads(settings_path.read_text())
                if found != wanted:
                    changes = ", ".join(f"{name}: {found.get(name)!r} -> {wanted.get(name)!r}"
                                        for name in sorted(set(found) | set(wanted))
                                        if found.get(name) != wanted.get(name))
                    raise AnnotationError(
                        f"{self.out_dir}: the records of {key!r} were made with other settings ({changes}); resume "
                        "with the same settings, or use resume=False / --no-resume to redo them"
                    )
            else:
                atomic_write_json(settings_path, wanted)
        return [batch for batch in self.batches(items) if self.pending(batch)]

    def lock(self) -> None:
        """Take the output folder's lock (until `release` or process exit); fails if another run holds it."""
        if self._lock is not None:
            return
        (self.out_dir / STATE_DIR).mkdir(parents=True, exist_ok=True)
        # Held open for the whole run; the OS drops the lock when the process ends, even by SIGKILL.
        handle = open(self.out_dir / STATE_DIR / "lock", "w")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise AnnotationError(f"{self.out_dir} is being written by another annotation run") from None
        self._lock = handle

    def release(self) -> None:
        """Release the output folder's lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ work
    def process_batch(self, batch: LoadedBatch) -> int:
        """Run every predictor that still lacks records for this batch and write outputs, then records.

        The whole batch is predicted even if some of its images are done, so that each image is always computed in
        the same company (bit-identical floats); records that exist are left untouched. Returns predictions run.
        """
        computed = 0
        for key in self.pending(batch.items):
            task = self.tasks[key]
            records = {
                i: {"file_name": item.file_name, "error": error}
                for i, (item, error) in enumerate(zip(batch.items, batch.errors, strict=True)) if error is not None
            }
            good = [i for i in range(len(batch.items)) if i not in records]
            if good:
                write = [not self.record_path(key, batch.items[i]).is_file() for i in good]
                payloads = self._predict(task, batch, good, write)
                computed += len(good)
                for i, payload in zip(good, payloads, strict=True):
                    height, width = batch.images[i].shape[:2]
                    records[i] = {"file_name": batch.items[i].file_name, "height": height, "width": width, **payload}
            for i, item in enumerate(batch.items):
                path = self.record_path(key, item)
                if not path.is_file():  # a done image's record (and files) are never rewritten
                    atomic_write_json(path, records[i])
        self.computed += computed
        return computed

    def _predict(self, task: _Task, batch: LoadedBatch, good: list[int], write: list[bool]) -> list[dict[str, Any]]:
        """Payloads of the readable images; if the batch fails on bad input, each image alone, failures recorded."""
        items = [batch.items[i] for i in good]
        try:
            return task.predict([batch.images[i] for i in good], items, write)
        except (ValueError, ImageLoadError):
            # An input the model refuses (e.g. a size it cannot process). Other errors (out of memory, a missing
            # detector) would hit every image alike: they stop the run, which can then be resumed.
            payloads = []
            for i, item, wanted in zip(good, items, write, strict=True):
                try:
                    payloads.extend(task.predict([batch.images[i]], [item], [wanted]))
                except (ValueError, ImageLoadError) as error:
                    payloads.append({"error": _reason(error, item.path)})
            return payloads

    def dataloader(self, batches: Sequence[Sequence[ImageItem]], sampler: Any = None) -> DataLoader:
        """A DataLoader that yields one LoadedBatch per fixed batch (decoding in `num_workers` workers)."""
        return DataLoader(BatchDataset(batches, self.max_pixels), batch_size=None, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers, collate_fn=_identity)

    def merge(self, items: Sequence[ImageItem]) -> AnnotationSummary:
        """Build failures.json and each task's merged files from the records of all images."""
        failures: dict[tuple[str, str], set[str]] = {}
        done: dict[str, list[tuple[ImageItem, dict[str, Any]]]] = {key: [] for key in self.tasks}
        failed_images = set()
        for item in items:
            for key in self.tasks:
                path = self.record_path(key, item)
                if not path.is_file():
                    raise AnnotationError(f"{item.file_name}: no record for {key!r}; the run is incomplete")
                record = json.loads(path.read_text())
                if record.get("error") is not None:
                    failures.setdefault((item.file_name, record["error"]), set()).add(key)
                    failed_images.add(item.file_name)
                else:
                    done[key].append((item, record))
        files: dict[str, str] = {}
        for key, task in self.tasks.items():
            for name, path in task.merge(done[key]).items():
                files[f"{key}/{name}"] = str(path)
        # A file no model could read is one entry; a model's own refusal names the model.
        entries = []
        for (file_name, reason), keys in sorted(failures.items()):
            entry = {"file": file_name, "reason": reason}
            if len(keys) < len(self.tasks):
                entry["models"] = sorted(keys)
            entries.append(entry)
        atomic_write_json(self.out_dir / FAILURES_FILE, entries)
        files[FAILURES_FILE] = str(self.out_dir / FAILURES_FILE)
        return AnnotationSummary(images=len(items), annotated=len(items) - len(failed_images),
                                 failed=len(failed_images), files=files)

    def run(self, inputs: str | os.PathLike, image_root: str | os.PathLike | None = None) -> AnnotationSummary:
        """Annotate a folder (recursive) or a COCO image list in this process, with a progress bar."""
        items = self.list_inputs(inputs, image_root)
        try:
            todo = self.prepare(items)
            remaining = sum(len(batch) for batch in todo)
            before = self.computed
            with tqdm(total=len(items), initial=len(items) - remaining, unit="image", desc="annotate",
                      disable=not self.progress) as bar:
                for batch in self.dataloader(todo):
                    self.process_batch(batch)
                    bar.update(len(batch.items))
            summary = self.merge(items)
        finally:
            self.release()
        summary.computed = self.computed - before
        return summary


def _identity(batch: LoadedBatch) -> LoadedBatch:
    """DataLoader collate for already-batched items (module-level so that workers can pickle it)."""
    return batch
