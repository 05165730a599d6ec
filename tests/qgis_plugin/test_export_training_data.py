"""factseg:export_training_data through real Processing: polygons → iSAID-layout folder, read back with GDAL.

Each check is what training relies on: masks carry the class colours exactly where the polygons are, background
elsewhere in the labelled area and the ignore colour outside it; train and val never share a pixel; images are
the raster's own pixels; bad requests get one sentence and leave no folder.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from osgeo import gdal, ogr
from plugin_support import UTM_GT, box_ring, recording_feedback, scene, write_geotiff, write_label_polygons
from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingFeedback

from worker.io.training_export import (
    IGNORE_COLOR,
    ExportError,
    build_class_table,
    plan_tiles,
    split_regions,
    tile_starts,
)

pytestmark = pytest.mark.qgis
HEIGHT, WIDTH = 200, 300
#: Label rectangles in pixel coordinates (row0, col0, row1, col1) and their class names.
BOXES = [((20, 30, 50, 70), "vessel"), ((100, 40, 130, 60), "vehicle"), ((60, 200, 90, 260), "tank"),
         ((150, 240, 170, 290), "vehicle")]


def _pixel_box(box, gt=UTM_GT):
    r0, c0, r1, c1 = box
    return gt[0] + c0 * gt[1], gt[3] + r1 * gt[5], gt[0] + c1 * gt[1], gt[3] + r0 * gt[5]


def write_polygons(path: Path, boxes, epsg: int | None = 32633, field_type=ogr.OFTString, values=None) -> Path:
    """A GeoPackage of rectangles (pixel boxes on UTM_GT) with a class field (``values`` instead of the names)."""
    values = [name for _, name in boxes] if values is None else values
    return write_label_polygons(path, [(box_ring(box), value) for (box, _), value in zip(boxes, values)],
                                epsg=epsg, field_type=field_type)


RecordingFeedback = recording_feedback()


def run_export(feedback=None, **params):
    import processing

    params.setdefault("PATCH", 96)
    return processing.run("factseg:export_training_data", params, feedback=feedback or QgsProcessingFeedback())


def read_rgb(path: Path) -> np.ndarray:
    return gdal.Open(str(path)).ReadAsArray().transpose(1, 2, 0)


@pytest.fixture()
def inputs(tmp_path):
    raster = write_geotiff(tmp_path / "scene.tif", scene(HEIGHT, WIDTH), UTM_GT, 32633)
    return raster, write_polygons(tmp_path / "labels.gpkg", BOXES), gdal.Open(str(raster)).ReadAsArray()


def test_layout_classes_masks_and_split(provider, inputs, tmp_path):
    raster, labels, image = inputs
    out = tmp_path / "export"
    aoi_box = (0, 0, HEIGHT, WIDTH)
    result = run_export(INPUT=str(raster), LABELS=str(labels), CLASS_FIELD="cls", OUTPUT=str(out),
                        EXTENT=f"{_pixel_box(aoi_box)[0]},{_pixel_box(aoi_box)[2]},{_pixel_box(aoi_box)[1]},"
                               f"{_pixel_box(aoi_box)[3]} [EPSG:32633]")
    table = json.loads((out / "classes.json").read_text())
    assert [(c["id"], c["name"]) for c in table] == [(0, "background"), (1, "tank"), (2, "vehicle"), (3, "vessel")]
    assert json.loads(result["CLASSES"]) == table
    colors = {c["name"]: tuple(c["color"]) for c in table}
    assert len(set(colors.values()) | {IGNORE_COLOR}) == len(table) + 1
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["geotransform"] == list(UTM_GT) and (manifest["width"], manifest["height"]) == (WIDTH, HEIGHT)
    # Paint every tile back into the scene: masks must equal the polygons, images the raster.
    painted = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    owner = np.full((HEIGHT, WIDTH), "", dtype=object)
    for tile in manifest["tiles"]:
        y0, x0, y1, x1 = tile["window"]
        folder = out / tile["split"]
        np.testing.assert_array_equal(read_rgb(folder / "images" / f"{tile['name']}.png"),
                                      image[:, y0:y1, x0:x1].transpose(1, 2, 0).astype(np.uint8))
        painted[y0:y1, x0:x1] = read_rgb(folder / "masks" / f"{tile['name']}_instance_color_RGB.png")
        assert not (owner[y0:y1, x0:x1] != "").any() or set(owner[y0:y1, x0:x1].ravel()) <= {"", tile["split"]}
        owner[y0:y1, x0:x1] = tile["split"]
    assert {t["split"] for t in manifest["tiles"]} == {"train", "val"}
    assert result["TRAIN_TILES"] > 0 and result["VAL_TILES"] > 0
    expected = np.zeros_like(painted)
    for (r0, c0, r1, c1), name in BOXES:
        expected[r0:r1, c0:c1] = colors[name]
    np.testing.assert_array_equal(painted, expected)
    # Spatially separate: val is a strip of columns of its own (the area is wider than high).
    val_cols = {c for t in manifest["tiles"] if t["split"] == "val" for c in range(t["window"][1], t["window"][3])}
    train_cols = {c for t in manifest["tiles"] if t["split"] == "train" for c in range(t["window"][1], t["window"][3])}
    assert not val_cols & train_cols
    assert len(val_cols) == round(0.2 * WIDTH)


def test_aoi_outside_is_ignored_and_nodata_too(provider, tmp_path):
    image = scene(HEIGHT, WIDTH)
    image[:, :10, :] = 0
    raster = write_geotiff(tmp_path / "scene.tif", image, UTM_GT, 32633, nodata=0)
    labels = write_polygons(tmp_path / "labels.gpkg", BOXES[:1])
    # An L-shaped labelled area: its bounding box is 80 × 120 px, the lower right quarter lies outside it.
    aoi = write_polygons(tmp_path / "aoi.gpkg", [((0, 0, 80, 60), "area"), ((0, 60, 40, 120), "area")])
    out = tmp_path / "export"
    run_export(INPUT=str(raster), LABELS=str(labels), CLASS_FIELD="cls", AOI=str(aoi), OUTPUT=str(out),
               VAL_FRACTION=0.0, PATCH=128)
    manifest = json.loads((out / "export.json").read_text())
    assert (manifest["width"], manifest["height"]) == (120, 80)
    tile = manifest["tiles"][0]
    mask = read_rgb(out / "train" / "masks" / f"{tile['name']}_instance_color_RGB.png")
    y0, x0 = tile["window"][:2]
    assert y0 == 0 and x0 == 0
    assert (mask[:10] == IGNORE_COLOR).all()  # image nodata rows
    assert (mask[25, 40] == [c["color"] for c in manifest["classes"] if c["name"] == "vessel"][0]).all()
    assert (mask[60, 30] == (0, 0, 0)).all()  # inside the AOI, outside the polygons: background
    assert (mask[60, 100] == IGNORE_COLOR).all()  # inside the extent, outside the AOI: ignored
    assert (mask[30, 100] == (0, 0, 0)).all()


def test_integer_ids_are_kept(provider, tmp_path):
    raster = write_geotiff(tmp_path / "scene.tif", scene(HEIGHT, WIDTH), UTM_GT, 32633)
    labels = write_polygons(tmp_path / "ids.gpkg", BOXES, field_type=ogr.OFTInteger, values=[7, 3, 7, 3])
    out = tmp_path / "export"
    run_export(INPUT=str(raster), LABELS=str(labels), CLASS_FIELD="cls", OUTPUT=str(out))
    table = json.loads((out / "classes.json").read_text())
    assert [c["id"] for c in table] == list(range(8))  # ids are output channels: no gaps
    assert table[3]["name"] == "class_3" and table[7]["name"] == "class_7"
    manifest = json.loads((out / "export.json").read_text())
    tile = next(t for t in manifest["tiles"] if t["window"][:2] == [0, 0])
    mask = read_rgb(out / tile["split"] / "masks" / f"{tile['name']}_instance_color_RGB.png")
    assert (mask[5, 5] == table[7]["color"]).all()  # the grid starts at the labels' corner (row 20, column 30)


@pytest.mark.parametrize("case, message", [
    ("empty_field", "has no values"),
    ("no_crs", "coordinate reference system"),
    ("wrong_crs", "do not overlap the raster (labels in EPSG:4326"),
    ("outside", "No labelled polygon lies inside the extent"),
    ("not_empty", "exists and is not empty"),
])
def test_clear_errors_leave_no_folder(provider, inputs, tmp_path, case, message):
    raster, labels, _ = inputs
    out = tmp_path / "export"
    params = {"INPUT": str(raster), "LABELS": str(labels), "CLASS_FIELD": "cls", "OUTPUT": str(out)}
    if case == "empty_field":
        params["LABELS"] = str(write_polygons(tmp_path / "empty.gpkg", BOXES, values=[None] * len(BOXES)))
    elif case == "no_crs":
        params["LABELS"] = str(write_polygons(tmp_path / "nocrs.gpkg", BOXES, epsg=None))
    elif case == "wrong_crs":  # UTM coordinates declared as degrees: far off the raster
        params["LABELS"] = str(write_polygons(tmp_path / "wrong.gpkg", BOXES, epsg=4326))
    elif case == "outside":
        x0, y0, x1, y1 = _pixel_box((0, 100, 15, 190))
        params["EXTENT"] = f"{x0},{x1},{y0},{y1} [EPSG:32633]"
    elif case == "not_empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    feedback = RecordingFeedback()
    with pytest.raises(QgsProcessingException) as error:
        run_export(feedback, **params)
    assert message in " ".join(feedback.errors) + str(error.value)
    if case == "not_empty":
        assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_errors_are_sentences(provider, inputs, tmp_path):
    """The algorithm's own message (not only processing.run's generic one) names the problem."""
    raster, labels, _ = inputs
    alg = QgsApplication.processingRegistry().createAlgorithmById("factseg:export_training_data")
    from qgis.core import QgsProcessingContext

    context = QgsProcessingContext()
    empty = write_polygons(tmp_path / "empty.gpkg", BOXES, values=[None] * len(BOXES))
    params = {"INPUT": str(raster), "LABELS": str(empty), "CLASS_FIELD": "cls", "OUTPUT": str(tmp_path / "o")}
    with pytest.raises(QgsProcessingException, match="has no values"):
        alg.prepareAlgorithm(params, context, QgsProcessingFeedback())


def test_cancel_leaves_nothing(provider, inputs, tmp_path):
    raster, labels, _ = inputs

    class CancelAfterFirst(QgsProcessingFeedback):
        def setProgress(self, progress):  # noqa: N802
            super().setProgress(progress)
            if progress > 0:
                self.cancel()

    out = tmp_path / "export"
    with pytest.raises(QgsProcessingException):
        run_export(CancelAfterFirst(), INPUT=str(raster), LABELS=str(labels), CLASS_FIELD="cls", OUTPUT=str(out),
                   PATCH=64)
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_tiling_and_split_rules():
    assert tile_starts(100, 96, 96) == [0, 4]
    assert tile_starts(50, 96, 96) == [0]
    assert tile_starts(300, 96, 48) == [0, 48, 96, 144, 192, 204]
    regions = split_regions(200, 300, 0.2)
    assert regions == {"train": (0, 0, 200, 240), "val": (0, 240, 200, 300)}
    assert split_regions(300, 200, 0.25)["val"] == (225, 0, 300, 200)
    assert set(split_regions(10, 10, 0.0)) == {"train"}
    with pytest.raises(ExportError, match="too small"):
        split_regions(1, 1, 0.2)
    tiles = plan_tiles(200, 300, 96, 96, 0.2, "s")
    for a in tiles:
        for b in tiles:
            if a.split != b.split:
                assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0


def test_class_table_rules():
    table, lookup = build_class_table(["b", "a", None, "", "a", "background"])
    assert [(c["id"], c["name"]) for c in table] == [(0, "background"), (1, "a"), (2, "b")]
    assert lookup["background"] == 0 and lookup["b"] == 2
    with pytest.raises(ExportError, match="between 1 and 254"):
        build_class_table([3, 300])
    with pytest.raises(ExportError, match="no values"):
        build_class_table([None, ""])


def test_training_reader_maps_the_export_to_ids(provider, inputs, tmp_path):
    """The masks decode to the exported ids with the trainer's own colour mapping; ignored pixels become 255."""
    from factseg_core.classes import ClassInfo
    from training.isaid import colors_to_ids, find_pairs

    raster, labels, _ = inputs
    out = tmp_path / "export"
    aoi = write_polygons(tmp_path / "aoi.gpkg", [((0, 0, HEIGHT, 150), "a"), ((0, 150, 100, WIDTH), "a")])
    run_export(INPUT=str(raster), LABELS=str(labels), CLASS_FIELD="cls", AOI=str(aoi), OUTPUT=str(out))
    table = [ClassInfo(c["id"], c["name"], tuple(c["color"])) for c in json.loads((out / "classes.json").read_text())]
    manifest = json.loads((out / "export.json").read_text())
    ids = np.full((HEIGHT, WIDTH), 255, dtype=np.uint8)  # tiles wholly outside the area are not written
    for split in ("train", "val"):
        for pair in find_pairs(out, split):
            tile = next(t for t in manifest["tiles"] if t["name"] == pair.name)
            y0, x0, y1, x1 = tile["window"]
            ids[y0:y1, x0:x1], _ = colors_to_ids(read_rgb(pair.mask), table)
    by_name = {c.name: c.id for c in table}
    expected = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    for (r0, c0, r1, c1), name in BOXES:
        expected[r0:r1, c0:c1] = by_name[name]
    expected[100:, 150:] = 255  # outside the labelled area
    np.testing.assert_array_equal(ids, expected)
