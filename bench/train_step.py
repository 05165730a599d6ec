"""Training-step throughput and peak memory of FactSeg: fp32 vs mixed precision, CPU and (when present) CUDA.

    .venv/bin/python bench/train_step.py                      # ResNet-50, 896², batch 2, CPU (+ CUDA if lent)
    .venv/bin/python bench/train_step.py --device cuda --steps 20
    .venv/bin/python bench/train_step.py --backbone resnet18 --size 512 --json out.json

One step is ``training.trainer.Trainer.step`` itself (forward in train mode, joint CP loss with small-object
mining, backward, grad clip 35, SGD step): the code training/train.py runs per iteration, with the paper's
optimisation settings and the model defaults of ``factseg_core.FactSegConfig``. Each (device, precision) runs in its own child process so that
the CPU peak (max RSS of that process) belongs to that mode alone; on CUDA the peak is
``torch.cuda.max_memory_allocated``. Mixed precision is bf16 autocast (CPU and CUDA with bf16) or fp16
with a GradScaler (older GPUs).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from factseg_core.config import IGNORE_INDEX, PATCH_SIZE


def child(args: argparse.Namespace) -> dict:
    """Time ``args.steps`` training steps after ``args.warmup`` in this process; return the figures."""
    import torch

    from factseg_core import FactSegConfig
    from training.train_config import OptimConfig, TrainConfig
    from training.trainer import Trainer

    device = torch.device(args.device)
    amp = "off" if args.mode == "fp32" else ("bf16" if device.type == "cpu" else "auto")
    config = TrainConfig(model=FactSegConfig(args.backbone), train=OptimConfig(amp=amp, seed=0))
    with tempfile.TemporaryDirectory(prefix="factseg-train-step-") as work:
        trainer = Trainer(config, data_root=work, work_dir=work, device=args.device, threads=args.threads,
                          progress_bar=False)
        trainer.net.train()
        amp_dtype = trainer.runtime.amp_dtype
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch, 3, args.size, args.size, generator=gen).to(device)
        labels = torch.randint(0, config.model.num_classes, (args.batch, args.size, args.size), generator=gen)
        labels[:, : args.size // 8] = IGNORE_INDEX
        labels = labels.to(device)

        def step() -> float:
            return trainer.step(images, labels).loss  # float() inside synchronises with the device

        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - start)
        trainer.log.close()
    result = {
        "device": device.type,
        "mode": args.mode,
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
        "backbone": args.backbone,
        "size": args.size,
        "batch": args.batch,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "step_s_median": sorted(times)[len(times) // 2],
        "images_per_s": args.batch * len(times) / sum(times),
        "last_loss": loss,
    }
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    else:
        result["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=PATCH_SIZE)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per mode (default 2: CPU steps are slow)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto", help="cpu, cuda, or auto = cpu and cuda when present")
    parser.add_argument("--modes", default="fp32,amp", help="comma list of fp32, amp")
    parser.add_argument("--threads", type=int, help="torch CPU threads in the children")
    parser.add_argument("--json", help="write all results here")
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    import torch

    devices = ["cpu", "cuda"] if args.device == "auto" and torch.cuda.is_available() else (
        ["cpu"] if args.device == "auto" else [args.device])
    results = []
    for device in devices:
        for mode in args.modes.split(","):
            cmd = [sys.executable, __file__, "--child", "--device", device, "--mode", mode, "--backbone", args.backbone,
                   "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
                   "--warmup", str(args.warmup)] + (["--threads", str(args.threads)] if args.threads else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{device} {mode}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(r)
            print(f"{r['device']:>4} {r['amp_dtype']:>8}  {r['backbone']} {r['size']}² batch {r['batch']}: "
                  f"{r['images_per_s']:.3f} images/s, {r['step_s_median']:.2f} s/step, peak {r['peak_mib']:.0f} MiB"
                  f" ({r['threads']} threads)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
