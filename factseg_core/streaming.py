"""Compatibility names for code written before the engine split; new code imports the modules below.

The engine now lives in :mod:`factseg_core.engine` (runner protocol, batches, accumulation),
:mod:`factseg_core.chunks` (one independent chunk), :mod:`factseg_core.sweep` (a whole raster in bounded
memory) and the grid in :mod:`factseg_core.windows`; all are exported from :mod:`factseg_core` too.
"""
from __future__ import annotations

from .chunks import chunk_probabilities, predict_chunk
from .engine import NODATA_FILL, Cancelled, effective_batch_size
from .sweep import stream_predict
from .windows import Chunk, plan_chunks, plan_size, source_window, windows_touching

__all__ = [
    "NODATA_FILL",
    "Cancelled",
    "Chunk",
    "chunk_probabilities",
    "effective_batch_size",
    "plan_chunks",
    "plan_size",
    "predict_chunk",
    "source_window",
    "stream_predict",
    "windows_touching",
]
