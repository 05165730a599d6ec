"""Train FactSeg on iSAID-layout data, on a CPU, one GPU, or several (torchrun).

    python training/train.py --config training/configs/demo.yaml --data-root DATA --work-dir RUN
    python -m training.train --config training/configs/finetune.yaml --data-root MYDATA --work-dir RUN \\
        --init-from factseg50.pth
    python -m training.train --config auto --data-root MYDATA --work-dir RUN --init-from tuned_before.pt
    torchrun --nproc_per_node=2 training/train.py --config training/configs/factseg_r50_isaid.yaml ...

The recipe is the paper's (SGD momentum 0.9, weight decay 1e-4, poly LR, grad clip 35, joint CP loss with
small-object mining) in plain PyTorch: torch.amp instead of apex, DistributedDataParallel under torchrun.
The work dir receives ``latest.pt`` (and ``iter_NNNNNN.pt``) every ``checkpoint_every`` iterations, ``final.pt``
(a model checkpoint for ``factseg_core.load_model``, with its class table), ``train.log``, TensorBoard scalars
in ``tb/``, the config used, and ``eval_val.json``. ``--resume`` continues from ``latest.pt`` exactly: the
batches of every iteration (order and augmentation) are a function of the seed and the iteration number alone.
A data root with a ``classes.json`` (see ``training/class_table.py``) trains on that class table; with
``--init-from`` the matching weights of another model start the run (fine-tuning).

This file is the command line only (the project is installed editable by ``make setup``); the loop is
:class:`training.trainer.Trainer`, the configuration :mod:`training.train_config`.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from factseg_contract import ClassTableError
from factseg_core.checkpoint import CheckpointError
from training.errors import DataError, TrainingCancelled, TrainingError
from training.lifeline import tie_to_parent
from training.presets import resolve_config, resolved_device
from training.train_config import TrainConfig, load_config
from training.train_log import EventLog, describe_failure
from training.trainer import Trainer


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train FactSeg on iSAID-layout data (also under torchrun).")
    parser.add_argument("--config", required=True, help="YAML config (see training/configs/), or a fine-tuning "
                        "preset: cpu, gpu, or auto (the one for --device)")
    parser.add_argument("--data-root", required=True, help="dataset root with {train,val}/images and /masks "
                        "(and classes.json for a class table of one's own)")
    parser.add_argument("--work-dir", required=True, help="folder for checkpoints, logs, TensorBoard and caches")
    parser.add_argument("--max-iters", type=int, help="override train.iters (the length of the LR schedule)")
    parser.add_argument("--stop-at", type=int, help="stop after this iteration, keeping the schedule of the full "
                        "run (a planned interruption; continue later with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pt")
    parser.add_argument("--init-from", help="checkpoint (ours, or the released factseg50.pth) whose weights of "
                        "matching name and shape start the model; another class table gets new heads")
    parser.add_argument("--backbone-weights", help="local torchvision ResNet state dict (ImageNet initialisation)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on CUDA)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is much "
                        "faster on a CPU that other processes keep busy)")
    return parser.parse_args(argv)


def config_with_overrides(args: argparse.Namespace) -> TrainConfig:
    """The config file with the command line's --max-iters and --deterministic applied, checked again."""
    cfg = load_config(resolve_config(args.config, resolved_device(args.device)))
    train = cfg.train
    if args.max_iters is not None:
        train = dataclasses.replace(train, iters=args.max_iters)
    if args.deterministic:
        train = dataclasses.replace(train, deterministic=True)
    cfg = dataclasses.replace(cfg, train=train)
    cfg.validate(f"{args.config} with command-line overrides")
    return cfg


def train(args: argparse.Namespace) -> Path:
    """Run the training the parsed command line describes; return the checkpoint it ends with."""
    trainer = Trainer(config_with_overrides(args), args.data_root, args.work_dir, init_from=args.init_from,
                      backbone_weights=args.backbone_weights, resume=args.resume, device=args.device,
                      threads=args.threads, stop_at=args.stop_at)
    return trainer.run()


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad input (config, data, checkpoint, option) or a full disk, 130 cancelled, 1 a crash.

    Every ending is also a structured event in ``WORK_DIR/events.jsonl`` (``done``, or ``failed`` with one
    sentence and a kind), which is what a worker reads; started by a worker, the process dies with it.
    """
    args = parse_args(argv)
    tie_to_parent()
    events = EventLog(Path(args.work_dir), enabled=os.environ.get("RANK", "0") == "0")
    try:
        result = train(args)
    except TrainingCancelled as exc:
        events.emit("failed", message=str(exc), kind="cancelled")
        print(f"cancelled: {exc}", file=sys.stderr)
        return 130
    except (TrainingError, CheckpointError, DataError, ClassTableError, OSError) as exc:
        message, kind = describe_failure(exc, Path(args.work_dir))
        events.emit("failed", message=message, kind=kind)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except Exception as exc:
        message, kind = describe_failure(exc, Path(args.work_dir))
        events.emit("failed", message=message, kind=kind)
        raise
    if result.name == "final.pt":
        events.emit("done", model=result.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
