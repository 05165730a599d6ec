"""CURVE keys for a remote worker, from what the dialog or factseg:segment was given.

Three ways, one result (the server's public key and this client's key pair, z85): an authentication
configuration id (AUTHCFG, the secret kept in QGIS's authentication database by :mod:`.auth`), or SERVER_KEY (the
worker's ``server.key`` file, or its 40 z85 characters) with CLIENT_KEY (this client's ``NAME.key_secret``
file). Nothing given: a plain loopback/ipc link.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import FactSegError

Z85_KEY_LENGTH = 40


@dataclass(frozen=True)
class LinkKeys:
    server_public: bytes | None = None
    client_keys: tuple[bytes, bytes] | None = None  # (public, secret)

    @property
    def authenticated(self) -> bool:
        return self.server_public is not None


def resolve_keys(server_key: str = "", client_key: str = "", authcfg: str = "") -> LinkKeys:
    """The keys for a link; FactSegError (one sentence) when they are incomplete or unreadable."""
    server_key, client_key, authcfg = (server_key or "").strip(), (client_key or "").strip(), (authcfg or "").strip()
    if authcfg:
        from . import auth  # QgsAuthManager storage of the keys

        keys = auth.curve_keys(authcfg)
    elif server_key or client_key:
        if not (server_key and client_key):
            raise FactSegError("A CURVE worker needs both keys: SERVER_KEY (the worker's server.key or its z85 "
                               "text) and CLIENT_KEY (this client's .key_secret file).")
        if not Path(client_key).is_file():
            raise FactSegError(f"The client key file {client_key} does not exist.")
        if Path(server_key).is_file():
            from . import auth

            keys = auth.curve_keys_from_files(server_key, client_key)
        elif len(server_key) == Z85_KEY_LENGTH:
            return LinkKeys(server_key.encode("ascii"), _client_pair(client_key))
        else:
            raise FactSegError(f"SERVER_KEY is neither a key file nor a 40-character z85 key: {server_key!r}.")
    else:
        return LinkKeys()
    return LinkKeys(_bytes(keys.server_public), (_bytes(keys.client_public), _bytes(keys.client_secret)))


def _client_pair(secret_file: str) -> tuple[bytes, bytes]:
    """(public, secret) of a ZeroMQ ``.key_secret`` certificate file."""
    import zmq.auth

    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as exc:
        raise FactSegError(f"The client key file {secret_file} cannot be read as a CURVE key: {exc}") from exc
    if not secret:
        raise FactSegError(f"The client key file {secret_file} holds no secret key (give the .key_secret file).")
    return _bytes(public), _bytes(secret)


def _bytes(key: bytes | str) -> bytes:
    return key.encode("ascii") if isinstance(key, str) else bytes(key)
