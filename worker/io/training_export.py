"""Training data from labelled polygons: the class table, a spatial train/val split, tiles, and the
iSAID-layout files that ``training/train.py`` reads.

Runs inside QGIS (``factseg:export_training_data``) and anywhere GDAL does: numpy + GDAL/OGR only, no torch.

Layout written (the one ``training.isaid`` reads)::

    OUT/classes.json                                   [{"id": 0, "name": "background", "color": [0, 0, 0]}, ...]
    OUT/export.json                                    source, grid, CRS and every tile's pixel window and split
    OUT/{train,val}/images/NAME.png                    RGB, 8-bit
    OUT/{train,val}/masks/NAME_instance_color_RGB.png  class colours; IGNORE_COLOR where pixels are ignored

Pixels outside the area of interest, and nodata pixels of the image, are written in ``IGNORE_COLOR``, a colour no
class has: the training reader maps every colour that is not in ``classes.json`` to the ignore label (255).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import CLASSES_FILE, EXPORT_FILE, IGNORE_COLOR, IMAGES_DIR, MASKS_DIR, SPLITS, image_path, mask_path
from .outputs import OutputPathError, claim_partial_folder, partial_folder_path

BACKGROUND = {"id": 0, "name": "background", "color": [0, 0, 0]}
#: Colours for the user's classes, in order: saturated and far apart, so masks are legible to a person too.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
    (0, 0, 128), (128, 128, 128),
)


class ExportError(ValueError):
    """The labels or the options cannot make training data; the message says why in one sentence."""


def _palette_color(index: int) -> list[int]:
    if index < len(PALETTE):
        return list(PALETTE[index])
    # Beyond the palette: a deterministic spread that still avoids black (background) and white (ignore).
    golden = (index * 0.618033988749895) % 1.0
    return [int(40 + 170 * golden), int(40 + 170 * ((golden + 0.33) % 1.0)), int(40 + 170 * ((golden + 0.66) % 1.0))]


def build_class_table(values: Iterable[Any]) -> tuple[list[dict[str, Any]], dict[Any, int]]:
    """The class table (id 0 background first) and the map from a field value to its class id.

    Numbers are used as the ids themselves (1–254; 0 means background; the table then runs from 0 to the largest
    id, ``class_N`` for each, because ids are the model's output channels); text values become ids 1..N in
    sorted order of their names ("background" is id 0). Empty values (None, "", NULL) are skipped.

    Raises:
        ExportError: no value at all, ids out of range, or names that clash with "background".
    """
    present = [v for v in values if v is not None and str(v).strip() != "" and str(v) != "NULL"]
    if not present:
        raise ExportError("The class field has no values: fill it in for the labelled polygons.")
    if all(_is_integer(v) for v in present):
        ids = sorted({int(v) for v in present})
        bad = [i for i in ids if not 0 <= i <= 254]
        if bad:
            raise ExportError(f"Class ids must lie between 1 and 254 (0 is background); found {bad[:5]}.")
        # The ids are the model's output channels, so the table runs 0..max without gaps.
        table = [dict(BACKGROUND)] + [
            {"id": i, "name": f"class_{i}", "color": _palette_color(i - 1)} for i in range(1, max(ids) + 1)]
        lookup: dict[Any, int] = {v: int(v) for v in present}
        return table, lookup
    names = sorted({str(v).strip() for v in present})
    if len(names) > 254:
        raise ExportError(f"The class field has {len(names)} different names; at most 254 classes fit.")
    if any(n.lower() == "background" for n in names):
        names = [n for n in names if n.lower() != "background"]
    table = [dict(BACKGROUND)] + [{"id": i + 1, "name": n, "color": _palette_color(i)} for i, n in enumerate(names)]
    by_name = {row["name"]: row["id"] for row in table}
    lookup = {v: by_name.get(str(v).strip(), 0) for v in present}
    return table, lookup


def _is_integer(value: Any) -> bool:
    """An id given as a number (an integer field, or a real field holding whole numbers); text is a name."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


@dataclass(frozen=True)
class Tile:
    """One exported patch: its split, name and pixel window (rows y0..y1, columns x0..x1, end exclusive)."""

    split: str
    name: str
    y0: int
    x0: int
    y1: int
    x1: int


def tile_starts(length: int, patch: int, stride: int) -> list[int]:
    """Tile origins along one axis: 0, stride, … and a last tile shifted back to end at the border.

    This is the export's tiling of the labelled area; the trainer cuts its own 896/512 windows from the tiles.
    """
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch, stride))
    starts.append(length - patch)
    return sorted(set(starts))


def split_regions(height: int, width: int, val_fraction: float) -> dict[str, tuple[int, int, int, int]]:
    """Two disjoint pixel regions (y0, x0, y1, x1): val takes the last ``val_fraction`` along the longer axis.

    Tiles are cut inside each region separately, so no validation pixel is ever seen in training.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ExportError(f"VAL_FRACTION must be at least 0 and below 1, got {val_fraction}.")
    along_x = width >= height
    length = width if along_x else height
    cut = length - int(round(length * val_fraction))
    if val_fraction > 0 and (cut <= 0 or cut >= length):
        raise ExportError(
            f"The labelled area ({width} × {height} px) is too small to set {val_fraction:.0%} of it aside for "
            "validation: use a larger extent or VAL_FRACTION 0.")
    regions = {"train": (0, 0, height, cut) if along_x else (0, 0, cut, width)}
    if cut < length:
        regions["val"] = (0, cut, height, width) if along_x else (cut, 0, height, width)
    return regions


def plan_tiles(height: int, width: int, patch: int, stride: int, val_fraction: float, stem: str) -> list[Tile]:
    """Every tile of the export, train first, each inside its split's region."""
    if patch < 32 or stride < 1 or stride > patch:
        raise ExportError(f"PATCH must be at least 32 and the stride between 1 and PATCH; got {patch} and {stride}.")
    tiles = []
    for split, (ry0, rx0, ry1, rx1) in split_regions(height, width, val_fraction).items():
        for y in tile_starts(ry1 - ry0, patch, stride):
            for x in tile_starts(rx1 - rx0, patch, stride):
                y0, x0 = ry0 + y, rx0 + x
                y1, x1 = min(y0 + patch, ry1), min(x0 + patch, rx1)
                tiles.append(Tile(split, f"{stem}_r{y0:06d}_c{x0:06d}", y0, x0, y1, x1))
    return tiles


def valid_label(wkb: bytes) -> tuple[bytes | None, bool]:
    """A label polygon as it will be burnt: ``(wkb, False)`` unchanged when it is valid (OGC/GEOS), else
    ``(repaired, True)`` with GEOS's MakeValid (polygonal parts only), or ``(None, True)`` when no area is left.

    Analysts' edits make bow-ties and self-touching rings; repairing them here, and counting them, lets an export
    go on where Processing's invalid-geometry check would stop it at the first one.
    """
    from osgeo import ogr

    from .vectorize import is_valid, made_valid

    geometry = ogr.CreateGeometryFromWkb(bytes(wkb))
    if geometry is None or geometry.IsEmpty():
        return None, True
    if is_valid(geometry):
        return bytes(wkb), False
    fixed = made_valid(geometry)
    return (bytes(fixed.ExportToIsoWkb()) if fixed is not None else None), True


class LabelRasterizer:
    """Burns labelled polygons (WKB in the grid's CRS, with class ids) into tiles of a north-up grid (GDAL).

    Larger polygons are burnt first, so a small object drawn on top of a large one keeps its class.
    """

    def __init__(self, polygons: Sequence[tuple[bytes, int]], geotransform: Sequence[float], crs_wkt: str = "") -> None:
        from osgeo import ogr, osr

        self.geotransform = tuple(float(v) for v in geotransform)
        self.crs_wkt = crs_wkt
        srs = osr.SpatialReference(wkt=crs_wkt) if crs_wkt else None
        self._source = ogr.GetDriverByName("Memory").CreateDataSource("labels")
        self._layer = self._source.CreateLayer("labels", srs, geom_type=ogr.wkbUnknown)
        self._layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
        shapes = [(ogr.CreateGeometryFromWkb(wkb), int(class_id)) for wkb, class_id in polygons]
        for geometry, class_id in sorted(shapes, key=lambda s: -s[0].GetArea()):
            feature = ogr.Feature(self._layer.GetLayerDefn())
            feature.SetGeometry(geometry)
            feature.SetField("class_id", class_id)
            self._layer.CreateFeature(feature)

    def window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """Class ids (uint8, h×w) of the grid window: 0 where no polygon covers a pixel centre."""
        from osgeo import gdal

        gt = self.geotransform
        raster = gdal.GetDriverByName("MEM").Create("", x1 - x0, y1 - y0, 1, gdal.GDT_Byte)
        raster.SetGeoTransform((gt[0] + x0 * gt[1], gt[1], 0.0, gt[3] + y0 * gt[5], 0.0, gt[5]))
        if self.crs_wkt:
            raster.SetProjection(self.crs_wkt)
        gdal.RasterizeLayer(raster, [1], self._layer, options=["ATTRIBUTE=class_id"])
        return raster.GetRasterBand(1).ReadAsArray()


def labels_to_colors(labels: np.ndarray, table: Sequence[dict[str, Any]]) -> np.ndarray:
    """An h×w×3 colour mask of class ids: the table's colours, IGNORE_COLOR for 255 and unknown ids."""
    lut = np.empty((256, 3), dtype=np.uint8)
    lut[:] = IGNORE_COLOR
    for row in table:
        lut[int(row["id"])] = row["color"]
    return lut[labels]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    from osgeo import gdal

    height, width, _ = rgb.shape
    memory = gdal.GetDriverByName("MEM").Create("", width, height, 3, gdal.GDT_Byte)
    for band in range(3):
        memory.GetRasterBand(band + 1).WriteArray(np.ascontiguousarray(rgb[..., band]))
    png = gdal.GetDriverByName("PNG").CreateCopy(str(path), memory, options=["ZLEVEL=6"])
    if png is None:
        raise OSError(f"cannot write {path}")
    png = None
    aux = Path(f"{path}.aux.xml")
    if aux.exists():  # GDAL's sidecar adds nothing for a plain RGB PNG: keep the layout clean
        aux.unlink()


class TrainingDataWriter:
    """Writes an export into a hidden partial folder beside OUT and moves it to OUT only when complete.

    OUT must not exist or be an empty folder: an export never mixes with, or replaces, other files. A failure or
    cancel (leaving the ``with`` block without :meth:`commit`) removes the partial folder and leaves OUT as it was.
    The partial folder is created exclusively (:func:`worker.io.outputs.claim_partial_folder`): one that exists is
    another export's (or a user's) and is never written into nor removed; this export is refused instead.
    """

    def __init__(self, output: str | os.PathLike, table: Sequence[dict[str, Any]]) -> None:
        self.output = Path(output)
        if self.output.exists() and (not self.output.is_dir() or any(self.output.iterdir())):
            raise ExportError(
                f"The output folder {self.output} exists and is not empty: choose a new or an empty folder.")
        parent = self.output.parent
        if not parent.is_dir():
            raise ExportError(f"The folder {parent} does not exist: create it or choose another output folder.")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise ExportError(f"The folder {parent} is not writable: choose another output folder.")
        self.table = list(table)
        self.partial = partial_folder_path(self.output)
        self.counts = {split: 0 for split in SPLITS}
        self._committed = False
        self._owned = False

    def __enter__(self) -> TrainingDataWriter:
        try:
            claim_partial_folder(self.output, "export")
        except OutputPathError as exc:
            raise ExportError(str(exc)) from None
        self._owned = True
        for split in SPLITS:
            (self.partial / split / IMAGES_DIR).mkdir(parents=True)
            (self.partial / split / MASKS_DIR).mkdir(parents=True)
        return self

    def write(self, tile: Tile, rgb: np.ndarray, labels: np.ndarray) -> None:
        """One image/mask pair; ``labels`` uses 255 for ignored pixels."""
        _write_png(image_path(self.partial, tile.split, tile.name), rgb)
        _write_png(mask_path(self.partial, tile.split, tile.name), labels_to_colors(labels, self.table))
        self.counts[tile.split] += 1

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Write classes.json and export.json, then move the folder to OUT in one rename."""
        if self.counts["train"] == 0:
            raise ExportError("No tile holds a labelled pixel in the training part: label more of the area.")
        (self.partial / CLASSES_FILE).write_text(json.dumps(self.table, indent=2) + "\n", encoding="utf-8")
        manifest = {**manifest, "classes": self.table, "tiles_per_split": dict(self.counts)}
        (self.partial / EXPORT_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        try:
            if self.output.exists():
                self.output.rmdir()  # empty, checked at the start
            os.replace(self.partial, self.output)
        except OSError:
            raise ExportError(f"Another export filled {self.output} meanwhile: this export was discarded.") from None
        self._committed = True
        return self.output

    def __exit__(self, *exc: Any) -> None:
        if self._owned and not self._committed:
            shutil.rmtree(self.partial, ignore_errors=True)
