"""Top-down pose transforms: the one affine path for keypoint-moving geometry, plus appearance augmentations.

Geometry follows mmpose 1.x's top-down pipeline (GetBBoxCenterScale -> RandomFlip -> RandomHalfBody ->
RandomBBoxTransform -> TopdownAffine(use_udp=True)), but every geometric step is folded into a single 2x3
matrix that warps the image once and moves the keypoints with the same numbers. Appearance augmentations come
after the warp: photometric distortion, then the clean crop is cached
(the reconstruction target of SDPose's RGB branch), then the corruption block
(blur, median blur, coarse dropout) that only the network input sees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import albumentations as A
import cv2
import numpy as np
from scipy.stats import truncnorm

# mmpose's GetBBoxCenterScale default for top-down pose: the crop is 1.25x the person box.
BBOX_PADDING = 1.25


def bbox_xywh_to_xyxy(bbox: np.ndarray) -> np.ndarray:
    """Convert boxes from (x, y, w, h) to (x1, y1, x2, y2); shape [..., 4]."""
    bbox = np.asarray(bbox, dtype=np.float64)
    return np.concatenate([bbox[..., :2], bbox[..., :2] + bbox[..., 2:4]], axis=-1)


def bbox_xyxy_to_center_scale(
    bbox: np.ndarray, padding: float = BBOX_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """Box (x1, y1, x2, y2) -> center (x, y) and padded scale (w, h); shapes [..., 2]."""
    bbox = np.asarray(bbox, dtype=np.float64)
    center = (bbox[..., :2] + bbox[..., 2:4]) * 0.5
    scale = (bbox[..., 2:4] - bbox[..., :2]) * padding
    return center, scale


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow the shorter side of box scales (w, h) so that w / h equals `aspect_ratio`; shape [..., 2]."""
    scale = np.asarray(scale, dtype=np.float64)
    w, h = scale[..., 0], scale[..., 1]
    # Only ever enlarge: the person must stay inside the crop.
    wider = w > h * aspect_ratio
    return np.stack([np.where(wider, w, h * aspect_ratio), np.where(wider, w / aspect_ratio, h)], axis=-1)


def udp_warp_matrix(
    center: Sequence[float], scale: Sequence[float], rotation: float, output_size: tuple[int, int]
) -> np.ndarray:
    """Image -> crop affine [2, 3] under UDP: the box [c - s/2, c + s/2] maps onto pixel centres
    [0, size - 1].

    Same convention as mmpose's `get_udp_warp_matrix` (rotation in degrees, counter-clockwise in the image),
    computed in float64 so that crop -> image round trips stay exact.
    """
    cx, cy = float(center[0]), float(center[1])
    sw, sh = float(scale[0]), float(scale[1])
    if sw <= 0 or sh <= 0:
        raise ValueError(f"box scale must be positive; got {(sw, sh)}")
    # UDP measures sizes between the first and last pixel centres, hence size - 1.
    fx = (output_size[0] - 1) / sw
    fy = (output_size[1] - 1) / sh
    cos, sin = math.cos(math.radians(rotation)), math.sin(math.radians(rotation))
    # Rotate about the box centre, scale to the crop, then move the box corner to the crop origin.
    return np.array(
        [
            [fx * cos, -fx * sin, fx * (-cos * cx + sin * cy + 0.5 * sw)],
            [fy * sin, fy * cos, fy * (-sin * cx - cos * cy + 0.5 * sh)],
        ],
        dtype=np.float64,
    )


def horizontal_flip_matrix(image_width: int) -> np.ndarray:
    """Affine [2, 3] of a horizontal image flip in pixel-centre coordinates: x -> (W - 1) - x (as mmpose)."""
    return np.array([[-1.0, 0.0, image_width - 1.0], [0.0, 1.0, 0.0]], dtype=np.float64)


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    """Affines [..., 2, 3] -> [..., 3, 3] with the bottom row (0, 0, 1)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    bottom = np.broadcast_to(np.array([0.0, 0.0, 1.0]), matrix.shape[:-2] + (1, 3))
    return np.concatenate([matrix, bottom], axis=-2)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The affine [..., 2, 3] that applies `inner` first, then `outer`."""
    return (_homogeneous(outer) @ _homogeneous(inner))[..., :2, :]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of affines [..., 2, 3]."""
    return np.linalg.inv(_homogeneous(matrix))[..., :2, :]


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply affine matrices [..., 2, 3] to points [..., N, 2] (leading dims broadcast); float64 out."""
    points = np.asarray(points, dtype=np.float64)
    matrix = np.asarray(matrix, dtype=np.float64)
    return points @ np.swapaxes(matrix[..., :2], -1, -2) + matrix[..., None, :, 2]


def flip_keypoints(
    keypoints: np.ndarray, keypoints_visible: np.ndarray, image_width: int, flip_indices: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Mirror keypoints [..., K, 2] horizontally (x -> W - 1 - x) and swap left/right ids (mmpose RandomFlip).
    """
    flip_indices = np.asarray(flip_indices, dtype=np.int64)
    if flip_indices.shape[0] != keypoints.shape[-2]:
        raise ValueError(
            f"flip_indices has {flip_indices.shape[0]} entries for {keypoints.shape[-2]} keypoints"
        )
    flipped = np.take(np.asarray(keypoints, dtype=np.float64), flip_indices, axis=-2)
    flipped[..., 0] = image_width - 1 - flipped[..., 0]
    return flipped, np.take(np.asarray(keypoints_visible), flip_indices, axis=-1)


@dataclass(frozen=True)
class CropGeometry:
    """Where a top-down crop sits in its source image; `matrix()` is the one image -> crop affine."""

    center: tuple[float, float]  # box centre in pixels, in the flipped image when `flip` is set (as mmpose)
    scale: tuple[float, float]  # box size (w, h) after padding, random scaling and the aspect fix
    rotation: float  # degrees
    input_size: tuple[int, int]  # crop (w, h)
    flip: bool = False
    image_width: int = 0  # needed only to undo a flip

    def matrix(self) -> np.ndarray:
        """Image -> crop affine [2, 3] (flip first, then the UDP box warp)."""
        warp = udp_warp_matrix(self.center, self.scale, self.rotation, self.input_size)
        return compose_affine(warp, horizontal_flip_matrix(self.image_width)) if self.flip else warp

    def to_crop(self, points: np.ndarray) -> np.ndarray:
        """Image-space points [..., N, 2] -> crop pixels (coordinates only, no id swap)."""
        return transform_points(points, self.matrix())

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Crop-pixel points [..., N, 2] -> image space (coordinates only, no id swap)."""
        return transform_points(points, invert_affine(self.matrix()))


def keypoints_to_image(
    keypoints: np.ndarray,
    warp_matrix: np.ndarray,
    flip: np.ndarray | bool = False,
    flip_indices: Sequence[int] | None = None,
) -> np.ndarray:
    """Map crop-space keypoints [..., K, 2] back to image space with each sample's `warp_matrix` [..., 2, 3].

    Where a sample was flipped, its keypoint ids are swapped back too, so that id k names the same joint of
    the person in the original image. Keypoints must be in crop pixels (UDP: 0 .. size - 1 spans the box).
    """
    keypoints = np.asarray(keypoints, dtype=np.float64)
    points = transform_points(keypoints, invert_affine(warp_matrix))
    flip = np.broadcast_to(np.asarray(flip, dtype=bool), keypoints.shape[:-2])
    if flip.any():
        if flip_indices is None:
            raise ValueError("flipped samples need flip_indices to swap left/right keypoints back")
        points = np.where(flip[..., None, None], np.take(points, np.asarray(flip_indices), axis=-2), points)
    return points


def decoded_to_crop(keypoints: np.ndarray, input_size: tuple[int, int]) -> np.ndarray:
    """Keypoints [..., K, 2] from an mmpose-style UDP decode -> crop pixels, ready for `keypoints_to_image`.

    mmpose's UDPHeatmap.decode scales heatmap coordinates by input_size / (heatmap - 1), while crop pixels
    under UDP are (input_size - 1) / (heatmap - 1) per heatmap pixel; this rescaling makes
    `keypoints_to_image` give exactly mmpose's `kpt / input_size * scale + center - scale / 2`.
    """
    size = np.asarray(input_size, dtype=np.float64)
    return np.asarray(keypoints, dtype=np.float64) * (size - 1) / size


def udp_heatmap_to_crop(
    points: np.ndarray, heatmap_size: tuple[int, int], input_size: tuple[int, int]
) -> np.ndarray:
    """Heatmap-pixel keypoints [..., K, 2] -> crop pixels under UDP (pixel centres onto pixel centres),
    float64."""
    factor = (np.asarray(input_size, dtype=np.float64) - 1) / (np.asarray(heatmap_size, dtype=np.float64) - 1)
    return np.asarray(points, dtype=np.float64) * factor


def warp_image(image: np.ndarray, matrix: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Warp an image [H, W, C] with an affine [2, 3] to `output_size` (w, h), bilinear, zero border
    (as mmpose)."""
    return cv2.warpAffine(image, matrix, (int(output_size[0]), int(output_size[1])), flags=cv2.INTER_LINEAR)


# ----------------------------------------------------------------------------------------------------
# official paths The official SDPose-OOD evaluation runs mmpose's top-down path on float32 numpy values
# (numpy 1.26 there): box, centre and scale are float32 arrays and the UDP warp matrix is stored in float32.
# The functions below evaluate the same expressions on the same dtypes, so that the crops match pixel for
# pixel; the default path above works in float64, which changes up to 754 values of a 768x1024 crop of the
# COCO samples, by up to 6 grey levels.


def official_box_xyxy(bbox_xywh: Sequence[float], image_size: tuple[int, int] | None = None) -> np.ndarray:
    """A COCO (x, y, w, h) box as the official loader reads it: float32 (x1, y1, x2, y2), shape [4].

    With `image_size` (w, h) it is a ground-truth box: corners computed in float64 and clipped to the last
    pixel centre (w - 1, h - 1). Without it it is a detection box: cast to float32 first, added in float32,
    not clipped.
    """
    x, y, w, h = (float(v) for v in bbox_xywh[:4])
    if image_size is None:
        box = np.array([x, y, w, h], dtype=np.float32)
        box[2:] += box[:2]
        return box
    width, height = image_size
    corners = [
        np.clip(x, 0, width - 1),
        np.clip(y, 0, height - 1),
        np.clip(x + w, 0, width - 1),
        np.clip(y + h, 0, height - 1),
    ]
    return np.array(corners, dtype=np.float32)


def official_center_scale(
    bbox_xyxy: np.ndarray, input_size: tuple[int, int], padding: float = BBOX_PADDING
) -> tuple[np.ndarray, np.ndarray]:
    """Box centre and padded, aspect-fixed scale (w, h) in float32 arrays [2], as mmpose's eval pipeline has
    them."""
    box = np.asarray(bbox_xyxy, dtype=np.float32).reshape(4)
    center = (box[2:] + box[:2]) * 0.5
    scale = (box[2:] - box[:2]) * padding
    aspect = input_size[0] / input_size[1]
    # Array operations (not scalars): numpy keeps them in float32 under both its old and new promotion rules.
    w, h = scale[:1], scale[1:]
    scale = np.where(w > h * aspect, np.concatenate([w, w / aspect]), np.concatenate([h * aspect, h]))
    return center, scale


def official_udp_warp_matrix(
    center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]
) -> np.ndarray:
    """The UDP image -> crop affine [2, 3] in float32 from float32 centre/scale [2] (no rotation, as at eval).
    """
    cx, sx, sy = center[0], scale[0], scale[1]  # numpy float32 scalars, as the official code indexes them
    factor_x = (output_size[0] - 1) / sx
    factor_y = (output_size[1] - 1) / sy
    matrix = np.zeros((2, 3), dtype=np.float32)
    # The official formula works on the doubled centre (its `input_size`): -0.5 * (2c) is exactly -c.
    matrix[0, 0] = factor_x
    matrix[0, 2] = factor_x * (-0.5 * (cx * 2) + 0.5 * sx)
    matrix[1, 1] = factor_y
    matrix[1, 2] = factor_y * (-0.5 * (center[1] * 2) + 0.5 * sy)
    return matrix


def official_keypoints_to_image(
    heatmap_points: np.ndarray,
    heatmap_size: tuple[int, int],
    input_size: tuple[int, int],
    center: np.ndarray,
    scale: np.ndarray,
) -> np.ndarray:
    """Heatmap-pixel keypoints [..., K, 2] -> image pixels as the official code maps them, in float64.

    mmpose's UDPHeatmap.decode scales by input_size / (heatmap - 1) (x768/191, x1024/255), and the mapping
    back `kpt / input_size * scale + center - scale / 2` compensates: the result is
    `heatmap / (heatmap - 1) * scale + center - scale / 2`, the exact UDP inverse. `center`, `scale` [..., 2]
    are float32, broadcast per instance.
    """
    size = np.asarray(input_size)
    decoded = np.asarray(heatmap_points, dtype=np.float32) / (np.asarray(heatmap_size) - 1) * size  # float64
    scale = np.asarray(scale, dtype=np.float32)[..., None, :]
    return decoded / size * scale + np.asarray(center, dtype=np.float32)[..., None, :] - 0.5 * scale


def stretch_crop(
    image: np.ndarray, bbox_xyxy: Sequence[float], input_size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The official demo's crop: the box truncated to integers and clamped to the image, stretched to
    `input_size` (w, h) with PIL bilinear, no padding and no aspect fix. Returns the crop [h, w, 3] and its
    region (x, y, w, h).

    A box that clamps to nothing falls back to the whole image, as the demo does.
    """
    from PIL import Image

    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(v) for v in bbox_xyxy[:4])
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 <= x1 or y2 <= y1:
        x1, y1, x2, y2 = 0, 0, width, height
    crop = Image.fromarray(image).crop((x1, y1, x2, y2)).resize(tuple(input_size), Image.BILINEAR)
    return np.asarray(crop), (x1, y1, x2 - x1, y2 - y1)


def stretched_to_image(
    heatmap_points: np.ndarray,
    heatmap_size: tuple[int, int],
    region: np.ndarray,
    input_size: tuple[int, int],
    official: bool = False,
) -> np.ndarray:
    """Heatmap-pixel keypoints [..., K, 2] of stretch crops with regions (x, y, w, h) [..., 4] -> image
    pixels.

    official=True is the demo's mapping of the decoded input pixels (x768/191): `kpt * w / 768 + x`, which
    ignores both the decode's 768/767 factor and the half-pixel offset of the resize. Otherwise the UDP crop
    pixel u = heatmap * 767/191 maps through the resize's pixel centres: `x + (u + 0.5) * w / 768 - 0.5`.
    """
    points = np.asarray(heatmap_points, dtype=np.float32)
    region = np.asarray(region, dtype=np.float64)[..., None, :]
    size = np.asarray(input_size)
    stretch = region[..., 2:] / size
    if official:
        decoded = points / (np.asarray(heatmap_size) - 1) * size  # float64, as mmpose's UDPHeatmap.decode
        return decoded * stretch + region[..., :2]
    crop_points = udp_heatmap_to_crop(points, heatmap_size, input_size)
    return region[..., :2] + (crop_points + 0.5) * stretch - 0.5


@dataclass(frozen=True)
class TopDownAugmentation:
    """Random geometry and appearance settings for top-down training (defaults: mmpose / SDPose's pipeline).
    """

    flip_prob: float = 0.5
    # RandomHalfBody: keep only the upper or lower body when enough joints are labelled.
    half_body_prob: float = 0.3
    half_body_min_total: int = 9
    half_body_min_upper: int = 2
    half_body_min_lower: int = 3
    half_body_padding: float = 1.5
    half_body_upper_prob: float = 0.7
    # RandomBBoxTransform: truncated-normal shift, scale and rotation of the box.
    shift_factor: float = 0.16
    shift_prob: float = 0.3
    scale_range: tuple[float, float] = (0.5, 1.5)
    scale_prob: float = 1.0
    rotate_factor: float = 80.0
    rotate_prob: float = 0.6
    # PhotometricDistortion (brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18 of 180), each
    # p=0.5.
    photometric: bool = True
    # SDPose's corruption block after the cached clean crop: Blur p=0.1, MedianBlur p=0.1, one CoarseDropout
    # hole of 20-40% of each side with p=1.0.
    blur_prob: float = 0.1
    median_blur_prob: float = 0.1
    dropout_prob: float = 1.0
    dropout_size: tuple[float, float] = (0.2, 0.4)


class TopDownSample(TypedDict):
    """Output of `TopDownTransform`: uint8 crops [h, w, 3], keypoints in crop pixels, and the crop geometry.
    """

    image: np.ndarray  # [h, w, 3] uint8, corrupted network input
    clean_image: np.ndarray  # [h, w, 3] uint8, the crop before the corruption block
    keypoints: np.ndarray  # [K, 2] float32, crop pixels
    keypoints_visible: np.ndarray  # [K] float32
    geometry: CropGeometry


def _truncnorm(rng: np.random.Generator, size: int) -> np.ndarray:
    # mmpose samples its box jitter from a standard normal truncated to [-1, 1].
    return truncnorm.rvs(-1.0, 1.0, size=size, random_state=rng)


class TopDownTransform:
    """Person box + keypoints -> aspect-preserving UDP crop, with optional training augmentation."""

    def __init__(
        self,
        input_size: tuple[int, int],
        padding: float = BBOX_PADDING,
        augmentation: TopDownAugmentation | None = None,
        flip_indices: Sequence[int] | None = None,
        upper_body_ids: Sequence[int] = (),
        lower_body_ids: Sequence[int] = (),
    ) -> None:
        """`input_size` is the crop (w, h), e.g. (192, 256) or SDPose's (768, 1024); no augmentation = eval.
        """
        if len(input_size) != 2 or min(input_size) < 2:
            raise ValueError(f"input_size must be (w, h) with both >= 2; got {input_size}")
        if augmentation is not None and augmentation.flip_prob > 0 and flip_indices is None:
            raise ValueError("random flips need flip_indices to swap left/right keypoints")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.padding = padding
        self.augmentation = augmentation
        self.flip_indices = None if flip_indices is None else tuple(int(i) for i in flip_indices)
        self.upper_body_ids = tuple(upper_body_ids)
        self.lower_body_ids = tuple(lower_body_ids)
        self._photometric = self._build_photometric(augmentation)
        self._corruption = self._build_corruption(augmentation)

    @staticmethod
    def _build_photometric(augmentation: TopDownAugmentation | None) -> A.Compose | None:
        if augmentation is None or not augmentation.photometric:
            return None
        return A.Compose(
            [
                A.RandomBrightnessContrast(brightness_limit=32 / 255, contrast_limit=0.0, p=0.5),
                A.RandomBrightnessContrast(brightness_limit=0.0, contrast_limit=0.5, p=0.5),
                A.ColorJitter(
                    brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(0.5, 1.5), hue=0.0, p=0.5
                ),
                # Hue delta 18 on OpenCV's 0..180 hue circle = 0.1 of a turn.
                A.ColorJitter(
                    brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0), hue=0.1, p=0.5
                ),
            ]
        )

    @staticmethod
    def _build_corruption(augmentation: TopDownAugmentation | None) -> A.Compose | None:
        if augmentation is None:
            return None
        hole = augmentation.dropout_size
        return A.Compose(
            [
                A.Blur(blur_limit=(3, 7), p=augmentation.blur_prob),
                A.MedianBlur(blur_limit=(3, 7), p=augmentation.median_blur_prob),
                A.CoarseDropout(
                    num_holes_range=(1, 1),
                    hole_height_range=hole,
                    hole_width_range=hole,
                    fill=0,
                    p=augmentation.dropout_prob,
                ),
            ]
        )

    def geometry(
        self,
        bbox_xyxy: np.ndarray,
        image_width: int,
        keypoints: np.ndarray | None = None,
        keypoints_visible: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[CropGeometry, np.ndarray | None, np.ndarray | None]:
        """Draw the crop geometry; returns it with the keypoints [K, 2] / visibility [K] in its (flipped)
        frame."""
        center, scale = bbox_xyxy_to_center_scale(bbox_xyxy, self.padding)
        rotation, flip = 0.0, False
        aug = self.augmentation
        if aug is not None:
            if rng is None:
                raise ValueError("training augmentation needs an rng (np.random.Generator)")
            if rng.random() < aug.flip_prob:
                flip = True
                center = np.array([image_width - 1 - center[0], center[1]])
                if keypoints is not None:
                    keypoints, keypoints_visible = flip_keypoints(
                        keypoints, keypoints_visible, image_width, self.flip_indices
                    )
            if keypoints is not None and aug.half_body_prob > 0:
                half = self._half_body(keypoints, keypoints_visible, rng)
                if half is not None:
                    center, scale = half
            jitter = _truncnorm(rng, 4)
            if rng.random() < aug.shift_prob:
                center = center + jitter[:2] * aug.shift_factor * scale
            if rng.random() < aug.scale_prob:
                low, high = aug.scale_range
                scale = scale * (jitter[2] * (high - low) * 0.5 + (high + low) * 0.5)
            if rng.random() < aug.rotate_prob:
                rotation = float(jitter[3] * aug.rotate_factor)
        # The aspect fix comes last, as in mmpose's TopdownAffine, so that every box jitter keeps the crop
        # ratio.
        scale = fix_aspect_ratio(scale, self.input_size[0] / self.input_size[1])
        geometry = CropGeometry(
            center=(float(center[0]), float(center[1])),
            scale=(float(scale[0]), float(scale[1])),
            rotation=rotation,
            input_size=self.input_size,
            flip=flip,
            image_width=int(image_width),
        )
        return geometry, keypoints, keypoints_visible

    def _half_body(
        self, keypoints: np.ndarray, visible: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """mmpose RandomHalfBody: a box around the visible upper or lower joints, or None to keep the box."""
        aug = self.augmentation
        if visible.sum() < aug.half_body_min_total or rng.random() > aug.half_body_prob:
            return None
        upper = [i for i in self.upper_body_ids if visible[i] > 0]
        lower = [i for i in self.lower_body_ids if visible[i] > 0]
        prefer_upper = rng.random() < aug.half_body_upper_prob
        enough_upper = len(upper) >= aug.half_body_min_upper
        enough_lower = len(lower) >= aug.half_body_min_lower
        if not enough_upper and not enough_lower:
            return None
        ids = upper if (enough_upper and (prefer_upper or not enough_lower)) else lower
        points = keypoints[ids]  # [n, 2]
        center = points.mean(axis=0)
        scale = (points.max(axis=0) - points.min(axis=0)) * aug.half_body_padding
        return center, scale

    def __call__(
        self,
        image: np.ndarray,
        bbox_xyxy: np.ndarray,
        keypoints: np.ndarray,
        keypoints_visible: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> TopDownSample:
        """Crop one person from an RGB uint8 image [H, W, 3]; keypoints [K, 2] in image pixels."""
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB uint8 image [H, W, 3]; got {image.dtype} {tuple(image.shape)}")
        keypoints = np.asarray(keypoints, dtype=np.float64)
        keypoints_visible = np.asarray(keypoints_visible, dtype=np.float32)
        geometry, keypoints, keypoints_visible = self.geometry(
            bbox_xyxy, image.shape[1], keypoints, keypoints_visible, rng
        )
        # Keypoints were already flipped (with id swap) in image space, so only the box warp moves them now;
        # the image takes the flip and the warp in one resampling.
        box_warp = udp_warp_matrix(geometry.center, geometry.scale, geometry.rotation, self.input_size)
        crop = warp_image(image, geometry.matrix(), self.input_size)  # [h, w, 3]
        if self._photometric is not None:
            self._photometric.set_random_seed(int(rng.integers(2**31)))
            crop = self._photometric(image=crop)["image"]
        clean = crop.copy()  # the reconstruction target must not share memory with the corrupted input
        if self._corruption is not None:
            self._corruption.set_random_seed(int(rng.integers(2**31)))
            crop = self._corruption(image=crop)["image"]
        return TopDownSample(
            image=np.ascontiguousarray(crop),
            clean_image=clean,
            keypoints=transform_points(keypoints, box_warp).astype(np.float32),
            keypoints_visible=keypoints_visible.astype(np.float32),
            geometry=geometry,
        )
