"""Package layout rules: the engine never imports a recipe, and module-level imports form no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parents[1] / "src"
PKG = SRC / "mmr1"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """mmr1 modules this file imports (relative imports resolved); `from X import name` counts X and X.name."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("mmr1"):
                out.add(target)
                out.update(f"{target}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mmr1"))
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {m: {t for t in _imports(p, top_level_only) if t in files and t != m} for m, p in files.items()}


def test_engine_never_imports_a_recipe():
    offenders = sorted(f"{m} imports {t}" for m, targets in _graph(top_level_only=False).items()
                       if not m.startswith(("mmr1.recipes", "mmr1.cli")) for t in targets
                       if t.startswith("mmr1.recipes"))
    assert not offenders, offenders


@pytest.mark.parametrize("package", ["mmr1.rewards", "mmr1.data", "mmr1.train", "mmr1.models", "mmr1.rollout",
                                     "mmr1.tools", "mmr1.algos", "mmr1.retrieval", "mmr1.recipes"])
def test_no_import_circle_inside(package):
    """Any import, local or not, between two modules of one subpackage goes one way only."""
    graph = {m: {t for t in ts if t.startswith(package + ".")}
             for m, ts in _graph(top_level_only=False).items() if m.startswith(package + ".")}
    seen: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for t in sorted(graph.get(m, ())):
            if seen.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [m, t]))
            if t not in seen:
                visit(t, stack + [m])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [])


def test_each_recipe_holds_its_runner_and_yamls():
    recipes = [d for d in (PKG / "recipes").iterdir() if d.is_dir() and not d.name.startswith("_")]
    assert {d.name for d in recipes} >= {"quickstart", "vision_r1", "othink_mr1", "mmsearch_r1", "retrv_r1"}
    for d in recipes:
        assert (d / "runner.py").exists() and list(d.glob("*.yaml")), d
    assert not list((PKG / "recipes").glob("*.yaml")), "YAMLs belong in their recipe's folder"
