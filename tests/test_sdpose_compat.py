"""sdpose_compat: PosePredictor reproduces the official SDPose-OOD evaluation and demo paths (issue 15).

The official side is transcribed here from the reference notes
(docs: ../shared/reference/sdpose_cocood_mmpose.md §1.2, §1.4, §2): mmpose's LoadImage (OpenCV decode, BGR),
GetBBoxCenterScale (padding 1.25), TopdownAffine
(use_udp, aspect 3:4, float32 matrix, cv2.warpAffine bilinear with a black border), the pipeline's posterior
sample of the original then of the mirrored crop, the head on the tapped decoder block, heatmap flip test
without shift, mmpose's UDPHeatmap decode and `kpt / input_size * scale + center - scale / 2` back to the
image. Where mmpose itself can run here (its TopdownAffine and UDPHeatmap), it is used as a second,
independent oracle.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from zoo.codecs import (
    UDPHeatmap,
    decode_udp_batched,
    decode_udp_official,
    heatmap_argmax,
    refine_dark_udp_batched,
)
from zoo.codecs.official import heatmap_maximum_official
from zoo.data.transforms import official_box_xyxy
from zoo.inference.pose import PosePredictor

INPUT = (768, 1024)  # official crop (w, h)
HEATMAP = (192, 256)
FEATURE_SITES = {17: 3, 133: 2}  # up_blocks index the official head reads (body, whole-body)


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------------
# fixtures
def _write_official(
    folder: Path, tiny_backbone_dir: Path, channels: int, num_keypoints: int, trained: Path | None = None
) -> Path:
    """An official-layout checkpoint: diffusers subfolders, SDPose_D_Pipeline index, mmpose head state dict.

    With `trained` (a zoo SDPose folder) its fine-tuned UNet and head; otherwise the backbone's UNet and a
    random head.
    """
    for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
        shutil.copytree(tiny_backbone_dir / part, folder / part)
    shutil.copytree((trained or tiny_backbone_dir) / "unet", folder / "unet")
    (folder / "model_index.json").write_text(
        json.dumps(
            {
                "_class_name": "SDPose_D_Pipeline",
                "unet": ["diffusers", "UNet2DConditionModel"],
                "vae": ["diffusers", "AutoencoderKL"],
                "decoder": ["mmpose", "HeatmapHead"],
            }
        )
    )
    if trained is not None:
        shutil.copytree(trained / "decoder", folder / "decoder")
        return folder
    generator = torch.Generator().manual_seed(num_keypoints)
    head = {  # by name, as the released decoder.safetensors holds them
        "deconv_layers.0.weight": torch.randn(channels, channels, 4, 4, generator=generator) * 0.05,
        "conv_layers.0.weight": torch.randn(channels, channels, 1, 1, generator=generator) * 0.2,
        "conv_layers.0.bias": torch.randn(channels, generator=generator) * 0.1,
        "final_layer.weight": torch.randn(num_keypoints, channels, 1, 1, generator=generator) * 0.2,
        "final_layer.bias": torch.randn(num_keypoints, generator=generator) * 0.1,
    }
    (folder / "decoder").mkdir()
    save_file(head, str(folder / "decoder" / "decoder.safetensors"))
    return folder


@pytest.fixture(scope="module")
def official_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_backbone_dir: Path) -> dict[int, Path]:
    root = tmp_path_factory.mktemp("official")
    return {
        # The shipped tiny SDPose body: trained heads' peaked maps, as the released checkpoints give. A random
        # head's flat maps leave DARK's Hessian near zero and blow float-rounding noise of the heatmaps up to
        # 0.02 px; the whole-body case keeps one (its residual is 1.5e-5 px all the same).
        17: _write_official(
            root / "body", tiny_backbone_dir, 32, 17, tiny_backbone_dir.parent / "sdpose_body"
        ),  # SD2: 320 channels of up_blocks.3
        133: _write_official(
            root / "wholebody", tiny_backbone_dir, 64, 133
        ),  # SD2: 640 channels of up_blocks.2
    }


def _coco_cases(realdata: Path) -> list[tuple[Path, np.ndarray]]:
    """(image, official float32 boxes [N, 4]) for COCO GT, COCO detections and HumanArt GT boxes."""
    cases = []
    gt = json.loads((realdata / "coco" / "test_coco.json").read_text())
    images = {image["id"]: image for image in gt["images"]}
    detections = json.loads((realdata / "coco" / "test_coco_det_AP_H_56.json").read_text())
    for image_id, image in sorted(images.items()):
        size = (image["width"], image["height"])
        boxes = [official_box_xyxy(a["bbox"], size) for a in gt["annotations"] if a["image_id"] == image_id]
        dets = [official_box_xyxy(d["bbox"]) for d in detections if d["image_id"] == image_id][:3]
        cases.append((realdata / "coco" / image["file_name"], np.stack(boxes + dets)))
    art = json.loads((realdata / "humanart" / "test_humanart.json").read_text())
    for image in art["images"]:
        size = (image["width"], image["height"])
        boxes = [
            official_box_xyxy(a["bbox"], size) for a in art["annotations"] if a["image_id"] == image["id"]
        ]
        if boxes:
            path = realdata / "humanart" / image["file_name"].removeprefix("HumanArt/images/")
            cases.append((path, np.stack(boxes)))
    return cases


# ----------------------------------------------------------------------------------------------------
# transcription
def _official_image(path: Path) -> np.ndarray:
    """mmpose LoadImage: OpenCV decode to BGR; the evaluator reorders to RGB."""
    bgr = cv2.imdecode(np.frombuffer(path.read_bytes(), dtype=np.uint8), cv2.IMREAD_COLOR)
    return bgr[:, :, ::-1]


def _official_center_scale(box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GetBBoxCenterScale(padding=1.25) then TopdownAffine's aspect fix, on float32 [1, 2] arrays."""
    box = np.asarray(box, dtype=np.float32).reshape(1, 4)
    x1, y1, x2, y2 = box[:, 0:1], box[:, 1:2], box[:, 2:3], box[:, 3:4]
    center = np.hstack([x1 + x2, y1 + y2]) * 0.5
    scale = np.hstack([x2 - x1, y2 - y1]) * 1.25
    w, h = scale[:, 0:1], scale[:, 1:2]
    ratio = INPUT[0] / INPUT[1]
    scale = np.where(w > h * ratio, np.hstack([w, w / ratio]), np.hstack([h * ratio, h]))
    return center[0], scale[0]


def _official_crop(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TopdownAffine(use_udp=True): box [c - s/2, c + s/2] onto crop pixel centres 0 .. size - 1, no rotation.
    """
    center, scale = _official_center_scale(box)
    doubled = center * 2
    gain_x = (INPUT[0] - 1) / scale[0]
    gain_y = (INPUT[1] - 1) / scale[1]
    matrix = np.zeros((2, 3), dtype=np.float32)
    matrix[0, 0] = 1.0 * gain_x
    matrix[0, 1] = -0.0 * gain_x
    matrix[0, 2] = gain_x * (-0.5 * doubled[0] * 1.0 + 0.5 * doubled[1] * 0.0 + 0.5 * scale[0])
    matrix[1, 0] = 0.0 * gain_y
    matrix[1, 1] = 1.0 * gain_y
    matrix[1, 2] = gain_y * (-0.5 * doubled[0] * 0.0 - 0.5 * doubled[1] * 1.0 + 0.5 * scale[1])
    crop = cv2.warpAffine(np.ascontiguousarray(image), matrix, INPUT, flags=cv2.INTER_LINEAR)
    return crop, center, scale


def _official_to_image(heatmaps: np.ndarray, center: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, ...]:
    """mmpose's UDPHeatmap decode of one instance [K, H, W], then back to the image: ([K, 2] float64, [K])."""
    codec = pytest.importorskip("mmpose.codecs").UDPHeatmap(input_size=INPUT, heatmap_size=HEATMAP, sigma=6)
    keypoints, scores = codec.decode(heatmaps)  # [1, K, 2] input pixels (x768/191), [1, K]
    return (keypoints / np.asarray(INPUT) * scale + center - 0.5 * scale)[0], scores[0]


@torch.no_grad()
def _official_heatmaps(folder: Path, predictor: PosePredictor, crops: np.ndarray, flip: bool) -> torch.Tensor:
    """SDPose_D_Pipeline on crops uint8 [B, h, w, 3] with the global RNG as it stands: heatmaps [B, K, H, W].
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    backbone, head = predictor.model.backbone, predictor.model.head
    vae, unet = backbone.vae, backbone.unet
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder / "text_encoder")
    ids = tokenizer(
        "", padding="do_not_pad", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    text = text_encoder(ids)[0]  # [1, 2, D]
    rgb = torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous().float() / 255.0 * 2 - 1  # [B, 3, h, w]
    batch = rgb.shape[0]
    inputs = [rgb, torch.flip(rgb, dims=[3])] if flip else [rgb]
    latents = [
        vae.encode(x).latent_dist.sample() * vae.config.scaling_factor for x in inputs
    ]  # all encodes first
    code = torch.tensor([1.0, 0.0])[None]
    labels = torch.cat([torch.sin(code), torch.cos(code)], dim=-1).repeat(batch, 1)  # annotation task [B, 4]
    block = unet.up_blocks[FEATURE_SITES[predictor.metainfo.num_keypoints]]
    features: list[torch.Tensor] = []
    hook = block.register_forward_hook(lambda _m, _i, out: features.append(out))
    for latent in latents:
        unet(latent, torch.tensor(999), text.repeat(batch, 1, 1), class_labels=labels)
    hook.remove()
    maps = [head(feature) for feature in features]
    if not flip:
        return maps[0]
    mirrored = maps[1].flip(3)[:, list(predictor.metainfo.flip_indices)]  # flip_mode heatmap, no shift (UDP)
    return (maps[0] + mirrored) * 0.5


# ---------------------------------------------------------------------------------------------------- crops
def _captured_crops(predictor: PosePredictor, monkeypatch: pytest.MonkeyPatch) -> list:
    """Record what the model is fed (crops as uint8 [B, h, w, 3] plus the call's options); heatmaps are zero.
    """
    calls: list = []

    def fake(crops: torch.Tensor, flip_indices=None, **options) -> torch.Tensor:
        as_uint8 = (crops * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        calls.append((as_uint8, flip_indices, options))
        return torch.zeros(
            len(crops), predictor.metainfo.num_keypoints, crops.shape[2] // 4, crops.shape[3] // 4
        )

    monkeypatch.setattr(predictor.model, "predict_heatmaps", fake)
    return calls


@pytest.fixture(scope="module")
def body(official_dirs: dict[int, Path]) -> PosePredictor:
    return PosePredictor.from_pretrained(official_dirs[17], sdpose_compat=True)


def test_compat_crops_equal_the_official_crops(
    body: PosePredictor, realdata: Path, monkeypatch, mmpose_topdown_affine
):
    calls = _captured_crops(body, monkeypatch)
    mmpose_affine = mmpose_topdown_affine(INPUT)
    for path, boxes in _coco_cases(realdata):
        body(str(path), boxes=[boxes], flip_test=True)
        crops, flip_indices, options = calls.pop()
        assert options.get("official") is True and flip_indices is not None
        image = _official_image(path)
        for crop, box in zip(crops, boxes, strict=True):
            expected, center, scale = _official_crop(image, box)
            assert np.array_equal(crop, expected), f"{path.name} box {box}"
            # mmpose's own TopdownAffine on the BGR image, reordered afterwards, gives the same crop.
            results = mmpose_affine(
                {
                    "img": np.ascontiguousarray(image[:, :, ::-1]),
                    "bbox_center": center[None],
                    "bbox_scale": scale[None],
                    "bbox_rotation": np.zeros(1, np.float32),
                }
            )
            assert np.array_equal(crop, results["img"][:, :, ::-1])


def test_boxes_as_the_official_loader_reads_them():
    # Ground truth: clipped to the last pixel centre (w - 1, h - 1), float64 corners then float32.
    assert official_box_xyxy([-3.5, 10.25, 700.0, 50.0], (640, 480)).tolist() == [0.0, 10.25, 639.0, 60.25]
    # Detections: cast to float32 first and added in float32, never clipped.
    x, y, w, h = 277.1183158543966, 45.699667786163765, 425.09126579259754, 533.5602652943344
    box = official_box_xyxy([x, y, w, h])
    assert box.dtype == np.float32
    assert box.tolist() == [
        np.float32(x),
        np.float32(y),
        np.float32(x) + np.float32(w),
        np.float32(y) + np.float32(h),
    ]
    assert box[2] > 640 and box[3] > 480


def test_demo_preprocessing_crops_and_maps_back_as_the_demo(official_dirs, realdata: Path, monkeypatch):
    predictor = PosePredictor.from_pretrained(official_dirs[17], sdpose_compat=True, crop_mode="stretch")
    path = realdata / "coco" / "000000196141.jpg"
    image = np.asarray(Image.open(path).convert("RGB"))
    boxes = np.array([[100.7, 20.2, 300.9, 460.5], [-20.0, 50.0, 2000.0, 300.0]], dtype=np.float32)
    # Planted heatmaps: one Gaussian per keypoint at known sub-pixel crop positions.
    planted = np.stack([np.linspace(40, 700, 17), np.linspace(60, 950, 17)], axis=-1)  # [17, 2] crop pixels
    heatmaps = torch.from_numpy(
        UDPHeatmap(INPUT, HEATMAP, sigma=6).encode(planted).heatmaps
    )  # [17, 256, 192]
    fed = []

    def fake(crops: torch.Tensor, flip_indices=None, **options) -> torch.Tensor:
        fed.append((crops, options))
        return heatmaps.expand(len(crops), -1, -1, -1).clone()

    monkeypatch.setattr(predictor.model, "predict_heatmaps", fake)
    out = predictor(str(path), boxes=[boxes])
    codec = pytest.importorskip("mmpose.codecs").UDPHeatmap(input_size=INPUT, heatmap_size=HEATMAP, sigma=6)
    decoded, _ = codec.decode(heatmaps.numpy())  # [1, 17, 2] input pixels, float64
    height, width = image.shape[:2]
    regions = []
    for index, box in enumerate(boxes):
        x1, y1, x2, y2 = (int(v) for v in box)  # the demo: integer box, clamped to the image
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
        regions.append((x1, y1, x2 - x1, y2 - y1))
        crop = Image.fromarray(image).crop((x1, y1, x2, y2)).resize(INPUT, Image.BILINEAR)
        fed_crop = (fed[0][0][index] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(fed_crop, np.asarray(crop))
        expected = decoded[0] * np.array([(x2 - x1) / INPUT[0], (y2 - y1) / INPUT[1]]) + np.array([x1, y1])
        np.testing.assert_allclose(out.keypoints[0][index], expected, atol=1e-3)
    assert fed[0][1].get("official") is True
    # The default stretch mode maps the UDP crop pixel through the resize's pixel centres instead.
    default = PosePredictor(predictor.model, predictor.config, crop_mode="stretch")
    shifted = default(str(path), boxes=[boxes[:1]]).keypoints[0][0]
    x1, y1, w, h = regions[0]
    gain = np.array([w / INPUT[0], h / INPUT[1]])
    crop_pixels = decoded[0] * (np.array(INPUT) - 1) / np.array(INPUT)
    np.testing.assert_allclose(shifted, np.array([x1, y1]) + (crop_pixels + 0.5) * gain - 0.5, atol=1e-3)
    assert np.abs(shifted - out.keypoints[0][0]).max() > 0.1


# ---------------------------------------------------------------------------------------------------- decode
# quirks
def test_decode_scaling_and_the_compensating_mapping_back(body: PosePredictor, realdata: Path, monkeypatch):
    """x768/191 and x1024/255 (not 767/1023), undone by `/ input_size * scale`: the exact UDP inverse."""
    heatmaps = torch.zeros(1, 17, HEATMAP[1], HEATMAP[0])
    heatmaps[0, :, 100, 50] = 1.0  # a single positive pixel: no sub-pixel shift (flat log neighbourhood)
    keypoints, _ = decode_udp_batched(heatmaps, INPUT)
    np.testing.assert_allclose(keypoints[0, 0].numpy(), [50 * 768 / 191, 100 * 1024 / 255], rtol=1e-6)
    monkeypatch.setattr(
        body.model,
        "predict_heatmaps",
        lambda crops, flip_indices=None, **_: heatmaps.expand(len(crops), -1, -1, -1).clone(),
    )
    path, boxes = _coco_cases(realdata)[0]
    out = body(str(path), boxes=[boxes[:1]])
    center, scale = _official_center_scale(boxes[0])
    expected, _ = _official_to_image(heatmaps[0].numpy(), center, scale)
    np.testing.assert_allclose(out.keypoints[0][0], expected, atol=1e-4)
    # Heatmap pixel 50 of 0 .. 191 lands at 50/191 of the crop region: the UDP inverse, not 50/192.
    np.testing.assert_allclose(
        out.keypoints[0][0, 0], center + scale * (np.array([50 / 191, 100 / 255]) - 0.5), atol=1e-4
    )


def test_non_positive_maps_decode_to_minus_one():
    heatmaps = torch.zeros(1, 3, 32, 24)
    heatmaps[0, 0] = -torch.rand(32, 24, generator=torch.Generator().manual_seed(0)) - 0.1  # max < 0
    heatmaps[0, 1, 5, 7] = 0.5
    heatmaps[0, 2] = -0.2
    keypoints, scores = decode_udp_batched(heatmaps)
    assert keypoints[0, [0, 2]].tolist() == [[-1.0, -1.0], [-1.0, -1.0]]
    assert scores[0, 0].item() < 0 and scores[0, 2].item() == pytest.approx(-0.2)
    codec = pytest.importorskip("mmpose.codecs").UDPHeatmap(
        input_size=(96, 128), heatmap_size=(24, 32), sigma=2
    )
    official, _ = codec.decode(heatmaps[0].numpy().copy())
    np.testing.assert_allclose(
        keypoints[0].numpy(), official[0] * np.array([23, 31]) / np.array([96, 128]), atol=1e-5
    )
    # An all-zero map (maximum 0) is not positive either; mmpose's own decode turns it into NaN (0 / 0).
    assert decode_udp_batched(torch.zeros(1, 1, 32, 24))[0].tolist() == [[[-1.0, -1.0]]]


def test_compat_decode_is_mmpose_bit_for_bit():
    codecs = pytest.importorskip("mmpose.codecs")
    rng = np.random.default_rng(0)
    size, heatmap = (96, 128), (24, 32)
    peaks = UDPHeatmap(size, heatmap, sigma=2).encode(rng.uniform(5, 90, (6, 2))).heatmaps
    cases = {
        "flat random": rng.standard_normal((6, 32, 24)).astype(np.float32),
        "peaks + noise": peaks + rng.normal(0, 0.01, peaks.shape).astype(np.float32),
        "negative and zero maps": np.concatenate(
            [-np.abs(peaks[:3]) - 0.1, np.zeros_like(peaks[:1]), peaks[:2]]
        ),
    }
    codec = codecs.UDPHeatmap(input_size=size, heatmap_size=heatmap, sigma=2)
    for name, maps in cases.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            expected, expected_scores = codec.decode(maps.copy())
        points, scores = decode_udp_official(maps)
        # Same float32 refinement, then mmpose's float64 scaling to input pixels.
        np.testing.assert_array_equal(
            points / (np.asarray(heatmap) - 1) * np.asarray(size), expected[0], name
        )
        np.testing.assert_array_equal(scores, expected_scores[0], name)
    # A negative map keeps the -1 marker; the all-zero map is NaN in the original too (0 / 0 in its blur).
    points, _ = decode_udp_official(cases["negative and zero maps"])
    assert points[:3].tolist() == [[-1.0, -1.0]] * 3 and np.isnan(points[3]).all()


def test_ties_go_to_the_first_pixel_in_row_major_order():
    heatmaps = torch.zeros(1, 2, 8, 6)
    heatmaps[0, 0, 2, 5] = heatmaps[0, 0, 3, 1] = heatmaps[0, 0, 6, 0] = 2.0  # row 2 comes first
    heatmaps[0, 1, 4, 4] = heatmaps[0, 1, 4, 2] = 1.0  # same row: the smaller x
    coords, values = heatmap_argmax(heatmaps)
    assert coords[0].tolist() == [[5.0, 2.0], [2.0, 4.0]]
    assert values[0].tolist() == [2.0, 1.0]
    points, scores = heatmap_maximum_official(heatmaps[0].numpy())
    assert points.tolist() == [[5.0, 2.0], [2.0, 4.0]] and scores.tolist() == [2.0, 1.0]


def test_maps_below_the_log_clip_get_no_refinement():
    # An off-centre Gaussian whose refinement moves the maximum when it is strong enough ...
    planted = np.array([[10.3, 12.6]])
    peak = torch.from_numpy(UDPHeatmap((96, 128), (24, 32), sigma=2).encode(planted * 95 / 23).heatmaps)[None]
    coords, _ = heatmap_argmax(peak)
    strong = refine_dark_udp_batched(coords, peak)
    assert (strong - coords).abs().max() > 0.2
    # ... stays on its integer pixel once the whole blurred map is under the 1e-3 clip.
    weak = peak * 5e-4
    assert torch.equal(refine_dark_udp_batched(coords, weak), coords)
    codec = pytest.importorskip("mmpose.codecs").UDPHeatmap(
        input_size=(96, 128), heatmap_size=(24, 32), sigma=2
    )
    official, _ = codec.decode(weak[0].numpy())
    np.testing.assert_allclose(
        official[0] * np.array([23, 31]) / np.array([96, 128]), coords[0].numpy(), atol=1e-6
    )


# ---------------------------------------------------------------------------------------------------- end to
# end
@pytest.mark.parametrize("num_keypoints, flip", [(17, True), (133, False)])
def test_compat_predictions_equal_the_official_pipeline(official_dirs, realdata: Path, num_keypoints, flip):
    predictor = PosePredictor.from_pretrained(official_dirs[num_keypoints], sdpose_compat=True)
    cases = _coco_cases(realdata)
    path, boxes = cases[0] if num_keypoints == 17 else cases[1]
    boxes = boxes[:2] if num_keypoints == 17 else boxes[:1]
    torch.manual_seed(123)
    out = predictor(str(path), boxes=[boxes], flip_test=flip)
    image = _official_image(path)
    official = [_official_crop(image, box) for box in boxes]  # (crop, center, scale) per box
    crops = np.stack([crop for crop, _, _ in official])
    frames = [(center, scale) for _, center, scale in official]
    torch.manual_seed(123)
    heatmaps = _official_heatmaps(official_dirs[num_keypoints], predictor, crops, flip)
    for index, (center, scale) in enumerate(frames):
        expected, scores = _official_to_image(heatmaps[index].numpy(), center, scale)
        # The targets: 0.01 px and 2e-4. Measured: 3.7e-5 px / 1.7e-6 (body, the trained tiny model,
        # flip test) and 4.3e-5 px / 0 (whole-body, random head), once the backbone draws its posterior sample
        # as (mean + std * eps) * f and computes the task codes in float32, as the official code does. What
        # remains is float rounding of batch-dependent CPU kernels (~2e-6 on heatmaps peaking at 5).
        np.testing.assert_allclose(out.keypoints[0][index], expected, atol=1e-2, rtol=0)
        np.testing.assert_allclose(out.scores[0][index], scores, atol=2e-4, rtol=0)
