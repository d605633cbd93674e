"""The package's shape: imports point one way (core <- serving <- tools <- lab), no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yolov5face"
# Lower layers never import higher ones. Everything not named here is the core: the request
# path, the model, the backends, conversion, settings and paths.
LAYERS = {"serving": 1, "tools": 2, "lab": 3}
LAYER_NAMES = {0: "core", 1: "serving", 2: "tools", 3: "lab"}
MAX_LINES = 600


def module_name(path: Path) -> str:
    """`yolov5face/pipeline/detector.py` -> `yolov5face.pipeline.detector`."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of a module of the package (`python -m yolov5face` is the CLI's)."""
    parts = module.split(".")
    if parts[1:] == ["__main__"]:
        return LAYERS["tools"]
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Package modules `path` imports anywhere (top level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from pkg import sub` imports the submodule when there is one.
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports (itself left out)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if "worker_site" not in p.parts}
    modules = set(files)
    graph = {m: imports_of(p, modules) - {m} for m, p in files.items()}
    # `from yolov5face.x import y` also names the package `yolov5face.x`; a package's own
    # __init__ re-exporting its submodules is not an edge back up.
    for m, deps in graph.items():
        deps.difference_update(d for d in list(deps) if m.startswith(d + "."))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_point_one_way():
    """core <- serving <- tools <- lab: no module imports a higher layer, lazily or not."""
    wrong = [
        f"{m} ({LAYER_NAMES[layer(m)]}) imports {d} ({LAYER_NAMES[layer(d)]})"
        for m, deps in sorted(import_graph().items())
        for d in sorted(deps)
        if layer(d) > layer(m)
    ]
    assert wrong == []


def test_no_import_cycles():
    """No two modules of the package import each other, directly or through others."""
    assert cycles(import_graph()) == []


def test_the_checks_see_a_planted_violation():
    """The walkers catch an upward import and a cycle (so the two tests above can fail)."""
    graph = {"yolov5face.a": {"yolov5face.lab.b"}, "yolov5face.lab.b": {"yolov5face.a"}}
    assert [m for m, deps in graph.items() for d in deps if layer(d) > layer(m)] == ["yolov5face.a"]
    assert cycles(graph) == [["yolov5face.a", "yolov5face.lab.b"]]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: module_name(p))
def test_files_stay_readable(path):
    """No module of the package over ~600 lines (split it by job)."""
    assert len(path.read_text().splitlines()) <= MAX_LINES
