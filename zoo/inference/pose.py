"""Top-down pose prediction API: person boxes -> aspect-preserving UDP crops -> SDPose heatmaps -> image
keypoints.

`sdpose_compat=True` reproduces the official SDPose-OOD numbers; `crop_mode="stretch"` the official demo's
crops.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.backbones import check_model_folder
from zoo.codecs import decode_udp_batched, decode_udp_official
from zoo.data.coco_files import read_detections
from zoo.data.images import ImageLoadError, load_rgb_uint8, open_regular_file
from zoo.data.metainfo import PoseMetainfo, load_metainfo
from zoo.data.transforms import (
    BBOX_PADDING,
    TopDownTransform,
    bbox_xywh_to_xyxy,
    keypoints_to_image,
    official_box_xyxy,
    official_center_scale,
    official_keypoints_to_image,
    official_udp_warp_matrix,
    stretch_crop,
    stretched_to_image,
    udp_heatmap_to_crop,
    warp_image,
)
from zoo.models import MODEL_CONFIG_FILE
from zoo.models.sdpose.model import SDPose, load_sdpose

BOX_SOURCES = ("whole_image", "hog")
# "affine": mmpose's aspect-preserving UDP crop of the 1.25x box (training and the official evaluation);
# "stretch": the official demo's crop of the integer box stretched to the input size.
CROP_MODES = ("affine", "stretch")


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
    """Person boxes of a COCO detection result file for `image_ids`:
    ([N, 4] xyxy per image, [N] scores per image)."""
    boxes: dict[int, list[np.ndarray]] = defaultdict(list)
    scores: dict[int, list[float]] = defaultdict(list)
    for det in read_detections(det_file):
        if det.category_id == category_id and det.score >= score_thr:
            # Added in float32, as the official loader reads detection boxes (float64 rounds some corners
            # differently: 49 of the 131 sample detections).
            boxes[det.image_id].append(official_box_xyxy(det.bbox))
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


def read_image_opencv(path: str | os.PathLike) -> np.ndarray:
    """RGB uint8 [H, W, 3] decoded as the official evaluation does: OpenCV's `imdecode` (BGR), reordered to
    RGB."""
    import cv2

    # Through the image reader's regular-file check: np.fromfile on a FIFO named .jpg would block forever.
    with open_regular_file(path) as handle:
        data = np.frombuffer(handle.read(), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageLoadError(f"{path}: OpenCV cannot decode this file (empty, corrupt or not an image)")
    return np.ascontiguousarray(image[..., ::-1])


def caller_boxes(
    boxes: Sequence[Any], box_scores: Sequence[Any] | None, count: int, unit: str = "image"
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The caller's boxes as [N, 4] float32 xyxy and scores [N] per image, checked against `count` images."""
    if len(boxes) != count:
        raise ValueError(f"boxes must hold one [N, 4] array per {unit}: {len(boxes)} for {count} {unit}s")
    out = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes]
    for index, b in enumerate(out):
        if not np.isfinite(b).all() or (b[:, 2:] <= b[:, :2]).any():
            raise ValueError(
                f"{unit} {index}: boxes must be finite (x1, y1, x2, y2) with x2 > x1 and y2 > y1"
            )
    if box_scores is None:
        return out, [np.ones(len(b), dtype=np.float32) for b in out]
    scores = [np.asarray(s, dtype=np.float32).reshape(-1) for s in box_scores]
    if [len(s) for s in scores] != [len(b) for b in out]:
        raise ValueError("box_scores must hold one score per box")
    return out, scores


def source_boxes(
    image: np.ndarray, box_source: str, pixel_centres: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes [N, 4] xyxy and scores [N] of one image from `box_source` (see `person_boxes`)."""
    if box_source == "whole_image":
        last = 1 if pixel_centres else 0
        whole = np.array([[0, 0, image.shape[1] - last, image.shape[0] - last]], dtype=np.float32)
        return whole, np.ones(1, dtype=np.float32)
    if box_source == "hog":
        return hog_person_boxes(image)
    raise ValueError(f"box_source must be one of {BOX_SOURCES} when no boxes are given; got {box_source!r}")


def person_boxes(
    images: Sequence[np.ndarray],
    boxes: Sequence[Any] | None,
    box_scores: Sequence[Any] | None,
    box_source: str,
    pixel_centres: bool = True,
    unit: str = "image",
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Person boxes [N, 4] xyxy and scores [N] per image: the caller's, or from `box_source` without them.

    box_source "whole_image" is one person filling the image (extent 0 .. W-1 with `pixel_centres`, else
    0 .. W); "hog" is OpenCV's people detector. `unit` names an image in errors ("image" or "frame").
    """
    if boxes is not None:
        return caller_boxes(boxes, box_scores, len(images), unit)
    if box_source not in BOX_SOURCES:
        raise ValueError(
            f"box_source must be one of {BOX_SOURCES} when no boxes are given; got {box_source!r}"
        )
    pairs = [source_boxes(image, box_source, pixel_centres) for image in images]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _local_folder(source: str | os.PathLike) -> Path:
    """A local folder as is; a hub id ("teemosliang/SDPose-Body") from the Hugging Face cache or a download.
    """
    if Path(source).is_dir():
        return Path(source)
    from huggingface_hub import snapshot_download

    from zoo.backbones import MissingWeightsError

    try:
        return Path(
            snapshot_download(str(source), local_files_only=os.environ.get("HF_HUB_OFFLINE", "0") == "1")
        )
    except Exception as error:  # offline, unknown repo or no network: say what to fetch, whatever the cause
        raise MissingWeightsError(
            f"SDPose weights {str(source)!r} are not available here ({type(error).__name__}). "
            "Download them once, "
            f"e.g. `huggingface-cli download {source} --local-dir checkpoints/{Path(str(source)).name}`, "
            f"then pass that folder."
        ) from error


class PosePredictor:
    """SDPose top-down predictor: `PosePredictor.from_pretrained(folder)(images, boxes=...)` -> PoseOutput.

    Crops of all persons of all images in a call are pooled and run `batch_size` at a time, so one backbone
    call serves persons from several images. Inputs are decoded one at a time as the crops are taken, so
    memory follows `batch_size`, not the number of inputs.

    The default mode is deterministic and exact in its own terms: PIL decoding (EXIF orientation applied),
    box, centre, scale and warp matrix in float64, the VAE posterior mode, one batched call for crops and
    mirrored crops under flip test, and the exact inverse affine back to the image. `sdpose_compat=True`
    reproduces the official SDPose-OOD evaluation instead: files decoded by OpenCV (BGR -> RGB), float32 box
    arithmetic and warp matrix, a VAE posterior *sample* (global RNG unless `generator`), the mirrored crops
    as a second encode and UNet call, mmpose's numpy decode (zoo.codecs.official) and the official float64
    mapping back. The official evaluation runs with flip_test=True. `crop_mode="stretch"` crops as the
    official demo does
    (integer box clamped to the image, stretched to the input size with PIL bilinear; the demo runs without
    flip test);
    with sdpose_compat it also maps keypoints back with the demo's formula, otherwise through the resize's
    pixel centres.
    """

    family = "sdpose"

    def __init__(
        self,
        model: SDPose,
        config: dict[str, Any],
        device: str | torch.device = "cpu",
        sdpose_compat: bool = False,
        crop_mode: str = "affine",
    ) -> None:
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}; got {crop_mode!r}")
        self.sdpose_compat = sdpose_compat
        self.crop_mode = crop_mode
        self.model = model.eval().to(device)
        self.config = config
        self.device = torch.device(device)
        self.metainfo = load_metainfo(config["metainfo"])
        self.input_size = tuple(int(v) for v in config["input_size"])  # (w, h)
        default_heatmap = [v // 4 for v in self.input_size]  # SDPose heatmaps are at 1/4 of the input
        self.heatmap_size = tuple(int(v) for v in config.get("heatmap_size", default_heatmap))  # (w, h)
        self.blur_kernel_size = int(config.get("blur_kernel_size", 11))
        self.padding = float(config.get("bbox_padding", BBOX_PADDING))
        self.transform = TopDownTransform(self.input_size, padding=self.padding)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        sdpose_compat: bool = False,
        crop_mode: str = "affine",
        vae: str = "full",
        tiny_autoencoder: str | os.PathLike | None = None,
    ) -> PosePredictor:
        """Load an exported folder (zoo_model.json) or an official SDPose checkpoint folder
        (decoder/ + unet/).

        `dtype` ("bf16", "fp16", torch dtype) runs the UNet and VAE under autocast; see the class for the
        modes. `vae="tiny"` encodes the crops with the AutoencoderTiny folder `tiny_autoencoder`
        (pose never decodes).
        """
        folder = _local_folder(folder)
        check_model_folder(folder)  # malformed or absurd configs are named before anything is built
        if (folder / MODEL_CONFIG_FILE).is_file():
            model, config = load_sdpose(folder)
        else:
            from zoo.models.sdpose.convert import is_official_layout, load_official_sdpose

            if not is_official_layout(folder):
                raise FileNotFoundError(
                    f"{folder} is neither an exported SDPose folder ({MODEL_CONFIG_FILE}) "
                    "nor an official SDPose "
                    "checkpoint (unet/ + decoder/decoder.safetensors); see checkpoints/README.md"
                )
            model, config = load_official_sdpose(folder)
        if dtype is not None:
            model.backbone.configure(autocast_dtype=dtype)
        model.backbone.use_tiny_autoencoder(tiny_autoencoder, vae)
        return cls(model, config, device, sdpose_compat, crop_mode)

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
        generator: torch.Generator | None = None,
    ) -> PoseOutput:
        """Predict keypoints of the persons in `images` (a path, PIL, array or tensor, or a list of them).

        boxes: one [N, 4] (x1, y1, x2, y2) array per image (N may be 0); without them `box_source` supplies
        them: "whole_image" (one person per image) or "hog" (OpenCV's people detector). For a COCO detection
        file use `detection_boxes(det_file, image_ids)`. flip_test averages with mirrored crops (2x cost).
        generator: the RNG of the posterior samples under sdpose_compat
        (the global RNG when None; with the same seed and batch_size the draws are the official evaluation's).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        inputs = [images] if not isinstance(images, (list, tuple)) else list(images)
        # Boxes are checked before anything is decoded; without them each image's come from `box_source`.
        given = None if boxes is None else caller_boxes(boxes, box_scores, len(inputs))
        if given is None and box_source not in BOX_SOURCES:
            raise ValueError(
                f"box_source must be one of {BOX_SOURCES} when no boxes are given; got {box_source!r}"
            )
        # Affine crops use the UDP pixel-centre extent 0 .. W-1 (as GT boxes are clipped); stretch the demo's
        # full image 0 .. W.
        pixel_centres = self.crop_mode == "affine"
        # Streamed: each input is decoded, boxed and cropped in turn and dropped before the next, and the
        # crops run as soon as `batch_size` of them are pooled, so memory follows batch_size (one decoded
        # image and at most batch_size crops), not the number of inputs. The crop batches are the same as
        # pooling every crop of the call first (persons of several images share a backbone call).
        person_boxes_, person_scores = [], []
        crops: list[np.ndarray] = []
        frames: list[np.ndarray] = []
        points: list[np.ndarray] = []
        scores: list[np.ndarray] = []

        def run_pooled() -> None:
            heatmap_points, crop_scores = self._predict_crops(
                np.stack(crops), flip_test, batch_size, generator
            )
            points.append(self._to_image(heatmap_points, np.stack(frames)))
            scores.append(crop_scores)
            crops.clear()
            frames.clear()

        for index, item in enumerate(inputs):
            image = self._load(item, index)  # [H, W, 3]
            image_boxes, image_scores = (
                (given[0][index], given[1][index])
                if given is not None
                else source_boxes(image, box_source, pixel_centres)
            )
            person_boxes_.append(image_boxes)
            person_scores.append(image_scores)
            for box in image_boxes:
                crop, frame = self._crop(image, box)
                crops.append(crop)
                frames.append(frame)
                if len(crops) == batch_size:
                    run_pooled()
            del image
        if crops:
            run_pooled()
        num_keypoints = self.metainfo.num_keypoints
        keypoints = np.concatenate([np.zeros((0, num_keypoints, 2), dtype=np.float32), *points])
        confidence = np.concatenate([np.zeros((0, num_keypoints), dtype=np.float32), *scores])
        splits = np.cumsum([len(b) for b in person_boxes_])[:-1]
        return PoseOutput(
            keypoints=np.split(keypoints, splits),
            scores=np.split(confidence.astype(np.float32), splits),
            boxes=person_boxes_,
            box_scores=person_scores,
            metainfo=self.metainfo,
        )

    def _load(self, image: Any, index: int = 0) -> np.ndarray:
        """One input -> RGB uint8 [H, W, 3]; files through OpenCV for the official evaluation path."""
        if self.sdpose_compat and self.crop_mode == "affine" and isinstance(image, (str, os.PathLike)):
            return read_image_opencv(image)
        return load_rgb_uint8(image, None if isinstance(image, (str, os.PathLike)) else f"image {index}")

    def _crop(self, image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One person crop uint8 [h, w, 3] and what maps it back: affine [2, 3], centre + scale [4] or region
        [4]."""
        if self.crop_mode == "stretch":
            crop, region = stretch_crop(image, box, self.input_size)
            return crop, np.asarray(region, dtype=np.float64)
        if self.sdpose_compat:
            center, scale = official_center_scale(box, self.input_size, self.padding)  # float32 [2] each
            matrix = official_udp_warp_matrix(center, scale, self.input_size)  # float32 [2, 3]
            return warp_image(image, matrix, self.input_size), np.concatenate([center, scale])
        sample = self.transform(
            image, box, np.zeros((self.metainfo.num_keypoints, 2)), np.zeros(self.metainfo.num_keypoints)
        )
        return sample["image"], sample["geometry"].matrix()

    def _to_image(self, heatmap_points: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Heatmap-pixel keypoints [M, K, 2] -> image pixels [M, K, 2] float32, with each crop's frame."""
        size = self.heatmap_size
        if self.crop_mode == "stretch":
            points = stretched_to_image(heatmap_points, size, frames, self.input_size, self.sdpose_compat)
        elif self.sdpose_compat:
            points = official_keypoints_to_image(
                heatmap_points, size, self.input_size, frames[:, :2], frames[:, 2:]
            )
        else:
            points = keypoints_to_image(udp_heatmap_to_crop(heatmap_points, size, self.input_size), frames)
        return points.astype(np.float32)

    def _predict_crops(
        self, crops: np.ndarray, flip_test: bool, batch_size: int, generator: torch.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crops uint8 [M, h, w, 3] -> heatmap-pixel keypoints [M, K, 2] and scores [M, K] (heatmap maxima).
        """
        flip_indices = self.metainfo.flip_indices if flip_test else None
        keypoints, scores = [], []
        for start in range(0, len(crops), batch_size):
            chunk = torch.from_numpy(crops[start : start + batch_size]).to(self.device)
            chunk = chunk.permute(0, 3, 1, 2).float() / 255.0  # [b, 3, h, w] in [0, 1]
            if self.sdpose_compat:
                heatmaps = self.model.predict_heatmaps(
                    chunk, flip_indices, official=True, generator=generator
                )
                # The official numpy decode, instance by instance: the batched one sums in another order.
                pairs = [
                    decode_udp_official(maps, self.blur_kernel_size)
                    for maps in heatmaps.float().cpu().numpy()
                ]
                keypoints.append(np.stack([points for points, _ in pairs]))  # [b, K, 2] heatmap pixels
                scores.append(np.stack([confidence for _, confidence in pairs]))  # [b, K]
            else:
                heatmaps = self.model.predict_heatmaps(chunk, flip_indices)  # [b, K, h/4, w/4]
                decoded, confidence = decode_udp_batched(heatmaps, None, self.blur_kernel_size)
                keypoints.append(decoded.cpu().numpy())
                scores.append(confidence.cpu().numpy())
        return np.concatenate(keypoints), np.concatenate(scores).astype(np.float32)
