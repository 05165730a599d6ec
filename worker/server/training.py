"""Fine-tuning on the worker: the ``train_*`` operations (see ``worker.client.training_protocol``).

A worker runs at most one training job at a time. The uploaded export lands in a private temporary folder; the
training itself runs as a child process (``python -m training.train``), so the worker's socket thread keeps
answering (status, cancel, info, ping) and a crash or an out-of-memory in training cannot take the service down.
While a job uploads or trains, segmentation requests are refused with ``busy_training`` and the ETA: on one GPU,
serving and training at once would make both slow and could run the card out of memory.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..client import training_protocol as T
from ..client.protocol import ProtocolError, Request

REPO_ROOT = Path(__file__).resolve().parents[2]
#: An upload that stops for this long, or a result nobody fetches within RESULT_KEEP_S, is dropped.
UPLOAD_IDLE_S = 15 * 60
RESULT_KEEP_S = 60 * 60
#: The trainer's plain log line (training/train.py): "iter 20/600 loss 0.4321 … eta 0:01:02".
LOG_LINE = re.compile(r"iter (\d+)/(\d+) loss ([-+0-9.eEnaif]+).*?eta (\d+):(\d\d):(\d\d)")


@dataclass
class TrainingJob:
    """One upload-then-train job and its files under ``folder`` (``data/`` uploaded, ``run/`` the work dir)."""

    id: str
    folder: Path
    request: T.TrainBegin
    received: dict[str, int] = field(default_factory=dict)
    state: str = "uploading"
    process: subprocess.Popen | None = None
    started: float = 0.0
    touched: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    error: str = ""

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def run(self) -> Path:
        return self.folder / "run"

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class TrainingManager:
    """The worker's training jobs (at most one alive). Called from the worker's socket thread only."""

    def __init__(self, served_model: str | os.PathLike, device: str = "auto", python: str = sys.executable,
                 temp_root: str | os.PathLike | None = None) -> None:
        # Absolute: the training process runs from the repository, not from the worker's working directory.
        self.served_model = Path(served_model).resolve() if str(served_model) else Path()
        self.device = device
        self.python = python
        self.temp_root = temp_root
        self.job: TrainingJob | None = None

    # -- what the rest of the worker asks ------------------------------------------------------------------

    def busy_message(self) -> str | None:
        """Why segmentation is refused now (None when no job uploads or trains)."""
        job = self._live_job()
        if job is None or job.final:
            return None
        if job.state == "uploading":
            return "busy training: a training job is uploading its data; try again after it has trained"
        progress = self._progress(job)
        eta = progress.get("eta_s")
        total = progress.get("iterations", job.request.iterations)
        return (f"busy training (iteration {progress.get('iteration', 0)}/{total}"
                f"{f', ETA {eta:.0f} s' if eta is not None else ''}); try again then, or use another worker")

    def status_fields(self) -> dict[str, Any]:
        """A summary for ``info``/``ping`` replies."""
        job = self._live_job()
        return {"training": None if job is None else {"job": job.id, **self._status(job)}}

    def handle(self, request: Request) -> tuple[dict, dict | None]:
        """Reply fields (and arrays) of one typed ``train_*`` request; ProtocolError for every refusal."""
        if isinstance(request, T.TrainBegin):
            return self._begin(request), None
        if isinstance(request, T.TrainFile):
            return self._file(request, request.data), None
        if isinstance(request, T.TrainResult):
            return self._result(request)
        job = self._job(request.job)  # type: ignore[attr-defined]
        if isinstance(request, T.TrainStart):
            return self._start(job), None
        if isinstance(request, T.TrainCancel):
            self.cancel(job)
            return {"state": job.state}, None
        return self._status(job), None

    def close(self) -> None:
        """Worker shutdown: stop a running training and remove every job folder."""
        if self.job is not None:
            self.cancel(self.job)
            self._drop()

    # -- operations -----------------------------------------------------------------------------------------

    def _begin(self, request: T.TrainBegin) -> dict[str, Any]:
        live = self._live_job()
        if live is not None and not live.final:
            raise ProtocolError(self.busy_message() or "busy training", "busy_training")
        self._drop()
        if request.init_from == "served" and self.served_model.suffix.lower() not in (".pt", ".pth"):
            raise ProtocolError(f"this worker serves {self.served_model.name}, which cannot be fine-tuned: upload a "
                                "checkpoint to start from (init_from 'upload') or train from scratch", "training_failed")
        folder = Path(tempfile.mkdtemp(prefix="factseg-train-", dir=self.temp_root))
        (folder / "data").mkdir()
        self.job = TrainingJob(uuid.uuid4().hex, folder, request)
        return {"job": self.job.id, "piece_bytes": T.PIECE_BYTES, "state": "uploading"}

    def _file(self, request: T.TrainFile, data: np.ndarray) -> dict[str, Any]:
        job = self._job(request.job)
        if job.state != "uploading":
            raise ProtocolError(f"training job is {job.state}: files can only be sent before train_start", "bad_file")
        have = job.received.get(request.name)
        if have is None:
            if len(job.received) >= job.request.files:
                raise ProtocolError(f"more files than the {job.request.files} announced in train_begin", "too_large")
            have = 0
        end = request.offset + data.size
        if end <= have:  # a resent piece (the client retried after a timeout): already written
            return {"received": have}
        if request.offset != have:
            raise ProtocolError(f"pieces of {request.name} must arrive in order: expected offset {have}", "bad_file")
        if sum(job.received.values()) + data.size > job.request.bytes:
            raise ProtocolError(f"more bytes than the {job.request.bytes} announced in train_begin", "too_large")
        path = job.data / request.name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as handle:
            handle.write(memoryview(np.ascontiguousarray(data)).cast("B"))
        job.received[request.name] = end
        return {"received": end}

    def _start(self, job: TrainingJob) -> dict[str, Any]:
        if job.state != "uploading":
            return {"state": job.state}  # a resent start
        missing = job.request.files - len(job.received)
        if missing or sum(job.received.values()) != job.request.bytes:
            raise ProtocolError(f"the upload is incomplete ({len(job.received)} of {job.request.files} files, "
                                f"{sum(job.received.values())} of {job.request.bytes} bytes)", "bad_file")
        _check_export(job.data)
        # An uploaded config.yaml, else the named preset, which training.train resolves (auto: by its device).
        config = job.data / "config.yaml" if "config.yaml" in job.received else job.request.preset
        init = {"served": self.served_model, "upload": job.data / "init.pt", "scratch": None}[job.request.init_from]
        if init is not None and not Path(init).is_file():
            raise ProtocolError("init_from 'upload' needs the file init.pt in the upload", "bad_file")
        command = [self.python, "-m", "training.train", "--config", str(config), "--data-root", str(job.data),
                   "--work-dir", str(job.run), "--device", self.device]
        if job.request.iterations:  # 0: the recipe's own length
            command += ["--max-iters", str(job.request.iterations)]
        if init is not None:
            command += ["--init-from", str(init)]
        job.run.mkdir()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        with open(job.folder / "process.log", "wb") as log:
            job.process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
        job.state, job.started = "running", time.monotonic()
        return {"state": job.state}

    def _status(self, job: TrainingJob) -> dict[str, Any]:
        self._poll(job)
        fields: dict[str, Any] = {"state": job.state, "iterations": job.request.iterations}
        if job.state == "uploading":
            fields.update(files=len(job.received), bytes=sum(job.received.values()))
        fields.update(self._progress(job))
        if job.state == "failed":
            fields["error"] = job.error
        if job.state == "done":
            fields["size"] = (job.run / "final.pt").stat().st_size
        return fields

    def _result(self, request: T.TrainResult) -> tuple[dict, dict]:
        job = self._job(request.job)
        self._poll(job)
        if job.state != "done":
            raise ProtocolError(f"training job is {job.state}; it has no model (yet)", "no_result")
        path = job.run / "final.pt"
        size = path.stat().st_size
        if request.offset > size:
            raise ProtocolError(f"offset {request.offset} is beyond the model's {size} bytes", "bad_header")
        with open(path, "rb") as handle:
            handle.seek(request.offset)
            piece = np.frombuffer(handle.read(T.PIECE_BYTES), dtype=np.uint8)
        reply: dict[str, Any] = {"size": size, "offset": request.offset}
        if request.offset == 0:
            reply["eval"] = _read_json(job.run / "eval_val.json")
        return reply, {"data": piece}

    def cancel(self, job: TrainingJob) -> None:
        """Stop the job's training process (its whole process group) and mark it cancelled."""
        if job.final:
            return
        process = job.process
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait(timeout=10)
        job.state, job.finished = "cancelled", time.monotonic()
        shutil.rmtree(job.run, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------------------

    def _job(self, job_id: str) -> TrainingJob:
        job = self._live_job()
        if job is None or job.id != job_id:
            raise ProtocolError("no such training job on this worker (finished long ago, or the worker restarted)",
                                "unknown_job")
        job.touched = time.monotonic()
        return job

    def _live_job(self) -> TrainingJob | None:
        """The current job, after dropping an abandoned upload or an unfetched old result."""
        job = self.job
        if job is None:
            return None
        self._poll(job)
        idle = time.monotonic() - job.touched
        if (job.state == "uploading" and idle > UPLOAD_IDLE_S) or (job.final and idle > RESULT_KEEP_S):
            self._drop()
            return None
        return job

    def _poll(self, job: TrainingJob) -> None:
        if job.state != "running" or job.process is None or job.process.poll() is None:
            return
        job.finished = time.monotonic()
        if job.process.returncode == 0 and (job.run / "final.pt").is_file():
            job.state = "done"
        else:
            job.state = "failed"
            job.error = _last_error(job.folder / "process.log", job.process.returncode)

    def _progress(self, job: TrainingJob) -> dict[str, Any]:
        """Iteration, loss and ETA from the trainer's log (empty before its first log line)."""
        if job.state not in ("running", "done"):
            return {}
        matches = list(LOG_LINE.finditer(_tail(job.run / "train.log")))
        match = matches[-1] if matches else None
        progress: dict[str, Any] = {"elapsed_s": round((job.finished or time.monotonic()) - job.started, 1)}
        if match is not None:
            h, m, s = (int(v) for v in match.groups()[3:])
            progress.update(iteration=int(match.group(1)), iterations=int(match.group(2)), loss=_finite(match.group(3)),
                            eta_s=0.0 if job.state == "done" else float(3600 * h + 60 * m + s))
        return progress

    def _drop(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            if not job.final:
                self.cancel(job)
            shutil.rmtree(job.folder, ignore_errors=True)


def _check_export(data: Path) -> None:
    """The uploaded folder has an export's shape: a class table and training pairs."""
    try:
        table = json.loads((data / "classes.json").read_text(encoding="utf-8"))
        ok = isinstance(table, list) and all(isinstance(row, dict) and {"id", "name", "color"} <= set(row)
                                             for row in table) and len(table) >= 2
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise ProtocolError("classes.json is missing or is not a class table (a list of {id, name, color})",
                            "bad_file")
    if not any((data / "train" / "images").glob("*.png")):
        raise ProtocolError("the upload has no training images (train/images/*.png)", "bad_file")


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, size: int = 16384) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_error(log: Path, code: int | None) -> str:
    lines = [line.strip() for line in _tail(log).splitlines() if line.strip()]
    last = lines[-1] if lines else "no output"
    return f"training stopped with exit code {code}: {last[:400]}"


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
