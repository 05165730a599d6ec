"""The built plugin zip: its layout and metadata, and the plugin loading from it in a real (headless) QGIS."""
from __future__ import annotations

import ast
import configparser
import os
import sys
import zipfile

import pytest
from plugin_support import build_plugin_zip, unpack_plugin
from qgis.core import QgsApplication

pytestmark = pytest.mark.qgis

HEAVY = {"torch", "onnxruntime", "onnx", "factseg_core", "training"}


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory):
    return build_plugin_zip(tmp_path_factory.mktemp("zip"))


def test_zip_layout(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert all(n.startswith("factseg/") for n in names), names
    for required in ("factseg/__init__.py", "factseg/metadata.txt", "factseg/icon.png", "factseg/plugin.py",
                     "factseg/processing_provider/segment_algorithm.py", "factseg/worker/__main__.py",
                     "factseg/worker/client/client.py", "factseg/worker/server/service.py", "factseg/factseg_core/model.py",
                     "factseg/factseg_contract/limits.py", "factseg/worker/contract.py"):
        assert required in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_metadata_is_complete(plugin_zip):
    text = zipfile.ZipFile(plugin_zip).read("factseg/metadata.txt").decode("utf-8")
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    general = parser["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
                "tracker", "homepage", "category", "icon", "tags", "experimental", "changelog"):
        assert general.get(key, "").strip(), key
    assert general["qgisMinimumVersion"] == "3.22"
    assert general["category"] == "Raster"
    assert general["hasProcessingProvider"] == "yes"
    assert general["icon"] == "icon.png"
    assert general["qgisMaximumVersion"] == "4.99" and "supportsQt6" not in general  # listed for QGIS 4
    assert "@" in general["email"] and general["repository"].startswith("https://")


def test_plugin_code_never_imports_torch(plugin_zip):
    """What runs inside QGIS (the plugin's own modules) imports neither torch nor factseg_core, even lazily."""
    archive = zipfile.ZipFile(plugin_zip)
    plugin_modules = [n for n in archive.namelist() if n.endswith(".py")
                      and not n.startswith(("factseg/worker/", "factseg/factseg_core/", "factseg/training/"))]
    assert len(plugin_modules) > 10
    for name in plugin_modules:
        for node in ast.walk(ast.parse(archive.read(name))):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & HEAVY, f"{name} imports {roots & HEAVY}"


@pytest.fixture(scope="module")
def loaded_plugin(plugin_zip, qgis_iface, qgis_processing, tmp_path_factory):
    """The zip unpacked into a temporary profile's plugin folder and started through qgis.utils."""
    import qgis.utils

    plugins_dir = tmp_path_factory.mktemp("profile") / "python" / "plugins"
    folder = unpack_plugin(plugin_zip, plugins_dir)
    sys.path.insert(0, str(plugins_dir))
    try:
        assert qgis.utils.loadPlugin("factseg")
        assert qgis.utils.startPlugin("factseg")
        plugin = qgis.utils.plugins["factseg"]
        yield plugin, folder
    finally:
        if "factseg" in qgis.utils.plugins:
            qgis.utils.unloadPlugin("factseg")
        for entry in (str(plugins_dir), str(folder)):  # the plugin appends its own folder (for worker/)
            while entry in sys.path:
                sys.path.remove(entry)
        for name in [m for m in sys.modules if m == "factseg" or m.startswith("factseg.")]:
            del sys.modules[name]


def test_plugin_loads_with_action_menu_and_provider(loaded_plugin, qgis_iface):
    plugin, folder = loaded_plugin
    assert sys.modules["factseg"].__file__.startswith(str(folder))  # the zip's code, not the repository's
    assert plugin.action is not None and plugin.action.text() == "Segment Layer"
    assert not plugin.action.icon().isNull()
    qgis_iface.addPluginToRasterMenu.assert_any_call("&FactSeg", plugin.action)
    alg = QgsApplication.processingRegistry().algorithmById("factseg:segment")
    assert alg is not None and alg.provider().id() == "factseg"


def test_action_opens_the_dialog(loaded_plugin):
    plugin, _ = loaded_plugin
    plugin.action.trigger()
    dialog = plugin.dialog
    assert dialog is not None and dialog.isVisible()
    assert dialog.windowTitle().startswith("FactSeg")
    for widget in ("layer_combo", "extent_combo", "resolution_spin", "units_combo", "band_combos", "endpoint_edit",
                   "local_radio", "model_widget", "python_widget", "patch_spin", "stride_spin", "batch_spin",
                   "output_widget", "polygons_check", "statistics_check"):
        assert getattr(dialog, widget) is not None
    dialog.close()


def test_unload_removes_everything(loaded_plugin, qgis_iface):
    import qgis.utils

    plugin, _ = loaded_plugin
    action = plugin.action
    # qgis.utils.unloadPlugin also forgets the modules its import hook recorded; that hook is not installed
    # outside the QGIS application, so call what it calls: the plugin's unload().
    plugin.unload()
    del qgis.utils.plugins["factseg"]
    qgis.utils.active_plugins.remove("factseg")
    assert QgsApplication.processingRegistry().algorithmById("factseg:segment") is None
    qgis_iface.removePluginRasterMenu.assert_any_call("&FactSeg", action)


def run_in_qgis_python(zip_path, tmp_path, lines: str, prelude: str = ""):
    """``lines`` run by QGIS's own Python (/usr/bin/python3, no .venv) with the zip's plugin on its path and a
    headless QgsApplication; returns the finished process."""
    import subprocess

    plugins = tmp_path / "plugins"
    unpack_plugin(zip_path, plugins)
    script = (f"{prelude}import sys\nsys.path.insert(0, {str(plugins)!r})\n"
              "from qgis.core import QgsApplication\napp = QgsApplication([], False); app.initQgis()\n" + lines)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["QT_QPA_PLATFORM"] = "offscreen"
    run = subprocess.run(["/usr/bin/python3", "-c", script], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    return run


def test_missing_pyzmq_gives_advice_not_a_traceback(plugin_zip, tmp_path):
    """QGIS's Python without pyzmq: the plugin still loads and says what to install."""
    run = run_in_qgis_python(plugin_zip, tmp_path, (
        "import factseg\n"
        "plugin = factseg.classFactory(None)\n"
        "plugin.initGui(); plugin.unload()\n"
        "print(type(plugin).__name__, '|', plugin.message)\n"), prelude="import sys; sys.modules['zmq'] = None\n")
    assert "MissingDependencyPlugin | FactSeg needs pyzmq" in run.stdout
    assert "python3-zmq" in run.stdout


def test_installed_plugin_imports_only_the_client_side_of_worker(plugin_zip, tmp_path):
    """In QGIS's own Python, the installed plugin imports worker.client and worker.io as its own subpackage
    (factseg.worker…), changes no sys.path entry, and loads neither the server, factseg_core nor torch."""
    import json

    assert zipfile.ZipFile(plugin_zip).read("factseg/worker-requirements.txt")  # for Set up worker…
    run = run_in_qgis_python(plugin_zip, tmp_path, (
        "import json\n"
        "before = list(sys.path)\n"
        "import factseg, factseg.plugin, factseg.processing_provider.segment_algorithm, factseg.dialog\n"
        "print(json.dumps({'path_changed': sys.path != before, 'modules': sorted(sys.modules)}))\n"))
    report = json.loads(run.stdout.strip().splitlines()[-1])
    modules = report["modules"]
    assert not report["path_changed"]
    assert "factseg.worker.client.client" in modules and "factseg.worker.io.outputs" in modules
    assert "factseg.factseg_contract.limits" in modules  # the shared contract, vendored beside worker
    assert not [m for m in modules if m == "factseg_contract" or m.startswith("factseg_contract.")]
    assert not [m for m in modules if m == "worker" or m.startswith("worker.")]
    assert not [m for m in modules if m.startswith(("factseg.worker.server", "factseg.factseg_core", "torch"))]


def test_local_worker_python_finds_one_contract(plugin_zip, tmp_path):
    """A local worker process (its own Python, PYTHONPATH=<plugin folder>) imports the zip's worker, factseg_core
    and factseg_contract as top-level packages, and both see the same contract objects."""
    import subprocess

    folder = unpack_plugin(plugin_zip, tmp_path / "plugins")
    script = ("import factseg_contract, factseg_core.config as c, worker.contract as w\n"
              "assert w.ClassTableError is factseg_contract.ClassTableError and c.PATCH_SIZE == w.PATCH_SIZE\n"
              "print(factseg_contract.__file__, c.__file__, w.__file__)\n")
    env = dict(os.environ, PYTHONPATH=str(folder))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert all(path.startswith(str(folder)) for path in run.stdout.split()), run.stdout
