"""``factseg:train``: fine-tune FactSeg on an exported training folder, on a (GPU) worker, and get the model back.

The closed loop's third step: ``factseg:export_training_data`` → ``factseg:train`` → ``factseg:segment`` with
the new model. The worker does the training (CUDA with mixed precision when it has a GPU) in a child process;
this algorithm uploads the folder, shows iteration, loss and ETA, and writes OUTPUT_MODEL only when the model
has arrived whole. Cancel stops the training on the worker.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from ..job import WorkerTarget
from ..local_workers import local_endpoint, release
from ..worker_import import (
    RemoteError,
    RemoteTraining,
    TrainingCancelled,
    TrainingProgress,
    WorkerError,
    WorkerUnavailable,
)
from .base import FactSegAlgorithm

AUTO_PRESET = "auto"
#: A recipe name (the worker resolves it to a file of its own: training/presets.py), never a path.
PRESET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
#: Seconds to wait for any one reply (uploading a piece, a status poll); training itself may take hours.
CALL_TIMEOUT_S = 120.0


class TrainAlgorithm(FactSegAlgorithm):
    """Fine-tune a FactSeg model on an exported folder with a worker."""

    NAME = "train"
    TITLE = "Fine-tune a model on exported training data (FactSeg)"
    TAGS = ("training", "fine-tuning", "model", "gpu")

    DATA = "DATA"
    ITERATIONS = "ITERATIONS"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    INIT_FROM = "INIT_FROM"
    CONFIG = "CONFIG"
    MIOU = "MIOU"
    EVALUATION = "EVALUATION"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Fine-tunes FactSeg on a folder made by 'Export training data' and writes the new model (a checkpoint "
            "that factseg:segment and the worker load, with your class names and colours).\n\n"
            "WORKER: endpoint of a running worker (the GPU machine). If empty, a local worker is started with "
            "MODEL and the worker Python, and trains on this computer.\n"
            "INIT_FROM: a checkpoint to start from (default: the model the worker serves; the released "
            "factseg50.pth works too). Weights whose names and shapes match are kept; the class heads are new "
            "when your classes differ.\n"
            "ITERATIONS: 0 (default) trains for the recipe's own length.\n"
            "CONFIG: the recipe: auto (default: the worker's cpu recipe on a CPU, gpu on a CUDA GPU), cpu (small "
            "crops, a few hundred iterations: minutes on a laptop), gpu (512² crops, batch 8, 2000 iterations), "
            "or a training YAML file of your own.\n"
            "SERVER_KEY / CLIENT_KEY or AUTHCFG: the CURVE keys of a remote worker, as for factseg:segment.\n"
            "The log shows iteration, loss and ETA; Cancel stops the training on the worker and writes nothing."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.DATA, "Training data folder (from Export training data)", QgsProcessingParameterFile.Behavior.Folder))
        self.addParameter(QgsProcessingParameterNumber(
            self.ITERATIONS, "Iterations (0: the recipe's own)", QgsProcessingParameterNumber.Type.Integer, 0,
            minValue=0, maxValue=1_000_000))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT_MODEL, "Fine-tuned model", "PyTorch checkpoint (*.pt)"))
        self.addParameter(QgsProcessingParameterFile(
            self.INIT_FROM, "Start from this checkpoint (default: the model the worker serves)", optional=True,
            fileFilter="Checkpoints (*.pt *.pth)"))
        self.addParameter(QgsProcessingParameterFile(  # no file filter: a preset name is a valid value too
            self.CONFIG, "Training recipe: auto, cpu, gpu, or a YAML file", defaultValue=AUTO_PRESET, optional=True))
        self.addParameter(QgsProcessingParameterString(
            self.WORKER, "Worker endpoint (empty: train with a local worker)", "", optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, "Model for a local worker (checkpoint .pt/.pth)", optional=True))
        self.add_advanced(*self.key_parameters(), *self.local_worker_parameters())
        self.addOutput(QgsProcessingOutputNumber(self.MIOU, "Validation mIoU (%)"))
        self.addOutput(QgsProcessingOutputString(self.EVALUATION, "Validation per-class IoU (JSON)"))

    def processAlgorithm(self, parameters, context: QgsProcessingContext, feedback: QgsProcessingFeedback):  # noqa: N802
        data = self.parameterAsFile(parameters, self.DATA, context)
        output = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        if not data or not Path(data).is_dir():
            raise QgsProcessingException("DATA must be a training data folder made by 'Export training data'.")
        if not output:
            raise QgsProcessingException("Choose where to write the fine-tuned model (OUTPUT_MODEL).")
        if Path(output).resolve() in {Path(p).resolve() for p in (
                self.parameterAsFile(parameters, self.INIT_FROM, context),
                self.parameterAsFile(parameters, self.MODEL, context)) if p}:
            raise QgsProcessingException("OUTPUT_MODEL is one of the input models: choose a new file name.")
        target = self.worker_target(parameters, context)
        local = target.local
        try:
            evaluation = self._train(parameters, context, feedback, target, data, output)
        except TrainingCancelled as exc:
            raise QgsProcessingException(str(exc)) from exc
        except RemoteError as exc:
            raise QgsProcessingException(f"The worker refused to train: {exc.message} ({exc.code}).") from exc
        except WorkerUnavailable as exc:
            raise QgsProcessingException(f"The worker does not answer: {exc}") from exc
        except WorkerError as exc:
            raise QgsProcessingException(f"Training on the worker failed: {exc}") from exc
        finally:
            if local is not None:
                release(local)
        miou = _miou(evaluation)
        return {self.OUTPUT_MODEL: output, self.MIOU: miou, self.EVALUATION: json.dumps(evaluation)}

    def _train(self, parameters, context, feedback, target: WorkerTarget, data: str, output: str) -> dict | None:
        init_from = self.parameterAsFile(parameters, self.INIT_FROM, context) or "served"
        config, preset = _recipe(self.parameterAsFile(parameters, self.CONFIG, context))
        iterations = self.parameterAsInt(parameters, self.ITERATIONS, context)
        last = [-1]

        def on_progress(progress: TrainingProgress) -> None:
            if progress.state != "running" or progress.iteration == last[0]:
                return
            last[0] = progress.iteration
            feedback.setProgress(100.0 * progress.iteration / max(1, progress.iterations or iterations))
            if progress.iteration:
                loss = f"{progress.loss:.4f}" if progress.loss is not None else "?"
                eta = f", ETA {progress.eta_s:.0f} s" if progress.eta_s is not None else ""
                feedback.pushInfo(f"Iteration {progress.iteration}/{progress.iterations}: loss {loss}{eta}")

        endpoint = target.endpoint or local_endpoint(target.local)
        with target.client(endpoint, CALL_TIMEOUT_S, retries=2) as client:
            info = client.info()
            recipe = config or (f"the {preset!r} recipe" + (" (cpu or gpu by the worker's device)"
                                                             if preset == AUTO_PRESET else ""))
            feedback.pushInfo(f"Training on {endpoint} ({info.get('device', '?')}) with {recipe}, from "
                              f"{'the served model ' + str(info.get('model_file', '')) if init_from == 'served' else init_from}.")
            outcome = RemoteTraining(client).run(data, output, iterations, init_from, config, on_progress,
                                                 feedback.isCanceled, feedback.pushInfo, preset=preset or AUTO_PRESET)
        feedback.pushInfo(f"Wrote {outcome.model_path}.")
        for line in _iou_lines(outcome.evaluation, outcome.classes):
            feedback.pushInfo(line)
        return outcome.evaluation


def _recipe(value: str | None) -> tuple[str | None, str | None]:
    """CONFIG as (YAML file to upload, None) or (None, preset name the worker resolves); empty means auto."""
    value = (value or "").strip()
    if not value or value.lower() == AUTO_PRESET:
        return None, AUTO_PRESET
    if Path(value).is_file():
        return value, None
    if PRESET_NAME.fullmatch(value.lower()):
        return None, value.lower()
    raise QgsProcessingException(f"CONFIG {value!r} is neither a recipe name (auto, cpu, gpu) nor an existing YAML "
                                 "file: give one of those.")


def _miou(evaluation: dict | None) -> float | None:
    """Validation mIoU in percent (the trainer's eval_val.json holds fractions)."""
    value = evaluation.get("miou") if isinstance(evaluation, dict) else None
    return round(100.0 * float(value), 2) if isinstance(value, (int, float)) else None


def _iou_lines(evaluation: dict | None, classes: list[dict]) -> list[str]:
    """The validation split's per-class IoU in words, as training/evaluate.py reports them."""
    if not isinstance(evaluation, dict):
        return ["No validation result (the export has no val tiles, or evaluation is off in the config)."]
    lines = [f"Validation mIoU {_miou(evaluation)} %"]
    for row in evaluation.get("per_class") or []:
        iou = row.get("iou")
        lines.append(f"  {row.get('name', row.get('id'))}: {'-' if iou is None else f'{100 * iou:.2f} %'}")
    return lines
