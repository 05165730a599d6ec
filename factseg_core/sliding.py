"""Array-level sliding-window inference: the exact definition every faster path is checked against.

Windows from :func:`factseg_core.windows.window_grid` are normalised, zero-padded at the bottom/right to a
multiple of 32, run through the model, cropped back, and their class probabilities averaged where they
overlap, as the reference evaluation does (``SegmSlidingWinInference`` with ``size_divisor=32``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import MEAN, PATCH_SIZE, SIZE_DIVISOR, STD, STRIDE
from .windows import Window, padded_size, window_grid


def normalize_batch(pixels: torch.Tensor) -> torch.Tensor:
    """N×H×W×3 uint8 (or float 0..255) RGB → N×3×H×W float32 normalised with MEAN/STD."""
    x = pixels.permute(0, 3, 1, 2).float()
    mean = torch.tensor(MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def pad_to_divisor(x: torch.Tensor, divisor: int = SIZE_DIVISOR) -> torch.Tensor:
    """Zero-pad N×C×H×W at the bottom and right so H and W are multiples of ``divisor``."""
    h, w = x.shape[-2:]
    ph, pw = padded_size(h, divisor) - h, padded_size(w, divisor) - w
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


@torch.inference_mode()
def predict_windows(model: nn.Module, image_hwc: np.ndarray, windows: Sequence[Window], device: torch.device) -> torch.Tensor:
    """Class probabilities (N×C×h×w, float32, on CPU) of equally sized windows cut from ``image_hwc``."""
    crops = np.stack([image_hwc[w.y0 : w.y1, w.x0 : w.x1] for w in windows])
    x = pad_to_divisor(normalize_batch(torch.from_numpy(crops).to(device)))
    probs = model(x)
    h, w = windows[0].height, windows[0].width
    return probs[:, :, :h, :w].float().cpu()


def sliding_predict(
    model: nn.Module,
    image_hwc: np.ndarray,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = 1,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Averaged class probabilities (C×H×W float32) of an H×W×3 uint8 RGB image.

    ``model`` maps a normalised N×3×h×w batch to N×C×h×w probabilities (a FactSeg in eval mode does).
    Memory grows with C×H×W: for large rasters use the streaming engine, which gives the same result.
    """
    if image_hwc.ndim != 3 or image_hwc.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 RGB image, got shape {image_hwc.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    height, width = image_hwc.shape[:2]
    windows = window_grid(height, width, patch, stride)
    image = np.ascontiguousarray(image_hwc, dtype=np.uint8)
    total: torch.Tensor | None = None
    count = torch.zeros(height, width, dtype=torch.float32)
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        probs = predict_windows(model, image, batch, device)
        if total is None:
            total = torch.zeros(probs.shape[1], height, width, dtype=torch.float32)
        for win, prob in zip(batch, probs):
            total[:, win.y0 : win.y1, win.x0 : win.x1] += prob
            count[win.y0 : win.y1, win.x0 : win.x1] += 1
    assert total is not None
    return (total / count).numpy()
