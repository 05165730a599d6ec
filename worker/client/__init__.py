"""The QGIS-side room of the worker: wire protocol, client and local-worker launcher (numpy + pyzmq, no torch, no GDAL)."""
from .client import LocalWorker, PlannedChunk, WorkerClient, default_local_endpoint, start_local_worker

__all__ = ["LocalWorker", "PlannedChunk", "WorkerClient", "default_local_endpoint", "start_local_worker"]
