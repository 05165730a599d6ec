"""Headless segmentation of a raster file through a worker: the command line twin of the QGIS plugin.

``python -m worker.segment INPUT OUTPUT --connect ENDPOINT [--extent xmin,ymin,xmax,ymax] [--patch N]
[--stride N] [--chunk-size N] [--vector OUT.gpkg] [--confidence]``

Reads INPUT with GDAL window by window (only the chunk being sent is in memory), sends the chunks to the
worker(s), and writes OUTPUT: a GeoTIFF of uint8 class ids on INPUT's grid and CRS (restricted to the extent),
255 = nodata, colour table and class names embedded, tiled and compressed. OUTPUT appears under its final name
only when complete: a failed, cancelled or interrupted run leaves nothing that looks finished.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .client import WorkerClient
from .protocol import SegmentationCancelled, WorkerError


class InputError(ValueError):
    """The input raster or the options cannot be used; the message says why."""


class RasterSource:
    """RGB pixels and validity of a window of a GDAL raster, in the coordinates of an extent of it."""

    def __init__(self, path: str, extent: tuple[float, float, float, float] | None = None,
                 bands: tuple[int, int, int] | None = None) -> None:
        from osgeo import gdal

        gdal.UseExceptions()
        try:
            self.ds = gdal.Open(str(path))
        except RuntimeError as exc:
            raise InputError(f"cannot open {path}: {exc}") from None
        ds = self.ds
        self.bands = bands or self._rgb_bands()
        for b in self.bands:
            if not 1 <= b <= ds.RasterCount:
                raise InputError(f"{path} has {ds.RasterCount} band(s); band {b} does not exist")
            band = ds.GetRasterBand(b)
            if band.DataType != gdal.GDT_Byte:
                raise InputError(
                    f"{path} band {b} is {gdal.GetDataTypeName(band.DataType)}; FactSeg expects 8-bit RGB. Convert "
                    f"first, e.g. gdal_translate -ot Byte -scale {path} rgb8.tif"
                )
        self.geotransform = ds.GetGeoTransform()
        self.crs_wkt = ds.GetProjection() or ""
        self.row0, self.col0, self.height, self.width = self._window(extent)
        gt = self.geotransform
        self.out_geotransform = (
            gt[0] + self.col0 * gt[1] + self.row0 * gt[2], gt[1], gt[2],
            gt[3] + self.col0 * gt[4] + self.row0 * gt[5], gt[4], gt[5],
        )
        self._masked = any(
            ds.GetRasterBand(b).GetMaskFlags() != gdal.GMF_ALL_VALID for b in self.bands
        )

    def _rgb_bands(self) -> tuple[int, int, int]:
        from osgeo import gdal

        ds = self.ds
        if ds.RasterCount == 1:
            return (1, 1, 1)  # grayscale: the network sees it as grey RGB
        if ds.RasterCount == 2:
            raise InputError("a 2-band raster is neither grey nor RGB; pass --bands R,G,B")
        interp = {ds.GetRasterBand(i).GetColorInterpretation(): i for i in range(1, ds.RasterCount + 1)}
        rgb = (interp.get(gdal.GCI_RedBand), interp.get(gdal.GCI_GreenBand), interp.get(gdal.GCI_BlueBand))
        return rgb if all(rgb) else (1, 2, 3)  # type: ignore[return-value]

    def _window(self, extent: tuple[float, float, float, float] | None) -> tuple[int, int, int, int]:
        ds = self.ds
        if extent is None:
            return 0, 0, ds.RasterYSize, ds.RasterXSize
        gt = self.geotransform
        if gt[2] != 0 or gt[4] != 0:
            raise InputError("--extent needs a north-up raster (no rotation in its geotransform)")
        xmin, ymin, xmax, ymax = extent
        if xmin >= xmax or ymin >= ymax:
            raise InputError(f"--extent {extent} is empty: expected xmin,ymin,xmax,ymax with min < max")
        eps = 1e-6
        cols = sorted(((xmin - gt[0]) / gt[1], (xmax - gt[0]) / gt[1]))
        rows = sorted(((ymax - gt[3]) / gt[5], (ymin - gt[3]) / gt[5]))
        col0, col1 = max(0, math.floor(cols[0] + eps)), min(ds.RasterXSize, math.ceil(cols[1] - eps))
        row0, row1 = max(0, math.floor(rows[0] + eps)), min(ds.RasterYSize, math.ceil(rows[1] - eps))
        if col0 >= col1 or row0 >= row1:
            x0, x1 = gt[0], gt[0] + ds.RasterXSize * gt[1]
            y0, y1 = gt[3] + ds.RasterYSize * gt[5], gt[3]
            raise InputError(f"--extent {extent} does not overlap the raster (bounds {x0},{min(y0, y1)},{x1},{max(y0, y1)})")
        return row0, col0, row1 - row0, col1 - col0

    def read(self, y0: int, x0: int, y1: int, x1: int) -> tuple[np.ndarray, np.ndarray | None]:
        """uint8 h×w×3 pixels and a bool validity mask (None when the raster has no nodata/mask/alpha)."""
        xoff, yoff, w, h = self.col0 + x0, self.row0 + y0, x1 - x0, y1 - y0
        pixels = np.empty((h, w, 3), dtype=np.uint8)
        valid = np.ones((h, w), dtype=bool) if self._masked else None
        for i, b in enumerate(self.bands):
            band = self.ds.GetRasterBand(b)
            pixels[:, :, i] = band.ReadAsArray(xoff, yoff, w, h)
            if valid is not None:
                valid &= band.GetMaskBand().ReadAsArray(xoff, yoff, w, h) != 0
        return pixels, valid


def _parse_numbers(text: str, count: int, cast: type, what: str) -> tuple:
    """``count`` comma-separated numbers of type ``cast``, or an argparse error that says what was expected."""
    try:
        values = tuple(cast(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
    return values


def _parse_extent(text: str) -> tuple[float, float, float, float]:
    return _parse_numbers(text, 4, float, "extent must be four numbers xmin,ymin,xmax,ymax")


def _parse_bands(text: str) -> tuple[int, int, int]:
    return _parse_numbers(text, 3, int, "bands must be three band numbers R,G,B")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker.segment", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="input raster (any GDAL format), 8-bit RGB or grey")
    p.add_argument("output", help="output class GeoTIFF")
    p.add_argument("--connect", action="append", required=True, metavar="ENDPOINT",
                   help="worker endpoint, e.g. tcp://127.0.0.1:5555 (repeat for several workers)")
    p.add_argument("--extent", type=_parse_extent, help="xmin,ymin,xmax,ymax in the input's CRS")
    p.add_argument("--bands", type=_parse_bands, help="input bands used as R,G,B (default: by colour interpretation)")
    p.add_argument("--patch", type=int, help="window size (default: the worker's)")
    p.add_argument("--stride", type=int, help="window stride (default: the worker's)")
    p.add_argument("--chunk-size", type=int, help="chunk side sent per request (default: the worker's)")
    p.add_argument("--vector", help="also write polygons of the objects to this GeoPackage")
    p.add_argument("--confidence", action="store_true", help="also write OUTPUT_confidence.tif (float32)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (3× slower)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds without news from a worker before retrying")
    p.add_argument("--retries", type=int, default=3, help="reconnections before giving up")
    p.add_argument("--server-key", help="the worker's public key file (server.key) for CURVE")
    p.add_argument("--client-key", help="this client's secret key file (NAME.key_secret) for CURVE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--stats-json", help="write run and per-class statistics to this JSON file")
    return p


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Segment ``args.input`` into ``args.output``; returns the run statistics (raises on failure)."""
    from .raster_output import ClassRasterWriter
    from .vectorize import class_statistics, polygonize_classes

    source = RasterSource(args.input, args.extent, args.bands)
    server_key = client_keys = None
    if args.server_key or args.client_key:
        from .keys import load_client_keys, load_public_key

        if not (args.server_key and args.client_key):
            raise InputError("CURVE needs both --server-key and --client-key")
        server_key, client_keys = load_public_key(args.server_key), load_client_keys(args.client_key)
    bar = None
    if not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=100, unit="%", desc="segment", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}]")

    def progress(fraction: float) -> None:
        if bar is not None:
            bar.update(100 * fraction - bar.n)

    with WorkerClient(args.connect, timeout_s=args.timeout, retries=args.retries, server_public_key=server_key,
                      client_keys=client_keys) as client:
        classes = client.info()["classes"]
        try:
            with ClassRasterWriter(args.output, source.width, source.height, source.out_geotransform, source.crs_wkt,
                                   classes, confidence=args.confidence) as out:
                stats = client.segment_raster(
                    source.height, source.width, source.read, out.write, patch=args.patch, stride=args.stride,
                    chunk_size=args.chunk_size, confidence=args.confidence, progress=progress, tta=args.tta,
                )
        finally:
            if bar is not None:
                bar.close()
    stats["output"] = str(Path(args.output))
    stats["size"] = [source.height, source.width]
    stats["classes"] = [s for s in class_statistics(args.output, classes) if s["pixels"]]
    if args.vector:
        stats["vector"] = str(args.vector)
        stats["polygons"] = polygonize_classes(args.output, args.vector, classes)
    return stats


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        stats = run(args)
    except InputError as exc:
        print(f"segment: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SegmentationCancelled):
        print("segment: cancelled; no output written", file=sys.stderr)
        return 130
    except WorkerError as exc:
        print(f"segment: {exc}; no output written", file=sys.stderr)
        return 1
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats, indent=2))
    print(f"wrote {stats['output']} ({stats['size'][1]}×{stats['size'][0]} px, {stats['chunks']} chunks, "
          f"{stats['seconds']:.1f} s, {stats['retries']} retries)")
    for item in stats["classes"]:
        print(f"  {item['id']:3d} {item['name']:<20} {item['pixels']:>10d} px {item['area_m2']:>14.1f} m² "
              f"{100 * item['share']:6.2f}%")
    if args.vector:
        print(f"wrote {stats['vector']} ({stats['polygons']} polygons)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
