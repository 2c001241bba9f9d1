"""Every family and named model of the zoo, as plain data (read by zoo.registry; imports nothing from zoo).

A family names its classes as "module:attribute" targets; a model names its family, the config that trains it,
its checkpoint (a hub id, or a folder under checkpoints/ for the models that ship here) and its results.
"""

# ------------------------------------------------------------------------------------------------ families
_DEPTH_SMOKE = (
    "--data.init_args.source",
    "synthetic",
    "--data.init_args.image_size",
    "[32, 32]",
    "--data.init_args.train_size",
    "4",
    "--data.init_args.val_size",
    "2",
    "--data.init_args.test_size",
    "2",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
)
_POSE_SMOKE = (
    "--data.init_args.source",
    "synthetic",
    "--data.init_args.input_size",
    "[48, 64]",
    "--data.init_args.train_images",
    "2",
    "--data.init_args.val_images",
    "1",
    "--data.init_args.test_images",
    "1",
    "--data.init_args.figure_size",
    "[64, 64]",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--data.init_args.cache_dir",
    "{tmp}/cache",
    # Model sizes follow the shrunken crops.
    "--model.init_args.input_size",
    "[48, 64]",
    "--model.init_args.heatmap_size",
    "[12, 16]",
    "--model.init_args.sigma",
    "2.0",
)

_VIDEO_POSE_SMOKE = (
    "--data.init_args.source",
    "synthetic",
    "--data.init_args.input_size",
    "[48, 64]",
    "--data.init_args.train_videos",
    "1",
    "--data.init_args.val_videos",
    "1",
    "--data.init_args.test_videos",
    "1",
    "--data.init_args.video_frames",
    "4",
    "--data.init_args.video_size",
    "[64, 64]",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--data.init_args.cache_dir",
    "{tmp}/cache",
    # Model sizes follow the shrunken crops (tokens 3x4, heatmaps 12x16).
    "--model.init_args.input_size",
    "[48, 64]",
    "--model.init_args.sigma",
    "1.0",
    "--model.init_args.blur_kernel_size",
    "5",
)

FAMILIES = (
    {
        # Not a perception family: the recipe that distils the tiny VAE into an AutoencoderTiny (TAESD
        # layout), the fast autoencoder of StableDiffusionBackbone.use_tiny_autoencoder
        # (checkpoints/tiny/taesd).
        "name": "autoencoder_tiny",
        "model": "zoo.models.autoencoder_tiny.model:tiny_taesd",
        "module": "zoo.models.autoencoder_tiny.module:AutoencoderTinyDistillation",
        "datamodule": "zoo.data.depth_datamodule:DepthNormalDataModule",
        "predictor": None,
        "output_kind": "autoencoder",
        "smoke_overrides": _DEPTH_SMOKE,
    },
    {
        "name": "lotus",
        "model": "zoo.models.lotus.model:Lotus",
        "module": "zoo.models.lotus.module:LotusModule",
        "datamodule": "zoo.data.depth_datamodule:DepthNormalDataModule",
        "predictor": "zoo.inference.lotus:LotusPredictor",
        "output_kind": "dense",
        "annotator_adapter": "zoo.inference.annotate.adapters:DenseAdapter",
        "smoke_overrides": _DEPTH_SMOKE,
    },
    {
        "name": "sdpose",
        "model": "zoo.models.sdpose.model:SDPose",
        "module": "zoo.models.sdpose.module:SDPoseModule",
        "datamodule": "zoo.data.pose_datamodule:PoseDataModule",
        "predictor": "zoo.inference.pose:PosePredictor",
        "output_kind": "keypoints",
        "annotator_adapter": "zoo.inference.annotate.adapters:PoseAdapter",
        "smoke_overrides": _POSE_SMOKE,
        "ood": {"metric": "AP", "ann_field": "test_ann_file", "image_field": "test_image_root"},
    },
    {
        "name": "diffpose",
        "model": "zoo.models.diffpose.model:DiffPose",
        "module": "zoo.models.diffpose.module:DiffPoseModule",
        "datamodule": "zoo.data.posetrack_datamodule:PoseTrackDataModule",
        "predictor": "zoo.inference.video_pose:VideoPosePredictor",
        "output_kind": "video_keypoints",
        # Annotates videos, not images: tools/annotate.py builds its VideoAnnotator (PoseTrack JSON).
        "annotator_adapter": "zoo.inference.annotate.video:VideoPoseAdapter",
        "smoke_overrides": _VIDEO_POSE_SMOKE,
    },
)

# ------------------------------------------------------------------------------------------------ models
# Official Lotus checkpoints (jingheya/*, Apache-2.0). Their numbers are secondary quotes of the paper's
# tables (reference notes lotus_marigold.md section 3): AbsRel and delta1 in %, normals mean angular error in
# degrees.
_PAPER = "paper (secondary quotes, unverified)"
_DEPTH_METRICS = ("abs_rel", "delta1", "constant_baseline_abs_rel")
_NORMAL_METRICS = ("mean", "median", "pct_11.25", "constant_baseline_mean")

MODELS = (
    {
        "name": "lotus-depth-d",
        "family": "lotus",
        "task": "depth",
        "config": "configs/lotus/lotus_depth_d.yaml",
        "checkpoint": "jingheya/lotus-depth-d-v2-0-disparity",
        "description": "Lotus-D affine-invariant disparity (regression, single step)",
        "predictor_kwargs": {"mode": "d", "task": "depth", "disparity": True},
        "results": {
            "NYUv2": {"AbsRel%": 5.1, "delta1%": 97.2},
            "KITTI": {"AbsRel%": 8.1, "delta1%": 93.1},
            "ETH3D": {"AbsRel%": 6.1, "delta1%": 97.0},
            "ScanNet": {"AbsRel%": 5.5, "delta1%": 96.5},
            "DIODE": {"AbsRel%": 22.8, "delta1%": 73.8},
        },
        "results_source": _PAPER,
    },
    {
        "name": "lotus-depth-g",
        "family": "lotus",
        "task": "depth",
        "config": "configs/lotus/lotus_depth_g.yaml",
        "checkpoint": "jingheya/lotus-depth-g-v2-1-disparity",
        "description": "Lotus-G affine-invariant disparity (generative, single step from noise)",
        "predictor_kwargs": {"mode": "g", "task": "depth", "disparity": True},
        "results": {"NYUv2": {"AbsRel%": 5.4, "delta1%": 96.6}, "KITTI": {"AbsRel%": 11.3}},
        "results_source": _PAPER,
    },
    {
        "name": "lotus-normal-d",
        "family": "lotus",
        "task": "normals",
        "config": "configs/lotus/lotus_normal_d.yaml",
        "checkpoint": "jingheya/lotus-normal-d-v1-1",
        "description": "Lotus-D surface normals (camera-aligned training)",
        "predictor_kwargs": {"mode": "d", "task": "normals"},
        "results": {"NYUv2": {"mean_deg": 16.2}, "ScanNet": {"mean_deg": 14.3}, "Sintel": {"mean_deg": 32.3}},
        "results_source": _PAPER,
    },
    {
        "name": "lotus-normal-g",
        "family": "lotus",
        "task": "normals",
        "config": "configs/lotus/lotus_normal_g.yaml",
        "checkpoint": "jingheya/lotus-normal-g-v1-1",
        "description": "Lotus-G surface normals (camera-aligned training)",
        "predictor_kwargs": {"mode": "g", "task": "normals"},
        "results": {
            "NYUv2": {"mean_deg": 17.5},
            "ScanNet": {"mean_deg": 18.1},
            "iBims": {"mean_deg": 19.2},
            "Sintel": {"mean_deg": 35.7},
        },
        "results_source": _PAPER,
    },
    # Tiny Lotus models trained here (tools/train_tiny.py, configs/tiny/) on synthetic scenes.
    {
        "name": "tiny-lotus-depth-d",
        "family": "lotus",
        "task": "depth",
        "config": "configs/tiny/lotus_depth_d.yaml",
        "checkpoint": "checkpoints/tiny/lotus_depth_d",
        "description": "Lotus-D disparity on the tiny backbone, 64x64 synthetic scenes",
        "measured_metrics": _DEPTH_METRICS,
        "comparisons": {"from a random UNet": "random_unet_metrics.json"},
    },
    {
        "name": "tiny-lotus-depth-g",
        "family": "lotus",
        "task": "depth",
        "config": "configs/tiny/lotus_depth_g.yaml",
        "checkpoint": "checkpoints/tiny/lotus_depth_g",
        "description": "Lotus-G disparity on the tiny backbone (1 step from noise), 64x64 synthetic scenes",
        # The default single step (training's test), then 2 and 4 DDIM steps on the same held-out split
        # (zoo.recipes.lotus_g_steps; its recipe.json: inference_steps, with a random UNet's numbers).
        "measured_metrics": (
            *_DEPTH_METRICS,
            "abs_rel_steps2",
            "delta1_steps2",
            "abs_rel_steps4",
            "delta1_steps4",
        ),
    },
    {
        "name": "tiny-lotus-normal-d",
        "family": "lotus",
        "task": "normals",
        "config": "configs/tiny/lotus_normal_d.yaml",
        "checkpoint": "checkpoints/tiny/lotus_normal_d",
        "description": "Lotus-D normals on the tiny backbone, 64x64 synthetic scenes",
        "measured_metrics": _NORMAL_METRICS,
        "comparisons": {"from a random UNet": "random_unet_metrics.json"},
    },
    # Official SDPose checkpoints (teemosliang/*, MIT), loaded from their released layout
    # (zoo.models.sdpose.convert). Numbers: secondary quotes of the paper
    # (reference notes sdpose_cocood_mmpose.md section 4), 1024x768 crops, COCO val2017 with AP_H_70 detector
    # boxes, HumanArt val with GT boxes; AP/AR in %.
    {
        "name": "sdpose-body",
        "family": "sdpose",
        "task": "pose",
        "config": "configs/sdpose/sdpose_body_1024x768.yaml",
        "checkpoint": "teemosliang/SDPose-Body",
        "description": "SDPose COCO-17 body, SD2 UNet up_blocks.3 features + heatmap head, 1024x768 top-down",
        "results": {"COCO val2017": {"AP%": 81.3, "AR%": 85.2}, "HumanArt val": {"AP%": 71.2, "AR%": 73.9}},
        "results_source": _PAPER,
    },
    {
        "name": "sdpose-wholebody",
        "family": "sdpose",
        "task": "pose",
        "config": "configs/sdpose/sdpose_wholebody_1024x768.yaml",
        "checkpoint": "teemosliang/SDPose-Wholebody",
        "description": "SDPose COCO-WholeBody 133 keypoints, SD2 UNet up_blocks.2 features + heatmap head, "
        "1024x768",
    },
    {
        "name": "tiny-sdpose-body",
        "family": "sdpose",
        "task": "pose",
        "config": "configs/tiny/sdpose_body.yaml",
        "checkpoint": "checkpoints/tiny/sdpose_body",
        "description": "Tiny SDPose COCO-17 on the tiny backbone, trained on synthetic figures "
        "(96x128 crops)",
        # OKS AP on 200 held-out figure images (seed 2000000), GT boxes, flip test (see its recipe.json).
        "measured_metrics": ("AP", "AP50", "AP75", "AR"),
        "comparisons": {"from a random UNet": "random_unet_metrics.json"},
    },
    # DiffPose trained here on synthetic moving figures (tools/train_tiny.py configs/tiny/diffpose.yaml).
    # PoseTrack mAP (poseval semantics) on 30 held-out synthetic videos (seed 2000000), GT boxes, no flip
    # test: the default sampling (1 DDIM step, ensemble 4), the same model given only the key frame (T1), and
    # steps x ensemble; persons/s measured in the same test run (see its recipe.json).
    {
        "name": "tiny-diffpose",
        "family": "diffpose",
        "task": "video pose",
        "config": "configs/tiny/diffpose.yaml",
        "checkpoint": "checkpoints/tiny/diffpose",
        "description": "Tiny DiffPose (PoseTrack 17 slots, 3 frames) on the tiny backbone, "
        "synthetic moving figures",
        "measured_metrics": (
            "mAP",
            "mAP_T1",
            "mAP_s1_e1",
            "mAP_s1_e4",
            "mAP_s2_e1",
            "mAP_s2_e4",
            "mAP_s4_e1",
            "mAP_s4_e4",
            "persons_per_s_T1",
            "persons_per_s_s1_e1",
            "persons_per_s_s1_e4",
            "persons_per_s_s2_e1",
            "persons_per_s_s2_e4",
            "persons_per_s_s4_e1",
            "persons_per_s_s4_e4",
        ),
    },
)

# ----------------------------------------------------------------------------------- text-to-image (issue 10)
# The tiny backbone itself, trained as SD2-base is trained (zoo.recipes.tiny_backbone,
# configs/tiny/backbone_t2i.yaml; rebuilt by `make tiny-backbone`, not by `make tiny-models`).
FAMILIES += (
    {
        "name": "t2i",
        "model": "zoo.models.t2i.model:TextToImage",
        "module": "zoo.models.t2i.module:TextToImageModule",
        "datamodule": "zoo.data.caption_datamodule:CaptionDataModule",
        "predictor": "zoo.inference.t2i:TextToImagePredictor",
        "output_kind": "image",
        "smoke_overrides": (
            "--data.init_args.train_size",
            "4",
            "--data.init_args.val_size",
            "2",
            "--data.init_args.test_size",
            "2",
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.num_workers",
            "0",
        ),
    },
)
MODELS += (
    # Held-out captions (test split, 256 items): epsilon MSE of the trained UNet (with the caption and
    # with ""), of the random initial UNet, and the pixel-checked caption following of 20-step DDIM
    # samples (the first 96 items) at guidance 1 and 7 (see its recipe.json).
    {
        "name": "tiny-sd",
        "family": "t2i",
        "task": "text-to-image",
        "config": "configs/tiny/backbone_t2i.yaml",
        "checkpoint": "checkpoints/tiny/backbone",
        "description": "The tiny backbone as a text-to-image model (64x64 captioned synthetic images, CFG)",
        "measured_metrics": (
            "heldout_loss",
            "heldout_loss_empty_prompt",
            "heldout_loss_random",
            "colour_rate_g1",
            "colour_rate_g7",
            "order_rate_g1",
            "order_rate_g7",
        ),
        "rebuild": "tiny-backbone",
    },
)

# ---------------------------------------------------------------------------------------- Mustafar (issue 12)
_MUSTAFAR_SMOKE = (
    "--data.init_args.source",
    "synthetic",
    "--data.init_args.image_size",
    "[64, 64]",
    "--data.init_args.train_images",
    "2",
    "--data.init_args.val_images",
    "1",
    "--data.init_args.test_images",
    "1",
    "--data.init_args.batch_size",
    "2",
    "--data.init_args.num_workers",
    "0",
    "--data.init_args.cache_dir",
    "{tmp}/vqa",
    # Tiny stand-ins for CLIP ViT-L/14-336 and Vicuna-7B (random, from configs) and the tiny tokenizer.
    "--model.init_args.llm",
    '{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, '
    '"num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 512}',
    "--model.init_args.clip",
    '{"image_size": 32, "patch_size": 16, "hidden_size": 32, '
    '"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}',
    "--model.init_args.tokenizer",
    "checkpoints/tiny/mustafar/tokenizer",
    "--model.init_args.image_size",
    "[64, 64]",
    "--model.init_args.cross_attention_heads",
    "2",
    "--model.init_args.init_from",
    "null",
)
FAMILIES += (
    {
        "name": "mustafar",
        "model": "zoo.models.mustafar.model:MustafarForConditionalGeneration",
        "module": "zoo.models.mustafar.module:MustafarModule",
        "datamodule": "zoo.data.vqa:VQADataModule",
        "predictor": "zoo.inference.mustafar:MustafarPredictor",
        "output_kind": "text",
        "smoke_overrides": _MUSTAFAR_SMOKE,
    },
)
MODELS += (
    # Mustafar (arXiv 2507.07106): question-conditioned SD features, alone or as the LLaVA encoder. No
    # official weights exist; sd21-features is the encoder on SD 2.1-base (features only, no LLM).
    {
        "name": "sd21-features",
        "family": "mustafar",
        "task": "features",
        "config": "configs/mustafar/stage2_finetune.yaml",
        "checkpoint": "stabilityai/stable-diffusion-2-1-base",
        "description": "SD 2.1-base U-L1-R1-B0 cross-attention query, t=50 (16x16 x 1280 at 512 px)",
        "predictor_kwargs": {"features_only": True, "image_size": [512, 512]},
    },
    {
        "name": "tiny-sd-features",
        "family": "mustafar",
        "task": "features",
        "config": "configs/tiny/mustafar_stage2.yaml",
        "checkpoint": "checkpoints/tiny/sd_features",
        "description": "Tiny backbone U-L1-R1-B0 cross-attention query, t=50, s=4 (2x2 x 64 at 64 px)",
        "predictor_kwargs": {"features_only": True},
        # tools/benchmark.py mustafar, batch 8 of 64x64, 1 CPU thread (see its metrics.json).
        "measured_metrics": ("tokens_per_image", "channels", "images_per_s_s0", "images_per_s_s4"),
        "rebuild": "none",
    },
    # LLaVA-style stage 1 (captions, unconditional SD features) then stage 2 (synthetic VQA, the question as
    # the SD prompt, s = 4) by tools/train_tiny.py; exact-match accuracy on 256 held-out images next to the
    # baseline that answers each question type's majority training answer (see its recipe.json).
    {
        "name": "tiny-mustafar",
        "family": "mustafar",
        "task": "vqa",
        "config": "configs/tiny/mustafar_stage2.yaml",
        "stages": ("configs/tiny/mustafar_stage1.yaml",),
        "checkpoint": "checkpoints/tiny/mustafar",
        "description": "Tiny Mustafar LLaVA (tiny backbone SD features x random tiny CLIP, cross-attention "
        "fusion, tiny Llama), 64x64 synthetic VQA",
        "measured_metrics": (
            "accuracy",
            "majority_accuracy",
            "accuracy/count",
            "accuracy/colour",
            "accuracy/position",
            "accuracy/pose",
        ),
    },
)
