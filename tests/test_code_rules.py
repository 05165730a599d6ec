"""The rooms' size and import rules (issue "Rooms"), checked on the source so they cannot quietly come back.

- no module over 500 lines and no function over 80 lines in the four packages;
- no ``sys.path`` edits in them;
- the plugin imports from ``worker`` only its QGIS-side rooms, ``worker.client`` and ``worker.io``;
- the window grid (window starts, chunk plans) is defined in ``factseg_core/windows.py`` alone;
- (issue "One contract") the defaults, limits, training-data layout and class-table rule are defined in
  ``factseg_contract`` alone (no second definition, no stray literal), key files have one loader, and no two
  project modules import each other, even through imports inside functions.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from project_paths import REPO_ROOT

PACKAGES = ("factseg_core", "worker", "qgis_plugin", "training")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _contract_modules() -> list[Path]:
    return sorted(p for p in (REPO_ROOT / "factseg_contract").rglob("*.py") if "__pycache__" not in p.parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_no_module_is_over_the_limit():
    long = {str(p.relative_to(REPO_ROOT)): n for p in _modules() + _contract_modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_is_over_the_limit():
    long = {}
    for path in _modules() + _contract_modules():
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


# -- one contract: every shared value and rule has one home, factseg_contract ------------------------------------

CONTRACT = "factseg_contract"
#: The contract's names and the other names they went by; none may be assigned a value outside the contract
#: (importing or re-binding a name, ``X = contract.X``, is fine).
CONTRACT_NAMES = {
    "PATCH_SIZE", "STRIDE", "CHUNK_SIZE", "MAX_PATCH", "BATCH_SIZE", "NODATA_CLASS", "IGNORE_INDEX", "DEFAULT_ENDPOINT",
    "CLASSES_FILE", "EXPORT_FILE", "IMAGES_DIR", "MASKS_DIR", "MASK_SUFFIX", "IMAGE_SUFFIX", "IGNORE_COLOR", "SPLITS",
    "NODATA", "IGNORE_ID", "DEFAULT_BIND", "DEFAULT_CHUNK_SIZE", "EXPORT_PATCH",
}
#: Functions and classes defined once in product code, and where.
ONE_DEFINITION = {
    "ClassTableError": "factseg_contract/class_table.py",
    "check_class_table": "factseg_contract/class_table.py",
    "check_dataset_table": "factseg_contract/class_table.py",
    "KeyFileError": "worker/client/keys.py",
    "load_key_file": "worker/client/keys.py",
    "load_public_key": "worker/client/keys.py",
    "load_client_keys": "worker/client/keys.py",
    "file_sha256": "factseg_core/quantize.py",
}
#: Values that are the contract's whatever they are called: numbers anywhere, strings as whole constants.
STRAY_NUMBERS = {4096, 896}
STRAY_STRINGS = {"tcp://127.0.0.1:5555", "_instance_color_RGB.png", "classes.json", "export.json", "images", "masks"}
#: Parameters, fields and options that take a contract default: given one of its values as a literal, they would
#: define it a second time (a conv's ``stride=1`` or the trainer's ``batch_size: 8`` are other things).
DEFAULTED = {"patch", "stride", "chunk_size", "batch_size", "max_patch", "ignore_index", "nodata"}
DEFAULT_VALUES = {896, 512, 4096, 4, 255}


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _literal(node: ast.AST | None) -> bool:
    """A number, string or tuple/list of them: a value written down, not a name re-bound."""
    if isinstance(node, ast.Constant):
        return not isinstance(node.value, bool) and node.value is not None
    if isinstance(node, (ast.Tuple, ast.List)):
        return bool(node.elts) and all(_literal(e) for e in node.elts)
    return False


def _default(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and node.value in DEFAULT_VALUES


def _contract_violations(path: Path) -> list[str]:
    tree, where = _tree(path), str(path.relative_to(REPO_ROOT))
    docstrings, found = _docstrings(tree), []
    for node in tree.body:  # module level: a class attribute such as a Processing parameter name is not one
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {t.id for t in targets if isinstance(t, ast.Name)} & CONTRACT_NAMES
            if names and _literal(node.value):
                found.append(f"{where}:{node.lineno} defines {sorted(names)}")
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id in DEFAULTED:
            if _default(node.value):
                found.append(f"{line} gives field {node.target.id} a default of its own ({node.value.value!r})")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = node.args.posonlyargs + node.args.args
            pairs = list(zip(args[len(args) - len(node.args.defaults):], node.args.defaults))
            pairs += [(a, d) for a, d in zip(node.args.kwonlyargs, node.args.kw_defaults) if d is not None]
            for arg, default in pairs:
                if arg.arg in DEFAULTED and _default(default):
                    found.append(f"{line} gives parameter {arg.arg} a default of its own ({default.value!r})")
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and str(node.args[0].value).lstrip("-").replace("-", "_") in DEFAULTED):
            for keyword in node.keywords:
                if keyword.arg == "default" and _default(keyword.value):
                    found.append(f"{line} gives option {node.args[0].value} a default of its own")
        elif isinstance(node, ast.Constant) and id(node) not in docstrings:
            if type(node.value) is int and node.value in STRAY_NUMBERS:
                found.append(f"{line} writes {node.value}")
            elif isinstance(node.value, str) and (node.value in STRAY_STRINGS or "127.0.0.1:5555" in node.value):
                found.append(f"{line} writes {node.value!r}")
    return found


def test_contract_values_are_written_once():
    """The defaults, limits and training-data layout live in factseg_contract alone: product code imports them."""
    found = [v for path in _modules() for v in _contract_violations(path)]
    assert not found, "second definitions of the contract's values:\n" + "\n".join(found)


def test_the_contract_check_would_see_a_second_definition(tmp_path):
    """The check itself finds each kind of second definition (so the test above cannot pass by seeing nothing)."""
    sample = tmp_path / "sample.py"
    sample.write_text('NODATA = 255\nMAX = 4096\nENDPOINT = "tcp://127.0.0.1:5555"\n'
                      'def f(patch=896, stride=512):\n    return "classes.json"\n'
                      'parser.add_argument("--batch-size", type=int, default=4)\n'
                      'class Limits:\n    max_patch: int = 8192\n    nodata: int = 255\n    STRIDE = "STRIDE"\n'
                      'def g(stride=1, batch_size=1):\n    return 2048\n')
    global REPO_ROOT
    saved, REPO_ROOT = REPO_ROOT, tmp_path
    try:
        found = _contract_violations(sample)
    finally:
        REPO_ROOT = saved
    flagged = sorted({int(f.split()[0].split(':')[1]) for f in found})
    assert flagged == [1, 2, 3, 4, 5, 6, 9] and len(found) == 9, found  # not the class attribute, not g()


@pytest.mark.parametrize("name", sorted(ONE_DEFINITION))
def test_shared_rules_are_defined_once(name):
    defined = [str(p.relative_to(REPO_ROOT)) for p in _modules() + _contract_modules()
               if any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name for n in ast.walk(_tree(p)))]
    assert defined == [ONE_DEFINITION[name]], defined


def test_class_tables_are_checked_by_the_contract_alone():
    """A validator spells out the entry keys; only factseg_contract/class_table.py may (others call it)."""
    spelled = []
    for path in _modules():
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(isinstance(e, ast.Constant) for e in node.elts):
                if sorted(str(e.value) for e in node.elts) == ["color", "id", "name"]:
                    spelled.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not spelled, f"class-table keys checked outside factseg_contract.class_table: {spelled}"


def test_the_contract_is_torch_free_and_stdlib_only():
    import sys

    for path in _contract_modules():
        for name in _imported(_tree(path)):
            assert name.split(".")[0] in sys.stdlib_module_names, f"{path.name} imports {name}"


# -- no import cycles, counting imports inside functions ----------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere (module level or inside functions); ``if TYPE_CHECKING:``
    blocks, which never run, do not count. ``from package import name`` counts the submodule when ``name`` is one."""
    files = {_module_name(p): p for p in _modules() + _contract_modules()}

    def local(target: str) -> str | None:
        parts = target.split(".")
        return next((".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in files), None)

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: list[str] = []
        stack: list[ast.AST] = [_tree(path)]
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                stack.extend(node.orelse)
                continue
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            stack.extend(ast.iter_child_nodes(node))
        graph[name] = {m for t in targets if (m := local(t)) and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_no_import_cycles():
    cycles = _cycles(_import_graph())
    assert not cycles, f"import cycles (imports inside functions count): {cycles}"


def test_the_cycle_check_sees_a_cycle_through_a_function_level_import():
    graph = _import_graph()
    assert "factseg_core.config" in graph["factseg_core.sliding"]  # a module-level import is an edge
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
