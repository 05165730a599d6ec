"""Which Python can run the worker: probe an interpreter, find a base Python for a new venv, remember the choice.

QGIS's own interpreter normally lacks torch (and on Windows/macOS ``sys.executable`` is the QGIS binary), so
the worker runs in another Python. Before offering one, the plugin asks it, in a subprocess with a timeout,
which version it is and whether it imports torch, onnxruntime, pyzmq and numpy; the answer says what is missing
in one sentence.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qgis.core import QgsApplication, QgsSettings

from .errors import FactSegError
from .settings import SETTINGS_GROUP, plugin_root

MIN_PYTHON = (3, 10)
CHECK_TIMEOUT_S = 90.0  # importing torch from a cold disk can take tens of seconds
REQUIREMENTS_FILE = "worker-requirements.txt"

# Run in the candidate interpreter (-I: no PYTHONPATH, no user site, so QGIS's environment does not leak in).
_PROBE = r"""
import json, sys
out = {"version": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable}
try:
    import venv, ensurepip
    out["venv"] = True
except Exception:
    out["venv"] = False
for name, module in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("zmq", "zmq"), ("numpy", "numpy")):
    if "--version-only" in sys.argv:
        break
    try:
        imported = __import__(module)
        out[name] = str(getattr(imported, "__version__", "") or "?")
        if name == "torch":
            out["cuda"] = bool(imported.cuda.is_available())
        if name == "zmq":
            out["curve"] = bool(imported.has("curve"))
    except Exception as exc:
        out[name] = None
        out[name + "_error"] = ("%s: %s" % (type(exc).__name__, exc))[:300]
print("FACTSEG-PROBE " + json.dumps(out))
"""


@dataclass(frozen=True)
class PythonCheck:
    """What a candidate worker Python offers. ``torch``/``onnxruntime``/``zmq``/``numpy``: version or None."""

    python: str
    ok: bool
    version: str | None
    torch: str | None
    onnxruntime: str | None
    zmq: str | None
    numpy: str | None
    cuda: bool
    message: str

    def supports(self, backend: str) -> bool:
        """Whether it can serve a model of this backend (``torch`` for .pt/.pth, ``onnx`` for .onnx)."""
        engine = self.torch if backend == "torch" else self.onnxruntime
        return self.ok and engine is not None


def _version_tuple(version: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in (version or "").split("."))
    except ValueError:
        return ()


def _probe(python: str, timeout_s: float, version_only: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH")}
    command = [python, "-I", "-c", _PROBE] + (["--version-only"] if version_only else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise FactSegError(f"The worker Python {python} does not exist.") from None
    except PermissionError:
        raise FactSegError(f"The worker Python {python} is not an executable program.") from None
    except subprocess.TimeoutExpired:
        raise FactSegError(f"The worker Python {python} did not answer within {timeout_s:g} s.") from None
    except OSError as exc:
        raise FactSegError(f"The worker Python {python} cannot be run: {exc}.") from None
    for line in done.stdout.splitlines():
        if line.startswith("FACTSEG-PROBE "):
            return json.loads(line[len("FACTSEG-PROBE "):])
    detail = (done.stderr.strip().splitlines() or ["no output"])[-1][:200]
    raise FactSegError(f"{python} is not a Python 3 interpreter FactSeg can use ({detail}).")


def check_worker_python(python: str, timeout_s: float = CHECK_TIMEOUT_S) -> PythonCheck:
    """Ask ``python`` (in a subprocess) what it offers the worker; ``message`` says what is missing, if anything."""
    python = (python or "").strip()
    if not python:
        return PythonCheck("", False, None, None, None, None, None, False, "No worker Python is set.")
    try:
        found = _probe(python, timeout_s)
    except FactSegError as exc:
        return PythonCheck(python, False, None, None, None, None, None, False, str(exc))
    version = found.get("version")
    versions = {name: found.get(name) for name in ("torch", "onnxruntime", "zmq", "numpy")}
    missing = [label for name, label in (("zmq", "pyzmq"), ("numpy", "numpy")) if not versions[name]]
    if not versions["torch"] and not versions["onnxruntime"]:
        missing.insert(0, "torch (or onnxruntime)")
    too_old = _version_tuple(version) < MIN_PYTHON
    ok = not too_old and not missing
    if too_old:
        message = (f"{python} is Python {version}; the worker needs Python "
                   f"{'.'.join(map(str, MIN_PYTHON))} or newer.")
    elif missing:
        message = (f"{python} (Python {version}) lacks {', '.join(missing)}: use Set up worker… to make a worker "
                   f"environment, or pip install -r {REQUIREMENTS_FILE} into it.")
    else:
        engines = [f"torch {versions['torch']} ({'CUDA' if found.get('cuda') else 'CPU'})"] if versions["torch"] else []
        engines += [f"onnxruntime {versions['onnxruntime']}"] if versions["onnxruntime"] else []
        message = f"{python} (Python {version}) can run the worker: {', '.join(engines)}, pyzmq {versions['zmq']}."
    return PythonCheck(python, ok, version, versions["torch"], versions["onnxruntime"], versions["zmq"],
                       versions["numpy"], bool(found.get("cuda")), message)


def base_python_candidates() -> list[str]:
    """Interpreters a worker venv could be made from, most likely first (QGIS's own Python among them)."""
    names = [f"python3.{minor}" for minor in range(14, MIN_PYTHON[1] - 1, -1)] + ["python3", "python"]
    found: list[str] = [shutil.which(name) or "" for name in names]
    base = getattr(sys, "_base_executable", "") or ""
    found += [base, "/usr/bin/python3", "/usr/local/bin/python3"]
    for prefix in {sys.base_prefix, sys.prefix, sys.exec_prefix}:  # QGIS's bundled Python (Windows, macOS)
        found += [str(Path(prefix) / "bin" / "python3"), str(Path(prefix) / "python.exe"),
                  str(Path(prefix) / "python3.exe")]
    unique: list[str] = []
    for path in found:
        if path and Path(path).is_file() and path not in unique:
            unique.append(path)
    return unique


def find_base_python(candidates: Iterable[str] | None = None, timeout_s: float = 20.0) -> str:
    """The first candidate that is Python ≥ 3.10 with ``venv`` and ``ensurepip``; FactSegError listing why not."""
    reasons = []
    for python in candidates if candidates is not None else base_python_candidates():
        try:
            found = _probe(python, timeout_s, version_only=True)
        except FactSegError as exc:
            reasons.append(str(exc).rstrip("."))
            continue
        if _version_tuple(found.get("version")) < MIN_PYTHON:
            reasons.append(f"{python} is Python {found.get('version')}")
        elif not found.get("venv"):
            reasons.append(f"{python} lacks the venv/ensurepip modules (Debian: apt install python3-venv)")
        else:
            return str(found.get("executable") or python)  # the real interpreter, not a launcher or shim
    tried = "; ".join(reasons) or "no python3 on PATH"
    raise FactSegError(f"No Python {'.'.join(map(str, MIN_PYTHON))}+ able to create a virtual environment was "
                       f"found ({tried}): install one, or choose it in Set up worker….")


def nvidia_gpu_present(timeout_s: float = 10.0) -> bool:
    """Whether ``nvidia-smi`` lists at least one GPU (then the CUDA build of torch is worth installing)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and any(line.startswith("GPU ") for line in done.stdout.splitlines())


def venv_python(env_dir: str | os.PathLike) -> Path:
    """The interpreter inside a venv folder (``bin/python`` or, on Windows, ``Scripts\\python.exe``)."""
    env_dir = Path(env_dir)
    return env_dir / "Scripts" / "python.exe" if os.name == "nt" else env_dir / "bin" / "python"


def default_env_dir() -> Path:
    """Where *Set up worker…* puts the worker's venv: a folder of the current QGIS profile."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "factseg" / "worker-python"


def worker_requirements_file() -> Path:
    """The pinned worker requirements shipped with the plugin (repository root, or the installed plugin folder)."""
    return plugin_root() / REQUIREMENTS_FILE


def set_default_worker_python(python: str) -> None:
    """Make ``python`` the worker Python the dialog and ``factseg:segment`` use (PluginSettings.worker_python)."""
    QgsSettings().setValue(f"{SETTINGS_GROUP}/worker_python", str(python))
