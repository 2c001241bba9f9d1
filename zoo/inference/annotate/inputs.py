"""The Annotator's inputs: listing a folder or a COCO image list, and decoding one fixed batch at a time."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from zoo.data.coco_files import CocoFileError, read_coco
from zoo.data.images import ImageLoadError, load_rgb
from zoo.utils.files import output_stem, safe_join, sha256_file

# Folder listings pick files by these suffixes (case-insensitive); GIF gives its first frame.
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)
# Bigger images are reported instead of decoded: a 64-MP photo is already ~0.8 GB as float32 RGB, and the
# models work at a bounded resolution anyway
# (Lotus: processing_resolution on the long side; pose: fixed-size crops).
DEFAULT_MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class ImageItem:
    """One input image: its COCO id, name relative to the image root, file and output stem."""

    image_id: int
    file_name: str  # POSIX path relative to the root; the COCO file_name
    path: Path | None  # None when the name was refused (escapes the root)
    stem: str | None  # `output_stem(file_name)`; None when the name cannot name an output
    error: str | None = None  # why it cannot be read, known before loading


@dataclass
class LoadedBatch:
    """A batch of images as the dataset yields it: arrays for the readable ones, reasons for the others."""

    items: list[ImageItem]
    images: list[np.ndarray | None]  # float32 [H, W, 3] in [0, 1]
    errors: list[str | None]
    sources: list[dict[str, int | str] | None]  # each file's identity (source_identity) when it exists


def source_identity(path: Path) -> dict[str, int | str]:
    """What a done-record remembers of its source: size, modification time and content hash."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}


def _item(image_id: int, name: str, root: Path) -> ImageItem:
    """An item whose bad name (escaping the root) is a reason for one failure, not a reason to stop."""
    try:
        return ImageItem(image_id, name, safe_join(root, name), output_stem(name))
    except ValueError as error:
        return ImageItem(image_id, name, None, None, error=str(error))


def list_folder(folder: str | os.PathLike, exclude: str | os.PathLike | None = None) -> list[ImageItem]:
    """Images under `folder` (recursive, by extension, hidden entries skipped), sorted by relative path; ids
    1..N.

    Special files with an image name (a FIFO called x.jpg) are listed: the loader reports them instead of
    opening them. Names that are not valid UTF-8 are kept as Python does (surrogate escapes) and annotated.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    skip = Path(exclude).resolve() if exclude is not None else None
    names = []
    for directory, subdirs, files in os.walk(root):
        # The output folder may sit inside the input folder; its pictures are not inputs.
        subdirs[:] = [d for d in subdirs if not d.startswith(".") and (Path(directory, d).resolve() != skip)]
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS:
                names.append(Path(directory, name).relative_to(root).as_posix())
    names.sort()
    # Ids follow the sorted names so that the same folder always gets the same ids.
    return [_item(index + 1, name, root) for index, name in enumerate(names)]


def list_coco(coco_file: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[ImageItem]:
    """The images of a COCO file (`images[].id`, `.file_name`) under `image_root`
    (default: the file's folder)."""
    coco = read_coco(coco_file, "image list", require_size=False)
    root = Path(image_root) if image_root is not None else Path(coco_file).parent
    entries = {image.id: image.file_name.replace("\\", "/") for image in coco.images}
    names: dict[str, int] = {}
    for image_id in sorted(entries):
        if entries[image_id] in names:
            raise CocoFileError(
                f"{coco.name}: file_name {entries[image_id]!r} appears under image ids "
                f"{names[entries[image_id]]} and {image_id}"
            )
        names[entries[image_id]] = image_id
    return [_item(image_id, entries[image_id], root) for image_id in sorted(entries)]


def list_inputs(
    inputs: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    exclude: str | os.PathLike | None = None,
) -> list[ImageItem]:
    """A folder of images, or a COCO JSON file of images under `image_root`."""
    path = Path(inputs)
    if path.is_dir():
        if image_root is not None:
            raise ValueError("image_root is only for a COCO image list; a folder is its own root")
        return list_folder(path, exclude)
    if path.is_file() and path.suffix.lower() == ".json":
        return list_coco(path, image_root)
    raise FileNotFoundError(f"{path}: expected a folder of images or a COCO .json image list")


def failure_reason(error: BaseException, path: Path | None) -> str:
    """A failure reason without the file's absolute path, so that failures.json does not depend on where data
    lives."""
    text = str(error)
    if path is not None and text.startswith(f"{path}: "):
        text = text[len(f"{path}: ") :]
    return text if isinstance(error, (ImageLoadError, ValueError)) else f"{type(error).__name__}: {text}"


class BatchDataset(Dataset):
    """Fixed batches of images, decoded one batch at a time (in DataLoader workers); a bad file becomes a
    reason."""

    def __init__(self, batches: Sequence[Sequence[ImageItem]], max_pixels: int | None) -> None:
        self.batches = [list(items) for items in batches]
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, position: int) -> LoadedBatch:
        items = self.batches[position]
        images: list[np.ndarray | None] = []
        errors: list[str | None] = []
        sources: list[dict[str, int | str] | None] = []
        for item in items:
            image, error, source = None, item.error, None
            if error is None:
                try:
                    image = load_rgb(item.path, max_pixels=self.max_pixels)
                    # After a successful decode the file is known to be regular, so hashing it cannot block.
                    source = source_identity(item.path)
                except Exception as exc:  # noqa: BLE001 - any unreadable file is reported, never fatal
                    error = failure_reason(exc, item.path)
            images.append(image)
            errors.append(error)
            sources.append(source)
        return LoadedBatch(items, images, errors, sources)
