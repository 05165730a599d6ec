"""Reading CURVE key files (written by ``python -m worker.keys``): the one loader, with one error type.

Used inside QGIS (the plugin's key files and authentication database), by ``python -m worker.segment`` and by the
worker itself (its secret key); each caller words :class:`KeyFileError` in its own error type if it must.
"""
from __future__ import annotations

import os
from pathlib import Path


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or without the key asked for; the message is one sentence."""


def load_key_file(path: str | os.PathLike, what: str = "key") -> tuple[bytes, bytes | None]:
    """``(public, secret or None)`` of a ``.key`` or ``.key_secret`` file; ``what`` names it in messages."""
    import zmq.auth

    path = Path(path)
    if not str(path) or not path.is_file():
        raise KeyFileError(f"The {what} file {path} does not exist.")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"The {what} file {path} is not a CURVE key file written by python -m worker.keys "
                           f"({exc}).") from None
    if not public:
        raise KeyFileError(f"The {what} file {path} is not a CURVE key file written by python -m worker.keys "
                           "(it holds no public key).")
    return public, secret or None


def load_public_key(key_file: str | os.PathLike, what: str = "public key") -> bytes:
    """The public key of a ``.key`` (or ``.key_secret``) file, e.g. the server's for ``server_public_key``."""
    return load_key_file(key_file, what)[0]


def load_client_keys(secret_file: str | os.PathLike, what: str = "client secret key",
                     expected: str = "the client's NAME.key_secret file, not its public NAME.key") -> tuple[bytes, bytes]:
    """(public, secret) from a ``NAME.key_secret`` file, for ``WorkerClient(client_keys=...)`` (or the worker's
    own pair from ``server.key_secret``, with ``what``/``expected`` saying so)."""
    public, secret = load_key_file(secret_file, what)
    if not secret:
        raise KeyFileError(f"The {what} file {secret_file} holds no secret key: give {expected}.")
    return public, secret
