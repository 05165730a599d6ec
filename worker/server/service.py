"""The FactSeg worker: a ZeroMQ ROUTER service that runs streaming sliding-window inference for many clients.

Threads and why:

* the **socket thread** (``Worker.serve``) owns the ROUTER socket. It answers ``info``, ``ping``, ``plan`` and
  ``cancel`` at once, validates ``segment`` requests and queues them, sends heartbeats, and forwards results. It
  never runs the model, so a worker busy with a 2048² chunk still answers pings and cancels within milliseconds.
* the **inference thread** takes chunks from a fair queue (round robin between clients, FIFO within a client),
  runs :func:`factseg_core.streaming.predict_chunk` with a cancel callback polled between batches, and hands the
  reply frames back over an ``inproc`` PAIR socket (ZeroMQ sockets are not thread-safe).

The model is loaded once; each chunk arrives with its place in the request's global window grid, checked
against the worker's own plan, so stitched chunks equal the one-pass result.
"""
from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from ..client import protocol as P

log = logging.getLogger("factseg.worker")

DEFAULT_BIND = "tcp://127.0.0.1:5555"
DEFAULT_CHUNK_SIZE = 4096  # see README "Chunks": fewer windows computed twice at chunk borders
#: Chunks in one plan, checked before it is computed. Planning is O(chunks + window starts) (~3 µs a chunk), so
#: this bounds what grows with the chunk count: the plan reply (~60 bytes of JSON a chunk, < 1 MiB), the
#: plans cached by ``Engine.plan`` (32 of them) and the time the socket thread spends building and encoding one
#: (~0.1 s, while pings and cancels wait). 200k × 200k px fits at chunk_size 2048, 800k × 800k at 8192.
MAX_PLAN_CHUNKS = 10_000


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, event and the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def _log(level: int, event: str, **fields: Any) -> None:
    log.log(level, event, extra={"fields": fields})


def setup_logging(level: str = "info") -> None:
    """Structured (JSON lines) logging to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("factseg")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


@dataclass
class Job:
    """One queued ``segment`` chunk and where its reply goes."""

    identity: bytes
    envelope: list[bytes]
    msg_id: str
    request: str
    index: int
    image_size: tuple[int, int]
    src: tuple[int, int, int, int]
    out: tuple[int, int, int, int]
    patch: int
    stride: int
    confidence: bool
    tta: bool
    pixels: np.ndarray
    valid: np.ndarray | None
    received: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)
    batches_done: int = 0
    batches_total: int = 1

    @property
    def nbytes(self) -> int:
        return self.pixels.nbytes + (0 if self.valid is None else self.valid.nbytes)

    @property
    def key(self) -> tuple[bytes, str, int]:
        return self.identity, self.request, self.index


class FairQueue:
    """Per-client FIFO queues served round robin, so one big request cannot starve other clients. Not locked."""

    def __init__(self, max_per_client: int, max_bytes: int = 2**62) -> None:
        self.max_per_client = max_per_client
        self.max_bytes = max_bytes
        self.bytes = 0
        self._queues: collections.OrderedDict[bytes, collections.deque[Job]] = collections.OrderedDict()

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def push(self, job: Job) -> str | None:
        """Queue ``job``; returns None, or why it was refused (per-client count or total memory bound)."""
        queue = self._queues.get(job.identity, ())
        if len(queue) >= self.max_per_client:
            return f"this client already has {self.max_per_client} chunks queued; wait for replies"
        if self.bytes and self.bytes + job.nbytes > self.max_bytes:
            return f"the worker holds {self.bytes} bytes of queued pixels (limit {self.max_bytes}); retry later"
        self._queues.setdefault(job.identity, collections.deque()).append(job)
        self.bytes += job.nbytes
        return None

    def pop(self) -> Job | None:
        """Next job of the client at the head of the rotation, which then moves to the back."""
        while self._queues:
            identity, queue = next(iter(self._queues.items()))
            if not queue:
                del self._queues[identity]
                continue
            job = queue.popleft()
            self.bytes -= job.nbytes
            if queue:
                self._queues.move_to_end(identity)
            else:
                del self._queues[identity]
            return job
        return None

    def contains(self, key: tuple[bytes, str, int]) -> bool:
        return any(job.key == key for job in self._queues.get(key[0], ()))

    def remove_request(self, request: str) -> list[Job]:
        removed = []
        for identity in list(self._queues):
            keep = collections.deque()
            for job in self._queues[identity]:
                (removed if job.request == request else keep).append(job)
            self.bytes -= sum(job.nbytes for job in removed if job.identity == identity)
            if keep:
                self._queues[identity] = keep
            else:
                del self._queues[identity]
        return removed

    def drain(self) -> list[Job]:
        jobs = [job for queue in self._queues.values() for job in queue]
        self._queues.clear()
        self.bytes = 0
        return jobs

    def jobs(self) -> list[Job]:
        return [job for queue in self._queues.values() for job in queue]


class Engine:
    """The loaded model and the chunk plan (both from factseg_core), behind the small interface the server needs."""

    def __init__(self, model: str, backend: str = "torch", device: str = "auto", batch_size: int | None = None,
                 amp: str | None = None) -> None:
        from factseg_core import streaming
        from factseg_core.backends import make_runner

        self._streaming = streaming
        options = {"amp": amp} if amp else {}
        self.runner = make_runner(model, backend=backend, device=device, **options)
        self.amp = amp
        self.batch_size = int(batch_size or 4)
        self.backend = backend
        self.model_path = str(model)
        self.plan = functools.lru_cache(maxsize=32)(self._plan)

    def describe(self) -> dict[str, Any]:
        meta = dict(getattr(self.runner, "model_info", {}) or {})
        classes = [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in self.runner.classes]
        return {
            "model": str(meta.get("model") or "FactSeg"),
            "model_file": Path(self.model_path).name,
            "backbone": str(meta.get("backbone", "unknown")),
            "classes": classes,
            "patch": int(meta.get("patch", 896)),
            "stride": int(meta.get("stride", 512)),
            "device": str(self.runner.device),
            "backend": str(getattr(self.runner, "name", self.backend)),
            "batch_size": self.batch_size,
            "amp": self.amp,
        }

    def _plan(self, height: int, width: int, patch: int, stride: int, chunk_size: int) -> tuple[tuple[int, ...], ...]:
        chunks = self._streaming.plan_chunks(height, width, patch=patch, stride=stride, chunk_size=chunk_size)
        return tuple(
            (c.index, c.out.y0, c.out.x0, c.out.y1, c.out.x1, c.src.y0, c.src.x0, c.src.y1, c.src.x1) for c in chunks
        )

    def count_batches(self, job: Job) -> int:
        """Forward passes a chunk needs at most (windows touching ``out``; all-nodata windows are skipped)."""
        from factseg_core.windows import Window

        windows = self._streaming.windows_touching(job.image_size, Window(*job.out), job.patch, job.stride)
        per_call = self._streaming.effective_batch_size(self.runner, self.batch_size)
        return max(1, math.ceil(windows / per_call))

    def predict(self, job: Job, should_stop: Any, on_batch: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Classes (and confidence) of one chunk; ``should_stop()`` is polled before every batch."""
        from factseg_core.windows import Window

        calls = 0

        def cancel() -> bool:
            nonlocal calls
            calls += 1
            job.batches_done = calls - 1  # polled before each batch: the previous ones are done
            if on_batch is not None and calls > 1:
                on_batch(job)
            return bool(should_stop())

        return self._streaming.predict_chunk(
            self.runner,
            job.pixels,
            job.valid,
            image_size=job.image_size,
            src=Window(*job.src),
            out=Window(*job.out),
            patch=job.patch,
            stride=job.stride,
            batch_size=self.batch_size,
            tta=job.tta,
            confidence=job.confidence,
            cancel=cancel,
        )

    @property
    def cancelled_error(self) -> type[BaseException]:
        return self._streaming.Cancelled


class Worker:
    """The service: bind, serve until stopped, shut down cleanly. ``engine`` is anything shaped like :class:`Engine`."""

    def __init__(
        self,
        engine: Engine,
        bind: str = DEFAULT_BIND,
        *,
        limits: P.Limits = P.DEFAULT_LIMITS,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        heartbeat_s: float = 1.0,
        curve_secret_key: str | os.PathLike | None = None,
        curve_allowed_clients: str | os.PathLike | None = None,
        exit_with_parent: bool = False,
    ) -> None:
        check_bind_security(bind, curve_secret_key, curve_allowed_clients)
        self.engine = engine
        self.bind = bind
        self.limits = limits
        self.chunk_size = chunk_size
        self.heartbeat_s = heartbeat_s
        self.progress_s = min(0.5, heartbeat_s)
        # POSIX: an orphaned worker is re-parented; then the program that started it (QGIS) is gone.
        self._parent = os.getppid() if exit_with_parent and os.name == "posix" else None
        self.description = engine.describe()
        self._stop = threading.Event()
        self._lock = threading.Condition()
        self._queue = FairQueue(limits.max_queue_per_client, limits.max_queued_bytes)
        self._running: Job | None = None
        self._stopping = False
        self._ctx = zmq.Context()
        self._auth = None
        self._router = self._ctx.socket(zmq.ROUTER)
        self._pipe_addr = f"inproc://results-{id(self)}"
        self._results = self._ctx.socket(zmq.PAIR)
        self._results.bind(self._pipe_addr)
        self._configure_router(curve_secret_key, curve_allowed_clients)
        self._thread = threading.Thread(target=self._inference_loop, name="inference", daemon=True)
        self._counter = itertools.count()
        self.stats = collections.Counter()

    # -- set-up ---------------------------------------------------------------------------------------------

    def _configure_router(self, secret_key: Any, allowed_dir: Any) -> None:
        router = self._router
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting client keeps its identity and its replies
        router.setsockopt(zmq.MAXMSGSIZE, self.limits.max_frame_bytes + 1024 * 1024)
        router.setsockopt(zmq.LINGER, 2000)
        router.setsockopt(zmq.HEARTBEAT_IVL, 2000)  # transport-level: drop dead TCP peers
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        router.setsockopt(zmq.HEARTBEAT_TTL, 6000)
        router.setsockopt(zmq.SNDHWM, 1000)
        router.setsockopt(zmq.RCVHWM, 1000)
        if secret_key is not None:
            from zmq.auth.thread import ThreadAuthenticator

            public, secret = load_secret_key(secret_key)
            allowed = Path(allowed_dir)
            self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("factseg.worker.zap"))
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(allowed))
            router.curve_secretkey = secret
            router.curve_publickey = public
            router.curve_server = True
        try:
            router.bind(self.bind)
        except zmq.ZMQError as exc:
            self._close_sockets()
            raise WorkerStartError(f"cannot bind {self.bind}: {exc.strerror}") from None
        self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)

    # -- main loop ------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the service to shut down (safe from signal handlers and other threads)."""
        self._stop.set()

    def serve(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT via :func:`main`), then shut down cleanly."""
        self._thread.start()
        _log(logging.INFO, "ready", endpoint=self.endpoint, pid=os.getpid(), **_public(self.description))
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._results, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not self._stop.is_set():
                timeout = max(0.0, min(0.25, next_beat - time.monotonic()))
                events = dict(poller.poll(timeout * 1000))
                if self._results in events:
                    self._forward_results()
                if self._router in events:
                    for _ in range(64):  # bounded batch, so results and heartbeats are not starved
                        try:
                            frames = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
                if time.monotonic() >= next_beat:
                    if self._parent is not None and os.getppid() != self._parent:
                        _log(logging.WARNING, "parent_exited", parent=self._parent)
                        break
                    self._heartbeats()
                    next_beat = time.monotonic() + self.heartbeat_s
        finally:
            self._shutdown()

    def _forward_results(self) -> None:
        while True:
            try:
                frames = self._results.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._router.send_multipart(frames, copy=False)

    def _send(self, identity: bytes, envelope: list[bytes], header: dict[str, Any], arrays: dict | None = None) -> None:
        self._router.send_multipart([identity, *envelope, *P.encode(header, arrays)], copy=False)

    def _handle(self, frames: list[Any]) -> None:
        identity = frames[0].bytes
        body = frames[1:]
        envelope: list[bytes] = []
        if len(body) >= 2 and len(body[0]) == 0:  # REQ-style empty delimiter: keep it on the reply
            envelope, body = [b""], body[1:]
        msg_id = None
        try:
            message = P.decode(body, self.limits)
            msg_id = message.header.get("id")
            if msg_id is not None and (not isinstance(msg_id, str) or len(msg_id) > 128):
                msg_id = None
                raise P.ProtocolError("header field 'id' must be a string of at most 128 characters")
            reply = getattr(self, f"_op_{message.op}")(identity, envelope, message)
            if reply is not None:
                self._send(identity, envelope, {"v": P.PROTOCOL_VERSION, "op": message.op, "id": msg_id,
                                                "status": "ok", **reply})
        except P.ProtocolError as exc:
            self.stats["rejected"] += 1
            _log(logging.WARNING, "rejected", client=identity.hex()[:16], code=exc.code, reason=exc.message)
            self._send(identity, envelope, P.error_header(exc.code, exc.message, id=msg_id))
        except Exception as exc:  # never let one message take the service down
            _log(logging.ERROR, "internal_error", client=identity.hex()[:16], error=repr(exc))
            self._send(identity, envelope, P.error_header("internal", f"{type(exc).__name__}: {exc}", id=msg_id))

    # -- operations -----------------------------------------------------------------------------------------

    def _op_info(self, identity: bytes, envelope: list[bytes], message: P.Message) -> dict[str, Any]:
        return {
            "protocol": P.PROTOCOL_VERSION,
            **self.description,
            "chunk_size": self.chunk_size,
            "heartbeat_s": self.heartbeat_s,
            "limits": self.limits.to_dict(),
            "pid": os.getpid(),
        }

    def _op_ping(self, identity: bytes, envelope: list[bytes], message: P.Message) -> dict[str, Any]:
        with self._lock:
            running = self._running
            return {"queued": len(self._queue), "busy": running is not None, "time": time.time()}

    def _plan_params(self, header: dict[str, Any]) -> tuple[int, int, int, int, int]:
        lim = self.limits
        height = P.check_int(header, "height", 1, lim.max_image_side)
        width = P.check_int(header, "width", 1, lim.max_image_side)
        patch = P.check_int(header, "patch", 32, lim.max_patch, self.description["patch"])
        stride = P.check_int(header, "stride", 1, patch, self.description["stride"])
        chunk_size = P.check_int(header, "chunk_size", 1, lim.max_chunk_side, self.chunk_size)
        if chunk_size < stride:
            raise P.ProtocolError(f"chunk_size {chunk_size} is smaller than the stride {stride}")
        step = chunk_size // stride * stride  # the engine's tile side: chunk_size rounded down to the stride
        count = math.ceil(height / step) * math.ceil(width / step)
        if count > MAX_PLAN_CHUNKS:
            raise P.ProtocolError(
                f"{height}×{width} in chunks of {chunk_size} (stride {stride}) makes {count} chunks, beyond this "
                f"worker's plan limit of {MAX_PLAN_CHUNKS} chunks; use a larger chunk_size or split the raster",
                "too_large",
            )
        return height, width, patch, stride, chunk_size

    def _op_plan(self, identity: bytes, envelope: list[bytes], message: P.Message) -> dict[str, Any]:
        height, width, patch, stride, chunk_size = self._plan_params(message.header)
        chunks = self.engine.plan(height, width, patch, stride, chunk_size)
        return {"height": height, "width": width, "patch": patch, "stride": stride, "chunk_size": chunk_size,
                "chunks": [list(c) for c in chunks]}

    def _op_cancel(self, identity: bytes, envelope: list[bytes], message: P.Message) -> dict[str, Any]:
        request = P.check_str(message.header, "request")
        with self._lock:
            removed = self._queue.remove_request(request)
            running = self._running if self._running is not None and self._running.request == request else None
            if running is not None:
                running.cancel.set()
        for job in removed:
            self._reply_error(job, "cancelled", "cancelled by request")
        count = len(removed) + (running is not None)
        _log(logging.INFO, "cancel", request=request, dropped=len(removed), running=running is not None)
        return {"request": request, "cancelled": count}

    def _op_segment(self, identity: bytes, envelope: list[bytes], message: P.Message) -> None:
        job = self._parse_segment(identity, envelope, message)
        with self._lock:
            if self._stopping:
                raise P.ProtocolError("the worker is shutting down", "shutdown")
            if (self._running is not None and self._running.key == job.key) or self._queue.contains(job.key):
                return None  # a resend of a chunk already queued/running here: its reply is on the way
            refused = self._queue.push(job)
            if refused:
                raise P.ProtocolError(refused, "queue_full")
            self._lock.notify()
        self.stats["queued"] += 1
        return None

    def _parse_segment(self, identity: bytes, envelope: list[bytes], message: P.Message) -> Job:
        header = message.header
        request = P.check_str(header, "request")
        index = P.check_int(header, "index", 0, MAX_PLAN_CHUNKS)
        size = header.get("image_size")
        if not (isinstance(size, list) and len(size) == 2):
            raise P.ProtocolError("header field 'image_size' must be [height, width]")
        height, width, patch, stride, chunk_size = self._plan_params(
            {**header, "height": size[0], "width": size[1]}
        )
        src = P.check_window(header.get("src"), "src")
        out = P.check_window(header.get("out"), "out")
        plan = self.engine.plan(height, width, patch, stride, chunk_size)
        if index >= len(plan) or plan[index][1:5] != out or plan[index][5:9] != src:
            raise P.ProtocolError(
                f"chunk {index} out={list(out)} src={list(src)} is not chunk {index} of the worker's plan for "
                f"{height}×{width} patch {patch} stride {stride} chunk_size {chunk_size}; ask for the plan",
                "bad_chunk",
            )
        unknown = set(message.arrays) - {"pixels", "valid"}
        if unknown:
            raise P.ProtocolError(f"unexpected arrays {sorted(unknown)}; segment takes 'pixels' and 'valid'", "bad_array")
        pixels = message.arrays.get("pixels")
        src_h, src_w = src[2] - src[0], src[3] - src[1]
        if pixels is None or pixels.dtype != np.uint8 or pixels.shape != (src_h, src_w, 3):
            got = "nothing" if pixels is None else f"{pixels.dtype} {list(pixels.shape)}"
            raise P.ProtocolError(f"'pixels' must be uint8 [{src_h}, {src_w}, 3] (the src window), got {got}",
                                  "bad_array")
        valid = message.arrays.get("valid")
        if valid is not None and (valid.dtype != np.bool_ or valid.shape != (src_h, src_w)):
            raise P.ProtocolError(f"'valid' must be bool [{src_h}, {src_w}], got {valid.dtype} {list(valid.shape)}",
                                  "bad_array")
        flags = {k: header.get(k, False) for k in ("confidence", "tta")}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise P.ProtocolError(f"header field {key!r} must be true or false")
        job = Job(identity, envelope, str(header.get("id") or ""), request, index, (height, width), src, out,
                  patch, stride, flags["confidence"], flags["tta"], pixels, valid)
        job.batches_total = self.engine.count_batches(job)
        return job

    # -- inference thread -----------------------------------------------------------------------------------

    def _reply_error(self, job: Job, code: str, message: str) -> None:
        """Error reply for a job, from the socket thread."""
        self._send(job.identity, job.envelope, P.error_header(code, message, op="segment", id=job.msg_id,
                                                              request=job.request, index=job.index))

    def _inference_loop(self) -> None:
        self._pipe = pipe = self._ctx.socket(zmq.PAIR)
        pipe.connect(self._pipe_addr)
        try:
            while True:
                with self._lock:
                    while not self._stopping and not len(self._queue):
                        self._lock.wait()
                    if self._stopping:
                        return
                    job = self._queue.pop()
                    self._running = job
                assert job is not None
                frames = self._run(job)
                with self._lock:
                    self._running = None
                pipe.send_multipart([job.identity, *job.envelope, *frames], copy=False)
        finally:
            pipe.close(linger=1000)

    def _run(self, job: Job) -> list[Any]:
        started = time.monotonic()
        base = {"v": P.PROTOCOL_VERSION, "op": "segment", "id": job.msg_id, "request": job.request, "index": job.index}
        fields = {"client": job.identity.hex()[:16], "request": job.request, "chunk": job.index}
        last_progress = [started]

        def on_batch(job: Job) -> None:  # inference thread: progress events go out through the pipe
            now = time.monotonic()
            if now - last_progress[0] >= self.progress_s and not job.envelope:
                last_progress[0] = now
                header = {**base, "op": "progress", "status": "running", "done": job.batches_done,
                          "total": job.batches_total}
                self._pipe.send_multipart([job.identity, *P.encode(header)])

        try:
            classes, confidence = self.engine.predict(job, lambda: job.cancel.is_set() or self._stopping, on_batch)
        except self.engine.cancelled_error:
            code = "shutdown" if self._stopping else "cancelled"
            _log(logging.INFO, "chunk_cancelled", reason=code, **fields)
            return P.encode(P.error_header(code, f"chunk {job.index} {code} before completion", **base))
        except Exception as exc:
            _log(logging.ERROR, "inference_failed", error=repr(exc), **fields)
            self._after_failure()
            return P.encode(P.error_header("inference_failed", f"{type(exc).__name__}: {exc}", **base))
        seconds = time.monotonic() - started
        _log(logging.INFO, "chunk_done", seconds=round(seconds, 4), wait=round(started - job.received, 4),
             batches=job.batches_done, **fields)
        arrays = {"classes": classes}
        if confidence is not None:
            arrays["confidence"] = confidence
        return P.encode({**base, "status": "ok", "seconds": seconds}, arrays)

    @staticmethod
    def _after_failure() -> None:
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()  # after an out-of-memory error, the next chunk gets a clean allocator

    # -- heartbeats and shutdown ----------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        """Tell every client with work here which of its chunks are alive (its Lazy Pirate timer resets)."""
        with self._lock:
            jobs = self._queue.jobs()
            running = self._running
            if running is not None:
                jobs.append(running)
        by_client: dict[tuple[bytes, tuple[bytes, ...]], dict[str, list[int]]] = {}
        for job in jobs:
            if job.envelope:  # REQ-style peers cannot take unsolicited messages
                continue
            pending = by_client.setdefault((job.identity, tuple(job.envelope)), {})
            pending.setdefault(job.request, []).append(job.index)
        for (identity, envelope), pending in by_client.items():
            header = {"v": P.PROTOCOL_VERSION, "op": "heartbeat", "status": "alive", "pending": pending}
            if running is not None and running.identity == identity:
                header["running"] = {"request": running.request, "index": running.index,
                                     "done": running.batches_done, "total": running.batches_total}
            self._send(identity, list(envelope), header)

    def _shutdown(self) -> None:
        _log(logging.INFO, "stopping", endpoint=self.endpoint)
        with self._lock:
            self._stopping = True
            dropped = self._queue.drain()
            if self._running is not None:
                self._running.cancel.set()
            self._lock.notify_all()
        for job in dropped:
            self._reply_error(job, "shutdown", "the worker is shutting down; send this chunk again elsewhere")
        deadline = time.monotonic() + 30.0
        while self._thread.is_alive() and time.monotonic() < deadline:
            self._thread.join(0.05)
            self._forward_results()
        self._forward_results()
        self._close_sockets()
        _log(logging.INFO, "stopped", endpoint=self.endpoint, **dict(self.stats))

    def _close_sockets(self) -> None:
        self._router.close(linger=2000)
        self._results.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        if self.bind.startswith("ipc://"):
            Path(self.bind[len("ipc://"):]).unlink(missing_ok=True)


def _public(description: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in description.items() if k != "classes"}


class WorkerStartError(RuntimeError):
    """The worker cannot start (unsafe bind, bad keys, address in use): the message says what to do."""


def check_bind_security(bind: str, secret_key: Any, allowed_clients: Any) -> None:
    """Refuse a non-loopback bind without CURVE keys, and half-configured CURVE anywhere."""
    if (secret_key is None) != (allowed_clients is None):
        raise WorkerStartError("CURVE needs both --curve-secret-key FILE and --curve-allowed-clients DIR")
    if secret_key is None and not P.is_loopback_endpoint(bind):
        raise WorkerStartError(
            f"refusing to bind {bind} without encryption: a non-loopback address lets anyone on the network use "
            "this worker. Pass --curve-secret-key SERVER.key_secret and --curve-allowed-clients DIR "
            "(make them with: python -m worker.keys --out DIR), or bind tcp://127.0.0.1:PORT or ipc://PATH."
        )
    if allowed_clients is not None:
        folder = Path(allowed_clients)
        if not folder.is_dir() or not any(folder.glob("*.key")):
            raise WorkerStartError(
                f"--curve-allowed-clients {folder} must be a folder of client public keys (*.key files)"
            )


def load_secret_key(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` certificate file written by ``python -m worker.keys``."""
    from zmq.auth import load_certificate

    try:
        public, secret = load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise WorkerStartError(f"cannot read CURVE key file {path}: {exc}") from None
    if not secret:
        raise WorkerStartError(f"{path} holds no secret key; pass the server's .key_secret file")
    return public, secret


def main(argv: list[str] | None = None) -> int:
    """``python -m worker``: load the model once, bind, serve until SIGTERM/SIGINT."""
    import argparse

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
                        help="largest array frame accepted")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for inference (default: the library's; set it when workers share a machine)")
    parser.add_argument("--heartbeat-s", type=float, default=1.0)
    parser.add_argument("--curve-secret-key", default=None, help="server .key_secret file (enables CURVE)")
    parser.add_argument("--curve-allowed-clients", default=None, help="folder of allowed client *.key files")
    parser.add_argument("--exit-with-parent", action="store_true",
                        help="stop when the process that started this worker exits (local workers of QGIS)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    try:
        check_bind_security(args.bind, args.curve_secret_key, args.curve_allowed_clients)
    except WorkerStartError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    limits = P.Limits(max_frame_bytes=int(args.max_message_mb * 2**20))
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    from factseg_core.precision import prepare_worker_model, probe_report
    from worker.io.raster_source import RasterSource

    try:
        if args.probe:
            print(probe_report(args.model, args.backend, args.device, args.calibrate, RasterSource))
            return 0
        if args.amp and args.backend != "torch":
            parser.error("--amp applies to the torch backend only")
        args.model, args.backend, args.amp = prepare_worker_model(
            args.model, args.backend, args.device, args.precision, args.amp, args.calibrate, RasterSource,
            log=lambda text: print(f"worker: {text}", file=sys.stderr))
        engine = Engine(args.model, backend=args.backend, device=args.device, batch_size=args.batch_size,
                        amp=args.amp)
    except Exception as exc:
        print(f"worker: cannot load model {args.model}: {exc}", file=sys.stderr)
        return 1
    try:
        worker = Worker(engine, args.bind, limits=limits, chunk_size=args.chunk_size, heartbeat_s=args.heartbeat_s,
                        curve_secret_key=args.curve_secret_key, curve_allowed_clients=args.curve_allowed_clients,
                        exit_with_parent=args.exit_with_parent)
    except WorkerStartError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: Any) -> None:
        _log(logging.INFO, "signal", signal=signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.serve()
    return 0
