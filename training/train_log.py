"""Training log: plain lines to stdout (through tqdm) and ``train.log``, scalars to TensorBoard (main rank only)."""
from __future__ import annotations

import time
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
