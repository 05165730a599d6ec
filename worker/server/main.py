"""``python -m worker``: load the model once, bind, serve until SIGTERM/SIGINT."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
from typing import Any

from factseg_core import config

from ..client import protocol as P
from ..engine import Engine
from .logs import log_event, setup_logging
from .security import WorkerStartError, check_bind_security
from .service import DEFAULT_BIND, DEFAULT_CHUNK_SIZE, Worker


def build_parser() -> argparse.ArgumentParser:
    """The worker's options (other modules may add theirs before parsing)."""
    parser = argparse.ArgumentParser(prog="python -m worker", description="FactSeg inference worker (ZeroMQ).")
    parser.add_argument("--bind", default=DEFAULT_BIND, help=f"ZeroMQ endpoint to bind (default {DEFAULT_BIND})")
    parser.add_argument("--model", required=True, help="checkpoint (.pt/.pth) or ONNX model")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--batch-size", type=int, default=None, help="windows per forward pass")
    parser.add_argument("--amp", default=None, choices=("bf16", "fp16"),
                        help="mixed precision (torch backend): bf16/fp16 on CUDA, bf16 on CPUs with AVX512-BF16/AMX; "
                             "faster, approximate (off by default: results then match the reference exactly)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16", "int8", "auto"),
                        help="fp32 exact (default); bf16/fp16 autocast; int8 the calibrated CPU model; auto the fastest "
                             "measured here that agrees ≥99.5%% with fp32, never slower than fp32")
    parser.add_argument("--calibrate", nargs="+", default=None, metavar="IMAGE",
                        help="rasters/images (or folders) to calibrate the int8 model on; cached next to the model")
    parser.add_argument("--probe", action="store_true", help="print each precision's speed and agreement here, exit")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="default chunk side for plans")
    parser.add_argument("--max-message-mb", type=float, default=P.DEFAULT_LIMITS.max_frame_bytes / 2**20,
                        help="largest array frame accepted (a whole message may hold 1.5 times this)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for inference and training jobs (default: the library's; set it when workers share a machine)")
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument("--curve-secret-key", default=None, help="server .key_secret file (enables CURVE)")
    parser.add_argument("--curve-allowed-clients", default=None, help="folder of allowed client *.key files")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when the process that started this worker exits (local workers of QGIS)")
    parser.add_argument("--train-dir", default=None,
                        help="folder for fine-tuning jobs' uploads and runs (default: the system's temporary folder)")
    parser.add_argument("--train-upload-idle-s", type=float, default=None,
                        help="drop a training upload that receives no piece for this long (default 900)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return parser


def _load_engine(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Engine | None:
    """The model behind the chosen precision (int8: the calibrated cache; auto: the probe's choice)."""
    if args.amp and args.backend != "torch":
        parser.error("--amp applies to the torch backend only")
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    from factseg_core.precision import prepare_worker_model

    from ..io.raster_source import RasterSource

    try:
        args.model, args.backend, args.amp = prepare_worker_model(
            args.model, args.backend, args.device, args.precision, args.amp, args.calibrate, RasterSource,
            log=lambda text: print(f"worker: {text}", file=sys.stderr))
        return Engine(args.model, backend=args.backend, device=args.device, batch_size=args.batch_size,
                      amp=args.amp)
    except Exception as exc:
        print(f"worker: cannot load model {args.model}: {exc}", file=sys.stderr)
        return None


def _probe(args: argparse.Namespace) -> int:
    """``--probe``: each precision's speed and agreement with fp32 on this machine, then exit."""
    from factseg_core.precision import probe_report

    from ..io.raster_source import RasterSource

    try:
        print(probe_report(args.model, args.backend, args.device, args.calibrate, RasterSource))
    except Exception as exc:
        print(f"worker: cannot probe {args.model}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m worker``: exit 2 for an unsafe or unusable endpoint, 1 when the model does not load."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.probe:
        return _probe(args)
    try:
        check_bind_security(args.bind, args.curve_secret_key, args.curve_allowed_clients)
    except WorkerStartError as exc:  # before loading the model: refused at once
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    limits = dataclasses.replace(P.Limits.for_frame_limit(int(args.max_message_mb * 2**20)), max_patch=config.MAX_PATCH)
    engine = _load_engine(parser, args)
    if engine is None:
        return 1
    try:
        worker = Worker(engine, args.bind, limits=limits, chunk_size=args.chunk_size, heartbeat_s=args.heartbeat_s,
                        curve_secret_key=args.curve_secret_key, curve_allowed_clients=args.curve_allowed_clients,
                        exit_with_parent=args.exit_with_parent, train_dir=args.train_dir,
                        train_upload_idle_s=args.train_upload_idle_s, train_threads=args.threads)
    except WorkerStartError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: Any) -> None:
        log_event(logging.INFO, "signal", signal=signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.serve()
    return 0
