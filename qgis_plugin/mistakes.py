"""The common mistakes of a first run, each explained in one sentence that says what to do.

An endpoint typed like a web address, a model path that is a folder or not a model, a worker Python without
torch, a second run writing the output another run writes: without this module they reach the analyst as a
Python traceback or as a worker's stderr. Every function returns plain words (no traceback, no newline); the
caller raises :class:`.errors.FactSegError` or QgsProcessingException with them.
"""
from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import FactSegError
from .worker_import import _worker_module, contract

MODEL_SUFFIXES = (".pt", ".pth", ".onnx")
SETUP_HINT = "use Set up worker… in the Segment Layer dialog, or choose a Python that has torch"
_MISSING_MODULE = re.compile(r"No module named '([^'.]+)")
_LOAD_FAILED = re.compile(r"worker: cannot (?:load|probe) model .*?: (.+)$")


def one_line(text: str, limit: int = 400) -> str:
    """``text`` as one sentence: the first non-empty line, capitalised, ending with a full stop."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    line = line[:limit].rstrip()
    if not line:
        return ""
    return line[:1].upper() + line[1:] + ("" if line.endswith((".", "?", "!")) else ".")


def endpoint_problem(endpoint: str) -> str | None:
    """None for an endpoint ZeroMQ can use; else what is wrong with it and how to write it."""
    text = (endpoint or "").strip()
    if not text:
        return f"Give the worker endpoint (e.g. {contract.DEFAULT_ENDPOINT}) or choose to start a local worker."
    scheme, sep, rest = text.partition("://")
    if scheme.lower() in ("http", "https") and sep:
        return (f"A FactSeg worker speaks ZeroMQ, not {scheme.upper()}: write tcp://{rest.rstrip('/')} instead of "
                f"{text}.")
    if not sep:
        hint = f"tcp://{text}" if re.fullmatch(r"[\w.\-\[\]:]+:\d+", text) else "tcp://HOST:PORT"
        return f"The worker endpoint {text!r} has no scheme: write {hint} (or ipc://PATH for a worker on this machine)."
    try:
        _worker_module("client.endpoints").parse_endpoint(text)
    except ValueError as exc:
        return f"The worker endpoint is not usable: {one_line(str(exc))}"
    return None


def model_path_problem(path: str) -> str | None:
    """None for a path that names a model file; else why not (missing, a folder, empty) and what to choose."""
    text = (path or "").strip()
    if not text:
        return "No model file is set: choose a FactSeg checkpoint (.pt/.pth) or ONNX model."
    model = Path(text)
    if model.is_dir():
        inside = sorted(p.name for p in model.iterdir() if p.suffix.lower() in MODEL_SUFFIXES)[:3]
        found = f" (it holds {', '.join(inside)})" if inside else ""
        return f"The model path {model} is a folder{found}: choose the model file itself (.pt, .pth or .onnx)."
    if not model.is_file():
        return f"The model file {model} does not exist: choose a FactSeg checkpoint (.pt/.pth) or ONNX model."
    if model.stat().st_size == 0:
        return f"The model file {model} is empty: choose a FactSeg checkpoint (.pt/.pth) or ONNX model."
    return None


def worker_start_problem(python: str, model: str, detail: str) -> str:
    """One sentence for a local worker that would not start, from what it wrote to stderr (``detail``)."""
    missing = _MISSING_MODULE.findall(detail)
    if missing:
        module = {"zmq": "pyzmq"}.get(missing[-1], missing[-1])
        return f"The worker Python {python} has no {module}: {SETUP_HINT}."
    for line in reversed(detail.splitlines()):
        found = _LOAD_FAILED.search(line.strip())
        if found:
            return one_line(found.group(1).replace("weights_only=False", "").strip())
    last = next((line.strip() for line in reversed(detail.splitlines()) if line.strip()), "no message")
    return one_line(f"The local worker with {python} and model {model} did not start ({last.rstrip('.')})")


def unexpected(exc: BaseException, what: str = "The segmentation") -> str:
    """One sentence for an error nobody foresaw (the traceback belongs in the log, not in the message)."""
    detail = one_line(str(exc)).rstrip(".") or type(exc).__name__
    return f"{what} failed: {detail} ({type(exc).__name__})."


# -- outputs written by a run now ------------------------------------------------------------------------------

_lock = threading.Lock()
_in_use: set[str] = set()


@contextmanager
def outputs_in_use(paths: Iterable[str | Path | None]) -> Iterator[None]:
    """Claim the output files of a run for its duration: a second run of this QGIS writing one of them is refused
    in one sentence (it would otherwise race the first one's partial files)."""
    wanted = {str(Path(p).resolve()) for p in paths if p}
    with _lock:
        busy = sorted(wanted & _in_use)
        if busy:
            raise FactSegError(f"Another FactSeg run is writing {busy[0]} right now: wait for it to finish, or "
                               "choose another output file.")
        _in_use.update(wanted)
    try:
        yield
    finally:
        with _lock:
            _in_use.difference_update(wanted)
