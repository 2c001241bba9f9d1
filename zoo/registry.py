"""The model zoo: family specs and named models, the single source of truth for the tools and the README.

The data lives in `zoo/model_zoo.py` (plain dicts, imports nothing from zoo); this module turns it into typed
specs on first use, resolves the classes a spec names lazily (so `import zoo` stays light and reads no file),
and builds predictors (`zoo.load`). Adding a family means: its folder under zoo/models/, its configs, one spec
in model_zoo.py and its tests (see CONTRIBUTING.md).
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from zoo.models import MODEL_CONFIG_FILE

REPO_ROOT = Path(__file__).resolve().parent.parent
MEASURED_DATASET = "synthetic held-out"


@dataclass(frozen=True)
class OodSpec:
    """How tools/eval.py --ood-root evaluates a family on COCO-OOD splits."""

    metric: str  # the test metric the drop table compares, without the "test/" prefix
    ann_field: str  # datamodule argument holding the test ground truth
    image_field: str  # datamodule argument holding the test image folder


@dataclass(frozen=True)
class FamilySpec:
    """What the tools need to know about a family, by "module:attribute" targets resolved on use."""

    name: str
    model: str  # the nn.Module with the inference core
    module: str  # the LightningModule (tools/train.py, tools/eval.py)
    datamodule: str  # its LightningDataModule
    # The inference API class (from_pretrained); None for training recipes of backbone parts
    # (autoencoder_tiny).
    predictor: str | None
    # What a prediction is: "dense", "keypoints", "video_keypoints", "text", "image", or "autoencoder" (a
    # backbone part, used through StableDiffusionBackbone.use_tiny_autoencoder).
    output_kind: str
    annotator_adapter: str | None = (
        None  # the Annotator's TaskAdapter for this family, if it annotates images
    )
    # LightningCLI overrides that shrink a real-size recipe to a one-step smoke run on the tiny backbone
    # (tests/test_configs.py; "{tmp}" is replaced by a temporary folder).
    smoke_overrides: tuple[str, ...] = ()
    ood: OodSpec | None = None

    def resolve(self, part: str) -> Any:
        """The class named by one of the target fields ("model", "module", "datamodule", "predictor", ...)."""
        target = getattr(self, part)
        if not isinstance(target, str) or ":" not in target:
            raise ValueError(f"family {self.name!r} has no importable {part!r} ({target!r})")
        module_name, _, attribute = target.partition(":")
        return getattr(importlib.import_module(module_name), attribute)


@dataclass(frozen=True)
class ModelEntry:
    """A named model: its family, task, training config, checkpoint source and results."""

    name: str
    family: str
    task: str  # "depth", "normals", "pose", ...
    config: str  # repo-relative path of the YAML recipe that trains it
    checkpoint: str  # hub id (e.g. "jingheya/lotus-depth-d-v2-0-disparity") or repo-relative folder
    description: str
    predictor_kwargs: dict[str, Any] = field(default_factory=dict)
    # dataset -> metric -> value, quoted from a paper (`results_source` says so).
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    results_source: str = "measured here"
    # For models trained here: the metrics of `<checkpoint>/metrics.json` shown as MEASURED_DATASET results.
    measured_metrics: tuple[str, ...] = ()
    # Measured comparisons shown in the table: label -> a JSON file under the checkpoint folder holding
    # {"metrics": {...}, "source": "..."}, the same recipe and steps from another start (e.g. a random UNet).
    comparisons: dict[str, str] = field(default_factory=dict)
    # How shipped weights are rebuilt: "train_tiny" (tools/train_tiny.py, `make tiny-models`), "tiny-backbone"
    # (`make tiny-backbone`), or "none" (an entry without weights of its own, e.g. feature settings).
    rebuild: str = "train_tiny"
    # Configs trained before `config`, in order, each starting from the previous export (tools/train_tiny.py
    # chains them: LLaVA-style stage 1 before stage 2).
    stages: tuple[str, ...] = ()

    @property
    def is_local(self) -> bool:
        """True when the checkpoint ships inside this repository."""
        return self.checkpoint.startswith("checkpoints/")

    def checkpoint_path(self) -> str:
        """Absolute folder for local checkpoints, else the hub id."""
        return str(REPO_ROOT / self.checkpoint) if self.is_local else self.checkpoint

    def all_results(self) -> dict[str, dict[str, float]]:
        """Quoted results, plus the measured ones read from the checkpoint's metrics.json (read on call)."""
        if not self.measured_metrics:
            return dict(self.results)
        path = REPO_ROOT / self.checkpoint / "metrics.json"
        values = json.loads(path.read_text()) if path.is_file() else {}
        measured = {name: round(float(values[name]), 4) for name in self.measured_metrics if name in values}
        return {**self.results, MEASURED_DATASET: measured} if measured else dict(self.results)

    def comparison_results(self) -> dict[str, dict[str, float]]:
        """label -> the `measured_metrics` of each comparison file (read on call; a missing file is an error).
        """
        results = {}
        for label, name in self.comparisons.items():
            path = REPO_ROOT / self.checkpoint / name
            if not path.is_file():
                raise FileNotFoundError(f"model {self.name!r}: comparison {label!r} needs {path}")
            values = json.loads(path.read_text())["metrics"]
            results[label] = {m: round(float(values[m]), 4) for m in self.measured_metrics if m in values}
        return results


def _build(cls: type, record: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(record) - known)
    if unknown:
        raise ValueError(f"zoo/model_zoo.py {where}: unknown fields {unknown}; known: {sorted(known)}")
    return cls(**record)


@functools.cache
def _zoo() -> tuple[dict[str, FamilySpec], dict[str, ModelEntry]]:
    from zoo.model_zoo import FAMILIES, MODELS

    families: dict[str, FamilySpec] = {}
    for record in FAMILIES:
        record = dict(record)
        if record.get("ood") is not None:
            record["ood"] = OodSpec(**record["ood"])
        record["smoke_overrides"] = tuple(record.get("smoke_overrides", ()))
        spec = _build(FamilySpec, record, f"family {record.get('name')!r}")
        if spec.name in families:
            raise ValueError(f"family {spec.name!r} is registered twice")
        families[spec.name] = spec
    models: dict[str, ModelEntry] = {}
    for record in MODELS:
        record = dict(record)
        record["measured_metrics"] = tuple(record.get("measured_metrics", ()))
        record["stages"] = tuple(record.get("stages", ()))
        entry = _build(ModelEntry, record, f"model {record.get('name')!r}")
        if entry.rebuild not in ("train_tiny", "tiny-backbone", "none"):
            raise ValueError(f"model {entry.name!r}: rebuild must be train_tiny, tiny-backbone or none")
        if entry.name in models:
            raise ValueError(f"model {entry.name!r} is registered twice")
        if entry.family not in families:
            raise ValueError(f"model {entry.name!r} names unknown family {entry.family!r}")
        models[entry.name] = entry
    return families, models


def families() -> dict[str, FamilySpec]:
    """Every family spec by name."""
    return dict(_zoo()[0])


def get_family(name: str) -> FamilySpec:
    """The spec of family `name`; the error lists the known ones."""
    specs = _zoo()[0]
    if name not in specs:
        raise KeyError(f"unknown family {name!r}; known families: {', '.join(sorted(specs))}")
    return specs[name]


def family_of_module(class_path: str) -> FamilySpec:
    """The family whose LightningModule is `class_path` (dotted, as in a config; imports it)."""
    module_name, _, attribute = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), attribute)
    for spec in _zoo()[0].values():
        if spec.resolve("module") is cls:
            return spec
    raise KeyError(f"no family has the LightningModule {class_path!r}")


def available_models(family: str | None = None) -> list[str]:
    """Names of all registered models (optionally of one family), sorted."""
    return sorted(name for name, entry in _zoo()[1].items() if family is None or entry.family == family)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; the error lists the known names."""
    models = _zoo()[1]
    if name not in models:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(available_models())}")
    return models[name]


def tiny_models(rebuild: str | None = "train_tiny") -> list[ModelEntry]:
    """The models that ship in this repository, sorted by name: by default those `make tiny-models` retrains.
    """
    entries = [get_entry(name) for name in available_models() if get_entry(name).is_local]
    return [entry for entry in entries if rebuild is None or entry.rebuild == rebuild]


def weights_folder(entry: ModelEntry, allow_download: bool = False) -> str:
    """The local folder of a model's weights: shipped here, or a hub id's snapshot in the Hugging Face cache.

    Without `allow_download` the hub is never contacted: weights missing from the cache fail at once with the
    command that fetches them (instead of network retries on an offline machine).
    """
    if entry.is_local:
        return entry.checkpoint_path()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from zoo.backbones import MissingWeightsError

    try:
        return snapshot_download(entry.checkpoint, local_files_only=not allow_download)
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as error:
        folder = f"checkpoints/{Path(entry.checkpoint).name}"
        raise MissingWeightsError(
            f"{entry.name}: the weights {entry.checkpoint!r} are not in the Hugging Face cache "
            f"({type(error).__name__}). Fetch them once with `huggingface-cli download {entry.checkpoint} "
            f"--local-dir {folder}` and load that folder, or call "
            f"zoo.load({entry.name!r}, allow_download=True)."
        ) from error


def load(name_or_path: str | os.PathLike, allow_download: bool = False, **kwargs: Any) -> Any:
    """Build the predictor of a registered model name, or of a checkpoint folder written by this project.

    A folder must contain `zoo_model.json` naming its family (written when a model is exported). Registered
    hub models load from the local Hugging Face cache; `allow_download=True` fetches them first when missing.
    Other keyword arguments (device, dtype, ...) go to the predictor's `from_pretrained`.
    """
    name = str(name_or_path)
    models = _zoo()[1]
    if name in models:
        entry = models[name]
        predictor_cls = get_family(entry.family).resolve("predictor")
        folder = weights_folder(entry, allow_download)
        return predictor_cls.from_pretrained(folder, **{**entry.predictor_kwargs, **kwargs})
    folder = Path(name)
    marker = folder / MODEL_CONFIG_FILE
    if folder.is_dir() and marker.is_file():
        from zoo.backbones import check_model_folder

        check_model_folder(folder)  # malformed or absurd configs are named before any family code runs
        try:
            family = json.loads(marker.read_text())["family"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(
                f"{marker}: not a zoo model description (needs a JSON object with 'family')"
            ) from error
        return get_family(family).resolve("predictor").from_pretrained(str(folder), **kwargs)
    raise KeyError(
        f"{name!r} is neither a registered model ({', '.join(available_models()) or 'none'}) "
        f"nor a folder with {MODEL_CONFIG_FILE}"
    )


def model_zoo_markdown() -> str:
    """The README's model-zoo table, generated from the registry."""
    lines = [
        "| model | family | task | checkpoint | results | source of numbers | compared with (same recipe) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in available_models():
        entry = get_entry(name)
        shown = entry.all_results()
        results = "; ".join(
            f"{dataset}: " + ", ".join(f"{metric} {value:.4g}" for metric, value in sorted(metrics.items()))
            for dataset, metrics in sorted(shown.items())
        )
        compared = "; ".join(
            f"{label}: " + ", ".join(f"{metric} {value:.4g}" for metric, value in sorted(metrics.items()))
            for label, metrics in entry.comparison_results().items()
        )
        lines.append(
            f"| `{name}` | {entry.family} | {entry.task} | `{entry.checkpoint}` | {results or '—'} | "
            f"{entry.results_source if shown else '—'} | {compared or '—'} |"
        )
    return "\n".join(lines) + "\n"
