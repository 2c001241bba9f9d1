"""Top-down transforms: box -> centre/scale, UDP affine, flips, round trips, augmentation and the clean crop.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from zoo.data.transforms import (
    CropGeometry,
    TopDownAugmentation,
    TopDownTransform,
    bbox_xyxy_to_center_scale,
    decoded_to_crop,
    fix_aspect_ratio,
    flip_keypoints,
    keypoints_to_image,
    transform_points,
    udp_warp_matrix,
    warp_image,
)

COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]

# Only one random step at a time, so a test can predict the geometry.
NO_AUG = TopDownAugmentation(
    flip_prob=0.0,
    half_body_prob=0.0,
    shift_prob=0.0,
    scale_prob=0.0,
    rotate_prob=0.0,
    photometric=False,
    blur_prob=0.0,
    median_blur_prob=0.0,
    dropout_prob=0.0,
)


def _image(height: int = 120, width: int = 160, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_box_padding_and_aspect_fix() -> None:
    center, scale = bbox_xyxy_to_center_scale(np.array([10.0, 20.0, 110.0, 220.0]))
    np.testing.assert_allclose(center, [60.0, 120.0])
    np.testing.assert_allclose(scale, [125.0, 250.0])  # padding 1.25
    # Tall box: widen to w/h = 0.75; wide box: heighten. Never shrink.
    np.testing.assert_allclose(fix_aspect_ratio(scale, 192 / 256), [187.5, 250.0])
    np.testing.assert_allclose(fix_aspect_ratio(np.array([375.0, 125.0]), 0.75), [375.0, 500.0])


def test_udp_matrix_maps_box_edges_to_pixel_centres() -> None:
    matrix = udp_warp_matrix((100.0, 50.0), (30.0, 40.0), 0.0, (192, 256))
    corners = transform_points(np.array([[85.0, 30.0], [115.0, 70.0], [100.0, 50.0]]), matrix)
    np.testing.assert_allclose(corners, [[0.0, 0.0], [191.0, 255.0], [95.5, 127.5]], atol=1e-9)


@pytest.mark.mmpose
def test_udp_matrix_equals_mmpose() -> None:
    bbox = pytest.importorskip("mmpose.structures.bbox")
    for center, scale, rotation, size in [
        ((100.0, 50.0), (80.0, 120.0), 0.0, (192, 256)),
        ((320.5, 211.25), (300.0, 400.0), 33.0, (768, 1024)),
        ((10.0, 20.0), (5.0, 9.0), -70.0, (48, 64)),
    ]:
        expected = bbox.get_udp_warp_matrix(np.array(center), np.array(scale), rotation, output_size=size)
        np.testing.assert_allclose(
            udp_warp_matrix(center, scale, rotation, size), expected, rtol=1e-6, atol=1e-4
        )


def test_flip_twice_is_identity_and_swaps_sides() -> None:
    rng = np.random.default_rng(0)
    keypoints = rng.uniform(0, 200, size=(17, 2))
    visible = (rng.random(17) > 0.3).astype(np.float32)
    flipped, flipped_visible = flip_keypoints(keypoints, visible, 201, COCO_FLIP)
    # Left wrist (9) takes the mirrored right wrist (10): x -> W - 1 - x as mmpose's RandomFlip.
    np.testing.assert_allclose(flipped[9], [200 - keypoints[10, 0], keypoints[10, 1]])
    assert flipped_visible[9] == visible[10] and flipped_visible[0] == visible[0]
    again, again_visible = flip_keypoints(flipped, flipped_visible, 201, COCO_FLIP)
    np.testing.assert_allclose(again, keypoints, atol=1e-12)
    np.testing.assert_array_equal(again_visible, visible)


@pytest.mark.mmpose
def test_flip_equals_mmpose() -> None:
    keypoint_ops = pytest.importorskip("mmpose.structures.keypoint")
    keypoints = np.random.default_rng(1).uniform(0, 300, size=(1, 17, 2))
    visible = np.ones((1, 17))
    expected, _ = keypoint_ops.flip_keypoints(keypoints.copy(), visible, (320, 240), COCO_FLIP)
    np.testing.assert_allclose(flip_keypoints(keypoints, visible, 320, COCO_FLIP)[0], expected)


def test_crop_round_trip_within_1e3_px() -> None:
    rng = np.random.default_rng(2)
    points = rng.uniform(0, 1000, size=(5, 17, 2))
    matrices, flips = [], []
    for i in range(5):
        geometry = CropGeometry(
            center=tuple(rng.uniform(100, 900, 2)),
            scale=tuple(rng.uniform(50, 800, 2)),
            rotation=float(rng.uniform(-80, 80)),
            input_size=(768, 1024),
            flip=bool(i % 2),
            image_width=1000,
        )
        np.testing.assert_allclose(geometry.to_image(geometry.to_crop(points[i])), points[i], atol=1e-3)
        matrices.append(geometry.matrix())
        flips.append(geometry.flip)
    # Batched inverse of dataset samples: flipped samples also get their ids swapped back.
    crop = transform_points(points, np.stack(matrices))  # [5, 17, 2]
    crop[1::2] = crop[1::2][:, COCO_FLIP]  # what the transform returns for flipped samples
    back = keypoints_to_image(crop, np.stack(matrices), np.array(flips), COCO_FLIP)
    np.testing.assert_allclose(back, points, atol=1e-3)
    with pytest.raises(ValueError, match="flip_indices"):
        keypoints_to_image(crop, np.stack(matrices), np.array(flips))


def test_decoded_keypoints_map_back_like_mmpose() -> None:
    # mmpose's TopdownPoseEstimator.add_pred_to_datasample: kpt / input_size * scale + center - scale / 2.
    center, scale, size = np.array([300.0, 200.0]), np.array([150.0, 200.0]), (192, 256)
    decoded = np.random.default_rng(11).uniform(0, 192, size=(2, 17, 2))
    expected = decoded / np.array(size) * scale + center - 0.5 * scale
    matrix = udp_warp_matrix(center, scale, 0.0, size)
    np.testing.assert_allclose(
        keypoints_to_image(decoded_to_crop(decoded, size), matrix), expected, atol=1e-6
    )


@pytest.mark.mmpose
def test_flip_in_one_warp_equals_mmpose_flip_then_affine(mmpose_topdown_affine) -> None:
    keypoint_ops = pytest.importorskip("mmpose.structures.keypoint")
    # A smooth image: OpenCV 4 quantises sampling positions to 1/32 px, so one composed warp and
    # flip-then-warp differ by a sub-pixel shift whose effect on pixel values is bounded by the image
    # gradient.
    image = cv2.GaussianBlur(_image(), (0, 0), 3)
    bbox = np.array([30.0, 10.0, 90.0, 100.0])
    keypoints = np.random.default_rng(3).uniform(20, 100, size=(17, 2))
    visible = np.ones(17, dtype=np.float32)
    transform = TopDownTransform(
        (48, 64), augmentation=dataclasses.replace(NO_AUG, flip_prob=1.0), flip_indices=COCO_FLIP
    )
    out = transform(image, bbox, keypoints, visible, np.random.default_rng(0))
    assert out["geometry"].flip
    # mmpose: GetBBoxCenterScale -> RandomFlip (image, centre, keypoints) -> TopdownAffine(use_udp=True).
    center, scale = bbox_xyxy_to_center_scale(bbox)
    mm_keypoints, _ = keypoint_ops.flip_keypoints(
        keypoints[None].copy(), visible[None], (160, 120), COCO_FLIP
    )
    results = mmpose_topdown_affine((48, 64))(
        {
            "img": np.ascontiguousarray(image[:, ::-1]),
            "bbox_center": np.array([[159 - center[0], center[1]]]),
            "bbox_scale": scale[None],
            "keypoints": mm_keypoints.astype(np.float32),
        }
    )
    np.testing.assert_allclose(out["keypoints"], results["transformed_keypoints"][0], atol=1e-3)
    diff = np.abs(out["image"].astype(int) - results["img"].astype(int))
    assert diff.max() <= 1  # one resampling vs flip + resampling: rounding only


@pytest.mark.parametrize("seed", range(6))
def test_augmented_keypoints_follow_the_image(seed: int) -> None:
    # A bright dot at the keypoint must land where the transformed keypoint says, whatever the random
    # geometry.
    image = np.zeros((200, 240, 3), dtype=np.uint8)
    keypoint = np.array([[150.0, 80.0]])
    image[78:83, 148:153] = 255
    augmentation = dataclasses.replace(
        NO_AUG, flip_prob=0.5, shift_prob=1.0, scale_prob=1.0, rotate_prob=1.0, scale_range=(0.8, 1.2)
    )
    transform = TopDownTransform((96, 128), augmentation=augmentation, flip_indices=[0])
    out = transform(
        image, np.array([100.0, 40.0, 200.0, 160.0]), keypoint, np.ones(1), np.random.default_rng(seed)
    )
    weights = out["image"][..., 0].astype(float)
    ys, xs = np.nonzero(weights)
    centroid = np.array([(xs * weights[ys, xs]).sum(), (ys * weights[ys, xs]).sum()]) / weights.sum()
    np.testing.assert_allclose(centroid, out["keypoints"][0], atol=0.5)


def test_clean_crop_is_taken_before_corruption() -> None:
    image = _image(seed=4)
    bbox = np.array([20.0, 15.0, 120.0, 110.0])
    keypoints = np.random.default_rng(5).uniform(20, 110, size=(17, 2))
    augmentation = dataclasses.replace(NO_AUG, rotate_prob=1.0, blur_prob=1.0, dropout_prob=1.0)
    transform = TopDownTransform((48, 64), augmentation=augmentation, flip_indices=COCO_FLIP)
    out = transform(image, bbox, keypoints, np.ones(17), np.random.default_rng(6))
    plain = warp_image(image, out["geometry"].matrix(), (48, 64))
    np.testing.assert_array_equal(out["clean_image"], plain)  # exactly the crop without corruption
    assert (out["image"] != out["clean_image"]).any(axis=2).mean() > 0.2  # blurred, with a black hole
    # The hole is black where the clean crop is not (the rotation's zero border is black in both).
    hole = (out["image"] == 0).all(axis=2) & (out["clean_image"] != 0).any(axis=2)
    assert 0.2 * 0.2 * 0.9 <= hole.mean() <= 0.4 * 0.4 * 1.1  # one hole of 20-40 % of each side


def test_photometric_changes_the_clean_crop_but_not_geometry() -> None:
    image = _image(seed=7)
    bbox = np.array([20.0, 15.0, 120.0, 110.0])
    keypoints = np.random.default_rng(8).uniform(20, 110, size=(17, 2))
    plain = TopDownTransform((48, 64))(image, bbox, keypoints, np.ones(17))
    assert np.array_equal(plain["image"], plain["clean_image"])  # evaluation: no appearance change
    augmentation = dataclasses.replace(NO_AUG, photometric=True)
    transform = TopDownTransform((48, 64), augmentation=augmentation, flip_indices=COCO_FLIP)
    outs = [transform(image, bbox, keypoints, np.ones(17), np.random.default_rng(s)) for s in range(4)]
    assert any(not np.array_equal(o["clean_image"], plain["image"]) for o in outs)
    for out in outs:
        np.testing.assert_allclose(out["keypoints"], plain["keypoints"])
        np.testing.assert_array_equal(out["image"], out["clean_image"])  # no corruption configured


def test_augmentation_is_deterministic_given_the_rng() -> None:
    image = _image(seed=9)
    bbox = np.array([20.0, 15.0, 120.0, 110.0])
    keypoints = np.random.default_rng(10).uniform(20, 110, size=(17, 2))
    transform = TopDownTransform(
        (48, 64),
        augmentation=TopDownAugmentation(),
        flip_indices=COCO_FLIP,
        upper_body_ids=range(11),
        lower_body_ids=range(11, 17),
    )
    first, second, other = (
        transform(image, bbox, keypoints, np.ones(17), np.random.default_rng(s)) for s in (1, 1, 2)
    )
    for key in ("image", "clean_image", "keypoints"):
        np.testing.assert_array_equal(first[key], second[key])
    assert first["geometry"] == second["geometry"] != other["geometry"]


def test_half_body_crops_around_the_chosen_half() -> None:
    keypoints = np.stack(
        [np.full(17, 100.0), np.linspace(10.0, 190.0, 17)], axis=1
    )  # head at top, feet at bottom
    augmentation = dataclasses.replace(NO_AUG, half_body_prob=1.0, half_body_upper_prob=1.0)
    transform = TopDownTransform(
        (48, 64), augmentation=augmentation, upper_body_ids=range(11), lower_body_ids=range(11, 17)
    )
    geometry, _, _ = transform.geometry(
        np.array([50.0, 0.0, 150.0, 200.0]), 200, keypoints, np.ones(17), np.random.default_rng(0)
    )
    upper = keypoints[:11]
    np.testing.assert_allclose(geometry.center, upper.mean(axis=0))
    assert geometry.scale[1] == pytest.approx((upper[:, 1].max() - upper[:, 1].min()) * 1.5)


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="flip_indices"):
        TopDownTransform((48, 64), augmentation=TopDownAugmentation())
    with pytest.raises(ValueError, match="uint8"):
        TopDownTransform((48, 64))(
            np.zeros((10, 10, 3), np.float32), np.array([0, 0, 5, 5.0]), np.zeros((1, 2)), np.ones(1)
        )
    with pytest.raises(ValueError, match="positive"):
        udp_warp_matrix((0.0, 0.0), (0.0, 10.0), 0.0, (48, 64))
