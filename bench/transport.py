"""Protocol overhead: moving a default-size chunk (2048² out, its source window in) versus computing it.

Two measurements, over ipc and tcp loopback:

1. **transport only** — an in-process echo ROUTER that receives (frame by frame, within the limits), decodes
   and parses the request exactly as the worker does and answers uint8 class ids of the chunk's size: the cost
   of framing + copying + ZeroMQ. Measured side by side with a plain ``recv_multipart`` receive, so the cost
   of the bounded receive is a ratio from one run.
2. **end to end** — a real worker (``python -m worker``) computes the chunk; overhead = client-measured
   time − the worker's own inference time for it (reported in the reply), i.e. everything that is not
   inference: transfer, decoding, validation, queueing, reply.

Usage: ``.venv/bin/python bench/transport.py [--backbone resnet50] [--chunk-size 2048] [--repeats 5]
[--device cpu|cuda] [--skip-inference]``. Weights are random (timing only), made in a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import zmq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import free_tcp, random_checkpoint  # noqa: E402
from worker.client import protocol as P  # noqa: E402
from worker.client import start_local_worker  # noqa: E402
from worker.client.receive import receive  # noqa: E402


def interior_chunk(chunk_size: int, patch: int, stride: int) -> tuple[list[int], dict]:
    """An image of 3×3 chunks and the header of its middle chunk (the largest source window)."""
    from factseg_core.windows import plan_chunks

    side = 3 * chunk_size
    chunks = plan_chunks(side, side, patch, stride, chunk_size)
    middle = max(chunks, key=lambda c: c.src.height * c.src.width)
    header = {"op": "segment", "request": uuid.uuid4().hex, "index": middle.index, "image_size": [side, side],
              "src": [middle.src.y0, middle.src.x0, middle.src.y1, middle.src.x1],
              "out": [middle.out.y0, middle.out.x0, middle.out.y1, middle.out.x1],
              "patch": patch, "stride": stride, "chunk_size": chunk_size}
    return [middle.src.height, middle.src.width], header


def echo_server(ctx: zmq.Context, endpoint: str, stop: threading.Event, bounded: bool = True) -> None:
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    while not stop.is_set():
        if not router.poll(100):
            continue
        if bounded:
            frames = receive(router, P.DEFAULT_LIMITS, reply=False, envelope=1).frames
        else:
            frames = router.recv_multipart(copy=False)
        request = P.parse_request(P.decode(frames[1:]))
        assert isinstance(request, P.SegmentRequest)
        oy0, ox0, oy1, ox1 = request.out
        pixels = request.pixels
        classes = np.ascontiguousarray(pixels[: oy1 - oy0, : ox1 - ox0, 0])  # touch the data, reply the size
        reply = P.encode({"op": "segment", "status": "ok", "id": request.id}, {"classes": classes})
        router.send_multipart([frames[0].bytes, *reply], copy=False)
    router.close(linger=0)


def time_exchange(endpoint: str, header: dict, pixels: np.ndarray, repeats: int, ctx: zmq.Context) -> list[dict]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    results = []
    for i in range(repeats):
        started = time.perf_counter()
        frames = P.encode({**header, "id": str(i)}, {"pixels": pixels})
        dealer.send_multipart(frames, copy=False)
        while True:
            reply = P.decode(dealer.recv_multipart(copy=False), reply=True)
            if reply.header.get("op") == "segment":
                break
        elapsed = time.perf_counter() - started
        if reply.header.get("status") != "ok":
            raise RuntimeError(reply.header)
        results.append({"seconds": elapsed, "worker_seconds": float(reply.header.get("seconds", 0.0)),
                        "reply_bytes": reply.arrays["classes"].nbytes})
        header = {**header, "request": uuid.uuid4().hex}  # a fresh request: no de-duplication
    dealer.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    from factseg_core import config

    parser.add_argument("--chunk-size", type=int, default=config.CHUNK_SIZE)
    parser.add_argument("--patch", type=int, default=config.PATCH_SIZE)
    parser.add_argument("--stride", type=int, default=config.STRIDE)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--inference-repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    src_shape, header = interior_chunk(args.chunk_size, args.patch, args.stride)
    pixels = np.random.default_rng(0).integers(0, 256, (*src_shape, 3), dtype=np.uint8)
    out_px = (header["out"][2] - header["out"][0]) * (header["out"][3] - header["out"][1])
    print(f"chunk: out {args.chunk_size}² ({out_px / 1e6:.1f} Mpx), src {src_shape[0]}×{src_shape[1]} "
          f"({pixels.nbytes / 2**20:.1f} MiB in, {out_px / 2**20:.1f} MiB out)")
    report: dict = {"chunk_size": args.chunk_size, "src": src_shape, "bytes_in": pixels.nbytes, "bytes_out": out_px}

    tmp = Path(tempfile.mkdtemp(prefix="factseg-bench-"))
    ctx = zmq.Context()
    for kind, endpoint in (("ipc", f"ipc://{tmp}/echo.ipc"), ("tcp", free_tcp())):
        for bounded in (False, True):
            stop = threading.Event()
            thread = threading.Thread(target=echo_server, args=(ctx, endpoint, stop, bounded), daemon=True)
            thread.start()
            times = [r["seconds"] for r in time_exchange(endpoint, header, pixels, args.repeats + 1, ctx)[1:]]
            stop.set()
            thread.join()
            med = statistics.median(times)
            name = f"transport_{kind}_s" if bounded else f"transport_{kind}_recv_multipart_s"
            report[name] = med
            print(f"transport only, {kind}, {'bounded receive' if bounded else 'recv_multipart'}: median "
                  f"{1000 * med:.1f} ms over {len(times)} ({(pixels.nbytes + out_px) / med / 2**30:.2f} GiB/s)")
        report[f"bounded_receive_ratio_{kind}"] = report[f"transport_{kind}_s"] / report[
            f"transport_{kind}_recv_multipart_s"]
    ctx.term()
    if args.skip_inference:
        print(json.dumps(report))
        return 0

    checkpoint = random_checkpoint(tmp / f"random_{args.backbone}.pt", args.backbone)
    python = sys.executable
    for kind, endpoint in (("ipc", f"ipc://{tmp}/worker.ipc"), ("tcp", free_tcp())):
        extra = ["--threads", str(args.threads)] if args.threads else []
        with start_local_worker(python, str(checkpoint), endpoint, device=args.device, pythonpath=str(REPO),
                                extra_args=extra, ready_timeout_s=300) as worker:
            ctx = zmq.Context()
            runs = time_exchange(worker.endpoint, header, pixels, args.inference_repeats, ctx)
            ctx.term()
        for run in runs:
            overhead = run["seconds"] - run["worker_seconds"]
            print(f"end to end, {kind} ({args.backbone}, {args.device}): {run['seconds']:.2f} s, inference "
                  f"{run['worker_seconds']:.2f} s, overhead {1000 * overhead:.0f} ms = "
                  f"{100 * overhead / run['seconds']:.2f}% of end-to-end")
        best = min(runs, key=lambda r: r["seconds"])
        report[f"e2e_{kind}_s"] = best["seconds"]
        report[f"inference_{kind}_s"] = best["worker_seconds"]
        report[f"overhead_{kind}_pct"] = 100 * (best["seconds"] - best["worker_seconds"]) / best["seconds"]
    for kind in ("ipc", "tcp"):
        share = 100 * report[f"transport_{kind}_s"] / report[f"e2e_{kind}_s"]
        print(f"{kind}: pure transport is {share:.2f}% of end-to-end; measured overhead "
              f"{report[f'overhead_{kind}_pct']:.2f}% (target ≤ 3%)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
