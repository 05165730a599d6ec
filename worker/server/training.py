"""Fine-tuning on the worker: the ``train_*`` operations (see ``worker.client.training_protocol``).

A worker runs at most one training job at a time. The uploaded export lands in a private, locked job folder
(:mod:`.training_jobs`); the training runs as a child process (``python -m training.train``) that dies with
the worker, so the socket thread keeps answering and a crash or an out-of-memory in training cannot take the
service down. While a job uploads or trains, segmentation requests are refused with ``busy_training`` and the
ETA: on one GPU, serving and training at once would make both slow and could run the card out of memory.

Trust: a job belongs to the client that began it (its token, and its CURVE key when CURVE is on); every other
peer is answered ``not_owner``. The configuration is built here from a preset name and checked keys
(:mod:`.training_config`), so no path a client sends reaches the trainer. Progress and failures come from the
trainer's events file (:mod:`.training_events`).
"""
from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..client import training_protocol as T
from ..client.protocol import ProtocolError, Request
from ..contract import CLASSES_FILE, IMAGES_DIR, SPLITS, check_dataset_table
from .logs import log_event
from .training_config import build_job_config, check_overrides, read_uploaded_config
from .training_events import EventReader
from .training_jobs import JobFolder, check_space, disk_full, sweep_dead_jobs, train_root, write_piece

REPO_ROOT = Path(__file__).resolve().parents[2]
#: An upload with no piece for UPLOAD_IDLE_S is dropped (on a timer); a result nobody fetches is kept RESULT_KEEP_S
#: after the job ended (or after its last piece was fetched), and FETCHED_KEEP_S once it was fetched whole.
UPLOAD_IDLE_S = 15 * 60
RESULT_KEEP_S = 60 * 60
FETCHED_KEEP_S = 5 * 60
#: The training child learns its parent from this variable and dies with it (training/lifeline.py).
PARENT_ENV = "FACTSEG_TRAIN_PARENT"


@dataclass
class TrainingJob:
    """One upload-then-train job and its files under ``folder`` (``data/`` uploaded, ``run/`` the work dir)."""

    id: str
    token: str
    owner_key: str | None
    folder: JobFolder
    request: T.TrainBegin
    declared: dict[str, int] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)
    state: str = "uploading"
    process: subprocess.Popen | None = None
    started: float = 0.0
    touched: float = field(default_factory=time.monotonic)
    finished: float = 0.0
    fetched: bool = False
    error: str = ""
    error_code: str = ""
    events: EventReader | None = None

    @property
    def data(self) -> Path:
        return self.folder.path / "data"

    @property
    def run(self) -> Path:
        return self.folder.path / "run"

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class TrainingManager:
    """The worker's training jobs (at most one alive). Called from the worker's socket thread only."""

    def __init__(self, served_model: str | os.PathLike, device: str = "auto", python: str = sys.executable,
                 temp_root: str | os.PathLike | None = None, upload_idle_s: float = UPLOAD_IDLE_S,
                 threads: int | None = None) -> None:
        # Absolute: the training process runs from the repository, not from the worker's working directory.
        self.served_model = Path(served_model).resolve() if str(served_model) else Path()
        self.device = device
        self.python = python
        self.root = train_root(temp_root)
        self.upload_idle_s = upload_idle_s
        self.threads = threads  # the worker's --threads, for the training process too
        self.job: TrainingJob | None = None
        sweep_dead_jobs(self.root)

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
        """A summary for ``info``: that a job exists and how far it is, never its id or token."""
        job = self._live_job()
        if job is None:
            return {"training": None}
        summary = {"state": job.state, "iterations": job.request.iterations}
        summary.update({k: v for k, v in self._progress(job).items() if k in ("iteration", "eta_s")})
        return {"training": summary}

    def handle(self, request: Request, peer: str | None = None) -> tuple[dict, dict | None]:
        """Reply fields (and arrays) of one typed ``train_*`` request from ``peer`` (its CURVE key, or None)."""
        if isinstance(request, T.TrainBegin):
            return self._begin(request, peer), None
        job = self._owned(request, peer)
        if isinstance(request, T.TrainFile):
            return self._file(job, request), None
        if isinstance(request, T.TrainResult):
            return self._result(job, request)
        if isinstance(request, T.TrainStart):
            return self._start(job), None
        if isinstance(request, T.TrainCancel):
            return {"state": self._cancel_or_release(job)}, None
        return self._status(job), None

    def tick(self) -> None:
        """Called every second or so: notice a finished run, expire idle uploads and old results."""
        self._live_job()

    def close(self) -> None:
        """Worker shutdown: stop a running training and remove every job folder."""
        self._drop()

    # -- operations -----------------------------------------------------------------------------------------

    def _begin(self, request: T.TrainBegin, peer: str | None) -> dict[str, Any]:
        live = self._live_job()
        if live is not None and not live.final:
            raise ProtocolError(self.busy_message() or "busy training", "busy_training")
        if live is not None and live.state == "done" and not live.fetched:
            minutes = max(1, round((RESULT_KEEP_S - (time.monotonic() - live.touched)) / 60))
            raise ProtocolError(f"busy training: the worker keeps a finished model for its owner, who has not "
                                f"fetched it yet (for up to {minutes} more minutes)", "busy_training")
        if request.init_from == "served" and self.served_model.suffix.lower() not in (".pt", ".pth"):
            raise ProtocolError(f"this worker serves {self.served_model.name}, which cannot be fine-tuned: upload a "
                                "checkpoint to start from (init_from 'upload') or train from scratch", "training_failed")
        check_overrides(request.overrides)
        self._drop()
        check_space(self.root, request.bytes)
        folder = JobFolder(self.root)
        try:
            (folder.path / "data").mkdir()
            build_job_config(request.preset, request.overrides, folder.path, self.device)  # refuse early
        except BaseException:
            folder.remove()
            raise
        self.job = TrainingJob(uuid.uuid4().hex, secrets.token_hex(16), peer, folder, request)
        log_event(logging.INFO, "train_begin", files=request.files, bytes=request.bytes, curve=peer is not None)
        return {"job": self.job.id, "token": self.job.token, "piece_bytes": T.PIECE_BYTES, "state": "uploading"}

    def _file(self, job: TrainingJob, request: T.TrainFile) -> dict[str, Any]:
        if job.state != "uploading":
            raise ProtocolError(f"training job is {job.state}: files can only be sent before train_start", "bad_file")
        name, data = request.name, request.data
        declared = job.declared.get(name)
        if declared is None:
            if len(job.declared) >= job.request.files:
                raise ProtocolError(f"more files than the {job.request.files} announced in train_begin", "too_large")
            if sum(job.declared.values()) + request.size > job.request.bytes:
                raise ProtocolError(f"more bytes than the {job.request.bytes} announced in train_begin", "too_large")
            job.declared[name], job.received[name] = request.size, 0
        elif request.size != declared:
            raise ProtocolError(f"{name} was declared {declared} bytes long; a piece now says {request.size}",
                                "bad_file")
        have = job.received[name]
        end = request.offset + data.size
        job.touched = time.monotonic()
        if end <= have:  # a resent piece (the client retried after a timeout): already written
            return {"received": have}
        if request.offset != have:
            raise ProtocolError(f"pieces of {name} must arrive in order: expected offset {have}", "bad_file")
        path = job.data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_piece(path, have, memoryview(np.ascontiguousarray(data)).cast("B"))
        job.received[name] = end
        return {"received": end}

    def _start(self, job: TrainingJob) -> dict[str, Any]:
        if job.state != "uploading":
            return {"state": job.state}  # a resent start
        short = [name for name, size in job.declared.items() if job.received[name] != size]
        if short:
            name = short[0]
            raise ProtocolError(f"{name} is incomplete: {job.received[name]} of its {job.declared[name]} bytes "
                                "arrived", "bad_file")
        if len(job.declared) != job.request.files or sum(job.declared.values()) != job.request.bytes:
            raise ProtocolError(f"the upload is incomplete ({len(job.declared)} of {job.request.files} files, "
                                f"{sum(job.received.values())} of {job.request.bytes} bytes)", "bad_file")
        _check_export(job.data)
        overrides = read_uploaded_config(job.data / "config.yaml") if "config.yaml" in job.declared else {}
        for section, values in check_overrides(job.request.overrides).items():
            overrides.setdefault(section, {}).update(values)
        config = build_job_config(job.request.preset, overrides, job.folder.path, self.device)
        init = {"served": self.served_model, "upload": job.data / "init.pt", "scratch": None}[job.request.init_from]
        if init is not None and not Path(init).is_file():
            raise ProtocolError("init_from 'upload' needs the file init.pt in the upload", "bad_file")
        self._spawn(job, config, init)
        return {"state": job.state}

    def _spawn(self, job: TrainingJob, config: Path, init: Path | None) -> None:
        command = [self.python, "-m", "training.train", "--config", str(config), "--data-root", str(job.data),
                   "--work-dir", str(job.run), "--device", self.device]
        if job.request.iterations:  # 0: the recipe's own length
            command += ["--max-iters", str(job.request.iterations)]
        if init is not None:
            command += ["--init-from", str(init)]
        if self.threads:
            command += ["--threads", str(self.threads)]
        job.run.mkdir()
        env = {**os.environ, PARENT_ENV: str(os.getpid()), "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        with open(job.folder.path / "process.log", "wb") as log:
            # The child keeps the folder's lock (pass_fds) while it lives, so no worker sweeps a folder in use.
            job.process = subprocess.Popen(command, cwd=job.run, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True,
                                           pass_fds=(job.folder.lock_fd,))
        job.events = EventReader(job.run / "events.jsonl")
        job.state, job.started = "running", time.monotonic()
        log_event(logging.INFO, "train_start", pid=job.process.pid, iterations=job.request.iterations)

    def _status(self, job: TrainingJob) -> dict[str, Any]:
        self._poll(job)
        fields: dict[str, Any] = {"state": job.state, "iterations": job.request.iterations}
        if job.state == "uploading":
            fields.update(files=len(job.declared), bytes=sum(job.received.values()))
        fields.update(self._progress(job))
        if job.state == "failed":
            fields["error"] = job.error
            if job.error_code:
                fields["error_code"] = job.error_code
        if job.state == "done":
            fields["size"] = (job.run / "final.pt").stat().st_size
        return fields

    def _result(self, job: TrainingJob, request: T.TrainResult) -> tuple[dict, dict]:
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
        job.touched = time.monotonic()
        if request.offset + piece.size >= size:
            job.fetched = True
        reply: dict[str, Any] = {"size": size, "offset": request.offset}
        if request.offset == 0:
            reply["eval"] = _read_json(job.run / "eval_val.json")
        return reply, {"data": piece}

    def _cancel_or_release(self, job: TrainingJob) -> str:
        """Stop a live job, or let go of a finished one: its folder is removed at once either way."""
        if job.final:
            job.fetched = True
            state = job.state
            self._drop()
            return state
        self.cancel(job)
        return job.state

    def cancel(self, job: TrainingJob) -> None:
        """Stop the job's training process (its whole process group), mark it cancelled, delete its files."""
        if job.final:
            return
        _stop(job.process)
        job.state, job.finished = "cancelled", time.monotonic()
        job.folder.remove()
        log_event(logging.INFO, "train_cancel")

    # -- helpers --------------------------------------------------------------------------------------------

    def _owned(self, request: Request, peer: str | None) -> TrainingJob:
        """The job ``request`` names, if ``peer`` began it (else ``unknown_job`` or ``not_owner``)."""
        job = self._live_job()
        if job is None or job.id != request.job:  # type: ignore[attr-defined]
            raise ProtocolError("no such training job on this worker (finished long ago, or the worker restarted)",
                                "unknown_job")
        token = getattr(request, "token", None) or ""
        if not hmac.compare_digest(token.encode(), job.token.encode()) or job.owner_key != peer:
            raise ProtocolError("this training job belongs to another client (send the token that train_begin "
                                "returned, from the same client key)", "not_owner")
        return job

    def _live_job(self) -> TrainingJob | None:
        """The current job, after dropping an abandoned upload or an old result."""
        job = self.job
        if job is None:
            return None
        self._poll(job)
        now = time.monotonic()
        idle = now - job.touched
        expired = ((job.state == "uploading" and idle > self.upload_idle_s)
                   or (job.final and now - max(job.finished, job.touched) > RESULT_KEEP_S)
                   or (job.fetched and idle > FETCHED_KEEP_S))
        if expired:
            log_event(logging.INFO, "train_expired", state=job.state)
            self._drop()
            return None
        return job

    def _poll(self, job: TrainingJob) -> None:
        if job.state != "running" or job.process is None or job.process.poll() is None:
            return
        job.finished = time.monotonic()
        events = job.events
        if events is not None:
            events.poll()
        if job.process.returncode == 0 and (job.run / "final.pt").is_file():
            job.state = "done"
            return
        job.state = "failed"
        failure = events.failure if events is not None else None
        if failure is not None:
            job.error, job.error_code = self._local(failure["message"], job), failure["kind"]
        elif disk_full(self.root):  # too full even for the trainer to say so
            job.error, job.error_code = "the worker's disk is full: training stopped; free some space", "no_space"
        else:
            job.error = _unexplained(job.process.returncode)

    def _local(self, message: str, job: TrainingJob) -> str:
        """A trainer's sentence with the worker's own folders left out (names relative to the upload)."""
        for prefix, name in ((f"{job.data}{os.sep}", ""), (str(job.data), "the upload"),
                             (f"{job.run}{os.sep}", ""), (str(job.folder.path), "the job folder")):
            message = message.replace(prefix, name)
        return " ".join(message.split())

    def _progress(self, job: TrainingJob) -> dict[str, Any]:
        """Iteration, loss and ETA from the trainer's events (only the elapsed time before its first one)."""
        if job.state not in ("running", "done") or job.events is None:
            return {}
        job.events.poll()
        progress: dict[str, Any] = {"elapsed_s": round((job.finished or time.monotonic()) - job.started, 1)}
        if job.events.phase:
            progress["phase"] = job.events.phase
        if job.events.progress:
            progress.update(job.events.progress)
            if job.state == "done":
                progress["eta_s"] = 0.0
        return progress

    def _drop(self) -> None:
        job, self.job = self.job, None
        if job is not None:
            if not job.final:
                _stop(job.process)
            job.folder.remove()


def _check_export(data: Path) -> None:
    """The uploaded folder has an export's shape: a class table and training pairs."""
    try:
        check_dataset_table(json.loads((data / CLASSES_FILE).read_text(encoding="utf-8")), f"{CLASSES_FILE}:")
    except (OSError, ValueError) as exc:  # ClassTableError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"{CLASSES_FILE} is missing or is not a class table ({exc})", "bad_file") from None
    if not any((data / SPLITS[0] / IMAGES_DIR).glob("*.png")):
        raise ProtocolError("the upload has no training images (train/images/*.png)", "bad_file")


def _stop(process: subprocess.Popen | None) -> None:
    """SIGTERM the process group, SIGKILL what is left after a few seconds."""
    if process is None or process.poll() is not None:
        return
    _signal_group(process, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=10)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _unexplained(code: int | None) -> str:
    """A run that ended without saying why (killed, crashed before its first event)."""
    if code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        hint = " (perhaps the machine ran out of memory)" if -code == signal.SIGKILL else ""
        return f"the training process was killed by {name}{hint}"
    return f"the training process stopped with exit code {code} without saying why; see the worker's job log"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
