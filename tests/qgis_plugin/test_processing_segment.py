"""factseg:segment through Processing (processing.run and qgis_process.bin) against a real worker process.

Every output is checked the way an analyst would rely on it: CRS, geotransform, colour table, category names,
and class ids equal to what the worker itself answers for the same pixels (read independently with GDAL).
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from plugin_support import (
    GEO_GT,
    PATCH,
    STRIDE,
    UTM_GT,
    build_plugin_zip,
    read_classes,
    recording_feedback,
    reference_classes,
    scene,
    unpack_plugin,
    write_geotiff,
)
from qgis.core import QgsApplication, QgsProcessingException

pytestmark = pytest.mark.qgis



@pytest.fixture(scope="module")
def worker_classes(worker):
    from worker.client import WorkerClient

    with WorkerClient(worker.endpoint) as client:
        return client.info()["classes"]


RecordingFeedback = recording_feedback()


def run_segment(provider, feedback=None, **params):
    import processing

    params.setdefault("PATCH", PATCH)
    params.setdefault("STRIDE", STRIDE)
    return processing.run("factseg:segment", params, feedback=feedback or RecordingFeedback())


def check_class_raster(path, classes, geotransform, epsg):
    ids, ds = read_classes(path)
    assert ds.GetRasterBand(1).DataType == gdal.GDT_Byte
    assert ds.GetRasterBand(1).GetNoDataValue() == 255
    np.testing.assert_allclose(ds.GetGeoTransform(), geotransform, rtol=0, atol=1e-9)
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    want = osr.SpatialReference()
    want.ImportFromEPSG(epsg)
    assert srs.IsSame(want), srs.ExportToWkt()
    table = ds.GetRasterBand(1).GetColorTable()
    names = ds.GetRasterBand(1).GetCategoryNames()
    for c in classes:
        assert table.GetColorEntry(c["id"])[:3] == tuple(c["color"])
        assert names[c["id"]] == c["name"]
    return ids


def rgb_of(path) -> np.ndarray:
    ds = gdal.Open(str(path))
    return np.ascontiguousarray(ds.ReadAsArray().transpose(1, 2, 0))


def test_provider_registers_algorithm(provider):
    alg = QgsApplication.processingRegistry().algorithmById("factseg:segment")
    assert alg is not None
    names = {p.name() for p in alg.parameterDefinitions()}
    assert {"INPUT", "EXTENT", "RESOLUTION", "WORKER", "MODEL", "PATCH", "STRIDE", "OUTPUT", "OUTPUT_VECTOR"} <= names


def test_projected_crs_whole_layer_with_polygons(provider, worker, worker_classes, tmp_path):
    src = write_geotiff(tmp_path / "utm.tif", scene(160, 200), UTM_GT, 32633)
    feedback = RecordingFeedback()
    result = run_segment(provider, feedback, INPUT=str(src), WORKER=worker.endpoint,
                         OUTPUT=str(tmp_path / "out.tif"), OUTPUT_VECTOR=str(tmp_path / "objects.gpkg"))
    assert feedback.progress and feedback.progress[-1] == pytest.approx(100.0)
    ids = check_class_raster(result["OUTPUT"], worker_classes, UTM_GT, 32633)
    expected = reference_classes(worker.endpoint, rgb_of(src))
    np.testing.assert_array_equal(ids, expected)
    assert len(np.unique(ids)) > 1
    assert result["FEATURE_COUNT"] > 0 and os.path.isfile(result["OUTPUT_VECTOR"])
    assert not list(tmp_path.glob(".*partial*"))


def test_geographic_crs(provider, worker, worker_classes, tmp_path):
    src = write_geotiff(tmp_path / "geo.tif", scene(150, 180, seed=1), GEO_GT, 4326)
    result = run_segment(provider, INPUT=str(src), WORKER=worker.endpoint, OUTPUT=str(tmp_path / "out.tif"))
    ids = check_class_raster(result["OUTPUT"], worker_classes, GEO_GT, 4326)
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, rgb_of(src)))


def test_geographic_crs_ground_resolution_in_cm(provider, worker, tmp_path):
    """1 m/px on a lat/lon raster: degrees per pixel differ along x and y, ground size is 1 m both ways."""
    src = write_geotiff(tmp_path / "geo.tif", scene(150, 180, seed=1), GEO_GT, 4326)
    result = run_segment(provider, INPUT=str(src), WORKER=worker.endpoint, RESOLUTION=100.0, RESOLUTION_UNITS=1,
                         OUTPUT=str(tmp_path / "out.tif"))
    ds = gdal.Open(result["OUTPUT"])
    gt = ds.GetGeoTransform()
    lat = np.radians(45.0 - 75 * 5e-6)
    # WGS 84 metres per degree at this latitude (meridional and parallel radii of curvature)
    a, e2 = 6378137.0, 6.69437999014e-3
    m_lat = np.pi / 180 * a * (1 - e2) / (1 - e2 * np.sin(lat) ** 2) ** 1.5
    m_lon = np.pi / 180 * a * np.cos(lat) / np.sqrt(1 - e2 * np.sin(lat) ** 2)
    assert gt[1] * m_lon == pytest.approx(1.0, rel=2e-3)
    assert -gt[5] * m_lat == pytest.approx(1.0, rel=2e-3)
    assert (gt[0], gt[3]) == pytest.approx((GEO_GT[0], GEO_GT[3]))
    assert ds.RasterXSize == int(np.ceil(180 * 5e-6 / gt[1] - 1e-6))


def test_multiband_16bit_with_band_mapping(provider, worker, worker_classes, tmp_path):
    data = scene(128, 160, bands=4, seed=2, scale=4000.0).astype(np.uint16) + 100
    src = write_geotiff(tmp_path / "ms16.tif", data, UTM_GT, 32633, gdal.GDT_UInt16)
    result = run_segment(provider, INPUT=str(src), WORKER=worker.endpoint, BANDS="3,2,1", SCALING=1,
                         OUTPUT=str(tmp_path / "out.tif"))
    ids = check_class_raster(result["OUTPUT"], worker_classes, UTM_GT, 32633)
    rgb = np.empty((128, 160, 3), np.uint8)
    for channel, band in enumerate((3, 2, 1)):  # min/max stretch of each band, computed here independently
        values = data[band - 1].astype(np.float64)
        low, high = values.min(), values.max()
        rgb[..., channel] = np.clip(np.rint((values - low) * 255.0 / (high - low)), 0, 255)
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, rgb))


def test_multiband_16bit_default_scaling(provider, worker, tmp_path):
    data = scene(128, 160, bands=4, seed=2, scale=4000.0).astype(np.uint16)
    src = write_geotiff(tmp_path / "ms16.tif", data, UTM_GT, 32633, gdal.GDT_UInt16)
    result = run_segment(provider, INPUT=str(src), WORKER=worker.endpoint, OUTPUT=str(tmp_path / "out.tif"))
    ids, _ = read_classes(result["OUTPUT"])
    assert ids.shape == (128, 160) and (ids < 16).all()


def test_nodata_pixels_stay_nodata(provider, worker, worker_classes, tmp_path):
    data = scene(160, 200, seed=3).astype(np.uint8)
    data[data == 0] = 1
    data[:, 20:70, 30:90] = 0  # a hole in every band
    data[:, :, 170:] = 0  # a nodata strip, wider than the stride
    src = write_geotiff(tmp_path / "holes.tif", data, UTM_GT, 32633, nodata=0)
    result = run_segment(provider, INPUT=str(src), WORKER=worker.endpoint, OUTPUT=str(tmp_path / "out.tif"))
    ids = check_class_raster(result["OUTPUT"], worker_classes, UTM_GT, 32633)
    valid = (data != 0).all(axis=0)
    assert (ids[~valid] == 255).all()
    assert (ids[valid] < 16).all()
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, rgb_of(src), valid))


def test_extent_smaller_than_layer_snaps_to_pixels(provider, worker, worker_classes, tmp_path):
    src = write_geotiff(tmp_path / "utm.tif", scene(160, 200, seed=4), UTM_GT, 32633)
    # x 500010.2..500060.1, y 3999950.3..3999979.9 → pixel columns 20..121, rows 40..100 (snapped outwards)
    extent = "500010.2,500060.1,3999950.3,3999979.9 [EPSG:32633]"
    result = run_segment(provider, INPUT=str(src), EXTENT=extent, WORKER=worker.endpoint,
                         OUTPUT=str(tmp_path / "out.tif"))
    gt = (500010.0, 0.5, 0.0, 3999980.0, 0.0, -0.5)
    ids = check_class_raster(result["OUTPUT"], worker_classes, gt, 32633)
    assert ids.shape == (100 - 40, 121 - 20)
    window = rgb_of(src)[40:100, 20:121]
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, np.ascontiguousarray(window)))


def test_extent_in_another_crs(provider, worker, tmp_path):
    src = write_geotiff(tmp_path / "utm.tif", scene(160, 200, seed=4), UTM_GT, 32633)
    # the layer's top-left quarter, given in lat/lon
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsProject,
        QgsRectangle,
    )

    transform = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:32633"),
                                       QgsCoordinateReferenceSystem("EPSG:4326"), QgsProject.instance())
    box = transform.transformBoundingBox(QgsRectangle(500000, 3999960, 500050, 4000000))
    extent = f"{box.xMinimum()},{box.xMaximum()},{box.yMinimum()},{box.yMaximum()} [EPSG:4326]"
    result = run_segment(provider, INPUT=str(src), EXTENT=extent, WORKER=worker.endpoint,
                         OUTPUT=str(tmp_path / "out.tif"))
    ds = gdal.Open(result["OUTPUT"])
    gt = ds.GetGeoTransform()
    assert gt[0] == pytest.approx(500000.0) and gt[3] == pytest.approx(4000000.0)
    assert ds.RasterXSize in (100, 101) and ds.RasterYSize in (80, 81)


@pytest.mark.parametrize(
    ("extent", "words"),
    [
        ("600000,600100,3000000,3000100 [EPSG:32633]", "outside the raster"),
        ("500010,500010,3999950,3999980 [EPSG:32633]", "extent is empty"),
    ],
)
def test_bad_extents_explain_themselves(provider, worker, tmp_path, extent, words):
    src = write_geotiff(tmp_path / "utm.tif", scene(64, 64), UTM_GT, 32633)
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException):
        run_segment(provider, feedback, INPUT=str(src), EXTENT=extent, WORKER=worker.endpoint,
                    OUTPUT=str(tmp_path / "o.tif"))
    assert any(words in e for e in feedback.errors), feedback.errors
    assert not (tmp_path / "o.tif").exists()


def test_no_worker_and_no_model_is_explained(provider, tmp_path):
    src = write_geotiff(tmp_path / "utm.tif", scene(64, 64), UTM_GT, 32633)
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException):
        run_segment(provider, feedback, INPUT=str(src), OUTPUT=str(tmp_path / "o.tif"))
    assert any("WORKER endpoint" in e and "or a MODEL" in e for e in feedback.errors), feedback.errors


def test_unreachable_worker_is_explained(provider, tmp_path, monkeypatch):
    from qgis_plugin import job

    monkeypatch.setattr(job, "PROBE_TIMEOUT_S", 1.5)
    src = write_geotiff(tmp_path / "utm.tif", scene(64, 64), UTM_GT, 32633)
    feedback = RecordingFeedback()
    nobody = f"ipc://{tmp_path}/nobody.sock"
    with pytest.raises(QgsProcessingException) as raised:
        run_segment(provider, feedback, INPUT=str(src), WORKER=nobody, OUTPUT=str(tmp_path / "o.tif"))
    messages = [str(raised.value), *feedback.errors]
    assert any(f"worker at {nobody} does not answer" in e and "python -m worker" in e for e in messages), messages
    assert not (tmp_path / "o.tif").exists()


def test_local_worker_started_from_model(provider, tiny_checkpoint, worker, tmp_path):
    """WORKER empty: the algorithm starts its own worker with MODEL (and stops it at exit)."""
    from qgis_plugin import local_workers

    src = write_geotiff(tmp_path / "utm.tif", scene(96, 96, seed=5), UTM_GT, 32633)
    try:
        result = run_segment(provider, INPUT=str(src), MODEL=str(tiny_checkpoint),
                             WORKER_PYTHON=str(__import__("plugin_support").VENV_PYTHON), DEVICE=1,
                             OUTPUT=str(tmp_path / "out.tif"))
        ids, _ = read_classes(result["OUTPUT"])
        np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, rgb_of(src)))
        assert local_workers.running_endpoints() == []  # no GUI to own it: stopped after the run
    finally:
        local_workers.stop_all()


@pytest.fixture(scope="module")
def qgis_process_env(tmp_path_factory):
    """The built zip installed in a throw-away profile, for qgis_process.bin with QGIS's own Python (no .venv)."""
    tmp = tmp_path_factory.mktemp("qgis_process")
    plugins = tmp / "plugins"
    unpack_plugin(build_plugin_zip(tmp), plugins)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(plugins),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp / "profile"), PATH="/usr/bin:/bin")
    subprocess.run(["/usr/bin/qgis_process.bin", "plugins", "enable", "factseg"], env=env, check=True,
                   capture_output=True, text=True, timeout=120, cwd=tmp)
    return env


def qgis_process_run(env, cwd, *args):
    process = subprocess.Popen(["/usr/bin/qgis_process.bin", "run", "factseg:segment", "--", *args], env=env,
                               cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    return process.pid, output


def test_qgis_process_with_the_built_zip(worker, worker_classes, qgis_process_env, tmp_path):
    src = write_geotiff(tmp_path / "geo.tif", scene(150, 180, seed=6), GEO_GT, 4326)
    out = tmp_path / "out.tif"
    qgis_process_run(qgis_process_env, tmp_path, f"INPUT={src}", f"WORKER={worker.endpoint}", f"PATCH={PATCH}",
                     f"STRIDE={STRIDE}", f"OUTPUT={out}")
    ids = check_class_raster(out, worker_classes, GEO_GT, 4326)
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, rgb_of(src)))


def test_qgis_process_starts_a_local_worker_from_the_plugin_folder(worker, qgis_process_env, tiny_checkpoint,
                                                                   tmp_path):
    """WORKER empty: the installed plugin starts `python -m worker` from its own folder, and stops it at exit."""
    from plugin_support import VENV_PYTHON

    src = write_geotiff(tmp_path / "utm.tif", scene(96, 128, seed=10), UTM_GT, 32633)
    out = tmp_path / "out.tif"
    pid, output = qgis_process_run(qgis_process_env, tmp_path, f"INPUT={src}", f"MODEL={tiny_checkpoint}",
                                   f"WORKER_PYTHON={VENV_PYTHON}", "DEVICE=1", f"PATCH={PATCH}", f"STRIDE={STRIDE}",
                                   f"OUTPUT={out}")
    assert "Starting a local worker" in output
    ids, _ = read_classes(out)
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, rgb_of(src)))
    marker = f"factseg-worker-{pid}-".encode()
    leftovers = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes():
                leftovers.append(cmdline.parent.name)
        except OSError:
            continue
    assert not leftovers, f"local worker processes outlived qgis_process: {leftovers}"


def test_mask_polygons_limit_the_segmented_area(provider, worker, worker_classes, tmp_path):
    """MASK: only pixels whose centre lies inside the polygon are segmented; the extent is its bounding box."""
    from osgeo import ogr

    src = write_geotiff(tmp_path / "utm.tif", scene(160, 200, seed=8), UTM_GT, 32633)
    triangle = [(500010.0, 3999990.0), (500080.0, 3999990.0), (500010.0, 3999930.0)]
    gpkg = tmp_path / "aoi.gpkg"
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(gpkg))
    layer = ds.CreateLayer("aoi", srs=srs, geom_type=ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    ring = ", ".join(f"{x} {y}" for x, y in [*triangle, triangle[0]])
    feature.SetGeometry(ogr.CreateGeometryFromWkt(f"POLYGON (({ring}))"))
    layer.CreateFeature(feature)
    ds = None
    result = run_segment(provider, INPUT=str(src), MASK=str(gpkg), WORKER=worker.endpoint,
                         OUTPUT=str(tmp_path / "out.tif"))
    gt = (500010.0, 0.5, 0.0, 3999990.0, 0.0, -0.5)
    ids = check_class_raster(result["OUTPUT"], worker_classes, gt, 32633)
    assert ids.shape == (120, 140)
    rows, cols = np.mgrid[0:120, 0:140]
    x, y = 500010.0 + (cols + 0.5) * 0.5, 3999990.0 - (rows + 0.5) * 0.5
    inside = (x - 500010.0) / 70.0 + (3999990.0 - y) / 60.0 < 1.0  # below the hypotenuse
    assert (ids[~inside] == 255).all() and (ids[inside] < 16).all()
    window = np.ascontiguousarray(rgb_of(src)[20:140, 20:160])
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, window, inside))


def test_broken_model_for_local_worker_is_explained(provider, tmp_path):
    from plugin_support import VENV_PYTHON

    from qgis_plugin import local_workers

    broken = tmp_path / "not_a_model.pt"
    broken.write_text("this is not a checkpoint")
    src = write_geotiff(tmp_path / "utm.tif", scene(64, 64), UTM_GT, 32633)
    feedback = RecordingFeedback()
    try:
        with pytest.raises(QgsProcessingException) as raised:
            run_segment(provider, feedback, INPUT=str(src), MODEL=str(broken), WORKER_PYTHON=str(VENV_PYTHON),
                        DEVICE=1, OUTPUT=str(tmp_path / "o.tif"))
    finally:
        local_workers.stop_all()
    messages = [str(raised.value), *feedback.errors]
    said = [m for m in messages if "is not a FactSeg model file" in m and str(broken) in m]
    assert said and "\n" not in said[0] and "Traceback" not in said[0], messages


def test_degrees_resolution_mistake_is_explained(provider, worker, tmp_path):
    src = write_geotiff(tmp_path / "geo.tif", scene(64, 64), GEO_GT, 4326)
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException):
        run_segment(provider, feedback, INPUT=str(src), RESOLUTION=0.3, WORKER=worker.endpoint,
                    OUTPUT=str(tmp_path / "o.tif"))
    assert any("degrees" in e and "cm/px" in e for e in feedback.errors), feedback.errors


def test_loaded_output_is_styled_with_class_names(provider, worker, tmp_path):
    """As in the toolbox: the output is loaded into the project and styled by the post-processor."""
    import processing
    from qgis.core import QgsPalettedRasterRenderer, QgsProject

    src = write_geotiff(tmp_path / "utm.tif", scene(64, 64), UTM_GT, 32633)
    result = processing.runAndLoadResults("factseg:segment", {
        "INPUT": str(src), "WORKER": worker.endpoint, "PATCH": PATCH, "STRIDE": STRIDE,
        "OUTPUT": str(tmp_path / "out.tif")})
    QgsApplication.processEvents()
    try:
        layers = [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.source() == result["OUTPUT"]]
        assert len(layers) == 1
        renderer = layers[0].renderer()
        assert isinstance(renderer, QgsPalettedRasterRenderer)
        names = {s["id"]: s["name"].replace("_", " ") for s in json.loads(result["STATISTICS"]) if s["pixels"]}
        assert {int(c.value): c.label for c in renderer.classes()} == {k: v for k, v in names.items() if k}
    finally:
        QgsProject.instance().removeAllMapLayers()


@pytest.mark.parametrize(("key", "name", "words"), [("OUTPUT", "out.png", "GeoTIFF"),
                                                    ("OUTPUT_VECTOR", "objects.shp", "GeoPackage")])
def test_output_formats_are_checked(provider, worker, tmp_path, key, name, words):
    src = write_geotiff(tmp_path / "utm.tif", scene(64, 64), UTM_GT, 32633)
    params = {"INPUT": str(src), "WORKER": worker.endpoint, "OUTPUT": str(tmp_path / "out.tif")}
    params[key] = str(tmp_path / name)
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException):
        run_segment(provider, feedback, **params)
    assert any(words in e for e in feedback.errors), feedback.errors


def test_cancel_through_processing_feedback(provider, worker, tmp_path):
    class CancelAtStart(RecordingFeedback):
        def __init__(self) -> None:
            super().__init__()
            self.progressChanged.connect(lambda _value: self.cancel())

    src = write_geotiff(tmp_path / "utm.tif", scene(96, 96), UTM_GT, 32633)
    feedback = CancelAtStart()
    with pytest.raises(QgsProcessingException) as raised:
        run_segment(provider, feedback, INPUT=str(src), WORKER=worker.endpoint, OUTPUT=str(tmp_path / "o.tif"))
    assert "cancelled" in " ".join([str(raised.value), *feedback.errors])
    assert not list(tmp_path.glob("*o.tif*"))


@pytest.fixture(scope="module")
def curve_worker(tiny_checkpoint, tmp_path_factory):
    """A worker on tcp loopback that requires CURVE keys (server pair + one allowed client)."""
    from plugin_support import start_curve_worker

    running, keys = start_curve_worker(tiny_checkpoint, tmp_path_factory.mktemp("keys"))
    yield running, keys
    running.stop()


def test_qgis_process_with_curve_keys(curve_worker, worker, qgis_process_env, tmp_path):
    """qgis_process run factseg:segment … SERVER_KEY=… CLIENT_KEY=… against a CURVE worker on loopback."""
    running, keys = curve_worker
    src = write_geotiff(tmp_path / "utm.tif", scene(96, 128, seed=12), UTM_GT, 32633)
    out = tmp_path / "out.tif"
    qgis_process_run(qgis_process_env, tmp_path, f"INPUT={src}", f"WORKER={running.endpoint}",
                     f"SERVER_KEY={keys['server_public']}", f"CLIENT_KEY={keys['client_secret']}",
                     f"PATCH={PATCH}", f"STRIDE={STRIDE}", f"OUTPUT={out}")
    ids, _ = read_classes(out)
    np.testing.assert_array_equal(ids, reference_classes(worker.endpoint, rgb_of(src)))


def test_qgis_process_with_half_the_keys_is_refused(curve_worker, qgis_process_env, tmp_path):
    running, keys = curve_worker
    src = write_geotiff(tmp_path / "utm.tif", scene(64, 64), UTM_GT, 32633)
    process = subprocess.run(
        ["/usr/bin/qgis_process.bin", "run", "factseg:segment", "--", f"INPUT={src}", f"WORKER={running.endpoint}",
         f"SERVER_KEY={keys['server_public']}", f"OUTPUT={tmp_path / 'o.tif'}"],
        env=qgis_process_env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert process.returncode != 0
    assert "needs both keys" in process.stdout + process.stderr
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("wrong", ["server key", "client key", "no keys"])
def test_wrong_keys_fail_clearly(provider, curve_worker, tmp_path, monkeypatch, wrong):
    from qgis_plugin import job
    from worker.keys import generate

    monkeypatch.setattr(job, "PROBE_TIMEOUT_S", 1.5)
    running, keys = curve_worker
    other = generate(tmp_path / "other")  # a pair the worker has never seen
    params = {"server key": {"SERVER_KEY": str(other["server_public"]), "CLIENT_KEY": str(keys["client_secret"])},
              "client key": {"SERVER_KEY": str(keys["server_public"]), "CLIENT_KEY": str(other["client_secret"])},
              "no keys": {}}[wrong]
    src = write_geotiff(tmp_path / "utm.tif", scene(64, 64), UTM_GT, 32633)
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException) as raised:
        run_segment(provider, feedback, INPUT=str(src), WORKER=running.endpoint, OUTPUT=str(tmp_path / "o.tif"),
                    **params)
    message = " ".join([str(raised.value), *feedback.errors])
    if wrong == "no keys":
        assert "does not answer" in message, message
    else:
        assert "SERVER_KEY" in message and "CLIENT_KEY" in message, message
    assert not (tmp_path / "o.tif").exists()


def test_the_algorithm_opens_its_job_with_one_round_trip(provider, worker, worker_classes, tmp_path):
    """factseg:segment runs the pipeline `python -m worker.segment` runs: `open` is the job's one request before
    its first chunk (counted on the wire, through a real ZeroMQ proxy in front of the worker). Without RESOLUTION
    the model's ground resolution is read first (one ``info``); the pulse's pings are liveness, not round trips."""
    from worker_support import CountingProxy

    src = write_geotiff(tmp_path / "utm.tif", scene(96, 80), UTM_GT, 32633)
    for resolution, expected in ((UTM_GT[1], ["open"]), (0.0, ["info", "open"])):
        with CountingProxy(worker.endpoint) as proxy:
            result = run_segment(provider, INPUT=str(src), WORKER=proxy.endpoint, RESOLUTION=resolution,
                                 OUTPUT=str(tmp_path / f"o{resolution}.tif"),
                                 OUTPUT_VECTOR=str(tmp_path / f"o{resolution}.gpkg"))
        assert proxy.ops_before("segment") == expected, proxy.ops
    check_class_raster(result["OUTPUT"], worker_classes, UTM_GT, 32633)
