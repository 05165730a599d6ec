"""The rooms' size and import rules (issue "Rooms"), checked on the source so they cannot quietly come back.

- no module over 500 lines and no function over 80 lines in the four packages;
- no ``sys.path`` edits in them;
- the plugin imports from ``worker`` only its QGIS-side rooms, ``worker.client`` and ``worker.io``;
- the window grid (window starts, chunk plans) is defined in ``factseg_core/windows.py`` alone.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGES = ("factseg_core", "worker", "qgis_plugin", "training")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_no_module_is_over_the_limit():
    long = {str(p.relative_to(REPO_ROOT)): n for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_the_limit():
    long = {}
    for path in _modules():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}"] = length
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_sys_path_edits():
    edits = []
    for path in _modules():
        for node in ast.walk(_tree(path)):
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "sys"):
                edits.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not edits, f"sys.path edits: {edits}"


def _imported(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_the_plugin_imports_only_the_qgis_side_rooms_of_worker():
    wrong = {}
    for path in sorted((REPO_ROOT / "qgis_plugin").rglob("*.py")):
        bad = [n for n in _imported(_tree(path)) if n.split(".")[0] == "worker"
               and not n.startswith(("worker.client", "worker.io"))]
        if bad:
            wrong[str(path.relative_to(REPO_ROOT))] = bad
    assert not wrong, f"the plugin reaches past worker.client/worker.io: {wrong}"


@pytest.mark.parametrize("name", ["window_starts", "plan_chunks", "plan_size", "windows_touching", "source_window"])
def test_the_grid_is_defined_in_one_file(name):
    """Module-level definitions only: an adapter's method of the same name that calls the grid is fine."""
    defined = [str(p.relative_to(REPO_ROOT)) for p in _modules()
               if any(isinstance(n, ast.FunctionDef) and n.name == name for n in _tree(p).body)]
    assert defined == ["factseg_core/windows.py"], defined
