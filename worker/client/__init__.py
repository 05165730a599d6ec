"""The QGIS-side room of the worker: wire protocol, client and local-worker launcher (numpy + pyzmq, no torch, no GDAL)."""
from .client import WorkerClient
from .local import LocalWorker, default_local_endpoint, start_local_worker
from .protocol import PlannedChunk
from .pulse import WorkerLost

__all__ = ["LocalWorker", "PlannedChunk", "WorkerClient", "WorkerLost", "default_local_endpoint", "start_local_worker"]
