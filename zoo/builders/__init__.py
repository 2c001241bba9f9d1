"""Dataset builders: COCO-OOD (restyled and corrupted COCO keypoint sets, annotations kept exactly)."""

from zoo.builders.coco_ood import (
    CocoOodError,
    SplitPaths,
    build,
    contact_sheet,
    merge,
    parse_shard,
    split_paths,
    verify,
    write_contact_sheet,
)
from zoo.builders.styles import Corruption, Style, available_styles, default_styles, get_style, register_style

__all__ = [
    "CocoOodError",
    "Corruption",
    "SplitPaths",
    "Style",
    "available_styles",
    "build",
    "contact_sheet",
    "default_styles",
    "get_style",
    "merge",
    "parse_shard",
    "register_style",
    "split_paths",
    "verify",
    "write_contact_sheet",
]
