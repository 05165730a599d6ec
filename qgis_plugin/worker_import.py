"""The plugin's one door to the worker's QGIS-side code: ``worker.client`` (protocol, client, local workers) and
``worker.io`` (the segmentation pipeline, which writes the outputs, polygons and statistics; output-path checks;
the training export), and the shared contract through ``worker.contract``. Nothing else of ``worker`` is imported
inside QGIS.

Where the code lies (no ``sys.path`` changes either way):
- installed from ``factseg.zip``, ``worker/`` is vendored *inside* the plugin package, so it is imported as
  ``factseg.worker.client`` — a relative import that no other ``worker`` package on QGIS's path can shadow or be
  shadowed by. The zip also carries ``worker/server`` and ``factseg_core`` for a local worker process, which
  imports them with ``PYTHONPATH=<plugin folder>``; QGIS's own Python never imports those;
- in a repository checkout, ``worker/`` is the top-level package beside ``qgis_plugin/``.
Every plugin module imports these names from here, so exception classes are the same objects everywhere.
"""
from __future__ import annotations

import importlib
from types import ModuleType


def _worker_module(name: str) -> ModuleType:
    """``worker.<name>``: the copy vendored in the plugin package if there is one, else the top-level package."""
    try:
        return importlib.import_module(f".worker.{name}", __package__)
    except ModuleNotFoundError as exc:
        if exc.name not in (f"{__package__}.worker", f"{__package__}.worker.{name}"):
            raise  # a real missing dependency (pyzmq, GDAL): let classFactory explain it
    return importlib.import_module(f"worker.{name}")


client = _worker_module("client")
contract = _worker_module("contract")
keys = _worker_module("client.keys")  # the one key-file loader  # the shared contract: defaults, limits, training-data layout, class table
protocol = _worker_module("client.protocol")
outputs = _worker_module("io.outputs")
pipeline = _worker_module("io.pipeline")
training_export = _worker_module("io.training_export")
training_client = _worker_module("client.training_client")

WorkerClient = client.WorkerClient
LocalWorker = client.LocalWorker
start_local_worker = client.start_local_worker
WorkerLost = client.WorkerLost
WorkerError = protocol.WorkerError
RemoteError = protocol.RemoteError
WorkerUnavailable = protocol.WorkerUnavailable
SegmentationCancelled = protocol.SegmentationCancelled
SegmentationRun = pipeline.SegmentationRun
run_segmentation = pipeline.run_segmentation
BadClassTable = pipeline.BadClassTable
CancelledBeforeCommit = pipeline.CancelledBeforeCommit
OutputPathError = outputs.OutputPathError
check_output_paths = outputs.check_output_paths
RemoteTraining = training_client.RemoteTraining
TrainingCancelled = training_client.TrainingCancelled
TrainingProgress = training_client.TrainingProgress
