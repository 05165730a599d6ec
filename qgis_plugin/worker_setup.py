"""*Set up worker…*: a dedicated venv for the worker, with the pinned requirements, as a cancellable QgsTask.

Steps: find (or take) a Python ≥ 3.10, ``python -m venv`` into a fresh folder of the QGIS profile, ``pip
install`` torch alone (the CUDA build when ``nvidia-smi`` lists a GPU, else the CPU build from PyTorch's CPU
index), then the rest of ``worker-requirements.txt``, then probe the new interpreter. Every command and its
output go to a log file. Cancel kills pip's whole process group and removes the half-made venv; a failure
removes it too, so no broken environment is ever left looking usable. An existing folder is never touched:
the task picks the next free name (``worker-python-2``…), or refuses a given folder that is not empty.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from .errors import FactSegError, JobCancelled
from .worker_python import (
    PythonCheck,
    check_worker_python,
    default_env_dir,
    find_base_python,
    nvidia_gpu_present,
    set_default_worker_python,
    venv_python,
    worker_requirements_file,
)

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
#: Linux wheels of torch on PyPI are the CUDA build already; Windows needs PyTorch's CUDA index.
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"
PIP_BASE = ("-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off")
#: Progress (percent) at which each step starts; pip's "Collecting" lines move it on within a step.
_STEPS = {"venv": 2.0, "torch": 12.0, "rest": 60.0, "verify": 92.0}


def torch_index_options(gpu: bool, platform: str = sys.platform) -> list[str]:
    """pip options that select the right torch build: CPU index without a GPU (not on macOS), CUDA on Windows."""
    if platform == "darwin":
        return []  # PyPI's macOS wheels are the CPU/MPS build
    if not gpu:
        return ["--extra-index-url", TORCH_CPU_INDEX]
    return ["--extra-index-url", TORCH_CUDA_INDEX] if platform.startswith("win") else []


def torch_requirement(requirements: Path) -> str:
    """The ``torch==…`` line of the requirements file (installed first, with its own index options)."""
    for line in requirements.read_text(encoding="utf-8").splitlines():
        spec = line.split("#", 1)[0].strip()
        if re.match(r"^torch\s*(==|>=|~=|<|$)", spec):
            return spec
    raise FactSegError(f"{requirements} names no torch version.")


def free_env_dir(wanted: Path) -> Path:
    """``wanted`` if it does not exist, else the first of ``wanted-2``, ``wanted-3``… that does not."""
    if not wanted.exists():
        return wanted
    for number in range(2, 1000):
        candidate = wanted.with_name(f"{wanted.name}-{number}")
        if not candidate.exists():
            return candidate
    raise FactSegError(f"Too many worker environments beside {wanted}: remove old ones.")


class SetupWorkerTask(QgsTask):
    """Create a worker venv and install the pinned worker requirements; on success it is the default worker Python.

    ``python``: the base interpreter (found with :func:`find_base_python` when None). ``env_dir``: the venv
    folder (default: a free name under the profile's ``factseg/``). ``gpu``: install the CUDA build (None:
    ask ``nvidia-smi``). ``pip_options`` go to every pip call (e.g. ``--find-links DIR``, ``--index-url URL``,
    ``--no-index`` for offline machines); ``torch_options`` replace the automatic torch index choice.
    After the task, ``python`` is the new interpreter, ``check`` its probe, ``error`` the reason of a failure.
    """

    done = pyqtSignal(bool, str)  # (ok, one-sentence message), emitted on the main thread

    def __init__(
        self,
        python: str | None = None,
        env_dir: str | os.PathLike | None = None,
        *,
        gpu: bool | None = None,
        pip_options: Sequence[str] = (),
        torch_options: Sequence[str] | None = None,
        requirements: str | os.PathLike | None = None,
        log_path: str | os.PathLike | None = None,
        make_default: bool = True,
        on_log: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__("Set up a FactSeg worker Python", QgsTask.Flag.CanCancel)
        self.base_python = python
        self.wanted_dir = Path(env_dir) if env_dir else None
        self.gpu = gpu
        self.pip_options = list(pip_options)
        self.torch_options = None if torch_options is None else list(torch_options)
        self.requirements = Path(requirements) if requirements else worker_requirements_file()
        self.log_path = Path(log_path) if log_path else None
        self.make_default = make_default
        self.on_log = on_log
        self.env_dir: Path | None = None
        self.python: str | None = None
        self.check: PythonCheck | None = None
        self.error: str | None = None
        self.gpu_found = False
        self.message = ""
        self._process: subprocess.Popen | None = None
        self._created = False
        self._existed = False
        self._log = None

    # -- QgsTask --------------------------------------------------------------------------------------------

    def run(self) -> bool:
        try:
            self.env_dir = self._choose_dir()
            self.log_path = self.log_path or self.env_dir.with_name(f"{self.env_dir.name}-setup.log")
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "w", encoding="utf-8") as self._log:
                self._build()
            return True
        except JobCancelled as exc:
            self.error = str(exc)
        except FactSegError as exc:
            self.error = f"{exc} (log: {self.log_path})" if self.log_path else str(exc)
        except Exception as exc:  # noqa: BLE001 (a task must not raise; the reason goes to the user)
            self.error = f"Setting up the worker Python failed unexpectedly: {type(exc).__name__}: {exc}."
        finally:
            self._log = None
        self._remove_half_made()
        return False

    def finished(self, result: bool) -> None:
        """On the main thread: store the new default worker Python, tell the dialog."""
        if result and self.python and self.make_default:
            set_default_worker_python(self.python)
        if result and self.check is not None:
            build = "CUDA" if self.check.cuda else "CPU"
            default = " and is now the default worker Python" if self.make_default else ""
            unused_gpu = (" (an NVIDIA GPU is present but this torch cannot use it: update the NVIDIA driver)"
                          if self.gpu_found and not self.check.cuda else "")
            self.message = (f"The new worker Python {self.python} has torch {self.check.torch} ({build}){default}"
                            f"{unused_gpu}.")
        else:
            self.message = self.error or "Setting up the worker Python was cancelled."
        self.done.emit(bool(result), self.message)

    def cancel(self) -> None:
        super().cancel()
        self._kill()

    # -- steps ----------------------------------------------------------------------------------------------

    def _choose_dir(self) -> Path:
        if self.wanted_dir is None:
            return free_env_dir(default_env_dir())
        if self.wanted_dir.exists() and (not self.wanted_dir.is_dir() or any(self.wanted_dir.iterdir())):
            raise FactSegError(f"{self.wanted_dir} already exists and is not empty: choose a new folder for the "
                               "worker environment.")
        return self.wanted_dir

    def _build(self) -> None:
        if not self.requirements.is_file():
            raise FactSegError(f"The worker requirements file {self.requirements} is missing from the plugin.")
        base = self.base_python or find_base_python()
        gpu = self.gpu_found = nvidia_gpu_present() if self.gpu is None else self.gpu
        torch_options = torch_index_options(gpu) if self.torch_options is None else self.torch_options
        self._write(f"# base Python {base}; NVIDIA GPU: {gpu}; venv {self.env_dir}\n")
        self._step("venv", "Creating the virtual environment")
        self._existed = self.env_dir.exists()  # an empty folder the user chose: emptied again on failure
        self._created = True
        self._run([base, "-m", "venv", str(self.env_dir)], "creating the virtual environment")
        python = str(venv_python(self.env_dir))
        self._step("torch", f"Installing {'the CUDA' if gpu else 'the CPU'} build of torch")
        self._run([python, *PIP_BASE, *self.pip_options, *torch_options, torch_requirement(self.requirements)],
                  "installing torch", until=_STEPS["rest"])
        self._step("rest", "Installing the other worker requirements")
        self._run([python, *PIP_BASE, *self.pip_options, "-r", str(self.requirements)],
                  "installing the worker requirements", until=_STEPS["verify"])
        self._step("verify", "Checking the new worker Python")
        self.check = check_worker_python(python)
        self._write(f"# check: {self.check.message}\n")
        if not self.check.ok or not self.check.torch:
            raise FactSegError(f"The new environment does not work: {self.check.message}")
        self.python = python
        self.setProgress(100.0)

    def _step(self, step: str, text: str) -> None:
        self._check_cancel()
        self.setProgress(_STEPS[step])
        self._write(f"# {text}\n")

    def _run(self, command: list[str], what: str, until: float | None = None) -> None:
        """Run ``command`` with its output in the log; progress creeps towards ``until`` on each package line."""
        self._check_cancel()
        self._write("$ " + " ".join(command) + "\n")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
        env["PYTHONUNBUFFERED"] = "1"
        popen_options = ({"start_new_session": True} if os.name != "nt"
                         else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP})
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                             stderr=subprocess.STDOUT, text=True, errors="replace", env=env,
                                             **popen_options)
        except OSError as exc:
            raise FactSegError(f"Could not start {command[0]} for {what}: {exc}.") from None
        tail: list[str] = []
        reader = threading.Thread(target=self._pump, args=(self._process, tail, until), daemon=True)
        reader.start()
        while self._process.poll() is None:
            if self.isCanceled():
                self._kill()
            time.sleep(0.1)
        reader.join(timeout=5)
        code = self._process.returncode
        self._process = None
        self._check_cancel()
        if code != 0:
            errors = [line for line in tail if line.startswith("ERROR:")]  # pip's first error says the most
            last = errors[0] if errors else next((line for line in reversed(tail) if line.strip()), "no output")
            raise FactSegError(f"{what.capitalize()} failed (exit code {code}): {last.strip()[:240]}")

    def _pump(self, process: subprocess.Popen, tail: list[str], until: float | None) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._write(line)
            tail.append(line)
            del tail[:-20]
            if until is not None and line.startswith(("Collecting", "Installing collected", "Successfully")):
                self.setProgress(self.progress() + (until - self.progress()) * 0.15)

    def _write(self, text: str) -> None:
        if self._log is not None:
            self._log.write(text)
            self._log.flush()
        if self.on_log is not None:
            self.on_log(text)

    def _check_cancel(self) -> None:
        if self.isCanceled():
            raise JobCancelled("Setting up the worker Python was cancelled; the half-made environment was removed.")

    def _kill(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            if os.name == "nt":
                process.kill()
            else:
                os.killpg(process.pid, signal.SIGKILL)  # pip and anything it started (builds, downloads)
        except (ProcessLookupError, PermissionError):
            pass

    def _remove_half_made(self) -> None:
        if self._created and self.env_dir is not None and self.env_dir.exists():
            shutil.rmtree(self.env_dir, ignore_errors=True)
            if self._existed:
                self.env_dir.mkdir(exist_ok=True)
