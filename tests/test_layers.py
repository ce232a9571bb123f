"""The package's shape (issue 26): the version in one place; no module importing another
module's private names; no import cycle among the modules of ``fde``, ``index_store`` and
``latemm``; every module importing only its own package and the layers below it (``LAYERS``,
the folder list of ``latemm/``); every error class in the one errors module. Function-level
imports count like module-level ones: a cycle hidden inside a function is still a cycle."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import latemm
from latemm.version import __version__

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("fde", "index_store", "latemm")


def test_version_is_pyprojects() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert latemm.__version__ == __version__ == project["version"]


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def private_imports() -> list[str]:
    """``from other.module import _name`` anywhere in a module (function-level imports too)."""
    modules = _modules()
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module in modules and not node.level:
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and node.module != name:
                        found.append(f"{name} imports {node.module}.{alias.name}")
    return found


def test_private_imports_checker_finds_one(tmp_path, monkeypatch) -> None:
    """The checker itself: a planted private import is found."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "latemm" / "a.py").write_text("def f():\n    from latemm.b import _g\n")
    (tmp_path / "latemm" / "b.py").write_text("def _g():\n    pass\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    assert private_imports() == ["latemm.a imports latemm.b._g"]


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports() == []


def import_graph() -> dict[str, set[str]]:
    """module -> the modules of the three packages it imports, anywhere in its body (``from
    pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: ``from . import x``, ``from ..a import b``
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles() -> list[list[str]]:
    """The import graph's strongly connected components of more than one module (Tarjan),
    each sorted; an empty list when the modules form layers."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(cycles)


def test_import_cycle_checker_finds_a_function_level_cycle(tmp_path, monkeypatch) -> None:
    """The checker itself: a cycle of three modules closed by an import inside a function (and
    a relative one) is found; the module that only imports them is not part of it."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "latemm" / "a.py").write_text("from latemm import b\n")
    (tmp_path / "latemm" / "b.py").write_text("from .c import f\n")
    (tmp_path / "latemm" / "c.py").write_text("def f():\n    import latemm.a\n")
    (tmp_path / "latemm" / "d.py").write_text("from latemm.a import x\nfrom fde import y\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    assert import_graph()["latemm.d"] == {"latemm.a", "fde"}
    assert import_cycles() == [["latemm.a", "latemm.b", "latemm.c"]]


def test_no_import_cycles() -> None:
    assert import_cycles() == []


# The layers, lowest first. A module imports its own unit (a package, or a top-level module)
# and the layers below its own, never a unit beside it or above it.
LAYERS = (
    ("fde",),
    ("index_store",),
    ("latemm.version", "latemm.data", "latemm.encoders", "latemm.ranking"),
    ("latemm.index",),
    ("latemm.retrieval",),
    ("latemm.runs",),
    ("latemm.api", "latemm.quickstart"),
    ("latemm",),
    ("latemm.cli", "latemm.mteb"),
)


def layer_violations() -> list[str]:
    """Each import that reaches a unit beside its own or above it, and each module in no
    layer."""
    units = {unit: rank for rank, layer in enumerate(LAYERS) for unit in layer}

    def unit_of(module: str) -> str | None:
        parts = module.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in units:
                return ".".join(parts[:end])
        return None

    found = []
    for module, targets in sorted(import_graph().items()):
        unit = unit_of(module)
        if unit is None:
            found.append(f"{module} is in no layer")
            continue
        for target in sorted(targets):
            other = unit_of(target)
            if other is not None and other != unit and units[other] >= units[unit]:
                found.append(f"{module} imports {target}")
    return found


def test_layer_checker_finds_an_import_upward_and_beside(tmp_path, monkeypatch) -> None:
    """The checker itself: a collection module importing the runs layer (up) and a ranking
    module importing the data layer (beside) are found; imports downward are not."""
    for package in (*PACKAGES, "latemm/index", "latemm/runs", "latemm/ranking", "latemm/data"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "latemm" / "index" / "a.py").write_text(
        "from latemm.runs import b\nfrom latemm.ranking.c import f\nimport index_store\n"
    )
    (tmp_path / "latemm" / "runs" / "b.py").write_text("from latemm.index import a\n")
    (tmp_path / "latemm" / "ranking" / "c.py").write_text("def f():\n    import latemm.data.d\n")
    (tmp_path / "latemm" / "data" / "d.py").write_text("")
    monkeypatch.setattr(__import__(__name__, fromlist=["REPO"]), "REPO", tmp_path)
    assert layer_violations() == [
        "latemm.index.a imports latemm.runs.b",
        "latemm.ranking.c imports latemm.data.d",
    ]


def test_every_module_imports_only_the_layers_below_it() -> None:
    assert layer_violations() == []


def test_errors_live_in_one_module() -> None:
    """Every exception class of the three packages is defined in ``fde.errors`` (re-exported
    by ``index_store.errors`` and wherever users import it from)."""
    defined = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception"))
                for base in node.bases
            ):
                defined.append(f"{name}.{node.name}")
    assert defined and all(d.startswith("fde.errors.") for d in defined), defined
