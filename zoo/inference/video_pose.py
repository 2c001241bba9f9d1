"""Video pose prediction API (DiffPose): frames + person boxes -> tracked keypoints per frame.

    predictor = zoo.load("tiny-diffpose")
    out = predictor("video.mp4", box_source="hog", steps=2, ensemble=4)
    out.keypoints[t], out.scores[t], out.track_ids[t]          # [N, 17, 2], [N, 17], [N] of frame t

Pipeline: person boxes per frame
(the caller's, `detection_boxes` of a COCO detection file, OpenCV's HOG detector or the whole frame) -> track
ids by greedy IoU matching between consecutive frames -> one clip per person and frame
(the key frame and its neighbours `offsets`, repeating the nearest frame past either end) -> top-down crops ->
DiffPose heatmaps (DDIM `steps`, `ensemble` initialisations) -> frame-pixel keypoints.

Feature reuse: a clip's frames are all cropped with one box, as in training. With `box_window` = W the key
frames of a track are taken W at a time and every clip of such a window crops with the same box (the union of
the track's boxes over the window), so a frame crop is shared by every clip of the window that contains it:
its backbone features are computed once and reused (T x fewer backbone calls for long windows). `box_window=1`
crops each clip with its own key frame's box, exactly as the evaluation datasets do; identical boxes
(the whole frame) are shared whatever the window.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.codecs import decode_udp_batched, flip_heatmaps
from zoo.data.images import load_rgb_uint8
from zoo.data.metainfo import PoseMetainfo, load_metainfo
from zoo.data.posetrack import clip_frame_indices
from zoo.data.transforms import BBOX_PADDING, TopDownTransform, decoded_to_crop, keypoints_to_image
from zoo.data.video import open_video
from zoo.inference.pose import person_boxes as find_person_boxes
from zoo.models.diffpose.model import DiffPose, load_diffpose

BOX_SOURCES = ("whole_frame", "hog")
# Consecutive-frame matches below this box IoU (or pose OKS) start a new track.
TRACK_IOU_THRESHOLD = 0.3
TRACK_OKS_THRESHOLD = 0.5
TRACK_BY = ("iou", "oks")


@dataclass
class VideoPoseOutput:
    """Per-frame predictions: lists with one entry per video frame."""

    keypoints: list[np.ndarray]  # each [N, K, 2] float32, frame pixels
    scores: list[np.ndarray]  # each [N, K] float32, heatmap maxima
    track_ids: list[np.ndarray]  # each [N] int64, stable across frames
    boxes: list[np.ndarray]  # each [N, 4] float32 (x1, y1, x2, y2), the person boxes
    box_scores: list[np.ndarray]  # each [N] float32
    backbone_crops: int = (
        0  # frame crops that went through the backbone (feature reuse makes this < clips x T)
    )
    metainfo: PoseMetainfo | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keypoints)

    def strip(
        self,
        frames: Sequence[np.ndarray],
        indices: Sequence[int] | None = None,
        threshold: float = 0.3,
        **draw_options: Any,
    ) -> np.ndarray:
        """The frames `indices` (default all) with their skeletons, side by side: uint8 RGB [H, n * W, 3].

        `draw_options` (radius, thickness) go to zoo.visualize.draw_skeleton.
        """
        from zoo.visualize import draw_skeleton, image_grid

        chosen = range(len(self.keypoints)) if indices is None else indices
        tiles = [
            draw_skeleton(
                frames[i], self.keypoints[i], self.scores[i], self.metainfo, threshold, **draw_options
            )
            for i in chosen
        ]
        return image_grid(tiles, columns=len(tiles))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU [N, M] of boxes a [N, 4] and b [M, 4] (x1, y1, x2, y2)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # [N, M, 2]
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)  # [N, M]
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-9)


def _greedy_link(similarity: np.ndarray, previous_ids: np.ndarray, threshold: float) -> np.ndarray:
    """Ids [N] of the current persons from a similarity [N, M] to the previous frame's: -1 for no match."""
    current = np.full(similarity.shape[0], -1, dtype=np.int64)
    if similarity.size:
        taken = np.zeros(similarity.shape[1], dtype=bool)
        for flat in np.argsort(-similarity, axis=None, kind="stable"):  # pairs in decreasing similarity
            i, j = divmod(int(flat), similarity.shape[1])
            if similarity[i, j] < threshold:
                break
            if current[i] < 0 and not taken[j]:
                current[i], taken[j] = previous_ids[j], True
    return current


def _greedy_tracks(similarities: Sequence[np.ndarray], threshold: float) -> list[np.ndarray]:
    """Track ids per frame from similarities [N_t, N_{t-1}] of each frame to the previous one
    (the first unused)."""
    ids: list[np.ndarray] = []
    next_id = 0
    for t, similarity in enumerate(similarities):
        current = _greedy_link(similarity, ids[t - 1], threshold) if t else np.full(len(similarity), -1)
        for i in np.flatnonzero(current < 0):
            current[i], next_id = next_id, next_id + 1
        ids.append(current.astype(np.int64))
    return ids


def greedy_iou_tracks(
    boxes: Sequence[np.ndarray], threshold: float = TRACK_IOU_THRESHOLD
) -> list[np.ndarray]:
    """Track ids per frame: each box takes the id of the previous frame's box it overlaps most, greedily.

    Pairs of (current, previous-frame) boxes are taken in order of decreasing IoU, each box at most once; a
    pair below `threshold` is no match and the box starts a new track. Only the previous frame is looked at,
    so a person missed for one frame comes back with a new id.
    """
    similarities = [box_iou(b, boxes[t - 1]) if t else np.zeros((len(b), 0)) for t, b in enumerate(boxes)]
    return _greedy_tracks(similarities, threshold)


def greedy_oks_tracks(
    keypoints: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    sigmas: np.ndarray,
    threshold: float = TRACK_OKS_THRESHOLD,
) -> list[np.ndarray]:
    """Track ids per frame by greedy OKS (mmpose's, box areas) between consecutive frames' poses [N, K, 2]."""
    from zoo.evaluation.coco import oks_iou  # on use: it imports pycocotools

    def similarity(t: int) -> np.ndarray:
        current, previous = keypoints[t], keypoints[t - 1]
        areas = [(b[:, 2:] - b[:, :2]).prod(-1) for b in (boxes[t], boxes[t - 1])]
        rows = [
            oks_iou(current[i], previous, float(areas[0][i]), areas[1], sigmas) for i in range(len(current))
        ]
        return np.stack(rows) if rows else np.zeros((0, len(previous)))

    similarities = [similarity(t) if t else np.zeros((len(k), 0)) for t, k in enumerate(keypoints)]
    return _greedy_tracks(similarities, threshold)


def load_frames(video: Any) -> list[np.ndarray]:
    """A video as RGB uint8 frames [H, W, 3]: a list (paths, PIL, arrays), a frame folder or a video file."""
    if isinstance(video, (str, os.PathLike)):
        frames = open_video(video)
        return [frames.read(i) for i in range(len(frames))]
    if isinstance(video, np.ndarray) and video.ndim == 4:
        return [load_rgb_uint8(frame) for frame in video]
    if not isinstance(video, Sequence) or not len(video):
        raise ValueError("video must be a frame folder, a video file or a non-empty list of frames")
    return [load_rgb_uint8(frame) for frame in video]


class VideoPosePredictor:
    """DiffPose video predictor: `VideoPosePredictor.from_pretrained(folder)(video, boxes=...)` ->
    VideoPoseOutput."""

    family = "diffpose"

    def __init__(self, model: DiffPose, config: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.config = config
        self.device = torch.device(device)
        self.metainfo = load_metainfo(config["metainfo"])
        self.input_size = tuple(int(v) for v in config["input_size"])  # (w, h)
        self.blur_kernel_size = int(config.get("blur_kernel_size", 11))
        self.steps, self.ensemble = int(config.get("steps", 1)), int(config.get("ensemble", 1))
        self.eta = float(config.get("eta", 1.0))
        # The clip the model was trained on: key frame at `key_index` among `num_frames` consecutive frames.
        self.offsets = tuple(range(-model.key_index, model.num_frames - model.key_index))
        self.transform = TopDownTransform(
            self.input_size, padding=float(config.get("bbox_padding", BBOX_PADDING))
        )

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
    ) -> VideoPosePredictor:
        """Load an exported DiffPose folder (zoo_model.json); `dtype` runs the UNet and VAE under autocast."""
        model, config = load_diffpose(Path(folder))
        if dtype is not None:
            model.backbone.configure(autocast_dtype=dtype)
        return cls(model, config, device)

    # ------------------------------------------------------------------ boxes and tracks
    @staticmethod
    def _clip_boxes(boxes: list[np.ndarray], tracks: list[np.ndarray], window: int) -> list[np.ndarray]:
        """The crop box [N, 4] of every person's clip per frame: its track's union box over its window."""
        out = [b.copy() for b in boxes]
        if window <= 1:
            return out
        members: dict[int, list[tuple[int, int]]] = {}
        for frame, ids in enumerate(tracks):
            for person, track in enumerate(ids):
                members.setdefault(int(track), []).append((frame, person))
        for appearances in members.values():
            for start in range(0, len(appearances), window):
                group = appearances[start : start + window]
                stacked = np.stack([boxes[f][p] for f, p in group])  # [W, 4]
                union = np.concatenate([stacked[:, :2].min(0), stacked[:, 2:].max(0)])
                for f, p in group:
                    out[f][p] = union
        return out

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def __call__(
        self,
        video: Any,
        boxes: Sequence[Any] | None = None,
        box_scores: Sequence[Any] | None = None,
        track_ids: Sequence[Any] | None = None,
        box_source: str = "whole_frame",
        track_by: str = "iou",
        steps: int | None = None,
        ensemble: int | None = None,
        flip_test: bool = False,
        temporal: bool = True,
        box_window: int = 8,
        reuse_features: bool = True,
        batch_size: int = 32,
        seed: int = 0,
    ) -> VideoPoseOutput:
        """Predict the keypoints of every person in every frame of `video`.

        boxes: one [N, 4] (x1, y1, x2, y2) array per frame (N may be 0); without them `box_source` supplies
        them ("whole_frame": one person filling each frame; "hog": OpenCV's people detector). For a COCO
        detection file use `zoo.inference.pose.detection_boxes(det_file, image_ids)`. track_ids: one [N] array
        per frame; without them `track_by` links consecutive frames greedily by box IoU
        ("iou", before the poses, so clips can share a track's window box) or by the predicted poses' OKS
        ("oks", after the poses; every clip then crops with its own key frame's box). steps / ensemble: DDIM
        steps and initialisations (default: the model's). temporal=False gives the model only the key frame
        (repeated), the one-frame baseline. reuse_features=False recomputes every clip's frames
        (same output, T x the backbone calls). `seed` fixes the diffusion noise.
        """
        steps = self.steps if steps is None else int(steps)
        ensemble = self.ensemble if ensemble is None else int(ensemble)
        if steps < 1 or ensemble < 1 or batch_size < 1 or box_window < 1:
            raise ValueError(
                f"steps, ensemble, batch_size and box_window must be >= 1; got {steps}, {ensemble}, "
                f"{batch_size}, {box_window}"
            )
        frames = load_frames(video)
        sizes = {frame.shape[:2] for frame in frames}
        if len(sizes) != 1:
            raise ValueError(f"video frames differ in size: {sorted(sizes)}")
        if box_source not in BOX_SOURCES:
            raise ValueError(f"box_source must be one of {BOX_SOURCES}; got {box_source!r}")
        # "whole_frame" is the image predictor's "whole_image" (the pixel-centre extent of each frame).
        source = "whole_image" if box_source == "whole_frame" else box_source
        person_boxes, person_scores = find_person_boxes(frames, boxes, box_scores, source, unit="frame")
        if track_by not in TRACK_BY:
            raise ValueError(f"track_by must be one of {TRACK_BY}; got {track_by!r}")
        if track_ids is None:
            # OKS needs the poses first: tracks come last and no window box can depend on them.
            tracks = (
                greedy_iou_tracks(person_boxes)
                if track_by == "iou"
                else [np.zeros(len(b), dtype=np.int64) for b in person_boxes]
            )  # placeholders until poses
            box_window = box_window if track_by == "iou" else 1
        else:
            tracks = [np.asarray(t, dtype=np.int64).reshape(-1) for t in track_ids]
            if [len(t) for t in tracks] != [len(b) for b in person_boxes]:
                raise ValueError("track_ids must hold one id per box of every frame")
        crop_boxes = self._clip_boxes(person_boxes, tracks, box_window)
        offsets = self.offsets if temporal else (0,)

        # Every clip names its crops; equal (frame, box) requests are one crop when features are reused.
        requests: dict[tuple, int] = {}
        clips: list[list[int]] = []  # per clip: crop index of each of its frames
        owners: list[tuple[int, int]] = []  # per clip: (frame, person)
        for frame, frame_boxes in enumerate(crop_boxes):
            for person, box in enumerate(frame_boxes):
                indices = clip_frame_indices(frame, len(frames), offsets)
                keys = [
                    (index, *box.tolist()) if reuse_features else (len(clips), t, index, *box.tolist())
                    for t, index in enumerate(indices)
                ]
                clips.append([requests.setdefault(key, len(requests)) for key in keys])
                owners.append((frame, person))
        crops, matrices = [], []
        for key in requests:  # insertion order = crop index
            index, box = key[-5], np.asarray(key[-4:], dtype=np.float32)
            sample = self.transform(
                frames[index],
                box,
                np.zeros((self.metainfo.num_keypoints, 2)),
                np.zeros(self.metainfo.num_keypoints),
            )
            crops.append(sample["image"])
            matrices.append(sample["geometry"].matrix())
        keypoints = np.zeros((len(clips), self.metainfo.num_keypoints, 2), dtype=np.float32)
        scores = np.zeros((len(clips), self.metainfo.num_keypoints), dtype=np.float32)
        if clips:
            features = self._crop_features(np.stack(crops), flip_test, batch_size)  # [U(x2), C, h, w]
            heatmaps = self._sample(features, clips, len(crops), flip_test, steps, ensemble, batch_size, seed)
            decoded, confidence = decode_udp_batched(heatmaps, self.input_size, self.blur_kernel_size)
            crop_points = decoded_to_crop(decoded.cpu().numpy(), self.input_size)  # [P, K, 2]
            key = offsets.index(0)
            key_matrices = np.stack([matrices[clip[key]] for clip in clips])  # [P, 2, 3]
            keypoints = keypoints_to_image(crop_points, key_matrices).astype(np.float32)
            scores = confidence.cpu().numpy().astype(np.float32)
        counts = [len(b) for b in person_boxes]
        splits = np.cumsum(counts)[:-1]
        per_frame = np.split(keypoints, splits)
        if track_ids is None and track_by == "oks":
            tracks = greedy_oks_tracks(per_frame, person_boxes, self.metainfo.sigmas)
        return VideoPoseOutput(
            keypoints=per_frame,
            scores=np.split(scores, splits),
            track_ids=tracks,
            boxes=person_boxes,
            box_scores=person_scores,
            backbone_crops=len(crops) * (2 if flip_test else 1),
            metainfo=self.metainfo,
        )

    def _crop_features(self, crops: np.ndarray, flip_test: bool, batch_size: int) -> torch.Tensor:
        """Backbone features of crops uint8 [U, h, w, 3] -> [U, C, h/8, w/8]
        (then the mirrored crops' under flip)."""
        pixels = torch.from_numpy(crops).to(self.device).permute(0, 3, 1, 2).float() / 255.0  # [U, 3, h, w]
        if flip_test:
            pixels = torch.cat([pixels, pixels.flip(-1)])
        return torch.cat(
            [self.model.frame_features(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
        )

    def _sample(
        self,
        features: torch.Tensor,
        clips: list[list[int]],
        num_crops: int,
        flip_test: bool,
        steps: int,
        ensemble: int,
        batch_size: int,
        seed: int,
    ) -> torch.Tensor:
        """Heatmaps [P, K, h, w] of the clips, gathered from the crop features, `batch_size` clips at a time.
        """
        generator = torch.Generator().manual_seed(seed)
        index = torch.tensor(clips, device=features.device)  # [P, T]
        out = []
        for start in range(0, len(clips), batch_size):
            chunk = index[start : start + batch_size]
            if flip_test:
                chunk = torch.cat([chunk, chunk + num_crops])  # the mirrored crops follow the plain ones
            clip_features = self.model.clip_features(features[chunk])  # [b, T, C, h, w] -> [b, D, H, W]
            heatmaps = self.model.sample(clip_features, steps, ensemble, self.eta, generator)
            if flip_test:
                half = heatmaps.shape[0] // 2
                heatmaps = (
                    heatmaps[:half] + flip_heatmaps(heatmaps[half:], self.metainfo.flip_indices)
                ) * 0.5
            out.append(heatmaps)
        return torch.cat(out)
