"""A training process started by a worker dies with that worker (no orphan keeps the GPU after ``kill -9``).

The worker names itself in ``FACTSEG_TRAIN_PARENT``. On Linux the kernel then sends SIGKILL to this process when
the parent goes (``prctl(PR_SET_PDEATHSIG)``); everywhere, a daemon thread also watches the parent's pid and
exits when this process is re-parented. A parent that died before the lifeline was tied is noticed at once.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PARENT_ENV = "FACTSEG_TRAIN_PARENT"
PR_SET_PDEATHSIG = 1
WATCH_S = 1.0


def _parent_gone(parent: int) -> bool:
    return os.getppid() != parent


def _watch(parent: int) -> None:
    while True:
        time.sleep(WATCH_S)
        if _parent_gone(parent):
            os._exit(137)


def tie_to_parent(environ: dict[str, str] | None = None) -> bool:
    """Die with the worker named in ``FACTSEG_TRAIN_PARENT`` (a no-op without it); True when tied."""
    value = (environ if environ is not None else os.environ).get(PARENT_ENV, "")
    if not value.isdigit():
        return False
    parent = int(value)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still holds
    if _parent_gone(parent):
        os._exit(137)
    threading.Thread(target=_watch, args=(parent,), name="parent-watchdog", daemon=True).start()
    return True
