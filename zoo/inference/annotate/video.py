"""Annotating videos with a video pose predictor (DiffPose): PoseTrack JSON, overlays and ControlNet per
frame.

Layout of an output folder, one subfolder per video (`<name>`: the frame folder's or video file's stem):

    failures.json                  every video that could not be annotated: [{video, reason}]
    <name>/posetrack.json the official per-video PoseTrack18 layout (images, annotations with track ids,
                                   17-slot keypoints and per-joint `scores` = heatmap max x box score), which
                                   tools/eval_posetrack.py and poseval read
    <name>/overlay/NNNNNN.png      skeleton overlays; <name>/overlay.mp4 the same frames as a video
    <name>/controlnet/NNNNNN.png|.json   ControlNet OpenPose conditioning per frame, on request
    <name>/done.json               written last with the settings: a rerun skips a video whose record matches

Every file is written atomically (a temporary file renamed into place), so a killed run leaves complete files
only and a rerun with the same settings redoes exactly the unfinished videos.
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
from zoo.data.video import VideoDecodeError
from zoo.export.controlnet import ImagePoses, encode_png, export_image, write_controlnet_pose
from zoo.inference.video_pose import VideoPoseOutput, VideoPosePredictor, load_frames
from zoo.utils.files import atomic_write_bytes, atomic_write_json, move_into_place
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


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """Encode RGB frames [H, W, 3] as an mp4 (OpenCV mp4v) atomically."""
    height, width = frames[0].shape[:2]
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".mp4", dir=path.parent)
    os.close(fd)
    try:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
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

    def _is_done(self, folder: Path) -> bool:
        record = folder / DONE_FILE
        if not (self.resume and record.is_file()):
            return False
        try:
            return json.loads(record.read_text()).get("settings") == json.loads(json.dumps(self.settings()))
        except ValueError:
            return False

    def annotate(self, video: str | os.PathLike) -> Path:
        """Annotate one video (frame folder or video file); returns its output folder."""
        name = Path(video).stem if Path(video).is_file() else Path(video).name
        folder = self.out_dir / name
        frames = load_frames(video)
        output = self.predictor(frames, **self.options)
        atomic_write_json(folder / "posetrack.json", posetrack_file(name, output, frames))
        overlays = []
        for t, frame in enumerate(frames):
            if self.overlay or self.overlay_mp4:
                picture = draw_skeleton(frame, output.keypoints[t], output.scores[t], output.metainfo)
                overlays.append(picture)
                if self.overlay:
                    atomic_write_bytes(folder / "overlay" / f"{t:06d}.png", encode_png(picture))
            if self.controlnet:
                coco = [
                    np.concatenate([k, s[:, None]], axis=1)
                    for k, s in zip(output.keypoints[t], output.scores[t], strict=True)
                ]
                for person in coco:
                    person[list(_NOT_COCO), 2] = 0.0  # no COCO eyes / ears in PoseTrack's slots
                poses = ImagePoses(t, f"{t:06d}", frame.shape[1], frame.shape[0], coco)
                write_controlnet_pose(folder / "controlnet", export_image(poses))
        if self.overlay_mp4 and overlays:
            write_mp4(folder / "overlay.mp4", overlays, self.fps)
        atomic_write_json(folder / DONE_FILE, {"settings": self.settings(), "frames": len(frames)})
        return folder

    def run(self, videos: Sequence[str | os.PathLike]) -> VideoAnnotationSummary:
        """Annotate every video; one that cannot be read is listed in failures.json and the run goes on."""
        summary = VideoAnnotationSummary()
        for video in videos:
            name = Path(video).stem if Path(video).is_file() else Path(video).name
            if self._is_done(self.out_dir / name):
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
