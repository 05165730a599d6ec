"""*Check worker* off the GUI thread: ``info`` + ``ping`` of an endpoint, and what kind of link it is.

The result says which classes and device the worker has, whether the link is CURVE-authenticated (a reply over
CURVE proves the worker holds the secret of the server key we trust, and that it accepted our client key) and
which server key that is. Failures become one sentence that says what to fix (:func:`explain_link_error`).
"""
from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .auth import CurveKeys, short_key
from .styling import display_color, display_name, object_classes
from .worker_import import RemoteError, WorkerClient, WorkerError, WorkerUnavailable
from .worker_python import PythonCheck, check_worker_python

CHECK_TIMEOUT_S = 3.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def is_loopback(endpoint: str) -> bool:
    """Whether an endpoint stays on this machine (ipc, inproc, or tcp to a loopback address)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    host = urlsplit(f"//{rest}").hostname or ""
    return host in _LOOPBACK or host.startswith("127.")


def explain_link_error(exc: Exception, endpoint: str, keys: CurveKeys | None, timeout_s: float) -> str:
    """One sentence for a failed exchange with a worker, naming the key at fault where the handshake tells."""
    text = str(exc)
    if isinstance(exc, RemoteError):
        return f"The worker at {endpoint} answered with an error: {exc.message.rstrip('.')}."
    if "refused our CURVE key" in text:
        return (f"The worker at {endpoint} does not accept this client key ({short_key(keys.client_public if keys else None)}): "
                "its public key must be in the worker's --curve-allowed-clients folder.")
    if "handshake" in text:
        if keys is None:
            return (f"The worker at {endpoint} uses CURVE: give its public key (server.key) and your client's "
                    "secret key, or an authentication configuration holding them.")
        return (f"The security handshake with {endpoint} failed: the server key {short_key(keys.server_public)} is not "
                "this worker's public key, or the worker does not use CURVE.")
    if isinstance(exc, WorkerUnavailable):
        if keys is not None:
            return (f"No answer from the worker at {endpoint} within {timeout_s:g} s: it is not running or not "
                    "reachable, or it does not use CURVE although keys were given.")
        if not is_loopback(endpoint):
            return (f"No answer from the worker at {endpoint} within {timeout_s:g} s: a worker on another machine "
                    "needs CURVE keys (its server.key and your client secret key), and must be running.")
        return f"No answer from the worker at {endpoint} within {timeout_s:g} s: is it running?"
    return f"The worker at {endpoint} cannot be used: {text.rstrip('.')}."


def settled_batch(info: dict) -> int | None:
    """Windows per forward pass the worker uses now: its batch size, capped by the runner's (CPU: 1; lowered
    after an out-of-memory back-off)."""
    batch, cap = info.get("batch_size"), info.get("max_batch")
    if not isinstance(batch, int) or isinstance(batch, bool):
        return cap if isinstance(cap, int) and not isinstance(cap, bool) else None
    return min(batch, cap) if isinstance(cap, int) and not isinstance(cap, bool) else batch


def hardware_text(info: dict) -> str:
    """What runs the model, in words: 'NVIDIA H200, 139.8 GiB (cuda), fp16, batch 8'; '?' parts when unknown."""
    device = str(info.get("device") or "?")
    name = info.get("device_name")
    memory = info.get("device_memory_bytes")
    where = f"{name} ({device})" if name else device
    if isinstance(memory, int | float) and memory > 0:
        where = f"{name or device}, {memory / 1024**3:.1f} GiB ({device})"
    batch = settled_batch(info)
    return f"{where}, {info.get('precision') or 'fp32'}, batch {batch if batch is not None else '?'}"


def legend_html(check: WorkerCheck) -> str:
    """The dialog's line for a worker that answered: model, hardware, link, and a colour swatch for each class
    as the map shows it (non-breaking spaces keep a swatch with its name when the line wraps)."""
    info = check.info
    swatches = " ".join(
        f'<span style="background-color: {display_color(c["id"]).name()}">&nbsp;&nbsp;&nbsp;</span>&nbsp;'
        f'{html.escape(display_name(c["name"])).replace(" ", "&nbsp;")}' for c in object_classes(check.classes))
    link = (f"CURVE-authenticated, trusting server key {html.escape(check.server_key or '')}"
            if check.authenticated else "unauthenticated loopback/ipc link")
    return (f"{html.escape(str(info.get('model', '?')))} ({html.escape(str(info.get('backbone', '?')))}) on "
            f"{html.escape(hardware_text(info))}, {link}. On the map (background transparent): {swatches}")


@dataclass
class WorkerCheck:
    """What *Check worker* found. ``classes``: ``[{"id", "name", "color"}, …]`` as the worker's ``info`` gives."""

    endpoint: str
    ok: bool = False
    message: str = ""
    classes: list = field(default_factory=list)
    device: str | None = None
    backend: str | None = None
    model: str | None = None
    info: dict = field(default_factory=dict)
    latency_s: float | None = None
    authenticated: bool = False
    server_key: str | None = None  # the Z85 public key trusted for this link (None: plaintext)


def check_worker(endpoint: str, keys: CurveKeys | None = None, timeout_s: float = CHECK_TIMEOUT_S) -> WorkerCheck:
    """``info`` then ``ping`` of ``endpoint`` (blocking, up to ~2×``timeout_s``): run it in a task from the GUI."""
    result = WorkerCheck(endpoint, server_key=keys.server_public.decode("ascii") if keys else None)
    options = keys.client_options() if keys is not None else {}
    try:
        with WorkerClient(endpoint, timeout_s=timeout_s, retries=0, **options) as client:
            info = client.info()
            result.latency_s = client.ping()
    except (WorkerError, ValueError, OSError) as exc:
        result.message = explain_link_error(exc, endpoint, keys, timeout_s)
        return result
    result.ok = True
    result.info = info
    result.classes = list(info.get("classes") or [])
    result.device, result.backend, result.model = info.get("device"), info.get("backend"), info.get("model")
    result.authenticated = keys is not None
    link = (f"CURVE-authenticated, trusting server key {result.server_key}" if keys is not None
            else "not encrypted (loopback)" if is_loopback(endpoint) else "not encrypted")
    result.message = (f"Worker at {endpoint}: {len(result.classes)} classes on {hardware_text(info)} "
                      f"({result.backend or '?'}), {result.latency_s * 1000:.0f} ms round trip; link {link}.")
    return result


class CheckPythonTask(QgsTask):
    """:func:`check_worker_python` as a QgsTask (importing torch takes seconds); ``checked`` delivers the result."""

    checked = pyqtSignal(object)  # PythonCheck, emitted on the main thread

    def __init__(self, python: str) -> None:
        super().__init__("Check the FactSeg worker Python", QgsTask.Flag.CanCancel)
        self.python = python
        self.result: PythonCheck | None = None

    def run(self) -> bool:
        self.result = check_worker_python(self.python)
        return self.result.ok

    def finished(self, result: bool) -> None:
        self.checked.emit(self.result or PythonCheck(self.python, False, None, None, None, None, None, False,
                                                     "Checking the worker Python was cancelled."))


class CheckWorkerTask(QgsTask):
    """:func:`check_worker` as a QgsTask; ``result`` holds the :class:`WorkerCheck`, ``checked`` delivers it."""

    checked = pyqtSignal(object)  # WorkerCheck, emitted on the main thread when the task ends

    def __init__(self, endpoints: str | Sequence[str], keys: CurveKeys | None = None,
                 timeout_s: float = CHECK_TIMEOUT_S) -> None:
        super().__init__("Check the FactSeg worker", QgsTask.Flag.CanCancel)
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        self.keys = keys
        self.timeout_s = timeout_s
        self.result: WorkerCheck | None = None
        self.results: list[WorkerCheck] = []

    def run(self) -> bool:
        for endpoint in self.endpoints:
            if self.isCanceled():
                return False
            self.results.append(check_worker(endpoint, self.keys, self.timeout_s))
            self.setProgress(100.0 * len(self.results) / len(self.endpoints))
        failed = [r for r in self.results if not r.ok]
        self.result = failed[0] if failed else self.results[0] if self.results else None
        return self.result is not None and self.result.ok

    def finished(self, result: bool) -> None:
        if self.result is None:
            self.result = WorkerCheck(", ".join(self.endpoints), message="Checking the worker was cancelled.")
        self.checked.emit(self.result)
