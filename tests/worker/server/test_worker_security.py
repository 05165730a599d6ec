"""Security: CURVE-protected workers refuse strangers; exposed binds without keys are refused at start."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import zmq
from worker_support import PYTHON, REPO

from worker.client import WorkerClient, start_local_worker
from worker.client.keys import load_client_keys, load_public_key
from worker.client.protocol import WorkerUnavailable
from worker.keys import generate


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    paths = generate(folder, ["alice"])
    paths.update({f"mallory_{k}": v for k, v in generate(tmp_path_factory.mktemp("other"), ["mallory"]).items()})
    return paths


@pytest.fixture(scope="module")
def curve_worker(tiny_checkpoint, keys):
    """A worker bound to every interface (allowed: it has CURVE keys), reached here through loopback."""
    port = _free_port()
    worker = start_local_worker(
        PYTHON, str(tiny_checkpoint), f"tcp://0.0.0.0:{port}", device="cpu", pythonpath=str(REPO),
        extra_args=["--curve-secret-key", str(keys["server_secret"]),
                    "--curve-allowed-clients", str(keys["server_secret"].parent / "clients")],
        server_public_key=load_public_key(keys["server_public"]), client_keys=load_client_keys(keys["alice_secret"]),
    )
    with worker:
        yield worker, f"tcp://127.0.0.1:{port}"


def test_secret_files_are_private_and_loadable(keys) -> None:
    assert keys["server_secret"].stat().st_mode & 0o077 == 0
    assert keys["alice_secret"].stat().st_mode & 0o077 == 0
    public, secret = load_client_keys(keys["alice_secret"])
    assert len(public) == len(secret) == 40
    assert load_public_key(keys["alice_public"]) == public


def test_curve_worker_serves_the_allowed_client(curve_worker, keys) -> None:
    _, endpoint = curve_worker
    server_key = load_public_key(keys["server_public"])
    with WorkerClient(endpoint, timeout_s=10, retries=1, server_public_key=server_key,
                      client_keys=load_client_keys(keys["alice_secret"])) as client:
        assert client.info()["backbone"] == "resnet18"


@pytest.mark.parametrize("who", ["stranger", "no_curve", "wrong_server_key"])
def test_curve_worker_refuses_clients_without_the_right_keys(curve_worker, keys, who: str) -> None:
    _, endpoint = curve_worker
    server_key = load_public_key(keys["server_public"])
    options = {
        "stranger": {"server_public_key": server_key, "client_keys": load_client_keys(keys["mallory_mallory_secret"])},
        "no_curve": {},
        "wrong_server_key": {"server_public_key": load_public_key(keys["mallory_server_public"]),
                             "client_keys": load_client_keys(keys["alice_secret"])},
    }[who]
    reason = {"stranger": "refused our CURVE key", "no_curve": "handshake with .* failed",
              "wrong_server_key": "handshake with .* failed"}[who]
    started = time.monotonic()
    with WorkerClient(endpoint, timeout_s=10, retries=2, **options) as client:
        with pytest.raises(WorkerUnavailable, match=reason):
            client.info()
    assert time.monotonic() - started < 5  # told at once by the handshake, not after the timeouts


def test_plaintext_peer_gets_nothing_from_a_curve_worker(curve_worker) -> None:
    _, endpoint = curve_worker
    ctx = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send_multipart([b'{"v": 2, "op": "info", "id": "x"}'])
        assert not sock.poll(1000)
        sock.close()
    finally:
        ctx.term()


@pytest.mark.parametrize("bind", ["tcp://0.0.0.0:{port}", "tcp://*:{port}", "tcp://[::]:{port}"])
def test_exposed_bind_without_keys_is_refused_at_start(tiny_checkpoint, bind: str) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "worker", "--bind", bind.format(port=_free_port()), "--model", str(tiny_checkpoint)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "refusing to bind" in result.stderr and "--curve-secret-key" in result.stderr
    assert "python -m worker.keys" in result.stderr


def test_half_configured_curve_is_refused(tiny_checkpoint, keys) -> None:
    result = subprocess.run(
        [PYTHON, "-m", "worker", "--bind", "tcp://127.0.0.1:1", "--model", str(tiny_checkpoint),
         "--curve-secret-key", str(keys["server_secret"])],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "needs both" in result.stderr


@pytest.mark.parametrize(
    "bind",
    [
        "tcp://0.0.0.0:{port}@127.0.0.1",  # libzmq binds 0.0.0.0; a URL parser reads host 127.0.0.1
        "tcp://*:{port}@127.0.0.1",
        "tcp://[::]:{port}@127.0.0.1",
        "tcp://[::]:{port}@[::1]",
        "tcp://x@127.0.0.1:{port}",
        "tcp://127.0.0.1;0.0.0.0:{port}",
        "tcp://0.0.0.0:{port};127.0.0.1",
        "tcp://eth0:{port}",  # interface names may be anything: only loopback literals pass without CURVE
        "tcp://lo:{port}",
        "tcp://gpu-box.example:{port}",  # a host name may resolve anywhere
        "tcp://[::ffff:0.0.0.0]:{port}",
        "tcp://127.0.0.1:{port}x",
    ],
)
def test_loopback_bypass_strings_are_refused_at_start(tiny_checkpoint, bind: str) -> None:
    port = _free_port()
    result = subprocess.run(
        [PYTHON, "-m", "worker", "--bind", bind.format(port=port), "--model", str(tiny_checkpoint)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr[-500:]
    assert "refusing to bind" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one sentence, no traceback
    with socket.socket() as probe:  # nothing was left listening on the port
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_a_worker_bound_to_a_loopback_alias_reports_its_real_address(tiny_checkpoint) -> None:
    """The address is checked after binding too (LAST_ENDPOINT); a loopback one passes and is what info shows."""
    from worker_support import start_worker

    port = _free_port()
    with start_worker(tiny_checkpoint, f"tcp://127.0.0.2:{port}") as worker:
        assert f'"endpoint": "tcp://127.0.0.2:{port}"' in worker.log_path.read_text()


def test_python_m_worker_keys_still_writes_the_key_files(tmp_path: Path) -> None:
    result = subprocess.run([PYTHON, "-m", "worker.keys", "--out", str(tmp_path), "--client", "bob"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "server.key_secret").is_file() and (tmp_path / "clients" / "bob.key").is_file()
    assert load_client_keys(tmp_path / "bob.key_secret")[0] == load_public_key(tmp_path / "clients" / "bob.key")
