"""Export of predictions to other tools' formats: ControlNet OpenPose conditioning images and pose JSON."""

from zoo.export.controlnet import (
    ControlNetPose,
    ExportInputError,
    ImagePoses,
    OpenPosePerson,
    coco17_to_openpose18,
    export_image,
    iter_controlnet_exports,
    openpose_json,
    person_from_coco,
    read_coco_poses,
    render_openpose,
    write_controlnet_pose,
)

__all__ = [
    "ControlNetPose",
    "ExportInputError",
    "ImagePoses",
    "OpenPosePerson",
    "coco17_to_openpose18",
    "export_image",
    "iter_controlnet_exports",
    "openpose_json",
    "person_from_coco",
    "read_coco_poses",
    "render_openpose",
    "write_controlnet_pose",
]
