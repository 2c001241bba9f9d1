"""PoseTrack data: metainfo, both layouts of the real sample, clips, video frames, bad input, synthetic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoo.data.metainfo import load_metainfo
from zoo.data.posetrack import (
    PoseTrackClipDataset,
    clip_frame_indices,
    read_posetrack_annotations,
)
from zoo.data.samples import check_item
from zoo.data.synthetic.moving_figures import posetrack_category, render_moving_video, write_posetrack_videos
from zoo.data.transforms import TopDownAugmentation, keypoints_to_image, warp_image
from zoo.data.video import FolderFrames, Mp4Frames, VideoDecodeError, open_video
from zoo.evaluation.posetrack import POSEVAL_JOINTS, POSEVAL_KEYPOINTS, evaluate_posetrack_folders

REAL = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "posetrack18"
REAL_VAL = REAL / "annotations" / "val"
MERGED = REAL / "annotations" / "test_posetrack18_val.json"
DETECTIONS = REAL / "annotations" / "test_posetrack18_human_detections.json"
VIDEO = REAL / "videos" / "000001_mpiinew_test"


def test_metainfo_is_the_17_slot_posetrack_order_with_poseval_ids():
    meta = load_metainfo("posetrack18")
    assert (
        load_metainfo("PoseTrack21").keypoint_names
        == load_metainfo("posetrack").keypoint_names
        == meta.keypoint_names
    )
    assert meta.keypoint_names[:5] == ("nose", "head_bottom", "head_top", "left_ear", "right_ear")
    assert meta.keypoint_names[5:] == load_metainfo("coco").keypoint_names[5:]
    # head_bottom / head_top are on the body's axis: a flip keeps them in place.
    assert meta.flip_indices[1] == 1 and meta.flip_indices[2] == 2
    assert meta.flip_pairs == ((3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
    assert POSEVAL_JOINTS[0] == "right_ankle" and POSEVAL_JOINTS[12:] == ("neck", "nose", "head_top")
    assert POSEVAL_KEYPOINTS[12] == "head_bottom"
    assert sorted(meta.keypoint_id(name) for name in POSEVAL_KEYPOINTS) == [0, 1, 2, *range(5, 17)]


def test_both_layouts_load_every_frame_and_person_of_the_real_sample():
    per_video = [read_posetrack_annotations(path) for path in sorted(REAL_VAL.glob("*.json"))]
    merged = read_posetrack_annotations(MERGED)
    assert sum(len(a.images) for a in per_video) == len(merged.images) == 3
    people = {p.annotation_id for a in per_video for ps in a.persons.values() for p in ps}
    assert people == {p.annotation_id for ps in merged.persons.values() for p in ps}
    assert len(people) == 14
    image = per_video[0].images[0]
    assert image.video == "003418_mpii_test" and image.frame_index == 0 and image.num_frames == 149
    assert len(image.ignore_regions) == 9 and image.ignore_regions[0].shape[1] == 2
    for layout in (REAL_VAL, MERGED):
        dataset = PoseTrackClipDataset(layout, REAL, offsets=(0,))
        assert len(dataset) == 14
        for item in dataset:
            instance = dataset.instances[item["sample_id"]]
            visible = instance.keypoints_visible > 0
            back = keypoints_to_image(item["keypoints"].numpy(), item["warp_matrix"].numpy())
            np.testing.assert_allclose(back[visible], instance.keypoints[visible], atol=1e-3)
            assert (
                item["frames"].shape == (1, 3, 256, 192)
                and 0 <= item["frames"].min() <= item["frames"].max() <= 1
            )


def test_detection_boxes_above_the_threshold():
    detections = json.loads(DETECTIONS.read_text())
    dataset = PoseTrackClipDataset(MERGED, REAL, offsets=(0,), bbox_file=DETECTIONS)
    assert len(dataset) == sum(d["score"] >= 0.2 for d in detections)
    assert min(instance.bbox_score for instance in dataset.instances) >= 0.2
    item = dataset[0]
    assert item["bbox_score"] == dataset.instances[0].bbox_score and item["track_id"] == -1


def _video_annotations(tmp_path: Path, keypoints: list[float] | None = None, head: bool = True) -> Path:
    """A per-video file for the real 5-frame video: every frame listed, the first and last labelled."""
    root = tmp_path / "root"
    shutil.copytree(VIDEO, root / "images" / "val" / VIDEO.name, dirs_exist_ok=True)
    images, annotations = [], []
    for t in range(5):
        image_id = 30000010000 + t
        images.append(
            {
                "id": image_id,
                "file_name": f"images/val/{VIDEO.name}/{t:06d}.jpg",
                "nframes": 5,
                "is_labeled": t in (0, 4),
                "width": 1280,
                "height": 720,
            }
        )
        if t in (0, 4):
            kpts = keypoints or [
                600.0 + 5 * k if k % 3 == 0 else (300.0 + 7 * k if k % 3 == 1 else 1.0) for k in range(51)
            ]
            ann = {
                "id": image_id * 100,
                "image_id": image_id,
                "track_id": 0,
                "bbox": [500, 250, 300, 400],
                "keypoints": kpts,
            }
            if head:
                ann["bbox_head"] = [600, 260, 60, 70]
            annotations.append(ann)
    path = tmp_path / f"{VIDEO.name}.json"
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": [posetrack_category()]})
    )
    return path


def test_clip_frames_repeat_the_nearest_frame_past_the_ends():
    assert clip_frame_indices(0, 5, (-1, 0, 1)) == [0, 0, 1]
    assert clip_frame_indices(4, 5, (-2, -1, 0, 1, 2)) == [2, 3, 4, 4, 4]


def test_every_frame_of_a_clip_is_cropped_with_the_same_box(tmp_path):
    ann = _video_annotations(tmp_path)
    plain = TopDownAugmentation(photometric=False, blur_prob=0.0, median_blur_prob=0.0, dropout_prob=0.0)
    for augmentation in (None, plain):
        dataset = PoseTrackClipDataset(
            ann, tmp_path / "root", offsets=(-1, 0, 1), augmentation=augmentation, seed=3
        )
        assert len(dataset) == 2  # the labelled frames 0 and 4
        last = dataset[1]
        assert last["frame_indices"].tolist() == [3, 4, 4] and last["frame_index"] == 4
        check_item("clip", last, "posetrack clip")
        assert last["key_index"] == 1
        frames = FolderFrames(tmp_path / "root" / "images" / "val" / VIDEO.name)
        matrix = last["warp_matrix"].numpy()
        for position, index in enumerate(last["frame_indices"].tolist()):
            # Each crop is its frame warped by the clip's one matrix: one box for the whole clip.
            expected = warp_image(frames.read(index), matrix, (192, 256)).transpose(2, 0, 1) / 255.0
            np.testing.assert_allclose(last["frames"][position].numpy(), expected, atol=1e-6)
        assert not np.array_equal(last["frames"][0].numpy(), last["frames"][1].numpy())


def test_one_augmentation_draw_per_clip(tmp_path):
    ann = _video_annotations(tmp_path)
    dataset = PoseTrackClipDataset(
        ann, tmp_path / "root", offsets=(0, 0, 0), augmentation=TopDownAugmentation(), seed=0
    )
    draws = [dataset[0] for _ in range(2)] + [dataset[1]]
    for item in draws:  # three copies of the same frame: the same flip, jitter, colours and dropout hole
        assert np.array_equal(item["frames"][0].numpy(), item["frames"][1].numpy())
        assert np.array_equal(item["frames"][0].numpy(), item["frames"][2].numpy())
    assert np.array_equal(draws[0]["frames"].numpy(), draws[1]["frames"].numpy())  # seeded
    dataset.set_epoch(1)
    assert not np.array_equal(dataset[0]["warp_matrix"].numpy(), draws[0]["warp_matrix"].numpy())


def test_frames_from_the_mp4_match_the_jpeg_frames(tmp_path):
    ann = _video_annotations(tmp_path)
    files = PoseTrackClipDataset(ann, tmp_path / "root")[1]
    video = PoseTrackClipDataset(ann, tmp_path / "root", frame_source="video")[1]
    assert video["frames"].shape == files["frames"].shape == (3, 3, 256, 192)
    difference = (video["frames"] - files["frames"]).abs().mean().item()
    assert difference < 0.03  # mp4 compression only; another frame differs far more
    mp4 = Mp4Frames(VIDEO / f"{VIDEO.name}.mp4")
    assert len(mp4) == 5 and mp4.read(4).shape == (720, 1280, 3)
    assert isinstance(open_video(VIDEO), FolderFrames)


def test_bad_video_and_missing_frames_name_the_file_and_record(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 10)
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        open_video(broken)
    # The real sample has only the key frames on disk: the neighbours of a 3-frame clip are missing.
    dataset = PoseTrackClipDataset(REAL_VAL, REAL)
    with pytest.raises(
        FileNotFoundError, match=r"003418_mpii_test\.json: annotation 1003418000000 .*000001\.jpg"
    ):
        dataset[0]


def test_bad_annotations_name_the_file_and_record(tmp_path):
    short = _video_annotations(tmp_path, keypoints=[1.0] * 48)
    with pytest.raises(
        ValueError, match=r"000001_mpiinew_test\.json: annotation 3000001000000 .*48 keypoint values"
    ):
        PoseTrackClipDataset(short, tmp_path / "root")
    headless = _video_annotations(tmp_path, head=False)
    with pytest.raises(ValueError, match=r"000001_mpiinew_test\.json: annotation 3000001000000 .*bbox_head"):
        read_posetrack_annotations(headless)
    data = json.loads(MERGED.read_text())
    data["images"][0]["file_name"] = "../../outside/000000.jpg"
    escaping = tmp_path / "escaping.json"
    escaping.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="escapes the image root"):
        PoseTrackClipDataset(escaping, REAL, offsets=(0,))


def test_synthetic_moving_figures_are_deterministic_and_in_the_posetrack_layout(tmp_path):
    first = write_posetrack_videos(tmp_path / "a", 2, seed=5, num_frames=5, width=96, height=96)
    second = write_posetrack_videos(tmp_path / "b", 2, seed=5, num_frames=5, width=96, height=96)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 2 * 5 + 2
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    # Ground truth as prediction is 100 for poseval, and the clip reader takes the files as they are.
    assert evaluate_posetrack_folders(first, second).total == 100.0
    dataset = PoseTrackClipDataset(first, tmp_path / "a", input_size=(48, 64))
    assert len(dataset) > 0 and dataset[0]["frames"].shape == (3, 3, 64, 48)


def test_synthetic_videos_move_smoothly_and_are_corrupted():
    video = render_moving_video(11, num_frames=24, width=96, height=96, max_people=1, drop_prob=0.2)
    tracks = [people[0].keypoints[:, :2] for people in video.people if people]
    steps = [np.abs(b - a).max() for a, b in zip(tracks, tracks[1:], strict=False)]
    assert 0 < np.median(steps) < 0.2 * 96  # moving, but smoothly
    assert any(video.occluded) and any(video.blurred) and any(video.dropped)
    for t, dropped in enumerate(video.dropped):
        if dropped:  # a dropped frame repeats the previous picture
            assert np.array_equal(video.frames[t], video.frames[t - 1])
    assert video.people[0][0].keypoints[3:5].sum() == 0  # ears are never annotated


def test_posetrack21_files_with_person_ids_and_box_only_persons(tmp_path):
    """PoseTrack21 adds person_id / has_labeled_person and box-only persons (no keypoints, no head box)."""
    data = json.loads((REAL_VAL / "009473_mpii_test.json").read_text())
    for image in data["images"]:
        image["has_labeled_person"] = True
    for number, ann in enumerate(data["annotations"]):
        ann["person_id"] = 1000 + number
    data["annotations"].append(
        {
            "id": 1009473000099,
            "image_id": data["images"][0]["id"],
            "track_id": 7,
            "person_id": 2000,
            "bbox": [10, 10, 30, 60],
            "category_id": 1,
        }
    )
    path = tmp_path / "009473_mpii_test.json"
    path.write_text(json.dumps(data))
    annotations = read_posetrack_annotations(path)
    people = annotations.persons[data["images"][0]["id"]]
    assert [p.person_id for p in people] == [1000, 1001, 2000] and people[2].num_labelled == 0
    dataset = PoseTrackClipDataset(path, REAL, offsets=(0,), metainfo="posetrack21")
    assert len(dataset) == 2  # the box-only person has nothing to learn from
    pred = tmp_path / "pred"
    pred.mkdir()
    shutil.copy(path, pred / path.name)
    gt = tmp_path / "gt"
    gt.mkdir()
    shutil.copy(path, gt / path.name)
    assert evaluate_posetrack_folders(gt, pred).total == 100.0


def test_undecodable_clip_frames_name_the_record_and_the_file(tmp_path):
    ann = _video_annotations(tmp_path)
    folder = tmp_path / "root" / "images" / "val" / VIDEO.name
    (folder / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"annotation 3000001000400 .*000003\.jpg"):
        PoseTrackClipDataset(ann, tmp_path / "root")[1]  # the clip of frame 4 holds frame 3
    (folder / f"{VIDEO.name}.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(VideoDecodeError, match=r"annotation 3000001000000 .*000001_mpiinew_test\.mp4"):
        PoseTrackClipDataset(ann, tmp_path / "root", frame_source="video")[0]


def test_large_occluders_hide_body_parts_of_the_key_frame_but_rarely_of_both_neighbours():
    """The tiny recipe's render options: an occluded key frame alone is ambiguous, a neighbour often clean."""
    hidden_counts, clean_neighbour = [], []
    for seed in range(6):
        video = render_moving_video(seed, 12, 128, 128, occlusion_prob=0.5, occluder_size=0.2)
        assert len(video.occluders) == 12 and video.occluded == [bool(p) for p in video.occluders]
        for t in range(1, 11):
            for track, x1, y1, x2, y2 in video.occluders[t]:
                person = next((p for p in video.people[t] if p.track_id == track), None)
                if person is None or video.dropped[t]:
                    continue
                xy = person.keypoints[5:, :2]  # the body joints (the patch is centred on one of them)
                hidden_counts.append(int(((xy >= (x1, y1)) & (xy < (x2, y2))).all(axis=1).sum()))
                neighbours = [{o[0] for o in video.occluders[t + d]} for d in (-1, 1)]
                clean_neighbour.append(any(track not in n for n in neighbours))
    assert len(hidden_counts) >= 40
    assert np.mean(hidden_counts) >= 2.0  # a body part, not a single joint
    assert np.mean(clean_neighbour) > 0.6
    # The generator's default patch (0.12) hides about one joint: too little for context to matter.
    small = render_moving_video(0, 12, 128, 128, occlusion_prob=1.0)
    counts = [
        int(((p.keypoints[5:, :2] >= (x1, y1)) & (p.keypoints[5:, :2] < (x2, y2))).all(axis=1).sum())
        for t in range(12)
        for track, x1, y1, x2, y2 in small.occluders[t]
        for p in small.people[t]
        if p.track_id == track
    ]
    assert counts and np.mean(counts) < np.mean(hidden_counts)
