"""The worker's environment as the plugin sees it: one import point for the dialog and Processing.

``check_worker_python`` (is this interpreter usable?), ``SetupWorkerTask`` (make one), ``CheckWorkerTask``
(is the worker there, and is the link authenticated?). The pieces live in ``worker_python``, ``worker_setup``
and ``worker_check``; this module only gathers them.
"""
from __future__ import annotations

from .worker_check import CheckPythonTask, CheckWorkerTask, WorkerCheck, check_worker, explain_link_error, is_loopback
from .worker_python import (
    MIN_PYTHON,
    PythonCheck,
    base_python_candidates,
    check_worker_python,
    default_env_dir,
    find_base_python,
    nvidia_gpu_present,
    set_default_worker_python,
    venv_python,
    worker_requirements_file,
)
from .worker_setup import SetupWorkerTask, torch_index_options

__all__ = [
    "MIN_PYTHON",
    "CheckPythonTask",
    "CheckWorkerTask",
    "PythonCheck",
    "SetupWorkerTask",
    "WorkerCheck",
    "base_python_candidates",
    "check_worker",
    "check_worker_python",
    "default_env_dir",
    "explain_link_error",
    "find_base_python",
    "is_loopback",
    "nvidia_gpu_present",
    "set_default_worker_python",
    "torch_index_options",
    "venv_python",
    "worker_requirements_file",
]
