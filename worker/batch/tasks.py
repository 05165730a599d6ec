"""What runs inside a Dask worker: the model plugin (loaded once per worker process) and the chunk task.

A task gets only names and numbers (raster path, bands, chunk windows); it reads its own source window from
the raster, so no pixels pass through the client or the scheduler, and returns the chunk's uint8 classes (and
float32 confidence when asked). Everything the ZeroMQ path does around ``predict_chunk`` is done the same way
here (nodata-only chunks skipped as 255, an all-valid mask dropped), so the class band is the same.
"""
from __future__ import annotations

import collections
import ctypes
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed import WorkerPlugin, get_worker

from factseg_core.quantize import file_sha256  # the model's identity in plugin names and output records

from ..client import PlannedChunk
from ..contract import NODATA_CLASS
from ..engine import Engine
from ..io.raster_source import InputError, RasterSource

#: Rasters kept open per worker thread (GDAL datasets are not shared between threads).
OPEN_RASTERS = 4
_local = threading.local()
_runner_lock = threading.Lock()
_loaded: dict[tuple[str, str, str, str], Any] = {}  # one model per worker process, kept across runs


def plugin_name(model_path: str, sha256: str) -> str:
    """The plugin's name: the model's path and hash, so a run with another model gets its own plugin."""
    return f"factseg-model-{sha256[:16]}-{hashlib.sha1(str(model_path).encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class SourceSpec:
    """Which raster a task reads and how: path (any GDAL path), RGB bands, and the size the client planned."""

    path: str
    bands: tuple[int, int, int]
    size: tuple[int, int]


@dataclass(frozen=True)
class ChunkOptions:
    patch: int
    stride: int
    batch_size: int
    tta: bool
    confidence: bool


@dataclass
class ChunkResult:
    index: int
    classes: np.ndarray
    confidence: np.ndarray | None
    worker: str
    seconds: float
    skipped: bool = False


class ModelPlugin(WorkerPlugin):
    """Loads the model once in each Dask worker (and in workers that join later); tasks find it by name.

    ``gpus`` (local clusters only) pins worker ``i`` to GPU ``gpus[i % len(gpus)]`` through
    ``CUDA_VISIBLE_DEVICES`` before CUDA starts in that process; on an existing cluster each worker's own
    environment decides (``dask cuda worker``, or ``CUDA_VISIBLE_DEVICES`` per ``dask worker``).
    """

    def __init__(self, model_path: str, sha256: str, backend: str = "torch", device: str = "auto",
                 threads: int | None = None, gpus: tuple[str, ...] = ()) -> None:
        self.model_path, self.sha256, self.backend, self.device = str(model_path), sha256, backend, device
        self.threads, self.gpus = threads, tuple(gpus)
        self.name = plugin_name(self.model_path, sha256)
        self.engine: Engine | None = None
        self.description: dict[str, Any] = {}

    def setup(self, worker: Any) -> None:
        if self.gpus and self.device != "cpu":
            self._pin_gpu(worker)
        _undo_nanny_malloc_trim()
        self.use_threads()
        self.engine = _load_engine(self.model_path, self.sha256, self.backend, self.device, worker.address)
        self.description = {**self.engine.describe(), "worker": worker.address}

    def use_threads(self) -> None:
        """Torch CPU threads for the calling thread: OpenMP's count is per thread, and tasks run in Dask's own."""
        if self.threads:
            import torch

            if torch.get_num_threads() != self.threads:
                torch.set_num_threads(int(self.threads))

    def _pin_gpu(self, worker: Any) -> None:
        import torch

        try:
            slot = int(worker.name)
        except (TypeError, ValueError):
            slot = 0
        gpu = self.gpus[slot % len(self.gpus)]
        if torch.cuda.is_initialized() and os.environ.get("CUDA_VISIBLE_DEVICES") != gpu:
            raise RuntimeError(f"worker {worker.address}: CUDA already started, cannot pin it to GPU {gpu}")
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _undo_nanny_malloc_trim() -> None:
    """Give torch its heap back under Dask's nanny (Linux, glibc).

    The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins glibc's mmap threshold at
    128 KiB: every large tensor is then mmapped, page-faulted and unmapped, and inference ran 2-3× slower here
    (bench/batch.py). Fixed thresholds as large as glibc allows (trim 256 MiB, mmap 32 MiB) restore the speed
    of a plain process.
    """
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl): nothing to undo
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_trim_threshold, 256 << 20)
    libc.mallopt(m_mmap_threshold, 32 << 20)


def _load_engine(model_path: str, sha256: str, backend: str, device: str, where: str) -> Engine:
    key = (model_path, sha256, backend, device)
    with _runner_lock:
        if key not in _loaded:
            found = file_sha256(model_path)
            if found != sha256:
                raise ValueError(f"the model {model_path} on worker {where} has SHA-256 {found[:12]}…, the client's "
                                 f"has {sha256[:12]}…; every worker must see the same model file")
            _loaded.clear()  # one model per process: a new model replaces the old one
            _loaded[key] = Engine(model_path, backend=backend, device=device)
        return _loaded[key]


def _plugin(name: str) -> ModelPlugin:
    worker = get_worker()
    plugin = worker.plugins.get(name)
    if plugin is None or getattr(plugin, "engine", None) is None:
        raise RuntimeError(f"the FactSeg model plugin {name} is not loaded on worker {worker.address}; see its log")
    return plugin


def describe_model(name: str) -> dict[str, Any]:
    """The loaded model's class table and defaults, as seen by the worker that runs this task."""
    return dict(_plugin(name).description)


def _open_source(spec: SourceSpec) -> RasterSource:
    """A RasterSource of ``spec`` for this thread (a few kept open: chunks of one raster follow each other)."""
    cache = getattr(_local, "sources", None)
    if cache is None:
        cache = _local.sources = collections.OrderedDict()
    key = (spec.path, spec.bands)
    source = cache.get(key)
    if source is None:
        source = RasterSource(spec.path, None, spec.bands)
        if (source.height, source.width) != tuple(spec.size):
            raise InputError(f"{spec.path} is {source.height}×{source.width} px on worker {get_worker().address} "
                             f"but {spec.size[0]}×{spec.size[1]} for the client; every worker must see the same file")
        cache[key] = source
        while len(cache) > OPEN_RASTERS:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return source


def segment_chunk(name: str, spec: SourceSpec, chunk: PlannedChunk, options: ChunkOptions) -> ChunkResult:
    """Read the chunk's source window, predict its out window; the Dask task of one chunk."""
    started = time.perf_counter()
    plugin = _plugin(name)
    plugin.use_threads()
    address = get_worker().address
    pixels, valid = _open_source(spec).read(*chunk.src)
    oy0, ox0, oy1, ox1 = chunk.out
    sy0, sx0 = chunk.src[:2]
    if valid is not None:
        if not valid[oy0 - sy0 : oy1 - sy0, ox0 - sx0 : ox1 - sx0].any():  # nothing to classify (as the client does)
            shape = (oy1 - oy0, ox1 - ox0)
            conf = np.zeros(shape, np.float32) if options.confidence else None
            return ChunkResult(chunk.index, np.full(shape, NODATA_CLASS, np.uint8), conf, address,
                               time.perf_counter() - started, skipped=True)
        if valid.all():
            valid = None
    classes, conf = plugin.engine.predict_chunk(pixels, valid, spec.size, chunk.src, chunk.out, options.patch,
                                                options.stride, options.tta, options.confidence,
                                                batch_size=options.batch_size)
    return ChunkResult(chunk.index, classes, conf if options.confidence else None, address,
                       time.perf_counter() - started)
