"""The contract every family inherits: read from the registry, so a new family's spec gets these tests for
free.

For each family: its spec resolves, its LightningModule names the family, and its shipped tiny models load
through `zoo.load`, accept paths / PIL / numpy / tensors with identical results, and give a clear error that
names a missing file. For every family with a smoke configuration: a module built on the tiny backbone exports
a folder that `zoo.load` reads back. (One fast_dev_run step per config is tests/test_configs.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.registry import families, get_entry, get_family, tiny_models

REPO_ROOT = Path(__file__).resolve().parent.parent
PHOTO = "coco/000000196141.jpg"


def _first(output: Any) -> np.ndarray:
    """The first image's main result as an array, whatever the output kind."""
    if hasattr(output, "prediction"):
        return np.asarray(output.prediction[0])
    return np.asarray(output.keypoints[0])


# How a contract test calls a predictor of each output kind on one image (a new kind adds its call here).
CALLS: dict[str, Callable[[Any, Any], Any]] = {
    # Seeded: Lotus-G starts from noise, which must be the same for every input type.
    "dense": lambda predictor, image: predictor(
        image, processing_resolution=64, generator=torch.Generator().manual_seed(0)
    ),
    "keypoints": lambda predictor, image: predictor(image),
}
IMAGE_KINDS = tuple(CALLS)


def _image_families() -> list[str]:
    return sorted(name for name, spec in families().items() if spec.output_kind in IMAGE_KINDS)


def test_every_output_kind_has_a_contract_call_or_its_own_tests() -> None:
    known = {*IMAGE_KINDS, "video_keypoints", "text", "image", "autoencoder"}
    for spec in families().values():
        assert spec.output_kind in known, f"{spec.name}: output kind {spec.output_kind!r} has no contract"


@pytest.mark.parametrize("family", sorted(families()))
def test_spec_resolves_and_the_module_names_its_family(family: str) -> None:
    spec = get_family(family)
    assert spec.resolve("module").family == family
    for part in ("module", "datamodule"):
        assert isinstance(spec.resolve(part), type)
    assert callable(spec.resolve("model"))
    if spec.predictor is not None:  # training recipes of backbone parts have none
        assert spec.resolve("predictor").family == family  # how the Annotator finds a predictor's spec


def _tiny_image_models() -> list[str]:
    return [entry.name for entry in tiny_models() if get_family(entry.family).output_kind in IMAGE_KINDS]


@pytest.mark.parametrize("name", _tiny_image_models())
def test_tiny_model_accepts_every_input_type_alike(name: str, realdata: Path, tmp_path: Path) -> None:
    predictor = zoo.load(name)
    call = CALLS[get_family(get_entry(name).family).output_kind]
    pil = Image.open(realdata / PHOTO).convert("RGB").resize((80, 60))
    path = tmp_path / "photo.png"  # lossless: the file holds exactly the pixels of the other inputs
    pil.save(path)
    array = np.array(pil)
    tensor = torch.from_numpy(array).permute(2, 0, 1).float() / 255  # [3, H, W] in [0, 1]
    reference = _first(call(predictor, array))
    for image in (pil, tensor, str(path), path):
        np.testing.assert_allclose(_first(call(predictor, image)), reference, atol=1e-5)


@pytest.mark.parametrize("name", _tiny_image_models())
def test_tiny_model_names_a_missing_file(name: str, tmp_path: Path) -> None:
    predictor = zoo.load(name)
    call = CALLS[get_family(get_entry(name).family).output_kind]
    missing = tmp_path / "no_such_photo.jpg"
    with pytest.raises((FileNotFoundError, ValueError), match="no_such_photo.jpg"):
        call(predictor, str(missing))


def _module_from_smoke_config(family: str, tmp_path: Path) -> Any:
    """The family's LightningModule built the way its first config builds it, shrunk by its smoke overrides.
    """
    import yaml

    spec = get_family(family)
    module_cls = spec.resolve("module")
    overrides = [arg.replace("{tmp}", str(tmp_path)) for arg in spec.smoke_overrides]
    for config in sorted((REPO_ROOT / "configs").rglob("*.yaml")):
        recipe = yaml.safe_load(config.read_text())
        model = recipe.get("model", {})
        if model.get("class_path", "").rpartition(".")[2] != module_cls.__name__:
            continue
        settings = dict(model.get("init_args", {}))
        settings["backbone"] = "checkpoints/tiny/backbone"
        for key, value in zip(overrides[::2], overrides[1::2], strict=True):
            if key.startswith("--model.init_args."):
                settings[key.removeprefix("--model.init_args.")] = yaml.safe_load(value)
        return module_cls(**settings)
    pytest.skip(f"{family}: no config builds {module_cls.__name__}")


@pytest.mark.parametrize("family", _image_families())
def test_export_then_load_round_trip(family: str, tmp_path: Path, realdata: Path) -> None:
    module = _module_from_smoke_config(family, tmp_path).eval()
    folder = tmp_path / "export"
    module.export_pretrained(folder)
    predictor = zoo.load(str(folder))
    assert type(predictor) is get_family(family).resolve("predictor")
    output = CALLS[get_family(family).output_kind](predictor, str(realdata / PHOTO))
    assert np.isfinite(_first(output)).all()
