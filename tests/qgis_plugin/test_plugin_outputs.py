"""factseg:segment never destroys or half-writes a user's file: outputs that are inputs, folders or unwritable
places are refused before any compute (one sentence), and the outputs of a run appear together or not at all."""
from __future__ import annotations

import pytest
from plugin_support import (
    PATCH,
    STRIDE,
    UTM_GT,
    recording_feedback,
    scene,
    write_geotiff,
)
from qgis.core import QgsProcessingException

pytestmark = pytest.mark.qgis


Errors = recording_feedback()


def run(worker, feedback, **params):
    import processing

    params = {"WORKER": worker.endpoint, "PATCH": PATCH, "STRIDE": STRIDE, **params}
    return processing.run("factseg:segment", params, feedback=feedback)


@pytest.mark.parametrize("case", ["input", "folder", "missing folder", "confidence is input", "same twice"])
def test_bad_outputs_refused_before_compute(provider, worker, tmp_path, case):
    src = write_geotiff(tmp_path / "in.tif", scene(64, 64), UTM_GT, 32633)
    before = src.read_bytes()
    (tmp_path / "folder.tif").mkdir()
    outputs = {
        "input": {"OUTPUT": str(src)},
        "folder": {"OUTPUT": str(tmp_path / "folder.tif")},
        "missing folder": {"OUTPUT": str(tmp_path / "nowhere" / "out.tif")},
        "confidence is input": {"OUTPUT": str(tmp_path / "out.tif"), "OUTPUT_CONFIDENCE": str(src)},
        "same twice": {"OUTPUT": str(tmp_path / "out.tif"), "OUTPUT_CONFIDENCE": str(tmp_path / "out.tif")},
    }[case]
    feedback = Errors()
    with pytest.raises(QgsProcessingException):
        run(worker, feedback, **{"INPUT": str(src), **outputs})
    words = {"input": "is the input", "folder": "existing folder", "missing folder": "does not exist",
             "confidence is input": "is the input", "same twice": "same file"}[case]
    assert any(words in e for e in feedback.errors), feedback.errors
    assert not feedback.progress  # nothing was computed
    assert src.read_bytes() == before
    assert not list(tmp_path.rglob(".*partial*"))


def test_outputs_committed_together(provider, worker, tmp_path):
    """The polygons cannot be written (a folder blocks their temporary file) after the raster was computed:
    neither the raster nor the polygons appear, and no partial file is left."""
    src = write_geotiff(tmp_path / "in.tif", scene(96, 96), UTM_GT, 32633)
    feedback = Errors()
    # another program takes the polygons' temporary name while the raster is computed (the run claimed the
    # names up front, so a folder there before the run is refused before any compute)
    feedback.progressChanged.connect(lambda value: value > 0 and (tmp_path / ".objects.partial.gpkg").mkdir(
        exist_ok=True))
    with pytest.raises(QgsProcessingException):
        run(worker, feedback, INPUT=str(src), OUTPUT=str(tmp_path / "out.tif"),
            OUTPUT_VECTOR=str(tmp_path / "objects.gpkg"), OUTPUT_CONFIDENCE=str(tmp_path / "conf.tif"))
    assert feedback.progress  # the raster was computed first
    assert not (tmp_path / "out.tif").exists() and not (tmp_path / "objects.gpkg").exists()
    assert not (tmp_path / "conf.tif").exists() and not (tmp_path / "out_confidence.tif").exists()
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == [".objects.partial.gpkg"]


def test_confidence_and_tta_outputs(provider, worker, tmp_path):
    from osgeo import gdal

    src = write_geotiff(tmp_path / "in.tif", scene(96, 96), UTM_GT, 32633)
    (tmp_path / "conf").mkdir()
    result = run(worker, Errors(), INPUT=str(src), OUTPUT=str(tmp_path / "out.tif"), TTA=True,
                 OUTPUT_CONFIDENCE=str(tmp_path / "conf" / "confidence.tif"), OUTPUT_VECTOR=str(tmp_path / "o.gpkg"))
    conf = gdal.Open(result["OUTPUT_CONFIDENCE"])
    assert result["OUTPUT_CONFIDENCE"] == str(tmp_path / "conf" / "confidence.tif")
    assert conf.GetGeoTransform() == UTM_GT and conf.GetRasterBand(1).DataType == gdal.GDT_Float32
    values = conf.GetRasterBand(1).ReadAsArray()
    assert ((values > 0) & (values <= 1)).all()
    assert not (tmp_path / "out_confidence.tif").exists()
    from osgeo import ogr

    polygons = ogr.Open(result["OUTPUT_VECTOR"])  # kept: its layer dies with it
    layer = polygons.GetLayer(0)
    names = [layer.GetLayerDefn().GetFieldDefn(i).GetName() for i in range(layer.GetLayerDefn().GetFieldCount())]
    assert {"class_id", "class_name", "area_m2", "mean_confidence"} <= set(names)
    feature = layer.GetNextFeature()
    assert feature is not None and 0 < feature.GetField("mean_confidence") <= 1


def test_vrt_source_file_is_an_input(provider, worker, tmp_path):
    """A VRT reads other files: writing over one of them is refused too (it would destroy the imagery)."""
    from osgeo import gdal

    src = write_geotiff(tmp_path / "in.tif", scene(64, 64), UTM_GT, 32633)
    before = src.read_bytes()
    gdal.BuildVRT(str(tmp_path / "mosaic.vrt"), [str(src)]).FlushCache()
    feedback = Errors()
    with pytest.raises(QgsProcessingException) as raised:
        run(worker, feedback, INPUT=str(tmp_path / "mosaic.vrt"), OUTPUT=str(src))
    assert "is the input" in " ".join([str(raised.value), *feedback.errors])
    assert src.read_bytes() == before
