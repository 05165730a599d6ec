"""Starting a worker on this machine (QGIS's local worker, the demo, tests): ``python -m worker`` as a child."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .client import WorkerClient
from .protocol import WorkerError, WorkerUnavailable


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



__all__ = ["LocalWorker", "default_local_endpoint", "start_local_worker"]
