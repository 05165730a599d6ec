"""Batch throughput: the same rasters through one ZeroMQ worker, and through worker.batch on 1 and 2 Dask workers.

Side by side in one run, interleaved round by round (this machine is shared, so drifting load hits all three
alike), every path warmed first (model loaded, first forward done), each timed from the first raster to the
last output committed:

* **zeromq**: one ``python -m worker`` (all cores), ``worker.segment`` run raster after raster (in-process,
  as its command line does: read, send, write);
* **dask-1**: ``worker.batch`` on a LocalCluster of one worker (all cores);
* **dask-2**: ``worker.batch`` on two workers (cores split between them).

Reported: seconds and megapixels per second per path, the Dask path's overhead over ZeroMQ at one worker
(target ≤ 5 %) and per raster, both from wall times and from the time spent outside chunk computation (the
latter does not move with the load of a shared machine), the 2-worker speed-up, and whether the class bands
are byte-identical.

Usage: ``.venv/bin/python bench/batch.py [--rasters 4] [--size 768] [--patch 256] [--stride 128]
[--chunk-size 512] [--backbone resnet18] [--rounds 2] [--json FILE]``. Random weights (timing only).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import random_checkpoint  # noqa: E402
from worker.client import start_local_worker  # noqa: E402


def make_rasters(folder: Path, count: int, size: int) -> list[Path]:
    from osgeo import gdal, osr

    gdal.UseExceptions()
    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"scene{i}.tif"
        ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte, ["TILED=YES"])
        ds.SetGeoTransform((500000.0, 0.5, 0.0, 4500000.0, 0.0, -0.5))
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(32633)
        ds.SetProjection(srs.ExportToWkt())
        for b in range(3):
            ds.GetRasterBand(b + 1).WriteArray(rng.integers(0, 256, (size, size), dtype=np.uint8))
        ds = None
        paths.append(path)
    return paths


def run_zeromq(endpoint: str, rasters: list[Path], out_dir: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(wall seconds, seconds the worker spent computing) for worker.segment over every raster in turn."""
    from worker import segment

    out_dir.mkdir(parents=True, exist_ok=True)
    compute = 0.0
    started = time.perf_counter()
    for raster in rasters:
        options = segment.build_parser().parse_args(
            [str(raster), str(out_dir / raster.name), "--connect", endpoint, "--patch", str(args.patch), "--stride",
             str(args.stride), "--chunk-size", str(args.chunk_size), "--quiet"])
        compute += segment.run(options)["worker_seconds"]
    return time.perf_counter() - started, compute


def run_dask(address: str, rasters: list[Path], out_dir: Path, model: Path, threads: int,
             args: argparse.Namespace) -> tuple[float, float]:
    """(wall seconds, seconds inside the chunk tasks) for one worker.batch run over every raster."""
    from worker.batch.cli import build_parser, run

    options = build_parser().parse_args([*map(str, rasters), "--out-dir", str(out_dir), "--model", str(model),
                                         "--scheduler", address, "--patch", str(args.patch), "--stride",
                                         str(args.stride), "--chunk-size", str(args.chunk_size), "--threads",
                                         str(threads), "--quiet"])
    started = time.perf_counter()
    stats = run(options)
    elapsed = time.perf_counter() - started
    assert all(r["status"] == "done" for r in stats["rasters"]), stats
    return elapsed, sum(r["compute_s"] for r in stats["rasters"])


def identical(a: Path, b: Path, rasters: list[Path]) -> bool:
    from osgeo import gdal

    def band(path: Path) -> bytes:
        ds = gdal.Open(str(path))
        return ds.GetRasterBand(1).ReadAsArray().tobytes()

    return all(band(a / r.name) == band(b / r.name) for r in rasters)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rasters", type=int, default=4)
    p.add_argument("--size", type=int, default=768)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--stride", type=int, default=128)
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None, help="also write all figures to this JSON file")
    args = p.parse_args()
    from distributed import LocalCluster

    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="factseg-bench-batch-"))
    model = random_checkpoint(work / f"{args.backbone}.pt", args.backbone)
    rasters = make_rasters(work, args.rasters, args.size)
    (work / "warm").mkdir()
    warm = make_rasters(work / "warm", 1, args.stride * 2)
    times: dict[str, list[float]] = {"zeromq": [], "dask-1": [], "dask-2": []}
    outside: dict[str, list[float]] = {name: [] for name in times}  # wall time not spent computing chunks
    with start_local_worker(sys.executable, str(model), device="cpu", pythonpath=str(REPO),
                            extra_args=["--threads", str(cores)]) as zmq_worker, \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as one, \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as two:
        paths = {"zeromq": lambda out: run_zeromq(zmq_worker.endpoint, rasters, out, args),
                 "dask-1": lambda out: run_dask(one.scheduler_address, rasters, out, model, cores, args),
                 "dask-2": lambda out: run_dask(two.scheduler_address, rasters, out, model, max(1, cores // 2), args)}
        run_zeromq(zmq_worker.endpoint, warm, work / "warm-zeromq", args)
        run_dask(one.scheduler_address, warm, work / "warm-d1", model, cores, args)
        run_dask(two.scheduler_address, warm, work / "warm-d2", model, max(1, cores // 2), args)
        for r in range(args.rounds):
            for name, path in paths.items():
                wall, compute = path(work / f"{name}-{r}")
                times[name].append(wall)
                outside[name].append(wall - compute)
                print(f"round {r} {name}: {wall:.2f} s ({compute:.2f} s computing)", flush=True)
    megapixels = args.rasters * args.size**2 / 1e6
    best = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "rasters": args.rasters, "size": args.size, "patch": args.patch, "stride": args.stride,
        "chunk_size": args.chunk_size, "backbone": args.backbone, "cores": cores, "rounds": args.rounds,
        "seconds": times, "median_seconds": best,
        "megapixels_per_s": {name: megapixels / s for name, s in best.items()},
        "dask1_overhead_vs_zeromq": best["dask-1"] / best["zeromq"] - 1,
        "dask1_overhead_per_raster_s": (best["dask-1"] - best["zeromq"]) / args.rasters,
        "outside_compute_per_raster_s": {name: statistics.median(v) / args.rasters for name, v in outside.items()},
        # the same overhead from the time spent outside the chunk computations (robust to load that drifts)
        "dask1_non_compute_overhead_vs_zeromq": (statistics.median(outside["dask-1"]) - statistics.median(outside["zeromq"]))
        / best["zeromq"],
        "speedup_2_workers": best["dask-1"] / best["dask-2"],
        "identical_class_bands": {"dask-1": identical(work / "zeromq-0", work / "dask-1-0", rasters),
                                  "dask-2": identical(work / "zeromq-0", work / "dask-2-0", rasters)},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
