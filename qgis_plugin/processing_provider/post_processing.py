"""Per-run layer post-processors: when Processing (toolbox, batch, model, the dialog) loads an output into the
project, it is styled here — the class raster with the display palette over transparent background, the
polygons with a categorized renderer — the same way whatever started the run.

QGIS keeps a plain pointer to a post-processor, so the Python object must outlive the run. Each run makes its
own and holds it in ``_pending`` until QGIS has called it (or until it is dropped after ``MAX_PENDING`` newer
runs, for outputs that were never loaded): two runs at once never share or overwrite one another's styler.
"""
from __future__ import annotations

from collections.abc import Callable

from qgis.core import QgsProcessingContext, QgsProcessingLayerPostProcessorInterface

from ..styling import style_class_layer, style_polygon_layer

MAX_PENDING = 256
_pending: list[LayerStyler] = []


class LayerStyler(QgsProcessingLayerPostProcessorInterface):
    """Applies ``style(layer, classes)`` to the loaded output once, then lets itself go."""

    def __init__(self, style: Callable, classes: list[dict]) -> None:
        super().__init__()
        self.style = style
        self.classes = classes
        _pending.append(self)
        del _pending[:-MAX_PENDING]

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 (QGIS API)
        self.style(layer, self.classes)
        # Not removed from _pending here: QGIS may still touch the object right after this call returns.


def attach_stylers(context: QgsProcessingContext, outputs: dict[str, str | None], classes: list[dict]) -> None:
    """Give each output that Processing will load (by path) its styler: 'raster' and 'vector' keys."""
    for kind, style in (("raster", style_class_layer), ("vector", style_polygon_layer)):
        path = outputs.get(kind)
        if path and context.willLoadLayerOnCompletion(path):
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(LayerStyler(style, classes))


LAYER_TITLES = {"raster": "FactSeg classes", "vector": "FactSeg objects"}


def name_after_input(context: QgsProcessingContext, outputs: dict[str, str | None], input_name: str,
                     defaults: dict[str, str]) -> None:
    """Name the loaded outputs after the input ('scene — FactSeg classes') where Processing would use the
    parameter's title ('Classes'); a name the caller chose (the dialog's) is kept."""
    for kind, path in outputs.items():
        if not path or not input_name or not context.willLoadLayerOnCompletion(path):
            continue
        details = context.layerToLoadOnCompletionDetails(path)
        if details.name in ("", defaults.get(kind), "output"):
            details.name = f"{input_name} — {LAYER_TITLES[kind]}"
