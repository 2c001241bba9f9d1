"""The registry is the one source of model names; the README's table is generated from it."""

from __future__ import annotations

import json
import sys

import pytest

import zoo
from zoo.registry import MEASURED_DATASET, REPO_ROOT, families, get_entry, model_zoo_markdown

sys.path.insert(0, str(REPO_ROOT / "tools"))
from model_zoo_table import BEGIN, END, replace_table  # noqa: E402


def test_readme_table_is_generated_from_the_registry():
    readme = (REPO_ROOT / "README.md").read_text()
    assert replace_table(readme, model_zoo_markdown()) == readme, (
        "README table is stale: run `make readme-table`"
    )


def test_every_entry_names_an_existing_config_and_a_known_family():
    for name in zoo.available_models():
        entry = get_entry(name)
        assert (REPO_ROOT / entry.config).is_file(), f"{name}: config {entry.config} missing"
        assert entry.family in families(), f"{name}: unknown family {entry.family}"


def test_every_family_spec_resolves_its_classes():
    for spec in families().values():
        parts = ("module", "datamodule") + (("predictor",) if spec.predictor is not None else ())
        for part in parts:
            assert isinstance(spec.resolve(part), type), f"{spec.name}: {part}"
        assert callable(spec.resolve("model")), spec.name
        if spec.annotator_adapter is not None:
            assert isinstance(spec.resolve("annotator_adapter"), type), spec.name
        assert spec.resolve("module").family == spec.name, f"{spec.name}: module.family"


def test_model_zoo_is_pure_data():
    import ast

    source = (REPO_ROOT / "zoo" / "model_zoo.py").read_text()
    imports = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import | ast.ImportFrom)]
    assert imports == [], "zoo/model_zoo.py must import nothing: it is data the registry reads"


def test_importing_zoo_reads_no_model_file(tmp_path):
    import subprocess

    # A fresh interpreter that records every open() of a metrics.json during `import zoo`.
    code = (
        "import builtins, io\n"
        "seen = []\n"
        "real = io.open\n"
        "def spy(file, *a, **k):\n"
        "    seen.append(str(file))\n"
        "    return real(file, *a, **k)\n"
        "builtins.open = io.open = spy\n"
        "import zoo\n"
        "print([f for f in seen if f.endswith('.json')])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_shipped_models_carry_the_numbers_measured_for_them():
    shipped = [
        get_entry(n) for n in zoo.available_models() if get_entry(n).checkpoint.startswith("checkpoints/")
    ]
    assert shipped, "no tiny model is registered"
    for entry in shipped:
        metrics = json.loads((REPO_ROOT / entry.checkpoint / "metrics.json").read_text())
        measured = entry.all_results()[MEASURED_DATASET]
        assert measured, f"{entry.name}: no measured results"
        for metric, value in measured.items():
            assert metrics[metric] == pytest.approx(value, abs=1e-4), f"{entry.name}: {metric}"


def test_comparisons_carry_their_source_and_every_measured_metric():
    compared = [get_entry(n) for n in zoo.available_models() if get_entry(n).comparisons]
    for entry in compared:
        for label, name in entry.comparisons.items():
            record = json.loads((REPO_ROOT / entry.checkpoint / name).read_text())
            assert record["source"], f"{entry.name}: comparison {label!r} says nothing of where it comes from"
            assert set(entry.measured_metrics) <= set(record["metrics"]), f"{entry.name}: {label}"
        assert entry.comparison_results().keys() == entry.comparisons.keys()


def test_a_missing_comparison_file_is_an_error():
    from dataclasses import replace

    entry = replace(get_entry("tiny-lotus-depth-d"), comparisons={"elsewhere": "no_such_file.json"})
    with pytest.raises(FileNotFoundError, match="no_such_file.json"):
        entry.comparison_results()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="lotus-depth-d"):
        zoo.load("no-such-model")


def test_replace_table_needs_markers():
    with pytest.raises(ValueError, match="model-zoo"):
        replace_table("no markers here", "| table |")
    assert replace_table(f"a {BEGIN}old{END} b", "new\n") == f"a {BEGIN}\nnew\n{END} b"


def test_uncached_hub_weights_fail_at_once_with_the_download_command(tmp_path, monkeypatch):
    import time

    from zoo.backbones import MissingWeightsError

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.monotonic()
    with pytest.raises(
        MissingWeightsError, match="huggingface-cli download jingheya/lotus-depth-d-v2-0-disparity"
    ):
        zoo.load("lotus-depth-d")
    assert time.monotonic() - started < 10  # no network retries: the cache is all that is looked at
