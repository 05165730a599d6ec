"""One ``segment_raster`` call: chunks in flight, replies, keep-alives and Lazy Pirate recovery.

When a chunk has not been heard of (reply, progress or heartbeat) for ``timeout_s``, the socket is closed and
reopened with the same routing id and every unfinished chunk is sent again, up to ``retries`` times in a row
before giving up with :class:`WorkerUnavailable`. Meanwhile its :class:`~.pulse.Pulse` pings every worker on a
connection of its own: the pings renew the request's lease (a worker drops the work of a client that has
vanished), and a job whose workers all stop answering them fails within the heartbeat budget (``dead_after_s``)
with :class:`~.pulse.WorkerLost`, however long a chunk computes on a live worker.
"""
from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from ..contract import NODATA_CLASS
from .link import Link
from .protocol import (
    PlannedChunk,
    ProtocolError,
    RemoteError,
    SegmentationCancelled,
    SegmentRequest,
    WorkerUnavailable,
)
from .pulse import Pulse

if TYPE_CHECKING:
    from .client import WorkerClient

Reader = Callable[[int, int, int, int], "tuple[np.ndarray, np.ndarray | None]"]
Writer = Callable[[int, int, np.ndarray, "np.ndarray | None"], None]

#: Worker errors after which a chunk is simply sent again (elsewhere, or once the worker has room).
RETRYABLE = {"shutdown", "queue_full", "expired"}


@dataclass
class Flight:
    chunk: PlannedChunk
    frames: list[Any]
    last_heard: float
    sent: bool = False
    not_before: float = 0.0
    sends: int = 0
    partial: float = 0.0  # share of the chunk's batches the worker reported done


@dataclass(frozen=True)
class JobPlan:
    """What the handshake settled: the request id, image size, resolved options and the chunks."""

    request: str
    image_size: tuple[int, int]
    chunks: list[PlannedChunk]
    patch: int
    stride: int
    chunk_size: int
    confidence: bool
    tta: bool


class Run:
    """Drives one planned job to completion over one DEALER connected to every endpoint."""

    def __init__(self, client: WorkerClient, job: JobPlan, reader: Reader, writer: Writer,
                 progress: Callable[[float], None] | None, is_cancelled: Callable[[], bool] | None) -> None:
        self.client = client
        self.job = job
        self.request = job.request
        self.chunks = job.chunks
        self.reader, self.writer = reader, writer
        self.progress = progress
        self.is_cancelled = is_cancelled
        self.todo = collections.deque(job.chunks)
        self.flights: dict[int, Flight] = {}
        self.done: set[int] = set()
        self.done_area = 0
        self.total_area = job.image_size[0] * job.image_size[1]
        self.stats: collections.Counter = collections.Counter()
        self.link: Link | None = None
        self.pulse: Pulse | None = None
        self.reported = 0.0

    @property
    def sock(self) -> zmq.Socket:
        assert self.link is not None
        return self.link.sock

    def close(self) -> None:
        if self.pulse is not None:
            self.pulse.close()
            self.pulse = None
        self._close_link()

    def _close_link(self) -> None:
        if self.link is not None:
            self.link.close()
            self.link = None

    def _reconnect(self) -> None:
        self._close_link()
        self.link = self.client.connector.open(self.client.endpoints, self.client.identity)
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
        self.pulse = Pulse(client.connector, client.endpoints, self.request, client.dead_after_s,
                           min(client.dead_after_s, client.lease_s) / 10)
        self._reconnect()
        if self.progress:
            self.progress(0.0)
        failures = 0
        while len(self.done) < len(self.chunks):
            if self.is_cancelled is not None and self.is_cancelled():
                raise SegmentationCancelled(f"segmentation cancelled after {len(self.done)} of {len(self.chunks)} chunks")
            self._fill()
            self._send_pending()
            self._check_pulse()
            if self._receive():
                failures = 0
            if self._stale():
                failures += 1
                self._recover(failures)
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

    def _receive(self) -> bool:
        """Handle the replies waiting (a bounded batch); True when a chunk completed."""
        completed = False
        if self.sock.poll(50 if self.flights else 0):
            for _ in range(32):
                try:
                    message, size = self.link.recv(zmq.NOBLOCK)  # type: ignore[union-attr]
                except zmq.Again:
                    break
                completed |= self._on_message(message, size)
        return completed

    def _stale(self) -> list[Flight]:
        now = time.monotonic()
        return [f for f in self.flights.values() if now - f.last_heard > self.client.timeout_s]

    def _recover(self, failures: int) -> None:
        client = self.client
        stale = self._stale()
        self.stats["retries"] += 1
        if failures > client.retries:
            raise WorkerUnavailable(
                f"no answer for chunk {stale[0].chunk.index} from {', '.join(client.endpoints)} within "
                f"{client.timeout_s:g} s, {client.retries} reconnection{'s' if client.retries != 1 else ''} "
                f"tried; {len(self.done)} of {len(self.chunks)} chunks were done"
            )
        client.log.warning("no answer for %d chunk(s) in %.1f s: reconnecting and resending (%d/%d)",
                           len(stale), client.timeout_s, failures, client.retries)
        self.stats["resent"] += len(self.flights)
        self._reconnect()

    def _check_pulse(self) -> None:
        """Ping the workers (renewing the lease) and fail the job when none has answered for the budget."""
        assert self.pulse is not None
        self.pulse.beat()
        lost = self.pulse.lost(len(self.done), len(self.chunks))
        if lost is not None:
            raise lost

    def _fill(self) -> None:
        job = self.job
        while self.todo and len(self.flights) < self.client.max_in_flight:
            chunk = self.todo.popleft()
            sy0, sx0, sy1, sx1 = chunk.src
            pixels, valid = check_read(*self.reader(sy0, sx0, sy1, sx1), (sy1 - sy0, sx1 - sx0))
            oy0, ox0, oy1, ox1 = chunk.out
            if valid is not None:
                inner = valid[oy0 - sy0 : oy1 - sy0, ox0 - sx0 : ox1 - sx0]
                if not inner.any():  # nothing to classify: write nodata without asking the worker
                    shape = (oy1 - oy0, ox1 - ox0)
                    conf = np.zeros(shape, np.float32) if job.confidence else None
                    self.writer(oy0, ox0, np.full(shape, NODATA_CLASS, np.uint8), conf)
                    self.stats["skipped"] += 1
                    self._finished(chunk)
                    continue
                if valid.all():
                    valid = None
            request = SegmentRequest(
                id=f"{self.request}:{chunk.index}", request=self.request, index=chunk.index,
                image_size=job.image_size, src=chunk.src, out=chunk.out, patch=job.patch, stride=job.stride,
                chunk_size=job.chunk_size, confidence=job.confidence, tta=job.tta, lease_s=self.client.lease_s,
                pixels=pixels, valid=valid,
            )
            self.flights[chunk.index] = Flight(chunk, request.frames(), time.monotonic())
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

    def _on_event(self, header: dict[str, Any], now: float) -> None:
        if header.get("op") == "heartbeat":
            for index in (header.get("pending") or {}).get(self.request, []):
                flight = self.flights.get(index) if isinstance(index, int) else None
                if flight is not None:
                    flight.last_heard = now
            return
        index = header.get("index")
        mine = header.get("request") == self.request and isinstance(index, int)
        flight = self.flights.get(index) if mine else None  # type: ignore[arg-type]
        done, total = header.get("done"), header.get("total")
        if flight is not None and isinstance(done, int) and isinstance(total, int) and total > 0:
            flight.last_heard = now
            flight.partial = min(0.99, done / total)
            self._report()

    def _on_message(self, message: Any, size: int) -> bool:
        """Handle one message from a worker; True when a chunk completed."""
        header = message.header
        now = time.monotonic()
        if header.get("op") in ("heartbeat", "progress"):
            self._on_event(header, now)
            return False
        index = header.get("index")
        if header.get("request") != self.request or not isinstance(index, int):
            return False  # a keep-alive's reply, or a late reply to an earlier request on this identity
        flight = self.flights.get(index)
        if flight is None:
            return False  # duplicate of a chunk already written (resent before its first reply arrived)
        if header.get("status") == "error":
            code, text = str(header.get("code")), str(header.get("message"))
            if code in RETRYABLE:
                flight.sent, flight.last_heard, flight.not_before = False, now, now + 0.2
                self.stats["requeued"] += 1
                return False
            if code == "cancelled":
                raise SegmentationCancelled(f"the worker cancelled chunk {flight.chunk.index}: {text}")
            raise RemoteError(code, text)
        classes, conf = self._check_reply(flight, message)
        self.stats["bytes_received"] += size
        self.stats["worker_ms"] += int(1000 * float(header.get("seconds", 0.0)))
        self.writer(flight.chunk.out[0], flight.chunk.out[1], classes, conf)
        del self.flights[flight.chunk.index]
        self._finished(flight.chunk)
        return True

    def _check_reply(self, flight: Flight, message: Any) -> tuple[np.ndarray, np.ndarray | None]:
        oy0, ox0, oy1, ox1 = flight.chunk.out
        shape = (oy1 - oy0, ox1 - ox0)
        classes = message.arrays.get("classes")
        if classes is None or classes.dtype != np.uint8 or classes.shape != shape:
            raise ProtocolError(f"chunk {flight.chunk.index}: expected uint8 classes {shape}, got "
                                f"{None if classes is None else (classes.dtype, classes.shape)}", "bad_array")
        if not self.job.confidence:
            return classes, None
        conf = message.arrays.get("confidence")
        if conf is None or conf.dtype != np.float32 or conf.shape != shape:
            raise ProtocolError(f"chunk {flight.chunk.index}: expected float32 confidence {shape}", "bad_array")
        return classes, conf

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


def check_read(pixels: Any, valid: Any, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """The reader's arrays, checked against the window it was asked for."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.shape != (*shape, 3):
        raise ValueError(f"reader must return uint8 pixels of shape {(*shape, 3)}, got {pixels.dtype} {pixels.shape}")
    if valid is not None:
        valid = np.asarray(valid)
        if valid.shape != shape:
            raise ValueError(f"reader must return a validity mask of shape {shape}, got {valid.shape}")
        valid = valid.astype(bool, copy=False)
    return pixels, valid
