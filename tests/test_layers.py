"""The package's shape: the version in one place, and no module importing another module's
private names, function-level imports included (issue 26). The import-cycle half of that check
is not here yet: two cycles remain (pipeline / sharded / distributed, fields /
field_maintenance), to be removed with the one-collection redesign."""

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
