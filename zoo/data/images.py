"""Image loading and conversion: the one place that turns files, PIL, numpy or tensors into model input."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from zoo.utils import files

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

# Refuse decompression bombs with a clear message instead of PIL's warning; 16k x 16k is far above any use
# here.
MAX_PIXELS = 16384 * 16384


class ImageLoadError(ValueError):
    """An image could not be read; the message names the file and the reason."""


def open_regular_file(path: str | os.PathLike) -> IO[bytes]:
    """Open a file for binary reading only if it is a regular file (ImageLoadError naming it otherwise)."""
    try:
        return files.open_regular_file(path)
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file") from None
    except files.NotRegularFileError as error:
        raise ImageLoadError(f"{error}; only regular files are read") from None
    except OSError as error:
        raise ImageLoadError(f"{path}: cannot be opened ({error.strerror})") from None


def read_image_file(path: str | os.PathLike, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open a regular image file fully (EXIF orientation applied, first frame) or raise ImageLoadError naming
    it.

    Images above `max_pixels` are refused from the header, before anything is decoded (None: only PIL's own
    decompression-bomb guard).
    """
    path = Path(path)
    handle = open_regular_file(path)
    try:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ImageLoadError(f"{path}: file is empty (0 bytes)")
        with Image.open(handle) as image:  # lazy: reads the header only
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise ImageLoadError(
                    f"{path}: image too large ({image.width}x{image.height} is above max_pixels={max_pixels})"
                )
            # Decode now so truncated files fail here, not later; animations give their first frame.
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{path}: image too large ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"{path}: not an image file PIL can read") from error
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageLoadError(f"{path}: corrupt or truncated image ({error})") from error
    finally:
        handle.close()
    return image


def pil_to_array(image: Image.Image) -> np.ndarray:
    """Convert a PIL image to a numpy array keeping its bit depth ([H, W] or [H, W, C])."""
    if image.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(image, dtype=np.uint16)
    if image.mode == "I":
        return np.asarray(image, dtype=np.int32)
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGB")
    return np.asarray(image)


def array_to_unit_float(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Scale an integer or float array to float32 in [0, 1] (uint8 / 255, uint16 / 65535, floats checked)."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype == np.int32:  # PIL mode "I" holds 16-bit PNGs on some platforms.
        if array.min() < 0 or array.max() > 65535:
            raise ValueError(f"{name}: int32 values outside the 16-bit range [0, 65535]")
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        if not np.isfinite(array).all():
            raise ValueError(f"{name}: contains NaN or infinite values")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"{name}: float values must lie in [0, 1]; got [{array.min():.3g}, {array.max():.3g}]"
            )
        return array
    raise ValueError(f"{name}: unsupported dtype {array.dtype}; expected uint8, uint16 or float in [0, 1]")


def to_rgb_hwc(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Turn [H, W], [H, W, 1|2|3|4] arrays into [H, W, 3] (gray repeated, alpha dropped)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(
            f"{name}: expected [H, W] or [H, W, C] with C in 1..4; got shape {tuple(array.shape)}"
        )
    channels = array.shape[2]
    if channels in (1, 2):  # gray or gray + alpha
        array = np.repeat(array[:, :, :1], 3, axis=2)
    elif channels == 4:  # RGBA: alpha is dropped, colours kept as stored
        array = array[:, :, :3]
    return array


def load_rgb(image: ImageInput, name: str | None = None, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Load any supported image input as float32 RGB in [0, 1], shape [H, W, 3].

    Accepts a path, a PIL image, a numpy array ([H, W], [H, W, C]; uint8/uint16/float in [0, 1]) or a tensor
    ([C, H, W] or [H, W]; same dtypes). Files above `max_pixels` are refused before decoding. Raises
    ImageLoadError / ValueError that name the input.
    """
    label = name or (str(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__)
    if isinstance(image, (str, os.PathLike)):
        image = read_image_file(image, max_pixels)
    if isinstance(image, Image.Image):
        array = pil_to_array(image)
    elif isinstance(image, np.ndarray):
        array = image
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)  # [C, H, W] -> [H, W, C]
        array = tensor.numpy()
    else:
        raise TypeError(f"{label}: unsupported image type {type(image).__name__}")
    if array.ndim < 2 or min(array.shape[:2]) < 1:
        raise ValueError(f"{label}: empty image of shape {tuple(array.shape)}")
    rgb = to_rgb_hwc(array_to_unit_float(np.asarray(array), label), label)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def load_rgb_uint8(image: ImageInput, name: str | None = None) -> np.ndarray:
    """Load any supported image input as uint8 RGB, shape [H, W, 3]."""
    label = name or (str(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__)
    if isinstance(image, (str, os.PathLike)):
        image = read_image_file(image)
    array = pil_to_array(image) if isinstance(image, Image.Image) else image
    if isinstance(array, np.ndarray) and array.dtype == np.uint8 and array.ndim >= 2 and min(array.shape[:2]):
        # 8-bit input as is (what the float round trip returns, exactly), without its two float32 copies at
        # 4x the image's size: the peak memory of decoding a large photo. Always a fresh, writable array.
        rgb = to_rgb_hwc(array, label)
        fresh = rgb.base is not None or rgb is image or not rgb.flags.writeable
        return np.array(rgb, order="C") if fresh or not rgb.flags.c_contiguous else rgb
    return np.round(load_rgb(array, label) * 255.0).astype(np.uint8)
