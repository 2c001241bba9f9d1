"""Annotating videos with a video pose predictor (DiffPose): PoseTrack JSON, overlays and ControlNet per
frame.

Layout of an output folder, one subfolder per video (`<name>`: the frame folder's or video file's stem):

    failures.json                  every video that could not be annotated: [{video, reason}]
    <name>/posetrack.json the official per-video PoseTrack18 layout (images, annotations with track ids,
                                   17-slot keypoints and per-joint `scores` = heatmap max x box score), which
                                   tools/eval_posetrack.py and poseval read
    <name>/overlay/NNNNNN.png      skeleton overlays; <name>/overlay.mp4 the same frames as a video
    <name>/controlnet/NNNNNN.png|.json   ControlNet OpenPose conditioning per frame, on request
    <name>/done.json               written last with the settings, the source's identity (size and mtime of
                                   the video file or of every frame) and the files written: a rerun skips a
                                   video whose record matches and redoes one whose source changed, removing
                                   the files of the earlier run that the new one did not write again

Every file is written atomically (a temporary file renamed into place), so a killed run leaves complete files
only and a rerun with the same settings redoes exactly the unfinished videos. Before anything is written, two
videos with one output name and an output folder that overlaps a video are refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from zoo.data.synthetic.moving_figures import posetrack_category
from zoo.data.video import FRAME_SUFFIXES, VIDEO_SUFFIXES, VideoDecodeError, opencv_path
from zoo.export.controlnet import ImagePoses, encode_png, export_image, write_controlnet_pose
from zoo.inference.annotate.state import AnnotationError
from zoo.inference.video_pose import VideoPoseOutput, VideoPosePredictor, load_frames
from zoo.utils.files import (
    OutputLocationError,
    atomic_write_bytes,
    atomic_write_json,
    check_output_location,
    check_unique_outputs,
    move_into_place,
    safe_join,
)
from zoo.visualize import draw_skeleton

DONE_FILE = "done.json"
FAILURES_FILE = "failures.json"
# PoseTrack slots without a COCO counterpart (head_bottom, head_top in the eye slots; ears never annotated).
_NOT_COCO = (1, 2, 3, 4)


@dataclass
class VideoAnnotationSummary:
    """What a run did: videos annotated, skipped as already done, and failed (with the reason)."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)


def posetrack_file(name: str, output: VideoPoseOutput, frames: Sequence[np.ndarray]) -> dict[str, Any]:
    """One video's predictions in the per-video PoseTrack18 layout (image id = 10^4 x 1 + frame, as poseval).
    """
    height, width = frames[0].shape[:2]
    images, annotations = [], []
    for t in range(len(output)):
        image_id = 10_000 + t
        images.append(
            {
                "id": image_id,
                "frame_id": image_id,
                "vid_id": name,
                "file_name": f"{name}/{t:06d}.jpg",
                "nframes": len(output),
                "is_labeled": True,
                "width": width,
                "height": height,
            }
        )
        for person in range(len(output.keypoints[t])):
            points = output.keypoints[t][person]
            x1, y1, x2, y2 = (float(v) for v in output.boxes[t][person])
            annotations.append(
                {
                    "id": image_id * 100 + person,
                    "image_id": image_id,
                    "track_id": int(output.track_ids[t][person]),
                    "category_id": 1,
                    "keypoints": [float(v) for xy in points for v in (*xy, 1.0)],
                    "scores": [float(s) for s in output.scores[t][person] * output.box_scores[t][person]],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
    return {"images": images, "annotations": annotations, "categories": [posetrack_category()]}


def video_name(video: str | os.PathLike) -> str:
    """The output folder name of a video: a video file's stem, a frame folder's name."""
    path = Path(video)
    return path.stem if path.is_file() else path.name


def source_identity(video: str | os.PathLike) -> dict[str, Any]:
    """What identifies a video's content for resume: size and mtime of the file, or of every frame file."""
    path = Path(video)
    if path.is_dir():
        frames = sorted((entry.name, entry.stat()) for entry in os.scandir(path) if entry.is_file())
        return {"frames": [[os.fsencode(name).hex(), st.st_size, st.st_mtime_ns] for name, st in frames]}
    info = path.stat()
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """Encode RGB frames [H, W, 3] as an mp4 (OpenCV mp4v) atomically."""
    height, width = frames[0].shape[:2]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        with opencv_path(tmp) as name:  # a folder name that is not UTF-8 would crash OpenCV
            writer = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
            if not writer.isOpened():
                raise VideoDecodeError(f"{path}: OpenCV cannot write mp4 (no mp4v encoder)")
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            writer.release()
        move_into_place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class VideoAnnotator:
    """Annotate frame folders or video files with a VideoPosePredictor: `VideoAnnotator(p, out).run(videos)`.
    """

    def __init__(
        self,
        predictor: VideoPosePredictor,
        out_dir: str | os.PathLike,
        controlnet: bool = False,
        overlay: bool = True,
        overlay_mp4: bool = True,
        fps: float = 10.0,
        resume: bool = True,
        **predict_options: Any,
    ) -> None:
        """`predict_options` go to the predictor call (box_source, steps, ensemble, flip_test, ...)."""
        self.predictor, self.out_dir = predictor, Path(out_dir)
        self.controlnet, self.overlay, self.overlay_mp4, self.fps = controlnet, overlay, overlay_mp4, fps
        self.resume, self.options = resume, predict_options

    def settings(self) -> dict[str, Any]:
        """What a done record must match for a rerun to skip a video."""
        return {
            "options": {
                k: v for k, v in sorted(self.options.items()) if isinstance(v, (int, float, str, bool))
            },
            "controlnet": self.controlnet,
            "overlay": self.overlay,
            "overlay_mp4": self.overlay_mp4,
            "model": str(self.predictor.config.get("feature_site")),
            "input_size": self.predictor.input_size,
        }

    def _record(self, folder: Path) -> dict[str, Any] | None:
        """The done record of an output folder, or None when there is none or it is unreadable."""
        record = folder / DONE_FILE
        if not record.is_file():
            return None
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _is_done(self, folder: Path, video: str | os.PathLike | None = None) -> bool:
        record = self._record(folder) if self.resume else None
        if record is None or record.get("settings") != json.loads(json.dumps(self.settings())):
            return False
        try:
            return video is None or record.get("source") == source_identity(video)
        except OSError:
            return False

    def annotate(self, video: str | os.PathLike) -> Path:
        """Annotate one video (frame folder or video file); returns its output folder."""
        name = video_name(video)
        folder = self.out_dir / name
        try:  # taken before the frames are read: a change while reading makes the next run redo the video
            source = source_identity(video)
        except OSError:
            source = None  # missing or unreadable: load_frames names the problem
        previous = (self._record(folder) or {}).get("files", [])
        frames = load_frames(video)
        output = self.predictor(frames, **self.options)
        written = ["posetrack.json"]
        atomic_write_json(folder / "posetrack.json", posetrack_file(name, output, frames))
        overlays = []
        for t, frame in enumerate(frames):
            if self.overlay or self.overlay_mp4:
                picture = draw_skeleton(frame, output.keypoints[t], output.scores[t], output.metainfo)
                overlays.append(picture)
                if self.overlay:
                    atomic_write_bytes(folder / "overlay" / f"{t:06d}.png", encode_png(picture))
                    written.append(f"overlay/{t:06d}.png")
            if self.controlnet:
                coco = [
                    np.concatenate([k, s[:, None]], axis=1)
                    for k, s in zip(output.keypoints[t], output.scores[t], strict=True)
                ]
                for person in coco:
                    person[list(_NOT_COCO), 2] = 0.0  # no COCO eyes / ears in PoseTrack's slots
                poses = ImagePoses(t, f"{t:06d}", frame.shape[1], frame.shape[0], coco)
                paths = write_controlnet_pose(folder / "controlnet", export_image(poses))
                written += [path.relative_to(folder).as_posix() for path in paths]
        if self.overlay_mp4 and overlays:
            write_mp4(folder / "overlay.mp4", overlays, self.fps)
            written.append("overlay.mp4")
        record = {"settings": self.settings(), "frames": len(frames), "source": source, "files": written}
        atomic_write_json(folder / DONE_FILE, record)
        # Files the earlier run of this video wrote (its record lists them) and this one did not: stale now.
        for stale in sorted(set(previous) - set(written)) if isinstance(previous, list) else []:
            try:
                path = safe_join(folder, stale, "output folder")
            except ValueError:  # not a name this annotator writes: never touched
                continue
            if path.is_file() and path.name != DONE_FILE:
                path.unlink()
        return folder

    def check_plan(self, videos: Sequence[str | os.PathLike]) -> None:
        """Refuse, before anything is written, two videos with one output folder and outputs that overlap a
        video (the output folder of a frame folder given as its own parent, or inside it)."""
        names = [video_name(video) for video in videos]
        check_unique_outputs((str(video), [name]) for video, name in zip(videos, names, strict=True))
        for video, name in zip(videos, names, strict=True):
            try:
                safe_join(self.out_dir, name, "output folder")
            except ValueError as error:
                raise OutputLocationError(f"video {str(video)!r}: {error}") from None
            check_output_location(self.out_dir / name, {"video": video}, what="output folder")

    def run(self, videos: Sequence[str | os.PathLike]) -> VideoAnnotationSummary:
        """Annotate every video; one that cannot be read is listed in failures.json and the run goes on."""
        videos = list(videos)
        self.check_plan(videos)
        summary = VideoAnnotationSummary()
        for video in videos:
            name = video_name(video)
            if self._is_done(self.out_dir / name, video):
                summary.skipped.append(name)
                continue
            try:
                self.annotate(video)
            except (FileNotFoundError, VideoDecodeError, ValueError) as error:
                summary.failures.append({"video": str(video), "reason": str(error)})
                continue
            summary.done.append(name)
        atomic_write_json(self.out_dir / FAILURES_FILE, summary.failures)
        return summary


def list_videos(path: str | os.PathLike) -> list[Path]:
    """The videos under `path`: a video file; a frame folder (it holds frame images: one video); or a folder
    of video files and frame folders (its direct children, sorted by name). Two videos with one output name
    (a frame folder `x` next to `x.mp4`) are refused: they would share `<out>/x/`."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise ValueError(f"{path}: not a video file ({'/'.join(VIDEO_SUFFIXES)})")
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such video file or folder")

    def frame_folder(folder: Path) -> bool:
        return any(p.is_file() and p.suffix.lower() in FRAME_SUFFIXES for p in folder.iterdir())

    if frame_folder(path):
        return [path]
    videos = sorted(
        p
        for p in path.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and frame_folder(p)))
    )
    if not videos:
        raise ValueError(f"{path}: holds no video files ({'/'.join(VIDEO_SUFFIXES)}) or frame folders")
    names: dict[str, Path] = {}
    for video in videos:
        name = video.stem if video.is_file() else video.name
        if name in names:
            raise ValueError(f"{names[name]} and {video} would share the output folder {name!r}")
        names[name] = video
    return videos


class VideoPoseAdapter:
    """The registry's annotator adapter of video pose families (`annotator_adapter` in zoo/model_zoo.py).

    Image adapters (zoo.inference.annotate.adapters) run inside the image Annotator; this one says that its
    family annotates videos (`inputs`) and builds the VideoAnnotator (`annotator`), which is how
    tools/annotate.py picks the annotator for a model. The image Annotator refuses it with that advice.
    """

    inputs = "videos"
    kind = "video_pose"

    def __init__(self, key: str, predictor: Any, out_dir: Path, options: Any) -> None:
        """Called by the image Annotator only: refused, a video model has no per-image outputs."""
        raise AnnotationError(
            f"{key!r} ({type(predictor).__name__}) annotates videos, not images: use "
            "zoo.inference.annotate.video.VideoAnnotator or `tools/annotate.py --input VIDEO_OR_FOLDER`"
        )

    @classmethod
    def task_of(cls, predictor: Any) -> str:
        """The default output folder name: "video_pose"."""
        return cls.kind

    @classmethod
    def annotator(cls, predictor: Any, out_dir: str | os.PathLike, **options: Any) -> VideoAnnotator:
        """The VideoAnnotator writing `predictor`'s outputs to `out_dir` (options: VideoAnnotator's)."""
        return VideoAnnotator(predictor, out_dir, **options)
