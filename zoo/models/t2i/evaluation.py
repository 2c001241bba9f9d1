"""Held-out measurements of text-to-image: denoising loss per timestep band, caption following on pixels."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import torch
from scipy import ndimage

from zoo.data.synthetic.captions import COLOUR_HUES, CaptionedImage
from zoo.evaluation.base import RecordEvaluator

# A pixel shows a named colour when it is this saturated and bright and within this hue distance of it.
MIN_SATURATION, MIN_VALUE, MAX_HUE_DISTANCE = 0.45, 0.2, 30.0
MIN_PIXELS = 12  # smaller colour blobs (of a 64x64 image) are noise, not an object


def band_name(band: tuple[int, int]) -> str:
    """Metric suffix of a timestep band, e.g. "t0-250"."""
    return f"t{band[0]}-{band[1]}"


class DenoisingLossEvaluator(RecordEvaluator):
    """Mean held-out epsilon MSE per timestep band, with the caption and with the empty caption."""

    def update(self, ids: Iterable[Hashable], losses: dict[str, torch.Tensor]) -> None:
        """`losses`: metric name -> per-sample losses [B] (e.g. "loss_t0-250", "loss_uncond_t0-250")."""
        for row, sample_id in enumerate(ids):
            self._add(sample_id, {name: float(values[row]) for name, values in losses.items()})

    def _compute(self, records: list[dict[str, float]]) -> dict[str, float]:
        metrics = {name: float(np.mean([record[name] for record in records])) for name in records[0]}
        for prefix in ("loss", "loss_uncond"):
            bands = [value for name, value in metrics.items() if name.startswith(prefix + "_t")]
            metrics[prefix] = float(np.mean(bands))  # bands are equally wide: the mean over uniform timesteps
        return metrics


def colour_masks(image: np.ndarray) -> dict[str, np.ndarray]:
    """Pixels [H, W] bool of each named colour in an RGB image [H, W, 3] in [0, 1] (by hue, if saturated)."""
    high, low = image.max(axis=-1), image.min(axis=-1)
    saturation = (high - low) / np.maximum(high, 1e-6)
    red, green, blue = image[..., 0], image[..., 1], image[..., 2]
    hue = np.degrees(np.arctan2(np.sqrt(3.0) * (green - blue), 2 * red - green - blue)) % 360.0
    coloured = (saturation > MIN_SATURATION) & (high > MIN_VALUE)
    distances = {name: np.abs((hue - centre + 180.0) % 360.0 - 180.0) for name, centre in COLOUR_HUES.items()}
    nearest = np.argmin(np.stack(list(distances.values())), axis=0)  # [H, W]
    return {
        name: coloured & (nearest == index) & (distances[name] < MAX_HUE_DISTANCE)
        for index, name in enumerate(COLOUR_HUES)
    }


def _blobs(mask: np.ndarray) -> int:
    labels, count = ndimage.label(mask)
    return int(sum(np.count_nonzero(labels == k) >= MIN_PIXELS for k in range(1, count + 1)))


def caption_checks(record: CaptionedImage, image: np.ndarray) -> dict[str, bool]:
    """Which of a scene caption's claims the image [H, W, 3] satisfies, by check name.

    colour: the most frequent named colour is the caption's (captions naming one colour); side: that colour's
    centroid is in the named third; order: both colours present, left one's centroid first ("A left of B");
    count: as many blobs of the colour as the caption counts ("two red spheres").
    """
    if record.kind != "scene":
        return {}
    masks = colour_masks(image)
    pixels = {name: int(mask.sum()) for name, mask in masks.items()}
    colours = sorted({o.colour for o in record.objects})
    width = image.shape[1]

    def centre_x(name: str) -> float:
        return (
            float(np.nonzero(masks[name])[1].mean()) / width if pixels[name] >= MIN_PIXELS else float("nan")
        )

    checks: dict[str, bool] = {}
    if len(colours) == 1:
        dominant = max(pixels, key=pixels.get)
        checks["colour"] = pixels[dominant] >= MIN_PIXELS and dominant == colours[0]
        if len(record.objects) == 1:
            side = (
                "left" if record.objects[0].x < -0.25 else "right" if record.objects[0].x > 0.25 else "middle"
            )
            x = centre_x(colours[0])
            found = "left" if x < 1 / 3 else "right" if x > 2 / 3 else "middle" if x == x else "none"
            checks["side"] = checks["colour"] and found == side
        else:
            checks["count"] = _blobs(masks[colours[0]]) == len(record.objects)
    elif len(record.objects) == 2 and record.objects[1].on is None:
        first, second = sorted(record.objects, key=lambda o: o.x)
        checks["order"] = bool(centre_x(first.colour) < centre_x(second.colour))  # False when one is missing
    return checks


def caption_following(records: Sequence[CaptionedImage], images: np.ndarray) -> dict[str, float]:
    """Rate of satisfied claims per check over images [N, H, W, 3] generated for `records`' captions."""
    outcomes: dict[str, list[bool]] = {}
    for record, image in zip(records, images, strict=True):
        for name, passed in caption_checks(record, image).items():
            outcomes.setdefault(name, []).append(passed)
    rates = {f"{name}_rate": float(np.mean(values)) for name, values in sorted(outcomes.items())}
    rates.update({f"{name}_n": len(values) for name, values in sorted(outcomes.items())})
    return rates
