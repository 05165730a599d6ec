"""The training loop as an object: a command line, a worker process or a benchmark drives the same code.

    trainer = Trainer(load_config("training/configs/finetune.yaml"), data_root, work_dir,
                      init_from="factseg50.pth", progress=on_progress, should_stop=cancelled.is_set)
    final = trainer.run()          # WORK_DIR/final.pt (or latest.pt at --stop-at)

:meth:`Trainer.step` is one optimisation step on a given batch (the benchmark times exactly this);
:meth:`Trainer.run` prepares the patch cache, walks the iterations of the schedule through ``step()``,
logs, checkpoints, and evaluates the final model on the val split. Errors are :class:`TrainingError`
(one sentence) and the data/checkpoint errors of the modules below; nothing here exits the process.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from factseg_contract.layout import IMAGES_DIR
from factseg_core import FactSeg, joint_loss, save_checkpoint
from factseg_core.checkpoint import read_checkpoint
from factseg_core.transfer import SourceWeights, TransferReport

from .card import training_card, with_metrics
from .class_table import read_class_table
from .errors import TrainingCancelled, TrainingError
from .isaid import PatchDataset, cache_folder, prepare
from .runtime import check_replicas_agree, restore_rng, rng_state, set_determinism, setup_runtime
from .schedule import IterationBatches, poly_lr
from .train_config import TrainConfig
from .train_log import EventLog, Logger, format_eta
from .weights import build_model, load_backbone_weights, read_init_weights, resolve_model, transfer_from

#: ``progress(iteration, loss, lr, eta_s)``, called after every iteration on the main rank.
ProgressCallback = Callable[[int, float, float, float], None]


@dataclass(frozen=True)
class StepResult:
    """What one optimisation step did."""

    loss: float
    lr: float
    grad_norm: float


class Trainer:
    """One training run of FactSeg: model, optimiser and state, on one process of a (torchrun) job.

    ``config``: the typed config (``num_classes`` is replaced by the data root's ``classes.json`` when it has
    one). ``data_root``: iSAID-layout folder; read only by :meth:`run` (and for ``classes.json`` here).
    ``work_dir``: checkpoints, logs, cache. ``init_from``: checkpoint whose matching weights start the model
    (ignored when resuming). ``stop_at``: stop after this iteration, keeping the full schedule.
    ``progress``: see :data:`ProgressCallback`. ``should_stop``: polled before every iteration; when it
    returns True, ``latest.pt`` is saved and :class:`TrainingCancelled` raised.
    """

    def __init__(self, config: TrainConfig, data_root: str | os.PathLike, work_dir: str | os.PathLike, *,
                 init_from: str | os.PathLike | None = None, backbone_weights: str | os.PathLike | None = None,
                 resume: bool = False, device: str = "auto", threads: int | None = None, stop_at: int | None = None,
                 progress: ProgressCallback | None = None, should_stop: Callable[[], bool] | None = None,
                 progress_bar: bool = True) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.data_root, self.work_dir = Path(data_root), Path(work_dir)
        self.progress, self.should_stop, self.progress_bar = progress, should_stop, progress_bar
        self.runtime = rt = setup_runtime(device, config.train)
        if config.train.batch_size % rt.world:
            raise TrainingError(f"train.batch_size {config.train.batch_size} is not divisible by the {rt.world} "
                                f"processes")
        self.batch_per_rank = config.train.batch_size // rt.world
        self.total = config.train.iters
        self.stop = min(self.total, stop_at) if stop_at else self.total
        if rt.main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
        set_determinism(config.train, rt.device)
        self.log = Logger(self.work_dir, rt.main)
        self.events = EventLog(self.work_dir, rt.main)
        source = read_init_weights(init_from) if init_from else None
        model_config, self.classes = resolve_model(config.model, read_class_table(self.data_root), source)
        if model_config != config.model:
            self.log.line(f"model: {model_config} (from {'--init-from and ' if source else ''}the class table)")
        self.config = dataclasses.replace(config, model=model_config)
        self.model: FactSeg = build_model(model_config, self.classes)
        # every checkpoint of the run carries the model card (checkpoint_dict writes model.model_card)
        self.model.model_card = training_card(self.data_root, self.classes, config.eval.patch, config.eval.stride)
        self.iteration = 0
        self.run_seconds, self.run_iterations = 0.0, 0
        self.transfer: TransferReport | None = None
        latest = self.work_dir / "latest.pt"
        resuming = resume and latest.is_file()
        if not resuming:
            self._initial_weights(backbone_weights, source)
        self._build_optimizer()
        if resuming:
            self._resume(latest)
        elif resume:
            self.log.line(f"--resume: no {latest} yet, starting from iteration 0")
        self.net = self._place_model()

    # --- set-up ----------------------------------------------------------------------------------------------

    def _initial_weights(self, backbone_weights: str | os.PathLike | None, source: SourceWeights | None) -> None:
        if backbone_weights:
            load_backbone_weights(self.model, backbone_weights)
            self.log.line(f"encoder initialised from {backbone_weights}")
        if source is not None:
            self.transfer = transfer_from(self.model, source)
            self.log.line(f"initialised from {source.source}: {self.transfer.summary()}")

    def _build_optimizer(self) -> None:
        t = self.config.train
        params = [p for p in self.model.parameters() if p.requires_grad]
        if t.encoder_lr_mult == 1.0:
            groups = [{"params": params, "lr_mult": 1.0}]
        else:
            encoder = {id(p) for p in self.model.encoder.parameters()}
            groups = [{"params": [p for p in params if id(p) in encoder], "lr_mult": t.encoder_lr_mult},
                      {"params": [p for p in params if id(p) not in encoder], "lr_mult": 1.0}]
        self.params = params
        self.optimizer = torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.runtime.amp_dtype == torch.float16 else None

    def _resume(self, latest: Path) -> None:
        ckpt = read_checkpoint(latest)
        if ckpt.get("config") != self.model.config.to_dict():
            raise TrainingError(f"--resume: {latest} holds a {ckpt.get('config')} model, the config asks for "
                                f"{self.model.config.to_dict()}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.iteration = int(ckpt["iteration"])
        restore_rng(ckpt["rng"], self.runtime.device)
        self.log.line(f"resumed from {latest} at iteration {self.iteration}")

    def _place_model(self) -> nn.Module:
        rt, t = self.runtime, self.config.train
        self.model.to(rt.device)
        if rt.device.type == "cuda" and t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        model: nn.Module = self.model
        if rt.distributed and t.sync_bn and rt.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # optimizer state was loaded on CPU before the move: put momentum buffers beside their parameters
        for state in self.optimizer.state.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor):
                    state[key] = value.to(rt.device)
        if rt.distributed:
            return nn.parallel.DistributedDataParallel(
                model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
        return model

    # --- one step --------------------------------------------------------------------------------------------

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> StepResult:
        """One SGD step of the joint CP loss on this batch at the schedule's current learning rate."""
        rt, t = self.runtime, self.config.train
        lr = poly_lr(t.lr, self.iteration, self.total, t.power, t.warmup_iters, t.warmup_factor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        images = images.to(rt.device, non_blocking=True)
        labels = labels.to(rt.device, non_blocking=True)
        if rt.device.type == "cuda" and t.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32, enabled=rt.amp_dtype is not None):
            fg, bi = self.net(images)
        loss = joint_loss(fg, bi, labels, sampling=t.sampling, ratio=t.som_ratio)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, t.grad_clip) if t.grad_clip else torch.tensor(0.0)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.iteration += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) and self.scaler is None:
            raise TrainingError(f"loss became {loss_value} at iteration {self.iteration}; lower train.lr or check "
                                f"the data")
        return StepResult(loss_value, lr, float(grad_norm))

    # --- the loop --------------------------------------------------------------------------------------------

    def _loader(self) -> tuple[DataLoader, int]:
        """The patch cache (cut once by the main rank) and a loader of this rank's batches start..stop."""
        rt, d, t = self.runtime, self.config.data, self.config.train
        cache_dir = Path(d.cache_dir or self.work_dir / "cache")
        if rt.main:
            self.events.emit("phase", phase="preparing")
            prepare(self.data_root, d.train_split, cache_dir, d.patch, d.stride, self.classes,
                    workers=d.prepare_workers, progress=self.progress_bar)
        if rt.distributed:
            dist.barrier()
        dataset = PatchDataset(cache_folder(cache_dir, d.train_split, d.patch, d.stride), d.augment, t.seed)
        sampler = IterationBatches(len(dataset), self.batch_per_rank, rt.world, rt.rank, t.seed, self.iteration,
                                   self.stop)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=d.workers, pin_memory=rt.device.type == "cuda",
                            persistent_workers=False, prefetch_factor=2 if d.workers else None)
        return loader, len(dataset)

    def save(self, path: Path) -> None:
        """A resumable checkpoint: weights, class table, optimiser, scaler, iteration, config, RNG."""
        save_checkpoint(self.model, path, optimizer=self.optimizer.state_dict(),
                        scaler=self.scaler.state_dict() if self.scaler else {}, iteration=self.iteration,
                        train_config=self.config.to_dict(), rng=rng_state(self.runtime.device))

    def run(self) -> Path:
        """Train from the current iteration to the end of the schedule (or ``stop_at``); return the checkpoint.

        Returns ``WORK_DIR/final.pt`` when the schedule is complete, ``WORK_DIR/latest.pt`` at ``stop_at``.
        """
        try:
            self._run_iterations()
            return self._finish()
        finally:
            self.log.close()

    def _start_line(self, patches: int) -> str:
        rt, t = self.runtime, self.config.train
        return (f"training {self.model.config.backbone} on {patches} patches of {self.config.data.patch}² from "
                f"{self.data_root}: iterations {self.iteration}..{self.total}, batch {t.batch_size} over {rt.world} "
                f"process(es), device {rt.device}, amp {rt.amp_name}")

    def _run_iterations(self) -> None:
        rt, t = self.runtime, self.config.train
        loader, patches = self._loader()
        if rt.main:
            (self.work_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            self.log.line(self._start_line(patches))
            self.events.emit("phase", phase="training", iteration=self.iteration, iterations=self.total,
                             patches=patches)
        self.net.train()
        bar = tqdm(total=self.total, initial=self.iteration, desc="train", unit="it",
                   disable=not (rt.main and self.progress_bar), dynamic_ncols=True)
        meter = _Meter(self.iteration)
        self.events.eta.start(self.iteration)
        for images, labels in loader:
            if self.should_stop is not None and self.should_stop():
                self._cancel(bar)
            result = self.step(images, labels)
            meter.add(result.loss)
            bar.update()
            bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}", refresh=False)
            self.events.progress(self.iteration, self.total, result.loss, result.lr, self.iteration == self.stop)
            if self.progress is not None and rt.main:
                self.progress(self.iteration, result.loss, result.lr, self.events.eta_s or 0.0)
            if self.iteration % t.log_every == 0 or self.iteration == self.stop:
                self._log_window(meter, result)
            if self.iteration % t.checkpoint_every == 0 and self.iteration < self.stop and rt.main:
                self.save(self.work_dir / f"iter_{self.iteration:06d}.pt")
                self.save(self.work_dir / "latest.pt")
                _prune(self.work_dir, t.keep_checkpoints)
        bar.close()
        self.run_seconds = meter.elapsed()
        self.run_iterations = self.iteration - meter.start
        if rt.distributed:
            self.log.line(check_replicas_agree(self.model, rt))

    def _cancel(self, bar: tqdm) -> None:
        bar.close()
        if self.runtime.main:
            self.save(self.work_dir / "latest.pt")
        self.log.line(f"cancelled at iteration {self.iteration}; {self.work_dir / 'latest.pt'} can be resumed")
        raise TrainingCancelled(f"training cancelled at iteration {self.iteration} of {self.total}")

    def _log_window(self, meter: _Meter, result: StepResult) -> None:
        its, mean_loss = meter.window()
        self.log.line(f"iter {self.iteration}/{self.total} loss {mean_loss:.4f} lr {result.lr:.3e} grad_norm "
                      f"{result.grad_norm:.2f} {its:.2f} it/s eta {format_eta((self.total - self.iteration) / max(its, 1e-9))}")
        self.log.scalars(self.iteration, **{"train/loss": mean_loss, "train/lr": result.lr,
                                            "train/grad_norm": result.grad_norm, "train/it_per_s": its})

    def _finish(self) -> Path:
        rt = self.runtime
        latest, final = self.work_dir / "latest.pt", self.work_dir / "final.pt"
        result = latest
        if rt.main:
            self.save(latest)
            self.log.line(f"{self.run_iterations} iterations in {self.run_seconds:.1f} s; checkpoint {latest}")
            if self.iteration >= self.total:
                save_checkpoint(self.model, final, iteration=self.iteration, train_config=self.config.to_dict())
                self.log.line(f"final model: {final}")
                self.evaluate()
        if self.iteration >= self.total:
            result = final
        if rt.distributed:
            dist.barrier()
            dist.destroy_process_group()
        return result

    def evaluate(self) -> dict | None:
        """Sliding-window evaluation of the model on the val split (if present) → ``eval_{split}.json``."""
        from .evaluate import evaluate_model, format_table

        e, split = self.config.eval, self.config.data.val_split
        if not e.enabled:
            return None
        if not (self.data_root / split / IMAGES_DIR).is_dir():
            self.log.line(f"no {split} split under {self.data_root}: skipping the final evaluation")
            return None
        self.model.eval()
        self.events.emit("phase", phase="evaluating")
        metrics = evaluate_model(self.model, self.data_root, split, e.patch, e.stride, e.batch_size, e.tta,
                                 self.runtime.device, progress=self.progress_bar)
        (self.work_dir / f"eval_{split}.json").write_text(json.dumps(metrics, indent=1))
        self.events.emit("evaluation", split=split, miou=metrics.get("miou"), fg_miou=metrics.get("fg_miou"))
        self.log.line(f"evaluation on {split}:\n{format_table(metrics)}")
        self.log.scalars(self.total, **{f"{split}/miou": metrics["miou"] or 0.0, f"{split}/fg_miou": metrics["fg_miou"] or 0.0})
        self.model.model_card = with_metrics(self.model.model_card, metrics, split)
        final = self.work_dir / "final.pt"
        if final.is_file():  # the final model's card gets the metrics of this evaluation
            save_checkpoint(self.model, final, iteration=self.iteration, train_config=self.config.to_dict())
        return metrics


class _Meter:
    """Loss and speed over the current logging window and over the whole run."""

    def __init__(self, start: int) -> None:
        self.start = start
        self.run_start = self.window_start = time.perf_counter()
        self.loss, self.n = 0.0, 0

    def add(self, loss: float) -> None:
        self.loss += loss
        self.n += 1

    def window(self) -> tuple[float, float]:
        """(iterations per second, mean loss) since the last call; starts a new window."""
        now = time.perf_counter()
        its, mean = self.n / max(now - self.window_start, 1e-9), self.loss / max(self.n, 1)
        self.loss, self.n, self.window_start = 0.0, 0, now
        return its, mean

    def elapsed(self) -> float:
        return time.perf_counter() - self.run_start


def _prune(work_dir: Path, keep: int) -> None:
    olds = sorted(work_dir.glob("iter_*.pt"))
    for path in olds[: max(0, len(olds) - keep)]:
        path.unlink(missing_ok=True)
