"""The Annotator and its parts: inputs (listing, batch decoding), resume state, per-task adapters, the
annotator.

Layout of an output folder
(`<key>` is the predictor's name, by default its task; `<stem>` is the input's relative
path with its suffix kept, `zoo.utils.files.output_stem`, so `frame.0001.jpg` -> `depth/frame.0001.jpg.png`):

    failures.json                    every input that could not be annotated: [{file, reason[, models]}]
    <pose key>/results.json          COCO keypoint results (image_id, category_id 1, keypoints, score, bbox)
    <pose key>/annotations.json      the same people as a COCO keypoint annotation file (with the image list)
    <pose key>/<stem>_vis.png        skeleton overlays; <pose key>/controlnet/<stem>.png|.json on request
    <dense key>/<stem>.png|.npy|_vis.png   16-bit depth or RGB normals, float32 array, colour picture
    .annotate/ resume state: lock, per-model settings and one small JSON record per image
"""

from zoo.inference.annotate.adapters import DenseAdapter, PoseAdapter, TaskAdapter, predictor_task
from zoo.inference.annotate.annotator import (
    FAILURES_FILE,
    AnnotationSummary,
    Annotator,
    check_locations,
    check_options,
)
from zoo.inference.annotate.inputs import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageItem,
    LoadedBatch,
    list_coco,
    list_folder,
    list_inputs,
)
from zoo.inference.annotate.state import STATE_DIR, AnnotationError, RunState

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FAILURES_FILE",
    "IMAGE_EXTENSIONS",
    "STATE_DIR",
    "AnnotationError",
    "AnnotationSummary",
    "Annotator",
    "DenseAdapter",
    "ImageItem",
    "LoadedBatch",
    "PoseAdapter",
    "RunState",
    "TaskAdapter",
    "check_locations",
    "check_options",
    "list_coco",
    "list_folder",
    "list_inputs",
    "predictor_task",
]
