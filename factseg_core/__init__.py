"""FactSeg network, losses, checkpoints and sliding-window inference (torch + numpy only).

Inference, top-down: :mod:`.chunks` (one independent chunk, what the worker serves) and :mod:`.sweep` (a
whole raster in bounded memory) drive :mod:`.engine` (batches through a :class:`WindowRunner`, summed
probabilities) over the grid of :mod:`.windows`; :mod:`.runners` makes the runners (:mod:`.backends` for torch/onnx, :mod:`.precision` for bf16/fp16/int8); :mod:`.sliding` is
the array-level reference they are checked against. Defaults live in :mod:`.config`.
"""
from .checkpoint import CheckpointError, load_model, save_checkpoint
from .chunks import chunk_probabilities, predict_chunk
from .classes import ISAID_CLASSES, ClassInfo
from .config import CHUNK_SIZE, MEAN, NODATA_CLASS, PATCH_SIZE, STD, STRIDE
from .engine import NODATA_FILL, Cancelled, WindowRunner, effective_batch_size
from .fusion import cp_fusion
from .losses import joint_loss
from .model import FactSeg, FactSegConfig
from .runners import make_runner
from .sliding import sliding_predict
from .sweep import stream_predict
from .windows import (
    Chunk,
    Window,
    coverage,
    padded_size,
    plan_chunks,
    plan_size,
    source_window,
    window_grid,
    window_starts,
    windows_touching,
)

__all__ = [
    "CHUNK_SIZE",
    "Cancelled",
    "CheckpointError",
    "Chunk",
    "ClassInfo",
    "FactSeg",
    "FactSegConfig",
    "ISAID_CLASSES",
    "MEAN",
    "NODATA_CLASS",
    "NODATA_FILL",
    "PATCH_SIZE",
    "STD",
    "STRIDE",
    "Window",
    "WindowRunner",
    "chunk_probabilities",
    "coverage",
    "cp_fusion",
    "effective_batch_size",
    "joint_loss",
    "load_model",
    "make_runner",
    "padded_size",
    "plan_chunks",
    "plan_size",
    "predict_chunk",
    "save_checkpoint",
    "sliding_predict",
    "source_window",
    "stream_predict",
    "window_grid",
    "window_starts",
    "windows_touching",
]
