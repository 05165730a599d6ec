"""CURVE keys in QGIS's authentication database, used against a real CURVE worker on loopback."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from auth_support import TEST_MASTER_PASSWORD, unlock_test_auth_db
from worker_support import PYTHON, REPO

from qgis_plugin.errors import FactSegError


@pytest.fixture(scope="module")
def key_files(tmp_path_factory) -> dict[str, Path]:
    from worker.keys import generate

    paths = generate(tmp_path_factory.mktemp("keys"), ["analyst"])
    paths.update({f"other_{k}": v for k, v in generate(tmp_path_factory.mktemp("other"), ["stranger"]).items()})
    return paths


@pytest.fixture()
def auth_manager(qgis_app):
    return unlock_test_auth_db()


@pytest.fixture(scope="module")
def curve_worker(tiny_checkpoint, key_files):
    """A real worker that requires CURVE (its own key, the analyst as the one allowed client), on 127.0.0.1."""
    from worker.client import start_local_worker
    from worker.client.keys import load_client_keys, load_public_key

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = start_local_worker(
        PYTHON, str(tiny_checkpoint), f"tcp://127.0.0.1:{port}", device="cpu", pythonpath=str(REPO),
        extra_args=["--curve-secret-key", str(key_files["server_secret"]),
                    "--curve-allowed-clients", str(key_files["server_secret"].parent / "clients")],
        server_public_key=load_public_key(key_files["server_public"]),
        client_keys=load_client_keys(key_files["analyst_secret"]))
    with worker:
        yield f"tcp://127.0.0.1:{port}"


def test_key_files_round_trip_through_the_auth_database(auth_manager, key_files) -> None:
    import zmq.auth

    from qgis_plugin.auth import curve_config_ids, curve_keys, import_key_files

    authcfg = import_key_files("GPU box", key_files["server_public"], key_files["analyst_secret"])
    keys = curve_keys(authcfg)
    public, secret = zmq.auth.load_certificate(str(key_files["analyst_secret"]))
    assert keys.client_public == public and keys.client_secret == secret
    assert keys.server_public == zmq.auth.load_certificate(str(key_files["server_public"]))[0]
    assert all(isinstance(k, bytes) and len(k) == 40 for k in (keys.server_public, *keys.client_keys))
    assert curve_config_ids()[authcfg] == "GPU box"
    assert secret.decode() not in repr(keys)
    # Kept encrypted: the secret is nowhere in the database file in clear text.
    assert secret not in Path(auth_manager.authenticationDatabasePath()).read_bytes()


def test_storing_again_under_the_same_id_replaces_the_keys(auth_manager, key_files) -> None:
    from qgis_plugin.auth import curve_keys, curve_keys_from_files, import_key_files, store_curve_keys

    authcfg = import_key_files("replace me", key_files["server_public"], key_files["analyst_secret"])
    other = curve_keys_from_files(key_files["other_server_public"], key_files["other_stranger_secret"])
    assert store_curve_keys("replaced", other.server_public, other.client_public, other.client_secret,
                            authcfg_id=authcfg) == authcfg
    assert curve_keys(authcfg) == other


@pytest.mark.parametrize("fault, sentence", [
    ("missing_id", "no QGIS authentication configuration with id"),
    ("empty_id", "No authentication configuration is chosen"),
    ("not_curve", "holds no FactSeg CURVE keys"),
    ("wrong_master", "master password was not entered or is wrong"),
])
def test_unusable_configurations_are_one_sentence(auth_manager, key_files, fault: str, sentence: str) -> None:
    from qgis.core import QgsAuthMethodConfig

    from qgis_plugin.auth import curve_keys, import_key_files

    authcfg = {"missing_id": "zz99zz9", "empty_id": ""}.get(fault, "")
    if fault == "not_curve":
        config = QgsAuthMethodConfig("Basic")
        config.setName("a web service")
        config.setConfig("username", "alice")
        config.setConfig("password", "")
        auth_manager.storeAuthenticationConfig(config)
        authcfg = config.id()
    if fault == "wrong_master":
        authcfg = import_key_files("locked", key_files["server_public"], key_files["analyst_secret"])
        auth_manager.clearMasterPassword()
        assert not auth_manager.setMasterPassword("not the master password", True)
    try:
        with pytest.raises(FactSegError, match=sentence) as caught:
            curve_keys(authcfg)
    finally:
        unlock_test_auth_db()
    assert str(caught.value).count(". ") == 0 and str(caught.value).endswith(".")


def test_malformed_keys_and_missing_files_are_one_sentence(auth_manager, key_files, tmp_path) -> None:
    from qgis_plugin.auth import curve_keys_from_files, server_key_from_text_or_file, store_curve_keys

    good = curve_keys_from_files(key_files["server_public"], key_files["analyst_secret"])
    with pytest.raises(FactSegError, match="worker's .server. public key is not a CURVE key: expected 40 Z85 "
                                           "characters, got 39"):
        store_curve_keys("x", good.server_public[:-1], good.client_public, good.client_secret)
    with pytest.raises(FactSegError, match="client secret key is not a CURVE key.*outside the Z85 alphabet"):
        store_curve_keys("x", good.server_public, good.client_public, b"~" * 40)
    with pytest.raises(FactSegError, match="public key does not belong to the client secret key"):
        store_curve_keys("x", good.server_public, good.server_public, good.client_secret)
    with pytest.raises(FactSegError, match=r"client secret key file .*nope.key_secret does not exist"):
        curve_keys_from_files(key_files["server_public"], tmp_path / "nope.key_secret")
    with pytest.raises(FactSegError, match="holds no secret key: give the client's NAME.key_secret"):
        curve_keys_from_files(key_files["server_public"], key_files["analyst_public"])
    garbage = tmp_path / "server.key"
    garbage.write_text("not a key\n")
    with pytest.raises(FactSegError, match="not a CURVE key"):
        curve_keys_from_files(garbage, key_files["analyst_secret"])
    assert server_key_from_text_or_file(good.server_public.decode()) == good.server_public
    assert server_key_from_text_or_file(str(key_files["server_public"])) == good.server_public


def test_a_curve_worker_is_reached_with_keys_from_the_auth_database(auth_manager, key_files, curve_worker) -> None:
    from qgis_plugin.auth import curve_keys, import_key_files
    from qgis_plugin.worker_check import check_worker

    keys = curve_keys(import_key_files("loopback worker", key_files["server_public"], key_files["analyst_secret"]))
    result = check_worker(curve_worker, keys, timeout_s=10)
    assert result.ok, result.message
    assert result.authenticated and result.server_key == keys.server_public.decode()
    assert result.device == "cpu" and len(result.classes) == 16
    assert f"CURVE-authenticated, trusting server key {keys.server_public.decode()}" in result.message


@pytest.mark.parametrize("who, sentence", [
    ("stranger", "does not accept this client key"),
    ("wrong_server_key", "the server key .* is not this worker's public key"),
    ("no_keys", "uses CURVE: give its public key"),
])
def test_wrong_or_missing_keys_are_one_clear_sentence(auth_manager, key_files, curve_worker, who, sentence) -> None:
    from qgis_plugin.auth import curve_keys, import_key_files
    from qgis_plugin.worker_check import check_worker

    files = {"stranger": ("server_public", "other_stranger_secret"),
             "wrong_server_key": ("other_server_public", "analyst_secret")}.get(who)
    keys = curve_keys(import_key_files(who, key_files[files[0]], key_files[files[1]])) if files else None
    result = check_worker(curve_worker, keys, timeout_s=5)
    assert not result.ok and not result.authenticated
    assert result.message.count(". ") == 0 and result.message.endswith(".")
    import re
    assert re.search(sentence, result.message), result.message


def test_check_worker_task_runs_off_the_gui_thread(qgis_app, auth_manager, key_files, curve_worker) -> None:
    from qgis.core import QgsApplication, QgsTask

    from qgis_plugin.auth import curve_keys, import_key_files
    from qgis_plugin.worker_check import CheckWorkerTask

    keys = curve_keys(import_key_files("task", key_files["server_public"], key_files["analyst_secret"]))
    task = CheckWorkerTask(curve_worker, keys, timeout_s=10)
    delivered = []
    task.checked.connect(delivered.append)
    QgsApplication.taskManager().addTask(task)
    import time
    deadline = time.monotonic() + 30
    while not delivered and time.monotonic() < deadline:
        qgis_app.processEvents()
        time.sleep(0.02)
    assert delivered and delivered[0].ok and delivered[0].authenticated, delivered
    assert task.status() == QgsTask.TaskStatus.Complete


def test_a_fresh_profile_without_master_password_says_so_and_keys_survive_a_restart(tmp_path, key_files) -> None:
    """Two separate QGIS sessions on a temporary auth DB (QGIS_AUTH_DB_DIR_PATH): store, then read back."""
    script = textwrap.dedent("""
        import sys
        from qgis.core import QgsApplication
        app = QgsApplication([], False); app.initQgis()
        from qgis_plugin.auth import curve_keys, import_key_files
        from qgis_plugin.errors import FactSegError
        step, password, server, client = sys.argv[1:5]
        manager = QgsApplication.authManager()
        try:
            import_key_files("before", server, client)
        except FactSegError as exc:
            print("ERROR", exc)
        if step == "store":
            assert manager.setMasterPassword(password, True)
            print("ID", import_key_files("box", server, client))
        else:
            if step == "read":
                assert manager.setMasterPassword(password, True)
            ids = [i for i, c in manager.availableAuthMethodConfigs().items() if c.name() == "box"]
            print("SECRET", curve_keys(ids[0]).client_secret.decode())
        app.exitQgis()
    """)
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_AUTH_DB_DIR_PATH": str(tmp_path / "auth"),
           "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path / "profile"), "PYTHONPATH": str(REPO)}
    (tmp_path / "auth").mkdir()
    args = [str(key_files["server_public"]), str(key_files["analyst_secret"])]

    def session(step: str, **extra_env: str) -> str:
        done = subprocess.run([sys.executable, "-c", script, step, TEST_MASTER_PASSWORD, *args], env={**env, **extra_env},
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    first = session("store")
    assert "ERROR No QGIS master password is set up: set one (Settings ▸ Options ▸ Authentication)" in first
    assert "ID " in first
    second = session("read")
    assert "ERROR The QGIS master password was not entered or is wrong" in second
    import zmq.auth
    secret = f"SECRET {zmq.auth.load_certificate(str(key_files['analyst_secret']))[1].decode()}"
    assert secret in second
    # Without a window to ask in (qgis_process, scripts), QGIS reads the master password from a file.
    password_file = tmp_path / "master.txt"
    password_file.write_text(TEST_MASTER_PASSWORD)
    third = session("file", QGIS_AUTH_PASSWORD_FILE=str(password_file))
    assert "ERROR" not in third and secret in third
