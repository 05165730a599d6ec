"""The inference thread: takes chunks from the fair queue, runs the engine, hands replies to the socket thread.

ZeroMQ sockets are not thread-safe, so replies and progress events go back over an ``inproc`` PAIR socket;
the engine polls the chunk's cancel flag before every batch, so cancels, expired leases and shutdown stop a
chunk within one batch.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any

import zmq

from ..client import protocol as P
from .logs import log_event
from .queue import Job, WorkState


class InferenceThread:
    """One thread computing one chunk at a time (the model is not shared between threads)."""

    def __init__(self, engine: Any, state: WorkState, context: zmq.Context, pipe_address: str,
                 progress_s: float) -> None:
        self.engine = engine
        self.state = state
        self.context = context
        self.pipe_address = pipe_address
        self.progress_s = progress_s
        self._pipe: zmq.Socket | None = None
        self.thread = threading.Thread(target=self._loop, name="inference", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def _loop(self) -> None:
        state = self.state
        self._pipe = pipe = self.context.socket(zmq.PAIR)
        pipe.connect(self.pipe_address)
        try:
            while True:
                with state.lock:
                    while not state.stopping and not len(state.queue):
                        state.lock.wait()
                    if state.stopping:
                        return
                    job = state.queue.pop()
                    state.running = job
                assert job is not None
                frames = self._run(job)
                with state.lock:
                    state.running = None
                pipe.send_multipart([job.identity, *job.envelope, *frames], copy=False)
        finally:
            pipe.close(linger=1000)

    def _progress_sender(self, job: Job, base: dict[str, Any]) -> Any:
        last = [time.monotonic()]

        def on_batch(job: Job) -> None:  # inference thread: progress events go out through the pipe
            now = time.monotonic()
            if now - last[0] >= self.progress_s and not job.envelope and self._pipe is not None:
                last[0] = now
                header = {**base, "op": "progress", "status": "running", "done": job.batches_done,
                          "total": job.batches_total}
                self._pipe.send_multipart([job.identity, *P.encode(header)])

        return on_batch

    def _run(self, job: Job) -> list[Any]:
        started = time.monotonic()
        base = {"v": P.PROTOCOL_VERSION, "op": "segment", "id": job.msg_id, "request": job.request, "index": job.index}
        fields = {"client": job.identity.hex()[:16], "request": job.request, "chunk": job.index}
        state = self.state

        def should_stop() -> bool:
            if state.stopping and not job.cancel.is_set():
                job.stop_code = "shutdown"
            return job.cancel.is_set() or state.stopping

        try:
            classes, confidence = self.engine.predict(job, should_stop, self._progress_sender(job, base))
        except self.engine.cancelled_error:
            code = "shutdown" if state.stopping else job.stop_code
            log_event(logging.INFO, "chunk_cancelled", reason=code, **fields)
            return P.encode(P.error_header(code, f"chunk {job.index} {code} before completion", **base))
        except Exception as exc:
            log_event(logging.ERROR, "inference_failed", error=repr(exc), **fields)
            _after_failure()
            return P.encode(P.error_header("inference_failed", f"{type(exc).__name__}: {P.clip(str(exc), 300)}",
                                           **base))
        seconds = time.monotonic() - started
        log_event(logging.INFO, "chunk_done", seconds=round(seconds, 4), wait=round(started - job.received, 4),
                  batches=job.batches_done, **fields)
        arrays = {"classes": classes}
        if confidence is not None:
            arrays["confidence"] = confidence
        return P.encode({**base, "status": "ok", "seconds": seconds}, arrays)


def _after_failure() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()  # after an out-of-memory error, the next chunk gets a clean allocator
