"""FactSeg network, losses, checkpoints and sliding-window inference (torch + numpy only)."""
from .checkpoint import CheckpointError, load_model, save_checkpoint
from .classes import ISAID_CLASSES, ClassInfo
from .config import CHUNK_SIZE, MEAN, NODATA_CLASS, PATCH_SIZE, STD, STRIDE
from .fusion import cp_fusion
from .losses import joint_loss
from .model import FactSeg, FactSegConfig
from .sliding import sliding_predict
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
    "CheckpointError",
    "Chunk",
    "ClassInfo",
    "FactSeg",
    "FactSegConfig",
    "ISAID_CLASSES",
    "MEAN",
    "NODATA_CLASS",
    "PATCH_SIZE",
    "STD",
    "STRIDE",
    "Window",
    "coverage",
    "cp_fusion",
    "joint_loss",
    "load_model",
    "padded_size",
    "plan_chunks",
    "plan_size",
    "save_checkpoint",
    "sliding_predict",
    "source_window",
    "window_grid",
    "window_starts",
    "windows_touching",
]
