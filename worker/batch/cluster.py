"""The Dask cluster a batch runs on: an existing one (``--scheduler ADDRESS``) or a LocalCluster on this machine.

Local workers are separate processes with one task thread each (one model per process, one GPU per process
when there are GPUs); CPU workers share the cores between them (``torch`` threads = cores / workers).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from distributed import Client, LocalCluster


class ClusterError(RuntimeError):
    """The cluster cannot be reached or has no workers; the message says what to check."""


@dataclass(frozen=True)
class WorkerSettings:
    """How the model plugin sets up each worker: torch threads (None = leave as is) and GPUs to pin (local)."""

    threads: int | None
    gpus: tuple[str, ...]


def local_gpus() -> tuple[str, ...]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every GPU torch sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1")
    import torch

    return tuple(str(i) for i in range(torch.cuda.device_count())) if torch.cuda.is_available() else ()


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def dashboard_link(client: Client, local: bool) -> str | None:
    """The scheduler's dashboard address, when it serves one (it needs bokeh installed beside distributed)."""
    if local and importlib.util.find_spec("bokeh") is None:
        return None  # the HTTP server runs (health, metrics) but without bokeh it has no dashboard pages
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # a remote scheduler that does not say: no link rather than a failed run
        return None


@contextlib.contextmanager
def open_client(scheduler: str | None, local_workers: int, device: str, threads: int | None,
                wait_s: float = 600.0) -> Iterator[tuple[Client, WorkerSettings]]:
    """A connected client (and the local cluster behind it, if any), closed on exit."""
    if scheduler:
        try:
            client = Client(scheduler, timeout=30)
        except OSError as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        settings = WorkerSettings(threads, ())
        cluster = None
    else:
        if local_workers < 1:
            raise ClusterError(f"--local-workers must be at least 1, got {local_workers}")
        gpus = local_gpus() if device != "cpu" else ()
        if device == "cuda" and not gpus:
            raise ClusterError("--device cuda but no CUDA GPU is visible to this process")
        if not gpus:
            threads = threads or max(1, cpu_count() // local_workers)
        settings = WorkerSettings(threads, gpus)
        cluster = LocalCluster(n_workers=local_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               silence_logs=logging.ERROR, dashboard_address="127.0.0.1:8787")
        client = Client(cluster)
    try:
        try:
            client.wait_for_workers(1, timeout=wait_s)
        except (TimeoutError, OSError):
            raise ClusterError(f"no Dask worker joined {scheduler or 'the local cluster'} within {wait_s:g} s") from None
        yield client, settings
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
