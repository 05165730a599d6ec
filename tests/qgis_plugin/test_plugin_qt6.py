"""QGIS 4 readiness: every Qt name the plugin uses exists in PyQt6, and every Qt or QGIS enum member is reached
through its enum type (``Qt.TextFormat.RichText``, ``Qgis.MessageLevel.Info``), the form both Qt5 and Qt6 accept.

PyQt6 is imported in a subprocess (it cannot share a process with QGIS's PyQt5). QGIS's own enums are checked
against the installed QGIS 3.22, whose bindings accept both forms: an unscoped use resolves to a member directly
on the class, which is what this test refuses.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from project_paths import REPO_ROOT

PLUGIN = REPO_ROOT / "qgis_plugin"
QT_MODULES = ("QtCore", "QtGui", "QtWidgets", "QtNetwork", "QtXml", "QtSvg")


def plugin_sources() -> list[Path]:
    return sorted(p for p in PLUGIN.rglob("*.py") if "__pycache__" not in p.parts)


def _fallback_imports(tree: ast.AST) -> set[int]:
    """Line numbers of imports in ``except ImportError`` handlers (the Qt5 fallback of a Qt6 name)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def used_names() -> tuple[dict[str, list[str]], dict[str, set[tuple[str, ...]]], list[str]]:
    """(Qt names by module, attribute chains rooted at Qt / QGIS names, uses of exec_)."""
    qt: dict[str, list[str]] = {m: [] for m in QT_MODULES}
    chains: dict[str, set[tuple[str, ...]]] = {"qt": set(), "qgis": set()}
    exec_uses = []
    for path in plugin_sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        fallbacks = _fallback_imports(tree)
        roots: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.lineno not in fallbacks:
                module = node.module
                if module.startswith("qgis.PyQt."):
                    qt[module.rsplit(".", 1)[1]].extend(a.name for a in node.names)
                    roots.update({a.asname or a.name: f"qt:{module.rsplit('.', 1)[1]}" for a in node.names})
                elif module in ("qgis.core", "qgis.gui"):
                    roots.update({a.asname or a.name: f"qgis:{module}" for a in node.names})
            if isinstance(node, ast.Attribute) and node.attr == "exec_":
                exec_uses.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and not isinstance(getattr(node, "parent", None), ast.Attribute):
                chain = _chain(node)
                if chain and chain[0] in roots and chain[0][0] in "QQ":
                    kind, module = roots[chain[0]].split(":", 1)
                    chains[kind].add((module, *chain))
    return qt, chains, exec_uses


def _qt_chains(chains: set[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Only the longest chain per prefix (``a.b.c`` covers ``a.b``)."""
    return sorted(c for c in chains if not any(o != c and o[:len(c)] == c for o in chains))


CHECK_IN_PYQT6 = r"""
import enum, json, sys, importlib
names, chains = json.loads(sys.stdin.read())
missing = []
for module, items in names.items():
    mod = importlib.import_module(f"PyQt6.{module}")
    missing += [f"{module}.{n}" for n in items if not hasattr(mod, n)]
for module, *chain in chains:
    obj = importlib.import_module(f"PyQt6.{module}")
    for i, part in enumerate(chain):
        if not hasattr(obj, part):
            missing.append(".".join(chain[: i + 1]))
            break
        obj = getattr(obj, part)
print(json.dumps(missing))
"""


def test_every_qt_name_exists_in_pyqt6():
    pytest.importorskip("PyQt6", reason="PyQt6 (requirements.txt) is not installed")  # only probes the import
    qt, chains, exec_uses = used_names()
    assert not exec_uses, f"exec_ is Qt5-only (use exec or open): {exec_uses}"
    assert qt["QtWidgets"] and qt["QtGui"], "the scan found no Qt imports: it is not looking at the plugin"
    qt_chains = [list(c) for c in _qt_chains(chains["qt"])]
    assert len(qt_chains) >= 3, qt_chains
    run = subprocess.run([sys.executable, "-c", CHECK_IN_PYQT6], input=json.dumps([qt, qt_chains]),
                         capture_output=True, text=True, timeout=120, env={"QT_QPA_PLATFORM": "offscreen",
                                                                           "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == [], "Qt names the plugin uses that PyQt6 lacks"


def test_qgis_enum_members_are_scoped(qgis_app):
    """``Qgis.Info`` (unscoped) fails, ``Qgis.MessageLevel.Info`` passes: the form the pyqt5_to_pyqt6 script
    writes, which QGIS 4's bindings require."""
    import importlib

    _, chains, _ = used_names()
    unscoped, unknown = [], []
    for module, *chain in sorted(chains["qgis"]):
        obj = importlib.import_module(module)
        for i, part in enumerate(chain):
            parent, obj = obj, getattr(obj, part, None)
            if obj is None:
                unknown.append(".".join(chain[: i + 1]))
                break
            is_member = isinstance(obj, int) and not isinstance(obj, bool) and isinstance(parent, type)
            if is_member and i >= 1 and not _is_enum_type(parent):
                unscoped.append(".".join(chain[: i + 1]))
                break
    assert len(chains["qgis"]) > 20, "the scan found few QGIS names: it is not looking at the plugin"
    assert not unknown, f"QGIS names that do not exist: {unknown}"
    assert not unscoped, f"QGIS enum members used without their enum type: {unscoped}"


def _is_enum_type(cls: type) -> bool:
    """A sip enum type (members hang off it), not a class holding enums."""
    import enum

    if issubclass(cls, enum.Enum):
        return True
    return issubclass(cls, int)
