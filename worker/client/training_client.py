"""Fine-tune on a worker from the client side: upload an export, follow the run, fetch the model.

Used by ``factseg:train`` inside QGIS (numpy + pyzmq only). The model file appears under its final name only
when it has arrived whole; a failure or a cancel leaves no file behind, and a cancel stops the worker's training.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import CLASSES_FILE, IMAGES_DIR, MASKS_DIR, SPLITS
from . import training_protocol as T
from .client import WorkerClient
from .protocol import Request, WorkerError

POLL_S = 0.5


class TrainingFailed(WorkerError):
    """The worker could not train (its message says why)."""


class TrainingCancelled(WorkerError):
    """The user cancelled; the worker stopped training and no model was written."""


@dataclass(frozen=True)
class TrainingProgress:
    """What the worker reports while a job runs."""

    state: str
    iteration: int
    iterations: int
    loss: float | None
    eta_s: float | None
    elapsed_s: float | None

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> TrainingProgress:
        return cls(str(header.get("state")), int(header.get("iteration") or 0), int(header.get("iterations") or 0),
                   header.get("loss"), header.get("eta_s"), header.get("elapsed_s"))


@dataclass(frozen=True)
class TrainingOutcome:
    model_path: Path
    evaluation: dict[str, Any] | None
    classes: list[dict[str, Any]]


def export_files(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """The files of an export that go to the worker (upload names → local paths), checked against the layout."""
    root = Path(folder)
    if not (root / CLASSES_FILE).is_file():
        raise TrainingFailed(f"{root} is not a training export: it has no {CLASSES_FILE} "
                             "(make one with factseg:export_training_data)")
    files = [(CLASSES_FILE, root / CLASSES_FILE)]
    for split in SPLITS:
        for kind in (IMAGES_DIR, MASKS_DIR):
            for path in sorted((root / split / kind).glob("*.png")):
                files.append((f"{split}/{kind}/{path.name}", path))
    bad = [name for name, _ in files if not T.FILE_NAME.fullmatch(name)]
    if bad:
        raise TrainingFailed(f"file names the worker cannot accept (letters, digits, '._-' only): {bad[:3]}")
    if not any(name.startswith("train/images/") for name, _ in files):
        raise TrainingFailed(f"{root} has no training images (train/images/*.png)")
    return files


class RemoteTraining:
    """One fine-tuning run on the worker behind ``client`` (its first endpoint)."""

    def __init__(self, client: WorkerClient) -> None:
        self.client = client
        self.job: str | None = None
        self.token: str | None = None  # the job's secret: every op after train_begin carries it

    def run(
        self,
        data: str | os.PathLike,
        output_model: str | os.PathLike,
        iterations: int,
        init_from: str | os.PathLike | None = "served",
        config: str | os.PathLike | None = None,
        progress: Callable[[TrainingProgress], None] | None = None,
        is_cancelled: Callable[[], bool] | None = None,
        log: Callable[[str], None] | None = None,
        preset: str | None = "auto",
        overrides: dict[str, Any] | None = None,
    ) -> TrainingOutcome:
        """Upload ``data``, train ``iterations`` on the worker, write the model to ``output_model``.

        ``init_from``: "served" (the worker's own model), "scratch", or a local checkpoint file to upload.
        ``config``: a local YAML file of overrides (uploaded; the worker accepts only its allowed keys, no paths);
        ``preset``: the name of one of the worker's training presets (auto, cpu, gpu); ``overrides``: sections of
        allowed keys; ``iterations`` 0: the recipe's own length.
        """
        is_cancelled = is_cancelled or (lambda: False)
        log = log or (lambda message: None)
        files = export_files(data)
        if config is not None:
            files.append(("config.yaml", Path(config)))
        mode = init_from if init_from in ("served", "scratch") else "upload"
        if mode == "upload":
            files.append(("init.pt", Path(init_from)))  # type: ignore[arg-type]
        total = sum(path.stat().st_size for _, path in files)
        reply = self._call(T.TrainBegin(files=len(files), bytes=total, iterations=int(iterations), init_from=mode,
                                        preset=preset, overrides=overrides))
        self.job, self.token = str(reply["job"]), str(reply["token"])
        try:
            log(f"Uploading {len(files)} files ({total / 1e6:.1f} MB) to the worker …")
            self._upload(files, int(reply.get("piece_bytes", T.PIECE_BYTES)), is_cancelled)
            self._call(T.TrainStart(job=self.job, token=self.token))
            log(f"Training {iterations} iterations on the worker …" if iterations
                else f"Training with the worker's {preset!r} recipe …")
            self._follow(progress, is_cancelled)
            evaluation = self._download(Path(output_model), is_cancelled)
        except BaseException:
            self.cancel()
            raise
        self.cancel()  # the model is here: let the worker delete its copy now rather than in an hour
        classes = json.loads((Path(data) / CLASSES_FILE).read_text(encoding="utf-8"))
        return TrainingOutcome(Path(output_model), evaluation, classes)

    def cancel(self) -> None:
        """Stop the job on the worker (best effort: the worker also drops abandoned jobs by itself)."""
        if self.job is None:
            return
        try:
            self._call(T.TrainCancel(job=self.job, token=self.token), timeout_s=15.0)
        except WorkerError:
            pass

    # -- steps ----------------------------------------------------------------------------------------------

    def _call(self, request: Request, timeout_s: float | None = None) -> dict[str, Any]:
        return self.client.request(request, timeout_s=timeout_s).header

    def _upload(self, files: list[tuple[str, Path]], piece: int, is_cancelled: Callable[[], bool]) -> None:
        for name, path in files:
            size = path.stat().st_size
            with open(path, "rb") as handle:
                offset = 0
                while offset < size:
                    if is_cancelled():
                        raise TrainingCancelled("Training cancelled during the upload; nothing was written.")
                    data = np.frombuffer(handle.read(piece), dtype=np.uint8)
                    self._call(T.TrainFile(job=self.job, token=self.token, name=name, offset=offset, size=size,
                                           data=data))
                    offset += data.size

    def _follow(self, progress: Callable[[TrainingProgress], None] | None, is_cancelled: Callable[[], bool]) -> None:
        while True:
            if is_cancelled():
                self.cancel()
                raise TrainingCancelled("Training cancelled; the worker stopped and no model was written.")
            status = self._call(T.TrainStatus(job=self.job, token=self.token))
            state = TrainingProgress.from_header(status)
            if progress is not None:
                progress(state)
            if state.state == "done":
                return
            if state.state in ("failed", "cancelled"):
                raise TrainingFailed(str(status.get("error") or f"the training job was {state.state} on the worker"))
            time.sleep(POLL_S)

    def _download(self, target: Path, is_cancelled: Callable[[], bool]) -> dict[str, Any] | None:
        partial = target.with_name(f".{target.stem}.partial{target.suffix}")
        evaluation = None
        try:
            with open(partial, "wb") as handle:
                offset, size = 0, None
                while size is None or offset < size:
                    if is_cancelled():
                        raise TrainingCancelled("Cancelled while the model was downloaded; no model was written.")
                    message = self.client.request(T.TrainResult(job=self.job, token=self.token, offset=offset))
                    if offset == 0:
                        evaluation = message.header.get("eval")
                    size = int(message.header["size"])
                    piece = message.arrays["data"]
                    if piece.size == 0 and offset < size:
                        raise TrainingFailed("the worker sent an empty piece of the model")
                    handle.write(piece.tobytes())
                    offset += piece.size
            os.replace(partial, target)
        finally:
            if partial.exists():
                partial.unlink()
        return evaluation
