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
import sys
from pathlib import Path
from typing import Any

from .client import WorkerClient
from .client.protocol import SegmentationCancelled, WorkerError
from .io.raster_source import InputError, RasterSource


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
    from .io.raster_output import ClassRasterWriter
    from .io.vectorize import class_statistics, polygonize_classes

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
