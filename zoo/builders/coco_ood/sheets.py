"""COCO-OOD contact sheet: a labelled grid of originals and their restyled copies, for a look at a build."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from zoo.builders.coco_ood.execution import encode_image
from zoo.builders.coco_ood.planning import CocoOodError
from zoo.data.coco_ood import split_paths
from zoo.data.images import load_rgb_uint8
from zoo.utils.files import atomic_write_bytes, safe_join


def _label(cell: np.ndarray, text: str) -> None:
    """Write `text` on a white band at the top of an RGB cell, in place."""
    cell[:18] = 255
    cv2.putText(cell, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)


def _fit(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Letterbox an RGB image into a white [height, width, 3] cell."""
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    cell = np.full((height, width, 3), 255, np.uint8)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    cell[top : top + size[1], left : left + size[0]] = resized
    return cell


def contact_sheet(
    out: str | os.PathLike,
    image_root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    max_images: int = 4,
    cell_height: int = 180,
) -> np.ndarray:
    """Grid image, rows = images (lowest ids), columns = original + each split, labelled; RGB uint8."""
    out = Path(out)
    names = list(splits) if splits else sorted(p.parent.name for p in out.glob("*/manifest.json"))
    if not names:
        raise CocoOodError(f"no finished splits under {out}; build (and merge) first")
    manifests = {
        name: json.loads(split_paths(out, name).manifest.read_text(encoding="utf-8")) for name in names
    }
    first = manifests[names[0]]["images"][:max_images]
    cell_width = cell_height * 4 // 3
    band = 18  # label band above each cell
    rows = []
    for record in first:
        cells = [load_rgb_uint8(safe_join(image_root, record["source_file_name"]))]
        labels = [f"original {record['image_id']}"]
        for name in names:
            match = next(r for r in manifests[name]["images"] if r["image_id"] == record["image_id"])
            cells.append(load_rgb_uint8(safe_join(split_paths(out, name).images, match["file_name"])))
            labels.append(name)
        row = []
        for cell, label in zip(cells, labels, strict=True):
            framed = np.full((cell_height + band, cell_width, 3), 255, np.uint8)
            framed[band:] = _fit(cell, cell_width, cell_height)
            _label(framed, label)
            row.append(framed)
        rows.append(np.concatenate(row, axis=1))  # [h + band, (1 + splits) * w, 3]
    return np.concatenate(rows, axis=0)


def write_contact_sheet(
    path: str | os.PathLike,
    out: str | os.PathLike,
    image_root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    max_images: int = 4,
) -> Path:
    """Write the contact sheet as a PNG (atomically) and return its path."""
    sheet = contact_sheet(out, image_root, splits, max_images)
    atomic_write_bytes(path, encode_image(sheet, "png", 95))
    return Path(path)
