"""The package's modules import each other without a circle.

Every ``.py`` file under ``timm_gsp/`` is parsed with :mod:`ast` (nothing is imported or run) and every
``import`` / ``from ... import`` node in it counts, wherever it stands: at the top, or late, inside a
function, a method or an ``if``/``try`` block (a late import only hides a circle from the import system,
it does not remove it from the code's shape). Relative imports are resolved against the importing
module's package. An edge ``a -> b`` means "module ``a`` names module ``b`` in an import":

* ``import timm_gsp.x.y`` and ``from timm_gsp.x.y import name`` / ``from .y import name`` give ``a ->
  timm_gsp.x.y``; when ``name`` is itself a module (``from . import y``, ``from .. import utils``) the
  edge goes to that module too.
* A package's ``__init__`` is the module of its package's name (``timm_gsp.data`` is
  ``timm_gsp/data/__init__.py``). Its re-exports (``from .collage import default_cache_root``) are
  ordinary edges ``timm_gsp.data -> timm_gsp.data.collage``. Importing the package itself from one of its
  submodules (``from . import x`` where ``x`` is a name defined in ``__init__``, ``from .. import x``,
  ``import timm_gsp``) is an edge to the ``__init__``, and so counts: with the re-exports it closes a
  circle.
* The parent packages Python loads before any submodule (importing ``timm_gsp.data.scenes`` first runs
  ``timm_gsp/__init__.py`` and ``timm_gsp/data/__init__.py``) are *not* edges: they are how packages
  work, not a choice of the importing module, and counting them would make every package with
  re-exports a circle.

A circle is reported as ``a -> b -> ... -> a`` with each edge's file and line.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "timm_gsp"

# module -> {imported module: (file, line) of the first import naming it}
Graph = Dict[str, Dict[str, Tuple[str, int]]]


def module_files(package_dir: Path) -> Dict[str, Path]:
    """``{"timm_gsp.data.scenes": path, "timm_gsp.data": .../data/__init__.py, ...}``."""
    top = package_dir.name
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [top, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    """The absolute name of ``from <'.' * level><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph(package_dir: Path = PACKAGE_DIR) -> Graph:
    """Every import between the package's own modules, late ones included (see the module docstring)."""
    modules = module_files(package_dir)
    graph: Graph = {name: {} for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        rel = path.relative_to(package_dir.parent).as_posix()

        def add(target: str, line: int) -> None:
            if target in modules and target != name:
                graph[name].setdefault(target, (rel, line))

        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, is_package, node.level, node.module)
                add(source, node.lineno)
                for alias in node.names:
                    add(f"{source}.{alias.name}", node.lineno)  # a submodule imported by name
    return graph


def find_circle(graph: Graph) -> Optional[List[str]]:
    """One circle ``[a, b, ..., a]`` of the graph, or None (depth-first search, deterministic order)."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: finished
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def describe(graph: Graph, circle: List[str]) -> str:
    steps = [f"{a} -> {b} ({graph[a][b][0]}:{graph[a][b][1]})" for a, b in zip(circle, circle[1:])]
    return "import circle: " + " -> ".join(circle) + "\n  " + "\n  ".join(steps)


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "timm_gsp.data.generated" in graph and graph["timm_gsp.data.scenes"], "the walk found the package's imports"
    circle = find_circle(graph)
    assert circle is None, describe(graph, circle)


def _write(root: Path, files: Dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_walk_finds_late_relative_and_package_circles(tmp_path):
    """The checker itself: a circle closed by a late relative import, and one closed through a package's
    ``__init__`` re-export, are found and named; the parent-package import alone is not a circle."""
    late = _write(tmp_path / "late", {"pkg/__init__.py": "", "pkg/sub/__init__.py": "",
                                      "pkg/sub/registry.py": "from .family import make\n",
                                      "pkg/sub/family.py": "def f():\n    from .registry import helper\n"})
    graph = import_graph(late)
    assert find_circle(graph) == ["pkg.sub.family", "pkg.sub.registry", "pkg.sub.family"]
    assert "pkg/sub/family.py:2" in describe(graph, find_circle(graph))

    through_init = _write(tmp_path / "init", {"pkg/__init__.py": "from .core import run\n",
                                              "pkg/core.py": "from . import VERSION\n"})
    assert find_circle(import_graph(through_init)) == ["pkg", "pkg.core", "pkg"]
    submodule = _write(tmp_path / "sub", {"pkg/__init__.py": "from .core import run\n", "pkg/utils.py": "",
                                          "pkg/core.py": "from .utils import x\nimport pkg.utils\n"})
    assert find_circle(import_graph(submodule)) is None
    up = _write(tmp_path / "up", {"pkg/__init__.py": "from .a.b import run\n", "pkg/a/__init__.py": "",
                                  "pkg/a/b.py": "def g():\n    from .. import utils\n", "pkg/utils.py": ""})
    graph = import_graph(up)
    assert set(graph["pkg.a.b"]) == {"pkg", "pkg.utils"}
    assert find_circle(graph) == ["pkg", "pkg.a.b", "pkg"]


if __name__ == "__main__":
    pytest.main([__file__])
