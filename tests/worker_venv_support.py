"""A worker Python made only from worker-requirements.txt, as *Set up worker…* makes it, cached between runs.

Building one costs minutes (torch alone is hundreds of MB), so the finished venv is kept under
``~/.cache/factseg-tests/`` (``FACTSEG_TEST_CACHE`` overrides it), in a folder named after a hash of the
requirements file and the base Python: a changed pin builds a new one, an unchanged one is reused at once. A
``.complete`` marker is written last, so a build that was interrupted is never taken for a usable venv; a lock
keeps two test runs from building the same folder at once.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("FACTSEG_TEST_CACHE", Path.home() / ".cache" / "factseg-tests"))
REQUIREMENTS = REPO_ROOT / "worker-requirements.txt"


def _key(base_python: str) -> str:
    version = subprocess.run([base_python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    digest = hashlib.sha256(REQUIREMENTS.read_bytes() + version.encode()).hexdigest()
    return digest[:16]


def requirements_only_python() -> str:
    """The interpreter of a venv holding exactly worker-requirements.txt (skips the test where pip cannot build
    one, with pip's reason)."""
    from qgis_plugin.worker_python import venv_python
    from qgis_plugin.worker_setup import SetupWorkerTask

    base = str(Path(sys.executable).resolve())  # the tests' own Python: the one this machine's torch wheel fits
    env = CACHE / f"worker-venv-{_key(base)}"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{env.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (env / ".complete").is_file():
            return str(venv_python(env))
        shutil.rmtree(env, ignore_errors=True)  # an interrupted build of ours (no marker): start again
        # torch_options=[]: pip's own configuration finds torch 2.13.0 (here, the CPU wheel on local disk).
        task = SetupWorkerTask(base, env, gpu=False, torch_options=[], make_default=False,
                               log_path=CACHE / f"{env.name}-setup.log")
        if not task.run():
            pytest.skip(f"pip could not build a worker Python from worker-requirements.txt: {task.error}")
        (env / ".complete").write_text(REQUIREMENTS.read_text())
        return str(task.python)


def installed_plugin(tmp: Path) -> tuple[dict[str, str], Path]:
    """The plugin built with scripts/build_plugin.sh and unpacked into a throw-away QGIS profile, enabled for
    qgis_process.bin with QGIS's own Python (no .venv, no PYTHONPATH). Returns (environment, plugin folder)."""
    from plugin_support import build_plugin_zip, unpack_plugin

    folder = unpack_plugin(build_plugin_zip(tmp), tmp / "plugins")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(QT_QPA_PLATFORM="offscreen", QGIS_PLUGINPATH=str(folder.parent),
               QGIS_CUSTOM_CONFIG_PATH=str(tmp / "profile"), PATH="/usr/bin:/bin")
    subprocess.run(["/usr/bin/qgis_process.bin", "plugins", "enable", "factseg"], env=env, check=True,
                   capture_output=True, text=True, timeout=120, cwd=tmp)
    return env, folder
