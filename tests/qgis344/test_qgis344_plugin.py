"""The plugin in QGIS 3.44 (Debian 13 root: Python 3.13, numpy 2): QGIS 3.44's own plugin manager lists the built
plugin for 3.44 and 4.x, and the real desktop window under Xvfb runs tests/desktop_driver.py (the same driver the
3.22 desktop test uses) against a CURVE worker of the host: the action opens the dialog, Check worker answers, a job
runs through the dialog and through processing.runAndLoadResults, and QGIS 3.44's renderer shows the result over
the imagery legibly.
"""
from __future__ import annotations

import json
import shutil

import pytest
from plugin_support import UTM_GT, build_plugin_zip, imagery, mixed_checkpoint, start_curve_worker, unpack_plugin
from plugin_support import write_geotiff as write_tif
from project_paths import REPO_ROOT
from qgis344_support import desktop_profile

pytestmark = pytest.mark.qgis
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def plugins_344(qgis344_root, tmp_path_factory):
    """A folder holding factseg/ unpacked from the built zip, and the helper scripts, on the shared /tmp."""
    tmp = tmp_path_factory.mktemp("qgis344_plugin")
    unpack_plugin(build_plugin_zip(tmp), tmp / "plugins")
    for script in ("plugin_manager_probe.py", "desktop_driver.py"):
        shutil.copy(REPO_ROOT / "tests" / script, tmp / script)
    return qgis344_root, tmp


def test_qgis_344_plugin_manager_lists_the_plugin(plugins_344):
    root, tmp = plugins_344
    env = {"QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(tmp / "manager")}
    versions = ["current", "3.22", "3.44", "4.0", "4.2", "5.0"]
    status, output = root.run(["/usr/bin/python3", str(tmp / "plugin_manager_probe.py"), str(tmp / "plugins" /
                                                                                               "factseg"), *versions],
                              env, tmp, timeout=180)
    assert status == 0, output[-3000:]
    seen = json.loads(output.strip().splitlines()[-1])
    assert seen["current"]["compared_as"].startswith("3.44."), seen["current"]
    for version in versions[:-1]:
        assert seen[version]["error"] == "", f"QGIS 3.44's installer, as QGIS {version}: {seen[version]}"
    assert seen["5.0"]["error"] == "incompatible"


@pytest.fixture(scope="module")
def desktop_344(plugins_344, tiny_model):
    """One run of QGIS 3.44's desktop under Xvfb with the driver; its results.json."""
    root, tmp = plugins_344
    if not (root.path / "usr" / "bin" / "xvfb-run").exists():
        pytest.fail("the QGIS 3.44 root has no xvfb-run (scripts/qgis344_root.sh installs xvfb)")
    pixels = imagery()
    image = write_tif(tmp / "imagery.tif", pixels, UTM_GT, 32633)
    checkpoint = mixed_checkpoint(tiny_model, pixels, tmp / "mixed.pt")
    worker, keys = start_curve_worker(checkpoint, tmp / "keys")
    profiles = desktop_profile(tmp / "qgis", tmp / "plugins", "34400")
    config = {"endpoint": worker.endpoint, "server_key": str(keys["server_public"]),
              "client_key": str(keys["client_secret"]), "image": str(image), "patch": 128, "stride": 64,
              "output": str(tmp / "classes.tif"), "output2": str(tmp / "classes2.tif"),
              "vector2": str(tmp / "objects2.gpkg"), "dialog_png": str(tmp / "dialog.png"),
              "result_png": str(tmp / "result.png"), "results": str(tmp / "results.json"), "timeout_s": 150,
              "guide_png": str(tmp / "guide.png"), "bare_python": "/usr/bin/python3", "python": "/usr/bin/python3"}
    (tmp / "config.json").write_text(json.dumps(config))
    (tmp / "auth").mkdir()
    env = {"FACTSEG_DESKTOP_CONFIG": str(tmp / "config.json"), "XDG_RUNTIME_DIR": str(tmp),
           "FACTSEG_DEMO_MODEL": str(checkpoint)}  # the guide offers it as "the demo model"
    command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "/usr/bin/qgis", "--nologo", "--noversioncheck",
               "--profiles-path", str(profiles), "--authdbdirectory", str(tmp / "auth"), "--code",
               str(tmp / "desktop_driver.py")]
    try:
        status, output = root.run(command, env, tmp, timeout=TIMEOUT_S)
    finally:
        worker.stop()
    (tmp / "qgis344.log").write_text(output)  # kept with the screenshots, for a human to read
    assert (tmp / "results.json").is_file(), f"QGIS 3.44 wrote no results (exit {status}):\n{output[-3000:]}"
    results = json.loads((tmp / "results.json").read_text())
    assert "exception" not in results, f"{results['exception']}\nQGIS 3.44 said:\n{output[-3000:]}"
    return results, tmp, output


def test_qgis_344_desktop_action_dialog_and_check_worker(desktop_344):
    results, tmp, _ = desktop_344
    assert results["plugin_loaded"] and "/profiles/default/python/plugins/factseg/" in results["plugin_file"]
    assert results["action_found"] and results["dialog_visible"]
    assert results["check_answered"] and "CURVE-authenticated" in results["check_label"]
    assert (tmp / "dialog.png").stat().st_size > 10_000
    # Debian 13's fonts wrap differently: the legend still sits above the Windows row, the dialog fits the screen
    legend = results["legend_label"]
    assert legend["height"] >= legend["needs"] and results["legend_bottom"] < results["windows_top"], results
    assert results["buttons_in_view"] and results["dialog_size"][1] <= 1000, results
    assert results["demo_link"]["local"] and results["bare_python_refused"], results  # the first-run path


def test_qgis_344_desktop_job_renders_legibly(desktop_344):
    results, tmp, _ = desktop_344
    assert results["dialog_error"] == "" and results["run_finished"] and results["run_error"] is None
    render = results["dialog_render"]
    assert 0.3 < render["background_share"] < 0.95 and render["object_share"] > 0.03, render
    assert render["background_change"] < 8.0 and render["object_change"] > 40.0, render
    style = results["dialog_raster_style"]
    assert style["type"] == "paletted" and all(label and not label.isdigit() for _, label, _ in style["classes"])
    vector = results["dialog_vector_style"]
    assert vector["type"] == "categorizedSymbol" and vector["field"] == "class_id"
    assert results["processing_raster_style"] == style and results["processing_vector_style"] == vector
    assert results["processing_render"]["object_change"] > 40.0, results["processing_render"]


def test_qgis_344_desktop_log_has_no_python_errors(desktop_344):
    """Python 3.13 / numpy 2 / Qt warnings from the plugin's own code show up here first."""
    _, _, output = desktop_344
    bad = [line for line in output.splitlines() if "Traceback" in line or "factseg" in line.lower()
           and ("Warning" in line or "Error" in line)]
    assert not bad, "\n".join(bad)
