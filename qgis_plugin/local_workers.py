"""Local worker processes started for jobs: kept between jobs while the plugin runs in QGIS, else one per job.

Starting a worker costs seconds (importing torch, loading the model), so while the plugin's GUI is loaded
(:func:`set_keep_alive`), a job reuses the worker already running for the same Python, model, device and batch
size, and :func:`stop_all` stops them when the plugin unloads. Without the GUI (``qgis_process``, scripts), each
job stops the worker it started (:func:`release`): an embedded Python does not reliably run ``atexit`` handlers,
so nothing else would. ``atexit`` still calls :func:`stop_all` as a last resort.
"""
from __future__ import annotations

import atexit
import threading
from dataclasses import dataclass

from .errors import FactSegError
from .mistakes import model_path_problem, worker_start_problem
from .settings import plugin_root
from .worker_import import LocalWorker, WorkerError, start_local_worker

READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class LocalWorkerSpec:
    """How to start a worker on this machine."""

    python: str
    model: str
    device: str = "auto"
    batch_size: int = 0


_lock = threading.Lock()
_workers: dict[LocalWorkerSpec, LocalWorker] = {}
_keep_alive = False


def set_keep_alive(keep: bool) -> None:
    """Keep local workers running between jobs (the plugin's GUI turns this on and stops them at unload)."""
    global _keep_alive
    _keep_alive = bool(keep)


def running_endpoints() -> list[str]:
    """Endpoints of the local workers currently kept."""
    with _lock:
        return [w.endpoint for w in _workers.values()]


def release(spec: LocalWorkerSpec) -> None:
    """A job is done with the worker for ``spec``: stop it unless workers are kept alive."""
    if _keep_alive:
        return
    with _lock:
        running = _workers.pop(spec, None)
    if running is not None:
        running.stop()


def local_endpoint(spec: LocalWorkerSpec) -> str:
    """Endpoint of a running local worker for ``spec``, starting one if needed (may take a while)."""
    problem = model_path_problem(spec.model)
    if problem:
        raise FactSegError(problem)
    if not spec.python:
        raise FactSegError("No worker Python is set: choose a Python interpreter that has torch installed.")
    with _lock:
        running = _workers.get(spec)
        if running is not None and _alive(running):
            return running.endpoint
        backend = "onnx" if spec.model.lower().endswith(".onnx") else "torch"
        try:
            started = start_local_worker(
                spec.python, spec.model, device=spec.device, backend=backend,
                batch_size=spec.batch_size or None, pythonpath=str(plugin_root()), ready_timeout_s=READY_TIMEOUT_S)
        except (WorkerError, OSError, ValueError) as exc:
            raise FactSegError(worker_start_problem(spec.python, spec.model, str(exc))) from exc
        _workers[spec] = started
        return started.endpoint


def _alive(worker: LocalWorker) -> bool:
    process = getattr(worker, "process", None)
    return process is None or process.poll() is None


def stop_all() -> None:
    """Stop every local worker this QGIS session started."""
    with _lock:
        workers = list(_workers.values())
        _workers.clear()
    for running in workers:
        try:
            running.stop()
        except Exception:  # noqa: BLE001 (stopping is best effort at shutdown)
            pass


atexit.register(stop_all)
