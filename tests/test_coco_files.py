"""The one COCO reader: a messy corpus of bad annotation and detection files, each with a named error."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo.data.coco_files import (
    CocoFileError,
    CocoFileNotFoundError,
    annotation_keypoints,
    keypoint_parts,
    person_keypoints,
    read_coco,
    read_detections,
    read_results,
)
from zoo.data.metainfo import load_metainfo
from zoo.data.topdown import CocoPoseDataset, load_pose_instances
from zoo.evaluation.coco import CocoKeypointEvaluator
from zoo.export.controlnet import ExportInputError, read_coco_poses
from zoo.inference.pose import detection_boxes

IMAGE = {"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}
PERSON = {
    "id": 10,
    "image_id": 1,
    "category_id": 1,
    "bbox": [1.0, 2.0, 30.0, 40.0],
    "area": 1200.0,
    "iscrowd": 0,
    "num_keypoints": 1,
    "keypoints": [5, 6, 2] + [0] * 48,
}
DETECTION = {"image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 30.0, 40.0], "score": 0.9}


def coco(images: Any = None, annotations: Any = None, **extra: Any) -> dict[str, Any]:
    """A valid COCO dict with one image and one person, parts replaced by the arguments."""
    data = {
        "images": [IMAGE] if images is None else images,
        "annotations": [PERSON] if annotations is None else annotations,
        "categories": [{"id": 1, "name": "person"}],
    }
    return {**data, **extra}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (case, file content: a JSON-able object or raw text, expected message after the file name)
BAD_ANNOTATIONS: list[tuple[str, Any, str]] = [
    ("not-json", "{images: []", r"not valid JSON"),
    ("not-utf8", b"\xff\xfe{", r"not valid JSON"),
    ("deeply-nested", '{"images": [], "info": ' + nested(100_000) + "}", r"nested too deeply"),
    ("a-list", [IMAGE], r"not a COCO annotation file"),
    ("no-images", {"annotations": []}, r"not a COCO annotation file"),
    ("images-not-list", {"images": {"1": IMAGE}}, r"not a COCO annotation file"),
    ("image-not-object", coco(images=[7]), r"images\[0\]: must be an object"),
    (
        "missing-id",
        coco(images=[{"file_name": "a.jpg", "width": 4, "height": 4}]),
        r"images\[0\]: lacks 'id'",
    ),
    ("missing-size", coco(images=[{"id": 1, "file_name": "a.jpg"}]), r"images\[0\]: lacks 'width', 'height'"),
    ("bool-id", coco(images=[{**IMAGE, "id": True}]), r"images\[0\]\['id'\]: .*integer; got True"),
    ("string-id", coco(images=[{**IMAGE, "id": "1"}]), r"images\[0\]\['id'\]: .*integer; got '1'"),
    ("float-id", coco(images=[{**IMAGE, "id": 1.5}]), r"images\[0\]\['id'\]: .*integer; got 1.5"),
    ("negative-id", coco(images=[{**IMAGE, "id": -3}]), r"images\[0\]\['id'\]: must be a non-negative"),
    (
        "duplicate-id",
        coco(images=[IMAGE, {**IMAGE, "file_name": "b.jpg"}]),
        r"images\[1\]\['id'\]: duplicate image id 1",
    ),
    (
        "empty-file-name",
        coco(images=[{**IMAGE, "file_name": ""}]),
        r"images\[0\]\['file_name'\]: must be a non-empty",
    ),
    ("number-file-name", coco(images=[{**IMAGE, "file_name": 12}]), r"images\[0\]\['file_name'\]"),
    ("absurd-width", coco(images=[{**IMAGE, "width": 200_000}]), r"images\[0\]\['width'\]: .*at most 65535"),
    (
        "absurd-area",
        coco(images=[{**IMAGE, "width": 60_000, "height": 60_000}]),
        r"images\[0\]: .*pixel limit",
    ),
    ("zero-height", coco(images=[{**IMAGE, "height": 0}]), r"images\[0\]\['height'\]: must be a positive"),
    ("string-width", coco(images=[{**IMAGE, "width": "64"}]), r"images\[0\]\['width'\]: .*got '64'"),
    ("annotations-not-list", coco(annotations={}), r"'annotations' must be a list"),
    ("annotation-not-object", coco(annotations=["x"]), r"annotations\[0\]: must be an object"),
    (
        "unknown-image",
        coco(annotations=[{**PERSON, "image_id": 99}]),
        r"annotations\[0\]\['image_id'\]: image 99 is not in 'images'",
    ),
    ("bool-image-id", coco(annotations=[{**PERSON, "image_id": True}]), r"annotations\[0\]\['image_id'\]"),
    (
        "duplicate-annotation-id",
        coco(annotations=[PERSON, PERSON]),
        r"annotations\[1\]\['id'\]: duplicate annotation id 10",
    ),
    (
        "string-coordinate",
        coco(annotations=[{**PERSON, "keypoints": ["367"] + [0] * 50}]),
        r"annotations\[0\]\['keypoints'\]: values must be numbers; got '367'",
    ),
    (
        "bool-coordinate",
        coco(annotations=[{**PERSON, "keypoints": [True] + [0] * 50}]),
        r"annotations\[0\]\['keypoints'\]: values must be numbers; got True",
    ),
    (
        "nan-coordinate",
        coco(annotations=[{**PERSON, "keypoints": [float("nan")] + [0] * 50}]),
        r"annotations\[0\]\['keypoints'\]: contains NaN",
    ),
    (
        "huge-coordinate",
        coco(annotations=[{**PERSON, "keypoints": [10**400] + [0] * 50}]),
        r"annotations\[0\]\['keypoints'\]: contains NaN, infinite or out-of-range",
    ),
    (
        "nested-keypoints",
        coco(annotations=[{**PERSON, "keypoints": [[5, 6, 2]] + [0] * 50}]),
        r"annotations\[0\]\['keypoints'\]: values must be numbers",
    ),
    (
        "keypoints-not-triplets",
        coco(annotations=[{**PERSON, "keypoints": [0] * 50}]),
        r"annotations\[0\]\['keypoints'\]: has 50 values; expected a multiple of 3",
    ),
    (
        "face-not-list",
        coco(annotations=[{**PERSON, "face_kpts": 0}]),
        r"annotations\[0\]\['face_kpts'\]: must be a list",
    ),
    (
        "short-bbox",
        coco(annotations=[{**PERSON, "bbox": [1, 2, 3]}]),
        r"annotations\[0\]\['bbox'\]: has 3 values",
    ),
    (
        "negative-bbox",
        coco(annotations=[{**PERSON, "bbox": [1, 2, -3, 4]}]),
        r"annotations\[0\]\['bbox'\]: width and height must not be negative",
    ),
    (
        "infinite-bbox",
        coco(annotations=[{**PERSON, "bbox": [1, 2, float("inf"), 4]}]),
        r"\['bbox'\]: contains NaN",
    ),
    (
        "string-area",
        coco(annotations=[{**PERSON, "area": "12"}]),
        r"annotations\[0\]\['area'\]: must be a finite",
    ),
    (
        "iscrowd-2",
        coco(annotations=[{**PERSON, "iscrowd": 2}]),
        r"annotations\[0\]\['iscrowd'\]: must be 0 or 1",
    ),
    (
        "string-category",
        coco(annotations=[{**PERSON, "category_id": "1"}]),
        r"annotations\[0\]\['category_id'\]",
    ),
]


def write(tmp_path: Path, name: str, content: Any) -> Path:
    path = tmp_path / f"{name}.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(json.dumps(content))  # NaN / Infinity as Python's json writes them, as some tools do
    return path


@pytest.mark.parametrize(
    ("case", "content", "message"),
    BAD_ANNOTATIONS,
    ids=[c[0] for c in BAD_ANNOTATIONS],
)
def test_bad_annotation_file_is_named(tmp_path: Path, case: str, content: Any, message: str) -> None:
    path = write(tmp_path, case, content)
    with pytest.raises(CocoFileError) as error:
        read_coco(path)
    text = str(error.value)
    assert text.startswith(f"{path}: "), text
    assert re.search(message, text), text


BAD_DETECTIONS: list[tuple[str, Any, str]] = [
    ("not-a-list", {"image_id": 1}, r"expected a COCO results list"),
    ("record-not-object", [DETECTION, 3], r"results\[1\]: must be an object"),
    ("missing-score", [{k: v for k, v in DETECTION.items() if k != "score"}], r"results\[0\]: lacks 'score'"),
    (
        "missing-bbox",
        [DETECTION, {k: v for k, v in DETECTION.items() if k != "bbox"}],
        r"results\[1\]: lacks 'bbox'",
    ),
    ("bool-image-id", [{**DETECTION, "image_id": False}], r"results\[0\]\['image_id'\]: .*got False"),
    ("string-image-id", [{**DETECTION, "image_id": "785"}], r"results\[0\]\['image_id'\]: .*got '785'"),
    ("nan-box", [{**DETECTION, "bbox": [float("nan"), 0, 1, 1]}], r"results\[0\]\['bbox'\]: contains NaN"),
    (
        "string-box",
        [{**DETECTION, "bbox": ["367", 0, 1, 1]}],
        r"results\[0\]\['bbox'\]: values must be numbers",
    ),
    (
        "five-values-box",
        [{**DETECTION, "bbox": [0, 0, 1, 1, 1]}],
        r"results\[0\]\['bbox'\]: has 5 values; expected 4",
    ),
    (
        "infinite-score",
        [{**DETECTION, "score": float("inf")}],
        r"results\[0\]\['score'\]: must be a finite number",
    ),
    ("string-score", [{**DETECTION, "score": "0.9"}], r"results\[0\]\['score'\]: must be a finite"),
    ("deeply-nested", nested(100_000), r"nested too deeply"),
]


@pytest.mark.parametrize(("case", "content", "message"), BAD_DETECTIONS, ids=[c[0] for c in BAD_DETECTIONS])
def test_bad_detection_file_is_named(tmp_path: Path, case: str, content: Any, message: str) -> None:
    path = write(tmp_path, case, content)
    for read in (read_detections, lambda p: detection_boxes(p, [1])):
        with pytest.raises(CocoFileError) as error:
            read(path)
        assert str(error.value).startswith(f"{path}: ") and re.search(message, str(error.value)), error.value


def test_missing_and_special_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CocoFileNotFoundError, match=r"absent.json: no such annotation file"):
        read_coco(tmp_path / "absent.json")
    with pytest.raises(FileNotFoundError, match="detection file"):
        read_detections(tmp_path / "absent.json")
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(CocoFileNotFoundError, match="fifo.json: no such"):  # refused, never opened: no hang
        read_coco(fifo)


def test_empty_ground_truth_is_refused_for_evaluation(tmp_path: Path) -> None:
    for name, data in (("none", coco(annotations=[])), ("absent", {"images": [IMAGE], "categories": []})):
        path = write(tmp_path, name, data)
        assert read_coco(path).annotations == ()  # fine as an image list
        with pytest.raises(CocoFileError, match=rf"{name}.json: has no annotations"):
            CocoKeypointEvaluator(path)
    path = write(tmp_path, "fields", coco(annotations=[{k: v for k, v in PERSON.items() if k != "area"}]))
    with pytest.raises(CocoFileError, match=r"annotations\[0\]: lacks 'area'"):
        CocoKeypointEvaluator(path)


def test_every_caller_reports_the_same_error(tmp_path: Path) -> None:
    path = write(tmp_path, "bad", coco(images=[{**IMAGE, "id": True}]))
    message = rf"{re.escape(str(path))}: images\[0\]\['id'\]"
    with pytest.raises(CocoFileError, match=message):
        load_pose_instances(path, tmp_path, num_keypoints=17)
    with pytest.raises(CocoFileError, match=message):
        CocoPoseDataset(path, tmp_path)
    with pytest.raises(CocoFileError, match=message):
        CocoKeypointEvaluator(path)
    with pytest.raises(ExportInputError, match=message):
        read_coco_poses(path)
    from zoo.builders.coco_ood import CocoOodError, load_coco

    with pytest.raises(CocoOodError, match=message):
        load_coco(path)


def test_detection_of_unknown_image_names_both_files(tmp_path: Path) -> None:
    ann = write(tmp_path, "ann", coco())
    dets = write(tmp_path, "dets", [DETECTION, {**DETECTION, "image_id": 5}])
    message = r"dets.json: results\[1\]\['image_id'\]: image 5 is not in .*ann.json"
    with pytest.raises(CocoFileError, match=message):
        load_pose_instances(ann, tmp_path, num_keypoints=17, bbox_file=dets)


def test_valid_file_round_trip(tmp_path: Path) -> None:
    data = coco(
        images=[IMAGE, {"id": 2, "file_name": "b.jpg", "width": 8, "height": 8}],
        annotations=[PERSON, {**PERSON, "id": 11, "iscrowd": 1}, {**PERSON, "id": 12, "image_id": 2}],
    )
    path = write(tmp_path, "good", data)
    parsed = read_coco(path)
    assert parsed.data == data and [image.id for image in parsed.images] == [1, 2]
    people = person_keypoints(parsed)  # the crowd region is not a person
    assert [len(people[1]), len(people[2])] == [1, 1] and people[1][0].shape == (17, 3)
    (det,) = read_detections([DETECTION])
    assert det.image_id == 1 and det.bbox.tolist() == [1.0, 2.0, 30.0, 40.0] and det.score == 0.9
    records, name = read_results([{"image_id": 1, "keypoints": [0.0] * 51}], "results", ("image_id",))
    assert len(records) == 1 and name == "results"


def test_wholebody_layout_comes_from_the_metainfo(tmp_path: Path) -> None:
    parts = keypoint_parts("coco_wholebody")
    assert [(p.name, p.field, p.start, p.end) for p in parts] == [
        (name, field, start, end)
        for name, field, (start, end) in zip(
            ("body", "foot", "face", "left_hand", "right_hand"),
            ("keypoints", "foot_kpts", "face_kpts", "lefthand_kpts", "righthand_kpts"),
            load_metainfo("coco_wholebody").parts.values(),
            strict=True,
        )
    ]
    assert [p.field for p in keypoint_parts("coco")] == ["keypoints"]
    ann = {**PERSON, **{p.field: [1.0] * (3 * p.count) for p in parts[1:]}, "face_valid": False}
    parsed = read_coco(coco(annotations=[ann]), "annotations")
    points = annotation_keypoints(parsed, 0)
    assert points.shape == (133, 3) and not points[parts[2].slice].any() and points[parts[3].slice].all()
    short = {**ann, "lefthand_kpts": [1.0] * 60}
    with pytest.raises(CocoFileError, match=r"\[0\]\['lefthand_kpts'\]: has 60 values; expected 63"):
        annotation_keypoints(read_coco(coco(annotations=[short]), "annotations"), 0)
    assert np.array_equal(points[:17], np.asarray(PERSON["keypoints"]).reshape(17, 3))
