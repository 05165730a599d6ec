"""``python -m worker.batch INPUT... --out-dir DIR --model PATH [--scheduler ADDRESS | --local-workers N]``.

Segments many rasters on a Dask distributed cluster: every Dask worker loads the model once and computes
chunks of the engine's plan, reading its own source window; this client writes ``DIR/<stem>.tif`` outputs
(identical to ``python -m worker.segment`` through one worker) and commits each when complete. Finished
outputs are skipped and a killed run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from ..io.raster_source import InputError
from ..segment import _parse_bands

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker.batch", description=__doc__.split("\n\n")[0])
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="raster file, folder of rasters, .txt list of paths, or GDAL path (/vsis3/…, /vsicurl/…)")
    p.add_argument("--out-dir", required=True, type=Path, help="folder of the outputs DIR/<input stem>.tif")
    p.add_argument("--model", required=True, help="checkpoint (.pt/.pth) or ONNX model, readable by every worker")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    where.add_argument("--local-workers", type=int, default=1, metavar="N",
                       help="start a LocalCluster of N worker processes on this machine (default 1)")
    p.add_argument("--patch", type=int, help="window size (default: the model's)")
    p.add_argument("--stride", type=int, help="window stride (default: the model's)")
    p.add_argument("--chunk-size", type=int, help="chunk side per task (default: the worker's); does not change the result")
    p.add_argument("--batch-size", type=int, help="windows per forward pass (default: the worker's)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="cuda: one GPU per Dask worker (local workers are pinned through CUDA_VISIBLE_DEVICES)")
    p.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    p.add_argument("--threads", type=int, help="torch CPU threads per Dask worker (default: cores / local workers)")
    p.add_argument("--bands", type=_parse_bands, help="input bands used as R,G,B (default: by colour interpretation)")
    p.add_argument("--vector", action="store_true", help="also write DIR/<stem>.gpkg polygons of the objects")
    p.add_argument("--confidence", action="store_true", help="also write DIR/<stem>_confidence.tif (float32)")
    p.add_argument("--tta", action="store_true", help="flip test-time augmentation (3× slower)")
    p.add_argument("--retries", type=int, default=2, help="retries of a chunk whose task raised an error")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--stats-json", type=Path, help="write per-raster and per-worker statistics to this JSON file")
    return p


class _Progress:
    """One bar over the chunks of every raster, with rasters finished / total beside it."""

    def __init__(self, total_chunks: int, rasters: int, finished: int, quiet: bool) -> None:
        self.rasters, self.finished = rasters, finished
        self.bar = None
        if not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total_chunks, unit="chunk", desc="batch", file=sys.stderr)
            self.bar.set_postfix_str(self._postfix())

    def _postfix(self) -> str:
        return f"rasters {self.finished}/{self.rasters}"

    def __call__(self, chunks: int, job: Any) -> None:
        if job is not None:
            self.finished += 1
            if job.status == "failed":
                print(f"batch: {job.input}: {job.message}", file=sys.stderr)
        if self.bar is not None:
            self.bar.update(chunks)
            self.bar.set_postfix_str(self._postfix())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (a batch scheduler's cancel) suspends outputs like Ctrl-C


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything after argument parsing; returns the statistics. Raises InputError/ClusterError before work."""
    from ..contract import BATCH_SIZE, CHUNK_SIZE
    from ..engine import chunk_plan
    from .cluster import ClusterError, dashboard_link, open_client
    from .inputs import expand_inputs, plan_outputs
    from .run import BatchOptions, BatchRun, prepare_job
    from .tasks import ModelPlugin, describe_model, file_sha256

    started = time.monotonic()
    args.chunk_size = args.chunk_size or CHUNK_SIZE
    args.batch_size = args.batch_size or BATCH_SIZE
    model = Path(args.model)
    if not model.is_file():
        raise InputError(f"model {model} does not exist")
    if args.chunk_size < 1 or args.batch_size < 1:
        raise InputError("--chunk-size and --batch-size must be positive")
    inputs = expand_inputs(args.inputs)
    finals = plan_outputs(inputs, args.out_dir, args.confidence, args.vector)
    sha256 = file_sha256(model)
    with open_client(args.scheduler, args.local_workers, args.device, args.threads) as (client, settings):
        link = dashboard_link(client, local=not args.scheduler)
        if link:
            print(f"batch: Dask dashboard at {link}", file=sys.stderr)
        plugin = ModelPlugin(str(model.resolve()), sha256, args.backend, args.device, settings.threads, settings.gpus)
        try:
            client.register_plugin(plugin, name=plugin.name)
        except Exception as exc:  # raised in a worker (model missing there, other file, cannot load)
            raise ClusterError(f"the Dask workers cannot load the model: {type(exc).__name__}: {exc}") from None
        described = client.submit(describe_model, plugin.name, pure=False).result()
        patch, stride = int(args.patch or described["patch"]), int(args.stride or described["stride"])
        options = BatchOptions(model.name, sha256, args.backend, patch, stride, args.chunk_size, args.batch_size,
                               args.tta, args.confidence, args.vector, args.bands, args.retries)
        try:
            chunk_plan(64, 64, patch, stride, args.chunk_size)  # patch/stride checked once, with the engine's words
        except ValueError as exc:
            raise InputError(str(exc)) from None
        jobs = [prepare_job(i, item, final, options) for i, (item, final) in enumerate(zip(inputs, finals))]
        todo = [j for j in jobs if j.status == "todo"]
        progress = _Progress(sum(len(j.chunks) for j in todo), len(jobs), len(jobs) - len(todo), args.quiet)
        for job in jobs:
            if job.status == "failed":
                print(f"batch: {job.input}: {job.message}", file=sys.stderr)
        batch = BatchRun(client, plugin.name, jobs, options, described["classes"], progress)
        try:
            batch.execute()
        finally:
            progress.close()
    return {"seconds": time.monotonic() - started, "dashboard": link, "model_sha256": sha256, "patch": patch,
            "stride": stride, "chunk_size": args.chunk_size, "workers": dict(batch.workers),
            "device": described["device"], "rasters": [j.summary() for j in jobs]}


def main(argv: list[str] | None = None) -> int:
    from .cluster import ClusterError

    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        stats = run(args)
    except (InputError, ClusterError) as exc:
        print(f"batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("batch: interrupted; unfinished outputs are kept as hidden partial files: run the same command again "
              "to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.stats_json:
        args.stats_json.write_text(json.dumps(stats, indent=2))
    counts: dict[str, int] = {}
    for item in stats["rasters"]:
        counts[item["status"]] = counts.get(item["status"], 0) + 1
    print(f"batch: {len(stats['rasters'])} rasters ({', '.join(f'{n} {s}' for s, n in sorted(counts.items()))}) "
          f"in {stats['seconds']:.1f} s on {len(stats['workers'])} Dask worker(s)")
    return EXIT_FAILED if counts.get("failed") else EXIT_OK
