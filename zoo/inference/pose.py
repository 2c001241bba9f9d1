"""Top-down pose prediction API: person boxes -> aspect-preserving UDP crops -> SDPose heatmaps -> image keypoints."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.codecs import decode_udp_batched
from zoo.data.coco_files import read_detections
from zoo.data.images import load_rgb_uint8
from zoo.data.metainfo import PoseMetainfo, load_metainfo
from zoo.data.transforms import (
    BBOX_PADDING,
    TopDownTransform,
    bbox_xywh_to_xyxy,
    decoded_to_crop,
    keypoints_to_image,
)
from zoo.models.sdpose.model import MODEL_CONFIG_FILE, SDPose, load_sdpose

BOX_SOURCES = ("whole_image", "hog")


@dataclass
class PoseOutput:
    """Per-image predictions: lists with one entry per input image."""

    keypoints: list[np.ndarray]  # each [N, K, 2] float32, image pixels
    scores: list[np.ndarray]  # each [N, K] float32, heatmap maxima
    boxes: list[np.ndarray]  # each [N, 4] float32, person boxes (x1, y1, x2, y2) the crops were taken from
    box_scores: list[np.ndarray]  # each [N] float32
    metainfo: PoseMetainfo | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.keypoints)


def detection_boxes(
    det_file: str | os.PathLike, image_ids: Sequence[int], score_thr: float = 0.0, category_id: int = 1
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Person boxes of a COCO detection result file for `image_ids`: ([N, 4] xyxy per image, [N] scores per image)."""
    boxes: dict[int, list[np.ndarray]] = defaultdict(list)
    scores: dict[int, list[float]] = defaultdict(list)
    for det in read_detections(det_file):
        if det.category_id == category_id and det.score >= score_thr:
            boxes[det.image_id].append(bbox_xywh_to_xyxy(det.bbox))
            scores[det.image_id].append(det.score)
    return (
        [np.asarray(boxes[i], dtype=np.float32).reshape(-1, 4) for i in image_ids],
        [np.asarray(scores[i], dtype=np.float32) for i in image_ids],
    )


def hog_person_boxes(image: np.ndarray, score_thr: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """People boxes [N, 4] xyxy and scores [N] from OpenCV's HOG + linear SVM pedestrian detector."""
    import cv2

    if not hasattr(cv2, "HOGDescriptor"):
        raise RuntimeError(
            f"box_source='hog' needs cv2.HOGDescriptor, which OpenCV {cv2.__version__} does not provide "
            "(OpenCV 4.x has it); pass boxes=... from a detector or use box_source='whole_image'"
        )
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    rects, weights = hog.detectMultiScale(gray, winStride=(8, 8), padding=(8, 8), scale=1.05)
    rects = np.asarray(rects, dtype=np.float64).reshape(-1, 4)
    weights = np.asarray(weights, dtype=np.float32).reshape(-1)
    keep = weights >= score_thr
    return bbox_xywh_to_xyxy(rects[keep]).astype(np.float32), weights[keep]


def _local_folder(source: str | os.PathLike) -> Path:
    """A local folder as is; a hub id ("teemosliang/SDPose-Body") from the Hugging Face cache or a download."""
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    from zoo.backbones import MissingWeightsError

    try:
        return Path(snapshot_download(str(source), local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") == "1"))
    except Exception as error:  # offline, unknown repo or no network: say what to fetch, whatever the cause
        raise MissingWeightsError(
            f"SDPose weights {str(source)!r} are not available here ({type(error).__name__}). Download them once, "
            f"e.g. `huggingface-cli download {source} --local-dir checkpoints/{Path(str(source)).name}`, "
            f"then pass that folder."
        ) from error


class PosePredictor:
    """SDPose top-down predictor: `PosePredictor.from_pretrained(folder)(images, boxes=...)` -> PoseOutput.

    Crops of all persons of all images in a call are pooled and run `batch_size` at a time, so one backbone call
    serves persons from several images.
    """

    def __init__(self, model: SDPose, config: dict[str, Any], device: str | torch.device = "cpu") -> None:
        self.model = model.eval().to(device)
        self.config = config
        self.device = torch.device(device)
        self.metainfo = load_metainfo(config["metainfo"])
        self.input_size = tuple(int(v) for v in config["input_size"])  # (w, h)
        self.blur_kernel_size = int(config.get("blur_kernel_size", 11))
        self.transform = TopDownTransform(self.input_size, padding=float(config.get("bbox_padding", BBOX_PADDING)))

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
    ) -> PosePredictor:
        """Load an exported folder (zoo_model.json) or an official SDPose checkpoint folder (decoder/ + unet/).

        `dtype` ("bf16", "fp16", torch dtype) runs the UNet and VAE under autocast.
        """
        folder = _local_folder(folder)
        if (folder / MODEL_CONFIG_FILE).is_file():
            model, config = load_sdpose(folder)
        else:
            from zoo.models.sdpose.convert import is_official_layout, load_official_sdpose

            if not is_official_layout(folder):
                raise FileNotFoundError(
                    f"{folder} is neither an exported SDPose folder ({MODEL_CONFIG_FILE}) nor an official SDPose "
                    "checkpoint (unet/ + decoder/decoder.safetensors); see checkpoints/README.md"
                )
            model, config = load_official_sdpose(folder)
        if dtype is not None:
            model.backbone.configure(autocast_dtype=dtype)
        return cls(model, config, device)

    # ------------------------------------------------------------------ boxes
    def _boxes(
        self,
        images: list[np.ndarray],
        boxes: Sequence[Any] | None,
        box_scores: Sequence[Any] | None,
        box_source: str,
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if boxes is not None:
            if len(boxes) != len(images):
                raise ValueError(f"boxes must hold one [N, 4] array per image: {len(boxes)} for {len(images)} images")
            out = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
            for index, b in enumerate(out):
                if (b[:, 2:] <= b[:, :2]).any():
                    raise ValueError(f"image {index}: boxes must be (x1, y1, x2, y2) with x2 > x1 and y2 > y1")
            if box_scores is None:
                return out, [np.ones(len(b), dtype=np.float32) for b in out]
            scores = [np.asarray(s, dtype=np.float32).reshape(-1) for s in box_scores]
            if [len(s) for s in scores] != [len(b) for b in out]:
                raise ValueError("box_scores must hold one score per box")
            return out, scores
        if box_source == "whole_image":
            # UDP pixel-centre extent: the box spans pixel centres 0 .. W-1, as GT boxes are clipped.
            out = [np.array([[0, 0, im.shape[1] - 1, im.shape[0] - 1]], dtype=np.float32) for im in images]
            return out, [np.ones(1, dtype=np.float32) for _ in images]
        if box_source == "hog":
            pairs = [hog_person_boxes(im) for im in images]
            return [p[0] for p in pairs], [p[1] for p in pairs]
        raise ValueError(f"box_source must be one of {BOX_SOURCES} when no boxes are given; got {box_source!r}")

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def __call__(
        self,
        images: Any,
        boxes: Sequence[Any] | None = None,
        box_scores: Sequence[Any] | None = None,
        box_source: str = "whole_image",
        flip_test: bool = False,
        batch_size: int = 16,
    ) -> PoseOutput:
        """Predict keypoints of the persons in `images` (a path, PIL, array or tensor, or a list of them).

        boxes: one [N, 4] (x1, y1, x2, y2) array per image (N may be 0); without them `box_source` supplies
        them: "whole_image" (one person per image) or "hog" (OpenCV's people detector). For a COCO detection
        file use `detection_boxes(det_file, image_ids)`. flip_test averages with mirrored crops (2x cost).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        single = not isinstance(images, (list, tuple))
        arrays = [load_rgb_uint8(image) for image in ([images] if single else images)]  # [H, W, 3] each
        person_boxes, person_scores = self._boxes(arrays, boxes, box_scores, box_source)
        counts = [len(b) for b in person_boxes]
        crops, matrices = [], []
        for image, image_boxes in zip(arrays, person_boxes, strict=True):
            for box in image_boxes:
                sample = self.transform(image, box, np.zeros((self.metainfo.num_keypoints, 2)),
                                        np.zeros(self.metainfo.num_keypoints))
                crops.append(sample["image"])
                matrices.append(sample["geometry"].matrix())
        keypoints = np.zeros((0, self.metainfo.num_keypoints, 2), dtype=np.float32)
        scores = np.zeros((0, self.metainfo.num_keypoints), dtype=np.float32)
        if crops:
            keypoints, scores = self._predict_crops(np.stack(crops), np.stack(matrices), flip_test, batch_size)
        splits = np.cumsum(counts)[:-1]
        return PoseOutput(
            keypoints=np.split(keypoints, splits), scores=np.split(scores, splits),
            boxes=person_boxes, box_scores=person_scores, metainfo=self.metainfo,
        )

    def _predict_crops(
        self, crops: np.ndarray, matrices: np.ndarray, flip_test: bool, batch_size: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crops uint8 [M, h, w, 3] with image->crop affines [M, 2, 3] -> image keypoints [M, K, 2], scores [M, K]."""
        flip_indices = self.metainfo.flip_indices if flip_test else None
        keypoints, scores = [], []
        for start in range(0, len(crops), batch_size):
            chunk = torch.from_numpy(crops[start : start + batch_size]).to(self.device)
            chunk = chunk.permute(0, 3, 1, 2).float() / 255.0  # [b, 3, h, w] in [0, 1]
            heatmaps = self.model.predict_heatmaps(chunk, flip_indices)  # [b, K, h/4, w/4]
            decoded, confidence = decode_udp_batched(heatmaps, self.input_size, self.blur_kernel_size)
            keypoints.append(decoded.cpu().numpy())
            scores.append(confidence.cpu().numpy())
        crop_points = decoded_to_crop(np.concatenate(keypoints), self.input_size)  # [M, K, 2] crop pixels
        image_points = keypoints_to_image(crop_points, matrices)
        return image_points.astype(np.float32), np.concatenate(scores).astype(np.float32)
