"""The registry is the one source of model names; the README's table is generated from it."""

from __future__ import annotations

import json
import sys

import pytest

import zoo
from zoo.registry import MEASURED_DATASET, REPO_ROOT, get_entry, model_zoo_markdown

sys.path.insert(0, str(REPO_ROOT / "tools"))
from model_zoo_table import BEGIN, END, replace_table  # noqa: E402


def test_readme_table_is_generated_from_the_registry():
    readme = (REPO_ROOT / "README.md").read_text()
    assert replace_table(readme, model_zoo_markdown()) == readme, "README table is stale: run `make readme-table`"


def test_every_entry_names_an_existing_config_and_a_known_family():
    from zoo.registry import PREDICTORS

    for name in zoo.available_models():
        entry = get_entry(name)
        assert (REPO_ROOT / entry.config).is_file(), f"{name}: config {entry.config} missing"
        assert entry.family in PREDICTORS, f"{name}: family {entry.family} has no predictor"


def test_shipped_models_carry_the_numbers_measured_for_them():
    shipped = [get_entry(n) for n in zoo.available_models() if get_entry(n).checkpoint.startswith("checkpoints/")]
    assert shipped, "no tiny model is registered"
    for entry in shipped:
        metrics = json.loads((REPO_ROOT / entry.checkpoint / "metrics.json").read_text())
        measured = entry.results[MEASURED_DATASET]
        assert measured, f"{entry.name}: no measured results"
        for metric, value in measured.items():
            assert metrics[metric] == pytest.approx(value, abs=1e-4), f"{entry.name}: {metric}"


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="lotus-depth-d"):
        zoo.load("no-such-model")


def test_replace_table_needs_markers():
    with pytest.raises(ValueError, match="model-zoo"):
        replace_table("no markers here", "| table |")
    assert replace_table(f"a {BEGIN}old{END} b", "new\n") == f"a {BEGIN}\nnew\n{END} b"
