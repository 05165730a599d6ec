"""Headless segmentation of a raster file through a worker: the command line twin of the QGIS plugin.

``python -m worker.segment INPUT OUTPUT --connect ENDPOINT [--extent xmin,ymin,xmax,ymax] [--patch N]
[--stride N] [--chunk-size N] [--vector OUT.gpkg] [--confidence] [--stats-json OUT.json]``

Reads INPUT with GDAL window by window (only the chunk being sent is in memory), sends the chunks to the
worker(s), and writes OUTPUT: a GeoTIFF of uint8 class ids on INPUT's grid and CRS (restricted to the extent),
255 = nodata, colour table and class names embedded, tiled, compressed, with overviews.

Before any compute it refuses (exit 2, one sentence) bad options and any output that is an input, an existing
folder, or in a folder it cannot write. All outputs of a run are written under hidden partial names and renamed
together at the end: a failed, cancelled (Ctrl-C) or terminated (SIGTERM) run leaves none of them under a final
name and no partial file, and tells the worker to drop the request's chunks.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .client.protocol import SegmentationCancelled, WorkerError
from .contract import DEFAULT_ENDPOINT
from .io.outputs import OutputPathError, check_output_paths
from .io.raster_source import InputError, RasterSource

if TYPE_CHECKING:
    from .io.pipeline import SegmentationRun

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
ENDPOINT_SCHEMES = ("tcp", "ipc")


class Terminated(BaseException):
    """SIGTERM/SIGHUP arrived: unwinds like Ctrl-C, so the request is cancelled and partial files removed."""


def _parse_numbers(text: str, count: int, cast: type, what: str) -> tuple:
    """``count`` comma-separated numbers of type ``cast``, or an argparse error that says what was expected."""
    try:
        values = tuple(cast(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{what}, got {text!r}")
    return values


def _parse_extent(text: str) -> tuple[float, float, float, float]:
    return _parse_numbers(text, 4, float, "extent must be four finite numbers xmin,ymin,xmax,ymax")


def _parse_bands(text: str) -> tuple[int, int, int]:
    bands = _parse_numbers(text, 3, int, "bands must be three band numbers R,G,B")
    if min(bands) < 1:
        raise argparse.ArgumentTypeError(f"band numbers start at 1, got {text!r}")
    return bands


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` (to ``high``), with a sentence saying so otherwise."""
    expected = f"a whole number from {low} to {high}" if high is not None else f"a whole number of at least {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 86400):
        raise argparse.ArgumentTypeError(f"expected seconds between 0 and 86400, got {text!r}")
    return value


def _endpoint(text: str) -> str:
    """A ZeroMQ endpoint the client can connect to: ``tcp://HOST:PORT`` or ``ipc://PATH``."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} has no scheme; write tcp://{text} (or ipc://PATH)")
    if scheme not in ENDPOINT_SCHEMES or not rest:
        raise argparse.ArgumentTypeError(f"{text!r} is not a worker endpoint; expected tcp://HOST:PORT or ipc://PATH")
    if scheme == "tcp":
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "@" in rest or "/" in rest:
            raise argparse.ArgumentTypeError(f"{text!r} is not tcp://HOST:PORT with a port from 1 to 65535")
    return text


def _key_file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"key file {text} does not exist")
    if not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"key file {text} is not readable")
    return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line (not usage + error), exit 2, as for every other refused input."""
        if message.endswith("expected one argument"):
            message += " (a value that starts with '-' is written --OPTION=VALUE, e.g. --extent=-9.5,40,-9,41)"
        self.exit(EXIT_USAGE, f"segment: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m worker.segment", description=__doc__.split("\n\n")[0])
    p.add_argument("input", help="input raster (any GDAL format), 8-bit RGB or grey")
    p.add_argument("output", help="output class GeoTIFF")
    p.add_argument("--connect", action="append", required=True, metavar="ENDPOINT", type=_endpoint,
                   help=f"worker endpoint, e.g. {DEFAULT_ENDPOINT} (repeat for several workers)")
    p.add_argument("--extent", type=_parse_extent, help="xmin,ymin,xmax,ymax in the input's CRS")
    p.add_argument("--bands", type=_parse_bands, help="input bands used as R,G,B (default: by colour interpretation)")
    p.add_argument("--patch", type=_whole_number(1), help="window size (default: the worker's)")
    p.add_argument("--stride", type=_whole_number(1), help="window stride (default: the worker's)")
    p.add_argument("--chunk-size", type=_whole_number(1), help="chunk side sent per request (default: the worker's)")
    p.add_argument("--vector", help="also write polygons of the objects to this GeoPackage (.gpkg)")
    p.add_argument("--confidence", action="store_true", help="also write OUTPUT_confidence.tif (float32)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (3× slower)")
    p.add_argument("--timeout", type=_seconds, default=60.0, help="seconds without news from a worker before retrying")
    p.add_argument("--retries", type=_whole_number(0, 100), default=3, help="reconnections before giving up")
    p.add_argument("--server-key", type=_key_file, help="the worker's public key file (server.key) for CURVE")
    p.add_argument("--client-key", type=_key_file, help="this client's secret key file (NAME.key_secret) for CURVE")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--stats-json", help="write run and per-class statistics to this JSON file")
    return p


def _curve_keys(args: argparse.Namespace) -> tuple[bytes | None, tuple[bytes, bytes] | None]:
    if not (args.server_key or args.client_key):
        return None, None
    if not (args.server_key and args.client_key):
        raise InputError("CURVE needs both --server-key and --client-key")
    from .client.keys import KeyFileError, load_client_keys, load_public_key

    try:
        server_key = load_public_key(args.server_key)
    except KeyFileError as exc:
        raise InputError(f"--server-key {args.server_key} holds no usable public key ({exc})") from None
    try:
        client_keys = load_client_keys(args.client_key)
    except KeyFileError as exc:
        raise InputError(f"--client-key {args.client_key} holds no usable secret key ({exc})") from None
    if not server_key:
        raise InputError(f"--server-key {args.server_key} holds no public key")
    return server_key, client_keys


def prepare(args: argparse.Namespace) -> tuple[SegmentationRun, Any, Any]:
    """Everything that can be refused before a worker is contacted: input, keys, output paths."""
    if args.vector and Path(args.vector).suffix.lower() != ".gpkg":
        raise InputError(f"--vector {args.vector} must be a GeoPackage file name ending in .gpkg")
    source = RasterSource(args.input, args.extent, args.bands)
    server_key, client_keys = _curve_keys(args)
    job = _segmentation_run(args, source)
    inputs = [args.input, *source.files, args.server_key, args.client_key]
    check_output_paths(job.output_paths(), [p for p in inputs if p])
    return job, server_key, client_keys


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Segment ``args.input`` into ``args.output`` (and the other outputs); returns the run statistics.

    Raises InputError/OutputPathError before any compute, WorkerError, OSError or GDAL's RuntimeError later;
    whatever is raised, no output of the run is left under a final or partial name. The run itself is the one
    pipeline the QGIS plugin runs too (:mod:`worker.io.pipeline`); ``open`` is its only round trip before the
    first chunk.
    """
    from .client import WorkerClient
    from .io.pipeline import OptionsRefused, run_segmentation

    job, server_key, client_keys = prepare(args)
    bar = None if args.quiet else _progress_bar()
    try:
        with WorkerClient(args.connect, timeout_s=args.timeout, retries=args.retries,
                          server_public_key=server_key, client_keys=client_keys) as client:
            result = run_segmentation(client, job, before_commit=_hold_signals,
                                      progress=(lambda f: bar.update(100 * f - bar.n)) if bar is not None else None)
    except OptionsRefused as exc:  # the worker's words for its limits, in the CLI's option names: a usage error
        reason = re.sub(r"header field '(\w+)'", lambda m: "--" + m.group(1).replace("_", "-"), exc.message)
        raise InputError(f"the worker refuses these options: {reason.rstrip('.')}") from None
    finally:
        if bar is not None:
            bar.close()
    return result.summary


def _segmentation_run(args: argparse.Namespace, source: RasterSource) -> SegmentationRun:
    """The run the options describe (the class raster, and the confidence raster beside it)."""
    from .io.pipeline import SegmentationRun
    from .io.raster_output import confidence_path

    output = Path(args.output)
    return SegmentationRun(
        width=source.width, height=source.height, geotransform=source.out_geotransform, crs_wkt=source.crs_wkt,
        reader=source.read, output=output, vector=Path(args.vector) if args.vector else None,
        confidence=confidence_path(output) if args.confidence else None, statistics=True,
        stats_json=Path(args.stats_json) if args.stats_json else None, patch=args.patch, stride=args.stride,
        chunk_size=args.chunk_size, tta=args.tta)


def _progress_bar() -> Any:
    from tqdm import tqdm

    # leave=False: erased at the end, so a failure's sentence stands alone; disable=None: no bar when piped
    return tqdm(total=100, unit="%", desc="segment", leave=False, disable=None,
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}% [{elapsed}<{remaining}]")


def _print_summary(stats: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"wrote {stats['output']} ({stats['size'][1]}×{stats['size'][0]} px, {stats['chunks']} chunks, "
          f"{stats['seconds']:.1f} s, {stats['retries']} retries)")
    for item in stats["classes"]:
        print(f"  {item['id']:3d} {item['name']:<20} {item['pixels']:>10d} px {item['area_m2']:>14.1f} m² "
              f"{100 * item['share']:6.2f}%")
    if args.vector:
        print(f"wrote {stats['vector']} ({stats['polygons']} polygons)")
    if args.stats_json:
        print(f"wrote {args.stats_json}")


def _on_signal(signum: int, _frame: Any) -> None:
    """First SIGINT/SIGTERM/SIGHUP unwinds the run; later ones are ignored so the cleanup can finish."""
    for sig in _HANDLED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name)


def _hold_signals() -> None:
    """Ignore further SIGINT/SIGTERM/SIGHUP if :func:`main` handles them (not when ``run`` is used as a library)."""
    for sig in _HANDLED_SIGNALS:
        if signal.getsignal(sig) is _on_signal:
            signal.signal(sig, signal.SIG_IGN)


_HANDLED_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from osgeo import gdal

    gdal.UseExceptions()
    gdal.PushErrorHandler("CPLQuietErrorHandler")  # GDAL's own warnings would add lines to the one sentence
    for sig in _HANDLED_SIGNALS:
        signal.signal(sig, _on_signal)
    try:
        stats = run(args)
    except (InputError, OutputPathError) as exc:
        return _fail(EXIT_USAGE, str(exc).rstrip("."))
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "cancelled; the worker was told to stop and no output was written")
    except SegmentationCancelled as exc:
        return _fail(EXIT_FAILED, f"{_first_line(exc)}; no output written")
    except Terminated as exc:
        return _fail(128 + signal.Signals[str(exc)].value,
                     f"terminated by {exc}; the worker was told to stop and no output was written")
    except WorkerError as exc:
        reason = _first_line(exc)
        return _fail(EXIT_FAILED, f"{reason} (no output written)" if reason.endswith("?") else
                     f"{reason}; no output written")
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        return _fail(EXIT_FAILED, f"cannot write{where}: {exc.strerror or exc}; no output written")
    except RuntimeError as exc:  # GDAL/OGR: disk full, driver errors
        return _fail(EXIT_FAILED, f"failed: {_first_line(exc)}; no output written")
    except Exception as exc:  # a bug: still one sentence, never a traceback
        return _fail(EXIT_FAILED, f"failed ({type(exc).__name__}: {_first_line(exc)}); no output written")
    _print_summary(stats, args)
    return 0


def _fail(code: int, message: str) -> int:
    print(f"segment: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
