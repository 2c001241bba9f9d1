"""Every named model of the zoo. Families add their entries here (see zoo.registry)."""

from zoo.registry import ModelEntry, measured_results, register, register_predictor

# ------------------------------------------------------------------------------------------------ Lotus
register_predictor("lotus", "zoo.inference.lotus:LotusPredictor")

# Official checkpoints (jingheya/*, Apache-2.0). Their numbers are secondary quotes of the paper's tables
# (reference notes lotus_marigold.md section 3): AbsRel and delta1 in %, normals mean angular error in degrees.
_LOTUS_PAPER = "paper (secondary quotes, unverified)"
register(ModelEntry(
    name="lotus-depth-d", family="lotus", task="depth", config="configs/lotus/lotus_depth_d.yaml",
    checkpoint="jingheya/lotus-depth-d-v2-0-disparity",
    description="Lotus-D affine-invariant disparity (regression, single step)",
    predictor_kwargs={"mode": "d", "task": "depth", "disparity": True},
    results={"NYUv2": {"AbsRel%": 5.1, "delta1%": 97.2}, "KITTI": {"AbsRel%": 8.1, "delta1%": 93.1},
             "ETH3D": {"AbsRel%": 6.1, "delta1%": 97.0}, "ScanNet": {"AbsRel%": 5.5, "delta1%": 96.5},
             "DIODE": {"AbsRel%": 22.8, "delta1%": 73.8}},
    results_source=_LOTUS_PAPER,
))
register(ModelEntry(
    name="lotus-depth-g", family="lotus", task="depth", config="configs/lotus/lotus_depth_g.yaml",
    checkpoint="jingheya/lotus-depth-g-v2-1-disparity",
    description="Lotus-G affine-invariant disparity (generative, single step from noise)",
    predictor_kwargs={"mode": "g", "task": "depth", "disparity": True},
    results={"NYUv2": {"AbsRel%": 5.4, "delta1%": 96.6}, "KITTI": {"AbsRel%": 11.3}},
    results_source=_LOTUS_PAPER,
))
register(ModelEntry(
    name="lotus-normal-d", family="lotus", task="normals", config="configs/lotus/lotus_normal_d.yaml",
    checkpoint="jingheya/lotus-normal-d-v1-1", description="Lotus-D surface normals (camera-aligned training)",
    predictor_kwargs={"mode": "d", "task": "normals"},
    results={"NYUv2": {"mean_deg": 16.2}, "ScanNet": {"mean_deg": 14.3}, "Sintel": {"mean_deg": 32.3}},
    results_source=_LOTUS_PAPER,
))
register(ModelEntry(
    name="lotus-normal-g", family="lotus", task="normals", config="configs/lotus/lotus_normal_g.yaml",
    checkpoint="jingheya/lotus-normal-g-v1-1", description="Lotus-G surface normals (camera-aligned training)",
    predictor_kwargs={"mode": "g", "task": "normals"},
    results={"NYUv2": {"mean_deg": 17.5}, "ScanNet": {"mean_deg": 18.1}, "iBims": {"mean_deg": 19.2},
             "Sintel": {"mean_deg": 35.7}},
    results_source=_LOTUS_PAPER,
))

# Tiny Lotus models trained here (tools/train_tiny.py, configs/tiny/) on synthetic scenes.
_TINY_LOTUS = (
    ("tiny-lotus-depth-d", "lotus_depth_d", "depth", "Lotus-D disparity on the tiny backbone, 64x64 synthetic scenes"),
    ("tiny-lotus-normal-d", "lotus_normal_d", "normals", "Lotus-D normals on the tiny backbone, 64x64 synthetic scenes"),
)
_DEPTH_METRICS = ("abs_rel", "delta1", "constant_baseline_abs_rel")
_NORMAL_METRICS = ("mean", "median", "pct_11.25", "constant_baseline_mean")
for _name, _folder, _task, _description in _TINY_LOTUS:
    register(ModelEntry(
        name=_name, family="lotus", task=_task, config=f"configs/tiny/{_folder}.yaml",
        checkpoint=f"checkpoints/tiny/{_folder}", description=_description,
        results=measured_results(f"checkpoints/tiny/{_folder}", _DEPTH_METRICS if _task == "depth" else _NORMAL_METRICS),
    ))

# ------------------------------------------------------------------------------------------------ SDPose
register_predictor("sdpose", "zoo.inference.pose:PosePredictor")

# Official checkpoints (teemosliang/*, MIT), loaded from their released layout (zoo.models.sdpose.convert).
# Numbers: secondary quotes of the paper (reference notes sdpose_cocood_mmpose.md section 4), 1024x768 crops,
# COCO val2017 with AP_H_70 detector boxes, HumanArt val with GT boxes; AP/AR in %.
_SDPOSE_PAPER = "paper (secondary quotes, unverified)"
register(ModelEntry(
    name="sdpose-body", family="sdpose", task="pose", config="configs/sdpose/sdpose_body_1024x768.yaml",
    checkpoint="teemosliang/SDPose-Body",
    description="SDPose COCO-17 body, SD2 UNet up_blocks.3 features + heatmap head, 1024x768 top-down",
    results={"COCO val2017": {"AP%": 81.3, "AR%": 85.2}, "HumanArt val": {"AP%": 71.2, "AR%": 73.9}},
    results_source=_SDPOSE_PAPER,
))
register(ModelEntry(
    name="sdpose-wholebody", family="sdpose", task="pose", config="configs/sdpose/sdpose_wholebody_1024x768.yaml",
    checkpoint="teemosliang/SDPose-Wholebody",
    description="SDPose COCO-WholeBody 133 keypoints, SD2 UNet up_blocks.2 features + heatmap head, 1024x768",
))
register(ModelEntry(
    name="tiny-sdpose-body", family="sdpose", task="pose", config="configs/tiny/sdpose_body.yaml",
    checkpoint="checkpoints/tiny/sdpose_body",
    description="Tiny SDPose COCO-17 on the tiny backbone, trained on synthetic figures (96x128 crops)",
    # OKS AP on 200 held-out figure images (seed 2000000), GT boxes, flip test (see its recipe.json).
    results=measured_results("checkpoints/tiny/sdpose_body", ("AP", "AP50", "AP75", "AR")),
))
