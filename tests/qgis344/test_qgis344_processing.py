"""The closed loop on a current QGIS: qgis_process of QGIS 3.44 (Debian 13 root: Python 3.13, numpy 2, GDAL 3.10)
with the plugin installed from the built zip runs factseg:segment, factseg:export_training_data and factseg:train
against real workers that the host's .venv started on loopback.

Each result is checked against what does not depend on that QGIS: the worker's own answer for the same pixels
(segment), the same export made by the host's QGIS 3.22 (export), and the host loading the model it wrote (train).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal
from plugin_support import (
    UTM_GT,
    box_ring,
    build_plugin_zip,
    read_classes,
    reference_classes,
    registered_provider,
    scene,
    unpack_plugin,
    write_geotiff,
    write_label_polygons,
)
from qgis344_support import qgis_process_profile
from worker_support import TINY_CONFIG, free_tcp_endpoint, start_worker

pytestmark = pytest.mark.qgis
PATCH, STRIDE = 128, 64
#: Labelled rectangles (row0, col0, row1, col1) on a 160×240 UTM scene, and their classes.
BOXES = [((20, 30, 50, 70), "vessel"), ((100, 40, 130, 60), "vehicle"), ((60, 180, 90, 220), "tank")]


@pytest.fixture(scope="module")
def qgis344(qgis344_root, tmp_path_factory):
    """(root, qgis_process environment, working folder): the zip's plugin enabled in a throw-away profile."""
    tmp = tmp_path_factory.mktemp("qgis344_process")
    plugins = tmp / "plugins"
    unpack_plugin(build_plugin_zip(tmp), plugins)
    return qgis344_root, qgis_process_profile(qgis344_root, plugins, tmp), tmp


@pytest.fixture(scope="module")
def worker(tiny_checkpoint):
    with start_worker(tiny_checkpoint, free_tcp_endpoint()) as running:
        yield running


def run_algorithm(qgis344, algorithm: str, *params: str, timeout: float = 300) -> str:
    root, env, tmp = qgis344
    status, output = root.run([root.qgis_process, "run", algorithm, "--", *params], env, tmp, timeout=timeout)
    assert status == 0, f"qgis_process 3.44 {algorithm} failed ({status}):\n{output[-4000:]}"
    return output


def test_qgis_process_344_lists_the_plugins_algorithms(qgis344):
    root, env, tmp = qgis344
    status, output = root.run([root.qgis_process, "list"], env, tmp, timeout=180)
    assert status == 0, output[-3000:]
    for algorithm in ("factseg:segment", "factseg:export_training_data", "factseg:train"):
        assert algorithm in output, output[-3000:]
    status, version = root.run(["/usr/bin/python3", "-c", "import numpy, sys; from qgis.core import Qgis; "
                                "print(Qgis.QGIS_VERSION, sys.version_info[:2], numpy.__version__)"], env, tmp)
    assert status == 0 and version.startswith("3.44"), version  # really the current QGIS, not the host's


def test_segment_on_qgis_344_matches_the_worker(qgis344, worker, tmp_path):
    src = write_geotiff(tmp_path / "utm.tif", scene(150, 180, seed=6), UTM_GT, 32633)
    out = tmp_path / "out.tif"
    run_algorithm(qgis344, "factseg:segment", f"INPUT={src}", f"WORKER={worker.endpoint}", f"PATCH={PATCH}",
                  f"STRIDE={STRIDE}", f"OUTPUT={out}")
    ids, ds = read_classes(out)
    np.testing.assert_allclose(ds.GetGeoTransform(), UTM_GT, rtol=0, atol=1e-9)
    assert ds.GetRasterBand(1).GetNoDataValue() == 255 and ds.GetRasterBand(1).GetColorTable() is not None
    rgb = np.ascontiguousarray(gdal.Open(str(src)).ReadAsArray().transpose(1, 2, 0))
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, rgb, patch=PATCH, stride=STRIDE))


def write_labels(path: Path) -> Path:
    return write_label_polygons(path, [(box_ring(box), name) for box, name in BOXES])


def export_arrays(folder: Path) -> dict[str, np.ndarray]:
    """Every image and mask of an export, by its path in the folder."""
    return {str(p.relative_to(folder)): gdal.Open(str(p)).ReadAsArray() for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def export_344(qgis344, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export344")
    raster = write_geotiff(tmp / "scene.tif", scene(160, 240, seed=3), UTM_GT, 32633)
    labels = write_labels(tmp / "labels.gpkg")
    params = {"INPUT": str(raster), "LABELS": str(labels), "CLASS_FIELD": "cls", "PATCH": 96}
    run_algorithm(qgis344, "factseg:export_training_data", *(f"{k}={v}" for k, v in params.items()),
                  f"OUTPUT={tmp / 'export'}")
    return tmp / "export", params


@pytest.fixture(scope="module")
def provider_322(qgis_processing):
    """The FactSeg provider in the host's own QGIS 3.22 (this process)."""
    yield from registered_provider()


def test_export_on_qgis_344_equals_the_export_on_qgis_322(export_344, provider_322, tmp_path):
    """The same raster and polygons exported by the host's QGIS 3.22 (processing.run) give the same folder."""
    import processing

    folder, params = export_344
    processing.run("factseg:export_training_data", {**params, "OUTPUT": str(tmp_path / "export")})
    manifest = json.loads((folder / "export.json").read_text())
    reference = json.loads((tmp_path / "export" / "export.json").read_text())
    assert manifest["tiles"] == reference["tiles"] and len(manifest["tiles"]) >= 2
    assert json.loads((folder / "classes.json").read_text()) == json.loads(
        (tmp_path / "export" / "classes.json").read_text())
    ours, theirs = export_arrays(folder), export_arrays(tmp_path / "export")
    assert ours.keys() == theirs.keys() and any("masks" in name for name in ours)
    for name, array in ours.items():
        np.testing.assert_array_equal(array, theirs[name], err_msg=name)


def test_train_on_qgis_344_writes_a_model_the_host_loads(qgis344, export_344, tiny_checkpoint, tmp_path):
    """factseg:train in QGIS 3.44 uploads the 3.44 export to a host worker and gets the fine-tuned model back."""
    from factseg_core import load_model

    folder, _ = export_344
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    model = tmp_path / "tuned.pt"
    with start_worker(tiny_checkpoint, free_tcp_endpoint()) as trainer:
        output = run_algorithm(qgis344, "factseg:train", f"DATA={folder}", "ITERATIONS=2", f"CONFIG={config}",
                               f"WORKER={trainer.endpoint}", f"OUTPUT_MODEL={model}", timeout=400)
    assert "Iteration 2/2" in output, output[-3000:]
    classes = json.loads((folder / "classes.json").read_text())
    assert load_model(str(model)).config.num_classes == len(classes) == 4
