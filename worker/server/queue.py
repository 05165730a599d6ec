"""The worker's queue of chunks: one FIFO per client, served round robin, bounded in count and in bytes."""
from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import numpy as np


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
    #: Seconds the client may stay silent before its chunks are dropped (``expired``).
    lease_s: float = 60.0
    #: The error code the chunk is answered with when ``cancel`` is set: cancelled, expired or shutdown.
    stop_code: str = "cancelled"

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

    def requests(self) -> set[str]:
        """Request ids with queued chunks."""
        return {job.request for queue in self._queues.values() for job in queue}


class WorkState:
    """What the socket thread and the inference thread share, under one lock: the queue and the running chunk."""

    def __init__(self, max_per_client: int, max_bytes: int) -> None:
        self.lock = threading.Condition()
        self.queue = FairQueue(max_per_client, max_bytes)
        self.running: Job | None = None
        self.stopping = False

    def active_requests(self) -> set[str]:
        """Request ids with a chunk queued or running (call with the lock held)."""
        active = self.queue.requests()
        if self.running is not None:
            active.add(self.running.request)
        return active

    def stop_request(self, request: str, code: str) -> tuple[list[Job], Job | None]:
        """Take the queued chunks of ``request`` off the queue and stop its running chunk, answered ``code``."""
        with self.lock:
            removed = self.queue.remove_request(request)
            running = self.running if self.running is not None and self.running.request == request else None
            if running is not None:
                running.stop_code = code
                running.cancel.set()
        return removed, running
