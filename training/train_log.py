"""Training log: plain lines to stdout (through tqdm) and ``train.log``, scalars to TensorBoard (main rank only)."""
from __future__ import annotations

import errno
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm


def format_eta(seconds: float) -> str:
    """``H:MM:SS``."""
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Logger:
    """Log lines and TensorBoard scalars of one run; a no-op on ranks other than 0."""

    def __init__(self, work_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.file = open(work_dir / "train.log", "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(work_dir / "tb"))
            except ImportError:
                self.line("tensorboard is not installed: no TensorBoard scalars")

    def line(self, text: str) -> None:
        if self.file is None:
            return
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        tqdm.write(stamped)
        self.file.write(stamped + "\n")
        self.file.flush()

    def scalars(self, iteration: int, **values: float) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.file is not None:
            self.file.close()
            self.file = None


class EventLog:
    """Structured events for whoever drives the run (the worker): one JSON object per line in ``events.jsonl``.

    ``progress`` from the first iteration on (then at most every ``every_s`` seconds, and the last one), with a
    steady ETA; ``phase``, ``evaluation``, ``failed`` (one sentence and a kind) and ``done``. Main rank only.
    """

    def __init__(self, work_dir: Path, enabled: bool = True, every_s: float = 1.0) -> None:
        self.path = Path(work_dir) / "events.jsonl"
        self.enabled = enabled
        self.every_s = every_s
        self._last = -1.0
        self.eta = EtaMeter()
        self.eta_s: float | None = None  # the latest estimate (for progress callbacks)

    def emit(self, event: str, **fields: object) -> None:
        if not self.enabled:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"event": event, "time": round(time.time(), 3), **fields}) + "\n")
        except OSError:
            pass  # a full disk must not turn a report into a second failure

    def progress(self, iteration: int, total: int, loss: float, lr: float, last: bool = False) -> None:
        """One iteration done: always the first, then at most every ``every_s`` seconds, and the last."""
        eta = self.eta_s = self.eta.update(iteration, total)
        now = time.monotonic()
        if self._last < 0 or last or now - self._last >= self.every_s:
            self._last = now
            self.emit("progress", iteration=iteration, iterations=total, loss=_finite(loss), lr=_finite(lr),
                      eta_s=None if eta is None else round(eta, 1))


class EtaMeter:
    """Seconds left from an exponential moving average of the time per iteration (steady, not the last step)."""

    def __init__(self, smoothing: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self.smoothing = smoothing
        self.clock = clock
        self.per_iteration: float | None = None
        self._stamp: float | None = None
        self._iteration = 0

    def start(self, iteration: int) -> None:
        """The loop starts at ``iteration``: the first step's time counts (an ETA from the first iteration on)."""
        self._stamp, self._iteration = self.clock(), iteration

    def update(self, iteration: int, total: int) -> float | None:
        now = self.clock()
        if self._stamp is not None and iteration > self._iteration:
            step = (now - self._stamp) / (iteration - self._iteration)
            self.per_iteration = step if self.per_iteration is None else (
                self.smoothing * step + (1 - self.smoothing) * self.per_iteration)
        self._stamp, self._iteration = now, iteration
        if self.per_iteration is None:
            return None
        return max(0.0, (total - iteration) * self.per_iteration)


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def describe_failure(exc: BaseException, work_dir: Path | None = None) -> tuple[str, str]:
    """(one sentence, kind) for an error that ended a run; kind is ``no_space``, ``out_of_memory``, ``io``,
    ``cancelled``, ``input`` (config, data, checkpoint: the message is already a sentence) or ``error``."""
    from .errors import TrainingCancelled

    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, TrainingCancelled):
        return text, "cancelled"
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
    if not full and "write failed" in text and work_dir is not None:  # torch.save reports ENOSPC this way
        try:
            full = shutil.disk_usage(work_dir if work_dir.exists() else work_dir.parent).free < 64 * 2**20
        except OSError:
            full = False
    if full:
        where = f" while writing {Path(exc.filename).name}" if isinstance(exc, OSError) and exc.filename else ""
        return f"the disk is full{where}: free some space on the worker and train again", "no_space"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text:
        return ("out of memory: lower train.batch_size or data.patch, or use a smaller preset "
                f"({text.split('.')[0][:160]})"), "out_of_memory"
    if isinstance(exc, OSError):
        name = Path(exc.filename).name if exc.filename else "a file"
        return f"cannot read or write {name}: {exc.strerror or text}", "io"
    if type(exc).__name__ in ("ConfigError", "DataError", "CheckpointError", "TrainingError"):
        return text[:400], "input"  # the library's own errors are sentences already
    return f"training crashed: {type(exc).__name__}: {text[:300]}", "error"
