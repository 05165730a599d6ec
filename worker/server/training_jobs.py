"""The files of training jobs on the worker's disk: a locked folder per job, uploads written exactly, sweeping.

Each job lives in ``TRAIN_DIR/factseg-train-XXXX/``. Its ``owner.lock`` is held (``flock``) by the worker that
made it, and by that job's training process (it inherits the descriptor), for as long as either lives; the
kernel releases it when they die, ``kill -9`` included. A starting worker therefore removes exactly the job
folders whose lock nobody holds: those of dead workers. A folder without our marker, or with a held lock, is
never touched. The lock file appears under its final name already locked (written aside, then renamed), so a
sweeping worker never mistakes a folder being created for a dead one. (Without ``fcntl``, e.g. on Windows,
nothing is swept: folders of dead workers stay in the temporary folder.)

Uploads are written at their offset and truncated back on failure, so a file is always exactly as long as the
bytes acknowledged to the client; a full disk is answered ``no_space`` and a resend after space returns gives
the source bytes.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..client.protocol import ProtocolError
from .logs import log_event

LOCK_READ_BYTES = 1 << 12  # an owner lock is a short JSON line

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

JOB_PREFIX = "factseg-train-"
LOCK_NAME = "owner.lock"
MARKER = "factseg-train-job/1"
#: Free space a job needs beyond its declared upload: the patch cache, checkpoints, logs.
SPACE_MARGIN_BYTES = 256 * 1024 * 1024
FULL_DISK = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def train_root(folder: str | os.PathLike | None) -> Path:
    """Where job folders go: ``folder`` (``--train-dir``) or the system's temporary folder."""
    root = Path(folder) if folder else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    return root


class JobFolder:
    """One job's private folder, locked by this process (and the training child it passes the lock to)."""

    def __init__(self, root: Path) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=JOB_PREFIX, dir=root))
        self.lock_fd = -1
        try:
            aside = self.path / f".{LOCK_NAME}.{os.getpid()}"
            self.lock_fd = os.open(aside, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            if fcntl is not None:
                fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            marker = {"marker": MARKER, "pid": os.getpid(), "created": time.time()}
            os.write(self.lock_fd, json.dumps(marker).encode())
            os.replace(aside, self.path / LOCK_NAME)
        except OSError as exc:
            self.remove()
            if exc.errno in FULL_DISK:
                raise ProtocolError("the worker's disk is full: no room for a training job", "no_space") from None
            raise

    def remove(self) -> None:
        """Delete the folder, then let go of its lock (in that order: nobody sweeps it while it goes)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def _is_ours(lock: Path) -> bool:
    try:
        with open(lock, encoding="utf-8") as handle:
            return json.loads(handle.read(LOCK_READ_BYTES)).get("marker") == MARKER
    except (OSError, ValueError, AttributeError):
        return False


def sweep_dead_jobs(root: Path) -> list[Path]:
    """Remove the job folders under ``root`` that a dead worker left (their lock is free); return them."""
    if fcntl is None:
        return []
    removed = []
    for folder in sorted(root.glob(f"{JOB_PREFIX}*")):
        lock = folder / LOCK_NAME
        if folder.is_symlink() or not folder.is_dir() or not lock.is_file() or not _is_ours(lock):
            continue
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: a live worker's (or its training's) folder
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(fd)
    if removed:
        log_event(logging.INFO, "swept_dead_jobs", count=len(removed))
    return removed


def check_space(root: Path, declared: int) -> None:
    """Refuse (``no_space``) an upload of ``declared`` bytes that the disk under ``root`` cannot hold."""
    free = shutil.disk_usage(root).free
    need = declared + declared // 2 + SPACE_MARGIN_BYTES
    if free < need:
        raise ProtocolError(f"the worker's disk has {free / 2**20:.0f} MiB free, and {declared / 2**20:.1f} MiB of "
                            f"upload with its training needs about {need / 2**20:.0f} MiB", "no_space")


def disk_full(root: Path, below: int = 16 * 1024 * 1024) -> bool:
    """True when the disk under ``root`` has less than ``below`` bytes free."""
    try:
        return shutil.disk_usage(root).free < below
    except OSError:
        return False


def write_piece(path: Path, offset: int, data: memoryview) -> None:
    """Write ``data`` at ``offset``; on failure cut the file back to ``offset`` (a full disk: ``no_space``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)
    except OSError as exc:
        os.ftruncate(fd, offset)
        if exc.errno in FULL_DISK:
            raise ProtocolError(f"the worker's disk is full: {path.name} holds {offset} bytes; send this piece "
                                "again when there is space", "no_space") from None
        raise
    finally:
        os.close(fd)
