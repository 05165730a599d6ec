"""``factseg:segment``: segment (an extent of) a raster layer with a FactSeg worker into a class GeoTIFF.

The algorithm resolves its inputs in ``prepareAlgorithm`` (main thread: layer, grid, provider clone) and runs
the shared job (:mod:`..job`) in ``processAlgorithm`` (Processing's thread), with the feedback's progress and
cancel button wired to the worker.
"""
from __future__ import annotations

import json
import traceback

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from ..errors import FactSegError
from ..job import JobRequest, JobResult, prepare_job, run_job
from ..local_workers import release
from ..mistakes import outputs_in_use, unexpected
from ..model_resolution import model_resolution
from ..raster_reading import parse_bands
from ..results_report import is_georeferenced, layer_notes, present_ids, summary, table_lines
from ..settings import RESOLUTION_UNITS, SCALING_LABELS, SCALING_MODES
from ..worker_import import contract
from .base import FactSegAlgorithm
from .post_processing import attach_stylers, name_after_input

UNIT_LABELS = ("Map units of the layer's CRS", "Centimetres per pixel (ground sampling distance)")


class SegmentAlgorithm(FactSegAlgorithm):
    """Segment a raster layer with FactSeg."""

    NAME = "segment"
    TITLE = "Segment raster layer (FactSeg)"
    TAGS = ("segmentation", "deep learning", "isaid", "small objects", "vehicles", "ships")

    INPUT = "INPUT"
    EXTENT = "EXTENT"
    MASK = "MASK"
    RESOLUTION = "RESOLUTION"
    RESOLUTION_UNITS = "RESOLUTION_UNITS"
    PATCH = "PATCH"
    STRIDE = "STRIDE"
    CHUNK_SIZE = "CHUNK_SIZE"
    BATCH_SIZE = "BATCH_SIZE"
    TTA = "TTA"
    BANDS = "BANDS"
    SCALING = "SCALING"
    OUTPUT = "OUTPUT"
    OUTPUT_VECTOR = "OUTPUT_VECTOR"
    OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"
    FEATURE_COUNT = "FEATURE_COUNT"
    STATISTICS = "STATISTICS"
    SUMMARY = "SUMMARY"

    def __init__(self) -> None:
        super().__init__()
        self._request: JobRequest | None = None
        self._result: JobResult | None = None
        self._input_name = ""
        self._georeferenced = True
        self._notes: list[str] = []

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Segments the pixels of a raster layer (any provider: file, VRT, WMS/XYZ) with a FactSeg model served by "
            "a worker process, and writes a GeoTIFF of class ids (255 = nodata) on the layer's CRS; loaded, it shows "
            "the object classes over the imagery (background transparent).\n\n"
            "WORKER: endpoint of a running worker (python -m worker --bind ENDPOINT --model MODEL). If empty, a "
            "local worker is started with MODEL (a checkpoint or ONNX file) and the worker Python.\n"
            "SERVER_KEY / CLIENT_KEY: for a remote (CURVE) worker, its public key (server.key or the 40 z85 "
            "characters) and this client's .key_secret file; or AUTHCFG, a QGIS authentication configuration "
            "holding both.\n"
            "RESOLUTION: pixel size of the output; 0: the model's ground resolution (its model card's gsd_m; the "
            "layer is read resampled), or the layer's native grid exactly for a model that does not know it.\n"
            "EXTENT: area to segment (default: the whole layer); it is clipped to the layer.\n"
            "MASK: polygons outside which pixels are left out (nodata); their bounding box is the extent when "
            "EXTENT is empty.\n"
            "PATCH / STRIDE: sliding-window size and step in pixels (0: the model's own, FactSeg's reference is "
            f"{contract.PATCH_SIZE} / {contract.STRIDE}). CHUNK_SIZE: pixels per chunk side (0: the worker's). BATCH_SIZE: windows per forward pass "
            "of a local worker (0: its default). TTA: average the predictions of the flipped windows.\n"
            "BANDS: red, green, blue band numbers, e.g. 4,3,2 (default: the layer's RGB bands).\n"
            "SCALING: how bands that are not 8-bit become 0–255.\n"
            "OUTPUT_VECTOR: optional polygons, one per connected object, with class and area. OUTPUT_CONFIDENCE: "
            "optional float32 raster, the probability of the chosen class."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        number = QgsProcessingParameterNumber
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent (default: the layer)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.MASK, "Area of interest: segment only inside these polygons", [QgsProcessing.SourceType.TypeVectorPolygon],
            optional=True))
        self.addParameter(number(self.RESOLUTION, "Resolution (0 = the model's, else the layer's native resolution)",
                                 number.Type.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterEnum(
            self.RESOLUTION_UNITS, "Resolution units", list(UNIT_LABELS), defaultValue=0))
        self.addParameter(QgsProcessingParameterString(
            self.WORKER, "Worker endpoint (empty: start a local worker with the model)", "", optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model for a local worker (checkpoint .pt/.pth or .onnx)", optional=True))
        self.addParameter(number(self.PATCH, "Patch size (pixels, 0 = the model's)", number.Type.Integer, 0,
                                 minValue=0, maxValue=contract.MAX_PATCH))
        self.addParameter(number(self.STRIDE, "Stride (pixels, 0 = the model's)", number.Type.Integer, 0,
                                 minValue=0, maxValue=contract.MAX_PATCH))
        self.addParameter(QgsProcessingParameterBoolean(self.TTA, "Flip test-time augmentation", False))
        self.add_advanced(
            *self.key_parameters(),
            *self.local_worker_parameters(),
            number(self.CHUNK_SIZE, "Chunk size (pixels, 0 = the worker's)", number.Type.Integer, 0, minValue=0),
            number(self.BATCH_SIZE, "Batch size of a local worker (0 = its default)", number.Type.Integer, 0,
                   minValue=0, maxValue=256),
            QgsProcessingParameterString(self.BANDS, "Bands for red, green, blue (e.g. 4,3,2)", "", optional=True),
            QgsProcessingParameterEnum(self.SCALING, "Scaling of non-8-bit bands to 0–255", list(SCALING_LABELS),
                                       defaultValue=0),
        )
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Classes"))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT_VECTOR, "Objects (polygons)", QgsProcessing.SourceType.TypeVectorPolygon, optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT_CONFIDENCE, "Confidence (probability of the chosen class)", optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber(self.FEATURE_COUNT, "Number of polygons"))
        self.addOutput(QgsProcessingOutputString(self.STATISTICS, "Per-class statistics (JSON)"))
        self.addOutput(QgsProcessingOutputString(self.SUMMARY, "Summary"))

    def prepareAlgorithm(self, parameters, context: QgsProcessingContext, feedback) -> bool:  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException("The input raster layer cannot be found or opened.")
        extent = extent_crs = None
        if parameters.get(self.EXTENT) not in (None, ""):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context)
            extent_crs = self.parameterAsExtentCrs(parameters, self.EXTENT, context)
            if not extent_crs.isValid():
                extent_crs = layer.crs()
        aoi = aoi_crs = None
        if parameters.get(self.MASK) not in (None, ""):
            source = self.parameterAsSource(parameters, self.MASK, context)
            if source is None:
                raise QgsProcessingException("The area-of-interest layer (MASK) cannot be opened.")
            aoi, aoi_crs = [f.geometry() for f in source.getFeatures()], source.sourceCrs()
        integer = lambda key: self.parameterAsInt(parameters, key, context)  # noqa: E731
        target = self.worker_target(parameters, context, self.parameterAsInt(parameters, self.BATCH_SIZE, context))
        resolution = self.parameterAsDouble(parameters, self.RESOLUTION, context)
        units = RESOLUTION_UNITS[self.parameterAsEnum(parameters, self.RESOLUTION_UNITS, context)]
        try:
            if resolution <= 0:
                resolution, units = model_resolution(target, layer, context.transformContext(), feedback.pushInfo)
            self._request = prepare_job(
                layer,
                self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
                target,
                extent=extent,
                extent_crs=extent_crs,
                resolution=resolution,
                resolution_units=units,
                bands=self.parameterAsString(parameters, self.BANDS, context) or None,
                scaling=SCALING_MODES[self.parameterAsEnum(parameters, self.SCALING, context)],
                patch=integer(self.PATCH), stride=integer(self.STRIDE), chunk_size=integer(self.CHUNK_SIZE),
                tta=self.parameterAsBool(parameters, self.TTA, context),
                vector_path=self.parameterAsOutputLayer(parameters, self.OUTPUT_VECTOR, context) or None,
                confidence_path=self.parameterAsOutputLayer(parameters, self.OUTPUT_CONFIDENCE, context) or None,
                statistics=True,
                context=context.transformContext(),
                aoi=aoi,
                aoi_crs=aoi_crs,
            )
        except FactSegError as exc:
            if target.local is not None and not target.endpoint:
                release(target.local)  # a local worker started to learn the model's resolution
            raise QgsProcessingException(str(exc)) from exc
        self._input_name, self._georeferenced = layer.name(), is_georeferenced(layer)
        bands = parse_bands(self.parameterAsString(parameters, self.BANDS, context) or None, layer.bandCount())
        self._notes = layer_notes(layer, bands)
        return True

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):  # noqa: N802
        request, self._request = self._request, None
        if request is None:
            raise QgsProcessingException("The algorithm was not prepared (internal error).")
        for note in self._notes:
            feedback.pushWarning(note)
        try:
            with outputs_in_use([request.output_path, request.vector_path, request.confidence_path]):
                result = run_job(
                    request,
                    progress=lambda fraction: feedback.setProgress(100.0 * fraction),
                    is_cancelled=feedback.isCanceled,
                    log=feedback.pushInfo,
                )
        except FactSegError as exc:
            raise QgsProcessingException(str(exc)) from exc
        except Exception as exc:  # noqa: BLE001 (GDAL, OS: one sentence in the message, the traceback in the log)
            feedback.pushDebugInfo(traceback.format_exc())
            raise QgsProcessingException(unexpected(exc)) from exc
        self._result = result
        for key in (self.OUTPUT, self.OUTPUT_VECTOR, self.OUTPUT_CONFIDENCE):
            # register the outputs to load on *this* context: off the main thread it is Processing's thread
            # context, whose results replace the caller's when the run is post-processed
            self.parameterAsOutputLayer(parameters, key, context)
        for line in ["Classes found:", *table_lines(result.statistics, self._georeferenced)]:
            feedback.pushInfo(line)
        return {
            self.OUTPUT: str(result.raster_path),
            self.OUTPUT_VECTOR: str(result.vector_path) if result.vector_path else None,
            self.OUTPUT_CONFIDENCE: str(result.confidence_path) if result.confidence_path else None,
            self.FEATURE_COUNT: result.feature_count,
            self.STATISTICS: json.dumps(result.statistics),
            self.SUMMARY: summary(result.grid.width, result.grid.height, result.seconds, result.statistics,
                                  result.feature_count if result.vector_path else None, self._georeferenced),
        }

    def postProcessAlgorithm(self, context: QgsProcessingContext, feedback: QgsProcessingFeedback):  # noqa: N802
        """Main thread, after the run: give the outputs Processing will load this run's stylers."""
        result, self._result = self._result, None
        if result is not None:
            outputs = {"raster": str(result.raster_path),
                       "vector": str(result.vector_path) if result.vector_path else None}
            shown = present_ids(result.statistics)
            attach_stylers(context, outputs, [c for c in result.classes if int(c["id"]) in shown] or result.classes)
            name_after_input(context, outputs, self._input_name,
                             {"raster": self.parameterDefinition(self.OUTPUT).description(),
                              "vector": self.parameterDefinition(self.OUTPUT_VECTOR).description()})
        return {}
