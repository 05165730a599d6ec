"""Streaming sliding-window inference: the reference result for rasters of any size, in bounded memory.

Definition (the same as :func:`factseg_core.sliding.sliding_predict`): windows of the global grid
(:func:`factseg_core.windows.window_grid` on the *whole* image) are normalised, zero-padded to a multiple
of 32, run, and their probabilities averaged where they overlap; the class is the argmax. The engine adds
windows to float32 accumulators in the grid's row-major order, exactly as the reference does, and divides
by the same integer counts, so its probabilities equal the reference's up to the model's own run-to-run
rounding (batch composition, memory layout): 1e-5 in the tests.

Two entry points share that core:

* :func:`predict_chunk` computes one rectangle (``out``) from the input pixels of ``src`` (all windows that
  touch ``out``). Chunks are independent, so a stateless worker can serve them; :func:`plan_chunks` tiles an
  image into such chunks (each cut costs one duplicated row/column of windows).
* :func:`stream_predict` sweeps the image top to bottom, one row of windows at a time, holding only the
  accumulators of rows still open (``min(patch, H)`` rows × full width) and the input band they need: peak
  memory is independent of the image height and linear in its width, and no window is computed twice.

Nodata: a pixel marked invalid comes out as class 255 (:data:`NODATA_CLASS`) with confidence 0. Windows
whose pixels are all invalid are skipped (no compute). Inside a window that is partly valid, invalid pixels
are fed as :data:`NODATA_FILL`, the uint8 colour nearest the normalisation mean, i.e. ≈0 after
normalisation, the same value the zero padding of border windows has; the result on valid pixels is then
exactly ``sliding_predict`` of the image with invalid pixels painted ``NODATA_FILL``.

Fast mode: a larger stride (:data:`FAST_STRIDE` = 768 with the 896 patch) places fewer windows, e.g. 9
instead of 16 on a 2048² image and (20000−896)/768 vs /512 per axis on large rasters (≈ 2.2× fewer); pixels
are averaged over fewer overlapping windows, so results differ from the paper's protocol near window borders.
``bench/sliding.py`` measures the speed-up and the class agreement (see the README's performance section).

Optional flip TTA (``tta=True``, 3× compute): each window's probabilities are the mean over the window,
its left-right and its up-down mirror (flipped before padding, un-flipped after cropping).

On CUDA (a :class:`~factseg_core.backends.TorchRunner` on a GPU) the accumulators live on the GPU: uint8
windows go up through double-buffered pinned host memory with asynchronous copies, the network and the
accumulation are queued asynchronously, so the host cuts and stages the next batch while the GPU computes,
and only uint8 classes (and the optional confidence) come back. :func:`stream_predict` reads the next input
band in a helper thread while the current one is computed (on CPU too, where reading is I/O).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from .config import MEAN, NODATA_CLASS, PATCH_SIZE, STRIDE
from .sliding import normalize_batch, pad_to_divisor
from .windows import (
    Chunk,
    Window,
    check_inside,
    coverage,
    plan_chunks,
    source_window,
    touching_starts,
    window_starts,
    windows_touching,
)

#: Colour fed for nodata pixels inside a partly valid window: round(MEAN), ≈0 after normalisation.
NODATA_FILL: tuple[int, int, int] = tuple(int(round(m)) for m in MEAN)  # type: ignore[assignment]
#: Stride of the documented fast mode (fewer, less overlapping windows; not the paper's protocol).
FAST_STRIDE: int = 768
#: Rows finalised at a time, bounding the temporary probability tensor to C × this × width floats.
_FINISH_ROWS = 64

ReadRows = Callable[[int, int], tuple[np.ndarray, "np.ndarray | None"]]
WriteRows = Callable[[int, np.ndarray, "np.ndarray | None"], None]


class Cancelled(Exception):
    """Raised inside the engine when the caller's ``cancel()`` returned True (checked between batches)."""


# ------------------------------------------------------------------------------------------ the engine
class _Uploader:
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


def effective_batch_size(runner, batch_size: int) -> int:
    """Windows per network call the engine will use: ``batch_size`` capped by the runner's ``max_batch``.

    CPU runners default to one window per call (see :func:`factseg_core.backends._max_batch`); progress
    estimates that count batches should use this figure.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    return min(batch_size, getattr(runner, "max_batch", None) or batch_size)


class _WindowEngine:
    """Runs batches of equally sized windows and adds their probabilities into an accumulator."""

    def __init__(self, runner, batch_size: int, tta: bool, cancel: Callable[[], bool] | None) -> None:
        self.runner = runner
        # A runner that computes at most `max_batch` windows per call (CPU: 1) gains nothing from bigger
        # host batches, which would only hold more probability maps.
        self.batch_size = effective_batch_size(runner, batch_size)
        self.tta = tta
        self.cancel = cancel
        forward_device = getattr(runner, "forward_device", None)
        self.direct = callable(forward_device) and isinstance(getattr(runner, "torch_device", None), torch.device)
        self.device = runner.torch_device if self.direct else torch.device("cpu")
        self.num_classes = int(runner.num_classes)
        if not 1 <= self.num_classes < NODATA_CLASS:
            raise ValueError(f"the model has {self.num_classes} classes; class ids must fit below {NODATA_CLASS} (nodata)")
        self.uploader = _Uploader(self.device)

    def zeros(self, height: int, width: int) -> torch.Tensor:
        return torch.zeros(self.num_classes, height, width, dtype=torch.float32, device=self.device)

    def _check_cancel(self) -> None:
        if self.cancel is not None and self.cancel():
            raise Cancelled("inference cancelled")

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.runner.forward_device(x) if self.direct else self.runner(x)
        if probs.ndim != 4 or probs.shape[0] != x.shape[0] or probs.shape[1] != self.num_classes:
            raise RuntimeError(
                f"runner {getattr(self.runner, 'name', '?')} returned shape {tuple(probs.shape)} for input "
                f"{tuple(x.shape)}; expected N×{self.num_classes}×h×w"
            )
        return probs

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

    def run(
        self,
        windows: Sequence[Window],
        crop: Callable[[Window], np.ndarray],
        acc: torch.Tensor,
        acc_origin: tuple[int, int],
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Add the probabilities of ``windows`` (image coordinates, same size, in grid order) into ``acc``.

        ``acc`` is C×h×w whose pixel [0, 0] is image pixel ``acc_origin``; each window adds only the part
        that falls inside ``acc``. ``progress(n)`` is told after each batch how many windows it held.
        """
        for start in range(0, len(windows), self.batch_size):
            batch = windows[start : start + self.batch_size]
            self.add_batch(batch, crop, [(acc, acc_origin)])
            if progress is not None:
                progress(len(batch))

    def add_batch(
        self,
        batch: Sequence[Window],
        crop: Callable[[Window], np.ndarray],
        targets: Sequence[tuple[torch.Tensor, tuple[int, int]]],
    ) -> None:
        """Compute one batch and add each window into every target (C×h×w tensor, image origin) it overlaps."""
        self._check_cancel()
        probs = self.probabilities([crop(w) for w in batch])
        for win, prob in zip(batch, probs):
            for acc, (oy, ox) in targets:
                ah, aw = acc.shape[1:]
                y0, y1 = max(win.y0, oy), min(win.y1, oy + ah)
                x0, x1 = max(win.x0, ox), min(win.x1, ox + aw)
                if y0 < y1 and x0 < x1:
                    acc[:, y0 - oy : y1 - oy, x0 - ox : x1 - ox] += prob[:, y0 - win.y0 : y1 - win.y0, x0 - win.x0 : x1 - win.x0]

    def finish(
        self,
        acc: torch.Tensor,
        rows: int,
        count_y: np.ndarray,
        count_x: np.ndarray,
        valid: np.ndarray | None,
        confidence: bool,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Classes (uint8, 255 where invalid) and optional max probability of the first ``rows`` rows of ``acc``.

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
            probs = acc[:, r0:r1] / (cy[:, None] * cx[None, :])
            best, ids = probs.max(dim=0)
            classes[r0:r1] = ids.to(torch.uint8).cpu().numpy()
            if conf is not None:
                conf[r0:r1] = best.cpu().numpy()
        if valid is not None:
            classes[~valid] = NODATA_CLASS
            if conf is not None:
                conf[~valid] = 0.0
        return classes, conf


def _fill_nodata(pixels: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """Pixels with invalid ones painted :data:`NODATA_FILL` (a copy only when something is invalid)."""
    if valid is None or valid.all():
        return pixels
    filled = pixels.copy()
    filled[~valid] = NODATA_FILL
    return filled


def _check_pixels(pixels: np.ndarray, valid: np.ndarray | None, height: int, width: int, what: str) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.shape != (height, width, 3) or pixels.dtype != np.uint8:
        got = (getattr(pixels, "shape", None), getattr(pixels, "dtype", type(pixels).__name__))
        raise ValueError(f"{what}: expected {height}×{width}×3 uint8 RGB pixels, got shape/dtype {got}")
    if valid is not None and (not isinstance(valid, np.ndarray) or valid.shape != (height, width) or valid.dtype != bool):
        got = (getattr(valid, "shape", None), getattr(valid, "dtype", type(valid).__name__))
        raise ValueError(f"{what}: expected a {height}×{width} bool validity mask, got shape/dtype {got}")


# ------------------------------------------------------------------------------------------ chunk API
@torch.inference_mode()
def chunk_probabilities(
    runner,
    pixels: np.ndarray,
    valid: np.ndarray | None,
    image_size: tuple[int, int],
    src: Window,
    out: Window,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = 4,
    tta: bool = False,
    cancel: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Averaged class probabilities (C×out.height×out.width float32, on CPU) of ``out``; see :func:`predict_chunk`.

    Pixels entirely in skipped (all-nodata) windows have undefined probabilities (0 here).
    """
    engine, acc, count_y, count_x, _ = _chunk_accumulate(
        runner, pixels, valid, image_size, src, out, patch, stride, batch_size, tta, cancel
    )
    return (acc / torch.from_numpy(np.outer(count_y, count_x)).to(engine.device)).cpu()


def _chunk_accumulate(runner, pixels, valid, image_size, src, out, patch, stride, batch_size, tta, cancel):
    height, width = image_size
    check_inside(out, height, width, "out")
    check_inside(src, height, width, "src")
    _check_pixels(pixels, valid, src.height, src.width, "predict_chunk")
    need = source_window(image_size, out, patch, stride)
    if not (src.y0 <= need.y0 and src.x0 <= need.x0 and need.y1 <= src.y1 and need.x1 <= src.x1):
        raise ValueError(f"src {src} does not hold all windows touching out {out}: it must contain {need}")
    engine = _WindowEngine(runner, batch_size, tta, cancel)
    ys, wh = (window_starts(height, patch, stride), min(patch, height))
    xs, ww = (window_starts(width, patch, stride), min(patch, width))
    image = _fill_nodata(pixels, valid)
    windows = []
    for y in touching_starts(ys, wh, out.y0, out.y1):
        for x in touching_starts(xs, ww, out.x0, out.x1):
            win = Window(y, x, y + wh, x + ww)
            if valid is None or valid[y - src.y0 : y + wh - src.y0, x - src.x0 : x + ww - src.x0].any():
                windows.append(win)

    def crop(win: Window) -> np.ndarray:
        return image[win.y0 - src.y0 : win.y1 - src.y0, win.x0 - src.x0 : win.x1 - src.x0]

    acc = engine.zeros(out.height, out.width)
    engine.run(windows, crop, acc, (out.y0, out.x0))
    count_y = coverage(height, patch, stride)[out.y0 : out.y1]
    count_x = coverage(width, patch, stride)[out.x0 : out.x1]
    out_valid = None if valid is None else valid[out.y0 - src.y0 : out.y1 - src.y0, out.x0 - src.x0 : out.x1 - src.x0]
    return engine, acc, count_y, count_x, out_valid


@torch.inference_mode()
def predict_chunk(
    runner,
    pixels: np.ndarray,
    valid: np.ndarray | None,
    image_size: tuple[int, int],
    src: Window,
    out: Window,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = 4,
    tta: bool = False,
    confidence: bool = False,
    cancel: Callable[[], bool] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Class ids (out.height×out.width uint8, 255 where nodata) and optional confidence of one chunk.

    ``pixels`` (src.height×src.width×3 uint8) and ``valid`` (same h×w bool, False = nodata, or None) hold
    the input of ``src``, which must contain every grid window touching ``out`` (:func:`source_window`).
    Stitching the chunks of :func:`plan_chunks` gives the argmax of ``sliding_predict`` on the whole image.
    ``cancel()`` is checked between batches and raises :class:`Cancelled`.
    """
    engine, acc, count_y, count_x, out_valid = _chunk_accumulate(
        runner, pixels, valid, image_size, src, out, patch, stride, batch_size, tta, cancel
    )
    return engine.finish(acc, out.height, count_y, count_x, out_valid, confidence)


class _RowSweep:
    """The accumulators of a top-to-bottom sweep, one row of windows at a time, in (patch − stride) rows.

    For a window row at y (rows [y, e), e = y + window height; the next row starts at n): rows [y, n) — the
    *head* — are final once the row is done, rows [n, e) are *carried* to the next row. The carry lives in
    one full-width buffer. The head lives only where windows are still open: as the row's windows advance
    left to right, head columns are handed over from the carry (contributions of earlier rows), the windows
    add to them, and columns no later window touches are finalised (argmax) and dropped. In the same
    hand-over the carry buffer is re-based from row y to row n column by column, so no second full-width
    buffer is needed.

    The last window row is shifted back to end at the border, so it may start only a few pixels below the
    one before: carrying between those two would need almost a full window height. They are therefore
    swept together as one *group* whose head is all its rows, their windows interleaved (a window of the
    last row runs as soon as every window of the row above that overlaps it has run), so nothing is carried.

    Every pixel receives the same float32 additions, in the same order, as in the reference.
    """

    def __init__(self, engine: _WindowEngine, height: int, width: int, patch: int, stride: int, confidence: bool):
        self.engine, self.width, self.confidence = engine, width, confidence
        self.ys, self.wh = (window_starts(height, patch, stride), min(patch, height))
        self.xs, self.ww = (window_starts(width, patch, stride), min(patch, width))
        n = len(self.ys)
        #: Groups of window-row indices swept together: singles, then the last two rows as a pair.
        self.groups: list[list[int]] = [[i] for i in range(n - 2)] + ([[n - 2, n - 1]] if n >= 2 else [[0]])
        self.spans = [(self.ys[g[0]], self.ys[g[-1]] + self.wh) for g in self.groups]
        carried = [a1 - b0 for (_, a1), (b0, _) in zip(self.spans, self.spans[1:])]
        self.carry = engine.zeros(max(carried, default=0), width)
        device = engine.device
        self.count_y = torch.from_numpy(coverage(height, patch, stride)).to(device)
        self.count_x = torch.from_numpy(coverage(width, patch, stride)).to(device)

    def group_windows(self, g: int) -> list[Window]:
        """The windows of group ``g`` in processing order (see the class docstring)."""
        rows = [[Window(self.ys[i], x, self.ys[i] + self.wh, x + self.ww) for x in self.xs] for i in self.groups[g]]
        if len(rows) == 1:
            return rows[0]
        upper, lower = rows
        order, k = [], 0
        for win in lower:
            while k < len(upper) and upper[k].x0 < win.x1:
                order.append(upper[k])
                k += 1
            order.append(win)
        return order + upper[k:]

    def run_group(self, g: int, windows: Sequence[Window], crop: Callable[[Window], np.ndarray],
                  tick: Callable[[int], None]) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the (non-skipped) ``windows`` of group ``g``, in order; return its finished rows (classes, conf)."""
        engine = self.engine
        self.y, end = self.spans[g]
        last = g + 1 == len(self.groups)
        self.next = nxt = end if last else self.spans[g + 1][0]
        self.k_in = self.spans[g - 1][1] - self.y if g > 0 else 0  # carried rows holding earlier contributions
        self.k_out = end - nxt  # rows to carry to the next group
        self.head = engine.zeros(nxt - self.y, 0)
        self.h0 = self.handed = 0  # head covers columns [h0, handed); columns < h0 are final
        device = engine.device
        self.classes = torch.empty((nxt - self.y, self.width), dtype=torch.uint8, device=device)
        self.conf = (torch.empty((nxt - self.y, self.width), dtype=torch.float32, device=device)
                     if self.confidence else None)
        carry_out = self.carry[:, : self.k_out]
        # Columns left of every window still to run are final: suffix minima of the windows' x0.
        open_from = [self.width] * (len(windows) + 1)
        for k in range(len(windows) - 1, -1, -1):
            open_from[k] = min(open_from[k + 1], windows[k].x0)
        reach = 0
        for start in range(0, len(windows), engine.batch_size):
            batch = windows[start : start + engine.batch_size]
            reach = max(reach, max(w.x1 for w in batch))
            self._advance(open_from[start], reach)
            engine.add_batch(batch, crop, [(self.head, (self.y, self.h0)), (carry_out, (nxt, 0))])
            tick(len(batch))
        self._advance(self.width, self.width)
        classes = self.classes.cpu().numpy()
        return classes, None if self.conf is None else self.conf.cpu().numpy()

    def _advance(self, final_to: int, hand_to: int) -> None:
        """Finalise head columns < ``final_to`` and hand over columns < ``hand_to`` (in slices of ≤ one window)."""
        while self.handed < final_to:
            self._hand_over(min(final_to, self.handed + self.ww))
            self._finalise(self.handed)
        self._finalise(final_to)
        self._hand_over(hand_to)

    def _hand_over(self, c1: int) -> None:
        c0 = self.handed
        if c1 <= c0:
            return
        rows = self.next - self.y
        new = self.engine.zeros(rows, c1 - c0)
        m = min(self.k_in, rows)
        new[:, :m] = self.carry[:, :m, c0:c1]
        # Re-base the carry of these columns from row y to row `next` (shift up by `rows`), in blocks of
        # ≤ `rows` rows so that no block overlaps its source; rows no earlier window covered start at 0.
        keep = max(0, min(self.k_out, self.k_in - rows))
        for r in range(0, keep, rows):
            n = min(rows, keep - r)
            self.carry[:, r : r + n, c0:c1] = self.carry[:, rows + r : rows + r + n, c0:c1]
        self.carry[:, keep : self.k_out, c0:c1] = 0
        self.head = torch.cat((self.head, new), dim=2)
        self.handed = c1

    def _finalise(self, c1: int) -> None:
        c0 = self.h0
        if c1 <= c0:
            return
        n = c1 - c0
        counts = self.count_y[self.y : self.next, None] * self.count_x[None, c0:c1]
        best, ids = (self.head[:, :, :n] / counts).max(dim=0)
        self.classes[:, c0:c1] = ids.to(torch.uint8)
        if self.conf is not None:
            self.conf[:, c0:c1] = best
        self.head = self.head[:, :, n:]
        self.h0 = c1


# --------------------------------------------------------------------------------------- streaming API
def _checked_read(read_rows: ReadRows, y0: int, y1: int, width: int) -> tuple[np.ndarray, np.ndarray | None]:
    result = read_rows(y0, y1)
    if not isinstance(result, tuple) or len(result) != 2:
        raise ValueError(f"read_rows({y0}, {y1}) must return (pixels, valid or None), got {type(result).__name__}")
    pixels, valid = result
    _check_pixels(pixels, valid, y1 - y0, width, f"read_rows({y0}, {y1})")
    return pixels, valid


@torch.inference_mode()
def stream_predict(
    runner,
    height: int,
    width: int,
    read_rows: ReadRows,
    write_rows: WriteRows,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = 4,
    tta: bool = False,
    confidence: bool = False,
    progress: Callable[[float], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    prefetch: bool = True,
) -> None:
    """Segment a ``height``×``width`` raster read in row bands, writing finished rows as they complete.

    ``read_rows(y0, y1)`` returns ``(pixels (y1−y0)×width×3 uint8, valid (y1−y0)×width bool or None)``; rows
    are requested once each, top to bottom. ``write_rows(y0, classes, confidence or None)`` receives
    consecutive row blocks covering the image exactly once, top to bottom. With ``prefetch`` the next band
    is read in a helper thread (one call at a time) while the current one is computed. ``progress`` gets
    the fraction of windows done (0..1); ``cancel()`` is checked between batches and raises :class:`Cancelled`.

    Holds ``C × (patch − stride) × width`` float32 accumulators (:class:`_RowSweep`), the open columns of
    the current rows and an input band of at most ``patch + stride`` rows: bounded in height, linear in width.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    engine = _WindowEngine(runner, batch_size, tta, cancel)
    sweep = _RowSweep(engine, height, width, patch, stride, confidence)
    spans = sweep.spans
    # Rows read for group g: [end of group g-1, end of group g) (the first time: from 0).
    reads = [(0 if g == 0 else spans[g - 1][1], end) for g, (_, end) in enumerate(spans)]
    band_rows = max(end - y0 for y0, end in spans)
    band = np.empty((band_rows, width, 3), dtype=np.uint8)
    band_valid = np.ones((band_rows, width), dtype=bool)
    any_invalid = False
    total_windows = len(sweep.ys) * len(sweep.xs)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(1.0, done / total_windows))

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="factseg-read") if prefetch else None
    pending: Future | None = None
    try:
        if pool is not None:
            pending = pool.submit(_checked_read, read_rows, *reads[0], width)
        for g, (y, _end) in enumerate(spans):
            engine._check_cancel()
            a, b = reads[g]
            if pending is not None:
                new_pixels, new_valid = pending.result()
                pending = pool.submit(_checked_read, read_rows, *reads[g + 1], width) if g + 1 < len(spans) else None
            else:
                new_pixels, new_valid = _checked_read(read_rows, a, b, width)
            if g > 0:  # slide the input band down to start at row y
                shift, kept = y - spans[g - 1][0], spans[g - 1][1] - y
                band[:kept] = band[shift : shift + kept]
                band_valid[:kept] = band_valid[shift : shift + kept]
            rows = slice(a - y, b - y)
            band[rows] = new_pixels
            band_valid[rows] = True if new_valid is None else new_valid
            if new_valid is not None and not new_valid.all():
                band[rows][~new_valid] = NODATA_FILL
                any_invalid = True
            windows = sweep.group_windows(g)
            if any_invalid:
                keep = [bool(band_valid[w.y0 - y : w.y1 - y, w.x0 : w.x1].any()) for w in windows]
                tick(keep.count(False))
                windows = [w for w, k in zip(windows, keep) if k]
            classes, conf = sweep.run_group(g, windows, lambda w, y=y: band[w.y0 - y : w.y1 - y, w.x0 : w.x1], tick)
            if any_invalid:
                invalid = ~band_valid[: len(classes)]
                classes[invalid] = NODATA_CLASS
                if conf is not None:
                    conf[invalid] = 0.0
            write_rows(y, classes, conf)
    finally:
        if pool is not None:
            if pending is not None:
                pending.cancel()
            pool.shutdown(wait=True)


__all__ = [
    "FAST_STRIDE",
    "NODATA_FILL",
    "Cancelled",
    "Chunk",
    "chunk_probabilities",
    "effective_batch_size",
    "plan_chunks",
    "predict_chunk",
    "source_window",
    "stream_predict",
    "windows_touching",
]
