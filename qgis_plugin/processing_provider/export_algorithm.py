"""``factseg:export_training_data``: labelled polygons over a raster layer → an iSAID-layout training folder.

The analyst's own classes start here: polygons (drawn, or corrected from a FactSeg result) with a class field
become image/mask patches plus ``classes.json``, which ``training/train.py`` and ``factseg:train`` read. Pixels
are read exactly as ``factseg:segment`` reads them (same grid, band mapping and 16-bit scaling), so a model
trained on the export sees at segmentation time what it saw in training.
"""
from __future__ import annotations

import json
import re

import numpy as np
from qgis.core import (
    Qgis,
    QgsCoordinateReferenceSystem,
    QgsCoordinateTransform,
    QgsCsException,
    QgsFeatureRequest,
    QgsGeometry,
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeatureSource,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsRectangle,
    QgsWkbTypes,
)

from ..aoi import PolygonMask, union_of
from ..errors import FactSegError
from ..grid import OutputGrid, ground_sample_distance, plan_grid
from ..raster_reading import RasterReader, parse_bands
from ..settings import RESOLUTION_UNITS, SCALING_LABELS, SCALING_MODES
from ..worker_import import contract, training_export
from .base import FactSegAlgorithm

IGNORE_ID = contract.IGNORE_INDEX
ExportError = training_export.ExportError
LabelRasterizer = training_export.LabelRasterizer
TrainingDataWriter = training_export.TrainingDataWriter
build_class_table = training_export.build_class_table
valid_label = training_export.valid_label
plan_tiles = training_export.plan_tiles

UNIT_LABELS = ("Map units of the layer's CRS", "Centimetres per pixel (ground sampling distance)")


class _Labels:
    """The labelled polygons in the raster's CRS, with their class ids, and the class table they make."""

    def __init__(self, source, field: str, crs: QgsCoordinateReferenceSystem, context: QgsProcessingContext) -> None:
        if source.wkbType() != QgsWkbTypes.Type.Unknown and QgsWkbTypes.geometryType(
                source.wkbType()) != QgsWkbTypes.GeometryType.PolygonGeometry:
            raise FactSegError("The LABELS layer must hold polygons.")
        index = source.fields().lookupField(field)
        if index < 0:
            raise FactSegError(f"The LABELS layer has no field {field!r}.")
        transform = _transform_to(source.sourceCrs(), crs, context, "LABELS")
        rows: list[tuple[QgsGeometry, object]] = []
        self.repaired = self.unusable = 0  # invalid polygons made valid, and those with no area left
        for feature in unchecked_features(source):
            geometry = feature.geometry()
            if geometry is None or geometry.isEmpty():
                continue
            geometry = self._valid(QgsGeometry(geometry))  # in the CRS it was drawn in
            if geometry is None:
                continue
            if transform is not None:
                try:
                    geometry.transform(transform)
                except QgsCsException as exc:
                    raise FactSegError(f"A label polygon cannot be transformed to the raster's CRS: {exc}") from exc
            rows.append((geometry, feature.attribute(index)))
        if not rows:
            raise FactSegError("The LABELS layer has no polygons.")
        try:
            self.table, lookup = build_class_table(value for _, value in rows)
        except ExportError as exc:
            raise FactSegError(f"{field}: {exc}") from exc
        self.skipped = sum(1 for _, value in rows if value not in lookup)
        self.polygons = [(geometry, lookup[value]) for geometry, value in rows if value in lookup]

    def _valid(self, geometry: QgsGeometry) -> QgsGeometry | None:
        """The polygon, repaired when invalid (counted), or None (counted) when repairing leaves no area."""
        wkb, repaired = valid_label(bytes(geometry.asWkb()))
        if wkb is None:
            self.unusable += 1
            return None
        if not repaired:
            return geometry
        self.repaired += 1
        fixed = QgsGeometry()
        fixed.fromWkb(wkb)
        return fixed

    def bounds(self) -> QgsRectangle:
        box = QgsRectangle()
        box.setMinimal()
        for geometry, _ in self.polygons:
            box.combineExtentWith(geometry.boundingBox())
        return box

    def inside(self, extent: QgsRectangle) -> list[tuple[bytes, int]]:
        """WKB and class id of every polygon that reaches into ``extent``."""
        return [(bytes(g.asWkb()), class_id) for g, class_id in self.polygons if g.boundingBox().intersects(extent)]


def unchecked_features(source):
    """All features of a Processing source, without the context's invalid-geometry check (which by default stops
    the algorithm at the first invalid polygon): the export repairs or leaves out such polygons itself."""
    flags = getattr(Qgis, "ProcessingFeatureSourceFlag", None)  # QGIS ≥ 3.36 (and 4); before: on the class
    skip = (flags.SkipGeometryValidityChecks if flags is not None
            else QgsProcessingFeatureSource.Flag.FlagSkipGeometryValidityChecks)
    return source.getFeatures(QgsFeatureRequest(), skip)


def _transform_to(source_crs, target_crs, context, what: str) -> QgsCoordinateTransform | None:
    if source_crs.isValid() != target_crs.isValid():
        raise FactSegError(
            f"The {what} layer and the raster disagree on their coordinate reference system (one has none): "
            "assign the right CRS to the layer that lacks it.")
    if not source_crs.isValid() or source_crs == target_crs:
        return None
    return QgsCoordinateTransform(source_crs, target_crs, context.transformContext())


def _wkt(crs: QgsCoordinateReferenceSystem) -> str:
    return crs.toWkt(QgsCoordinateReferenceSystem.WktVariant.WKT_PREFERRED_GDAL) if crs.isValid() else ""


def _band_roles(reader: RasterReader) -> dict[str, int | str]:
    """The layer band behind each input role (export.json), or the provider's own colours (WMS/XYZ)."""
    if reader.argb:
        return {"red": "rendered", "green": "rendered", "blue": "rendered"}
    return dict(zip(("red", "green", "blue"), reader.bands))


def _class_pixels(pixels: dict, table: list[dict]) -> dict[str, dict[str, int]]:
    """Labelled pixels of each class per split, by class name (export.json: the trainer's class shares)."""
    return {split: {row["name"]: int(counts[int(row["id"])]) for row in table} for split, counts in pixels.items()}


def _tile_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "tile"


class ExportTrainingDataAlgorithm(FactSegAlgorithm):
    """Export image/mask patches and a class table from labelled polygons."""

    NAME = "export_training_data"
    TITLE = "Export training data from labelled polygons (FactSeg)"
    TAGS = ("training", "labels", "fine-tuning", "dataset", "isaid")

    INPUT = "INPUT"
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    EXTENT = "EXTENT"
    AOI = "AOI"
    RESOLUTION = "RESOLUTION"
    RESOLUTION_UNITS = "RESOLUTION_UNITS"
    BANDS = "BANDS"
    SCALING = "SCALING"
    PATCH = "PATCH"
    STRIDE = "STRIDE"
    VAL_FRACTION = "VAL_FRACTION"
    OUTPUT = "OUTPUT"
    TRAIN_TILES = "TRAIN_TILES"
    VAL_TILES = "VAL_TILES"
    CLASSES = "CLASSES"

    def __init__(self) -> None:
        super().__init__()
        self._job: dict | None = None

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Cuts the raster layer into image patches with class masks painted from the LABELS polygons, in the "
            "layout training/train.py and factseg:train read ({train,val}/images, {train,val}/masks, "
            "classes.json).\n\n"
            "CLASS_FIELD: class names (ids 1..N in sorted order) or integer ids (1–254) as given; id 0 is "
            "background.\n"
            "AOI / EXTENT: the labelled area. Inside it, pixels outside every polygon are background; outside "
            "the AOI polygons pixels are ignored in training. Default: the bounding box of the labels.\n"
            "VAL_FRACTION: share of the area (a strip along its longer side, never overlapping the training "
            "part) kept for validation.\n"
            "OUTPUT: a new or empty folder; it appears only when the export is complete."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.LABELS, "Labelled polygons", [QgsProcessing.SourceType.TypeVectorPolygon]))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, "Class field (names or integer ids)", parentLayerParameterName=self.LABELS))
        self.addParameter(QgsProcessingParameterExtent(
            self.EXTENT, "Extent (default: the labels' bounding box)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.AOI, "Labelled area (polygons): pixels outside are ignored", [QgsProcessing.SourceType.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, "Resolution (0 = the layer's native resolution)",
            QgsProcessingParameterNumber.Type.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.PATCH, "Patch size (pixels)", QgsProcessingParameterNumber.Type.Integer, contract.PATCH_SIZE,
            minValue=32, maxValue=contract.MAX_PATCH))
        self.addParameter(QgsProcessingParameterNumber(
            self.STRIDE, "Stride between patches (0 = the patch size: no overlap)",
            QgsProcessingParameterNumber.Type.Integer, 0, minValue=0, maxValue=contract.MAX_PATCH))
        self.addParameter(QgsProcessingParameterNumber(
            self.VAL_FRACTION, "Share of the area kept for validation", QgsProcessingParameterNumber.Type.Double, 0.2,
            minValue=0.0, maxValue=0.9))
        self.add_advanced(
            QgsProcessingParameterEnum(self.RESOLUTION_UNITS, "Resolution units", list(UNIT_LABELS), defaultValue=0),
            QgsProcessingParameterString(self.BANDS, "Bands for red, green, blue (e.g. 4,3,2)", "", optional=True),
            QgsProcessingParameterEnum(self.SCALING, "Scaling of non-8-bit bands to 0–255", list(SCALING_LABELS),
                                       defaultValue=0),
        )
        self.addParameter(QgsProcessingParameterFolderDestination(self.OUTPUT, "Training data folder"))
        self.addOutput(QgsProcessingOutputNumber(self.TRAIN_TILES, "Training patches"))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_TILES, "Validation patches"))
        self.addOutput(QgsProcessingOutputString(self.CLASSES, "Class table (JSON)"))

    def prepareAlgorithm(self, parameters, context: QgsProcessingContext, feedback) -> bool:  # noqa: N802
        try:
            self._job = self._prepare(parameters, context, feedback)
        except FactSegError as exc:
            raise QgsProcessingException(str(exc)) from exc
        return True

    def _prepare(self, parameters, context: QgsProcessingContext, feedback) -> dict:
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None or not layer.isValid():
            raise FactSegError("The input raster layer cannot be found or opened.")
        source = self.parameterAsSource(parameters, self.LABELS, context)
        if source is None:
            raise FactSegError("The LABELS layer cannot be opened.")
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
        labels = _Labels(source, field, layer.crs(), context)
        if labels.skipped:
            feedback.pushWarning(f"{labels.skipped} polygon(s) have no value in {field!r} and are left out.")
        if labels.repaired or labels.unusable:
            feedback.pushWarning(f"Invalid label polygons: {labels.repaired} repaired (split where their outline "
                                 f"crosses or touches itself), {labels.unusable} left out (no area).")
        if not labels.bounds().intersects(layer.extent()):
            raise FactSegError(
                f"The labels do not overlap the raster (labels in {source.sourceCrs().authid() or 'no CRS'}, raster "
                f"in {layer.crs().authid() or 'no CRS'}): check that both layers have the right coordinate "
                "reference system.")
        extent, area = self._labelled_extent(parameters, context, layer, labels)
        grid = plan_grid(layer, extent, layer.crs(), self.parameterAsDouble(parameters, self.RESOLUTION, context),
                         RESOLUTION_UNITS[self.parameterAsEnum(parameters, self.RESOLUTION_UNITS, context)],
                         context.transformContext())
        polygons = labels.inside(grid.extent)
        if not any(class_id for _, class_id in polygons):
            raise FactSegError("No labelled polygon lies inside the extent: nothing to learn from there.")
        mask = PolygonMask(area, grid) if area is not None else None
        bands = parse_bands(self.parameterAsString(parameters, self.BANDS, context) or None, layer.bandCount())
        scaling = SCALING_MODES[self.parameterAsEnum(parameters, self.SCALING, context)]
        reader = RasterReader.from_layer(layer, grid, bands, scaling, context.transformContext(), mask)
        patch = self.parameterAsInt(parameters, self.PATCH, context)
        stride = self.parameterAsInt(parameters, self.STRIDE, context) or patch
        try:
            tiles = plan_tiles(grid.height, grid.width, patch, stride,
                               self.parameterAsDouble(parameters, self.VAL_FRACTION, context), _tile_stem(layer.name()))
            writer = TrainingDataWriter(self.parameterAsString(parameters, self.OUTPUT, context), labels.table)
        except ExportError as exc:
            raise FactSegError(str(exc)) from exc
        return {"grid": grid, "reader": reader, "tiles": tiles, "writer": writer, "table": labels.table,
                "rasterizer": LabelRasterizer(polygons, grid.geotransform, _wkt(grid.crs)), "source": layer.source(),
                "patch": patch, "stride": stride, "bands": _band_roles(reader),
                "gsd_m": ground_sample_distance(grid.crs, grid.extent, grid.res_x, grid.res_y,
                                                context.transformContext())}

    def _labelled_extent(self, parameters, context, layer, labels: _Labels) -> tuple[QgsRectangle, QgsGeometry | None]:
        """The extent to export (raster CRS) and the AOI geometry, if polygons define the labelled area."""
        area = None
        if parameters.get(self.AOI) not in (None, ""):
            aoi = self.parameterAsSource(parameters, self.AOI, context)
            if aoi is None:
                raise FactSegError("The AOI layer cannot be opened.")
            _transform_to(aoi.sourceCrs(), layer.crs(), context, "AOI")
            shapes = [g if g.isGeosValid() else g.makeValid() for g in (f.geometry() for f in unchecked_features(aoi))
                      if g is not None and not g.isEmpty()]
            area = union_of(shapes, aoi.sourceCrs(), layer.crs(),
                            context.transformContext())
        if parameters.get(self.EXTENT) not in (None, ""):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        elif area is not None:
            extent = area.boundingBox()
        else:
            extent = labels.bounds()
        return extent, area

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):  # noqa: N802
        job, self._job = self._job, None
        if job is None:
            raise QgsProcessingException("The algorithm was not prepared (internal error).")
        try:
            counts = self._export(job, feedback)
        except (FactSegError, ExportError, OSError) as exc:
            raise QgsProcessingException(str(exc)) from exc
        return {self.OUTPUT: str(job["writer"].output), self.TRAIN_TILES: counts["train"],
                self.VAL_TILES: counts["val"], self.CLASSES: json.dumps(job["table"])}

    @staticmethod
    def _export(job: dict, feedback: QgsProcessingFeedback) -> dict[str, int]:
        grid: OutputGrid = job["grid"]
        tiles, writer, reader, rasterizer = job["tiles"], job["writer"], job["reader"], job["rasterizer"]
        feedback.pushInfo(f"Exporting {len(tiles)} patch(es) of {job['patch']} px from a {grid.width} × "
                          f"{grid.height} px grid at {job['gsd_m']:.4g} m/px into {writer.output} …")
        written = []
        pixels = {split: np.zeros(256, np.int64) for split in ("train", "val")}  # labelled pixels per class id
        with writer:
            for done, tile in enumerate(tiles):
                if feedback.isCanceled():
                    raise FactSegError("Export cancelled; no training folder was written.")
                rgb, valid = reader.read(tile.y0, tile.x0, tile.y1, tile.x1)
                labels = rasterizer.window(tile.y0, tile.x0, tile.y1, tile.x1)
                labels[~valid] = IGNORE_ID
                if (labels != IGNORE_ID).any():
                    writer.write(tile, rgb, labels)
                    pixels[tile.split] += np.bincount(labels[labels != IGNORE_ID].ravel(), minlength=256)
                    extent = grid.sub_extent(tile.y0, tile.x0, tile.y1, tile.x1)
                    written.append({"split": tile.split, "name": tile.name,
                                    "window": [tile.y0, tile.x0, tile.y1, tile.x1],
                                    "bounds": [extent.xMinimum(), extent.yMinimum(), extent.xMaximum(),
                                               extent.yMaximum()]})
                feedback.setProgress(100.0 * (done + 1) / len(tiles))
            writer.commit({
                "source": job["source"], "crs": grid.crs.authid(), "geotransform": list(grid.geotransform),
                "width": grid.width, "height": grid.height, "patch": job["patch"], "stride": job["stride"],
                "gsd_m": job["gsd_m"], "bands": job["bands"], "class_pixels": _class_pixels(pixels, job["table"]),
                "tiles": written})
        feedback.pushInfo(f"Wrote {writer.counts['train']} training and {writer.counts['val']} validation "
                          f"patch(es) and classes.json ({len(job['table']) - 1} class(es)).")
        return dict(writer.counts)
