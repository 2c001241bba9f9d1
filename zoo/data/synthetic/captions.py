"""Captioned synthetic images with VQA pairs, deterministic by seed: one generator for text-to-image and VQA.

Two kinds of image, both named by what is in them:
- scenes: a neutral grey room (the scene renderer) holding 1-3 spheres or boxes of named colours. Captions
  name colours, shapes, counts ("two red spheres"), left/right order and stacking ("a red sphere above a blue
  box");
- figures: 1-3 articulated stick figures (the figure renderer); captions name the count and, for one person,
  the pose class read off its keypoints ("a person with arms up", "a person waving", "... arms down").
The same facts give VQA pairs with one-word answers (colour, count, position, pose). Item i of a split
is rendered from the seed sequence (split seed, i): the held-out splits share no image with training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from zoo.data.synthetic.figures import render_figures
from zoo.data.synthetic.scenes import (
    Box,
    Material,
    Room,
    Scene,
    Sphere,
    _matmul3,
    _normalize,
    _rotation,
    render,
)

# Linear albedos (the renderer's gamma-2 curve brightens them); hues far apart so that pixels tell them apart.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.04, 0.03),
    "yellow": (0.8, 0.68, 0.03),
    "green": (0.05, 0.6, 0.06),
    "blue": (0.04, 0.1, 0.85),
    "purple": (0.45, 0.04, 0.7),
}
# Hue (degrees) of each colour as rendered, for caption-following measurements on generated pixels.
COLOUR_HUES: dict[str, float] = {"red": 0.0, "yellow": 55.0, "green": 120.0, "blue": 230.0, "purple": 285.0}
SHAPES = ("sphere", "box")
POSES = (
    "up",
    "waving",
    "down",
)  # one-word pose classes; captions say "with arms up", "waving", "with arms down"
NUMBERS = ("zero", "one", "two", "three")
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
FIGURE_FRACTION = 0.25  # one image in four shows figures, the rest scenes


@dataclass(frozen=True)
class SceneObject:
    """One object of a captioned scene and where it appears."""

    colour: str
    shape: str
    x: float  # horizontal image position of its centre in [-1, 1] (left to right)
    on: int | None = None  # index of the object it rests on, if stacked


@dataclass(frozen=True)
class CaptionedImage:
    """One image, its caption and its VQA pairs."""

    image: np.ndarray  # float32 [H, W, 3] in [0, 1]
    caption: str
    questions: tuple[tuple[str, str], ...]  # (question, one-word answer)
    kind: str  # "scene" | "figures"
    objects: tuple[SceneObject, ...] = ()
    poses: tuple[str, ...] = ()  # pose class of each figure


def _grey(rng: np.random.Generator, low: float, high: float, pattern: str = "plain") -> Material:
    """A low-saturation material, so that named colours stand out."""
    base = np.full(3, rng.uniform(low, high)) + rng.uniform(-0.02, 0.02, 3)
    return Material(
        base=base,
        accent=base * rng.uniform(0.75, 0.9),
        pattern=pattern,
        period=rng.uniform(0.3, 0.6),
        axis=np.array([1.0, 0.0, 0.0]),
        phase=rng.uniform(0.0, 1.0, 3),
    )


def _plain(colour: str) -> Material:
    base = np.array(COLOURS[colour])
    return Material(
        base=base, accent=base, pattern="plain", period=1.0, axis=np.array([1.0, 0.0, 0.0]), phase=np.zeros(3)
    )


def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("x") else "s")


def _scene_caption(objects: list[SceneObject]) -> str:
    """The caption of a scene: a count when all objects look alike, else left-to-right order or stacking."""
    names = [f"a {o.colour} {o.shape}" for o in objects]
    if len(objects) > 1 and len({(o.colour, o.shape) for o in objects}) == 1:
        return f"{NUMBERS[len(objects)]} {objects[0].colour} {_plural(objects[0].shape)}"
    if len(objects) == 1:
        side = (
            "on the left"
            if objects[0].x < -0.25
            else "on the right"
            if objects[0].x > 0.25
            else "in the middle"
        )
        return f"{names[0]} {side}"
    if objects[1].on == 0:
        return f"{names[1]} above {names[0]}"
    order = sorted(range(len(objects)), key=lambda i: objects[i].x)
    if len(objects) == 2:
        return f"{names[order[0]]} left of {names[order[1]]}"
    return f"{names[order[0]]}, {names[order[1]]} and {names[order[2]]}"


def _scene_questions(objects: list[SceneObject]) -> list[tuple[str, str]]:
    """Colour, count and position questions with one-word answers."""
    questions = []
    for shape in SHAPES:
        count = sum(o.shape == shape for o in objects)
        questions.append((f"how many {_plural(shape)} are there?", NUMBERS[count]))
        if count == 1:
            questions.append(
                (f"what colour is the {shape}?", next(o.colour for o in objects if o.shape == shape))
            )
    colours = [o.colour for o in objects]
    for colour in sorted(set(colours)):
        questions.append((f"how many {colour} objects are there?", NUMBERS[colours.count(colour)]))
    if len(objects) == 2 and colours[0] != colours[1]:
        # Each relation is asked in both directions, so the answers are balanced ("above"/"below",
        # "left"/"right") and cannot be read from the question's wording alone.
        if objects[1].on == 0:
            relation, answers, (a, b) = "above or below", ("above", "below"), (objects[1], objects[0])
        else:
            left_to_right = sorted(objects, key=lambda o: o.x)
            relation, answers, (a, b) = "left or right of", ("left", "right"), left_to_right
        for (first, second), answer in zip(((a, b), (b, a)), answers, strict=True):
            question = f"is the {first.colour} {first.shape} {relation} the {second.colour} {second.shape}?"
            questions.append((question, answer))
    return questions


def _camera_x(rotation: np.ndarray, focal: float, point: np.ndarray) -> float:
    """Horizontal image position in [-1, 1] of a world point (camera columns of `rotation` are world axes)."""
    cam_x = rotation[0, 0] * point[0] + rotation[1, 0] * point[1] + rotation[2, 0] * point[2]
    cam_z = rotation[0, 2] * point[0] + rotation[1, 2] * point[1] + rotation[2, 2] * point[2]
    return float(2.0 * focal * cam_x / cam_z)


def captioned_scene(rng: np.random.Generator, height: int, width: int) -> CaptionedImage:
    """A grey room with 1-3 coloured spheres/boxes on the floor, rendered, with its caption and questions."""
    yaw = _rotation(1, rng.uniform(-0.09, 0.09))
    pitch = _rotation(0, rng.uniform(0.09, 0.16))  # looking 10-18 degrees down at the floor
    rotation = _matmul3(_matmul3(yaw, pitch), np.diag([1.0, -1.0, 1.0]))
    focal = 0.9
    floor_y = -rng.uniform(1.0, 1.3)
    low, high = np.array([-4.0, floor_y, -1.0]), np.array([4.0, 1.6, 9.0])
    wall, floor = _grey(rng, 0.45, 0.8), _grey(rng, 0.25, 0.55, "checker")
    room = Room(low, high, True, (wall, wall, floor, _grey(rng, 0.6, 0.8), wall, wall))

    count = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    alike = count > 1 and rng.uniform() < 0.3  # "two red spheres"
    stacked = count == 2 and not alike and rng.uniform() < 0.35  # "a red sphere above a blue box"
    names = list(COLOURS)
    colours = [names[i] for i in rng.permutation(len(names))[:count]]
    shapes = [SHAPES[int(rng.integers(2))] for _ in range(count)]
    if alike:
        colours, shapes = [colours[0]] * count, [shapes[0]] * count
    if stacked:
        shapes[0] = "box"
    depth = rng.uniform(3.2, 4.2)
    slots = (
        [0.0] if count == 1 or stacked else list(np.linspace(-1.0, 1.0, count) * (0.5 if count == 2 else 0.6))
    )
    if count == 1:
        slots = [float(rng.choice([-0.5, 0.0, 0.5]))]
    primitives, objects = [], []
    top = floor_y
    for index in range(count):
        size = rng.uniform(0.38, 0.5)
        on = 0 if stacked and index == 1 else None
        x = (slots[0] if stacked else slots[index]) * depth * 0.5 / focal + rng.uniform(-0.1, 0.1)
        z = depth + rng.uniform(-0.3, 0.3) if on is None else primitives[0].center[2]
        x = x if on is None else primitives[0].center[0]
        base = top if on is not None else floor_y
        if shapes[index] == "sphere":
            center = np.array([x, base + size, z])
            primitives.append(Sphere(center, size, _plain(colours[index])))
        else:
            turn = rng.uniform(-0.4, 0.4)
            half = np.array([size, size * rng.uniform(0.8, 1.0), size])
            center = np.array([x, base + half[1], z])
            primitives.append(
                Box(
                    center,
                    half,
                    (1 - turn * turn) / (1 + turn * turn),
                    2 * turn / (1 + turn * turn),
                    _plain(colours[index]),
                )
            )
            top = base + 2 * half[1]
        objects.append(SceneObject(colours[index], shapes[index], _camera_x(rotation, focal, center), on))
    light = _normalize(np.array([rng.uniform(-0.8, 0.8), 1.2, rng.uniform(-0.8, -0.2)]))
    scene = Scene(
        rotation=rotation,
        focal=focal,
        room=room,
        objects=tuple(primitives),
        light=light,
        sun=rng.uniform(0.6, 0.8),
        ambient=rng.uniform(0.3, 0.4),
        sky_horizon=np.full(3, 0.8),
        sky_zenith=np.full(3, 0.8),
        noise=0.01,
        noise_seed=int(rng.integers(2**62)),
    )
    sample = render(scene, height, width)
    return CaptionedImage(
        sample.image, _scene_caption(objects), tuple(_scene_questions(objects)), "scene", tuple(objects)
    )


def pose_class(keypoints: np.ndarray) -> str:
    """ "up" (both wrists above the shoulders), "waving" (one) or "down" from COCO-17 keypoints [17, 3]."""
    raised = [keypoints[wrist, 1] < keypoints[shoulder, 1] for wrist, shoulder in ((9, 5), (10, 6))]
    return POSES[2 - sum(raised)]


def captioned_figures(rng: np.random.Generator, height: int, width: int) -> CaptionedImage:
    """1-3 stick figures with a caption naming the count (and the pose of a single person) and questions."""
    rendered = render_figures(int(rng.integers(2**62)), width, height, max_people=3)
    poses = tuple(pose_class(person.keypoints) for person in rendered.people)
    count = len(poses)
    questions = [("how many people are there?", NUMBERS[count])]
    if count == 1:
        caption = {
            "up": "a person with arms up",
            "waving": "a person waving",
            "down": "a person with arms down",
        }
        questions.append(("what pose is the person in?", poses[0]))
        text = caption[poses[0]]
    else:
        text = f"{NUMBERS[count]} people"
    return CaptionedImage(
        rendered.image.astype(np.float32) / 255.0, text, tuple(questions), "figures", (), poses
    )


def item_seed(split: str, index: int, base_seed: int = 0) -> int:
    """One integer seed per (split, index), stable across numpy versions."""
    return int(np.random.SeedSequence([base_seed, SPLIT_SEEDS[split], index]).generate_state(1)[0])


def render_captioned(seed: int, height: int = 64, width: int = 64) -> CaptionedImage:
    """The captioned image of a seed: a scene or (one in four) figures; same arguments, same pixels."""
    rng = np.random.default_rng(seed)
    if rng.uniform() < FIGURE_FRACTION:
        return captioned_figures(rng, height, width)
    return captioned_scene(rng, height, width)


class CaptionDataset(torch.utils.data.Dataset):
    """Item i of a split is render_captioned(item_seed(split, i)); returns the image tensor and its texts."""

    def __init__(
        self, length: int, split: str = "train", height: int = 64, width: int = 64, base_seed: int = 0
    ):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_SEEDS)}; got {split!r}")
        self.length, self.split, self.height, self.width, self.base_seed = (
            length,
            split,
            height,
            width,
            base_seed,
        )

    def __len__(self) -> int:
        return self.length

    def item(self, index: int) -> CaptionedImage:
        """The full record (caption, questions, objects) of item `index`."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} items")
        return render_captioned(item_seed(self.split, index, self.base_seed), self.height, self.width)

    def __getitem__(self, index: int) -> dict:
        """An image_text item: image [3, H, W] in [0, 1], text (the caption), index []."""
        record = self.item(index)
        return {
            "image": torch.from_numpy(record.image).permute(2, 0, 1).contiguous(),
            "text": record.caption,
            "index": torch.tensor(index, dtype=torch.long),
        }
