"""Style back-ends for COCO-OOD: weight-free OpenCV renderings, ImageNet-C-like corruptions, a registry."""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

# albumentations 2.0.x asks PyPI for a newer release on import; builds run offline and must not wait on the
# network.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

Params = dict[str, Any]
Annotations = Sequence[dict[str, Any]]


class Style(ABC):
    """A named restyling back-end; each style is one output split.

    Instances are pickled into worker processes, so a back-end with heavy state (a diffusion pipeline) should
    load it lazily on the first `apply` and keep it out of its pickled state.
    """

    name: str
    # Bump when the same seed would give different pixels, so that an old output folder is not silently mixed.
    version: int = 1
    # Built when the user names no styles; back-ends that need weights stay off by default.
    default: bool = True

    @abstractmethod
    def apply(
        self, image: np.ndarray, rng: np.random.Generator, annotations: Annotations
    ) -> tuple[np.ndarray, Params]:
        """Restyle RGB uint8 [H, W, 3]; return a same-size RGB uint8 image and the JSON-able parameters."""

    def describe(self) -> Params:
        """What identifies this back-end's output in a manifest."""
        return {"name": self.name, "version": self.version, "backend": type(self).__name__}


def image_seed(seed: int, style: str, image_id: int) -> int:
    """Per-image seed from (global seed, style, image id): independent of order, sharding and worker count."""
    # Style names are hashed into the entropy so that two styles never share a noise stream.
    style_key = int.from_bytes(hashlib.sha256(style.encode("utf-8")).digest()[:8], "little")
    sequence = np.random.SeedSequence([int(seed), style_key, int(image_id)])
    return int(sequence.generate_state(1, dtype=np.uint64)[0])


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    # Rounded before use so that the manifest holds exactly the value that made the pixels.
    return round(float(rng.uniform(low, high)), 4)


def _rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[:, :, ::-1])


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Low-frequency noise in [0, 1], [H, W] float32, from a coarse random grid upsampled by `cell` pixels."""
    grid = rng.random((height // cell + 2, width // cell + 2), dtype=np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC).clip(0.0, 1.0)


def _saturate(image: np.ndarray, factor: float) -> np.ndarray:
    """Scale the HSV saturation of an RGB uint8 image."""
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[:, :, 1] = np.clip(hsv[:, :, 1] * factor, 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


class OilPaint(Style):
    """Oil-paint look: OpenCV's stylization filter plus a saturation boost."""

    name = "oil"

    def apply(
        self, image: np.ndarray, rng: np.random.Generator, annotations: Annotations
    ) -> tuple[np.ndarray, Params]:
        """Stylize with randomised smoothing extent and edge sensitivity."""
        params = {
            "sigma_s": _uniform(rng, 40, 100),
            "sigma_r": _uniform(rng, 0.3, 0.6),
            "saturation": _uniform(rng, 1.0, 1.4),
        }
        painted = cv2.stylization(_rgb_to_bgr(image), sigma_s=params["sigma_s"], sigma_r=params["sigma_r"])
        return _saturate(_rgb_to_bgr(painted), params["saturation"]), params


class ColourPencil(Style):
    """Colour pencil sketch from OpenCV's pencilSketch."""

    name = "pencil"

    def apply(
        self, image: np.ndarray, rng: np.random.Generator, annotations: Annotations
    ) -> tuple[np.ndarray, Params]:
        """Sketch with randomised stroke smoothing and shading."""
        params = {
            "sigma_s": _uniform(rng, 30, 80),
            "sigma_r": _uniform(rng, 0.05, 0.1),
            "shade_factor": _uniform(rng, 0.02, 0.06),
        }
        _, colour = cv2.pencilSketch(
            _rgb_to_bgr(image),
            sigma_s=params["sigma_s"],
            sigma_r=params["sigma_r"],
            shade_factor=params["shade_factor"],
        )
        return _rgb_to_bgr(colour), params


class Watercolour(Style):
    """Watercolour-like: edge-preserving smoothing, lifted colours and a paper-grain wash."""

    name = "watercolor"

    def apply(
        self, image: np.ndarray, rng: np.random.Generator, annotations: Annotations
    ) -> tuple[np.ndarray, Params]:
        """Smooth flat regions, boost saturation and modulate brightness with seeded paper texture."""
        params = {
            "flags": int(rng.choice([cv2.RECURS_FILTER, cv2.NORMCONV_FILTER])),
            "sigma_s": _uniform(rng, 40, 100),
            "sigma_r": _uniform(rng, 0.3, 0.6),
            "saturation": _uniform(rng, 1.1, 1.5),
            "paper_strength": _uniform(rng, 0.05, 0.15),
            "paper_cell": int(rng.integers(8, 33)),
        }
        smooth = cv2.edgePreservingFilter(
            _rgb_to_bgr(image), flags=params["flags"], sigma_s=params["sigma_s"], sigma_r=params["sigma_r"]
        )
        washed = _saturate(_rgb_to_bgr(smooth), params["saturation"]).astype(np.float32)
        height, width = image.shape[:2]
        # Pigment pools unevenly on paper: a brightening wash that varies over a few cells.
        paper = _smooth_noise(rng, height, width, params["paper_cell"])  # [H, W]
        washed = washed + params["paper_strength"] * paper[:, :, None] * (255.0 - washed)
        return np.clip(washed, 0, 255).astype(np.uint8), params


class Cartoon(Style):
    """Cartoon / posterised: bilateral smoothing, colour quantisation and dark outlines."""

    name = "cartoon"

    def apply(
        self, image: np.ndarray, rng: np.random.Generator, annotations: Annotations
    ) -> tuple[np.ndarray, Params]:
        """Flatten colours into a few levels and draw adaptive-threshold edges."""
        params = {
            "bilateral_passes": int(rng.integers(1, 4)),
            "sigma_color": _uniform(rng, 30, 90),
            "levels": int(rng.integers(4, 9)),
            "edge_block": int(rng.choice([7, 9, 11, 13])),
            "edge_c": int(rng.integers(2, 8)),
        }
        colour = image
        for _ in range(params["bilateral_passes"]):
            colour = cv2.bilateralFilter(colour, 9, params["sigma_color"], 7)
        step = 256.0 / params["levels"]
        colour = (np.floor(colour / step) * step + step / 2).astype(np.uint8)
        gray = cv2.medianBlur(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 7)
        edges = cv2.adaptiveThreshold(
            gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, params["edge_block"], params["edge_c"]
        )
        colour[edges == 0] = 20  # outline ink, slightly off pure black like a printed line
        return colour, params


# Severity tables (lists, not tuples, so that a manifest read back compares equal): index k-1 is severity k.
# Noise, blur, JPEG, pixelate and frost follow ImageNet-C's constants (Hendrycks & Dietterich 2019) translated
# to albumentations' parameterisation; fog and snow use albumentations' own weather models with coefficients
# that grow in the same five steps.
SEVERITY: dict[str, list[Any]] = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],  # noise std as a fraction of 255
    "motion_blur": [7, 11, 15, 21, 27],  # kernel size in pixels
    "defocus_blur": [[3, 0.1], [4, 0.5], [6, 0.5], [8, 0.5], [10, 0.5]],  # disc radius, alias blur
    "fog": [0.3, 0.45, 0.6, 0.75, 0.9],  # fog coefficient
    "snow": [0.1, 0.2, 0.3, 0.4, 0.5],  # snow-point threshold: how much of the image is bleached
    "frost": [[1.0, 0.4], [0.8, 0.6], [0.7, 0.7], [0.65, 0.7], [0.6, 0.75]],  # image weight, frost weight
    "jpeg": [25, 18, 15, 10, 7],  # JPEG quality
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],  # downscale factor
}


def _albumentations_transform(kind: str, severity: int) -> A.BasicTransform:
    """The albumentations transform for one corruption at one severity, with degenerate ranges (p=1)."""
    value = SEVERITY[kind][severity - 1]
    if kind == "gaussian_noise":
        return A.GaussNoise(std_range=(value, value), p=1.0)
    if kind == "motion_blur":
        return A.MotionBlur(blur_limit=(value, value), allow_shifted=False, p=1.0)
    if kind == "defocus_blur":
        return A.Defocus(radius=(value[0], value[0]), alias_blur=(value[1], value[1]), p=1.0)
    if kind == "fog":
        return A.RandomFog(fog_coef_range=(value, value), alpha_coef=0.08, p=1.0)
    if kind == "snow":
        return A.RandomSnow(snow_point_range=(value, value), brightness_coeff=2.0, method="bleach", p=1.0)
    if kind == "jpeg":
        return A.ImageCompression(compression_type="jpeg", quality_range=(value, value), p=1.0)
    if kind == "pixelate":
        return A.Downscale(
            scale_range=(value, value),
            interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_NEAREST},
            p=1.0,
        )
    raise KeyError(kind)


def _frost(image: np.ndarray, rng: np.random.Generator, severity: int) -> np.ndarray:
    """Frost-like overlay: seeded ice crystals (short bright strokes) on a haze, blended as in ImageNet-C."""
    image_weight, frost_weight = SEVERITY["frost"][severity - 1]
    height, width = image.shape[:2]
    ice = np.zeros((height, width), np.float32)
    count = max(1, height * width // 300)
    starts = rng.random((count, 2)) * (width, height)
    angles = rng.random(count) * np.pi
    lengths = 3 + rng.random(count) * 0.04 * max(height, width)
    ends = starts + lengths[:, None] * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    for (x0, y0), (x1, y1) in zip(starts.astype(int), ends.astype(int), strict=True):
        cv2.line(ice, (int(x0), int(y0)), (int(x1), int(y1)), 1.0, 1, cv2.LINE_AA)
    ice = cv2.GaussianBlur(ice, (0, 0), 1.0)
    haze = _smooth_noise(rng, height, width, max(4, max(height, width) // 16))  # [H, W]
    frost = np.clip(0.6 * haze + 1.5 * ice, 0.0, 1.0)[:, :, None] * np.array([215, 230, 255], np.float32)
    blended = image_weight * image.astype(np.float32) + frost_weight * frost
    return np.clip(blended, 0, 255).astype(np.uint8)


CORRUPTIONS: tuple[str, ...] = tuple(SEVERITY)


class Corruption(Style):
    """ImageNet-C-like corruption at one severity; with several kinds each image draws one from its seed."""

    def __init__(self, name: str, kinds: Sequence[str], severity: int, default: bool = True) -> None:
        """Corrupt with one of `kinds` at `severity` (1..5)."""
        unknown = sorted(set(kinds) - set(CORRUPTIONS))
        if unknown or not kinds:
            raise ValueError(f"unknown corruption(s) {unknown or kinds}; known: {', '.join(CORRUPTIONS)}")
        if severity not in range(1, 6):
            raise ValueError(f"severity must be 1..5; got {severity}")
        self.name = name
        self.kinds = tuple(kinds)
        self.severity = severity
        self.default = default

    def apply(
        self, image: np.ndarray, rng: np.random.Generator, annotations: Annotations
    ) -> tuple[np.ndarray, Params]:
        """Apply the drawn corruption with an explicit albumentations / numpy seed."""
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        params: Params = {
            "corruption": kind,
            "severity": self.severity,
            "value": SEVERITY[kind][self.severity - 1],
            "seed": int(rng.integers(2**32)),
        }
        if kind == "frost":
            return _frost(image, np.random.default_rng(params["seed"]), self.severity), params
        # A fresh Compose per image: a transform shared between Compose objects would share its random state.
        transform = A.Compose([_albumentations_transform(kind, self.severity)], seed=params["seed"])
        return np.ascontiguousarray(transform(image=image)["image"]), params

    def describe(self) -> Params:
        """Name, version, kinds and severity."""
        return {**super().describe(), "kinds": list(self.kinds), "severity": self.severity}


_REGISTRY: dict[str, Style] = {}


def register_style(style: Style, *, replace: bool = False) -> Style:
    """Add a back-end to the registry under `style.name` (also the split's folder name)."""
    if not style.name or "/" in style.name or style.name.startswith("."):
        raise ValueError(f"style name {style.name!r} must be a plain folder name")
    if style.name in _REGISTRY and not replace:
        raise ValueError(f"style {style.name!r} is already registered; pass replace=True to override it")
    _REGISTRY[style.name] = style
    return style


def get_style(name: str) -> Style:
    """Look up a registered back-end by name."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown style {name!r}; available: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def available_styles() -> list[str]:
    """Every registered style name, in registration order."""
    return list(_REGISTRY)


def default_styles() -> list[str]:
    """The styles built when none are named: the weight-free ones."""
    return [name for name, style in _REGISTRY.items() if style.default]


for _style in (OilPaint(), ColourPencil(), Watercolour(), Cartoon()):
    register_style(_style)
# One mixed split per severity (as COCO-OOD's single corruption split, but with an AP-vs-severity curve);
# single-corruption splits such as `fog-s3` are registered too, off by default.
for _severity in range(1, 6):
    register_style(Corruption(f"corrupt-s{_severity}", CORRUPTIONS, _severity))
for _kind in CORRUPTIONS:
    for _severity in range(1, 6):
        register_style(Corruption(f"{_kind}-s{_severity}", [_kind], _severity, default=False))
