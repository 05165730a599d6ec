"""The FactSeg worker: a ZeroMQ ROUTER service that runs streaming sliding-window inference for many clients.

Threads and why:

* the **socket thread** (``Worker.serve``) owns the ROUTER socket. It receives every message frame by frame
  within the limits, answers ``info``, ``ping``, ``open`` and ``cancel`` at once, checks ``segment``
  requests against the plan and queues them, sends heartbeats, drops the chunks of clients whose lease ran
  out, and forwards results. It never runs the model, so a busy worker still answers within milliseconds.
* the **inference thread** (:mod:`.inference`) takes chunks from the fair queue and runs the engine.

Header parsing is the protocol's (:func:`worker.client.protocol.parse_request`); the grid is factseg_core's.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from factseg_core import config

from ..client import protocol as P
from ..client.receive import Received, receive
from ..contract import DEFAULT_ENDPOINT as DEFAULT_BIND
from ..engine import Engine
from .inference import InferenceThread
from .logs import log_event
from .queue import FairQueue, Job, WorkState
from .security import WorkerStartError, check_bind_security, check_bound_endpoint, load_secret_key
from .training import TrainingManager

DEFAULT_CHUNK_SIZE = config.CHUNK_SIZE  # see README "Chunks": fewer windows computed twice at chunk borders
#: Chunks in one plan (see PROTOCOL.md "Limits"): bounds the plan reply, the plan cache and planning time.
MAX_PLAN_CHUNKS = P.MAX_PLAN_CHUNKS
#: Lease of a request whose chunks do not say (``lease_s``): silent this long, its chunks are dropped.
DEFAULT_LEASE_S = 60.0

__all__ = ["DEFAULT_BIND", "DEFAULT_CHUNK_SIZE", "Engine", "FairQueue", "Job", "MAX_PLAN_CHUNKS", "Worker",
           "WorkerStartError"]


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
        train_dir: str | os.PathLike | None = None,
        train_upload_idle_s: float | None = None,
        train_threads: int | None = None,
    ) -> None:
        check_bind_security(bind, curve_secret_key, curve_allowed_clients)
        self.engine = engine
        self.bind = bind
        self.limits = limits
        self.chunk_size = chunk_size
        self.heartbeat_s = heartbeat_s
        # POSIX: an orphaned worker is re-parented; then the program that started it (QGIS) is gone.
        self._parent = os.getppid() if exit_with_parent and os.name == "posix" else None
        self.description = engine.describe()
        self._stop = threading.Event()
        self._state = WorkState(limits.max_queue_per_client, limits.max_queued_bytes)
        self._leases: dict[str, list[float]] = {}  # request -> [last heard, lease seconds]
        self._ctx = zmq.Context()
        self._auth: Any = None
        self._router = self._ctx.socket(zmq.ROUTER)
        pipe_address = f"inproc://results-{id(self)}"
        self._results = self._ctx.socket(zmq.PAIR)
        self._results.bind(pipe_address)
        self._configure_router(curve_secret_key, curve_allowed_clients)
        self._inference = InferenceThread(engine, self._state, self._ctx, pipe_address, min(0.5, heartbeat_s))
        self.stats: collections.Counter = collections.Counter()
        self.training = TrainingManager(getattr(engine, "model_path", ""), device=str(self.description.get("device")),
                                        temp_root=train_dir, threads=train_threads, **_idle(train_upload_idle_s))

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
        if P.parse_endpoint(self.bind).is_ipv6:
            router.setsockopt(zmq.IPV6, 1)
        if secret_key is not None:
            from zmq.auth.thread import ThreadAuthenticator

            public, secret = load_secret_key(secret_key)
            self._auth = ThreadAuthenticator(self._ctx, log=logging.getLogger("factseg.worker.zap"))
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(Path(allowed_dir)))
            router.curve_secretkey = secret
            router.curve_publickey = public
            router.curve_server = True
        self._bound = False
        try:
            router.bind(self.bind)
            self._bound = True
            self.endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
            check_bound_endpoint(self.endpoint, curve=secret_key is not None)
        except (zmq.ZMQError, WorkerStartError) as exc:
            self._close_sockets()
            if isinstance(exc, WorkerStartError):
                raise
            raise WorkerStartError(f"cannot bind {self.bind}: {exc.strerror}") from None

    # -- main loop ------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the service to shut down (safe from signal handlers and other threads)."""
        self._stop.set()

    def serve(self) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT via :func:`main`), then shut down cleanly."""
        self._inference.start()
        log_event(logging.INFO, "ready", endpoint=self.endpoint, pid=os.getpid(), **_public(self.description))
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
                    self._receive_batch()
                if time.monotonic() >= next_beat:
                    if self._parent is not None and os.getppid() != self._parent:
                        log_event(logging.WARNING, "parent_exited", parent=self._parent)
                        break
                    self._expire_silent_clients()
                    self.training.tick()
                    self._heartbeats()
                    next_beat = time.monotonic() + self.heartbeat_s
        finally:
            self._shutdown()

    def _receive_batch(self) -> None:
        for _ in range(64):  # bounded batch, so results and heartbeats are not starved
            try:
                received = receive(self._router, self.limits, reply=False, envelope=1, flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(received)

    def _forward_results(self) -> None:
        while True:
            try:
                frames = self._results.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._router.send_multipart(frames, copy=False)

    def _send(self, identity: bytes, envelope: list[bytes], header: dict[str, Any], arrays: dict | None = None) -> None:
        self._router.send_multipart([identity, *envelope, *P.encode(header, arrays)], copy=False)

    def _handle(self, received: Received) -> None:
        frames = received.frames
        identity = frames[0].bytes
        body = frames[1:]
        envelope: list[bytes] = []
        if len(body) >= 2 and len(body[0]) == 0:  # REQ-style empty delimiter: keep it on the reply
            envelope, body = [b""], body[1:]
        msg_id = None
        try:
            if received.code is not None:
                self.stats["oversized"] += 1
                msg_id = P.peek_id(body[0], self.limits) if body else None
                raise P.ProtocolError(f"{received.reason}; the rest of it was discarded", received.code)
            message = P.decode(body, self.limits)
            msg_id = P.clip(message.header.get("id"), 128) if isinstance(message.header.get("id"), str) else None
            request = P.parse_request(message, self.limits)
            reply = self._dispatch(identity, envelope, request, _curve_key(body[-1]) if self._auth else None)
            if reply is not None:
                self._send(identity, envelope, {"v": P.PROTOCOL_VERSION, "op": request.OP, "id": request.id,
                                                "status": "ok", **reply})
        except P.ProtocolError as exc:
            self.stats["rejected"] += 1
            log_event(logging.WARNING, "rejected", client=identity.hex()[:16], code=exc.code, reason=exc.message)
            self._send(identity, envelope, P.error_header(exc.code, exc.message, id=msg_id))
        except Exception as exc:  # a bug: never let one message take the service down, never leak its text
            log_event(logging.ERROR, "internal_error", client=identity.hex()[:16], error=repr(exc))
            self._send(identity, envelope, P.error_header(
                "internal", "the worker could not handle this message (a bug; see the worker's log)", id=msg_id))

    def _dispatch(self, identity: bytes, envelope: list[bytes], request: P.Request,
                  peer: str | None = None) -> dict[str, Any] | None:
        if request.OP.startswith("train_"):
            reply, arrays = self.training.handle(request, peer)
            self._send(identity, envelope, {"v": P.PROTOCOL_VERSION, "op": request.OP, "id": request.id,
                                            "status": "ok", **reply}, arrays)
            return None
        if isinstance(request, (P.SegmentRequest, P.OpenRequest)):
            busy = self.training.busy_message()
            if busy is not None:
                raise P.ProtocolError(busy, "busy_training")
        if isinstance(request, P.SegmentRequest):
            return self._op_segment(identity, envelope, request)
        if isinstance(request, P.OpenRequest):
            return {**self._info(), **self._op_plan(request)}
        if isinstance(request, P.CancelRequest):
            return self._op_cancel(request)
        if isinstance(request, P.PingRequest):
            return self._op_ping(request)
        return self._info()

    # -- operations -----------------------------------------------------------------------------------------

    def _info(self) -> dict[str, Any]:
        return {
            "protocol": P.PROTOCOL_VERSION,
            **self.description,
            "chunk_size": self.chunk_size,
            "heartbeat_s": self.heartbeat_s,
            "lease_s": DEFAULT_LEASE_S,
            "limits": self.limits.to_dict(),
            "pid": os.getpid(),
            **self.engine.live(),
            **self.training.status_fields(),
        }

    def _op_ping(self, request: P.PingRequest) -> dict[str, Any]:
        if request.request is not None and request.request in self._leases:
            self._leases[request.request][0] = time.monotonic()
        with self._state.lock:
            return {"queued": len(self._state.queue), "busy": self._state.running is not None, "time": time.time()}

    def _resolve(self, plan: P.OpenRequest) -> P.OpenRequest:
        resolved = plan.resolved(self.description["patch"], self.description["stride"], self.chunk_size,
                                 self.limits)
        count = self.engine.plan_size(resolved)
        if count > MAX_PLAN_CHUNKS:
            raise P.ProtocolError(
                f"{resolved.height}×{resolved.width} in chunks of {resolved.chunk_size} (stride {resolved.stride}) "
                f"makes {count} chunks, beyond this worker's plan limit of {MAX_PLAN_CHUNKS} chunks; use a larger "
                "chunk_size or split the raster",
                "too_large",
            )
        return resolved

    def _op_plan(self, request: P.OpenRequest) -> dict[str, Any]:
        plan = self._resolve(request)
        return {"height": plan.height, "width": plan.width, "patch": plan.patch, "stride": plan.stride,
                "chunk_size": plan.chunk_size, "chunks": [list(c) for c in self.engine.plan(plan)]}

    def _op_cancel(self, request: P.CancelRequest) -> dict[str, Any]:
        count = self._stop_request(request.request, "cancelled", "cancelled by request")
        return {"request": request.request, "cancelled": count}

    def _stop_request(self, request: str, code: str, text: str) -> int:
        removed, running = self._state.stop_request(request, code)
        for job in removed:
            self._reply_error(job, code, text)
        log_event(logging.INFO, code if code != "cancelled" else "cancel", request=request, dropped=len(removed),
                  running=running is not None)
        return len(removed) + (running is not None)

    def _op_segment(self, identity: bytes, envelope: list[bytes], request: P.SegmentRequest) -> None:
        job = self._make_job(identity, envelope, request)
        state = self._state
        with state.lock:
            if state.stopping:
                raise P.ProtocolError("the worker is shutting down", "shutdown")
            self._leases[job.request] = [time.monotonic(), job.lease_s]
            if (state.running is not None and state.running.key == job.key) or state.queue.contains(job.key):
                return None  # a resend of a chunk already queued/running here: its reply is on the way
            refused = state.queue.push(job)
            if refused:
                raise P.ProtocolError(refused, "queue_full")
            state.lock.notify()
        self.stats["queued"] += 1
        return None

    def _make_job(self, identity: bytes, envelope: list[bytes], request: P.SegmentRequest) -> Job:
        plan = self._resolve(request.opening)
        rows = self.engine.plan(plan)
        index, out, src = request.index, request.out, request.src
        if index >= len(rows) or rows[index][1:5] != out or rows[index][5:9] != src:
            raise P.ProtocolError(
                f"chunk {index} out={list(out)} src={list(src)} is not chunk {index} of the worker's plan for "
                f"{plan.height}×{plan.width} patch {plan.patch} stride {plan.stride} chunk_size {plan.chunk_size}; "
                "open the job again for the plan",
                "bad_chunk",
            )
        job = Job(identity, envelope, request.id or "", request.request, index, request.image_size, src, out,
                  plan.patch, plan.stride, request.confidence, request.tta, request.pixels, request.valid,
                  lease_s=request.lease_s or DEFAULT_LEASE_S)
        job.batches_total = self.engine.count_batches(job)
        return job

    def _reply_error(self, job: Job, code: str, message: str) -> None:
        """Error reply for a job, from the socket thread."""
        self._send(job.identity, job.envelope, P.error_header(code, message, op="segment", id=job.msg_id,
                                                              request=job.request, index=job.index))

    # -- leases, heartbeats and shutdown --------------------------------------------------------------------

    def _expire_silent_clients(self) -> None:
        """Drop the chunks of requests whose client sent nothing (chunk, keep-alive ping) for its lease."""
        now = time.monotonic()
        with self._state.lock:
            active = self._state.active_requests()
        for request, (heard, lease) in list(self._leases.items()):
            if request not in active:
                del self._leases[request]
            elif now - heard > lease:
                del self._leases[request]
                self._stop_request(request, "expired",
                                   f"no keep-alive from the client for {lease:g} s; send the chunk again to continue")

    def _heartbeats(self) -> None:
        """Tell every client with work here which of its chunks are alive (its Lazy Pirate timer resets)."""
        state = self._state
        with state.lock:
            jobs = state.queue.jobs()
            running = state.running
            if running is not None:
                jobs.append(running)
        by_client: dict[tuple[bytes, tuple[bytes, ...]], dict[str, list[int]]] = {}
        for job in jobs:
            if job.envelope or job.cancel.is_set():  # REQ-style peers cannot take unsolicited messages
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
        log_event(logging.INFO, "stopping", endpoint=self.endpoint)
        state = self._state
        with state.lock:
            state.stopping = True
            dropped = state.queue.drain()
            if state.running is not None:
                state.running.stop_code = "shutdown"
                state.running.cancel.set()
            state.lock.notify_all()
        for job in dropped:
            self._reply_error(job, "shutdown", "the worker is shutting down; send this chunk again elsewhere")
        deadline = time.monotonic() + 30.0
        while self._inference.is_alive() and time.monotonic() < deadline:
            self._inference.thread.join(0.05)
            self._forward_results()
        self._forward_results()
        self.training.close()
        self._close_sockets()
        log_event(logging.INFO, "stopped", endpoint=self.endpoint, **dict(self.stats))

    def _close_sockets(self) -> None:
        self._router.close(linger=2000)
        self._results.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()
        if self._bound and self.bind.startswith("ipc://"):
            Path(self.bind[len("ipc://"):]).unlink(missing_ok=True)


def _curve_key(frame: Any) -> str | None:
    """The CURVE public key (Z85) ZAP admitted the sender with: who owns a training job on a CURVE worker."""
    try:
        return frame.get("User-Id") or None
    except (zmq.ZMQError, AttributeError, TypeError):
        return None


def _idle(seconds: float | None) -> dict[str, float]:
    return {} if seconds is None else {"upload_idle_s": seconds}


def _public(description: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in description.items() if k not in ("classes", "model_card")}
