"""The house stays layered: packages import downward only, and no module imports itself back through others.

Every import in zoo/ counts, module level or inside a function (a lazy import is still a dependency). Layers,
bottom to top; a module may import its own layer and the layers below:
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("zoo.utils", "zoo.data.metainfo"),
    ("zoo.data", "zoo.codecs", "zoo.visualize"),
    ("zoo.backbones",),
    ("zoo.heads", "zoo.evaluation"),
    ("zoo.models",),
    # The registry names classes as strings and imports them on use: the predictors and the Annotator read it.
    ("zoo.builders", "zoo.export", "zoo.registry", "zoo.model_zoo"),
    ("zoo.inference",),
    ("zoo.cli", "zoo.benchmarks", "zoo.recipes", "zoo"),
)


def layer_of(module: str) -> int:
    """The layer of a zoo module: the longest package prefix listed in LAYERS."""
    best, depth = None, -1
    for index, packages in enumerate(LAYERS):
        for package in packages:
            if (module == package or module.startswith(package + ".")) and package.count(".") > depth:
                best, depth = index, package.count(".")
    if best is None:
        raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS")
    return best


def module_name(path: Path) -> str:
    """zoo/models/lotus/model.py -> zoo.models.lotus.model (packages by their __init__)."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def zoo_imports(path: Path) -> set[str]:
    """The zoo modules imported anywhere in a file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from zoo.models import lotus` imports the module zoo.models.lotus when it is one.
            found.update(f"{base}.{alias.name}" for alias in node.names if _is_module(f"{base}.{alias.name}"))
    return {name for name in found if name == "zoo" or name.startswith("zoo.")}


def _is_module(name: str) -> bool:
    path = REPO_ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def import_graph() -> dict[str, set[str]]:
    """zoo module -> the zoo modules it imports (each resolved to an existing module or package)."""
    graph = {}
    for path in sorted((REPO_ROOT / "zoo").rglob("*.py")):
        graph[module_name(path)] = {name for name in zoo_imports(path) if _is_module(name)}
    return graph


def test_no_upward_imports() -> None:
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            # A module importing its own package's __init__ (or the reverse) is Python's normal package shape.
            if target == node or node.startswith(target + ".") or target.startswith(node + "."):
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_checks_can_fail() -> None:
    # The same checks on a made-up graph with one upward import and one cycle.
    assert layer_of("zoo.backbones.stable_diffusion") > layer_of("zoo.data.images")
    assert layer_of("zoo.data.metainfo") < layer_of("zoo.data.topdown")
    graph = {"zoo.a": {"zoo.b"}, "zoo.b": {"zoo.c"}, "zoo.c": {"zoo.a"}, "zoo.d": {"zoo.a"}}
    assert _cycles(graph) == [["zoo.a", "zoo.b", "zoo.c"]]
    with pytest.raises(AssertionError, match="no layer"):
        layer_of("elsewhere.module")
