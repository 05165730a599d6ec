"""Load test: N concurrent clients × M requests against one or more workers.

Each request segments a small random image through ``WorkerClient.segment_raster`` (several chunks). Reports
throughput (requests/s, chunks/s), p50/p99 request latency, errors (expected: 0), and the latency of ``ping``
while the workers are busy (the control plane must stay responsive during inference).

Usage: ``.venv/bin/python bench/load.py [--clients 4] [--requests 3] [--workers 1] [--size 256]
[--patch 128 --stride 64 --chunk-size 128] [--backbone resnet18] [--connect ENDPOINT ...]``.
Without ``--connect`` it starts the workers itself with a random-weight checkpoint (timing only).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import free_tcp, random_checkpoint  # noqa: E402
from worker.client import WorkerClient, start_local_worker  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def client_loop(endpoints: list[str], requests: int, size: int, opts: dict, seed: int, out: dict) -> None:
    rng = np.random.default_rng(seed)
    with WorkerClient(endpoints, timeout_s=opts.pop("timeout_s")) as client:
        for _ in range(requests):
            img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            result = np.empty((size, size), np.uint8)

            def writer(y0, x0, classes, confidence, result=result):
                result[y0 : y0 + classes.shape[0], x0 : x0 + classes.shape[1]] = classes

            started = time.perf_counter()
            try:
                stats = client.segment_raster(size, size, lambda y0, x0, y1, x1, img=img: (img[y0:y1, x0:x1], None),
                                              writer, **opts)
                out["latency"].append(time.perf_counter() - started)
                out["chunks"] += stats["chunks"]
                out["retries"] += stats["retries"]
            except Exception as exc:  # counted and reported, the load goes on
                out["errors"].append(repr(exc))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--requests", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--connect", action="append", help="use running workers instead of starting them")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    with ExitStack() as stack:
        endpoints = args.connect
        if not endpoints:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="factseg-load-")))
            checkpoint = random_checkpoint(tmp / "random.pt", args.backbone)
            extra = ["--threads", str(args.threads)] if args.threads else []
            workers = [stack.enter_context(start_local_worker(sys.executable, str(checkpoint), free_tcp(),
                                                              device=args.device, pythonpath=str(REPO),
                                                              extra_args=extra, ready_timeout_s=300))
                       for _ in range(args.workers)]
            endpoints = [w.endpoint for w in workers]
        results = {"latency": [], "chunks": 0, "retries": 0, "errors": []}
        opts = {"patch": args.patch, "stride": args.stride, "chunk_size": args.chunk_size}
        pings: list[float] = []
        stop = threading.Event()

        def pinger() -> None:
            with WorkerClient(endpoints[0], timeout_s=10) as client:
                while not stop.is_set():
                    pings.append(client.ping())
                    time.sleep(0.05)

        threads = [threading.Thread(target=client_loop, args=(endpoints, args.requests, args.size,
                                                              {**opts, "timeout_s": args.timeout}, i, results))
                   for i in range(args.clients)]
        ping_thread = threading.Thread(target=pinger)
        started = time.perf_counter()
        ping_thread.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        stop.set()
        ping_thread.join()

    done = len(results["latency"])
    report = {
        "clients": args.clients, "requests_per_client": args.requests, "workers": len(endpoints),
        "image": args.size, "patch": args.patch, "stride": args.stride, "chunk_size": args.chunk_size,
        "backbone": args.backbone, "seconds": elapsed, "requests_done": done, "chunks": results["chunks"],
        "throughput_rps": done / elapsed, "chunks_per_s": results["chunks"] / elapsed,
        "latency_p50_s": percentile(results["latency"], 50), "latency_p99_s": percentile(results["latency"], 99),
        "ping_p50_ms": 1000 * percentile(pings, 50), "ping_p99_ms": 1000 * percentile(pings, 99),
        "errors": len(results["errors"]), "retries": results["retries"],
    }
    print(f"{args.clients} clients × {args.requests} requests ({args.size}² image, patch {args.patch}/{args.stride}, "
          f"chunks of {args.chunk_size}, {args.backbone}) on {len(endpoints)} worker(s): {elapsed:.1f} s")
    print(f"  throughput {report['throughput_rps']:.2f} requests/s, {report['chunks_per_s']:.2f} chunks/s")
    print(f"  latency p50 {report['latency_p50_s']:.2f} s, p99 {report['latency_p99_s']:.2f} s "
          f"(mean {statistics.fmean(results['latency']) if done else float('nan'):.2f} s)")
    print(f"  ping while busy: p50 {report['ping_p50_ms']:.1f} ms, p99 {report['ping_p99_ms']:.1f} ms "
          f"({len(pings)} pings)")
    print(f"  errors {report['errors']}, retries {report['retries']}")
    for error in results["errors"][:5]:
        print(f"    {error}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
