"""``python -m worker.segment``: a real GeoTIFF in, a real worker, a class GeoTIFF (and polygons) out."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, osr
from worker_support import ARGS, GT, PYTHON, REPO, free_tcp_endpoint, reference, run_cli, start_worker, write_rgb

from worker.io.raster_output import partial_path

gdal.UseExceptions()
@pytest.fixture(scope="module")
def worker(tiny_checkpoint, tmp_path_factory):
    with start_worker(tiny_checkpoint, f"ipc://{tmp_path_factory.mktemp('cli')}/w.ipc") as w:
        yield w


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    pixels = rng.integers(1, 256, (150, 190, 3), dtype=np.uint8)
    pixels[100:, :40] = 0  # nodata corner (value 0 on every band)
    valid = np.ones(pixels.shape[:2], bool)
    valid[100:, :40] = False
    return write_rgb(tmp_path_factory.mktemp("scene") / "scene.tif", pixels, nodata=0), pixels, valid


def expected_classes(model, pixels: np.ndarray, valid: np.ndarray) -> np.ndarray:
    from factseg_core.engine import NODATA_FILL

    painted = pixels.copy()
    painted[~valid] = NODATA_FILL
    classes = reference(model, painted, 64, 32).argmax(0).astype(np.uint8)
    classes[~valid] = 255
    return classes


def test_cli_writes_the_class_geotiff_and_polygons(worker, scene, tiny_model, tmp_path: Path) -> None:
    path, pixels, valid = scene
    output, vector, stats_path = tmp_path / "classes.tif", tmp_path / "objects.gpkg", tmp_path / "stats.json"
    result = run_cli(str(path), str(output), "--connect", worker.endpoint, *ARGS, "--vector", str(vector),
                     "--confidence", "--stats-json", str(stats_path))
    assert result.returncode == 0, result.stderr
    assert f"wrote {output}" in result.stdout
    ds = gdal.Open(str(output))
    assert (ds.RasterXSize, ds.RasterYSize) == (190, 150)
    assert ds.GetGeoTransform() == pytest.approx(GT)
    assert osr.SpatialReference(ds.GetProjection()).GetAuthorityCode(None) == "32633"
    band = ds.GetRasterBand(1)
    assert band.DataType == gdal.GDT_Byte and band.GetNoDataValue() == 255
    assert band.GetCategoryNames()[1] == "ship" and band.GetColorTable().GetColorEntry(14)[:3] == (0, 127, 255)
    assert ds.GetMetadata("IMAGE_STRUCTURE").get("COMPRESSION") == "DEFLATE"
    np.testing.assert_array_equal(band.ReadAsArray(), expected_classes(tiny_model, pixels, valid))
    assert (tmp_path / "classes_confidence.tif").exists()
    stats = json.loads(stats_path.read_text())
    assert stats["chunks"] == 9 and stats["polygons"] > 0
    assert sum(c["pixels"] for c in stats["classes"]) == valid.sum()
    assert gdal.OpenEx(str(vector)).GetLayer(0).GetFeatureCount() == stats["polygons"]
    assert not list(tmp_path.glob(".*partial*"))


def test_cli_extent_keeps_the_input_grid(worker, scene, tiny_model, tmp_path: Path) -> None:
    path, pixels, valid = scene
    # x 500010.2..500040 → columns 20..80; y 4499960..4499980.1 → rows 39..80 (snapped outwards to whole pixels)
    output = tmp_path / "crop.tif"
    result = run_cli(str(path), str(output), "--connect", worker.endpoint, *ARGS,
                     "--extent", "500010.2,4499960,500040,4499980.1")
    assert result.returncode == 0, result.stderr
    ds = gdal.Open(str(output))
    assert (ds.RasterYSize, ds.RasterXSize) == (41, 60)
    assert ds.GetGeoTransform() == pytest.approx((500010.0, 0.5, 0.0, 4499980.5, 0.0, -0.5))
    crop = (slice(39, 80), slice(20, 80))
    np.testing.assert_array_equal(ds.GetRasterBand(1).ReadAsArray(),
                                  expected_classes(tiny_model, pixels[crop], valid[crop]))


def test_cli_input_errors_are_clear(worker, scene, tmp_path: Path) -> None:
    missing = run_cli(str(tmp_path / "nope.tif"), str(tmp_path / "o.tif"), "--connect", worker.endpoint)
    assert missing.returncode == 2 and "cannot open" in missing.stderr
    floats = write_rgb(tmp_path / "f.tif", np.zeros((20, 20, 3), np.float32), dtype=gdal.GDT_Float32)
    wrong = run_cli(str(floats), str(tmp_path / "o.tif"), "--connect", worker.endpoint)
    assert wrong.returncode == 2 and "expects 8-bit RGB" in wrong.stderr
    outside = run_cli(str(scene[0]), str(tmp_path / "o.tif"), "--connect", worker.endpoint, "--extent", "0,0,1,1")
    assert outside.returncode == 2 and "does not overlap" in outside.stderr
    assert not (tmp_path / "o.tif").exists()


def test_worker_killed_mid_run_leaves_no_output(tiny_checkpoint, scene, tmp_path: Path) -> None:
    path = scene[0]
    doomed = start_worker(tiny_checkpoint, free_tcp_endpoint())
    output = tmp_path / "never.tif"
    partial = partial_path(output)
    cli = subprocess.Popen(
        [PYTHON, "-m", "worker.segment", str(path), str(output), "--connect", doomed.endpoint, "--quiet",
         "--patch", "64", "--stride", "8", "--chunk-size", "64", "--timeout", "5", "--retries", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180  # generous: CI machines can be loaded
        while '"chunk_done"' not in doomed.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert '"chunk_done"' in doomed.log_path.read_text(), "the worker never finished a chunk"
        assert cli.poll() is None and partial.exists(), cli.stderr.read() if cli.poll() is not None else ""
        doomed.process.kill()
        _, stderr = cli.communicate(timeout=60)
    finally:
        doomed.stop()
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 1
    assert "no answer" in stderr and "no output written" in stderr
    assert not output.exists() and not partial.exists()
