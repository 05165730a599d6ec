"""CURVE keys for remote workers, kept in QGIS's authentication database instead of plain settings.

A key set is stored as an authentication configuration of QGIS's built-in **Basic** method, which exists in
every QGIS 3.x/4.x and keeps three strings in its encrypted config map: ``username`` = the client's public key,
``password`` = the client's secret key, ``realm`` = the worker's (server's) public key, all 40-character Z85.
The secret thus sits in the field QGIS masks and encrypts with the master password, and the analyst can see,
rename or edit the set in Settings ▸ Options ▸ Authentication like any other. (The PKI methods want
certificate files, OAuth2/EsriToken other semantics; a custom method key would not be editable there.)

Key files are the ones ``python -m worker.keys`` writes: the worker's ``server.key`` and the client's
``NAME.key_secret``. Every failure is a :class:`FactSegError` with one sentence.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication, QgsAuthManager, QgsAuthMethodConfig

from .errors import FactSegError
from .worker_import import keys

AUTH_METHOD = "Basic"
_CLIENT_PUBLIC, _CLIENT_SECRET, _SERVER_PUBLIC = "username", "password", "realm"
Z85_KEY_LENGTH = 40
_Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")


@dataclass(frozen=True)
class CurveKeys:
    """The keys one CURVE link needs: whom we trust (server public) and who we are (client pair), Z85 bytes."""

    server_public: bytes
    client_public: bytes
    client_secret: bytes

    @property
    def client_keys(self) -> tuple[bytes, bytes]:
        """``(public, secret)`` as ``WorkerClient(client_keys=...)`` takes them."""
        return self.client_public, self.client_secret

    def client_options(self) -> dict[str, object]:
        """Keyword arguments for ``WorkerClient`` / ``start_local_worker``: ``server_public_key``, ``client_keys``."""
        return {"server_public_key": self.server_public, "client_keys": self.client_keys}

    def __repr__(self) -> str:  # never print the secret (logs, tracebacks)
        return f"CurveKeys(server_public={self.server_public!r}, client_public={self.client_public!r}, client_secret=…)"


def z85_key(value: bytes | str, what: str) -> bytes:
    """``value`` as a 40-character Z85 key (bytes); FactSegError naming ``what`` if it is not one."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    text = text.strip()
    if len(text) != Z85_KEY_LENGTH or not set(text) <= _Z85_ALPHABET:
        raise FactSegError(
            f"The {what} is not a CURVE key: expected {Z85_KEY_LENGTH} Z85 characters, got {len(text)} "
            f"characters{'' if set(text) <= _Z85_ALPHABET else ' with some outside the Z85 alphabet'}.")
    return text.encode("ascii")


def checked_keys(server_public: bytes | str, client_public: bytes | str, client_secret: bytes | str) -> CurveKeys:
    """A :class:`CurveKeys` whose three keys are well formed and whose client public key belongs to its secret."""
    import zmq

    keys = CurveKeys(z85_key(server_public, "worker's (server) public key"),
                     z85_key(client_public, "client public key"), z85_key(client_secret, "client secret key"))
    if zmq.has("curve") and zmq.curve_public(keys.client_secret) != keys.client_public:
        raise FactSegError("The client public key does not belong to the client secret key: give both from the "
                           "same NAME.key_secret file.")
    return keys


# -- key files ----------------------------------------------------------------------------------------------

def server_key_from_file(server_key_file: str | os.PathLike) -> bytes:
    """The worker's public key from its ``server.key`` (a ``.key_secret`` file works too)."""
    try:
        public = keys.load_public_key(server_key_file, "worker's public key")
    except keys.KeyFileError as exc:
        raise FactSegError(str(exc)) from None
    return z85_key(public, f"public key in {server_key_file}")


def server_key_from_text_or_file(value: str) -> bytes:
    """A worker public key given either as 40 Z85 characters or as the path of its ``server.key`` file."""
    text = (value or "").strip()
    if not text:
        raise FactSegError("No worker public key is given: pass the worker's server.key file or its 40-character key.")
    if len(text) == Z85_KEY_LENGTH and set(text) <= _Z85_ALPHABET and not Path(text).is_file():
        return text.encode("ascii")
    return server_key_from_file(text)


def curve_keys_from_files(server_key_file: str | os.PathLike, client_secret_file: str | os.PathLike) -> CurveKeys:
    """Keys from ``python -m worker.keys`` files: the worker's ``server.key`` and the client's ``NAME.key_secret``."""
    server_public = server_key_from_text_or_file(str(server_key_file))
    try:
        public, secret = keys.load_client_keys(client_secret_file)
    except keys.KeyFileError as exc:
        raise FactSegError(str(exc)) from None
    return checked_keys(server_public, public, secret)


# -- the authentication database ----------------------------------------------------------------------------

def _unlocked_manager() -> QgsAuthManager:
    """QGIS's authentication manager with the master password entered (QGIS asks for it if needed)."""
    manager = QgsApplication.authManager()
    if manager is None or manager.isDisabled():
        reason = manager.disabledMessage() if manager is not None else "no QGIS application"
        raise FactSegError(f"QGIS's authentication system is unavailable ({reason}), so CURVE keys cannot be kept in it.")
    if manager.masterPasswordIsSet() or manager.setMasterPassword(True):
        return manager
    if not manager.masterPasswordHashInDatabase():
        raise FactSegError("No QGIS master password is set up: set one (Settings ▸ Options ▸ Authentication) so that "
                           "QGIS can keep the CURVE keys encrypted.")
    raise FactSegError("The QGIS master password was not entered or is wrong, so the CURVE keys in QGIS's "
                       "authentication database cannot be read.")


def store_curve_keys(name: str, server_public_z85: bytes | str, client_public_z85: bytes | str,
                     client_secret_z85: bytes | str, authcfg_id: str | None = None) -> str:
    """Store (or, with an existing ``authcfg_id``, replace) a key set; returns its authentication config id."""
    keys = checked_keys(server_public_z85, client_public_z85, client_secret_z85)
    manager = _unlocked_manager()
    config = QgsAuthMethodConfig(AUTH_METHOD)
    config.setName(name.strip() or "FactSeg worker")
    config.setConfig(_CLIENT_PUBLIC, keys.client_public.decode("ascii"))
    config.setConfig(_CLIENT_SECRET, keys.client_secret.decode("ascii"))
    config.setConfig(_SERVER_PUBLIC, keys.server_public.decode("ascii"))
    if authcfg_id and authcfg_id in manager.configIds():
        config.setId(authcfg_id)
        if not manager.updateAuthenticationConfig(config):
            raise FactSegError(f"QGIS could not update authentication configuration {authcfg_id}.")
        return authcfg_id
    if authcfg_id:
        if len(authcfg_id) != 7 or not authcfg_id.isalnum():
            raise FactSegError(f"{authcfg_id!r} is not a QGIS authentication configuration id (7 letters or digits).")
        config.setId(authcfg_id)
    stored = manager.storeAuthenticationConfig(config)
    ok = stored[0] if isinstance(stored, tuple) else bool(stored)  # PyQGIS returns (ok, config)
    if not ok or not config.id():
        raise FactSegError(f"QGIS could not store the CURVE keys {name!r} in its authentication database.")
    return config.id()


def import_key_files(name: str, server_key_file: str | os.PathLike, client_secret_file: str | os.PathLike) -> str:
    """Read ``python -m worker.keys`` files and store them as a new authentication configuration; returns its id."""
    keys = curve_keys_from_files(server_key_file, client_secret_file)
    return store_curve_keys(name, keys.server_public, keys.client_public, keys.client_secret)


def curve_keys(authcfg_id: str) -> CurveKeys:
    """The key set stored under ``authcfg_id`` (QGIS asks for the master password if it has not been entered)."""
    authcfg_id = (authcfg_id or "").strip()
    if not authcfg_id:
        raise FactSegError("No authentication configuration is chosen for the worker's CURVE keys.")
    manager = _unlocked_manager()
    if authcfg_id not in manager.configIds():
        raise FactSegError(f"There is no QGIS authentication configuration with id {authcfg_id}.")
    config = QgsAuthMethodConfig()
    loaded = manager.loadAuthenticationConfig(authcfg_id, config, True)
    ok = loaded[0] if isinstance(loaded, tuple) else bool(loaded)
    if not ok:
        raise FactSegError(f"QGIS could not decrypt authentication configuration {authcfg_id} (wrong master password?).")
    if config.method() != AUTH_METHOD or not config.config(_CLIENT_SECRET):
        raise FactSegError(f"Authentication configuration {authcfg_id} ({config.name()}) holds no FactSeg CURVE keys: "
                           "it needs the client public key as user name, its secret as password and the worker's "
                           "public key as realm (Basic method).")
    try:
        return checked_keys(config.config(_SERVER_PUBLIC), config.config(_CLIENT_PUBLIC),
                            config.config(_CLIENT_SECRET))
    except FactSegError as exc:
        raise FactSegError(f"Authentication configuration {authcfg_id} ({config.name()}): {exc}") from None


def curve_config_ids() -> dict[str, str]:
    """``{id: name}`` of the configurations that may hold CURVE keys (all of the Basic method; no master password
    needed to list them, :func:`curve_keys` tells whether one really does)."""
    manager = QgsApplication.authManager()
    if manager is None or manager.isDisabled():
        return {}
    configs = manager.availableAuthMethodConfigs()
    return {cid: config.name() for cid, config in configs.items() if config.method() == AUTH_METHOD}


def short_key(key: bytes | str | None) -> str:
    """A key shortened for messages (first and last characters), enough to tell two keys apart."""
    if not key:
        return "none"
    text = key.decode("ascii", "replace") if isinstance(key, bytes) else key
    return f"{text[:8]}…{text[-4:]}"
