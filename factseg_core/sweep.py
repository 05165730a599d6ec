"""A whole raster, top to bottom, in bounded memory: the exact sliding-window result streamed row by row.

:func:`stream_predict` sweeps the image one row of windows at a time (:class:`RowSweep`), holding only the
accumulators of rows still open (``patch − stride`` rows × full width, plus the open columns of the
current rows) and the input band they need (:class:`_InputBand`): peak memory is independent of the image
height and linear in its width, and no window is computed twice. The next band is read in a helper thread
while the current one is computed (on CPU too, where reading is I/O).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import torch

from .config import BATCH_SIZE, PATCH_SIZE, STRIDE
from .engine import NODATA_FILL, Crop, WindowEngine, WindowRunner, check_pixels, mark_nodata
from .windows import Window, coverage, window_starts

#: ``read_rows(y0, y1)`` → ``(pixels (y1−y0)×width×3 uint8, valid (y1−y0)×width bool or None)``.
ReadRows = Callable[[int, int], tuple[np.ndarray, "np.ndarray | None"]]
#: ``write_rows(y0, classes, confidence or None)``: consecutive finished row blocks, top to bottom.
WriteRows = Callable[[int, np.ndarray, "np.ndarray | None"], None]
#: ``tick(n)``: n more windows are done (computed or skipped).
Tick = Callable[[int], None]


@torch.inference_mode()
def stream_predict(
    runner: WindowRunner,
    height: int,
    width: int,
    read_rows: ReadRows,
    write_rows: WriteRows,
    patch: int = PATCH_SIZE,
    stride: int = STRIDE,
    batch_size: int = BATCH_SIZE,
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
    the fraction of windows done (0..1); ``cancel()`` is checked between batches and raises
    :class:`~factseg_core.engine.Cancelled`.

    Holds ``C × (patch − stride) × width`` float32 accumulators (:class:`RowSweep`), the open columns of
    the current rows and an input band of at most ``patch + stride`` rows: bounded in height, linear in width.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}×{width}")
    engine = WindowEngine(runner, batch_size, tta, cancel)
    sweep = RowSweep(engine, height, width, patch, stride, confidence)
    band = _InputBand(sweep.spans, width)
    tick = _progress_counter(len(sweep.ys) * len(sweep.xs), progress)
    with closing(_read_bands(read_rows, band.reads, width, prefetch)) as bands:
        for g in range(len(sweep.groups)):
            engine.check_cancel()
            band.load(g, *next(bands))
            windows = band.with_valid_pixels(sweep.group_windows(g), tick)
            classes, conf = sweep.run_group(g, windows, band.crop, tick)
            band.mark_nodata(classes, conf)
            write_rows(band.y, classes, conf)


def _progress_counter(total_windows: int, progress: Callable[[float], None] | None) -> Tick:
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(min(1.0, done / total_windows))

    return tick


def _read_bands(read_rows: ReadRows, reads: Sequence[tuple[int, int]], width: int,
                prefetch: bool) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """The checked ``read_rows`` results of ``reads``, in order; with ``prefetch`` each one read ahead.

    Closing the generator (as :func:`stream_predict` does on any exit) drops a read not yet started and
    waits for the one in progress, so no reader call outlives the sweep.
    """
    if not prefetch:
        for a, b in reads:
            yield _checked_read(read_rows, a, b, width)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="factseg-read")
    pending: Future | None = pool.submit(_checked_read, read_rows, *reads[0], width)
    try:
        for g in range(len(reads)):
            assert pending is not None
            result = pending.result()
            pending = pool.submit(_checked_read, read_rows, *reads[g + 1], width) if g + 1 < len(reads) else None
            yield result
    finally:
        if pending is not None:
            pending.cancel()
        pool.shutdown(wait=True)


def _checked_read(read_rows: ReadRows, y0: int, y1: int, width: int) -> tuple[np.ndarray, np.ndarray | None]:
    result = read_rows(y0, y1)
    if not isinstance(result, tuple) or len(result) != 2:
        raise ValueError(f"read_rows({y0}, {y1}) must return (pixels, valid or None), got {type(result).__name__}")
    pixels, valid = result
    check_pixels(pixels, valid, y1 - y0, width, f"read_rows({y0}, {y1})")
    return pixels, valid


class _InputBand:
    """The input rows the current group's windows read, slid down the raster group by group.

    Group g (rows ``spans[g]``) reads only rows its predecessor did not: [end of group g−1, end of group g).
    Invalid pixels are painted :data:`NODATA_FILL` on arrival; once any has been seen, windows without a
    valid pixel are skipped and invalid output pixels are marked nodata.
    """

    def __init__(self, spans: Sequence[tuple[int, int]], width: int) -> None:
        self.spans = spans
        self.reads = [(0 if g == 0 else spans[g - 1][1], end) for g, (_, end) in enumerate(spans)]
        rows = max(end - y0 for y0, end in spans)
        self.pixels = np.empty((rows, width, 3), dtype=np.uint8)
        self.valid = np.ones((rows, width), dtype=bool)
        self.any_invalid = False
        self.y = 0  #: image row of the band's first row

    def load(self, g: int, pixels: np.ndarray, valid: np.ndarray | None) -> None:
        """Slide the band down to group ``g``'s first row and append the rows just read."""
        y = self.spans[g][0]
        if g > 0:
            shift, kept = y - self.spans[g - 1][0], self.spans[g - 1][1] - y
            self.pixels[:kept] = self.pixels[shift : shift + kept]
            self.valid[:kept] = self.valid[shift : shift + kept]
        a, b = self.reads[g]
        rows = slice(a - y, b - y)
        self.pixels[rows] = pixels
        self.valid[rows] = True if valid is None else valid
        if valid is not None and not valid.all():
            self.pixels[rows][~valid] = NODATA_FILL
            self.any_invalid = True
        self.y = y

    def crop(self, win: Window) -> np.ndarray:
        return self.pixels[win.y0 - self.y : win.y1 - self.y, win.x0 : win.x1]

    def with_valid_pixels(self, windows: list[Window], tick: Tick) -> list[Window]:
        """``windows`` less those without a valid pixel (counted as done: they cost nothing)."""
        if not self.any_invalid:
            return windows
        keep = [bool(self.valid[w.y0 - self.y : w.y1 - self.y, w.x0 : w.x1].any()) for w in windows]
        tick(keep.count(False))
        return [w for w, k in zip(windows, keep) if k]

    def mark_nodata(self, classes: np.ndarray, conf: np.ndarray | None) -> None:
        """Nodata class (confidence 0) on the invalid pixels of the group's finished rows."""
        if self.any_invalid:
            mark_nodata(classes, conf, ~self.valid[: len(classes)])


@dataclass
class _GroupState:
    """Where the sweep of one group stands (see :class:`RowSweep`): rows, carry sizes, the open head."""

    y: int  #: first image row of the group
    next: int  #: first row of the next group: the head is rows [y, next)
    k_in: int  #: carried rows holding contributions of earlier groups
    k_out: int  #: rows to carry to the next group
    head: torch.Tensor  #: C × (next − y) × (handed − h0) sums of the open head columns
    classes: torch.Tensor  #: (next − y) × width uint8 results
    conf: torch.Tensor | None  #: (next − y) × width float32 confidence, if asked
    h0: int = 0  #: head columns < h0 are final
    handed: int = 0  #: columns < handed have been handed over from the carry

    @property
    def rows(self) -> int:
        return self.next - self.y


class RowSweep:
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

    def __init__(self, engine: WindowEngine, height: int, width: int, patch: int, stride: int, confidence: bool):
        self.engine, self.width, self.confidence = engine, width, confidence
        self.ys, self.wh = window_starts(height, patch, stride), min(patch, height)
        self.xs, self.ww = window_starts(width, patch, stride), min(patch, width)
        n = len(self.ys)
        #: Groups of window-row indices swept together: singles, then the last two rows as a pair.
        self.groups: list[list[int]] = [[i] for i in range(n - 2)] + ([[n - 2, n - 1]] if n >= 2 else [[0]])
        #: Rows [first, end) each group's windows cover.
        self.spans = [(self.ys[g[0]], self.ys[g[-1]] + self.wh) for g in self.groups]
        carried = [a1 - b0 for (_, a1), (b0, _) in zip(self.spans, self.spans[1:])]
        self.carry = engine.zeros(max(carried, default=0), width)
        self.count_y = torch.from_numpy(coverage(height, patch, stride)).to(engine.device)
        self.count_x = torch.from_numpy(coverage(width, patch, stride)).to(engine.device)

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

    def run_group(self, g: int, windows: Sequence[Window], crop: Crop, tick: Tick) -> tuple[np.ndarray, np.ndarray | None]:
        """Run the (non-skipped) ``windows`` of group ``g``, in order; return its finished rows (classes, conf)."""
        state = self._start_group(g)
        carry_out = self.carry[:, : state.k_out]
        # Columns left of every window still to run are final: suffix minima of the windows' x0.
        open_from = [self.width] * (len(windows) + 1)
        for k in range(len(windows) - 1, -1, -1):
            open_from[k] = min(open_from[k + 1], windows[k].x0)
        reach, batch_size = 0, self.engine.batch_size
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            reach = max(reach, max(w.x1 for w in batch))
            self._advance(state, open_from[start], reach)
            self.engine.add_batch(batch, crop, [(state.head, (state.y, state.h0)), (carry_out, (state.next, 0))])
            tick(len(batch))
        self._advance(state, self.width, self.width)
        classes = state.classes.cpu().numpy()
        return classes, None if state.conf is None else state.conf.cpu().numpy()

    def _start_group(self, g: int) -> _GroupState:
        y, end = self.spans[g]
        nxt = end if g + 1 == len(self.groups) else self.spans[g + 1][0]
        device = self.engine.device
        return _GroupState(
            y=y,
            next=nxt,
            k_in=self.spans[g - 1][1] - y if g > 0 else 0,
            k_out=end - nxt,
            head=self.engine.zeros(nxt - y, 0),
            classes=torch.empty((nxt - y, self.width), dtype=torch.uint8, device=device),
            conf=torch.empty((nxt - y, self.width), dtype=torch.float32, device=device) if self.confidence else None,
        )

    def _advance(self, state: _GroupState, final_to: int, hand_to: int) -> None:
        """Finalise head columns < ``final_to`` and hand over columns < ``hand_to`` (in slices of ≤ one window)."""
        while state.handed < final_to:
            self._hand_over(state, min(final_to, state.handed + self.ww))
            self._finalise(state, state.handed)
        self._finalise(state, final_to)
        self._hand_over(state, hand_to)

    def _hand_over(self, state: _GroupState, c1: int) -> None:
        c0 = state.handed
        if c1 <= c0:
            return
        rows = state.rows
        new = self.engine.zeros(rows, c1 - c0)
        m = min(state.k_in, rows)
        new[:, :m] = self.carry[:, :m, c0:c1]
        # Re-base the carry of these columns from row y to row `next` (shift up by `rows`), in blocks of
        # ≤ `rows` rows so that no block overlaps its source; rows no earlier window covered start at 0.
        keep = max(0, min(state.k_out, state.k_in - rows))
        for r in range(0, keep, rows):
            n = min(rows, keep - r)
            self.carry[:, r : r + n, c0:c1] = self.carry[:, rows + r : rows + r + n, c0:c1]
        self.carry[:, keep : state.k_out, c0:c1] = 0
        state.head = torch.cat((state.head, new), dim=2)
        state.handed = c1

    def _finalise(self, state: _GroupState, c1: int) -> None:
        c0 = state.h0
        if c1 <= c0:
            return
        n = c1 - c0
        counts = self.count_y[state.y : state.next, None] * self.count_x[None, c0:c1]
        best, ids = (state.head[:, :, :n] / counts).max(dim=0)
        state.classes[:, c0:c1] = ids.to(torch.uint8)
        if state.conf is not None:
            state.conf[:, c0:c1] = best
        state.head = state.head[:, :, n:]
        state.h0 = c1


__all__ = ["ReadRows", "RowSweep", "WriteRows", "stream_predict"]
