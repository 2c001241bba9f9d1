"""COCO-OOD builder: restyled and corrupted copies of a COCO keypoint set with its annotations kept exactly.

One module per job: `planning` (settings, input checks, the image list), `execution` (restyling, worker pool,
resumable progress records, `build`), `merging` (shards into splits, `verify`) and `sheets` (the contact
sheet). The layout of a built root is `zoo.data.coco_ood`; progress of an unfinished or unmerged shard lives
in `OUT/.work/shard-<i>-of-<n>.json` until the merge removes it.
"""

from zoo.builders.coco_ood.execution import build
from zoo.builders.coco_ood.merging import merge, split_annotations, verify
from zoo.builders.coco_ood.planning import (
    IMAGE_FORMATS,
    MANIFEST_VERSION,
    CocoOodError,
    load_coco,
    parse_shard,
)
from zoo.builders.coco_ood.sheets import contact_sheet, write_contact_sheet
from zoo.data.coco_ood import SplitPaths, split_paths

__all__ = [
    "IMAGE_FORMATS",
    "MANIFEST_VERSION",
    "CocoOodError",
    "SplitPaths",
    "build",
    "contact_sheet",
    "load_coco",
    "merge",
    "parse_shard",
    "split_annotations",
    "split_paths",
    "verify",
    "write_contact_sheet",
]
