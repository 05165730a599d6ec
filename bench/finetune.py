"""Fine-tuning on a CPU: factseg:train's defaults on the demo export (default), or initial weights vs scratch.

    .venv/bin/python bench/finetune.py --json out.json           # default factseg:train on a CPU worker
    .venv/bin/python bench/finetune.py --vs-scratch --iters 400  # demo model vs scratch, 200 iterations each
    .venv/bin/python bench/finetune.py --vs-scratch --model factseg50.pth --patch 512 --device cuda

Default run (bench/_finetune_demo.py): the demo scene exported at PATCH 256 with its ground truth as labels,
fine-tuned from the demo model by a CPU worker with CONFIG auto (= the cpu preset) and the recipe's iterations;
prints wall time, iterations/s, validation mIoU next to the targets (15 min, 50 %) and the machine's load.

--vs-scratch: do trained weights help on one's own classes?

Data: synthetic scenes (another seed than the demo model's training set) relabelled into three user classes,
``vehicle`` (small + large vehicles), ``vessel`` (ships) and ``tank`` (storage tanks), everything else
background, with their ``classes.json``: what an export of polygons drawn in QGIS gives. The held-out tiles
are other scenes than the training tiles.

Runs, with the same data, seed, iterations, batch, crops and learning-rate schedule (training/configs/
finetune.yaml, scaled to the run's length):
  * fine-tune: ``--init-from`` the demo model (demo_data/model/final.pt after ``make demo``; when absent, one
    is trained here first on the synthetic iSAID classes and the output says so), encoder LR × 0.1;
  * scratch: the same architecture from random weights, encoder at the full LR (the scratch recipe, its best
    chance).
Both are evaluated on the held-out tiles with the worker's sliding-window engine: mIoU, foreground mIoU, IoU
per class.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from factseg_core import FactSegConfig, load_model
from training.class_table import write_class_table
from training.evaluate import evaluate_model
from training.synthetic import USER_CLASSES, write_split
from training.train_config import TrainConfig, load_config
from training.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL = REPO / "demo_data" / "model" / "final.pt"


def make_user_data(root: Path, train: int, val: int, size: int, seed: int) -> Path:
    """Relabelled synthetic train/val splits and their classes.json."""
    write_split(root, "train", train, size, seed, USER_CLASSES)
    write_split(root, "val", val, size, seed, USER_CLASSES)
    write_class_table(root, USER_CLASSES.classes)
    return root


def quick_demo_model(work: Path, iters: int, threads: int | None) -> Path:
    """A demo-architecture model trained here on synthetic iSAID classes (when no demo model exists)."""
    data = work / "isaid_synthetic"
    write_split(data, "train", 16, 256, 0)
    cfg = load_config(REPO / "training/configs/demo.yaml")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iters=iters, checkpoint_every=iters),
                              eval=dataclasses.replace(cfg.eval, enabled=False))
    return Trainer(cfg, data, work / "pretrain", device="cpu", threads=threads, progress_bar=False).run()


def run_config(args: argparse.Namespace, architecture: FactSegConfig, encoder_lr_mult: float) -> TrainConfig:
    """finetune.yaml at the benchmark's size: crops, batch, iterations (warm-up scaled to the run length)."""
    cfg = load_config(REPO / "training/configs/finetune.yaml")
    t = cfg.train
    warmup = min(t.warmup_iters, args.iters // 10)
    train = dataclasses.replace(t, iters=args.iters, batch_size=args.batch, warmup_iters=warmup,
                                encoder_lr_mult=encoder_lr_mult, checkpoint_every=args.iters, log_every=50,
                                seed=args.seed)
    data = dataclasses.replace(cfg.data, patch=args.patch, stride=args.patch // 2, workers=0)
    return dataclasses.replace(cfg, model=architecture, data=data, train=train,
                               eval=dataclasses.replace(cfg.eval, enabled=False))


def train_and_score(name: str, cfg: TrainConfig, data: Path, work: Path, args: argparse.Namespace,
                    init_from: Path | None) -> dict:
    start = time.perf_counter()
    trainer = Trainer(cfg, data, work / name, init_from=init_from, device=args.device, threads=args.threads,
                      progress_bar=False)
    kept = len(trainer.transfer.kept) if trainer.transfer else 0
    trainer.run()
    seconds = time.perf_counter() - start
    trainer.model.eval()
    metrics = evaluate_model(trainer.model, data, "val", args.eval_patch, args.eval_patch * 3 // 4, 1, False,
                             trainer.runtime.device, progress=False)
    row = {"init_from": str(init_from) if init_from else None, "tensors_kept": kept,
           "encoder_lr_mult": cfg.train.encoder_lr_mult, "train_s": round(seconds, 1),
           "miou": metrics["miou"], "fg_miou": metrics["fg_miou"],
           "iou": {r["name"]: r["iou"] for r in metrics["per_class"]}}
    ious = "  ".join(f"{k} {_pct(v)}" for k, v in row["iou"].items())
    print(f"{name:>9}: mIoU {_pct(row['miou'])}  fg mIoU {_pct(row['fg_miou'])}  ({ious})  {seconds:.0f} s", flush=True)
    return row


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _gain(runs: dict, key: str) -> float | None:
    a, b = runs["finetune"][key], runs["scratch"][key]
    return None if a is None or b is None else a - b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help=f"model to fine-tune (default {DEMO_MODEL.relative_to(REPO)})")
    parser.add_argument("--iters", type=int, default=200, help="iterations of each run (default 200)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=128, help="training crop (default 128)")
    parser.add_argument("--eval-patch", type=int, default=256, help="evaluation window (stride ¾ of it)")
    parser.add_argument("--train", type=int, default=12, help="training scenes (default 12)")
    parser.add_argument("--val", type=int, default=6, help="held-out scenes (default 6)")
    parser.add_argument("--size", type=int, default=256, help="scene side in pixels (default 256)")
    parser.add_argument("--seed", type=int, default=7, help="data and training seed (the demo model used 0)")
    parser.add_argument("--pretrain-iters", type=int, default=300, help="when no demo model exists")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--vs-scratch", action="store_true", help="the fine-tune vs scratch study")
    args = parser.parse_args(argv)
    if not args.vs_scratch:
        return default_run(args)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="factseg-finetune-bench-") as tmp:
        work = Path(tmp)
        model_path, trained_here = args.model or DEMO_MODEL, False
        if not model_path.is_file():
            if args.model:
                parser.error(f"--model {args.model} not found")
            print(f"no {DEMO_MODEL} (run `make demo`): training a quick demo model ({args.pretrain_iters} "
                  f"iterations) first", flush=True)
            model_path, trained_here = quick_demo_model(work, args.pretrain_iters, args.threads), True
        architecture = dataclasses.replace(load_model(model_path).config, num_classes=len(USER_CLASSES.classes))
        data = make_user_data(work / "user_data", args.train, args.val, args.size, args.seed)
        print(f"{args.train} training and {args.val} held-out scenes of {args.size}², classes "
              f"{[c.name for c in USER_CLASSES.classes]}; {args.iters} iterations of batch {args.batch} "
              f"({args.patch}² crops) per run, {torch.get_num_threads()} threads", flush=True)
        runs = {"finetune": train_and_score("finetune", run_config(args, architecture, 0.1), data, work, args,
                                            model_path),
                "scratch": train_and_score("scratch", run_config(args, architecture, 1.0), data, work, args, None)}
    result = {"model": str(model_path) if not trained_here else f"trained here ({args.pretrain_iters} iterations)",
              "architecture": dataclasses.asdict(architecture),
              **{k: getattr(args, k) for k in ("iters", "batch", "patch", "eval_patch", "train", "val", "size", "seed")},
              "runs": runs, "miou_gain": _gain(runs, "miou"), "fg_miou_gain": _gain(runs, "fg_miou"),
              "total_s": round(time.perf_counter() - started, 1)}
    print(f"fine-tuning − scratch: mIoU {_pct(result['miou_gain'])} points, foreground mIoU "
          f"{_pct(result['fg_miou_gain'])} points ({result['total_s']:.0f} s in all)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def default_run(args: argparse.Namespace) -> int:
    """factseg:train's defaults on a CPU worker, figures beside their targets."""
    import os

    from _finetune_demo import demo_export, train_with_defaults

    model = args.model or DEMO_MODEL
    scene = REPO / "demo_data" / "synthetic" / "scene" / "scene.tif"
    if not model.is_file() or not scene.is_file():
        print(f"needs {model} and {scene}: run `make demo` first", file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="factseg-finetune-bench-") as tmp:
        export = demo_export(scene, scene.with_name("scene_gt.tif"), Path(tmp) / "export")
        print(f"demo export: {export['tiles']} tiles of 256², classes {export['classes']}", flush=True)
        run = train_with_defaults(model, Path(tmp) / "export", Path(tmp) / "tuned.pt")
    result = {**run, "export": export, "model": str(model), "cpus": os.cpu_count(),
              "load_before": [round(v, 2) for v in load_before], "load_after": [round(v, 2) for v in os.getloadavg()]}
    print(f"{'':24}{'measured':>12}{'target':>12}")
    print(f"{'wall time (s)':24}{run['wall_s']:>12}{'< 900':>12}")
    print(f"{'iterations':24}{str(run['iterations']):>12}{'':>12}")
    print(f"{'iterations/s':24}{str(run['iterations_per_s']):>12}{'':>12}")
    print(f"{'validation mIoU (%)':24}{_pct(run['miou']):>12}{'≥ 50':>12}")
    print(f"load average before/after: {result['load_before']} / {result['load_after']} on {os.cpu_count()} CPUs")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
