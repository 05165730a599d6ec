"""The plugin in the real QGIS desktop window (Xvfb), as an analyst meets it: installed from the built zip into a
fresh profile, the Segment Layer action opens the dialog, a job runs through it against a real CURVE worker on
tcp loopback, and the map QGIS renders is checked — on background pixels it is the imagery (mean change < 8/255),
on object pixels it differs clearly (> 40/255); the polygons are categorized by class. processing.runAndLoadResults
in the same desktop gives the same styling. Screenshots of the dialog and of the result are saved (README/docs:
FACTSEG_SCREENSHOTS=DIR copies them there).
"""
from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from plugin_support import (
    UTM_GT,
    build_plugin_zip,
    imagery,
    mixed_checkpoint,
    start_curve_worker,
    unpack_plugin,
    write_geotiff,
)
from project_paths import REPO_ROOT, VENV_PYTHON

pytestmark = pytest.mark.qgis
DRIVER = REPO_ROOT / "tests" / "desktop_driver.py"
QGIS = "/usr/bin/qgis"
TIMEOUT_S = 300
BARE_PYTHON = "/usr/bin/python3"  # Debian's Python, without torch
DEMO_MODEL = REPO_ROOT / "demo_data" / "model" / "final.pt"  # scripts/demo.py (make demo) trains it here
DEMO_SCENE = REPO_ROOT / "demo_data" / "synthetic" / "scene" / "scene.tif"


def fresh_profile(root: Path, zip_path: Path) -> Path:
    """A profiles folder with one 'default' profile: the zip's plugin installed and enabled in QGIS3.ini."""
    profile = root / "profiles" / "default"
    unpack_plugin(zip_path, profile / "python" / "plugins")
    ini = configparser.ConfigParser()
    ini.optionxform = str
    ini["PythonPlugins"] = {"factseg": "true", "processing": "true"}
    ini["qgis"] = {"checkVersion": "false", "showTips322": "false", "allowVersionCheck": "false"}
    ini["migration"] = {"firstRunVersionFlag": "32200", "settings": "true"}
    ini["app"] = {"plugin_installer\\checkOnStart": "false"}
    (profile / "QGIS").mkdir(parents=True)
    with open(profile / "QGIS" / "QGIS3.ini", "w", encoding="utf-8") as handle:
        ini.write(handle, space_around_delimiters=False)
    return root


def scene_and_model(tiny_model, tmp: Path) -> tuple[Path, Path, int, int]:
    """For README screenshots (FACTSEG_SCREENSHOTS): the demo model on the demo scene (`make demo` made both), a
    meaningful result; otherwise a crafted checkpoint over a crop of the real iSAID sample (fast, always there)."""
    if os.environ.get("FACTSEG_SCREENSHOTS"):
        if not (DEMO_MODEL.is_file() and DEMO_SCENE.is_file()):
            pytest.skip(f"screenshots are made with the demo model: run `make demo` first ({DEMO_MODEL})")
        return DEMO_SCENE, DEMO_MODEL, 512, 256
    pixels = imagery()
    image = write_geotiff(tmp / "imagery.tif", pixels, UTM_GT, 32633)
    return image, mixed_checkpoint(tiny_model, pixels, tmp / "mixed.pt"), 128, 64


@pytest.fixture(scope="module")
def desktop_run(tiny_model, tmp_path_factory):
    if shutil.which("xvfb-run") is None or not Path(QGIS).exists():
        pytest.skip("the desktop test needs xvfb-run (apt-get install xvfb) and the QGIS desktop")
    tmp = tmp_path_factory.mktemp("desktop")
    image, checkpoint, patch, stride = scene_and_model(tiny_model, tmp)
    worker, keys = start_curve_worker(checkpoint, tmp / "keys")
    profiles = fresh_profile(tmp / "qgis", build_plugin_zip(tmp))
    config = {"endpoint": worker.endpoint, "server_key": str(keys["server_public"]),
              "client_key": str(keys["client_secret"]), "image": str(image), "patch": patch, "stride": stride,
              "bare_python": BARE_PYTHON, "python": str(VENV_PYTHON), "guide_png": str(tmp / "guide.png"),
              "output": str(tmp / "classes.tif"), "output2": str(tmp / "classes2.tif"),
              "vector2": str(tmp / "objects2.gpkg"), "dialog_png": str(tmp / "dialog.png"),
              "result_png": str(tmp / "result.png"), "results": str(tmp / "results.json"), "timeout_s": 150}
    (tmp / "config.json").write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items()
           if k not in ("QT_QPA_PLATFORM", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(FACTSEG_DESKTOP_CONFIG=str(tmp / "config.json"), HOME=str(tmp), PATH="/usr/bin:/bin",
               FACTSEG_DEMO_MODEL=str(checkpoint))  # the guide offers it as "the demo model"
    command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", QGIS, "--nologo", "--noversioncheck",
               "--profiles-path", str(profiles), "--authdbdirectory", str(tmp / "auth"), "--code", str(DRIVER)]
    (tmp / "auth").mkdir()
    try:
        done = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        worker.stop()
    assert (tmp / "results.json").is_file(), f"QGIS wrote no results (exit {done.returncode}):\n{done.stderr[-3000:]}"
    results = json.loads((tmp / "results.json").read_text())
    assert "exception" not in results, results["exception"]
    target = os.environ.get("FACTSEG_SCREENSHOTS")
    if target:
        for name in ("dialog.png", "result.png"):
            shutil.copy(tmp / name, Path(target) / f"desktop_{name}")
    return results, tmp


def test_action_opens_dialog_and_check_worker_is_authenticated(desktop_run):
    results, tmp = desktop_run
    assert results["plugin_loaded"] and "/profiles/default/python/plugins/factseg/" in results["plugin_file"]
    assert results["action_found"] and results["dialog_visible"]
    assert results["check_answered"] and "CURVE-authenticated" in results["check_label"]
    assert (tmp / "dialog.png").stat().st_size > 10_000


def test_dialog_job_renders_legibly_over_the_imagery(desktop_run):
    results, tmp = desktop_run
    assert results["dialog_error"] == "" and results["run_finished"] and results["run_error"] is None
    assert results["summary"] and "px in" in results["summary"]
    render = results["dialog_render"]
    assert 0.3 < render["background_share"] < 0.99 and render["object_share"] > 0.01, render
    assert render["background_change"] < 8.0, render  # the imagery shows through the background
    assert render["object_change"] > 40.0, render  # objects stand out
    style = results["dialog_raster_style"]
    assert style["type"] == "paletted" and all(label and not label.isdigit() for _, label, _ in style["classes"])
    assert 0 not in [value for value, _, _ in style["classes"]]
    vector = results["dialog_vector_style"]
    assert vector["type"] == "categorizedSymbol" and vector["field"] == "class_id"
    assert set(render["classes_present"]) <= {value for value, _, _ in vector["categories"]}
    assert (tmp / "result.png").stat().st_size > 50_000


def test_processing_run_and_load_results_styles_the_same(desktop_run):
    results, _ = desktop_run
    assert results["processing_raster_style"] == results["dialog_raster_style"]
    assert results["processing_vector_style"] == results["dialog_vector_style"]
    render = results["processing_render"]
    assert render["background_change"] < 8.0 and render["object_change"] > 40.0, render


def test_first_run_guide_points_to_set_up_a_model_and_the_demo_model(desktop_run):
    results, tmp = desktop_run
    guide = results["guide"]
    assert guide["visible"] and guide["height"] >= guide["needs"], guide  # shown whole on a fresh profile
    for words in ("Set up worker…", "Start a local worker", "https://github.com/Junjue-Wang/FactSeg",
                  "factseg50.pth", "use the demo model"):
        assert words in guide["text"], words
    assert results["setup_enabled_in_connect_mode"]
    assert results["demo_link"]["local"] and results["demo_link"]["model"].endswith(".pt")
    assert (tmp / "guide.png").stat().st_size > 10_000


def test_worker_python_without_torch_is_caught_before_the_run_in_full(desktop_run):
    results, _ = desktop_run
    status = results["bare_python_status"]
    assert results["python_checked"] and "lacks torch" in status["text"] and "Set up worker" in status["text"]
    assert status["lines"] >= 2 and status["height"] >= status["needs"], status  # wrapped, never clipped
    assert status["inside_parent"], status  # and its row holds it whole
    assert results["bare_python_refused"] and "lacks torch" in results["bare_python_error"]


def test_legend_lists_the_classes_found_and_polygons_are_outlined(desktop_run):
    results, _ = desktop_run
    found = results["dialog_render"]["classes_present"]
    assert [value for value, _, _ in results["dialog_raster_style"]["classes"]] == found
    vector = results["dialog_vector_style"]
    assert [value for value, _, _ in vector["categories"]] == found
    assert all(alpha <= 80 for alpha in vector["fill_alpha"]) and all(mm >= 0.5 for mm in vector["outline_mm"])
    assert all(vector["outline_differs"]) and results["polygon_change"] > 3.0, results["polygon_change"]
    legend = results["legend_label"]
    assert legend["height"] >= legend["needs"] and results["legend_bottom"] < results["windows_top"], results
    assert results["buttons_in_view"] and results["dialog_size"][1] <= 1000, results  # the screen is 1000 px high


def test_summary_stays_visible_after_the_run(desktop_run):
    results, _ = desktop_run
    bar = results["message_bar"]
    assert bar["is_summary"] and bar["visible"], bar
    assert bar["text"].startswith(results["summary"].split(". ")[0] + ". Found: ") and len(bar["text"]) < 180, bar
    assert results["dialog_layer_names"] == ["imagery — FactSeg classes", "imagery — FactSeg objects"] or \
        results["dialog_layer_names"][0].endswith("— FactSeg classes")
    assert all(name.endswith(("— FactSeg classes", "— FactSeg objects")) for name in results["processing_layer_names"])
