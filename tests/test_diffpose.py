"""DiffPose: shapes, the one-frame path, sampling options, seeds, feature reuse, bad input, export round trip.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import zoo
from zoo.backbones import StableDiffusionBackbone
from zoo.data.posetrack import PoseTrackClipDataset, read_posetrack_annotations
from zoo.data.synthetic.moving_figures import render_moving_video, write_posetrack_videos
from zoo.inference.video_pose import VideoPosePredictor, greedy_iou_tracks, greedy_oks_tracks
from zoo.models.diffpose.model import DiffPose
from zoo.models.diffpose.module import DiffPoseModule
from zoo.registry import REPO_ROOT, get_entry

SIZE = (48, 64)  # (w, h): latent 6x8, tokens 3x4, heatmaps 12x16


@pytest.fixture(scope="module")
def model() -> DiffPose:
    torch.manual_seed(0)
    backbone = StableDiffusionBackbone.from_pretrained("checkpoints/tiny/backbone", with_task_switcher=True)
    return DiffPose(backbone, 17, SIZE, width=16, strl_layers=1).eval()


@pytest.fixture(scope="module")
def clips() -> torch.Tensor:
    return torch.rand(
        2, 3, 3, SIZE[1], SIZE[0], generator=torch.Generator().manual_seed(1)
    )  # [B, T, 3, H, W]


@pytest.fixture(scope="module")
def video() -> tuple[list[np.ndarray], list[np.ndarray]]:
    rendered = render_moving_video(3, num_frames=5, width=128, height=128)
    boxes = [
        np.array([[x, y, x + w, y + h] for x, y, w, h in (p.bbox for p in people)]).reshape(-1, 4)
        for people in rendered.people
    ]
    return rendered.frames, boxes


def test_shapes_and_loss(model: DiffPose, clips: torch.Tensor) -> None:
    with torch.no_grad():
        features = model.encode_clips(clips)
    assert features.shape == (2, 16, 4, 3)  # [B, D, H, W] token grid of 64x48 crops
    assert model.heatmap_size == (12, 16)
    heatmaps = model.sample(features, steps=2, ensemble=2, generator=torch.Generator().manual_seed(0))
    assert heatmaps.shape == (2, 17, 16, 12)
    targets = torch.rand(2, 17, 16, 12)
    loss = model.training_loss(
        features, targets, torch.ones(2, 17), generator=torch.Generator().manual_seed(0)
    )
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_one_frame_path_is_the_key_frame_repeated(model: DiffPose, clips: torch.Tensor) -> None:
    with torch.no_grad():
        single = model.encode_clips(clips[:, 1:2])  # [B, 1, ...]: only the key frame
        repeated = model.encode_clips(clips[:, 1:2].expand(-1, 3, -1, -1, -1))
        temporal = model.encode_clips(clips)
    torch.testing.assert_close(single, repeated)
    assert (single - temporal).abs().max() > 1e-4  # the neighbours change F_t


def test_steps_ensemble_options_and_seeds(model: DiffPose, clips: torch.Tensor) -> None:
    with torch.no_grad():
        features = model.encode_clips(clips)

    def sample(steps: int, ensemble: int, seed: int = 0) -> torch.Tensor:
        return model.sample(features, steps, ensemble, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(sample(2, 4), sample(2, 4))  # deterministic with a seed
    assert not torch.equal(sample(2, 4, seed=0), sample(2, 4, seed=1))
    outputs = [sample(s, e) for s in (1, 2, 4) for e in (1, 4)]
    assert all(o.shape == (2, 17, 16, 12) for o in outputs)
    assert not torch.equal(outputs[0], outputs[2])  # 1 vs 2 steps
    with pytest.raises(ValueError, match="steps and ensemble"):
        sample(0, 1)


def test_bad_clip_shapes(model: DiffPose, clips: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="frames"):
        model.encode_clips(clips[:, :2])
    with pytest.raises(ValueError, match="the model takes"):
        model.encode_clips(torch.rand(1, 3, 3, 64, 64))


def test_greedy_iou_tracks_follow_people() -> None:
    a, b = np.array([0, 0, 10, 20.0]), np.array([30, 0, 40, 20.0])
    frames = [np.stack([a, b]), np.stack([b + 1, a + 1]), np.stack([a + 2, b + 2, [60, 0, 70, 20]])]
    tracks = greedy_iou_tracks(frames)
    assert tracks[0].tolist() == [0, 1] and tracks[1].tolist() == [1, 0] and tracks[2].tolist() == [0, 1, 2]
    poses = [
        np.stack([f[:, :2] + 5, f[:, :2] + 2]).transpose(1, 0, 2).repeat(9, axis=1)[:, :17] for f in frames
    ]
    sigmas = np.full(17, 0.1, dtype=np.float32)
    assert [t.tolist() for t in greedy_oks_tracks(poses, frames, sigmas)] == [t.tolist() for t in tracks]


def test_missing_clip_frame_and_wrong_keypoint_count_name_the_file(tmp_path: Path) -> None:
    ann_dir = write_posetrack_videos(tmp_path, 1, seed=0, split="val", num_frames=4, width=64, height=64)
    ann_file = next(ann_dir.glob("*.json"))
    dataset = PoseTrackClipDataset(ann_dir, tmp_path, input_size=SIZE)
    first = dataset.instances[0].image
    missing = tmp_path / f"images/val/{first.video}/{first.frame_index + 1:06d}.jpg"
    missing.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"{ann_file.name}.*clip frame {first.frame_index + 1} is missing"
    ):
        dataset[0]
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:-3]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(
        ValueError, match=rf"bad.json: annotation {data['annotations'][0]['id']} .* 48 keypoint values"
    ):
        read_posetrack_annotations(bad)


def test_export_round_trip(tmp_path: Path, video: tuple) -> None:
    module = DiffPoseModule(
        input_size=SIZE, sigma=1.0, blur_kernel_size=5, width=16, strl_layers=1, heads=4, steps=2, ensemble=2
    )
    module.export_pretrained(tmp_path / "export")
    predictor = zoo.load(tmp_path / "export")
    assert isinstance(predictor, VideoPosePredictor)
    assert (predictor.steps, predictor.ensemble, predictor.offsets) == (2, 2, (-1, 0, 1))
    for name, tensor in module.model.strl.state_dict().items():
        torch.testing.assert_close(predictor.model.strl.state_dict()[name], tensor)
    frames, boxes = video
    out = predictor(frames, boxes=boxes)
    assert len(out) == len(frames)
    by_pose = predictor(frames, boxes=boxes, track_by="oks")
    assert [len(t) for t in by_pose.track_ids] == [len(b) for b in boxes]
    assert [k.shape for k in out.keypoints] == [(len(b), 17, 2) for b in boxes]
    assert all(len(t) == len(b) for t, b in zip(out.track_ids, boxes, strict=True))
    with pytest.raises(ValueError, match="one \\[N, 4\\] array per frame"):
        predictor(frames, boxes=boxes[:-1])


def test_tiny_registry_model_reuses_features_with_identical_output(video: tuple) -> None:
    entry = get_entry("tiny-diffpose")
    assert Path(entry.checkpoint_path(), "zoo_model.json").is_file()
    size = sum(f.stat().st_size for f in Path(entry.checkpoint_path()).rglob("*") if f.is_file())
    assert size <= 10 * 2**20
    predictor = zoo.load("tiny-diffpose")
    frames, boxes = video
    reused = predictor(frames, boxes=boxes, steps=2, ensemble=2, seed=3)
    recomputed = predictor(frames, boxes=boxes, steps=2, ensemble=2, seed=3, reuse_features=False)
    persons = sum(len(b) for b in boxes)
    assert recomputed.backbone_crops == 3 * persons and reused.backbone_crops < recomputed.backbone_crops
    # Same output up to float noise from the batch composition (1e-4 on the scores). Keypoints are compared
    # where the heatmap has a peak: the ear slots (3, 4) are never annotated in PoseTrack, so their maps are
    # untrained and flat, and on a weak map (maximum under 0.2; the median is 0.39) DARK's near-zero Hessian
    # turns that noise into 0.01 px (measured: 0.0116 px at score 0.094, 2.3e-4 px at most elsewhere).
    annotated = np.isin(np.arange(17), (3, 4), invert=True)
    compared = 0
    for a, b, score in zip(reused.keypoints, recomputed.keypoints, recomputed.scores, strict=True):
        peaked = annotated & (score >= 0.2)  # [N, K]
        np.testing.assert_allclose(a[peaked], b[peaked], atol=1e-3)
        compared += peaked.sum()
    assert compared >= 0.6 * persons * 17
    for a, b in zip(reused.scores, recomputed.scores, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    again = predictor(frames, boxes=boxes, steps=2, ensemble=2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(reused.keypoints, again.keypoints, strict=True))


def test_video_folder_and_benchmark_dry_run(
    tmp_path: Path, video: tuple, capsys: pytest.CaptureFixture
) -> None:
    frames, _ = video
    folder = tmp_path / "frames"
    folder.mkdir()
    from PIL import Image

    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{index:06d}.png")
    out = zoo.load("tiny-diffpose")(folder, steps=1, ensemble=1)  # whole-frame boxes: one person per frame
    assert out.backbone_crops == len(frames) and all(t.tolist() == [0] for t in out.track_ids)
    shutil.rmtree(folder)
    from zoo.benchmarks import diffpose

    results = diffpose.run(dry_run=True)
    assert results["backbone_crops_reuse"] < results["backbone_crops_recompute"]
    assert "persons/s" in capsys.readouterr().out


def test_video_annotator_writes_posetrack_json_overlays_controlnet_and_resumes(
    tmp_path: Path, video: tuple
) -> None:
    from zoo.evaluation.posetrack import poseval_frames
    from zoo.inference.annotate.video import VideoAnnotator, write_mp4

    frames, _ = video
    write_mp4(tmp_path / "clip.mp4", frames, fps=5)
    annotator = VideoAnnotator(
        zoo.load("tiny-diffpose"), tmp_path / "out", controlnet=True, steps=1, ensemble=1
    )
    summary = annotator.run([tmp_path / "clip.mp4", tmp_path / "absent.mp4"])
    assert summary.done == ["clip"] and "absent.mp4" in summary.failures[0]["reason"]
    folder = tmp_path / "out" / "clip"
    data = json.loads((folder / "posetrack.json").read_text())
    assert len(poseval_frames(data, folder / "posetrack.json", ground_truth=False)) == len(frames)
    assert len(list((folder / "overlay").glob("*.png"))) == len(frames) and (folder / "overlay.mp4").is_file()
    assert len(list((folder / "controlnet").glob("*.json"))) == len(frames)
    stamp = (folder / "posetrack.json").stat().st_mtime_ns
    assert annotator.run([tmp_path / "clip.mp4"]).skipped == ["clip"]
    assert (folder / "posetrack.json").stat().st_mtime_ns == stamp


def test_single_frame_training_clips_are_the_one_frame_path() -> None:
    module = DiffPoseModule(input_size=SIZE, width=16, strl_layers=1, heads=4, single_frame_prob=1.0)
    frames = torch.rand(2, 3, 3, SIZE[1], SIZE[0], generator=torch.Generator().manual_seed(2))
    batch = {
        "frames": frames,
        "keypoints": torch.rand(2, 17, 2) * torch.tensor(SIZE),
        "keypoints_visible": torch.ones(2, 17),
    }
    module.log = lambda *args, **kwargs: None  # no trainer attached
    torch.manual_seed(0)
    single = module.training_step(batch, 0)
    torch.manual_seed(0)
    key_only = module.training_step({**batch, "frames": frames[:, 1:2].expand(-1, 3, -1, -1, -1)}, 0)
    torch.testing.assert_close(single, key_only)
    module.hparams.single_frame_prob = 0.0
    torch.manual_seed(0)
    assert not torch.equal(module.training_step(batch, 0), single)  # the neighbours count again


def heldout_map(root: Path, videos: int, render: dict, **call) -> dict[str, float]:
    """PoseTrack mAP of the shipped tiny model on the first `videos` held-out test videos of its recipe (GT
    boxes and track ids, each clip cropped with its key frame's box as the datamodule does): with its
    neighbours (T3) and given only the key frame (T1)."""
    from zoo.data.datamodule import TEST_SEED
    from zoo.evaluation.posetrack import evaluate_posetrack_folders

    ann = write_posetrack_videos(root / "data", videos, TEST_SEED, "test", 12, 128, 128, **render)
    predictor = zoo.load("tiny-diffpose")
    results = {}
    for name, temporal in (("T3", True), ("T1", False)):
        (root / name).mkdir()
        for gt_file in sorted(ann.glob("*.json")):
            gt = json.loads(gt_file.read_text())
            people = {image["id"]: [] for image in gt["images"]}
            for annotation in gt["annotations"]:
                people[annotation["image_id"]].append(annotation)
            per_frame = [people[image["id"]] for image in gt["images"]]
            boxes = [
                np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in ps)]).reshape(-1, 4)
                for ps in per_frame
            ]
            out = predictor(
                [root / "data" / image["file_name"] for image in gt["images"]],
                boxes=boxes,
                track_ids=[[a["track_id"] for a in ps] for ps in per_frame],
                box_window=1,
                temporal=temporal,
                **call,
            )
            for t, ps in enumerate(per_frame):
                for person, annotation in enumerate(ps):
                    annotation["keypoints"] = [float(v) for xy in out.keypoints[t][person] for v in (*xy, 1)]
                    annotation["scores"] = [float(s) for s in out.scores[t][person]]
            (root / name / gt_file.name).write_text(json.dumps(gt))
        results[name] = evaluate_posetrack_folders(ann, root / name).total
    return results


# The shipped model's recorded margins (checkpoints/tiny/diffpose/metrics.json: 30 held-out videos, T3 36.1 vs
# T1 33.5) and the one re-measured here on the first 6 of those videos (36.8 vs 35.8).
RECORDED_TEMPORAL_GAIN = 2.5
HELDOUT_TEMPORAL_GAIN = 0.5


def test_shipped_tiny_model_beats_its_one_frame_baseline_and_its_ensemble_helps(tmp_path: Path) -> None:
    entry = get_entry("tiny-diffpose")
    metrics = json.loads(Path(entry.checkpoint_path(), "metrics.json").read_text())
    assert metrics["mAP"] == metrics["mAP_s1_e4"]  # the default sampling is 1 step x ensemble 4
    assert metrics["mAP"] - metrics["mAP_T1"] >= RECORDED_TEMPORAL_GAIN
    for steps in (1, 2, 4):  # more ensemble members do not lower mAP
        assert metrics[f"mAP_s{steps}_e4"] >= metrics[f"mAP_s{steps}_e1"]
    # Re-measured with the predictor (the same weights given the neighbours or only the key frame): fails when
    # the temporal path stops helping, e.g. a model trained on clips whose key frame alone suffices.
    render = yaml.safe_load((REPO_ROOT / entry.config).read_text())["data"]["init_args"]["render"]
    measured = heldout_map(tmp_path, 6, render, steps=1, ensemble=4)
    assert measured["T3"] - measured["T1"] >= HELDOUT_TEMPORAL_GAIN, measured


def test_strip_recipe_draws_the_models_skeletons_on_held_out_frames(tmp_path: Path) -> None:
    """zoo.recipes.diffpose_strip (docs/diffpose_strip.png): the frames it names, skeletons drawn on them."""
    from PIL import Image

    from zoo.recipes import diffpose_strip
    from zoo.visualize import image_grid

    out = diffpose_strip.main(["--out", str(tmp_path / "strip.png")])
    picture = np.asarray(Image.open(out))
    video = diffpose_strip.held_out_video()
    bare = image_grid([video.frames[i] for i in diffpose_strip.FRAMES], columns=len(diffpose_strip.FRAMES))
    assert picture.shape == bare.shape
    # Most pixels are the frames themselves; the skeletons change a visible share of them.
    changed = np.abs(picture.astype(int) - bare.astype(int)).max(-1) > 0
    assert 0.01 < changed.mean() < 0.5
