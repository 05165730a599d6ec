"""What a finished run tells the analyst: the summary line, the per-class table, and notes on the input.

Areas are in m² (ha, km²) only when the layer is georeferenced; a picture without georeferencing (a PNG, a scan)
has pixels for map units, so its areas are counted in pixels and a note says so. A one-band layer is read as
red = green = blue, and a note says that too. The same texts go to the Processing log, the message bar and its
details table, so the toolbox and the dialog report alike.
"""
from __future__ import annotations

import html
from collections.abc import Sequence

from osgeo import gdal
from qgis.core import QgsRasterLayer

BACKGROUND_ID = 0


def is_georeferenced(layer: QgsRasterLayer) -> bool:
    """False for a layer without a CRS, or a GDAL file without a geotransform (pixel coordinates)."""
    if not layer.crs().isValid():
        return False
    if layer.providerType() != "gdal":
        return True
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        dataset = gdal.Open(layer.source().split("|")[0])
        return dataset is None or dataset.GetGeoTransform(can_return_null=True) is not None or bool(
            dataset.GetGCPCount())
    finally:
        gdal.PopErrorHandler()


def layer_notes(layer: QgsRasterLayer, bands: Sequence[int] | None = None) -> list[str]:
    """One line for each thing about the input the analyst should know: no georeferencing, one band."""
    notes = []
    if not is_georeferenced(layer):
        notes.append(f"Layer {layer.name()!r} has no georeferencing: areas are in pixels, not m², and the outputs "
                     "use pixel coordinates.")
    if layer.bandCount() == 1:
        notes.append(f"Layer {layer.name()!r} has one band: band 1 is used for red, green and blue.")
    elif bands is not None and len(set(bands)) == 1:
        notes.append(f"Band {bands[0]} of layer {layer.name()!r} is used for red, green and blue.")
    return notes


def format_area(stat: dict, georeferenced: bool = True) -> str:
    """'3 943.5 m²', '1.53 ha', '2.100 km²', or '1 234 px' without georeferencing."""
    if not georeferenced:
        return f"{int(stat['pixels']):,} px".replace(",", " ")
    square_metres = float(stat["area_m2"])
    if square_metres >= 1e6:
        return f"{square_metres / 1e6:.3f} km²"
    if square_metres >= 1e4:
        return f"{square_metres / 1e4:.2f} ha"
    return f"{square_metres:.1f} m²"


def present(statistics: Sequence[dict]) -> list[dict]:
    """The classes with pixels, largest first, background last."""
    rows = [s for s in statistics if s["pixels"] > 0]
    return sorted(rows, key=lambda s: (s["id"] == BACKGROUND_ID, -s["pixels"]))


def present_ids(statistics: Sequence[dict]) -> set[int]:
    """Ids of the classes the run found (the legend lists only these)."""
    return {int(s["id"]) for s in statistics if s["pixels"] > 0}


def _name(stat: dict) -> str:
    return str(stat["name"]).replace("_", " ")


def format_statistics(statistics: Sequence[dict], georeferenced: bool = True) -> str:
    """One line for the message bar: 'small vehicle: 19.26 % (3 943.5 m²); …; background: …'."""
    return "; ".join(f"{_name(s)}: {100 * s['share']:.2f} % ({format_area(s, georeferenced)})"
                     for s in present(statistics)) or "no valid pixels"


def summary(width: int, height: int, seconds: float, statistics: Sequence[dict], feature_count: int | None,
            georeferenced: bool = True) -> str:
    """The run in one line: size, time, objects, then the classes present."""
    polygons = f", {feature_count} objects" if feature_count is not None else ""
    units = "" if georeferenced else " (no georeferencing: areas in pixels)"
    return (f"{width} × {height} px in {seconds:.1f} s{polygons}{units}. "
            f"{format_statistics(statistics, georeferenced)}").strip()


def table_lines(statistics: Sequence[dict], georeferenced: bool = True) -> list[str]:
    """The per-class table as aligned text lines (the Processing log and the FactSeg log panel)."""
    rows = [(_name(s), f"{100 * s['share']:.2f} %", format_area(s, georeferenced)) for s in present(statistics)]
    if not rows:
        return ["no valid pixels"]
    header = ("class", "share", "area" if georeferenced else "area (pixels)")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    return [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}" for a, b, c in [header, *rows]]


def table_html(statistics: Sequence[dict], georeferenced: bool = True) -> str:
    """The per-class table for the message bar's details window."""
    head = "<tr><th align='left'>class</th><th align='right'>share</th><th align='right'>area</th></tr>"
    body = "".join(f"<tr><td>{html.escape(_name(s))}</td><td align='right'>{100 * s['share']:.2f} %</td>"
                   f"<td align='right'>{html.escape(format_area(s, georeferenced))}</td></tr>"
                   for s in present(statistics))
    note = "" if georeferenced else "<p>The layer has no georeferencing: areas are in pixels.</p>"
    return f"{note}<table cellspacing='0' cellpadding='4'>{head}{body}</table>"
