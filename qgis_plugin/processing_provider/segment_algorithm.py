"""``factseg:segment``: segment (an extent of) a raster layer with a FactSeg worker into a class GeoTIFF.

The algorithm resolves its inputs in ``prepareAlgorithm`` (main thread: layer, grid, provider clone) and runs
the shared job (:mod:`..job`) in ``processAlgorithm`` (Processing's thread), with the feedback's progress and
cancel button wired to the worker.
"""
from __future__ import annotations

import json

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
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
from qgis.PyQt.QtGui import QIcon

from ..errors import FactSegError
from ..job import JobRequest, WorkerTarget, format_statistics, prepare_job, run_job
from ..local_workers import LocalWorkerSpec
from ..plugin_info import ICON_PATH
from ..settings import (
    DEFAULT_PATCH,
    DEFAULT_STRIDE,
    DEVICES,
    RESOLUTION_UNITS,
    SCALING_LABELS,
    SCALING_MODES,
    PluginSettings,
)
from ..styling import style_class_layer

UNIT_LABELS = ("Map units of the layer's CRS", "Centimetres per pixel (ground sampling distance)")


class ClassLayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Styles the class raster with the model's names and colours when Processing loads it into the project."""

    _keep: list[ClassLayerStyler] = []  # QGIS holds a plain pointer: keep the Python object alive

    def __init__(self, classes: list[dict]) -> None:
        super().__init__()
        self.classes = classes

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 (QGIS API)
        style_class_layer(layer, self.classes)

    @classmethod
    def create(cls, classes: list[dict]) -> ClassLayerStyler:
        cls._keep = [cls(classes)]
        return cls._keep[0]


class SegmentAlgorithm(QgsProcessingAlgorithm):
    """Segment a raster layer with FactSeg."""

    INPUT = "INPUT"
    EXTENT = "EXTENT"
    MASK = "MASK"
    RESOLUTION = "RESOLUTION"
    RESOLUTION_UNITS = "RESOLUTION_UNITS"
    WORKER = "WORKER"
    MODEL = "MODEL"
    WORKER_PYTHON = "WORKER_PYTHON"
    DEVICE = "DEVICE"
    PATCH = "PATCH"
    STRIDE = "STRIDE"
    BANDS = "BANDS"
    SCALING = "SCALING"
    OUTPUT = "OUTPUT"
    OUTPUT_VECTOR = "OUTPUT_VECTOR"
    FEATURE_COUNT = "FEATURE_COUNT"
    STATISTICS = "STATISTICS"

    def __init__(self) -> None:
        super().__init__()
        self._request: JobRequest | None = None

    def name(self) -> str:
        return "segment"

    def displayName(self) -> str:  # noqa: N802
        return "Segment raster layer (FactSeg)"

    def group(self) -> str:
        return ""

    def groupId(self) -> str:  # noqa: N802
        return ""

    def icon(self) -> QIcon:
        return QIcon(str(ICON_PATH))

    def tags(self) -> list[str]:
        return ["segmentation", "deep learning", "isaid", "small objects", "vehicles", "ships", "factseg"]

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Segments the pixels of a raster layer (any provider: file, VRT, WMS/XYZ) with a FactSeg model served by "
            "a worker process, and writes a GeoTIFF of class ids (255 = nodata) on the layer's CRS, styled with "
            "the model's class names and colours.\n\n"
            "WORKER: endpoint of a running worker (python -m worker --bind ENDPOINT --model MODEL). If empty, a "
            "local worker is started with MODEL (a checkpoint or ONNX file) and the worker Python.\n"
            "RESOLUTION: pixel size of the output; 0 keeps the layer's native resolution (snapped to its pixels).\n"
            "EXTENT: area to segment (default: the whole layer); it is clipped to the layer.\n"
            "MASK: polygons (selected features only, if so chosen) outside which pixels are left out (nodata); "
            "their bounding box is the extent when EXTENT is empty.\n"
            "PATCH / STRIDE: sliding-window size and step in pixels (FactSeg's reference: 896 / 512).\n"
            "BANDS: red, green, blue band numbers, e.g. 4,3,2 (default: the layer's RGB bands).\n"
            "SCALING: how bands that are not 8-bit become 0–255.\n"
            "OUTPUT_VECTOR: optional polygons, one per connected object, with class name and area (m²)."
        )

    def createInstance(self) -> SegmentAlgorithm:  # noqa: N802
        return SegmentAlgorithm()

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        advanced = QgsProcessingParameterDefinition.FlagAdvanced
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster layer"))
        self.addParameter(QgsProcessingParameterExtent(self.EXTENT, "Extent (default: the layer)", optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.MASK, "Area of interest: segment only inside these polygons", [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.RESOLUTION, "Resolution (0 = the layer's native resolution)",
            QgsProcessingParameterNumber.Double, 0.0, minValue=0.0))
        self.addParameter(QgsProcessingParameterEnum(
            self.RESOLUTION_UNITS, "Resolution units", list(UNIT_LABELS), defaultValue=0))
        self.addParameter(QgsProcessingParameterString(
            self.WORKER, "Worker endpoint (empty: start a local worker with the model)", "", optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model for a local worker (checkpoint .pt/.pth or .onnx)", optional=True))
        for param in (
            QgsProcessingParameterString(self.WORKER_PYTHON, "Python for a local worker (needs torch)", "",
                                         optional=True),
            QgsProcessingParameterEnum(self.DEVICE, "Device for a local worker", list(DEVICES), defaultValue=0),
        ):
            param.setFlags(param.flags() | advanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterNumber(
            self.PATCH, "Patch size (pixels)", QgsProcessingParameterNumber.Integer, DEFAULT_PATCH,
            minValue=32, maxValue=4096))
        self.addParameter(QgsProcessingParameterNumber(
            self.STRIDE, "Stride (pixels)", QgsProcessingParameterNumber.Integer, DEFAULT_STRIDE,
            minValue=1, maxValue=4096))
        for param in (
            QgsProcessingParameterString(self.BANDS, "Bands for red, green, blue (e.g. 4,3,2)", "", optional=True),
            QgsProcessingParameterEnum(self.SCALING, "Scaling of non-8-bit bands to 0–255", list(SCALING_LABELS),
                                       defaultValue=0),
        ):
            param.setFlags(param.flags() | advanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination(self.OUTPUT, "Classes"))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.OUTPUT_VECTOR, "Objects (polygons)", QgsProcessing.TypeVectorPolygon, optional=True,
            createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber(self.FEATURE_COUNT, "Number of polygons"))
        self.addOutput(QgsProcessingOutputString(self.STATISTICS, "Per-class statistics (JSON)"))

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
        endpoint = (self.parameterAsString(parameters, self.WORKER, context) or "").strip()
        local = None
        if not endpoint:
            model = self.parameterAsFile(parameters, self.MODEL, context)
            python = (self.parameterAsString(parameters, self.WORKER_PYTHON, context) or "").strip()
            device = DEVICES[self.parameterAsEnum(parameters, self.DEVICE, context)]
            local = LocalWorkerSpec(python or PluginSettings.load().worker_python, model or "", device)
            if not model:
                raise QgsProcessingException(
                    "Give a WORKER endpoint (e.g. tcp://127.0.0.1:5555), or a MODEL to start a local worker.")
        vector = self.parameterAsOutputLayer(parameters, self.OUTPUT_VECTOR, context) or None
        try:
            self._request = prepare_job(
                layer,
                self.parameterAsOutputLayer(parameters, self.OUTPUT, context),
                WorkerTarget(endpoint, local),
                extent=extent,
                extent_crs=extent_crs,
                resolution=self.parameterAsDouble(parameters, self.RESOLUTION, context),
                resolution_units=RESOLUTION_UNITS[self.parameterAsEnum(parameters, self.RESOLUTION_UNITS, context)],
                bands=self.parameterAsString(parameters, self.BANDS, context) or None,
                scaling=SCALING_MODES[self.parameterAsEnum(parameters, self.SCALING, context)],
                patch=self.parameterAsInt(parameters, self.PATCH, context),
                stride=self.parameterAsInt(parameters, self.STRIDE, context),
                vector_path=vector,
                statistics=True,
                context=context.transformContext(),
                aoi=aoi,
                aoi_crs=aoi_crs,
            )
        except FactSegError as exc:
            raise QgsProcessingException(str(exc)) from exc
        return True

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):  # noqa: N802
        request, self._request = self._request, None
        if request is None:
            raise QgsProcessingException("The algorithm was not prepared (internal error).")
        try:
            result = run_job(
                request,
                progress=lambda fraction: feedback.setProgress(100.0 * fraction),
                is_cancelled=feedback.isCanceled,
                log=feedback.pushInfo,
            )
        except FactSegError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushInfo(f"Classes: {format_statistics(result.statistics)}")
        output = str(result.raster_path)
        if context.willLoadLayerOnCompletion(output):
            details = context.layerToLoadOnCompletionDetails(output)
            details.setPostProcessor(ClassLayerStyler.create(result.classes))
        return {
            self.OUTPUT: output,
            self.OUTPUT_VECTOR: str(result.vector_path) if result.vector_path else None,
            self.FEATURE_COUNT: result.feature_count,
            self.STATISTICS: json.dumps(result.statistics),
        }
