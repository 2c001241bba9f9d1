"""PoseTrack18 / PoseTrack21 readers and the top-down clip dataset of video pose (DiffPose, DCPose style).

Both layouts hold the same JSON schema (`images`, `annotations`, `categories`): the official release has one
file per video (`annotations/val/003418_mpii_test.json`, every frame of the video listed, `is_labeled` on the
annotated ones, `ignore_regions_x/y` polygons, `bbox_head` per person) and mmpose/DCPose merge them into one
COCO-style file (`posetrack_val.json`, often only the labelled frames). PoseTrack21 adds `person_id` and
`has_labeled_person`. Keypoints use the 17-slot PoseTrack order (`zoo/data/metainfo/posetrack18.json`):
head_bottom and head_top sit in the COCO eye slots and the ears are never annotated.

A clip is the key frame t and its neighbours t + offset (default -1, 0, +1); a neighbour past either end of
the video repeats the nearest frame, as FAMI-Pose pads with the key frame. One enlarged person box (x1.25,
aspect fixed) of the key frame crops every frame through the shared affine path of `zoo.data.transforms`, and
one augmentation draw covers the whole clip, so all frames of an item share the same geometry and colours.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.data.images import load_rgb_uint8
from zoo.data.metainfo import PoseMetainfo, load_metainfo
from zoo.data.transforms import BBOX_PADDING, TopDownAugmentation, TopDownTransform, bbox_xywh_to_xyxy
from zoo.data.video import FRAME_SUFFIXES, VideoFrames, open_video
from zoo.utils.files import read_json_file as read_strict_json
from zoo.utils.files import safe_join

NUM_KEYPOINTS = 17
DEFAULT_OFFSETS = (-1, 0, 1)
# DCPose / FAMI-Pose keep person detections of at least this score on PoseTrack val.
DETECTION_SCORE_THR = 0.2
# No frame is wider or taller than this (the JPEG limit); a record claiming more is an error.
MAX_FRAME_SIDE = 65_535


@dataclass(frozen=True)
class PoseTrackImage:
    """One frame entry of a PoseTrack annotation file."""

    image_id: int
    file_name: str  # as written in the file, relative to the dataset root
    video: str  # the frame folder's name, e.g. "003418_mpii_test"
    frame_index: int  # 0-based index in the video, from the file name (PoseTrack18/21: 000000.jpg is frame 0)
    num_frames: int | None  # `nframes`; None when the file does not say
    is_labeled: bool
    width: int | None
    height: int | None
    ignore_regions: tuple[np.ndarray, ...]  # polygons [n, 2] (x, y) in image pixels
    source: Path  # the annotation file, for error messages


@dataclass(frozen=True)
class PoseTrackPerson:
    """One annotated person of one frame, keypoints in the 17-slot PoseTrack order."""

    annotation_id: int
    image_id: int
    track_id: int
    person_id: int | None  # PoseTrack21 only
    bbox: np.ndarray  # [4] float64 (x, y, w, h) as written
    bbox_head: np.ndarray | None  # [4] float64 (x, y, w, h); None only for persons without keypoints
    keypoints: np.ndarray  # [17, 3] float64 (x, y, v)

    @property
    def num_labelled(self) -> int:
        """Number of annotated keypoints (v > 0)."""
        return int(np.count_nonzero(self.keypoints[:, 2] > 0))


@dataclass(frozen=True)
class PoseTrackAnnotations:
    """The frames and persons of one PoseTrack annotation file (one video, or many in the merged layout)."""

    path: Path
    images: list[PoseTrackImage]  # in file order
    persons: dict[int, list[PoseTrackPerson]]  # image id -> persons in file order
    categories: list[dict[str, Any]]


def read_json_file(path: str | os.PathLike, what: str) -> Any:
    """Parse a JSON file strictly (zoo.utils.files.read_json_file): FileNotFoundError when it is missing,
    ValueError naming the file for anything else (not a regular file, malformed, NaN, nested too deeply)."""
    return read_strict_json(path, what)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # `true` is no id or count


def _int(record: dict, key: str, where: str, default: Any = ...) -> Any:
    """An integer field (ids, counts, sizes); ValueError naming the record and the field otherwise."""
    if key not in record or (record[key] is None and default is not ...):
        if default is ...:
            raise ValueError(f"{where} has no {key!r}")
        return default
    value = record[key]
    if not _is_int(value):
        raise ValueError(f"{where}: {key!r} must be an integer; got {value!r}")
    return value


def _numbers(values: Any, where: str, length: int | None = None) -> np.ndarray:
    """A list of finite JSON numbers as float64; ValueError naming the field otherwise."""
    if not isinstance(values, list):
        raise ValueError(f"{where} must be a list of numbers; got {type(values).__name__}")
    if length is not None and len(values) != length:
        raise ValueError(f"{where} has {len(values)} values; expected {length}")
    for index, value in enumerate(values):
        # "367" is not a coordinate and `true` not a number, though numpy would convert both.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}[{index}] must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where}[{index}] is {value}; numbers here must be finite")
    return np.asarray(values, dtype=np.float64)


def _ignore_regions(path: Path, image: dict) -> tuple[np.ndarray, ...]:
    xs, ys = image.get("ignore_regions_x") or [], image.get("ignore_regions_y") or []
    where = f"{path}: image {image.get('id')}"
    if not isinstance(xs, list) or not isinstance(ys, list):
        raise ValueError(f"{where}: ignore_regions_x and ignore_regions_y must be lists of polygons")
    if len(xs) != len(ys):
        raise ValueError(f"{where} has {len(xs)} ignore_regions_x but {len(ys)} ignore_regions_y")
    regions = []
    for index, (x, y) in enumerate(zip(xs, ys, strict=True)):
        x = _numbers(x, f"{where} ignore_regions_x[{index}]")
        y = _numbers(y, f"{where} ignore_regions_y[{index}]")
        if len(x) != len(y):
            raise ValueError(f"{where} ignore region {index} has {len(x)} x and {len(y)} y values")
        regions.append(np.stack([x, y], axis=-1))
    return tuple(regions)


def _frame_index(path: Path, image: dict) -> int:
    stem = Path(str(image["file_name"])).stem
    if not stem.isdigit():
        raise ValueError(
            f"{path}: image {image.get('id')} file name {image['file_name']!r} does not end in a frame number"
        )
    return int(stem)


def _check_categories(path: Path, categories: list[dict]) -> None:
    names = load_metainfo("posetrack18").keypoint_names
    for category in categories:
        found = category.get("keypoints")
        if found is not None and tuple(found) != names:
            raise ValueError(
                f"{path}: category {category.get('id')} lists keypoints {found}; expected the 17-slot "
                f"PoseTrack "
                f"order {list(names)}"
            )


def parse_posetrack_person(path: Path, ann: dict) -> PoseTrackPerson:
    """Validate one annotation record (17 x 3 finite keypoint values, a 4-value box, a head box where
    keypoints are labelled, integer ids); ValueError naming the file, the annotation and the field otherwise.
    """
    if not isinstance(ann, dict):
        raise ValueError(f"{path}: an annotation record must be a JSON object; got {ann!r:.80}")
    record = f"{path}: annotation {ann.get('id')} (image {ann.get('image_id')})"
    raw = ann.get("keypoints")
    if raw is None:  # PoseTrack21 box-only persons
        raw = [0.0] * (3 * NUM_KEYPOINTS)
    if isinstance(raw, list) and len(raw) != 3 * NUM_KEYPOINTS:
        raise ValueError(
            f"{record} has {len(raw)} keypoint values; expected {3 * NUM_KEYPOINTS} ({NUM_KEYPOINTS} x, y, v)"
        )
    keypoints = _numbers(raw, f"{record} keypoints", 3 * NUM_KEYPOINTS).reshape(NUM_KEYPOINTS, 3)
    head = ann.get("bbox_head")
    if head is None and np.count_nonzero(keypoints[:, 2] > 0):
        # poseval divides every keypoint distance by this box's size: without it the person cannot be scored.
        raise ValueError(f"{record} has labelled keypoints but no 'bbox_head'")
    if isinstance(head, list) and len(head) != 4:
        raise ValueError(f"{record} has a bbox_head of {len(head)} values; expected 4 (x, y, w, h)")
    if not isinstance(ann.get("bbox"), list) or len(ann["bbox"]) != 4:
        raise ValueError(f"{record} has no 4-value 'bbox' (x, y, w, h)")
    person_id = _int(ann, "person_id", record, None)
    return PoseTrackPerson(
        annotation_id=_int(ann, "id", record),
        image_id=_int(ann, "image_id", record),
        track_id=_int(ann, "track_id", record, -1),
        person_id=person_id,
        bbox=_numbers(ann["bbox"], f"{record} bbox", 4),
        bbox_head=None if head is None else _numbers(head, f"{record} bbox_head", 4),
        keypoints=keypoints,
    )


def read_posetrack_annotations(path: str | os.PathLike) -> PoseTrackAnnotations:
    """Read one PoseTrack18/21 annotation file (per-video official or merged COCO-style)."""
    path = Path(path)
    data = read_json_file(path, "PoseTrack annotation file")
    if not isinstance(data, dict) or "images" not in data:
        raise ValueError(f"{path}: not a PoseTrack18/21 file (no 'images' list)")
    categories = data.get("categories", [])
    if not isinstance(categories, list) or not all(isinstance(c, dict) for c in categories):
        raise ValueError(f"{path}: 'categories' must be a list of category objects")
    _check_categories(path, categories)
    if not isinstance(data["images"], list):
        raise ValueError(f"{path}: 'images' must be a list of frame records")
    images = []
    for index, image in enumerate(data["images"]):
        where = f"{path}: images[{index}]"
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            raise ValueError(f"{where} lacks 'id' or 'file_name'")
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise ValueError(f"{where}: 'file_name' must be a non-empty string; got {image['file_name']!r}")
        sizes = {key: _int(image, key, where, None) for key in ("nframes", "width", "height")}
        for key, value in sizes.items():
            if value is not None and not 0 < value <= MAX_FRAME_SIDE * (1 if key != "nframes" else 100):
                raise ValueError(f"{where}: {key!r} = {value} is not a plausible frame {key}")
        file_name = image["file_name"]
        images.append(
            PoseTrackImage(
                image_id=_int(image, "id", where),
                file_name=file_name,
                video=Path(file_name).parent.name,
                frame_index=_frame_index(path, image),
                num_frames=sizes["nframes"],
                is_labeled=bool(image.get("is_labeled", True)),
                width=sizes["width"],
                height=sizes["height"],
                ignore_regions=_ignore_regions(path, image),
                source=path,
            )
        )
    known: dict[int, int] = {}
    for index, image in enumerate(images):
        if known.setdefault(image.image_id, index) != index:
            first = known[image.image_id]
            raise ValueError(f"{path}: images[{index}] repeats image id {image.image_id} of images[{first}]")
    persons: dict[int, list[PoseTrackPerson]] = {image.image_id: [] for image in images}
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise ValueError(f"{path}: 'annotations' must be a list of person records")
    for ann in annotations:
        person = parse_posetrack_person(path, ann)
        if person.image_id not in known:
            raise ValueError(
                f"{path}: annotation {person.annotation_id} refers to unknown image {person.image_id}"
            )
        persons[person.image_id].append(person)
    return PoseTrackAnnotations(path=path, images=images, persons=persons, categories=categories)


def posetrack_annotation_files(path: str | os.PathLike) -> list[Path]:
    """The annotation files of a PoseTrack split: the file itself, or every *.json of a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.json"))
        if not files:
            raise FileNotFoundError(f"annotation folder {path} holds no *.json files")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"PoseTrack annotations {path} do not exist")
    return [path]


def clip_frame_indices(frame_index: int, num_frames: int | None, offsets: Sequence[int]) -> list[int]:
    """Frame indices of the clip around `frame_index`; neighbours past either end repeat the nearest frame."""
    last = (num_frames - 1) if num_frames else None
    indices = []
    for offset in offsets:
        index = max(frame_index + int(offset), 0)
        indices.append(min(index, last) if last is not None else index)
    return indices


def neighbour_file_name(file_name: str, frame_index: int) -> str:
    """File name of frame `frame_index` of the video holding `file_name` (same folder, digits, suffix)."""
    name = Path(file_name)
    return str(name.with_name(f"{frame_index:0{len(name.stem)}d}{name.suffix}"))


@dataclass(frozen=True)
class ClipInstance:
    """One person to predict: key frame, box, keypoints and the ids its prediction is written back with."""

    image: PoseTrackImage
    bbox: np.ndarray  # [4] float32 (x1, y1, x2, y2) in key-frame pixels
    bbox_score: float  # 1.0 for ground-truth boxes
    keypoints: np.ndarray  # [17, 2] float32 key-frame pixels (zeros for detections)
    keypoints_visible: np.ndarray  # [17] float32
    track_id: int  # -1 for detections
    annotation_id: int  # annotation id, or the running index of a detection


def _gt_instances(files: list[PoseTrackAnnotations], labelled_only: bool) -> list[ClipInstance]:
    instances = []
    for ann_file in files:
        for image in ann_file.images:
            if labelled_only and not image.is_labeled:
                continue
            for person in ann_file.persons[image.image_id]:
                bbox = _clipped_box(bbox_xywh_to_xyxy(person.bbox), image)
                # mmpose's top-down filter: a non-empty box with at least one labelled keypoint.
                if person.num_labelled == 0 or bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
                    continue
                instances.append(
                    ClipInstance(
                        image=image,
                        bbox=bbox,
                        bbox_score=1.0,
                        keypoints=person.keypoints[:, :2].astype(np.float32),
                        keypoints_visible=(person.keypoints[:, 2] > 0).astype(np.float32),
                        track_id=person.track_id,
                        annotation_id=person.annotation_id,
                    )
                )
    return instances


def _clipped_box(xyxy: np.ndarray, image: PoseTrackImage) -> np.ndarray:
    # mmpose clips GT boxes to the last pixel centre before taking centre and scale.
    if image.width is not None and image.height is not None:
        xyxy = np.clip(xyxy, 0, [image.width - 1, image.height - 1, image.width - 1, image.height - 1])
    return xyxy.astype(np.float32)


def _detection_instances(
    bbox_file: str | os.PathLike, files: list[PoseTrackAnnotations], score_thr: float, labelled_only: bool
) -> list[ClipInstance]:
    detections = read_json_file(bbox_file, "detection file")
    if not isinstance(detections, list):
        raise ValueError(f"{bbox_file}: a detection file holds a list of detections (COCO results format)")
    images = {image.image_id: image for ann_file in files for image in ann_file.images}
    instances = []
    person_index = 0  # counts every person detection so ids stay stable across thresholds (as mmpose)
    for position, det in enumerate(detections):
        where = f"{bbox_file}: detection [{position}]"
        if not isinstance(det, dict):
            raise ValueError(f"{where} must be a JSON object")
        if _int(det, "category_id", where, 1) != 1:
            continue
        index, person_index = person_index, person_index + 1
        score = _numbers([det.get("score")] if "score" in det else None, f"{where} score")[0]
        bbox = _numbers(det.get("bbox"), f"{where} bbox")
        if len(bbox) < 4 or bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"{where}: bbox must be (x, y, w, h) with w, h >= 0; got {det['bbox']}")
        if score < score_thr:
            continue
        image = images.get(_int(det, "image_id", where))
        if image is None:
            raise ValueError(
                f"{bbox_file}: detection {index} refers to image {det['image_id']}, unknown to the "
                "annotation files"
            )
        if labelled_only and not image.is_labeled:
            continue
        instances.append(
            ClipInstance(
                image=image,
                bbox=bbox_xywh_to_xyxy(bbox[:4]).astype(np.float32),
                bbox_score=float(score),
                keypoints=np.zeros((NUM_KEYPOINTS, 2), dtype=np.float32),
                keypoints_visible=np.ones(NUM_KEYPOINTS, dtype=np.float32),
                track_id=-1,
                annotation_id=index,
            )
        )
    return instances


class PoseTrackClipDataset(Dataset):
    """Top-down PoseTrack clips: each item is one person of a labelled key frame with its neighbouring frames.

    Items are `zoo.data.samples.ClipItem` dicts: "frames" [T, 3, h, w] float in [0, 1] (frame order =
    `offsets`), "key_index" (where the offset is 0), "keypoints" [17, 2] (key frame, crop pixels),
    "keypoints_visible" [17], "warp_matrix" [2, 3] float64 (image -> crop, the same for every frame), "flip",
    "rotation", "center" [2], "scale" [2], "bbox" [4] (x1, y1, x2, y2 in the key frame), "bbox_score",
    "image_size" [2] (w, h), "sample_id" (the dataset index, which evaluators key their state by), "image_id",
    "annotation_id", "track_id", "video" (frame folder name), "frame_index", "frame_indices" [T] (after
    clamping at the video's ends).

    `frame_source="files"` reads the neighbours as image files next to the key frame (PoseTrack's layout);
    `frame_source="video"` decodes them from `<frame folder>/<folder name>.mp4` or `<frame folder>.mp4`.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_root: str | os.PathLike,
        input_size: tuple[int, int] = (192, 256),
        offsets: Sequence[int] = DEFAULT_OFFSETS,
        bbox_file: str | os.PathLike | None = None,
        bbox_score_thr: float = DETECTION_SCORE_THR,
        augmentation: TopDownAugmentation | None = None,
        padding: float = BBOX_PADDING,
        labelled_only: bool = True,
        frame_source: str = "files",
        metainfo: str | PoseMetainfo = "posetrack18",
        seed: int | None = None,
    ) -> None:
        """`ann_file`: one annotation file or a folder of per-video files; `input_size`: the crop (w, h)."""
        if 0 not in offsets:
            raise ValueError(f"offsets must contain 0 (the key frame); got {tuple(offsets)}")
        if frame_source not in ("files", "video"):
            raise ValueError(f"frame_source must be 'files' or 'video'; got {frame_source!r}")
        self.metainfo = load_metainfo(metainfo) if isinstance(metainfo, str) else metainfo
        if self.metainfo.num_keypoints != NUM_KEYPOINTS:
            raise ValueError(
                f"PoseTrack clips have {NUM_KEYPOINTS} keypoints; metainfo {self.metainfo.name!r} "
                f"has {self.metainfo.num_keypoints}"
            )
        self.image_root = Path(image_root)
        self.offsets = tuple(int(o) for o in offsets)
        self.frame_source = frame_source
        self.annotations = [read_posetrack_annotations(p) for p in posetrack_annotation_files(ann_file)]
        self.instances = (
            _gt_instances(self.annotations, labelled_only)
            if bbox_file is None
            else _detection_instances(bbox_file, self.annotations, bbox_score_thr, labelled_only)
        )
        for instance in self.instances:  # refuse escaping names before any item loads
            try:
                safe_join(self.image_root, instance.image.file_name)
            except ValueError as error:
                image = instance.image
                raise ValueError(f"{image.source}: image {image.image_id}: {error}") from None
        self.transform = TopDownTransform(
            input_size,
            padding=padding,
            augmentation=augmentation,
            flip_indices=self.metainfo.flip_indices,
            upper_body_ids=self.metainfo.upper_body_ids,
            lower_body_ids=self.metainfo.lower_body_ids,
        )
        self.seed = seed
        self.epoch = 0
        self._videos: dict[Path, VideoFrames] = {}
        self._frame_counts: dict[Path, int] = {}

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw of a seeded dataset (call once per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.instances)

    def _clip_seed(self, index: int) -> int:
        # One integer per (seed, epoch, index); unseeded: OS entropy, so workers never repeat each other.
        entropy = None if self.seed is None else [self.seed, self.epoch, index]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def _num_frames(self, image: PoseTrackImage) -> int:
        if image.num_frames:
            return image.num_frames
        # Without `nframes`, the video ends at the last frame file of the key frame's folder.
        folder = safe_join(self.image_root, image.file_name).parent
        if folder not in self._frame_counts:
            self._frame_counts[folder] = sum(
                1 for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES
            )
        return self._frame_counts[folder]

    def _video(self, image: PoseTrackImage) -> VideoFrames:
        folder = safe_join(self.image_root, image.file_name).parent
        if folder not in self._videos:
            candidates = [folder / f"{folder.name}.mp4", folder.with_suffix(".mp4")]
            found = next((c for c in candidates if c.is_file()), None)
            if found is None:
                raise FileNotFoundError(
                    f"{image.source}: image {image.image_id} needs a video file; none of "
                    f"{', '.join(str(c) for c in candidates)} exists"
                )
            self._videos[folder] = open_video(found)
        return self._videos[folder]

    def _read_frame(self, image: PoseTrackImage, index: int) -> np.ndarray:
        if self.frame_source == "video":
            return self._video(image).read(index)
        path = safe_join(self.image_root, neighbour_file_name(image.file_name, index))
        if not path.is_file():
            raise FileNotFoundError(f"clip frame {index} is missing ({path})")
        return load_rgb_uint8(path)

    def load_frames(self, instance: ClipInstance) -> tuple[list[np.ndarray], list[int]]:
        """The clip's frames (RGB uint8 [H, W, 3] each) and their frame indices, in `offsets` order."""
        image = instance.image
        record = (
            f"{image.source}: annotation {instance.annotation_id} (image {image.image_id}, {image.video})"
        )
        try:
            num_frames = len(self._video(image)) if self.frame_source == "video" else self._num_frames(image)
            indices = clip_frame_indices(image.frame_index, num_frames, self.offsets)
            frames = [self._read_frame(image, index) for index in indices]
        except (OSError, ValueError) as error:  # undecodable video or image, missing file
            raise type(error)(f"{record}: {error}") from error
        sizes = {frame.shape[:2] for frame in frames}
        if len(sizes) != 1:
            raise ValueError(f"{record}: clip frames differ in size {sorted(sizes)}")
        height, width = frames[0].shape[:2]
        if image.width is not None and (width, height) != (image.width, image.height):
            raise ValueError(
                f"{record}: frames are {width}x{height} but the annotation says {image.width}x{image.height}"
            )
        return frames, indices

    def __getitem__(self, index: int) -> dict[str, Any]:
        instance = self.instances[index]
        frames, indices = self.load_frames(instance)
        augmenting = self.transform.augmentation is not None
        seed = self._clip_seed(index) if augmenting else 0
        crops = []
        for frame in frames:
            # A fresh generator with the clip's seed per frame: every frame draws the same box jitter, flip
            # and appearance, so the whole clip shares one augmentation.
            rng = np.random.default_rng(seed) if augmenting else None
            sample = self.transform(frame, instance.bbox, instance.keypoints, instance.keypoints_visible, rng)
            crops.append(sample["image"])  # [h, w, 3] uint8
        geometry = sample["geometry"]
        clip = np.stack(crops).transpose(0, 3, 1, 2)  # [T, 3, h, w]
        image = instance.image
        return {
            "frames": torch.from_numpy(np.ascontiguousarray(clip)).float().div_(255.0),  # [T, 3, h, w]
            "key_index": self.offsets.index(0),
            "keypoints": torch.from_numpy(sample["keypoints"]),  # [17, 2]
            "keypoints_visible": torch.from_numpy(sample["keypoints_visible"]),  # [17]
            "warp_matrix": torch.from_numpy(geometry.matrix()),  # [2, 3] float64
            "flip": geometry.flip,
            "rotation": geometry.rotation,
            "center": torch.tensor(geometry.center, dtype=torch.float64),  # [2]
            "scale": torch.tensor(geometry.scale, dtype=torch.float64),  # [2]
            "bbox": torch.from_numpy(instance.bbox.copy()),  # [4]
            "bbox_score": instance.bbox_score,
            "image_size": torch.tensor([frames[0].shape[1], frames[0].shape[0]]),  # [2] (w, h)
            "sample_id": index,
            "image_id": image.image_id,
            "annotation_id": instance.annotation_id,
            "track_id": instance.track_id,
            "video": image.video,
            "frame_index": image.frame_index,
            "frame_indices": torch.tensor(indices),  # [T]
        }


__all__ = [
    "ClipInstance",
    "DEFAULT_OFFSETS",
    "DETECTION_SCORE_THR",
    "PoseTrackAnnotations",
    "PoseTrackClipDataset",
    "PoseTrackImage",
    "PoseTrackPerson",
    "clip_frame_indices",
    "neighbour_file_name",
    "parse_posetrack_person",
    "posetrack_annotation_files",
    "read_json_file",
    "read_posetrack_annotations",
]
