"""Annotator and tools/annotate.py on real COCO / HumanArt images and a folder of broken and odd files.

Checks: valid COCO results (pycocotools loadRes), every bad file in failures.json with its reason, odd but
valid images annotated, byte-identical outputs after a SIGKILL and restart, and no recomputation of finished
images.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.inference.annotate import STATE_DIR, AnnotationError, Annotator
from zoo.inference.lotus import LotusPredictor

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOL = REPO_ROOT / "tools" / "annotate.py"
RESOLUTION = 64  # Lotus processing resolution: tiny and fast
BROKEN = {  # file -> pattern its failure reason must match
    "broken/empty.jpg": r"empty \(0 bytes\)",
    "broken/truncated.jpg": r"truncated",
    "broken/text.jpg": r"not an image",
    "broken/huge.png": r"too large",
}
ODD = ("odd/gray.png", "odd/rgba.png", "odd/depth16.png", "odd/exif_rotated.jpg", "odd/tiny.png")


# ---------------------------------------------------------------------------------------------------- helpers
def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden state included) by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_tree(actual: Path, expected: Path) -> None:
    """Both folders hold the same files with the same bytes."""
    a, b = tree_bytes(actual), tree_bytes(expected)
    assert sorted(a) == sorted(b), f"file lists differ: {sorted(set(a) ^ set(b))}"
    differing = [name for name in a if a[name] != b[name]]
    assert not differing, f"files differ: {differing}"


def run_tool(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """tools/annotate.py in a fresh interpreter (single-threaded, offline)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(TOOL), *args, "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=timeout,
    )


def computed(stdout: str) -> int:
    """The tool's count of predictions run in that invocation."""
    return int(re.search(r"computed (\d+) predictions", stdout).group(1))


def png_with_header_size(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (no pixel data): what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def make_inputs(root: Path, realdata: Path) -> Path:
    """Real HumanArt photos, broken files and odd-but-valid images (gray, RGBA, 16-bit, EXIF-rotated, tiny).
    """
    for image in sorted((realdata / "humanart").rglob("*.jpg")):
        target = root / "humanart" / image.relative_to(realdata / "humanart")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, target)
    (root / "broken").mkdir()
    (root / "odd").mkdir()
    jpeg = (realdata / "coco" / "000000000785.jpg").read_bytes()
    (root / "broken" / "empty.jpg").write_bytes(b"")
    (root / "broken" / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "broken" / "text.jpg").write_text("a text file with an image's name\n")
    png_with_header_size(root / "broken" / "huge.png", 40000, 30000)
    (root / "notes.txt").write_text("not an image extension: never listed\n")
    photo = Image.open(realdata / "coco" / "000000040083.jpg").convert("RGB").resize((60, 40))
    photo.convert("L").save(root / "odd" / "gray.png")
    photo.convert("RGBA").save(root / "odd" / "rgba.png")
    ramp = (np.arange(40 * 60, dtype=np.uint32).reshape(40, 60) * 27).astype(np.uint16)
    Image.fromarray(ramp).save(root / "odd" / "depth16.png")  # mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    photo.save(root / "odd" / "exif_rotated.jpg", exif=exif.tobytes())
    photo.resize((9, 7)).save(root / "odd" / "tiny.png")
    return root


def load_results(gt_file: Path, results_file: Path):
    """pycocotools COCO(gt).loadRes(results), quietly."""
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(gt_file)).loadRes(str(results_file))


# ----------------------------------------------------------------------------------------------------
# fixtures
@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> dict[str, Path]:
    """Exported tiny pose and depth models (untrained weights: plumbing, not accuracy), loadable by zoo.load.
    """
    from zoo.models.lotus import LotusModule
    from zoo.models.sdpose import SDPoseModule

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    SDPoseModule(
        backbone=str(tiny_backbone_dir),
        input_size=(96, 128),
        heatmap_size=(24, 32),
        sigma=1.5,
        blur_kernel_size=7,
    ).export_pretrained(root / "pose")
    LotusModule(backbone=str(tiny_backbone_dir), mode="d", task="depth").export_pretrained(
        str(root / "depth")
    )
    return {"pose": root / "pose", "depth": root / "depth"}


@pytest.fixture(scope="session")
def predictors(model_dirs: dict[str, Path]) -> dict[str, object]:
    """The tiny models as the tool loads them."""
    return {name: zoo.load(str(folder)) for name, folder in model_dirs.items()}


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory, realdata: Path) -> Path:
    """The mixed input folder (read-only for the tests)."""
    return make_inputs(tmp_path_factory.mktemp("inputs"), realdata)


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory, predictors: dict, inputs: Path) -> Path:
    """One uninterrupted in-process run over the mixed folder, batch size 2."""
    out = tmp_path_factory.mktemp("reference") / "out"
    Annotator(
        predictors, out, batch_size=2, processing_resolution=RESOLUTION, controlnet=True, progress=False
    ).run(inputs)
    return out


# ---------------------------------------------------------------------------------------------------- tests
def test_real_coco_list(tmp_path: Path, predictors: dict, realdata: Path):
    coco_file = realdata / "coco" / "test_coco.json"
    summary = Annotator(
        predictors, tmp_path, batch_size=3, processing_resolution=RESOLUTION, num_workers=1, progress=False
    ).run(coco_file)
    gt = json.loads(coco_file.read_text())
    assert (summary.images, summary.annotated, summary.failed) == (4, 4, 0)
    detections = load_results(coco_file, tmp_path / "pose" / "results.json")
    # One whole-image person per image, under the COCO file's own ids.
    assert sorted(ann["image_id"] for ann in detections.dataset["annotations"]) == sorted(
        i["id"] for i in gt["images"]
    )
    for ann in detections.dataset["annotations"]:
        assert len(ann["keypoints"]) == 17 * 3 and ann["category_id"] == 1
    for image in gt["images"]:
        stem = image["file_name"]  # outputs keep the input's suffix: 000000000785.jpg.png
        depth = np.asarray(Image.open(tmp_path / "depth" / f"{stem}.png"))
        assert depth.dtype == np.uint16 and depth.shape == (image["height"], image["width"])
        assert np.load(tmp_path / "depth" / f"{stem}.npy").shape == (image["height"], image["width"], 1)
        assert (tmp_path / "depth" / f"{stem}_vis.png").is_file() and (
            tmp_path / "pose" / f"{stem}_vis.png"
        ).is_file()
    assert json.loads((tmp_path / "failures.json").read_text()) == []


def test_mixed_folder(reference: Path, inputs: Path, realdata: Path):
    failures = json.loads((reference / "failures.json").read_text())
    assert [f["file"] for f in failures] == sorted(BROKEN)
    for failure in failures:
        assert re.search(BROKEN[failure["file"]], failure["reason"]), failure
        assert str(inputs) not in failure["reason"]  # reasons do not depend on where the data lives
    annotations = json.loads((reference / "pose" / "annotations.json").read_text())
    images = {image["file_name"]: image for image in annotations["images"]}
    humanart = sorted(p.relative_to(realdata).as_posix() for p in (realdata / "humanart").rglob("*.jpg"))
    assert sorted(images) == sorted([*humanart, *ODD])
    # Ids follow the sorted relative paths of all listed files, broken ones included.
    listed = sorted([*humanart, *ODD, *BROKEN])
    assert all(images[name]["id"] == listed.index(name) + 1 for name in images)
    assert (images["odd/exif_rotated.jpg"]["width"], images["odd/exif_rotated.jpg"]["height"]) == (40, 60)
    assert (images["odd/depth16.png"]["width"], images["odd/depth16.png"]["height"]) == (60, 40)
    results = load_results(reference / "pose" / "annotations.json", reference / "pose" / "results.json")
    assert len(results.dataset["annotations"]) == len(images)
    for name in ODD:
        stem = name
        height, width = images[name]["height"], images[name]["width"]
        assert np.load(reference / "depth" / f"{stem}.npy").shape == (height, width, 1)
        assert Image.open(reference / "pose" / f"{stem}_vis.png").size == (width, height)
    assert not (reference / "depth" / "broken").exists()


def test_controlnet_files_match_export_tool(reference: Path, tmp_path: Path):
    """The per-image ControlNet files equal tools/export_controlnet.py run on the merged results."""
    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import export_controlnet

    assert (
        export_controlnet.main(
            [
                "--annotations",
                str(reference / "pose" / "annotations.json"),
                "--results",
                str(reference / "pose" / "results.json"),
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert_same_tree(reference / "pose" / "controlnet", tmp_path)


def test_detection_file_boxes(tmp_path: Path, predictors: dict, realdata: Path):
    """--boxes det-file: one person per detection, in the detection's box, scored by box x keypoint
    confidence."""
    detections = json.loads((realdata / "coco" / "test_coco_det_AP_H_56.json").read_text())
    kept = [d for d in detections if d["score"] > 0.3][::3]  # a few boxes keep the test fast
    (tmp_path / "dets.json").write_text(json.dumps(kept))
    Annotator(
        {"pose": predictors["pose"]},
        tmp_path / "out",
        det_file=tmp_path / "dets.json",
        flip_test=True,
        visualize=False,
        progress=False,
    ).run(realdata / "coco" / "test_coco.json")
    results = json.loads((tmp_path / "out" / "pose" / "results.json").read_text())
    assert len(results) == len(kept) >= 6
    expected = sorted((d["image_id"], d["bbox"]) for d in kept)
    actual = sorted((r["image_id"], r["bbox"]) for r in results)
    assert [i for i, _ in actual] == [i for i, _ in expected]
    np.testing.assert_allclose([b for _, b in actual], [b for _, b in expected], atol=0.006)
    assert all(0 <= r["score"] <= 1 for r in results)


def test_box_source_checked_up_front(tmp_path: Path, predictors: dict):
    import cv2

    with pytest.raises(ValueError, match="box_source"):
        Annotator({"pose": predictors["pose"]}, tmp_path, box_source="yolo")
    if not hasattr(cv2, "HOGDescriptor"):  # OpenCV 5 dropped it: say so before any image is read
        with pytest.raises(ValueError, match="HOG"):
            Annotator({"pose": predictors["pose"]}, tmp_path, box_source="hog")


def test_coco_list_with_escaping_and_missing_names(tmp_path: Path, predictors: dict, realdata: Path):
    coco = {
        "images": [
            {"id": 7, "file_name": "000000000785.jpg"},
            {"id": 8, "file_name": "../secret.jpg"},
            {"id": 9, "file_name": "missing.jpg"},
        ]
    }
    (tmp_path / "list.json").write_text(json.dumps(coco))
    out = tmp_path / "out"
    Annotator({"depth": predictors["depth"]}, out, processing_resolution=RESOLUTION, progress=False).run(
        tmp_path / "list.json", image_root=realdata / "coco"
    )
    failures = {f["file"]: f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert sorted(failures) == ["../secret.jpg", "missing.jpg"]
    assert "escapes" in failures["../secret.jpg"] and "no such file" in failures["missing.jpg"]
    assert (out / "depth" / "000000000785.jpg.png").is_file()


def test_resume_skips_finished_batches(tmp_path: Path, predictors: dict, inputs: Path, reference: Path):
    # A run killed part-way: merged files not yet written, two batches without records
    # (one of them half done), a half-written temp file left behind.
    partial = tmp_path / "partial"
    shutil.copytree(reference, partial)
    annotator = Annotator(
        predictors, partial, batch_size=2, processing_resolution=RESOLUTION, controlnet=True, progress=False
    )
    batches = annotator.batches(annotator.list_inputs(inputs))
    for path in (
        partial / "failures.json",
        partial / "pose" / "results.json",
        partial / "pose" / "annotations.json",
    ):
        path.unlink()
    for item in batches[2] + batches[-1][:1]:
        for key in predictors:
            annotator.record_path(key, item).unlink()
    victim = partial / "depth" / "humanart" / "real_human" / "acrobatics" / "000000000590.jpg.png"
    (victim.parent / f".{victim.name}.abcd1234.tmp").write_bytes(b"half")
    kept = {p: p.stat().st_ino for p in (partial / STATE_DIR).rglob("*.json")}
    expected = sum(
        len([i for i in b if not i.file_name.startswith("broken/")]) for b in (batches[2], batches[-1])
    )
    assert expected == 4
    summary = annotator.run(inputs)
    assert summary.computed == expected * len(predictors)
    assert_same_tree(partial, reference)
    # Records of finished images were not rewritten.
    assert all(path.stat().st_ino == inode for path, inode in kept.items())


def test_changed_settings_need_no_resume(tmp_path: Path, predictors: dict, realdata: Path):
    folder = realdata / "humanart"
    Annotator({"depth": predictors["depth"]}, tmp_path, processing_resolution=RESOLUTION, progress=False).run(
        folder
    )
    with pytest.raises(AnnotationError, match="other settings"):
        Annotator({"depth": predictors["depth"]}, tmp_path, processing_resolution=32, progress=False).run(
            folder
        )
    summary = Annotator(
        {"depth": predictors["depth"]}, tmp_path, processing_resolution=32, resume=False, progress=False
    ).run(folder)
    assert summary.computed == 3


class PickyLotus(LotusPredictor):
    """A depth predictor that refuses 60-pixel-wide images, as a model refuses a size it cannot process."""

    def __call__(self, images, **kwargs):
        if any(image.shape[1] == 60 for image in images):
            raise ValueError("cannot process 60-pixel-wide images")
        return super().__call__(images, **kwargs)


def test_model_refusal_is_one_failure(
    tmp_path: Path, predictors: dict, tiny_backbone_dir: Path, inputs: Path
):
    from zoo.backbones import StableDiffusionBackbone

    picky = PickyLotus(
        StableDiffusionBackbone.from_pretrained(tiny_backbone_dir, with_task_switcher=True), "d", "depth"
    )
    Annotator(
        {"pose": predictors["pose"], "picky": picky},
        tmp_path,
        batch_size=8,
        processing_resolution=RESOLUTION,
        visualize=False,
        progress=False,
    ).run(inputs)
    failures = {f["file"]: f for f in json.loads((tmp_path / "failures.json").read_text())}
    refused = {"odd/depth16.png", "odd/gray.png", "odd/rgba.png"}  # 60x40; the EXIF-rotated one is 40x60
    assert sorted(failures) == sorted([*BROKEN, *refused])
    for name in refused:
        assert failures[name] == {
            "file": name,
            "models": ["picky"],
            "reason": "cannot process 60-pixel-wide images",
        }
    # Their batch-mates were still annotated one by one.
    for stem in ("exif_rotated.jpg", "tiny.png"):
        assert (tmp_path / "picky" / "odd" / f"{stem}.png").is_file()


def test_tool_killed_input_changed_and_restarted_is_byte_identical(
    tmp_path: Path, predictors: dict, model_dirs: dict, realdata: Path, capsys: pytest.CaptureFixture
):
    # Enough small images for the kill to land mid-run.
    folder = tmp_path / "images"
    folder.mkdir()
    sources = sorted((realdata / "coco").glob("*.jpg"))
    for index in range(16):
        image = Image.open(sources[index % len(sources)]).convert("RGB")
        image.resize((96 + 8 * index, 72 + 4 * index)).save(folder / f"img{index:02d}.png")
    args = [
        "--input",
        str(folder),
        "--models",
        str(model_dirs["pose"]),
        str(model_dirs["depth"]),
        "--batch-size",
        "2",
        "--processing-resolution",
        str(RESOLUTION),
        "--controlnet",
    ]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        [sys.executable, str(TOOL), *args, "--out", str(out), "--no-progress"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    records = out / STATE_DIR / "depth" / "records"
    deadline = time.monotonic() + 90
    while len(list(records.rglob("*.json"))) < 3 and time.monotonic() < deadline:
        assert process.poll() is None, "the tool ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "failures.json").exists(), "the run finished before the kill"
    # Nothing half-written is visible: every file outside the temp names is complete.
    for path in out.rglob("*"):
        if path.is_file() and not path.name.endswith(".tmp"):
            if path.suffix == ".json":
                json.loads(path.read_text() or "null")
            elif path.suffix == ".png":
                Image.open(path).load()
            elif path.suffix == ".npy":
                np.load(path)

    annotator = Annotator(predictors, out, batch_size=2, processing_resolution=RESOLUTION, controlnet=True)
    # An input that was finished before the kill changes before the restart: its batch must be redone.
    changed = next(item for item in annotator.list_inputs(folder) if annotator.state.is_done("depth", item))
    Image.open(sources[0]).convert("RGB").resize((80, 120)).save(changed.path)
    todo = [b for b in annotator.batches(annotator.list_inputs(folder)) for _ in annotator.pending(b)]
    assert any(changed in batch for batch in todo)
    # The restart runs the tool's main() in this interpreter (no second start-up of torch).
    spec = importlib.util.spec_from_file_location("annotate_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    capsys.readouterr()
    assert tool.main([*args, "--out", str(out), "--no-progress"]) == 0
    assert computed(capsys.readouterr().out) == sum(len(batch) for batch in todo) < 16 * len(predictors)

    expected = tmp_path / "uninterrupted"
    Annotator(
        predictors, expected, batch_size=2, processing_resolution=RESOLUTION, controlnet=True, progress=False
    ).run(folder)
    assert_same_tree(out, expected)  # the changed image's outputs (and its batch-mate's) are the new ones
    assert np.load(out / "depth" / f"{changed.stem}.npy").shape == (120, 80, 1)
