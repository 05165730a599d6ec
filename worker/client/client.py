"""The worker's client: what QGIS (and ``python -m worker.segment``) use to segment a raster. No torch here.

``WorkerClient.segment_raster`` opens the job with one round trip per endpoint (``open``, the only handshake:
the worker's info and its chunk plan; several endpoints must agree; a caller may open it first with
:meth:`WorkerClient.open_job` to see the class table before any chunk), reads each chunk's source window
through the caller's ``reader``, keeps a few chunks in flight (:mod:`.run`), and writes class ids through
``writer`` as they come back. Several endpoints are served by one DEALER socket, so ZeroMQ's round robin spreads chunks across
workers; results are exact whichever worker computes a chunk.
"""
from __future__ import annotations

import logging
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import zmq

from .link import Connector, Link
from .protocol import (
    DEFAULT_LIMITS,
    PROTOCOL_VERSION,
    CancelRequest,
    InfoRequest,
    Message,
    OpenRequest,
    PingRequest,
    PlannedChunk,
    ProtocolError,
    RemoteError,
    Request,
    SegmentationCancelled,
    WorkerError,
    WorkerUnavailable,
    clip,
    parse_endpoint,
    parse_plan,
)
from .pulse import DEAD_AFTER_S
from .run import JobPlan, Reader, Run, Writer

log = logging.getLogger("factseg.client")

#: Reply fields that describe the plan rather than the worker (an ``open`` reply carries both).
_PLAN_FIELDS = ("v", "op", "id", "status", "chunks", "height", "width")
#: Info fields that must be equal on every endpoint of one job: chunks may go to any of them.
_SAME_MODEL = ("model", "backbone", "classes")


class OpenedJob(NamedTuple):
    """A job's handshake (``open``): the worker's info, the options it resolved, and its chunk plan."""

    info: dict[str, Any]
    options: dict[str, Any]
    chunks: list[PlannedChunk]


class WorkerClient:
    """Talks to one or more workers. Not thread-safe: use one client per thread (the QGIS task owns its own)."""

    log = log

    def __init__(
        self,
        endpoints: str | Sequence[str],
        timeout_s: float = 60.0,
        retries: int = 3,
        server_public_key: bytes | None = None,
        client_keys: tuple[bytes, bytes] | None = None,
        *,
        max_in_flight: int | None = None,
        dead_after_s: float = DEAD_AFTER_S,
    ) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("WorkerClient needs at least one endpoint")
        for endpoint in self.endpoints:
            parse_endpoint(endpoint)  # EndpointError (a ValueError) with one sentence
        if timeout_s <= 0 or retries < 0 or dead_after_s <= 0:
            raise ValueError(f"timeout_s and dead_after_s must be > 0 and retries ≥ 0, got {timeout_s}, "
                             f"{dead_after_s}, {retries}")
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.max_in_flight = max_in_flight or 2 * len(self.endpoints)
        #: Workers drop this client's chunks when it sends nothing for this long (it died or hung).
        self.lease_s = min(3600.0, max(1.0, self.timeout_s))
        #: A job fails when its workers answer no ping for this long (they exited, hang or cannot be reached).
        self.dead_after_s = float(dead_after_s)
        self.connector = Connector(server_public_key, client_keys, DEFAULT_LIMITS)
        # Fixed across reconnects (the worker sets ROUTER_HANDOVER): replies of chunks sent before a reconnect
        # still reach us. Routing ids must not start with a zero byte.
        self.identity = b"\x01" + uuid.uuid4().bytes
        self._control: dict[str, Link] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._closed = False

    # -- simple request/reply (Lazy Pirate per endpoint) ----------------------------------------------------

    def _control_link(self, endpoint: str) -> Link:
        if self._closed:
            raise WorkerError("this WorkerClient is closed")
        link = self._control.get(endpoint)
        if link is None:
            link = self._control[endpoint] = self.connector.open([endpoint])
        return link

    def _reset_control(self, endpoint: str) -> None:
        link = self._control.pop(endpoint, None)
        if link is not None:
            link.close()

    def request(self, request: Request, timeout_s: float | None = None, endpoint: str | None = None) -> Message:
        """One typed request/reply with a worker (the first endpoint by default), with Lazy Pirate retries.

        For operations without a method of their own (the ``train_*`` ones); ``RemoteError`` when refused.
        """
        return self._call(endpoint or self.endpoints[0], request, timeout_s)

    def _call(self, endpoint: str, request: Request, timeout_s: float | None = None,
              retries: int | None = None) -> Message:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        retries = self.retries if retries is None else retries
        for _attempt in range(retries + 1):
            msg_id = uuid.uuid4().hex
            reply = self._attempt(endpoint, replace(request, id=msg_id).frames(), msg_id, timeout_s)
            if reply is not None:
                return reply
            self._reset_control(endpoint)  # Lazy Pirate: a fresh socket drops whatever was stuck
        raise WorkerUnavailable(
            f"no answer from worker {endpoint} to '{request.OP}' within {timeout_s:g} s "
            f"({retries + 1} attempt{'s' if retries else ''}); is it running, and are the keys right?"
        )

    def _attempt(self, endpoint: str, frames: list[Any], msg_id: str, timeout_s: float) -> Message | None:
        """Send once and wait for the reply with ``msg_id``; None on timeout."""
        link = self._control_link(endpoint)
        deadline = time.monotonic() + timeout_s
        poller = zmq.Poller()
        poller.register(link.sock, zmq.POLLIN)
        poller.register(link.monitor, zmq.POLLIN)
        sent = False
        while True:
            if not sent:
                try:
                    link.sock.send_multipart(frames, zmq.NOBLOCK)
                    sent = True
                except zmq.Again:  # not connected (yet): keep polling the monitor until the deadline
                    pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            events = dict(poller.poll(min(remaining, 0.05 if not sent else remaining) * 1000))
            if link.monitor in events:
                reason = link.refusal()
                if reason is not None:
                    self._reset_control(endpoint)
                    raise WorkerUnavailable(reason)
            if link.sock not in events:
                continue
            message, _ = link.recv()
            if message.header.get("id") != msg_id:
                continue  # heartbeat or a late reply to an earlier attempt
            if message.header.get("status") == "error":
                raise RemoteError(clip(message.header.get("code"), 40), str(message.header.get("message")))
            return message

    def _call_any(self, request: Request, **kwargs: Any) -> tuple[str, Message]:
        errors = []
        for endpoint in self.endpoints:
            try:
                return endpoint, self._call(endpoint, request, **kwargs)
            except WorkerUnavailable as exc:
                errors.append(str(exc))
        raise WorkerUnavailable("; ".join(errors))

    def info(self) -> dict:
        """The worker's description: protocol, model, backbone, classes, patch/stride defaults, device, backend."""
        endpoint, message = self._call_any(InfoRequest())
        return self._remember_info(endpoint, message.header)

    def _remember_info(self, endpoint: str, header: dict[str, Any]) -> dict[str, Any]:
        info = {k: v for k, v in header.items() if k not in _PLAN_FIELDS}
        if info.get("protocol") != PROTOCOL_VERSION:
            raise ProtocolError(f"worker {endpoint} speaks protocol {clip(info.get('protocol'), 16)}, "
                                f"we speak {PROTOCOL_VERSION}", "unsupported_version")
        self._info[endpoint] = info
        return info

    def ping(self) -> float:
        """Round-trip time in seconds to the first worker that answers."""
        start = time.perf_counter()
        self._call_any(PingRequest())
        return time.perf_counter() - start

    def status(self, endpoint: str | None = None) -> dict:
        """A worker's queue state: ``{"queued": int, "busy": bool, "time": float}``."""
        message = self._call(endpoint or self.endpoints[0], PingRequest())
        return {k: message.header[k] for k in ("queued", "busy", "time")}

    def cancel(self, request: str, timeout_s: float = 2.0) -> int:
        """Cancel a request on every endpoint (best effort); returns how many chunks the workers dropped."""
        count = 0
        for endpoint in self.endpoints:
            try:
                reply = self._call(endpoint, CancelRequest(request=request), timeout_s, 0)
                count += int(reply.header.get("cancelled", 0))
            except WorkerError as exc:
                log.warning("cancel on %s failed: %s", endpoint, exc)
        return count

    def open_job(self, height: int, width: int, patch: int | None = None, stride: int | None = None,
                 chunk_size: int | None = None, *, timeout_s: float | None = None,
                 retries: int | None = None) -> OpenedJob:
        """The handshake: ``(info, resolved options, plan)``, one ``open`` round trip per endpoint.

        Chunks may go to any endpoint, so every worker must run the same model and class table and make the
        same plan; WorkerError names the first difference. ``timeout_s``/``retries`` (default: the client's)
        let a caller fail fast when nothing listens, before the long chunk timeouts apply.
        """
        request = OpenRequest(height=height, width=width, patch=patch, stride=stride, chunk_size=chunk_size)
        replies = {endpoint: self._call(endpoint, request, timeout_s, retries).header for endpoint in self.endpoints}
        first_endpoint, first = next(iter(replies.items()))
        for endpoint, header in replies.items():
            self._remember_info(endpoint, header)
            for key in (*_SAME_MODEL, "patch", "stride", "chunk_size", "chunks"):
                if header.get(key) != first.get(key):
                    raise WorkerError(
                        f"workers disagree on {key}: {first_endpoint} has {clip(first.get(key), 80)}, "
                        f"{endpoint} has {clip(header.get(key), 80)}; one request needs workers running the "
                        "same model with the same settings"
                    )
        options = {k: first.get(k) for k in ("patch", "stride", "chunk_size")}
        return OpenedJob(self._info[first_endpoint], options, parse_plan(first.get("chunks"), height, width))

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
        opened: OpenedJob | None = None,
    ) -> dict:
        """Segment a ``height``×``width`` raster chunk by chunk; returns statistics of the run.

        ``reader(y0, x0, y1, x1)`` returns the RGB pixels (uint8 h×w×3) and a validity mask (bool h×w, or None
        for all valid) of that window; ``writer(y0, x0, classes, confidence)`` receives class ids (uint8, 255 =
        nodata) of an output window, in any order. ``patch``/``stride``/``chunk_size`` left None take the
        worker's model defaults. ``opened``: this image's :meth:`open_job`, when the caller opened it already
        (then patch/stride/chunk_size are the ones it resolved). Raises SegmentationCancelled, RemoteError,
        WorkerUnavailable.
        """
        if height <= 0 or width <= 0:
            raise ValueError(f"raster size must be positive, got {height}×{width}")
        started = time.monotonic()
        opened = opened or self.open_job(height, width, patch or None, stride or None, chunk_size or None)
        info, options, chunks = opened
        if (max(c.out[2] for c in chunks), max(c.out[3] for c in chunks)) != (height, width):
            raise ValueError(f"the job was opened for another raster size than {height}×{width}")
        limit = int(info.get("limits", {}).get("max_frame_bytes", DEFAULT_LIMITS.max_frame_bytes))
        biggest = max((c.src[2] - c.src[0]) * (c.src[3] - c.src[1]) * 3 for c in chunks)
        if biggest > limit:
            raise ProtocolError(f"a chunk needs {biggest} bytes of pixels but the worker accepts {limit}; "
                                "use a smaller chunk_size", "too_large")
        job = JobPlan(uuid.uuid4().hex, (height, width), chunks, options["patch"], options["stride"],
                      options["chunk_size"], bool(confidence), bool(tta))
        run = Run(self, job, reader, writer, progress, is_cancelled)
        try:
            stats = run.execute()
        except BaseException:
            run.close()
            if not isinstance(sys.exc_info()[1], WorkerUnavailable):
                self.cancel(job.request, timeout_s=min(2.0, self.timeout_s))
            raise
        run.close()
        stats.update(seconds=time.monotonic() - started, **options, endpoints=list(self.endpoints),
                     model=info.get("model"), backbone=info.get("backbone"))
        return stats

    def close(self) -> None:
        """Close every socket and the ZeroMQ context (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for endpoint in list(self._control):
            self._reset_control(endpoint)
        self.connector.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["OpenedJob", "PlannedChunk", "ProtocolError", "RemoteError", "SegmentationCancelled", "WorkerClient",
           "WorkerError", "WorkerUnavailable"]
