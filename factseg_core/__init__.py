"""FactSeg network, losses, checkpoints and sliding-window inference (torch + numpy only)."""
from .checkpoint import CheckpointError, load_model, save_checkpoint
from .classes import ISAID_CLASSES, ClassInfo
from .config import MEAN, PATCH_SIZE, STD, STRIDE
from .fusion import cp_fusion
from .losses import joint_loss
from .model import FactSeg, FactSegConfig
from .sliding import sliding_predict
from .windows import Window, window_grid

__all__ = [
    "CheckpointError",
    "ClassInfo",
    "FactSeg",
    "FactSegConfig",
    "ISAID_CLASSES",
    "MEAN",
    "PATCH_SIZE",
    "STD",
    "STRIDE",
    "Window",
    "cp_fusion",
    "joint_loss",
    "load_model",
    "save_checkpoint",
    "sliding_predict",
    "window_grid",
]
