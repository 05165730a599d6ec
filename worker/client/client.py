"""The worker's client: what QGIS (and ``python -m worker.segment``) use to segment a raster. No torch here.

``WorkerClient.segment_raster`` asks a worker for the chunk plan (the grid is defined once, in the engine),
reads each chunk's source window through the caller's ``reader``, keeps a few chunks in flight, writes class
ids through ``writer`` as they come back, and recovers from a dead or restarted worker the Lazy Pirate way:
when a chunk has not been heard of (reply, progress or heartbeat) for ``timeout_s``, the socket is closed and
reopened and every unfinished chunk is sent again, up to ``retries`` times in a row before giving up with
:class:`WorkerUnavailable`. Several endpoints are served by one DEALER socket, so ZeroMQ's own round robin
spreads chunks across workers; results are exact whichever worker computes a chunk.
"""
from __future__ import annotations

import collections
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from . import protocol as P
from .protocol import (
    PROTOCOL_VERSION,
    ProtocolError,
    RemoteError,
    SegmentationCancelled,
    WorkerError,
    WorkerUnavailable,
)

log = logging.getLogger("factseg.client")

Reader = Callable[[int, int, int, int], "tuple[np.ndarray, np.ndarray | None]"]
Writer = Callable[[int, int, np.ndarray, "np.ndarray | None"], None]

NODATA_CLASS = 255
#: Worker errors after which a chunk is simply sent again (elsewhere, or once the worker has room).
_RETRYABLE = {"shutdown", "queue_full"}


@dataclass(frozen=True)
class PlannedChunk:
    """One chunk of the worker's plan: the output window it fills and the source window it needs."""

    index: int
    out: tuple[int, int, int, int]
    src: tuple[int, int, int, int]

    @property
    def area(self) -> int:
        return (self.out[2] - self.out[0]) * (self.out[3] - self.out[1])


@dataclass
class _Flight:
    chunk: PlannedChunk
    frames: list[Any]
    last_heard: float
    sent: bool = False
    not_before: float = 0.0
    sends: int = 0
    partial: float = 0.0  # share of the chunk's batches the worker reported done


def _z85(key: bytes | str | None) -> bytes | None:
    if key is None:
        return None
    key = key.encode("ascii") if isinstance(key, str) else bytes(key)
    if len(key) != 40:
        raise ValueError(f"CURVE keys are 40 Z85 characters, got {len(key)} bytes")
    return key


_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class _Link:
    """A DEALER socket and its monitor: which endpoints completed the handshake, which refused us and why.

    Without the monitor a refused CURVE key looks like a silent worker; with it the error says what happened.
    """

    def __init__(self, sock: zmq.Socket, endpoints: Sequence[str]) -> None:
        self.sock = sock
        self.endpoints = list(endpoints)
        self.monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        self.connected: set[str] = set()
        self.refused: dict[str, str] = {}
        for endpoint in self.endpoints:
            sock.connect(endpoint)

    def pump(self) -> None:
        """Read the monitor events that are waiting."""
        from zmq.utils.monitor import recv_monitor_message

        while self.monitor.poll(0):
            event = recv_monitor_message(self.monitor)
            endpoint = event["endpoint"].decode("utf-8", "replace")
            kind = event["event"]
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.connected.add(endpoint)
                self.refused.pop(endpoint, None)
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.refused[endpoint] = f"the worker at {endpoint} refused our CURVE key (not an allowed client)"
            else:
                self.refused[endpoint] = (
                    f"security handshake with {endpoint} failed: wrong server public key, or one side uses CURVE "
                    "and the other does not"
                )

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every endpoint connected or refused, at most ``timeout_s`` (so round robin sees them all)."""
        deadline = time.monotonic() + timeout_s
        self.pump()
        while len(self.connected | set(self.refused)) < len(self.endpoints):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.monitor.poll(remaining * 1000):
                break
            self.pump()

    def refusal(self) -> str | None:
        """Why the worker(s) cannot be used, when every endpoint refused the handshake; else None."""
        self.pump()
        if self.refused and not self.connected and len(self.refused) >= len(self.endpoints):
            return "; ".join(self.refused.values())
        return None

    def close(self) -> None:
        try:
            self.sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


class WorkerClient:
    """Talks to one or more workers. Not thread-safe: use one client per thread (the QGIS task owns its own)."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        timeout_s: float = 60.0,
        retries: int = 3,
        server_public_key: bytes | None = None,
        client_keys: tuple[bytes, bytes] | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("WorkerClient needs at least one endpoint")
        for endpoint in self.endpoints:
            if endpoint.partition("://")[0] not in ("tcp", "ipc", "inproc") or "://" not in endpoint:
                raise ValueError(f"not a ZeroMQ endpoint: {endpoint!r} (expected tcp://HOST:PORT or ipc://PATH)")
        if timeout_s <= 0 or retries < 0:
            raise ValueError(f"timeout_s must be > 0 and retries ≥ 0, got {timeout_s}, {retries}")
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.max_in_flight = max_in_flight or 2 * len(self.endpoints)
        self._server_key = _z85(server_public_key)
        if client_keys is not None:
            self._client_keys = (_z85(client_keys[0]), _z85(client_keys[1]))
        elif self._server_key is not None:
            self._client_keys = zmq.curve_keypair()  # an anonymous key: works only if the worker allows any
        else:
            self._client_keys = None
        self._ctx = zmq.Context()
        # Fixed across reconnects (the worker sets ROUTER_HANDOVER): replies of chunks sent before a reconnect
        # still reach us. Routing ids must not start with a zero byte.
        self._identity = b"\x01" + uuid.uuid4().bytes
        self._control: dict[str, _Link] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._closed = False

    # -- sockets --------------------------------------------------------------------------------------------

    def _new_link(self, endpoints: Sequence[str], identity: bytes | None = None) -> _Link:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 1)  # queue only to connected workers, so a dead one gets no chunks
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if identity is not None:
            sock.setsockopt(zmq.ROUTING_ID, identity)
        if self._server_key is not None:
            assert self._client_keys is not None
            sock.curve_serverkey = self._server_key
            sock.curve_publickey, sock.curve_secretkey = self._client_keys
        return _Link(sock, endpoints)

    def _control_link(self, endpoint: str) -> _Link:
        if self._closed:
            raise WorkerError("this WorkerClient is closed")
        link = self._control.get(endpoint)
        if link is None:
            link = self._control[endpoint] = self._new_link([endpoint])
        return link

    def _reset_control(self, endpoint: str) -> None:
        link = self._control.pop(endpoint, None)
        if link is not None:
            link.close()

    # -- simple request/reply (Lazy Pirate per endpoint) ----------------------------------------------------

    def request(self, header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
                timeout_s: float | None = None, endpoint: str | None = None) -> P.Message:
        """One request/reply with a worker (the first endpoint by default), with Lazy Pirate retries.

        For operations without a dedicated method (e.g. ``train_*``); ``RemoteError`` when the worker refuses.
        """
        return self._call(endpoint or self.endpoints[0], header, timeout_s, arrays=arrays)

    def _call(self, endpoint: str, header: dict[str, Any], timeout_s: float | None = None,
              retries: int | None = None, arrays: dict[str, np.ndarray] | None = None) -> P.Message:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        retries = self.retries if retries is None else retries
        for _attempt in range(retries + 1):
            link = self._control_link(endpoint)
            sock = link.sock
            msg_id = uuid.uuid4().hex
            frames = P.encode({**header, "id": msg_id}, arrays)
            deadline = time.monotonic() + timeout_s
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            poller.register(link.monitor, zmq.POLLIN)
            sent = False
            while True:
                if not sent:
                    try:
                        sock.send_multipart(frames, zmq.NOBLOCK)
                        sent = True
                    except zmq.Again:  # not connected (yet): keep polling the monitor until the deadline
                        pass
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                events = dict(poller.poll(min(remaining, 0.05 if not sent else remaining) * 1000))
                if link.monitor in events:
                    reason = link.refusal()
                    if reason is not None:
                        self._reset_control(endpoint)
                        raise WorkerUnavailable(reason)
                if sock not in events:
                    continue
                message = P.decode(sock.recv_multipart(copy=False), reply=True)
                if message.header.get("id") != msg_id:
                    continue  # heartbeat or a late reply to an earlier attempt
                if message.header.get("status") == "error":
                    raise RemoteError(str(message.header.get("code")), str(message.header.get("message")))
                return message
            self._reset_control(endpoint)  # Lazy Pirate: a fresh socket drops whatever was stuck
        raise WorkerUnavailable(
            f"no answer from worker {endpoint} to '{header['op']}' within {timeout_s:g} s "
            f"({retries + 1} attempt{'s' if retries else ''}); is it running, and are the keys right?"
        )

    def _call_any(self, header: dict[str, Any], **kwargs: Any) -> tuple[str, P.Message]:
        errors = []
        for endpoint in self.endpoints:
            try:
                return endpoint, self._call(endpoint, header, **kwargs)
            except WorkerUnavailable as exc:
                errors.append(str(exc))
        raise WorkerUnavailable("; ".join(errors))

    def info(self) -> dict:
        """The worker's description: protocol, model, backbone, classes, patch/stride defaults, device, backend."""
        endpoint, message = self._call_any({"op": "info"})
        return self._remember_info(endpoint, message.header)

    def _remember_info(self, endpoint: str, header: dict[str, Any]) -> dict[str, Any]:
        info = {k: v for k, v in header.items() if k not in ("v", "op", "id", "status")}
        if info.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"worker {endpoint} speaks protocol {info.get('protocol')}, we speak {PROTOCOL_VERSION}",
                                "unsupported_version")
        self._info[endpoint] = info
        return info

    def ping(self) -> float:
        """Round-trip time in seconds to the first worker that answers."""
        start = time.perf_counter()
        self._call_any({"op": "ping"})
        return time.perf_counter() - start

    def status(self, endpoint: str | None = None) -> dict:
        """A worker's queue state: ``{"queued": int, "busy": bool, "time": float}``."""
        message = self._call(endpoint or self.endpoints[0], {"op": "ping"})
        return {k: message.header[k] for k in ("queued", "busy", "time")}

    def cancel(self, request: str, timeout_s: float = 2.0) -> int:
        """Cancel a request on every endpoint (best effort); returns how many chunks the workers dropped."""
        count = 0
        for endpoint in self.endpoints:
            try:
                count += int(self._call(endpoint, {"op": "cancel", "request": request}, timeout_s, 0).header
                             .get("cancelled", 0))
            except WorkerError as exc:
                log.warning("cancel on %s failed: %s", endpoint, exc)
        return count

    def _consistent_info(self) -> dict[str, Any]:
        """Info of every endpoint; chunks may go to any worker, so all must run the same model."""
        infos = {}
        for endpoint in self.endpoints:
            infos[endpoint] = self._remember_info(endpoint, self._call(endpoint, {"op": "info"}).header)
        first_endpoint, first = next(iter(infos.items()))
        for endpoint, info in infos.items():
            for key in ("model", "backbone", "classes"):
                if info.get(key) != first.get(key):
                    raise WorkerError(
                        f"workers disagree on {key}: {first_endpoint} has {str(first.get(key))[:80]}, "
                        f"{endpoint} has {str(info.get(key))[:80]}; one request needs workers running the same model"
                    )
        return first

    def plan(self, height: int, width: int, patch: int, stride: int, chunk_size: int) -> list[PlannedChunk]:
        """The worker's chunk plan for an image (the engine's single definition of the grid), validated."""
        _, message = self._call_any(
            {"op": "plan", "height": height, "width": width, "patch": patch, "stride": stride, "chunk_size": chunk_size}
        )
        chunks = []
        covered = 0
        for position, row in enumerate(message.header.get("chunks", [])):
            if not (isinstance(row, list) and len(row) == 9 and all(isinstance(v, int) for v in row)):
                raise ProtocolError(f"plan entry {position} is not 9 integers")
            chunk = PlannedChunk(row[0], tuple(row[1:5]), tuple(row[5:9]))  # type: ignore[arg-type]
            oy0, ox0, oy1, ox1 = chunk.out
            sy0, sx0, sy1, sx1 = chunk.src
            if chunk.index != position or not (0 <= sy0 <= oy0 < oy1 <= sy1 <= height and 0 <= sx0 <= ox0 < ox1 <= sx1 <= width):
                raise ProtocolError(f"plan entry {position} is inconsistent: {row}")
            covered += chunk.area
            chunks.append(chunk)
        if covered != height * width:
            raise ProtocolError(f"the worker's plan covers {covered} pixels of {height * width}")
        return chunks

    # -- segmentation ---------------------------------------------------------------------------------------

    def segment_raster(
        self,
        height: int,
        width: int,
        reader: Reader,
        writer: Writer,
        *,
        patch: int | None = None,
        stride: int | None = None,
        chunk_size: int | None = None,
        confidence: bool = False,
        progress: Callable[[float], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        tta: bool = False,
    ) -> dict:
        """Segment a ``height``×``width`` raster chunk by chunk; returns statistics of the run.

        ``reader(y0, x0, y1, x1)`` returns the RGB pixels (uint8 h×w×3) and a validity mask (bool h×w, or None
        for all valid) of that window; ``writer(y0, x0, classes, confidence)`` receives class ids (uint8, 255 =
        nodata) of an output window, in any order. Raises SegmentationCancelled, RemoteError, WorkerUnavailable.
        """
        if height <= 0 or width <= 0:
            raise ValueError(f"raster size must be positive, got {height}×{width}")
        started = time.monotonic()
        info = self._consistent_info()
        patch = int(patch or info["patch"])
        stride = int(stride or info["stride"])
        chunk_size = int(chunk_size or info.get("chunk_size", 4096))
        chunks = self.plan(height, width, patch, stride, chunk_size)
        limit = int(info.get("limits", {}).get("max_frame_bytes", P.DEFAULT_LIMITS.max_frame_bytes))
        biggest = max((c.src[2] - c.src[0]) * (c.src[3] - c.src[1]) * 3 for c in chunks)
        if biggest > limit:
            raise ProtocolError(f"a chunk needs {biggest} bytes of pixels but the worker accepts {limit}; "
                                "use a smaller chunk_size", "too_large")
        run = _Run(self, uuid.uuid4().hex, (height, width), chunks, reader, writer,
                   dict(patch=patch, stride=stride, chunk_size=chunk_size, confidence=bool(confidence), tta=bool(tta)),
                   progress, is_cancelled)
        try:
            stats = run.execute()
        except BaseException:
            run.close()
            if not isinstance(sys.exc_info()[1], WorkerUnavailable):
                self.cancel(run.request, timeout_s=min(2.0, self.timeout_s))
            raise
        run.close()
        stats.update(seconds=time.monotonic() - started, patch=patch, stride=stride, chunk_size=chunk_size,
                     endpoints=list(self.endpoints), model=info.get("model"), backbone=info.get("backbone"))
        return stats

    def close(self) -> None:
        """Close every socket and the ZeroMQ context (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for endpoint in list(self._control):
            self._reset_control(endpoint)
        self._ctx.term()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _Run:
    """One ``segment_raster`` call: the in-flight window, replies, heartbeats and Lazy Pirate recovery."""

    def __init__(self, client: WorkerClient, request: str, image_size: tuple[int, int], chunks: list[PlannedChunk],
                 reader: Reader, writer: Writer, options: dict[str, Any], progress: Callable[[float], None] | None,
                 is_cancelled: Callable[[], bool] | None) -> None:
        self.client = client
        self.request = request
        self.image_size = image_size
        self.chunks = chunks
        self.reader, self.writer = reader, writer
        self.options = options
        self.progress = progress
        self.is_cancelled = is_cancelled
        self.todo = collections.deque(chunks)
        self.flights: dict[int, _Flight] = {}
        self.done: set[int] = set()
        self.done_area = 0
        self.total_area = image_size[0] * image_size[1]
        self.stats = collections.Counter()
        self.link: _Link | None = None
        self.reported = 0.0

    @property
    def sock(self) -> zmq.Socket:
        assert self.link is not None
        return self.link.sock

    def close(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def _reconnect(self) -> None:
        self.close()
        self.link = self.client._new_link(self.client.endpoints, self.client._identity)
        # let every worker finish its handshake first, so round robin spreads the first chunks over all of them
        self.link.wait_ready(min(1.0, self.client.timeout_s))
        reason = self.link.refusal()
        if reason is not None:
            raise WorkerUnavailable(reason)
        now = time.monotonic()
        for flight in self.flights.values():
            flight.sent, flight.last_heard, flight.not_before = False, now, 0.0

    def execute(self) -> dict[str, Any]:
        client = self.client
        self._reconnect()
        if self.progress:
            self.progress(0.0)
        failures = 0
        while len(self.done) < len(self.chunks):
            if self.is_cancelled is not None and self.is_cancelled():
                raise SegmentationCancelled(f"segmentation cancelled after {len(self.done)} of {len(self.chunks)} chunks")
            self._fill()
            self._send_pending()
            if self.sock.poll(50 if self.flights else 0):
                for _ in range(32):
                    try:
                        frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if self._on_message(frames):
                        failures = 0
            now = time.monotonic()
            stale = [f for f in self.flights.values() if now - f.last_heard > client.timeout_s]
            if stale:
                failures += 1
                self.stats["retries"] += 1
                if failures > client.retries:
                    raise WorkerUnavailable(
                        f"no answer for chunk {stale[0].chunk.index} from {', '.join(client.endpoints)} within "
                        f"{client.timeout_s:g} s, {client.retries} reconnection{'s' if client.retries != 1 else ''} "
                        f"tried; {len(self.done)} of {len(self.chunks)} chunks were done"
                    )
                log.warning("no answer for %d chunk(s) in %.1f s: reconnecting and resending (%d/%d)",
                            len(stale), client.timeout_s, failures, client.retries)
                self.stats["resent"] += len(self.flights)
                self._reconnect()
        return {
            "request": self.request,
            "chunks": len(self.chunks),
            "chunks_skipped": self.stats["skipped"],
            "retries": self.stats["retries"],
            "resent": self.stats["resent"],
            "bytes_sent": self.stats["bytes_sent"],
            "bytes_received": self.stats["bytes_received"],
            "worker_seconds": self.stats["worker_ms"] / 1000.0,
        }

    def _fill(self) -> None:
        while self.todo and len(self.flights) < self.client.max_in_flight:
            chunk = self.todo.popleft()
            sy0, sx0, sy1, sx1 = chunk.src
            pixels, valid = self.reader(sy0, sx0, sy1, sx1)
            pixels, valid = _check_read(pixels, valid, (sy1 - sy0, sx1 - sx0))
            oy0, ox0, oy1, ox1 = chunk.out
            if valid is not None:
                inner = valid[oy0 - sy0 : oy1 - sy0, ox0 - sx0 : ox1 - sx0]
                if not inner.any():  # nothing to classify: write nodata without asking the worker
                    shape = (oy1 - oy0, ox1 - ox0)
                    conf = np.zeros(shape, np.float32) if self.options["confidence"] else None
                    self.writer(oy0, ox0, np.full(shape, NODATA_CLASS, np.uint8), conf)
                    self.stats["skipped"] += 1
                    self._finished(chunk)
                    continue
                if valid.all():
                    valid = None
            arrays = {"pixels": pixels} if valid is None else {"pixels": pixels, "valid": valid}
            header = {"op": "segment", "id": f"{self.request}:{chunk.index}", "request": self.request,
                      "index": chunk.index, "image_size": list(self.image_size), "src": list(chunk.src),
                      "out": list(chunk.out), **self.options}
            self.flights[chunk.index] = _Flight(chunk, P.encode(header, arrays), time.monotonic())
            self._send_pending()  # start the transfer before reading the next chunk

    def _send_pending(self) -> None:
        now = time.monotonic()
        for flight in self.flights.values():
            if flight.sent or flight.not_before > now:
                continue
            try:
                self.sock.send_multipart(flight.frames, zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return  # no worker connected yet (or all queues full): try again on the next turn
            flight.sent = True
            flight.sends += 1
            flight.last_heard = now
            self.stats["bytes_sent"] += sum(len(f) for f in flight.frames)

    def _on_message(self, frames: list[Any]) -> bool:
        """Handle one message from a worker; True when a chunk completed."""
        message = P.decode(frames, reply=True)
        header = message.header
        now = time.monotonic()
        if header.get("op") == "heartbeat":
            for index in (header.get("pending") or {}).get(self.request, []):
                flight = self.flights.get(index) if isinstance(index, int) else None
                if flight is not None:
                    flight.last_heard = now
            return False
        if header.get("op") == "progress":
            index = header.get("index")
            mine = header.get("request") == self.request and isinstance(index, int)
            flight = self.flights.get(index) if mine else None  # type: ignore[arg-type]
            done, total = header.get("done"), header.get("total")
            if flight is not None and isinstance(done, int) and isinstance(total, int) and total > 0:
                flight.last_heard = now
                flight.partial = min(0.99, done / total)
                self._report()
            return False
        index = header.get("index")
        if header.get("request") != self.request or not isinstance(index, int):
            return False  # a late reply to an earlier request on this identity
        flight = self.flights.get(index)
        if flight is None:
            return False  # duplicate of a chunk already written (resent before its first reply arrived)
        if header.get("status") == "error":
            code, text = str(header.get("code")), str(header.get("message"))
            if code in _RETRYABLE:
                flight.sent, flight.last_heard, flight.not_before = False, now, now + 0.2
                self.stats["requeued"] += 1
                return False
            if code == "cancelled":
                raise SegmentationCancelled(f"the worker cancelled chunk {flight.chunk.index}: {text}")
            raise RemoteError(code, text)
        oy0, ox0, oy1, ox1 = flight.chunk.out
        shape = (oy1 - oy0, ox1 - ox0)
        classes = message.arrays.get("classes")
        if classes is None or classes.dtype != np.uint8 or classes.shape != shape:
            raise ProtocolError(f"chunk {flight.chunk.index}: expected uint8 classes {shape}, got "
                                f"{None if classes is None else (classes.dtype, classes.shape)}", "bad_array")
        conf = message.arrays.get("confidence")
        if self.options["confidence"] and (conf is None or conf.dtype != np.float32 or conf.shape != shape):
            raise ProtocolError(f"chunk {flight.chunk.index}: expected float32 confidence {shape}", "bad_array")
        self.stats["bytes_received"] += sum(len(f) for f in frames)
        self.stats["worker_ms"] += int(1000 * float(header.get("seconds", 0.0)))
        self.writer(oy0, ox0, classes, conf if self.options["confidence"] else None)
        del self.flights[flight.chunk.index]
        self._finished(flight.chunk)
        return True

    def _finished(self, chunk: PlannedChunk) -> None:
        self.done.add(chunk.index)
        self.done_area += chunk.area
        self._report()

    def _report(self) -> None:
        """Progress = finished area + the reported share of chunks being computed; never goes backwards."""
        if not self.progress:
            return
        running = sum(f.partial * f.chunk.area for f in self.flights.values())
        fraction = min(1.0, (self.done_area + running) / self.total_area)
        if fraction > self.reported or fraction == 1.0:
            self.reported = fraction
            self.progress(fraction)


def _check_read(pixels: Any, valid: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.shape != (*shape, 3):
        raise ValueError(f"reader must return uint8 pixels of shape {(*shape, 3)}, got {pixels.dtype} {pixels.shape}")
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != shape:
            raise ValueError(f"reader must return a validity mask of shape {shape}, got {valid.shape}")
        valid = valid.astype(bool, copy=False)
    return pixels, valid


# -- local worker -------------------------------------------------------------------------------------------


def default_local_endpoint() -> str:
    """A private endpoint for a worker on this machine: an ipc socket in the user's runtime dir (tcp on Windows)."""
    if sys.platform == "win32":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    if not os.access(runtime, os.W_OK):
        runtime = tempfile.gettempdir()
    return f"ipc://{runtime}/factseg-worker-{os.getpid()}-{uuid.uuid4().hex[:8]}.ipc"


class LocalWorker:
    """A worker process started by :func:`start_local_worker`; stop it with :meth:`stop` (or ``with``)."""

    def __init__(self, endpoint: str, process: subprocess.Popen, log_path: Path) -> None:
        self.endpoint = endpoint
        self.process = process
        self.log_path = log_path

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (the worker finishes or cancels its chunk and removes its ipc file), then kill after timeout."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> LocalWorker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_local_worker(
    python: str,
    model: str,
    endpoint: str | None = None,
    device: str = "auto",
    backend: str = "torch",
    batch_size: int | None = None,
    pythonpath: str | None = None,
    ready_timeout_s: float = 120.0,
    *,
    extra_args: Sequence[str] = (),
    server_public_key: bytes | None = None,
    client_keys: tuple[bytes, bytes] | None = None,
) -> LocalWorker:
    """Start ``python -m worker`` on this machine and wait until it answers ``info``.

    The worker stops by itself if this process dies (``--exit-with-parent``), so a crashed QGIS leaves no
    orphan holding the GPU.
    ``python`` is the interpreter that has torch (not QGIS's); ``pythonpath`` lets it import the ``worker`` and
    ``factseg_core`` packages shipped inside the plugin. Raises WorkerError with the worker's last stderr lines
    if it exits or does not answer within ``ready_timeout_s``. ``extra_args`` go to ``python -m worker`` (CURVE
    options, ``--chunk-size``…); the keys let the readiness probe talk to a CURVE-protected worker.
    """
    endpoint = endpoint or default_local_endpoint()
    command = [python, "-m", "worker", "--bind", endpoint, "--model", str(model), "--device", device,
               "--backend", backend, "--exit-with-parent"]
    if batch_size is not None:
        command += ["--batch-size", str(int(batch_size))]
    command += list(extra_args)
    env = dict(os.environ)
    env.pop("PYTHONHOME", None)  # QGIS's own Python home would break another interpreter
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    fd, name = tempfile.mkstemp(prefix="factseg-worker-", suffix=".log")
    log_path = Path(name)
    with os.fdopen(fd, "wb") as stderr:
        try:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                       env=env)
        except OSError as exc:
            log_path.unlink(missing_ok=True)
            raise WorkerError(f"cannot start the worker with {python}: {exc}") from None
    worker = LocalWorker(endpoint, process, log_path)
    deadline = time.monotonic() + ready_timeout_s
    with WorkerClient(endpoint, timeout_s=0.5, retries=0, server_public_key=server_public_key,
                      client_keys=client_keys) as probe:
        while True:
            if process.poll() is not None:
                tail = worker.stderr_tail()
                worker.stop()
                raise WorkerError(f"the worker exited with code {process.returncode} before it was ready:\n{tail}")
            try:
                probe.info()
                return worker
            except WorkerUnavailable:
                pass
            if time.monotonic() > deadline:
                tail = worker.stderr_tail()
                worker.stop(timeout_s=2.0)
                raise WorkerError(f"the worker did not answer within {ready_timeout_s:g} s:\n{tail}")


__all__ = [
    "LocalWorker",
    "PlannedChunk",
    "ProtocolError",
    "RemoteError",
    "SegmentationCancelled",
    "WorkerClient",
    "WorkerError",
    "WorkerUnavailable",
    "default_local_endpoint",
    "start_local_worker",
]
