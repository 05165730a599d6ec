"""The window engine: batches of grid windows through a runner, their probabilities added into accumulators.

Definition (the same as :func:`factseg_core.sliding.sliding_predict`): windows of the global grid
(:mod:`factseg_core.windows` on the *whole* image) are normalised, zero-padded to a multiple of 32, run,
and their probabilities averaged where they overlap; the class is the argmax. The engine adds windows to
float32 accumulators in the grid's row-major order, exactly as the reference does, and divides by the
same integer counts (:func:`factseg_core.windows.coverage`), so its probabilities equal the reference's up
to the model's own run-to-run rounding (batch composition, memory layout): 1e-5 in the tests.

Two entry points drive it: :func:`factseg_core.chunks.predict_chunk` (one independent rectangle, what the
worker serves) and :func:`factseg_core.sweep.stream_predict` (a whole raster top to bottom in bounded memory).

Nodata: a pixel marked invalid comes out as class :data:`~factseg_core.config.NODATA_CLASS` with confidence
0. Windows whose pixels are all invalid are skipped (no compute). Inside a window that is partly valid,
invalid pixels are fed as :data:`NODATA_FILL`, the uint8 colour nearest the normalisation mean, i.e. ≈0
after normalisation, the same value the zero padding of border windows has; the result on valid pixels is
then exactly ``sliding_predict`` of the image with invalid pixels painted ``NODATA_FILL``.

Optional flip TTA (``tta=True``, 3× compute): each window's probabilities are the mean over the window,
its left-right and its up-down mirror (flipped before padding, un-flipped after cropping).

The engine computes on the runner's :attr:`WindowRunner.torch_device`. For a torch runner on a GPU the
accumulators live on the GPU: uint8 windows go up through double-buffered pinned host memory with
asynchronous copies, the network and the accumulation are queued asynchronously, so the host cuts and
stages the next batch while the GPU computes, and only uint8 classes (and the optional confidence) come back.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from .classes import ClassInfo
from .config import MEAN, NODATA_CLASS
from .sliding import normalize_batch, pad_to_divisor
from .windows import Window

#: Colour fed for nodata pixels inside a partly valid window: round(MEAN), ≈0 after normalisation.
NODATA_FILL: tuple[int, int, int] = tuple(int(round(m)) for m in MEAN)  # type: ignore[assignment]
#: Rows finalised at a time, bounding the temporary probability tensor to C × this × width floats.
_FINISH_ROWS = 64

#: ``crop(window)`` → the h×w×3 uint8 input pixels of a window (image coordinates).
Crop = Callable[[Window], np.ndarray]
#: An accumulator (C×h×w float32) and the image pixel (y, x) its element [:, 0, 0] stands for.
Target = tuple[torch.Tensor, tuple[int, int]]


class Cancelled(Exception):
    """Raised inside the engine when the caller's ``cancel()`` returned True (checked between batches)."""


class WindowRunner(Protocol):
    """What the engine needs from a backend; :class:`~factseg_core.backends.TorchRunner` and
    :class:`~factseg_core.backends.OnnxRunner` satisfy it, and the worker describes a model from it.
    """

    name: str  #: backend, e.g. "torch" or "onnx"
    device: str  #: "cpu" or "cuda": where the network runs
    torch_device: torch.device  #: where :meth:`forward_device` takes and leaves tensors (the engine's device)
    num_classes: int
    classes: Sequence[ClassInfo] | None  #: class table (None for a bare probability module)
    model_info: dict[str, Any]  #: model, backbone, default patch and stride
    max_batch: int | None  #: most windows per network call (None: no limit)

    def forward_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised N×3×h×w float32 on :attr:`torch_device` → N×C×h×w probabilities, left there."""
        ...

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised N×3×h×w float32 (h, w multiples of 32) → N×C×h×w float32 probabilities on the CPU."""
        ...


def effective_batch_size(runner: WindowRunner, batch_size: int) -> int:
    """Windows per network call the engine will use: ``batch_size`` capped by the runner's ``max_batch``.

    CPU runners default to one window per call (see :func:`factseg_core.backends._max_batch`); progress
    estimates that count batches should use this figure.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    return min(batch_size, runner.max_batch or batch_size)


class WindowEngine:
    """Runs batches of equally sized windows and adds their probabilities into accumulators."""

    def __init__(self, runner: WindowRunner, batch_size: int, tta: bool, cancel: Callable[[], bool] | None) -> None:
        self.runner = runner
        # A runner that computes at most `max_batch` windows per call (CPU: 1) gains nothing from bigger
        # host batches, which would only hold more probability maps.
        self.batch_size = effective_batch_size(runner, batch_size)
        self.tta = tta
        self.cancel = cancel
        self.device = runner.torch_device
        self.num_classes = int(runner.num_classes)
        if not 1 <= self.num_classes < NODATA_CLASS:
            raise ValueError(f"the model has {self.num_classes} classes; class ids must fit below {NODATA_CLASS} (nodata)")
        self.uploader = Uploader(self.device)

    def zeros(self, height: int, width: int) -> torch.Tensor:
        """A C×height×width float32 accumulator on the engine's device."""
        return torch.zeros(self.num_classes, height, width, dtype=torch.float32, device=self.device)

    def check_cancel(self) -> None:
        """Raise :class:`Cancelled` if the caller asked to stop."""
        if self.cancel is not None and self.cancel():
            raise Cancelled("inference cancelled")

    def run(self, windows: Sequence[Window], crop: Crop, acc: torch.Tensor, acc_origin: tuple[int, int]) -> None:
        """Add the probabilities of ``windows`` (image coordinates, same size, in grid order) into ``acc``.

        ``acc`` is C×h×w whose pixel [0, 0] is image pixel ``acc_origin``; each window adds only the part
        that falls inside ``acc``.
        """
        for start in range(0, len(windows), self.batch_size):
            self.add_batch(windows[start : start + self.batch_size], crop, [(acc, acc_origin)])

    def add_batch(self, batch: Sequence[Window], crop: Crop, targets: Sequence[Target]) -> None:
        """Compute one batch and add each window into every target it overlaps (cancel checked first)."""
        self.check_cancel()
        probs = self.probabilities([crop(w) for w in batch])
        for win, prob in zip(batch, probs):
            for acc, (oy, ox) in targets:
                ah, aw = acc.shape[1:]
                y0, y1 = max(win.y0, oy), min(win.y1, oy + ah)
                x0, x1 = max(win.x0, ox), min(win.x1, ox + aw)
                if y0 < y1 and x0 < x1:
                    acc[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox] += prob[:, y0 - win.y0 : y1 - win.y0, x0 - win.x0 : x1 - win.x0]

    def probabilities(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        """N×C×h×w probabilities (on the engine's device) of uint8 h×w×3 crops, TTA-averaged if asked."""
        pixels = self.uploader.upload(crops)  # N×h×w×3 uint8
        h, w = pixels.shape[1:3]
        flips = [(), (2,), (1,)] if self.tta else [()]  # identity, left-right, up-down (NHWC dims)
        total = None
        for dims in flips:
            x = pixels.flip(dims) if dims else pixels
            probs = self._forward(pad_to_divisor(normalize_batch(x)))[:, :, :h, :w]
            if dims:
                probs = probs.flip(tuple(d + 1 for d in dims))  # NHWC dim → NCHW dim
            total = probs if total is None else total + probs
        assert total is not None
        return total / len(flips) if self.tta else total

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.runner.forward_device(x)
        if probs.ndim != 4 or probs.shape[0] != x.shape[0] or probs.shape[1] != self.num_classes:
            raise RuntimeError(
                f"runner {self.runner.name} returned shape {tuple(probs.shape)} for input "
                f"{tuple(x.shape)}; expected N×{self.num_classes}×h×w"
            )
        return probs

    def finish(
        self,
        acc: torch.Tensor,
        rows: int,
        count_y: np.ndarray,
        count_x: np.ndarray,
        valid: np.ndarray | None,
        confidence: bool,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Classes (uint8, nodata where invalid) and optional max probability of the first ``rows`` rows of ``acc``.

        Probabilities are ``acc / (count_y ⊗ count_x)``, the reference's total / count, computed in blocks
        of rows so the temporary stays small.
        """
        width = acc.shape[2]
        classes = np.empty((rows, width), dtype=np.uint8)
        conf = np.empty((rows, width), dtype=np.float32) if confidence else None
        cx = torch.from_numpy(count_x).to(self.device)
        for r0 in range(0, rows, _FINISH_ROWS):
            r1 = min(r0 + _FINISH_ROWS, rows)
            cy = torch.from_numpy(count_y[r0:r1]).to(self.device)
            best, ids = (acc[:, r0:r1] / (cy[:, None] * cx[None, :])).max(dim=0)
            classes[r0:r1] = ids.to(torch.uint8).cpu().numpy()
            if conf is not None:
                conf[r0:r1] = best.cpu().numpy()
        if valid is not None:
            mark_nodata(classes, conf, ~valid)
        return classes, conf


class Uploader:
    """Moves uint8 N×h×w×3 batches to the compute device; on CUDA through two pinned staging buffers.

    A slot is rewritten only after the event recorded behind its previous asynchronous copy has fired,
    so the host never overwrites memory the DMA engine is still reading.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self._slots: list[torch.Tensor | None] = [None, None]
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._next = 0

    def upload(self, crops: Sequence[np.ndarray]) -> torch.Tensor:
        if not self.cuda:
            return torch.from_numpy(np.stack(crops))
        slot, self._next = self._next, 1 - self._next
        shape = (len(crops), *crops[0].shape)
        event = self._events[slot]
        if event is not None:
            event.synchronize()
        buf = self._slots[slot]
        if buf is None or tuple(buf.shape) != shape:
            buf = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
            self._slots[slot] = buf
        np.stack(crops, out=buf.numpy())
        on_device = buf.to(self.device, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self._events[slot] = event
        return on_device


def mark_nodata(classes: np.ndarray, conf: np.ndarray | None, invalid: np.ndarray) -> None:
    """Write the nodata class (and confidence 0) where ``invalid``, in place."""
    classes[invalid] = NODATA_CLASS
    if conf is not None:
        conf[invalid] = 0.0


def fill_nodata(pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Pixels with invalid ones painted :data:`NODATA_FILL` (a copy only when something is invalid)."""
    if valid is None or valid.all():
        return pixels
    filled = pixels.copy()
    filled[~valid] = NODATA_FILL
    return filled


def check_pixels(pixels: np.ndarray, valid: np.ndarray | None, height: int, width: int, what: str) -> None:
    """Refuse input that is not ``height``×``width``×3 uint8 with an optional ``height``×``width`` bool mask."""
    if not isinstance(pixels, np.ndarray) or pixels.shape != (height, width, 3) or pixels.dtype != np.uint8:
        got = (getattr(pixels, "shape", None), getattr(pixels, "dtype", type(pixels).__name__))
        raise ValueError(f"{what}: expected {height}×{width}×3 uint8 RGB pixels, got shape/dtype {got}")
    if valid is not None and (not isinstance(valid, np.ndarray) or valid.shape != (height, width) or valid.dtype != bool):
        got = (getattr(valid, "shape", None), getattr(valid, "dtype", type(valid).__name__))
        raise ValueError(f"{what}: expected a {height}×{width} bool validity mask, got shape/dtype {got}")


__all__ = [
    "NODATA_FILL",
    "Cancelled",
    "WindowEngine",
    "WindowRunner",
    "effective_batch_size",
]
