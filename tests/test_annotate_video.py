"""tools/annotate.py on videos: the registry adapter picks the VideoAnnotator; outputs, resume, bad input."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zoo
from zoo.data.synthetic.moving_figures import render_moving_video
from zoo.evaluation.posetrack import poseval_frames
from zoo.inference.annotate import AnnotationError, Annotator, predictor_task
from zoo.inference.annotate.video import VideoPoseAdapter, list_videos, write_mp4
from zoo.registry import get_family

_SPEC = importlib.util.spec_from_file_location(
    "annotate_tool_video", Path(__file__).resolve().parents[1] / "tools" / "annotate.py"
)
annotate = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(annotate)

REAL_VIDEO = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "posetrack18" / "videos"
REAL_MP4 = REAL_VIDEO / "000001_mpiinew_test" / "000001_mpiinew_test.mp4"
FAST = ["--steps", "1", "--ensemble", "1", "--no-progress"]


def _files(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two synthetic videos: an mp4 and a frame folder (4 frames of 96x96 each)."""
    root = tmp_path_factory.mktemp("videos")
    first = render_moving_video(5, num_frames=4, width=96, height=96, max_people=1)
    write_mp4(root / "walk.mp4", first.frames, fps=5)
    (root / "jump").mkdir()
    for t, frame in enumerate(render_moving_video(6, num_frames=4, width=96, height=96).frames):
        Image.fromarray(frame).save(root / "jump" / f"{t:06d}.png")
    (root / "notes.txt").write_text("not a video\n")
    return root


def test_registry_adapter_says_videos_and_the_image_annotator_refuses_it(tmp_path: Path) -> None:
    assert get_family("diffpose").resolve("annotator_adapter") is VideoPoseAdapter
    assert get_family("sdpose").resolve("annotator_adapter").__name__ == "PoseAdapter"
    predictor = zoo.load("tiny-diffpose")
    assert predictor_task(predictor) == "video_pose"
    with pytest.raises(AnnotationError, match="annotates videos, not images"):
        Annotator([predictor], tmp_path / "out")


def test_list_videos(videos: Path, tmp_path: Path) -> None:
    assert list_videos(videos) == [videos / "jump", videos / "walk.mp4"]
    assert list_videos(videos / "jump") == [videos / "jump"]  # a frame folder is one video
    assert list_videos(videos / "walk.mp4") == [videos / "walk.mp4"]
    with pytest.raises(ValueError, match="not a video file"):
        list_videos(videos / "notes.txt")
    with pytest.raises(FileNotFoundError, match="no such video"):
        list_videos(tmp_path / "absent")
    clash = tmp_path / "clash"
    (clash / "walk").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(clash / "walk" / "000000.png")
    (clash / "walk.mp4").write_bytes((videos / "walk.mp4").read_bytes())
    with pytest.raises(ValueError, match="would share the output folder 'walk'"):
        list_videos(clash)


def test_cli_annotates_a_folder_of_videos_and_resumes(
    videos: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    argv = ["--model", "tiny-diffpose", "--input", str(videos), "--out", str(out), "--controlnet", *FAST]
    assert annotate.main(argv) == 0
    assert "annotated 2 of 2 videos (0 already done, 0 failed" in capsys.readouterr().out
    folder = out / "video_pose"
    for name, frames in (("walk", 4), ("jump", 4)):
        data = json.loads((folder / name / "posetrack.json").read_text())
        assert len(poseval_frames(data, folder / name / "posetrack.json", ground_truth=False)) == frames
        assert len(list((folder / name / "overlay").glob("*.png"))) == frames
        assert (folder / name / "overlay.mp4").is_file()
        assert len(list((folder / name / "controlnet").glob("*.png"))) == frames
        assert len(list((folder / name / "controlnet").glob("*.json"))) == frames
    assert json.loads((folder / "failures.json").read_text()) == []
    finished = _files(folder)
    stamps = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}

    # Rerun: nothing is redone.
    assert annotate.main(argv) == 0
    assert "annotated 0 of 2 videos (2 already done" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items() if p.name != "failures.json")

    # A run killed inside "walk": its record is missing and a file is stale; only "walk" is redone and the
    # folder ends with the bytes of the uninterrupted run.
    (folder / "walk" / "done.json").unlink()
    (folder / "walk" / "posetrack.json").write_text("{}")
    (folder / "walk" / "overlay" / "000003.png").unlink()
    assert annotate.main(argv) == 0
    assert "annotated 1 of 2 videos (1 already done" in capsys.readouterr().out
    assert _files(folder) == finished
    jump = folder / "jump" / "posetrack.json"
    assert jump.stat().st_mtime_ns == stamps[jump]

    # Other settings are another result: the videos are redone.
    assert annotate.main([*argv[: -len(FAST)], "--steps", "2", "--ensemble", "1", "--no-progress"]) == 0
    assert "annotated 2 of 2 videos (0 already done" in capsys.readouterr().out


@pytest.mark.skipif(not REAL_MP4.is_file(), reason="needs ../shared/realdata/posetrack18")
def test_cli_on_the_real_posetrack_mp4(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--model", "tiny-diffpose", "--input", str(REAL_MP4), "--out", str(tmp_path / "out"), *FAST]
    assert annotate.main(argv) == 0
    folder = tmp_path / "out" / "video_pose" / "000001_mpiinew_test"
    data = json.loads((folder / "posetrack.json").read_text())
    assert [image["width"] for image in data["images"]] == [1280] * 5  # one whole-frame person per frame
    assert len(data["annotations"]) == 5 and {a["track_id"] for a in data["annotations"]} == {0}
    assert len(list((folder / "overlay").glob("*.png"))) == 5 and not (folder / "controlnet").exists()
    assert annotate.main(argv) == 0
    assert "1 already done" in capsys.readouterr().out


def test_cli_bad_video_input_and_mixed_models(videos: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.mp4").write_bytes(b"\x00" * 64)
    (broken / "good.mp4").write_bytes((videos / "walk.mp4").read_bytes())
    out = tmp_path / "out"
    assert annotate.main(["--model", "tiny-diffpose", "--input", str(broken), "--out", str(out), *FAST]) == 0
    failures = json.loads((out / "video_pose" / "failures.json").read_text())
    assert [f["video"] for f in failures] == [str(broken / "bad.mp4")]  # the run went on: "good" is done
    assert (out / "video_pose" / "good" / "done.json").is_file()
    for argv in (
        ["--models", "tiny-diffpose", "tiny-sdpose-body", "--input", str(videos)],
        ["--model", "tiny-diffpose", "--input", str(videos), "--boxes", "det-file", str(broken / "bad.mp4")],
        ["--model", "tiny-diffpose", "--input", str(videos / "notes.txt")],
        ["--model", "tiny-diffpose", "--input", str(videos), "--steps", "0"],
        ["--model", "tiny-diffpose", "--coco-images", str(videos / "notes.txt")],
    ):
        with pytest.raises(SystemExit) as error:
            annotate.main([*argv, "--out", str(tmp_path / "refused")])
        assert error.value.code == 2
    assert not (tmp_path / "refused").exists()
