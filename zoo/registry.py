"""The model zoo: one entry per named model, the single source of truth for names, checkpoints and results."""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ModelEntry:
    """A named model: its family, task, training config, checkpoint source and measured results."""

    name: str
    family: str  # key of PREDICTORS, e.g. "lotus", "sdpose"
    task: str  # "depth", "normals", "pose", ...
    config: str  # repo-relative path of the YAML recipe that trains it
    checkpoint: str  # hub id (e.g. "jingheya/lotus-depth-d-v2-0-disparity") or repo-relative folder
    description: str
    predictor_kwargs: dict[str, Any] = field(default_factory=dict)
    # dataset -> metric -> value. `results_source` says whether we measured them or copied the paper's table.
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    results_source: str = "measured here"

    @property
    def is_local(self) -> bool:
        """True when the checkpoint ships inside this repository."""
        return (REPO_ROOT / self.checkpoint).exists() or self.checkpoint.startswith("checkpoints/")

    def checkpoint_path(self) -> str:
        """Absolute folder for local checkpoints, else the hub id."""
        return str(REPO_ROOT / self.checkpoint) if self.is_local else self.checkpoint


# Family -> "module:Class" of its predictor; imported lazily so `import zoo` stays light.
PREDICTORS: dict[str, str] = {}

_ENTRIES: dict[str, ModelEntry] = {}


def register_predictor(family: str, target: str) -> None:
    """Declare the predictor class ("module:Class") that serves every model of `family`."""
    PREDICTORS[family] = target


def register(entry: ModelEntry) -> ModelEntry:
    """Add a model to the zoo; names are unique."""
    if entry.name in _ENTRIES:
        raise ValueError(f"model {entry.name!r} is registered twice")
    _ENTRIES[entry.name] = entry
    return entry


MEASURED_DATASET = "synthetic held-out"


def measured_results(folder: str, metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The held-out metrics that tools/train_tiny.py stored beside a shipped model (`<folder>/metrics.json`)."""
    path = REPO_ROOT / folder / "metrics.json"
    if not path.is_file():
        return {}
    values = json.loads(path.read_text())
    return {MEASURED_DATASET: {name: round(float(values[name]), 4) for name in metrics if name in values}}


def _ensure_entries() -> None:
    # The entries live in zoo/model_zoo.py so this module stays the mechanism only.
    importlib.import_module("zoo.model_zoo")


def available_models(family: str | None = None) -> list[str]:
    """Names of all registered models (optionally of one family), sorted."""
    _ensure_entries()
    return sorted(name for name, entry in _ENTRIES.items() if family is None or entry.family == family)


def get_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; the error lists the known names."""
    _ensure_entries()
    if name not in _ENTRIES:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(available_models())}")
    return _ENTRIES[name]


def _import_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def load(name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """Build the predictor of a registered model name, or of a checkpoint folder written by this project.

    A folder must contain `zoo_model.json` naming its family (written when a model is exported).
    Keyword arguments (device, dtype, ...) go to the predictor's `from_pretrained`.
    """
    _ensure_entries()
    name = str(name_or_path)
    if name in _ENTRIES:
        entry = _ENTRIES[name]
        if entry.family not in PREDICTORS:
            raise KeyError(f"model {name!r} belongs to family {entry.family!r}, which has no predictor yet")
        predictor_cls = _import_target(PREDICTORS[entry.family])
        return predictor_cls.from_pretrained(entry.checkpoint_path(), **{**entry.predictor_kwargs, **kwargs})
    folder = Path(name)
    marker = folder / "zoo_model.json"
    if folder.is_dir() and marker.is_file():
        family = json.loads(marker.read_text())["family"]
        if family not in PREDICTORS:
            raise KeyError(f"{marker}: family {family!r} has no predictor; known: {sorted(PREDICTORS)}")
        return _import_target(PREDICTORS[family]).from_pretrained(str(folder), **kwargs)
    raise KeyError(
        f"{name!r} is neither a registered model ({', '.join(available_models()) or 'none'}) "
        f"nor a folder with zoo_model.json"
    )


def model_zoo_markdown() -> str:
    """The README's model-zoo table, generated from the registry."""
    _ensure_entries()
    lines = [
        "| model | family | task | checkpoint | results | source of numbers |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in available_models():
        entry = _ENTRIES[name]
        results = "; ".join(
            f"{dataset}: " + ", ".join(f"{metric} {value:.4g}" for metric, value in sorted(metrics.items()))
            for dataset, metrics in sorted(entry.results.items())
        )
        lines.append(
            f"| `{name}` | {entry.family} | {entry.task} | `{entry.checkpoint}` | {results or '—'} | "
            f"{entry.results_source if entry.results else '—'} |"
        )
    return "\n".join(lines) + "\n"
