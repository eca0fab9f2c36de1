"""The import order of docs/architecture.md, checked by parsing every module's imports.

Each module of ``src/fastbind`` has a level; a module may import modules of its own level or of
lower ones, never a higher one; no two modules import each other, directly or round a circle; and
no recipe imports another recipe.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first: the layout in docs/architecture.md.
LEVELS = [
    ("fastbind.errors", "fastbind._io", "fastbind.buckets"),
    ("fastbind.layers", "fastbind.memory"),
    ("fastbind.models",),
    ("fastbind.data",),
    ("fastbind.training", "fastbind.runs"),
    ("fastbind.evaluation", "fastbind.lm", "fastbind.continual", "fastbind.metarl", "fastbind.hf"),
    ("fastbind.report",),
    ("fastbind.recipes",),
    ("fastbind.cli", "fastbind.__main__"),
]


def _level(module: str) -> int:
    for i, prefixes in enumerate(LEVELS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    raise AssertionError(f"{module} has no level in the architecture: add it to docs/architecture.md and LEVELS")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "fastbind").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The fastbind modules ``module`` imports (``from x import y`` counts y when it is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    # Imports under ``if TYPE_CHECKING:`` name types for annotations only; they are never executed.
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", getattr(block.test, "attr", None)) == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.startswith("fastbind") and name != module:
                found.add(name)
    return found


MODULES = _modules()
GRAPH = {m: _imports(m, p, set(MODULES)) for m, p in MODULES.items()}


@pytest.mark.parametrize("module", [m for m in MODULES if m != "fastbind"])
def test_imports_go_down_the_levels(module):
    up = sorted(dep for dep in GRAPH[module] if dep != "fastbind" and _level(dep) > _level(module))
    assert not up, f"{module} (level {_level(module)}) imports higher modules: {up}"


def test_no_recipe_imports_another_recipe():
    bad = [(m, d) for m, deps in GRAPH.items() if m.startswith("fastbind.recipes.")
           for d in deps if d.startswith("fastbind.recipes.")]
    assert not bad


def test_no_import_circle():
    # The package face (fastbind/__init__.py) re-exports layers; importing it for __version__ is no circle.
    graph = {m: {d for d in deps if d != "fastbind"} for m, deps in GRAPH.items() if m != "fastbind"}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, set())):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
