"""The model's ground resolution (its card's ``gsd_m``) against the layer's: the default output grid and the
one-line warning when a model sees pixels far from the size it learnt objects at.

FactSeg learns object sizes in pixels: a model trained at 0.3 m sees every vehicle of a 0.1 m layer three times
too large. So ``factseg:segment`` without RESOLUTION reads the layer resampled to the model's ``gsd_m`` (when the
model knows it), and the log (and the dialog) say when the pixels the model gets differ by more than
:data:`DEGRADE_RATIO` from its own.
"""
from __future__ import annotations

from typing import Any

from qgis.core import QgsCoordinateTransformContext, QgsProject, QgsRasterLayer

from .errors import FactSegError
from .grid import OutputGrid, ground_metres_per_unit, ground_sample_distance, native_resolution
from .local_workers import local_endpoint
from .worker_import import WorkerError

#: Beyond this ratio between the model's and the segmented pixel size, results degrade noticeably.
DEGRADE_RATIO = 1.5
#: The longest the read of the model's resolution waits for a worker (QGIS's main thread waits with it).
GSD_READ_TIMEOUT_S = 3.0


def card_gsd(info_or_card: dict[str, Any] | None) -> float | None:
    """``gsd_m`` of a worker's ``info`` reply (its ``model_card``) or of a card; None when unknown or malformed."""
    if not isinstance(info_or_card, dict):
        return None
    card = info_or_card.get("model_card", info_or_card)
    value = card.get("gsd_m") if isinstance(card, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return None
    return float(value)


def worker_gsd(target: Any) -> tuple[float | None, bool]:
    """(``gsd_m`` of the model a :class:`~.job.WorkerTarget` serves, whether the worker answered).

    A local worker is started here, and kept for the run. A running worker answers ``info`` at once, so the read
    waits :data:`GSD_READ_TIMEOUT_S` at most: it runs while the job is prepared, on QGIS's main thread.
    """
    endpoint = target.endpoint or local_endpoint(target.local)
    try:
        with target.client(endpoint, min(target.probe_timeout_s, GSD_READ_TIMEOUT_S), retries=0) as client:
            return card_gsd(client.info()), True
    except (WorkerError, OSError, ValueError):
        return None, False


def model_resolution(target: Any, layer: QgsRasterLayer, context: QgsCoordinateTransformContext,
                     log: Any = None) -> tuple[float, str]:
    """(RESOLUTION, units) for a request that gave none: the model's ``gsd_m`` in cm/px where it knows it, else
    (0, map units): the layer's native grid. A layer already at the model's resolution keeps its own grid."""
    gsd, answered = worker_gsd(target)
    if gsd is None:
        if not answered and log is not None:
            log("RESOLUTION not given and the worker did not answer for its model's ground resolution: the layer's "
                "native resolution is used.")
        return 0.0, "map_units"
    native = layer_gsd(layer, context)
    if native is not None and abs(native / gsd - 1.0) < 1e-3:
        return 0.0, "map_units"
    if log is not None:
        layer_part = f"; the layer's {native:.3g} m/px pixels are read resampled" if native else ""
        log(f"RESOLUTION not given: the model's ground resolution, {gsd:.3g} m/px{layer_part}.")
    return gsd * 100.0, "cm_per_px"


def layer_gsd(layer: QgsRasterLayer, context: QgsCoordinateTransformContext) -> float | None:
    """Ground metres per native pixel of ``layer`` at its centre; None without a native grid or a measure."""
    native = native_resolution(layer) if isinstance(layer, QgsRasterLayer) else None
    if native is None:
        return None
    try:
        return ground_sample_distance(layer.crs(), layer.extent(), native[0], native[1], context)
    except FactSegError:
        return None


def layer_metres_per_unit(layer: Any) -> float | None:
    """Ground metres per map unit along x at a raster layer's centre (None where it cannot be measured): the
    dialog's conversion between map units and cm/px."""
    if not isinstance(layer, QgsRasterLayer):
        return None
    extent = layer.extent()
    try:
        return ground_metres_per_unit(layer.crs(), extent.center(), max(extent.width(), extent.height()) * 0.01
                                      or 1e-3, QgsProject.instance().transformContext())[0]
    except FactSegError:
        return None


def native_value(layer: Any, units: str) -> float | None:
    """A raster layer's native pixel size in ``units`` ('map_units', or 'cm_per_px': ground cm per pixel along x
    at the layer's centre); None without a native grid, or where the ground size cannot be measured."""
    native = native_resolution(layer) if isinstance(layer, QgsRasterLayer) else None
    if native is None or units != "cm_per_px":
        return native[0] if native else None
    per_unit = layer_metres_per_unit(layer)
    return native[0] * per_unit * 100.0 if per_unit is not None else None


def grid_gsd(grid: OutputGrid, context: QgsCoordinateTransformContext | None = None) -> float | None:
    """Ground metres per pixel of an output grid at its centre (None where it cannot be measured)."""
    try:
        return ground_sample_distance(grid.crs, grid.extent, grid.res_x, grid.res_y,
                                      context or QgsCoordinateTransformContext())
    except FactSegError:
        return None


def differs(a: float | None, b: float | None, ratio: float = DEGRADE_RATIO) -> bool:
    """Whether two pixel sizes differ by more than ``ratio`` (False when either is unknown)."""
    return bool(a and b) and max(a, b) / min(a, b) > ratio  # type: ignore[type-var,operator]


def degrade_note(model_gsd: float | None, seen_gsd: float | None) -> str | None:
    """The one line said when the model sees pixels far from its own size, else None."""
    if not differs(model_gsd, seen_gsd):
        return None
    factor = seen_gsd / model_gsd  # type: ignore[operator]
    return (f"The model was trained at {model_gsd:.3g} m/px but gets {seen_gsd:.3g} m/px pixels (objects "
            f"{1 / factor:.2g}× their trained size): results will degrade; segment at the model's resolution "
            "(RESOLUTION 0) instead.")


def run_note(info: dict[str, Any], grid: OutputGrid) -> str | None:
    """For the run's log, once the worker described its model: the degrade warning, if it applies."""
    return degrade_note(card_gsd(info), grid_gsd(grid))
