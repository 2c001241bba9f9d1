"""ControlNet OpenPose export: mapping, JSON, the tool, and pixel parity with controlnet_aux's own drawing
code."""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.export.controlnet import (
    ExportInputError,
    ImagePoses,
    export_image,
    iter_controlnet_exports,
    openpose_json,
    read_coco_poses,
)
from zoo.visualize.openpose import (
    HAND_EDGE_COLORS,
    OpenPosePerson,
    coco17_to_openpose18,
    person_from_coco,
    render_openpose,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL = REPO_ROOT / "tools" / "export_controlnet.py"

# Written out from the reference table (ecosystem.md 1.1 / 1.6) by name, independently of the module's index
# table.
OPENPOSE18 = [
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist",
    "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
]  # fmt: skip


@pytest.fixture(scope="module")
def cnaux() -> types.SimpleNamespace:
    """controlnet_aux's real open_pose drawing code, loaded without running the package's __init__.

    `import controlnet_aux` imports every detector (torchvision, timm, ...), which this environment cannot
    import; the drawing functions live in open_pose/util.py and only need open_pose/body.py, so the two parent
    packages are registered with their real folders as __path__ and the real files are imported through them.
    """
    spec = importlib.util.find_spec("controlnet_aux")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("controlnet_aux is not installed")
    root = Path(spec.submodule_search_locations[0])
    if not (root / "open_pose" / "util.py").is_file():
        pytest.skip("controlnet_aux has no open_pose/util.py")
    names = [
        "controlnet_aux",
        "controlnet_aux.open_pose",
        "controlnet_aux.open_pose.util",
        "controlnet_aux.open_pose.body",
        "controlnet_aux.open_pose.model",
    ]
    saved = {name: sys.modules.get(name) for name in names}
    for name, folder in (("controlnet_aux", root), ("controlnet_aux.open_pose", root / "open_pose")):
        package = types.ModuleType(name)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    try:
        util = importlib.import_module("controlnet_aux.open_pose.util")
        body = importlib.import_module("controlnet_aux.open_pose.body")
    finally:
        # Leave sys.modules as found: the stand-in parents must not leak into other tests.
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    assert Path(util.__file__).resolve() == (root / "open_pose" / "util.py").resolve()
    return types.SimpleNamespace(util=util, Keypoint=body.Keypoint)


def _library_points(points: np.ndarray | None, keypoint_cls: type, missing: str) -> list | None:
    """Normalised [K, 2] with NaN -> controlnet_aux Keypoints; missing as None (body) or (-1, -1)
    (hands/face)."""
    if points is None:
        return None
    out = []
    for x, y in points:
        if math.isnan(x):
            out.append(None if missing == "none" else keypoint_cls(-1.0, -1.0))
        else:
            out.append(keypoint_cls(float(x), float(y)))
    return out


def _library_render(cnaux: types.SimpleNamespace, people: list[dict], height: int, width: int) -> np.ndarray:
    """Render with controlnet_aux's functions in draw_poses' order: per person body, left hand, right hand,
    face."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in people:
        canvas = cnaux.util.draw_bodypose(canvas, _library_points(person["body"], cnaux.Keypoint, "none"))
        for hand in ("left_hand", "right_hand"):
            canvas = cnaux.util.draw_handpose(
                canvas, _library_points(person.get(hand), cnaux.Keypoint, "neg")
            )
        canvas = cnaux.util.draw_facepose(canvas, _library_points(person.get("face"), cnaux.Keypoint, "neg"))
    return canvas


def _body(pixels: dict[int, tuple[float, float]], width: int, height: int) -> np.ndarray:
    """Normalised OpenPose-18 body [18, 2] from {index: (x, y) pixels}; other joints missing."""
    body = np.full((18, 2), np.nan)
    for index, (x, y) in pixels.items():
        body[index] = (x / width, y / height)
    return body


STANDING = {
    0: (200.0, 60.5), 1: (201.3, 110.0), 2: (160.2, 112.7), 3: (140.9, 170.1), 4: (131.0, 228.4),
    5: (243.7, 108.2),
    6: (262.5, 167.3), 7: (281.1, 225.6), 8: (175.5, 240.0), 9: (170.2, 320.8), 10: (168.8, 400.1),
    11: (226.4, 238.3), 12: (232.7, 318.9), 13: (236.1, 398.6), 14: (190.4, 50.2), 15: (210.8, 49.9),
    16: (178.3, 58.7), 17: (223.6, 57.1),
}  # fmt: skip

SYNTHETIC_CASES = {
    "single": (512, 384, [STANDING]),
    "missing_joints": (512, 384, [{k: v for k, v in STANDING.items() if k not in (1, 4, 9, 14, 17)}]),
    "two_people": (512, 384, [STANDING, {k: (x + 35.7, y + 20.3) for k, (x, y) in STANDING.items()}]),
    "non_square": (300, 700, [{k: (x * 1.9, y * 0.6) for k, (x, y) in STANDING.items()}]),
    "borders": (
        240,
        320,
        [
            {0: (0.0, 0.0), 1: (319.99, 239.99), 2: (320.0, 240.0), 3: (-5.0, 120.0), 5: (0.0, 239.0)}
            | {6: (160.0, 0.0), 8: (330.0, 250.0), 11: (319.0, 0.5), 14: (1.0, 1.0)}
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(SYNTHETIC_CASES))
def test_body_render_matches_controlnet_aux(cnaux: types.SimpleNamespace, case: str) -> None:
    height, width, poses = SYNTHETIC_CASES[case]
    bodies = [_body(pose, width, height) for pose in poses]
    ours = render_openpose([OpenPosePerson(body=b) for b in bodies], height, width)
    theirs = _library_render(cnaux, [{"body": b} for b in bodies], height, width)
    assert ours.shape == (height, width, 3) and ours.dtype == np.uint8
    assert ours.any(), "nothing was drawn"
    assert np.array_equal(ours, theirs), f"{int((ours != theirs).any(-1).sum())} pixels differ"


def test_hands_and_face_match_controlnet_aux_synthetic(cnaux: types.SimpleNamespace) -> None:
    """Two whole-body people on a non-square canvas, with missing points and points on row/column 0 (hidden).
    """
    height, width = 200, 360
    rng = np.random.default_rng(0)
    people = []
    for shift in (0.0, 0.08):
        hand = np.column_stack([0.2 + shift + rng.uniform(0, 0.15, 21), 0.3 + rng.uniform(0, 0.2, 21)])
        hand[[3, 11]] = np.nan  # missing: edges to them are skipped
        hand[7] = (0.0, 0.4)  # pixel column 0: hidden by the eps rule, with its edges
        hand[15] = (0.5, 0.001)  # truncates to row 0: hidden
        other = hand[::-1] + (0.3, 0.1)
        face = np.column_stack([0.6 + shift + rng.uniform(0, 0.1, 68), 0.1 + rng.uniform(0, 0.1, 68)])
        face[[0, 5]] = np.nan
        face[9] = (0.0, 0.0)
        body = _body(
            {k: (x * 0.8 + shift * width, y * 0.45) for k, (x, y) in STANDING.items()}, width, height
        )
        people.append({"body": body, "left_hand": hand, "right_hand": other, "face": face})
    people.append({"body": _body({}, width, height), "left_hand": None, "right_hand": people[0]["left_hand"]})
    ours = render_openpose(
        [OpenPosePerson(p["body"], p["left_hand"], p["right_hand"], p.get("face")) for p in people],
        height,
        width,
    )
    theirs = _library_render(cnaux, people, height, width)
    assert (ours == 255).all(-1).any() and (ours == (0, 0, 255)).all(-1).any()
    assert np.array_equal(ours, theirs), f"{int((ours != theirs).any(-1).sum())} pixels differ"


def test_render_colours_and_order() -> None:
    """A lone limb is filled at 0.6 colour and its joints sit on top at full colour on a black canvas."""
    body = _body({1: (50.0, 50.0), 2: (50.0, 90.0)}, 100, 120)
    image = render_openpose([OpenPosePerson(body=body)], 120, 100)
    assert tuple(image[70, 50]) == (153, 0, 0)  # limb 0 (neck-right shoulder), 255 * 0.6
    assert tuple(image[50, 50]) == (255, 85, 0)  # neck joint colour
    assert tuple(image[90, 50]) == (255, 170, 0)  # right shoulder joint colour
    assert tuple(image[5, 5]) == (0, 0, 0)
    assert not render_openpose([], 8, 9).any()


def test_coco17_to_openpose18_mapping(realdata: Path) -> None:
    coco_names = json.loads((realdata / "coco" / "test_coco.json").read_text())["categories"][0]["keypoints"]
    keypoints = np.array([[10.0 * i + 1, 100.0 + i, 2.0] for i in range(17)])
    out = coco17_to_openpose18(keypoints)
    assert out.shape == (18, 3)
    for index, name in enumerate(OPENPOSE18):
        if name == "neck":
            continue
        assert np.array_equal(out[index], keypoints[coco_names.index(name)]), name
    left, right = keypoints[coco_names.index("left_shoulder")], keypoints[coco_names.index("right_shoulder")]
    assert np.allclose(out[1], [(left[0] + right[0]) / 2, (left[1] + right[1]) / 2, 2.0])

    # Neck rule: one shoulder below the threshold -> no neck; the shoulder itself is missing too.
    keypoints[coco_names.index("right_shoulder"), 2] = 0.2
    out = coco17_to_openpose18(keypoints, threshold=0.3)
    assert np.isnan(out[1, :2]).all() and out[1, 2] == 0
    assert np.isnan(out[2, :2]).all() and out[2, 2] == 0
    assert not np.isnan(out[5]).any()
    # Threshold semantics: a score equal to the threshold is missing, above it is kept.
    keypoints[:, 2] = 0.5
    assert np.isnan(coco17_to_openpose18(keypoints, threshold=0.5)[:, :2]).all()
    assert not np.isnan(coco17_to_openpose18(keypoints, threshold=0.49)).any()
    with pytest.raises(ValueError, match=r"\[17, 3\]"):
        coco17_to_openpose18(np.zeros((18, 3)))


def test_openpose_json_schema() -> None:
    body = _body({0: (64.0, 32.0), 2: (128.0, 96.0)}, 256, 128)
    hand = np.full((21, 2), np.nan)
    hand[0] = (0.25, 0.5)
    pose = openpose_json([OpenPosePerson(body=body, right_hand=hand)], 128, 256)
    assert set(pose) == {"people", "canvas_height", "canvas_width"}
    assert (pose["canvas_height"], pose["canvas_width"]) == (128, 256)
    (person,) = pose["people"]
    assert set(person) == {
        "pose_keypoints_2d",
        "face_keypoints_2d",
        "hand_left_keypoints_2d",
        "hand_right_keypoints_2d",
    }
    flat = person["pose_keypoints_2d"]
    assert len(flat) == 54
    assert flat[0:3] == [0.25, 0.25, 1.0]  # normalised, confidence exactly 1.0 for kept points
    assert flat[6:9] == [0.5, 0.75, 1.0]
    assert flat[3:6] == [0.0, 0.0, 0.0]  # missing neck
    assert person["face_keypoints_2d"] is None and person["hand_left_keypoints_2d"] is None
    assert person["hand_right_keypoints_2d"][:6] == [0.25, 0.5, 1.0, 0.0, 0.0, 0.0]
    assert len(person["hand_right_keypoints_2d"]) == 63
    json.dumps(pose)  # plain JSON types only


def test_hand_edge_colours_match_matplotlib() -> None:
    from matplotlib.colors import hsv_to_rgb

    for index, colour in enumerate(HAND_EDGE_COLORS):
        assert colour == tuple(hsv_to_rgb([index / 20.0, 1.0, 1.0]) * 255), index


def _wholebody_people(realdata: Path, image_id: int, width: int, height: int) -> list[dict]:
    """The test's own reading of COCO-WholeBody ground truth into controlnet_aux inputs
    (normalised, NaN missing)."""
    data = json.loads((realdata / "coco" / "test_coco_wholebody.json").read_text())
    coco_names = data["categories"][0]["keypoints"]
    people = []
    for ann in data["annotations"]:
        if ann["image_id"] != image_id:
            continue

        def points(flat: list[float], valid: bool = True) -> np.ndarray | None:
            array = np.array(flat, dtype=float).reshape(-1, 3)
            xy = np.where(array[:, 2:] > 0.3, array[:, :2], np.nan) / [width, height]
            return xy if valid and not np.isnan(xy).all() else None

        coco = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
        body = np.full((18, 2), np.nan)
        for index, name in enumerate(OPENPOSE18):
            if name == "neck":
                ls, rs = coco[coco_names.index("left_shoulder")], coco[coco_names.index("right_shoulder")]
                if ls[2] > 0.3 and rs[2] > 0.3:
                    body[index] = ((ls[0] + rs[0]) / 2 / width, (ls[1] + rs[1]) / 2 / height)
            elif coco[coco_names.index(name), 2] > 0.3:
                x, y, _ = coco[coco_names.index(name)]
                body[index] = (x / width, y / height)
        person = {
            "body": body,
            "left_hand": points(ann["lefthand_kpts"], ann["lefthand_valid"]),
            "right_hand": points(ann["righthand_kpts"], ann["righthand_valid"]),
            "face": points(ann["face_kpts"], ann["face_valid"]),
        }
        if not np.isnan(body).all() or any(
            person[k] is not None for k in ("left_hand", "right_hand", "face")
        ):
            people.append(person)
    return people


def test_wholebody_render_matches_controlnet_aux(cnaux: types.SimpleNamespace, realdata: Path) -> None:
    annotations = realdata / "coco" / "test_coco_wholebody.json"
    exports = {e.stem: e for e in iter_controlnet_exports(annotations)}
    images = {image.stem: image for image in read_coco_poses(annotations)}
    assert sorted(exports) == ["000000000785.jpg", "000000040083.jpg", "000000196141.jpg", "000000197388.jpg"]
    drew_hand = drew_face = False
    for stem, export in exports.items():
        image = images[stem]
        people = _wholebody_people(realdata, image.image_id, image.width, image.height)
        theirs = _library_render(cnaux, people, image.height, image.width)
        assert np.array_equal(export.image, theirs), (
            f"{stem}: {int((export.image != theirs).any(-1).sum())} px"
        )
        body_only = export_image(image, hands=False, face=False)
        with_hands = export_image(image, face=False)
        drew_hand |= not np.array_equal(with_hands.image, body_only.image)
        drew_face |= not np.array_equal(export.image, with_hands.image)
        # Face landmarks are the only white pixels; the no-face rendering has none.
        assert not (with_hands.image == 255).all(-1).any()
        for person in body_only.pose["people"]:
            assert person["face_keypoints_2d"] is None and person["hand_left_keypoints_2d"] is None
        for person, expected in zip(export.pose["people"], people, strict=True):
            assert (person["face_keypoints_2d"] is None) == (expected["face"] is None)
            if expected["face"] is not None:
                assert len(person["face_keypoints_2d"]) == 68 * 3
    assert drew_hand and drew_face


def _run_tool(argv: list[str]) -> int:
    """Call tools/export_controlnet.py's main(argv) in this process."""
    spec = importlib.util.spec_from_file_location("export_controlnet_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_tool_on_coco_ground_truth_matches_controlnet_aux(
    cnaux: types.SimpleNamespace, realdata: Path, tmp_path: Path
) -> None:
    """Issue 5 acceptance: one PNG + JSON per image, each PNG equal to controlnet_aux's rendering pixel for
    pixel."""
    annotations = realdata / "coco" / "test_coco.json"
    out = tmp_path / "out"
    # As a real command from another folder, to check it runs without installing the package.
    done = subprocess.run(
        [sys.executable, str(TOOL), "--annotations", str(annotations), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(annotations.read_text())
    coco_names = data["categories"][0]["keypoints"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        image["file_name"] + suffix for image in data["images"] for suffix in (".png", ".json")
    )
    total_people = 0
    for image in data["images"]:
        width, height = image["width"], image["height"]
        stem = image["file_name"]  # outputs keep the input's suffix: 000000000785.jpg.png
        people = []
        for ann in data["annotations"]:
            if ann["image_id"] != image["id"] or ann["iscrowd"] or not any(ann["keypoints"][2::3]):
                continue
            coco = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
            body = np.full((18, 2), np.nan)
            for index, name in enumerate(OPENPOSE18):
                if name == "neck":
                    ls, rs = coco[coco_names.index("left_shoulder")], coco[coco_names.index("right_shoulder")]
                    if ls[2] > 0 and rs[2] > 0:
                        body[index] = ((ls[0] + rs[0]) / 2 / width, (ls[1] + rs[1]) / 2 / height)
                elif coco[coco_names.index(name), 2] > 0:
                    body[index] = coco[coco_names.index(name), :2] / [width, height]
            people.append({"body": body})
        total_people += len(people)
        png = np.asarray(Image.open(out / f"{stem}.png"))
        theirs = _library_render(cnaux, people, height, width)
        assert png.shape == (height, width, 3)
        assert np.array_equal(png, theirs), f"{stem}: {int((png != theirs).any(-1).sum())} pixels differ"

        pose = json.loads((out / f"{stem}.json").read_text())
        assert (pose["canvas_width"], pose["canvas_height"]) == (width, height)
        assert len(pose["people"]) == len(people)
        for person, expected in zip(pose["people"], people, strict=True):
            flat = np.array(person["pose_keypoints_2d"]).reshape(18, 3)
            present = ~np.isnan(expected["body"]).any(1)
            assert np.array_equal(flat[present, :2], expected["body"][present])
            assert (flat[present, 2] == 1.0).all() and (flat[~present] == 0).all()
            assert (flat[:, :2] >= 0).all() and (flat[:, :2] <= 1).all()
            assert person["hand_left_keypoints_2d"] is None and person["face_keypoints_2d"] is None
    assert total_people == 12  # 14 instances, 12 with keypoints (realdata README)
    assert not list(out.glob(".*")), "temporary files left behind"


def test_tool_on_results_applies_threshold(realdata: Path, tmp_path: Path) -> None:
    annotations = realdata / "coco" / "test_coco.json"
    data = json.loads(annotations.read_text())
    ann = next(a for a in data["annotations"] if a["image_id"] == 785)
    keypoints = np.array(ann["keypoints"], dtype=float).reshape(17, 3)
    keypoints[:, 2] = 0.9
    keypoints[9, 2] = 0.2  # left wrist: below the threshold
    results = [{"image_id": 785, "category_id": 1, "keypoints": keypoints.ravel().tolist(), "score": 0.8}]
    results_path = tmp_path / "results.json"
    results_path.write_text(json.dumps(results))
    out = tmp_path / "out"
    argv = ["--results", str(results_path), "--annotations", str(annotations), "--out", str(out)]
    assert _run_tool([*argv, "--threshold", "0.5"]) == 0
    pose = json.loads((out / "000000000785.jpg.json").read_text())
    flat = np.array(pose["people"][0]["pose_keypoints_2d"]).reshape(18, 3)
    assert (flat[7] == 0).all()  # OpenPose left wrist dropped
    assert (np.delete(flat, 7, axis=0)[:, 2] == 1.0).all()  # real scores are written as 1.0
    assert json.loads((out / "000000040083.jpg.json").read_text())["people"] == []  # no results: empty canvas
    assert not np.asarray(Image.open(out / "000000040083.jpg.png")).any()
    assert _run_tool([*argv, "--threshold", "0.1"]) == 0
    assert (
        np.array(
            json.loads((out / "000000000785.jpg.json").read_text())["people"][0]["pose_keypoints_2d"]
        ).reshape(18, 3)[7, 2]
        == 1.0
    )


def test_person_from_wholebody_results_layout() -> None:
    keypoints = np.zeros((133, 3))
    keypoints[:17] = [[100 + i, 50 + i, 0.9] for i in range(17)]
    keypoints[91:112] = [[20 + i, 30 + i, 0.8] for i in range(21)]  # left hand only
    person = person_from_coco(keypoints, 200, 100)
    assert person.right_hand is None and person.face is None
    assert np.allclose(person.left_hand[3], [23 / 200, 33 / 100])
    assert person_from_coco(keypoints, 200, 100, hands=False).left_hand is None
    assert person_from_coco(keypoints[:17], 200, 100).left_hand is None


def _write_annotations(tmp_path: Path, images: list[dict], annotations: list[dict] | None = None) -> Path:
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations or [], "categories": []}))
    return path


def test_output_names_follow_file_name(tmp_path: Path) -> None:
    gt = _write_annotations(tmp_path, [{"id": 1, "file_name": "val2017/a.jpg", "width": 40, "height": 30}])
    assert _run_tool(["--annotations", str(gt), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "val2017" / "a.jpg.png").is_file() and (
        tmp_path / "out" / "val2017" / "a.jpg.json"
    ).is_file()


def test_image_size_from_image_root(realdata: Path, tmp_path: Path) -> None:
    gt = _write_annotations(tmp_path, [{"id": 1, "file_name": "000000000785.jpg"}])
    (image,) = read_coco_poses(gt, image_root=realdata / "coco")
    assert (image.width, image.height) == (640, 425)
    with pytest.raises(ExportInputError, match=r"images\[0\].*width"):
        read_coco_poses(gt)


@pytest.mark.parametrize(
    ("images", "results", "message"),
    [
        ([{"id": 1, "file_name": "../escape.jpg", "width": 8, "height": 8}], None, "escapes"),
        ([{"id": 1, "file_name": "/abs/x.jpg", "width": 8, "height": 8}], None, "absolute"),
        (
            [
                {"id": 1, "file_name": "a.jpg", "width": 8, "height": 8},
                {"id": 2, "file_name": "./a.jpg", "width": 8, "height": 8},
            ],
            None,
            "both be exported",
        ),
        ([{"id": 1, "file_name": "a.jpg", "width": 0, "height": 8}], None, r"images\[0\].*positive"),
        (
            [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
            [{"image_id": 1, "keypoints": [1.0] * 50, "score": 1.0}],
            r"results\[0\]\['keypoints'\].*50",
        ),
        (
            [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
            [{"image_id": 7, "keypoints": [1.0] * 51, "score": 1.0}],
            r"results\[0\].*image_id 7",
        ),
        ([{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}], {"not": "a list"}, "results list"),
    ],
)
def test_bad_input_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture, images: list, results: object, message: str
) -> None:
    gt = _write_annotations(tmp_path, images)
    argv = ["--annotations", str(gt), "--out", str(tmp_path / "out")]
    if results is not None:
        (tmp_path / "res.json").write_text(json.dumps(results))
        argv += ["--results", str(tmp_path / "res.json")]
    assert _run_tool(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and ("gt.json" in err or "res.json" in err)
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists(), "nothing may be written when the input is bad"


def test_bad_json_and_annotation_fields(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ExportInputError, match="broken.json: not valid JSON"):
        read_coco_poses(broken)
    with pytest.raises(ExportInputError, match="no such annotations file"):
        read_coco_poses(tmp_path / "absent.json")
    gt = _write_annotations(
        tmp_path,
        [{"id": 1, "file_name": "a.jpg", "width": 8, "height": 8}],
        [{"image_id": 1, "keypoints": [0.0] * 51, "foot_kpts": [0.0] * 18}],
    )
    with pytest.raises(ExportInputError, match=r"annotations\[0\].*face_kpts"):
        read_coco_poses(gt)
    with pytest.raises(ValueError, match="positive"):
        render_openpose([], 0, 5)
    assert export_image(ImagePoses(1, "a.jpg", 8, 8)).pose == {
        "people": [],
        "canvas_height": 8,
        "canvas_width": 8,
    }
