"""The DiffPose picture: tiny-diffpose's skeletons on frames of a held-out synthetic video.

    OMP_NUM_THREADS=1 python -m zoo.recipes.diffpose_strip --out docs/diffpose_strip.png

The video is rendered like the tiny model's test split (the held-out seed sequence, the occluders of
configs/tiny/diffpose.yaml) at 256 px so that the skeletons can be seen; the predictor gets the figures'
ground-truth boxes and track ids, so the picture shows the pose model, not a detector. The same arguments
give the same pixels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml

from zoo.data.datamodule import TEST_SEED
from zoo.data.synthetic.moving_figures import MovingVideo, render_moving_video, video_seed
from zoo.data.transforms import bbox_xywh_to_xyxy
from zoo.export.controlnet import encode_png
from zoo.registry import REPO_ROOT
from zoo.utils.files import atomic_write_bytes

CONFIG = REPO_ROOT / "configs" / "tiny" / "diffpose.yaml"
FRAMES = (0, 2, 4, 6, 8)
VIDEO = 2  # the first held-out video with two figures
SIDE = 256


def held_out_video(video_index: int = VIDEO, frames: tuple[int, ...] = FRAMES) -> MovingVideo:
    """Held-out video `video_index` of the tiny model's test split, at SIDE px, long enough for `frames`."""
    render = yaml.safe_load(CONFIG.read_text())["data"]["init_args"].get("render") or {}
    return render_moving_video(video_seed(TEST_SEED, video_index), max(frames) + 2, SIDE, SIDE, **render)


def render_strip(
    model: str = "tiny-diffpose", video_index: int = VIDEO, frames: tuple[int, ...] = FRAMES
) -> np.ndarray:
    """The model's skeletons on `frames` of held-out video `video_index`: uint8 RGB [SIDE, n * SIDE, 3]."""
    import zoo

    video = held_out_video(video_index, frames)
    boxes = [
        bbox_xywh_to_xyxy(np.array([p.bbox for p in people], np.float32).reshape(-1, 4)).astype(np.float32)
        for people in video.people
    ]
    track_ids = [np.array([p.track_id for p in people], np.int64) for people in video.people]
    output = zoo.load(model)(video.frames, boxes=boxes, track_ids=track_ids)
    return output.strip(video.frames, indices=frames, radius=4, thickness=3)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="PNG to write (atomically)")
    parser.add_argument(
        "--model", default="tiny-diffpose", help="registry name or folder of a DiffPose model"
    )
    parser.add_argument("--video", type=int, default=VIDEO, help="index of the held-out video")
    args = parser.parse_args(argv)
    picture = render_strip(args.model, args.video)
    out = Path(args.out)
    atomic_write_bytes(out, encode_png(picture))
    print(f"wrote {out} ({picture.shape[1]}x{picture.shape[0]})")
    return out


if __name__ == "__main__":
    main()
