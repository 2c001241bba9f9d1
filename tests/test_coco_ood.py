"""COCO-OOD builder on the real COCO samples: annotation preservation, determinism, resume, shards, workers,
refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from zoo.builders import CocoOodError, build, default_styles, merge, split_paths, verify, write_contact_sheet
from zoo.builders.styles import image_seed
from zoo.data.images import load_rgb_uint8
from zoo.utils.files import sha256_file

REPO_ROOT = Path(__file__).resolve().parent.parent
# Two quick styles (one OpenCV rendering, one corruption) for the tests that build several times.
LIGHT = ["pencil", "corrupt-s3"]


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones included, so leftovers count) mapped to its SHA-256."""
    return {
        str(path.relative_to(root)): sha256_file(path) for path in sorted(root.rglob("*")) if path.is_file()
    }


@pytest.fixture(scope="module")
def coco(realdata: Path) -> tuple[Path, Path]:
    """(annotation file, image root) of the real COCO samples (read-only)."""
    return realdata / "coco" / "test_coco.json", realdata / "coco"


@pytest.fixture(scope="module")
def full_build(coco: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every default style built once, single worker."""
    out = tmp_path_factory.mktemp("full") / "ood"
    build(*coco, out, progress=False)
    return out


@pytest.fixture(scope="module")
def light_build(coco: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LIGHT styles built once with seed 0: the reference the determinism tests compare to."""
    out = tmp_path_factory.mktemp("light") / "ood"
    build(*coco, out, LIGHT, seed=0, progress=False)
    return out


def assert_only_allowed_differences(source: dict, split: dict, name: str, suffix: str) -> None:
    """A split's annotations equal the input except `info.coco_ood` and the image file suffix."""
    assert list(split) == list(source)
    for key in source:
        if key not in ("info", "images"):
            assert split[key] == source[key], key
    assert split["info"] == {
        **source["info"],
        "coco_ood": {
            "split": name,
            "source_annotations_sha256": split["info"]["coco_ood"]["source_annotations_sha256"],
        },
    }
    assert len(split["images"]) == len(source["images"])
    for before, after in zip(source["images"], split["images"], strict=True):
        assert {k: v for k, v in after.items() if k != "file_name"} == {
            k: v for k, v in before.items() if k != "file_name"
        }
        assert after["file_name"] == str(Path(before["file_name"]).with_suffix(suffix))


def test_default_styles_are_the_weight_free_splits() -> None:
    assert default_styles() == ["oil", "pencil", "watercolor", "cartoon"] + [
        f"corrupt-s{k}" for k in range(1, 6)
    ]


def test_annotations_differ_only_in_allowed_fields(coco: tuple[Path, Path], full_build: Path) -> None:
    source = json.loads(coco[0].read_text())
    for name in default_styles():
        paths = split_paths(full_build, name)
        split = json.loads(paths.annotations.read_text())
        assert_only_allowed_differences(source, split, name, ".jpg")
        assert split["info"]["coco_ood"]["source_annotations_sha256"] == sha256_file(coco[0])


def test_png_output_renames_files_in_annotations(coco: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "ood"
    build(*coco, out, ["corrupt-s1"], image_format="png", progress=False)
    paths = split_paths(out, "corrupt-s1")
    assert_only_allowed_differences(
        json.loads(coco[0].read_text()), json.loads(paths.annotations.read_text()), "corrupt-s1", ".png"
    )
    assert sorted(p.suffix for p in paths.images.iterdir()) == [".png"] * 4
    assert verify(out, "corrupt-s1") == []


def test_images_keep_size_and_manifest_verifies(coco: tuple[Path, Path], full_build: Path) -> None:
    source = json.loads(coco[0].read_text())
    sizes = {image["id"]: (image["height"], image["width"]) for image in source["images"]}
    for name in default_styles():
        paths = split_paths(full_build, name)
        assert verify(full_build, name) == []
        manifest = json.loads(paths.manifest.read_text())
        assert manifest["header"]["split"] == name
        assert [r["image_id"] for r in manifest["images"]] == sorted(sizes)
        for record in manifest["images"]:
            image = load_rgb_uint8(paths.images / record["file_name"])
            assert image.shape[:2] == sizes[record["image_id"]]
            assert record["style"] == name and record["params"]
            assert record["seed"] == image_seed(0, name, record["image_id"])
            assert record["source_sha256"] == sha256_file(coco[1] / record["source_file_name"])
            # A style must really change the picture.
            assert not np.array_equal(image, load_rgb_uint8(coco[1] / record["source_file_name"]))


def test_verify_detects_a_tampered_image(coco: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "ood"
    build(*coco, out, ["corrupt-s2"], progress=False)
    victim = split_paths(out, "corrupt-s2").images / "000000040083.jpg"
    victim.write_bytes(victim.read_bytes() + b"\0")
    assert verify(out, "corrupt-s2") == [f"{victim}: hash differs from the manifest"]


def test_same_seed_same_bytes_other_seed_differs(
    coco: tuple[Path, Path], light_build: Path, tmp_path: Path
) -> None:
    again, other = tmp_path / "again", tmp_path / "other"
    build(*coco, again, LIGHT, seed=0, progress=False)
    assert tree(again) == tree(light_build)
    build(*coco, other, LIGHT, seed=1, progress=False)
    reference, changed = tree(light_build), tree(other)
    images = [key for key in reference if "/images/" in key]
    assert len(images) == 8 and all(reference[key] != changed[key] for key in images)


def test_rerun_repairs_missing_and_corrupt_outputs(
    coco: tuple[Path, Path], light_build: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ood"
    build(*coco, out, LIGHT, progress=False)
    images = split_paths(out, "pencil").images
    (images / "000000000785.jpg").unlink()
    (images / "000000196141.jpg").write_bytes(b"not the recorded bytes")
    build(*coco, out, LIGHT, progress=False)
    assert tree(out) == tree(light_build)


def test_two_workers_equal_one(coco: tuple[Path, Path], light_build: Path, tmp_path: Path) -> None:
    out = tmp_path / "ood"
    build(*coco, out, LIGHT, workers=2, progress=False)
    assert tree(out) == tree(light_build)


def test_shards_merge_to_the_bytes_of_one_run(
    coco: tuple[Path, Path], light_build: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ood"
    assert build(*coco, out, LIGHT, shard=(1, 2), progress=False) is None
    with pytest.raises(CocoOodError, match="0/2 missing"):
        merge(coco[0], out)
    assert build(*coco, out, LIGHT, shard=(0, 2), progress=False) is None
    assert not split_paths(out, "pencil").manifest.exists()
    assert sorted(merge(coco[0], out)) == sorted(LIGHT)
    assert tree(out) == tree(light_build)


def test_killed_run_resumes_to_identical_bytes(coco: tuple[Path, Path], tmp_path: Path) -> None:
    styles = ["oil", "watercolor"]  # the slowest styles: a wide window to kill in
    reference, out = tmp_path / "reference", tmp_path / "killed"
    build(*coco, reference, styles, progress=False)
    command = [
        sys.executable,
        str(REPO_ROOT / "tools" / "build_coco_ood.py"),
        "--ann",
        str(coco[0]),
        "--image-root",
        str(coco[1]),
        "--out",
        str(out),
        "--styles",
        *styles,
        "--no-progress",
        "--checkpoint-seconds",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    oil = split_paths(out, "oil").images
    deadline = time.monotonic() + 60
    # Kill once the second image is written: the first is then recorded, the second written but not recorded,
    # so the resume exercises both "reuse a verified output" and "re-render an unrecorded one".
    while not (oil.is_dir() and sum(p.suffix == ".jpg" for p in oil.iterdir()) >= 2):
        assert process.poll() is None, f"builder exited before it could be killed: {process.stderr.read()!r}"
        assert time.monotonic() < deadline, "no output appeared within 60 s"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not split_paths(out, "oil").manifest.exists(), (
        "the run finished before the kill; nothing was tested"
    )
    progress = json.loads((out / ".work" / "shard-0-of-1.json").read_text())
    assert len(progress["splits"]["oil"]["images"]) >= 1
    build(*coco, out, styles, progress=False)
    assert tree(out) == tree(reference)


def test_refuses_to_overwrite_its_input(coco: tuple[Path, Path], tmp_path: Path) -> None:
    ann, root = coco
    with pytest.raises(CocoOodError, match="overlaps the image root"):
        build(ann, root, root, LIGHT, progress=False)
    with pytest.raises(CocoOodError, match="overlaps the image root"):
        build(ann, root, root / "ood", LIGHT, progress=False)
    with pytest.raises(CocoOodError, match="overlaps the image root"):
        build(ann, root, root.parent, LIGHT, progress=False)
    inside = tmp_path / "out" / "test_coco.json"
    inside.parent.mkdir()
    inside.write_bytes(ann.read_bytes())
    with pytest.raises(CocoOodError, match="the annotation file lies inside the output root"):
        build(inside, root, tmp_path / "out", LIGHT, progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test_coco.json"]


def test_escaping_file_name_is_refused(coco: tuple[Path, Path], tmp_path: Path) -> None:
    data = json.loads(coco[0].read_text())
    data["images"][1]["file_name"] = "../../etc/passwd.jpg"
    ann = tmp_path / "evil.json"
    ann.write_text(json.dumps(data))
    out = tmp_path / "ood"
    with pytest.raises(
        CocoOodError, match=r"image id 40083: file name '../../etc/passwd.jpg' escapes the image root"
    ):
        build(ann, coco[1], out, LIGHT, progress=False)
    assert not out.exists()


def test_other_settings_into_the_same_root_are_refused(coco: tuple[Path, Path], light_build: Path) -> None:
    with pytest.raises(CocoOodError, match="different settings for split 'pencil' \\(seed\\)"):
        build(*coco, light_build, ["pencil"], seed=7, progress=False)


def test_image_seed_depends_on_seed_style_and_image_only() -> None:
    seeds = {
        image_seed(0, "oil", 785),
        image_seed(1, "oil", 785),
        image_seed(0, "pencil", 785),
        image_seed(0, "oil", 786),
    }
    assert len(seeds) == 4
    assert image_seed(0, "oil", 785) == image_seed(0, "oil", 785)


def test_contact_sheet(coco: tuple[Path, Path], full_build: Path, tmp_path: Path) -> None:
    path = write_contact_sheet(tmp_path / "sheet.png", full_build, coco[1], default_styles())
    sheet = load_rgb_uint8(path)
    # 4 rows of (180-pixel cell + 18-pixel label band); 1 original + 9 splits of 240 pixels.
    assert sheet.shape == (4 * 198, 10 * 240, 3)
