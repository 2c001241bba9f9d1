"""Export of predictions to other tools' formats: ControlNet OpenPose conditioning images and pose JSON."""

from zoo.export.controlnet import (
    ControlNetPose,
    ExportInputError,
    ImagePoses,
    export_image,
    iter_controlnet_exports,
    openpose_json,
    read_coco_poses,
    write_controlnet_pose,
)

__all__ = [
    "ControlNetPose",
    "ExportInputError",
    "ImagePoses",
    "export_image",
    "iter_controlnet_exports",
    "openpose_json",
    "read_coco_poses",
    "write_controlnet_pose",
]
