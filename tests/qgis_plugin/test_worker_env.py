"""The worker's Python from QGIS: probing interpreters, and the *Set up worker…* venv task, for real."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from worker_support import PYTHON

from qgis_plugin.errors import FactSegError

TORCH_PIN = "torch==2.13.0"
#: Where the torch wheel for the set-up test is kept between runs (fetched once with ``pip download``).
WHEEL_CACHE = Path(os.environ.get("FACTSEG_WHEEL_CACHE", Path.home() / ".cache" / "factseg" / "wheels"))


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory) -> str:
    """A real Python without torch, pyzmq or numpy (a fresh venv without system site packages)."""
    from qgis_plugin.worker_python import find_base_python, venv_python

    folder = tmp_path_factory.mktemp("bare") / "env"
    subprocess.run([find_base_python(), "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    return str(venv_python(folder))


def test_the_project_python_can_run_the_worker(qgis_app) -> None:
    from qgis_plugin.worker_python import check_worker_python

    check = check_worker_python(PYTHON)
    assert check.ok, check.message
    assert check.torch.startswith("2.13.0") and check.onnxruntime and check.zmq and check.numpy
    assert check.supports("torch") and check.supports("onnx")
    assert "can run the worker: torch 2.13.0" in check.message


def test_check_python_task_reports_on_the_main_thread(qgis_app, bare_venv) -> None:
    from qgis.core import QgsApplication

    from qgis_plugin.worker_check import CheckPythonTask

    tasks = [CheckPythonTask(PYTHON), CheckPythonTask(bare_venv)]
    delivered: dict[str, object] = {}
    for task in tasks:
        task.checked.connect(lambda check: delivered.__setitem__(check.python, check))
        QgsApplication.taskManager().addTask(task)
    deadline = time.monotonic() + 120
    while len(delivered) < 2 and time.monotonic() < deadline:
        qgis_app.processEvents()
        time.sleep(0.02)
    assert delivered[PYTHON].ok and delivered[PYTHON].torch
    assert not delivered[bare_venv].ok and "lacks torch" in delivered[bare_venv].message


def test_a_python_without_the_stack_says_what_is_missing(qgis_app, bare_venv) -> None:
    from qgis_plugin.worker_python import check_worker_python

    check = check_worker_python(bare_venv)
    assert not check.ok and check.version and check.torch is None and check.zmq is None
    assert not check.supports("torch") and not check.supports("onnx")
    assert check.message == (f"{bare_venv} (Python {check.version}) lacks torch (or onnxruntime), pyzmq, numpy: use "
                             "Set up worker… to make a worker environment, or pip install -r worker-requirements.txt "
                             "into it.")


@pytest.mark.parametrize("python, sentence", [
    ("/nonexistent/bin/python3", "does not exist"),
    ("/bin/true", "is not a Python 3 interpreter FactSeg can use"),
    ("", "No worker Python is set"),
])
def test_things_that_are_not_a_worker_python(qgis_app, python: str, sentence: str) -> None:
    from qgis_plugin.worker_python import check_worker_python

    check = check_worker_python(python)
    assert not check.ok and sentence in check.message


def test_a_base_python_is_found_and_a_missing_one_is_explained(qgis_app) -> None:
    from qgis_plugin.worker_python import MIN_PYTHON, check_worker_python, find_base_python

    found = find_base_python()
    assert tuple(int(v) for v in check_worker_python(found).version.split(".")[:2]) >= MIN_PYTHON
    with pytest.raises(FactSegError, match=r"No Python 3\.10\+ .*(/nonexistent/python3 does not exist).*/bin/true"):
        find_base_python(["/nonexistent/python3", "/bin/true"])


def test_torch_build_follows_the_gpu(qgis_app) -> None:
    from qgis_plugin.worker_setup import TORCH_CPU_INDEX, TORCH_CUDA_INDEX, torch_index_options, torch_requirement

    assert torch_index_options(False, "linux") == ["--extra-index-url", TORCH_CPU_INDEX]
    assert torch_index_options(True, "linux") == []  # PyPI's Linux torch is the CUDA build
    assert torch_index_options(True, "win32") == ["--extra-index-url", TORCH_CUDA_INDEX]
    assert torch_index_options(False, "darwin") == []
    from qgis_plugin.worker_python import worker_requirements_file

    assert torch_requirement(worker_requirements_file()) == TORCH_PIN
    pins = worker_requirements_file().read_text()
    root_pins = (worker_requirements_file().parent / "requirements.txt").read_text()
    for package in ("torch==", "onnxruntime==", "onnx=="):  # the worker's pins are the project's pins
        line = next(line for line in pins.splitlines() if line.startswith(package))
        assert line in root_pins.splitlines(), line


def test_setting_the_default_worker_python(qgis_app, bare_venv) -> None:
    from qgis_plugin.settings import PluginSettings
    from qgis_plugin.worker_python import set_default_worker_python

    before = PluginSettings.load().worker_python
    try:
        set_default_worker_python(bare_venv)
        assert PluginSettings.load().worker_python == bare_venv
    finally:
        set_default_worker_python(before)


def _processes_using(folder: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(folder) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(entry.name)
        except OSError:
            pass
    return found


def test_failed_install_removes_the_venv_and_keeps_a_log(qgis_app, tmp_path) -> None:
    from qgis_plugin.worker_setup import SetupWorkerTask

    empty = tmp_path / "no-wheels"
    empty.mkdir()
    env = tmp_path / "env"
    task = SetupWorkerTask(None, env, gpu=False, torch_options=[], make_default=False,
                           pip_options=["--isolated", "--no-index", "--find-links", str(empty)])
    ok = task.run()
    task.finished(ok)
    assert not ok and not env.exists()
    assert task.error.startswith("Installing torch failed (exit code 1): ERROR: "), task.error
    assert "torch==2.13.0" in task.error and task.error.endswith(f"(log: {task.log_path})")
    assert "--no-index" in task.log_path.read_text()


def test_cancel_kills_pip_and_removes_the_half_made_venv(qgis_app, tmp_path) -> None:
    """pip waits on an index that never answers; cancelling kills it and removes the new venv at once."""
    from qgis_plugin.worker_setup import SetupWorkerTask

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections are accepted by the kernel, nothing is ever answered
    env = tmp_path / "env"
    task = SetupWorkerTask(None, env, gpu=False, torch_options=[], make_default=False, pip_options=[
        "--isolated", "--index-url", f"http://127.0.0.1:{silent.getsockname()[1]}/simple", "--timeout", "300",
        "--retries", "0"])
    outcome = []
    runner = threading.Thread(target=lambda: outcome.append(task.run()))
    try:
        runner.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (task.log_path and task.log_path.exists()
                                                   and "pip install" in task.log_path.read_text()):
            time.sleep(0.2)
        time.sleep(1.0)
        assert _processes_using(env), "pip should be running (waiting on the silent index)"
        started = time.monotonic()
        task.cancel()
        runner.join(timeout=30)
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    assert outcome == [False] and not env.exists()
    assert task.error == "Setting up the worker Python was cancelled; the half-made environment was removed."
    assert not _processes_using(env)


def test_an_existing_folder_is_never_reused(qgis_app, tmp_path) -> None:
    from qgis_plugin.worker_setup import SetupWorkerTask

    (tmp_path / "env").mkdir()
    keep = tmp_path / "env" / "mine.txt"
    keep.write_text("analyst's file")
    task = SetupWorkerTask(sys.executable, tmp_path / "env", gpu=False, make_default=False)
    assert not task.run()
    assert "already exists and is not empty" in task.error and keep.read_text() == "analyst's file"
    from qgis_plugin.worker_setup import free_env_dir

    assert free_env_dir(tmp_path / "env") == tmp_path / "env-2"
    from qgis.core import QgsApplication

    from qgis_plugin.worker_python import default_env_dir

    profile = Path(QgsApplication.qgisSettingsDirPath()).resolve()
    assert default_env_dir().resolve() == profile / "factseg" / "worker-python"


def _torch_wheels(python_version: str) -> Path:
    """A folder holding the torch 2.13.0 wheel for this platform: reused from the cache, else fetched once.

    ``pip download`` honours the machine's pip configuration (find-links, mirrors); PyTorch's CPU index is
    tried first so a fresh CI machine gets the CPU build rather than PyPI's CUDA build.
    """
    tag = "cp" + python_version.replace(".", "")
    if not list(WHEEL_CACHE.glob(f"torch-2.13.0*-{tag}-*.whl")):
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "--python-version", python_version, "-d", str(WHEEL_CACHE),
             "--extra-index-url", "https://download.pytorch.org/whl/cpu", "--retries", "1", "--timeout", "30",
             TORCH_PIN], check=True, timeout=900)
    assert list(WHEEL_CACHE.glob(f"torch-2.13.0*-{tag}-*.whl")), f"no torch 2.13.0 wheel for {tag} in {WHEEL_CACHE}"
    return WHEEL_CACHE


@pytest.mark.slow
def test_set_up_worker_creates_a_venv_that_serves(qgis_app, tmp_path, tiny_checkpoint) -> None:
    """The whole flow: a venv made by the task manager, torch from the local wheel, a worker started from it."""
    from qgis.core import QgsApplication

    from qgis_plugin.local_workers import LocalWorkerSpec, local_endpoint, release
    from qgis_plugin.settings import PluginSettings
    from qgis_plugin.worker_python import check_worker_python, find_base_python
    from qgis_plugin.worker_setup import SetupWorkerTask
    from worker.client import WorkerClient

    base = find_base_python()
    wheels = _torch_wheels(".".join(check_worker_python(base).version.split(".")[:2]))
    before = PluginSettings.load().worker_python
    task = SetupWorkerTask(base, tmp_path / "worker-python", gpu=False, torch_options=[],
                           pip_options=["--find-links", str(wheels)])
    results = []
    task.done.connect(lambda ok, message: results.append((ok, message)))
    QgsApplication.taskManager().addTask(task)
    deadline = time.monotonic() + 600
    try:
        while not results and time.monotonic() < deadline:
            qgis_app.processEvents()
            time.sleep(0.05)
        assert results and results[0][0], (results, task.error)
        python = str(tmp_path / "worker-python" / "bin" / "python")
        assert results[0][1] == (f"The new worker Python {python} has torch 2.13.0+cpu (CPU) and is now the default "
                                 "worker Python.")
        assert PluginSettings.load().worker_python == python
        log = task.log_path.read_text()
        assert "Successfully installed" in log and str(wheels) in log
        spec = LocalWorkerSpec(python, str(tiny_checkpoint), "cpu")
        try:
            with WorkerClient(local_endpoint(spec), timeout_s=30) as client:
                info = client.info()
        finally:
            release(spec)
        assert info["backbone"] == "resnet18" and info["device"] == "cpu" and len(info["classes"]) == 16
    finally:
        from qgis_plugin.worker_python import set_default_worker_python

        set_default_worker_python(before)
