"""CURVE keys for a remote worker, from what the dialog or factseg:segment was given.

Three ways, one result (:class:`.auth.CurveKeys`): an authentication configuration id (AUTHCFG: the secret kept in
QGIS's authentication database), or SERVER_KEY (the worker's ``server.key`` file, or its 40 z85 characters) with
CLIENT_KEY (this client's ``NAME.key_secret`` file). Nothing given: a plain loopback/ipc link (None).
"""
from __future__ import annotations

from .auth import CurveKeys, curve_keys, curve_keys_from_files
from .errors import FactSegError


def resolve_keys(server_key: str = "", client_key: str = "", authcfg: str = "") -> CurveKeys | None:
    """The keys for a link, or None for none; FactSegError (one sentence) when incomplete or unreadable."""
    server_key, client_key, authcfg = (server_key or "").strip(), (client_key or "").strip(), (authcfg or "").strip()
    if authcfg:
        return curve_keys(authcfg)
    if not (server_key or client_key):
        return None
    if not (server_key and client_key):
        raise FactSegError("A CURVE worker needs both keys: SERVER_KEY (the worker's server.key or its z85 text) "
                           "and CLIENT_KEY (this client's .key_secret file).")
    return curve_keys_from_files(server_key, client_key)
