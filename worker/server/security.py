"""Who may reach the worker: loopback only, unless CURVE keys are configured (checked before and after bind)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..client.endpoints import EndpointError, parse_endpoint
from ..client.keys import KeyFileError, load_client_keys

_HOW_TO_EXPOSE = (
    "Pass --curve-secret-key SERVER.key_secret and --curve-allowed-clients DIR (make them with: python -m "
    "worker.keys --out DIR), or bind tcp://127.0.0.1:PORT or ipc://PATH."
)


class WorkerStartError(RuntimeError):
    """The worker cannot start (unsafe bind, bad keys, address in use): the message says what to do."""


def check_bind_security(bind: str, secret_key: Any, allowed_clients: Any) -> None:
    """Before binding: refuse an endpoint that does not parse strictly, a non-loopback one without CURVE, and
    half-configured CURVE anywhere."""
    if (secret_key is None) != (allowed_clients is None):
        raise WorkerStartError("CURVE needs both --curve-secret-key FILE and --curve-allowed-clients DIR")
    try:
        endpoint = parse_endpoint(bind)
    except EndpointError as exc:
        raise WorkerStartError(f"refusing to bind: {exc}. {_HOW_TO_EXPOSE}") from None
    if secret_key is None and not endpoint.is_loopback:
        raise WorkerStartError(
            f"refusing to bind {bind} without encryption: a non-loopback address lets anyone on the network use "
            f"this worker. {_HOW_TO_EXPOSE}"
        )
    if allowed_clients is not None:
        folder = Path(allowed_clients)
        if not folder.is_dir() or not any(folder.glob("*.key")):
            raise WorkerStartError(
                f"--curve-allowed-clients {folder} must be a folder of client public keys (*.key files)"
            )


def check_bound_endpoint(last_endpoint: str, curve: bool) -> None:
    """After binding: the address the socket really listens on (``LAST_ENDPOINT``) must be loopback without CURVE.

    This holds whatever the bind string looked like: libzmq's reading of it is what counts.
    """
    if curve:
        return
    try:
        loopback = parse_endpoint(last_endpoint).is_loopback and "localhost" not in last_endpoint
    except EndpointError:
        loopback = False
    if not loopback:
        raise WorkerStartError(
            f"refusing to serve on {last_endpoint[:120]} without encryption: the socket is bound beyond loopback. "
            f"{_HOW_TO_EXPOSE}"
        )


def load_secret_key(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` certificate file written by ``python -m worker.keys``."""
    try:
        return load_client_keys(path, "worker's secret key", "the server's .key_secret file")
    except KeyFileError as exc:
        raise WorkerStartError(str(exc)) from None
