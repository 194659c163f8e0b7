"""The package's shape, as its imports show it: no circle, no import up a floor, timm's private
internals touched by one module only, and the public names where they have always been.

Floors, from the ground up (``FLOORS``): the core (what ``import timm_gsp`` loads: ``errors``, ``utils``,
``timm_plugin``, ``layers/``, ``models/``, ``loss/``, ``metrics/`` and the package's ``__init__``), then
``data/``, then the tools (``train/``, ``retrieval/``, ``hub/``, ``cli/``, ``deploy``). A module imports
its own floor and those below, never one above. ``timm_gsp/__init__.py`` hands out a few tool names
lazily, by module name (``_LAZY``, through ``importlib``): that is not an import, and the only way up.

Every ``.py`` file under ``timm_gsp/`` is parsed with :mod:`ast` (nothing is imported or run) and every
``import`` / ``from ... import`` node in it counts, wherever it stands: at the top, or late, inside a
function, a method or an ``if``/``try`` block (a late import only hides a circle from the import system,
it does not remove it from the code's shape). Relative imports are resolved against the importing
module's package. An edge ``a -> b`` means "module ``a`` names module ``b`` in an import":

* ``import timm_gsp.x.y`` and ``from timm_gsp.x.y import name`` / ``from .y import name`` give ``a ->
  timm_gsp.x.y``; when ``name`` is itself a module (``from . import y``, ``from .. import utils``) the
  edge goes to that module too.
* A package's ``__init__`` is the module of its package's name (``timm_gsp.data`` is
  ``timm_gsp/data/__init__.py``). Its re-exports (``from .generated.collage import default_cache_root``)
  are ordinary edges ``timm_gsp.data -> timm_gsp.data.generated.collage``. Importing the package itself
  from one of its submodules (``from . import x`` where ``x`` is a name defined in ``__init__``,
  ``from .. import x``, ``import timm_gsp``) is an edge to the ``__init__``, and so counts: with the
  re-exports it closes a circle.
* The parent packages Python loads before any submodule (importing ``timm_gsp.data.generated.scenes``
  first runs ``timm_gsp/__init__.py``, ``timm_gsp/data/__init__.py`` and
  ``timm_gsp/data/generated/__init__.py``) are *not* edges: they are how packages work, not a choice of
  the importing module, and counting them would make every package with re-exports a circle.

A circle is reported as ``a -> b -> ... -> a`` with each edge's file and line, an import up a floor
as ``a -> b`` with its file and line.
"""
from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Set, Tuple

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "timm_gsp"

# module -> {imported module: (file, line) of the first import naming it}
Graph = Dict[str, Dict[str, Tuple[str, int]]]


def module_files(package_dir: Path) -> Dict[str, Path]:
    """``{"timm_gsp.data.generated.scenes": path, "timm_gsp.data": .../data/__init__.py, ...}``."""
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
    assert graph["timm_gsp.data.generated"] and graph["timm_gsp.data.generated.scenes"], "the walk found the imports"
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



# --- floors: nothing low imports anything high -------------------------------------------------------

# From the ground up; a module is on the floor of the longest prefix that names it.
FLOORS: Sequence[Tuple[str, Sequence[str]]] = (
    ("core", ("timm_gsp", "timm_gsp.errors", "timm_gsp.utils", "timm_gsp.timm_plugin", "timm_gsp.layers",
              "timm_gsp.models", "timm_gsp.loss", "timm_gsp.metrics")),
    ("data", ("timm_gsp.data",)),
    ("tools", ("timm_gsp.train", "timm_gsp.retrieval", "timm_gsp.hub", "timm_gsp.cli", "timm_gsp.deploy")),
)


def floor_of(module: str, floors: Sequence[Tuple[str, Sequence[str]]] = FLOORS) -> Optional[int]:
    """The index in ``floors`` of the floor holding ``module`` (the longest matching prefix), or None."""
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(floors) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    return max(matches)[1] if matches else None


def upward_imports(graph: Graph, floors: Sequence[Tuple[str, Sequence[str]]] = FLOORS) -> List[str]:
    """Every edge from a floor to a higher one, as ``a (floor) -> b (floor) (file:line)``."""
    found = []
    for module in sorted(graph):
        low = floor_of(module, floors)
        for target, (file, line) in sorted(graph[module].items()):
            high = floor_of(target, floors)
            if low is not None and high is not None and high > low:
                found.append(f"{module} ({floors[low][0]}) -> {target} ({floors[high][0]}) ({file}:{line})")
    return found


def test_every_module_is_on_a_floor():
    unplaced = [module for module in import_graph() if floor_of(module) is None]
    assert not unplaced, f"place these modules on a floor of FLOORS: {unplaced}"


def test_no_import_runs_up_a_floor():
    """The core imports neither data/ nor a tool, and data/ imports no tool (late imports included)."""
    graph = import_graph()
    assert graph["timm_gsp.cli.parser"] and graph["timm_gsp.data.transforms"], "the walk found the imports"
    upward = upward_imports(graph)
    assert not upward, "imports up a floor:\n  " + "\n  ".join(upward)


def test_the_floor_check_finds_late_and_package_imports(tmp_path):
    """The checker itself: a late import from the core into a tool, and data importing a tool's package
    face, are found; a tool importing the core is not."""
    package = _write(tmp_path / "floors", {
        "pkg/__init__.py": "from .core import run\n", "pkg/core.py": "def f():\n    from .tool import cmd\n",
        "pkg/data/__init__.py": "", "pkg/data/reader.py": "from .. import tool\n",
        "pkg/tool.py": "from .core import run\n"})
    floors = (("core", ("pkg", "pkg.core")), ("data", ("pkg.data",)), ("tools", ("pkg.tool",)))
    assert upward_imports(import_graph(package), floors) == [
        "pkg.core (core) -> pkg.tool (tools) (pkg/core.py:2)",
        "pkg.data.reader (data) -> pkg.tool (tools) (pkg/data/reader.py:1)"]


# --- __all__: what other modules import from a module, it lists ------------------------------------

def names_missing_from_all(package_dir: Path = PACKAGE_DIR, callers: Sequence[Path] = ()) -> List[str]:
    """Each public name that a module of the package (or a file of ``callers``) imports from a module
    whose ``__all__`` leaves it out, as ``module.name (file:line)``; submodules and ``_private`` names
    are not counted."""
    modules = module_files(package_dir)
    listed: Dict[str, Set[str]] = {}
    for name, path in modules.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "__all__" for target in node.targets):
                listed[name] = set(ast.literal_eval(node.value))
    importers = [(name, path) for name, path in modules.items()] + [("", path) for path in callers]
    missing = []
    for name, path in importers:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or (node.level and not name):
                continue
            source = _resolve(name, path.name == "__init__.py", node.level, node.module)
            if source not in listed or source == name:
                continue
            for alias in node.names:
                if not alias.name.startswith("_") and f"{source}.{alias.name}" not in modules \
                        and alias.name not in listed[source]:
                    missing.append(f"{source}.{alias.name} ({path.relative_to(package_dir.parent).as_posix()}:{node.lineno})")
    return sorted(missing)


def test_names_imported_across_modules_are_in_their_all():
    root = PACKAGE_DIR.parent
    callers = [path for folder in ("tests", "benchmarks", "examples") for path in sorted((root / folder).glob("*.py"))]
    missing = names_missing_from_all(callers=callers)
    assert not missing, "add these names to their module's __all__:\n  " + "\n  ".join(missing)



def test_the_all_check_finds_a_name_left_out(tmp_path):
    package = _write(tmp_path / "all", {"pkg/__init__.py": "", "pkg/m.py": "__all__ = ['a']\na = b = _c = 1\n",
                                        "pkg/n.py": "from .m import a, b, _c\n"})
    assert names_missing_from_all(package) == ["pkg.m.b (pkg/n.py:1)"]

# --- timm's private internals: timm_plugin.py alone ------------------------------------------------

def timm_private_touches(source: str, filename: str = "<source>") -> List[str]:
    """How ``source`` touches timm beyond its public API, one phrase per touch: an import from a private
    timm module or of a private name, a private attribute named on something of timm, or an assignment
    (``=``, ``+=``, ``del``, ``setattr``, ``delattr``) to an attribute of something of timm. "Something of
    timm" is a name bound by ``import timm...`` or ``from timm... import``; private = one ``_`` in front
    (``__version__`` and the other dunders are public)."""
    tree = ast.parse(source, filename=filename)
    found: List[str] = []

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    timm_names: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "timm" or alias.name.startswith("timm."):
                    timm_names.add(alias.asname or alias.name.split(".")[0])
                    if any(private(part) for part in alias.name.split(".")):
                        found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                (node.module == "timm" or node.module.startswith("timm.")):
            for alias in node.names:
                timm_names.add(alias.asname or alias.name)
                if any(private(part) for part in node.module.split(".")) or private(alias.name):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")

    def root(node: ast.AST) -> Optional[str]:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    def of_timm(node: ast.AST) -> bool:
        return isinstance(node, ast.Attribute) and root(node) in timm_names

    for node in ast.walk(tree):
        if of_timm(node) and private(node.attr):
            found.append(f"line {node.lineno}: names {ast.unparse(node)}")
        targets: List[ast.AST] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = list(node.targets)
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr") \
                and node.args and (root(node.args[0]) in timm_names):
            found.append(f"line {node.lineno}: {node.func.id}({ast.unparse(node.args[0])}, ...)")
        for target in targets:
            for part in ast.walk(target):
                if of_timm(part) and isinstance(part.ctx, (ast.Store, ast.Del)):
                    found.append(f"line {node.lineno}: assigns {ast.unparse(part)}")
    return sorted(set(found), key=lambda touch: (int(touch.split(":")[0].split()[1]), touch))


def test_only_timm_plugin_touches_timms_private_internals():
    """timm_plugin.py's docstring states the rule; every other module keeps to timm's public API."""
    touches = {}
    for module, path in module_files(PACKAGE_DIR).items():
        if module != "timm_gsp.timm_plugin":
            found = timm_private_touches(path.read_text(encoding="utf-8"), str(path))
            if found:
                touches[path.relative_to(PACKAGE_DIR.parent).as_posix()] = found
    assert not touches, f"only timm_gsp/timm_plugin.py may touch timm's private internals: {touches}"
    plugin = (PACKAGE_DIR / "timm_plugin.py").read_text(encoding="utf-8")
    assert timm_private_touches(plugin), "the check sees timm_plugin.py's own touches"
    assert "the one module of timm-gsp that touches timm's private internals" in plugin.split("\n", 1)[0]


def test_the_timm_check_finds_each_kind_of_touch():
    source = """
import timm
import timm.models._hub
from timm.models import _registry, create_model
from timm.layers import SelectAdaptivePool2d as Pool
from timm.models._builder import build_model_with_cfg
model = timm.create_model("resnet18")
version = timm.__version__
timm.models._registry.x
timm.create_model = None
Pool.__init__ = None
create_model.attr += 1
setattr(timm.models, "create_model", None)
del Pool.forward
model.head = None
"""
    # line 7 (a call), line 8 (a dunder) and line 15 (a model's own attribute) are timm's public API
    assert [touch.split(":")[0] for touch in timm_private_touches(source)] == [
        "line 3", "line 4", "line 6", "line 9", "line 10", "line 11", "line 12", "line 13", "line 14"]


# --- the public API ----------------------------------------------------------------------------------

# timm_gsp.__all__ as released: each name must keep importing from timm_gsp itself.
PUBLIC_NAMES = (
    "CheckpointMismatchError", "ConfigError", "CorruptImageError", "DatasetLayoutError", "GSP_DEFAULTS",
    "GSPMetricLoss", "GSPRetrievalNet", "GSPTransport", "GSPUnsupportedModelError", "GeneralizedSumPool",
    "HubUnavailableError", "OutputExistsError", "RetrievalMetrics", "RetrievalModelConfig", "TimmGSPError",
    "TransportPlan", "ZeroShotLoss", "capture_transport", "convert", "create_model", "find_model",
    "format_gsp_spec", "gsp_modules", "gsp_transport", "init_prototypes_kcenter", "load_model",
    "parse_gsp_spec", "prototype_costs", "push_to_hub", "register", "retrieval_metrics", "save_pretrained",
)


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_the_public_names_import_from_the_package(name):
    import timm_gsp

    assert name in timm_gsp.__all__ and name in dir(timm_gsp)
    namespace: Dict[str, object] = {}
    exec(f"from timm_gsp import {name}", namespace)
    assert namespace[name] is getattr(timm_gsp, name)


def test_import_registers_the_models_with_timm():
    import timm

    importlib.import_module("timm_gsp")
    assert timm.is_model("plain_cnn6") and timm.is_model("gsp_retrieval")


if __name__ == "__main__":
    pytest.main([__file__])
