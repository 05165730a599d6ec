"""The rasters of a batch: INPUT arguments (files, folders, lists of paths, GDAL paths) and their output names.

An output is ``DIR/<input stem>.tif`` (plus ``<stem>_confidence.tif`` and ``<stem>.gpkg`` when asked). Two
inputs with one stem, or an output that is an input, are refused before anything runs: no input is ever
overwritten.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..io.raster_output import confidence_path
from ..io.raster_source import InputError, RasterSource
from .output import RasterGrid

#: File endings taken from a folder (other files there are ignored).
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".jp2", ".img", ".png", ".jpg", ".jpeg"}
#: A file with one of these endings is a list of inputs, one a line (``#`` starts a comment).
LIST_SUFFIXES = {".txt", ".lst", ".list"}


def is_gdal_path(item: str) -> bool:
    """``/vsis3/…``, ``/vsicurl/…`` and the like: read by GDAL on every worker, not checked here."""
    return item.startswith("/vsi") or "://" in item


def _folder(path: Path) -> list[str]:
    return sorted(str(p) for p in path.iterdir()
                  if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES and not p.name.startswith("."))


def _list_file(path: Path) -> list[str]:
    items = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            items.append(line if is_gdal_path(line) or os.path.isabs(line) else str(path.parent / line))
    return items


def expand_inputs(items: Sequence[str]) -> list[str]:
    """Every input raster named by ``items``, in order, each once; raises InputError for a missing one."""
    found: list[str] = []
    for item in items:
        path = Path(item)
        if is_gdal_path(item):
            found.append(item)
        elif path.is_dir():
            found.extend(_folder(path))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            for entry in _list_file(path):
                if not is_gdal_path(entry) and not Path(entry).is_file():
                    raise InputError(f"{entry} (listed in {path}) does not exist")
                found.append(entry)
        elif path.is_file():
            found.append(item)
        else:
            raise InputError(f"input {item} does not exist (expected a raster, a folder, a .txt list or a GDAL path)")
    unique = list(dict.fromkeys(found))
    if not unique:
        raise InputError(f"no input rasters in {', '.join(items)} (folders are searched for "
                         f"{', '.join(sorted(RASTER_SUFFIXES))})")
    return unique


def output_stem(item: str) -> str:
    """The input's file name without extension (and without a URL's query string)."""
    return PurePosixPath(item.split("?", 1)[0].rstrip("/")).stem


def _same_file(a: Path, b: str) -> bool:
    if is_gdal_path(b):
        return False
    try:
        return a.resolve() == Path(b).resolve() or (a.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def plan_outputs(inputs: Sequence[str], out_dir: Path, confidence: bool, vector: bool) -> list[Path]:
    """``out_dir/<stem>.tif`` for each input; InputError when two inputs share a stem or an output is an input."""
    outputs: dict[str, str] = {}
    for item in inputs:
        stem = output_stem(item)
        if stem in outputs:
            raise InputError(f"{outputs[stem]} and {item} would both be written to {out_dir / (stem + '.tif')}; "
                             "rename one or run them into different --out-dir folders")
        outputs[stem] = item
    finals = [out_dir / f"{output_stem(item)}.tif" for item in inputs]
    for final in finals:
        written = [final] + ([confidence_path(final)] if confidence else []) + ([final.with_suffix(".gpkg")] if vector else [])
        for path in written:
            clash = next((item for item in inputs if _same_file(path, item)), None)
            if clash is not None:
                raise InputError(f"output {path} would overwrite the input {clash}; choose another --out-dir")
    return finals


@dataclass(frozen=True)
class RasterMeta:
    """What the client needs of an input (read from its header only): its grid and the RGB bands used."""

    grid: RasterGrid
    bands: tuple[int, int, int]


def probe(item: str, bands: tuple[int, int, int] | None) -> RasterMeta:
    """Open ``item`` with GDAL to read its size, geotransform, CRS and bands (no pixels); raises InputError."""
    source = RasterSource(item, None, bands)
    grid = RasterGrid(source.height, source.width, tuple(source.out_geotransform), source.crs_wkt)
    return RasterMeta(grid, tuple(source.bands))
