"""Train FactSeg on iSAID-layout data, on a CPU, one GPU, or several (torchrun).

    .venv/bin/python training/train.py --config training/configs/demo.yaml --data-root DATA --work-dir RUN
    torchrun --nproc_per_node=2 training/train.py --config training/configs/factseg_r50_isaid.yaml ...

The recipe is the paper's (SGD momentum 0.9, weight decay 1e-4, poly LR, grad clip 35, joint CP loss with
small-object mining) in plain PyTorch: torch.amp instead of apex, DistributedDataParallel under torchrun.
The work dir receives ``latest.pt`` (and ``iter_NNNNNN.pt``) every ``checkpoint_every`` iterations, ``final.pt``
(a model checkpoint for ``factseg_core.load_model``), ``train.log``, TensorBoard scalars in ``tb/``, the
config used, and ``eval_val.json``. ``--resume`` continues from ``latest.pt`` exactly: the batches of every
iteration (order and augmentation) are a function of the seed and the iteration number alone.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script path: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse  # noqa: E402
import copy  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Sampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

from factseg_core import FactSeg, FactSegConfig, joint_loss, save_checkpoint  # noqa: E402
from factseg_core.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from factseg_core.config import SIZE_DIVISOR, SOM_RATIO  # noqa: E402
from training.isaid import DataError, PatchDataset, cache_folder, prepare  # noqa: E402

#: Every configuration key with its default; a config file may set any subset, nothing else.
DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"backbone": "resnet50", "num_classes": 16, "fpn_channels": 256, "decoder_channels": 128},
    "data": {"train_split": "train", "val_split": "val", "patch": 896, "stride": 512, "augment": True,
             "workers": 2, "prepare_workers": 1, "cache_dir": None},
    "train": {"iters": 60000, "batch_size": 8, "lr": 0.007, "momentum": 0.9, "weight_decay": 1e-4,
              "power": 0.9, "warmup_iters": 0, "warmup_factor": 0.1, "grad_clip": 35.0, "sampling": "som",
              "som_ratio": SOM_RATIO, "amp": "auto", "channels_last": True, "sync_bn": False, "seed": 0,
              "deterministic": False, "checkpoint_every": 2000, "keep_checkpoints": 2, "log_every": 20,
              "dist_timeout_min": 120},
    "eval": {"enabled": True, "patch": 896, "stride": 512, "batch_size": 1, "tta": False},
}


class ConfigError(ValueError):
    """A configuration file that does not fit :data:`DEFAULTS`."""


def load_config(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a YAML config, reject unknown sections/keys, and fill in defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections {sorted(DEFAULTS)}")
    cfg = copy.deepcopy(DEFAULTS)
    for section, values in raw.items():
        if section not in DEFAULTS:
            raise ConfigError(f"{path}: unknown section {section!r}; sections are {sorted(DEFAULTS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
        unknown = set(values) - set(DEFAULTS[section])
        if unknown:
            raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)} in {section!r}; known: {sorted(DEFAULTS[section])}")
        cfg[section].update(values)
    check_config(cfg, str(path))
    return cfg


def check_config(cfg: dict[str, dict[str, Any]], source: str = "config") -> None:
    d, t = cfg["data"], cfg["train"]
    if d["patch"] % SIZE_DIVISOR:
        raise ConfigError(f"{source}: data.patch {d['patch']} must be a multiple of {SIZE_DIVISOR}")
    if not 0 < d["stride"] <= d["patch"]:
        raise ConfigError(f"{source}: data.stride must be in 1..patch, got {d['stride']}")
    if t["sampling"] not in ("som", "ohem", "mean"):
        raise ConfigError(f"{source}: train.sampling must be som, ohem or mean, got {t['sampling']!r}")
    if t["amp"] not in ("auto", "off", "bf16", "fp16"):
        raise ConfigError(f"{source}: train.amp must be auto, off, bf16 or fp16, got {t['amp']!r}")
    if t["iters"] < 1 or t["batch_size"] < 1:
        raise ConfigError(f"{source}: train.iters and train.batch_size must be ≥ 1")


def poly_lr(base_lr: float, iteration: int, total: int, power: float, warmup_iters: int = 0,
            warmup_factor: float = 0.1) -> float:
    """Poly decay ``base·(1 − it/total)^power``, with an optional linear warm-up from ``warmup_factor·base``."""
    lr = base_lr * (1.0 - min(iteration, total) / total) ** power
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        lr *= warmup_factor * (1 - alpha) + alpha
    return lr


class IterationBatches(Sampler[list[tuple[int, int]]]):
    """Per-rank batches of ``(index, augmentation seed)`` for iterations ``start .. total − 1``.

    Like ``DistributedSampler`` with ``set_epoch``: the dataset is walked epoch by epoch in a permutation drawn
    from (seed, epoch), and the global batch of iteration *i* is positions [i·B, (i+1)·B) of that walk, split
    between ranks. Because everything derives from (seed, i), a resumed run sees exactly the batches the
    uninterrupted one would have, whatever the number of loader workers.
    """

    def __init__(self, size: int, batch_per_rank: int, world: int, rank: int, seed: int, start: int, total: int):
        if size < 1:
            raise ValueError("the training set is empty")
        self.size, self.batch, self.world, self.rank = size, batch_per_rank, world, rank
        self.seed, self.start, self.total = seed, start, total
        self._epoch, self._perm = -1, np.arange(0)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perm

    def batch_at(self, iteration: int) -> list[tuple[int, int]]:
        first = iteration * self.batch * self.world + self.rank * self.batch
        out = []
        for pos in range(first, first + self.batch):
            epoch, offset = divmod(pos, self.size)
            aug_seed = int(np.random.SeedSequence([self.seed, pos]).generate_state(1)[0])
            out.append((int(self._permutation(epoch)[offset]), aug_seed))
        return out

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for iteration in range(self.start, self.total):
            yield self.batch_at(iteration)


@dataclass
class Runtime:
    """Where this process runs: device, distributed rank/world, mixed precision."""

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    amp_dtype: torch.dtype | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup_runtime(device_arg: str, cfg: dict) -> Runtime:
    """Pick the device, join the process group under torchrun (nccl on CUDA, gloo on CPU), choose AMP."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if device_arg.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda asked for, but torch sees no CUDA GPU")
        device = torch.device("cuda", local_rank) if world > 1 or device_arg == "cuda" else torch.device(device_arg)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=cfg["train"]["dist_timeout_min"]))
    amp = cfg["train"]["amp"]
    amp_dtype = None
    if amp == "auto" and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    elif amp == "bf16":
        amp_dtype = torch.bfloat16
    elif amp == "fp16":
        if device.type != "cuda":
            raise SystemExit("train.amp fp16 needs CUDA; use bf16 or off on CPU")
        amp_dtype = torch.float16
    return Runtime(device, rank, world, local_rank, amp_dtype)


def set_determinism(cfg: dict, device: torch.device) -> None:
    seed = int(cfg["train"]["seed"])
    torch.manual_seed(seed)
    if cfg["train"]["deterministic"]:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def load_backbone_weights(model: FactSeg, path: str | os.PathLike) -> None:
    """Initialise the encoder from a local torchvision ResNet state dict (ImageNet weights)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"--backbone-weights: file not found: {path}") from None
    except Exception as exc:
        raise SystemExit(f"--backbone-weights: cannot read {path} as a weights-only torch file: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if isinstance(state, dict) and state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        model.encoder.load_torchvision_weights(state)
    except RuntimeError as exc:
        raise SystemExit(f"--backbone-weights: {path} is not a torchvision {model.config.backbone} state dict: "
                         f"{str(exc).splitlines()[0]}") from None


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Logger:
    """Plain log lines to stdout/tqdm and ``train.log``, scalars to TensorBoard (main rank only)."""

    def __init__(self, work_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.file = open(work_dir / "train.log", "a", encoding="utf-8") if enabled else None  # noqa: SIM115
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(work_dir / "tb"))
            except ImportError:
                self.line("tensorboard is not installed: no TensorBoard scalars")

    def line(self, text: str) -> None:
        if not self.enabled:
            return
        stamped = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}"
        tqdm.write(stamped)
        assert self.file is not None
        self.file.write(stamped + "\n")
        self.file.flush()

    def scalars(self, iteration: int, **values: float) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _prune(work_dir: Path, keep: int) -> None:
    olds = sorted(work_dir.glob("iter_*.pt"))
    for path in olds[: max(0, len(olds) - keep)]:
        path.unlink(missing_ok=True)


def build_model(cfg: dict) -> FactSeg:
    m = cfg["model"]
    return FactSeg(FactSegConfig(m["backbone"], m["num_classes"], m["fpn_channels"], m["decoder_channels"]))


def train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.max_iters is not None:
        cfg["train"]["iters"] = args.max_iters
    if args.deterministic:
        cfg["train"]["deterministic"] = True
    check_config(cfg, args.config)
    if args.threads:
        torch.set_num_threads(args.threads)
    rt = setup_runtime(args.device, cfg)
    t = cfg["train"]
    total = int(t["iters"])
    if t["batch_size"] % rt.world:
        raise SystemExit(f"train.batch_size {t['batch_size']} is not divisible by the {rt.world} processes")
    batch_per_rank = t["batch_size"] // rt.world
    work_dir = Path(args.work_dir)
    if rt.main:
        work_dir.mkdir(parents=True, exist_ok=True)
    set_determinism(cfg, rt.device)
    log = Logger(work_dir, rt.main)

    # data: the main rank cuts the patch cache once, the others wait and read it
    d = cfg["data"]
    cache_dir = Path(d["cache_dir"] or work_dir / "cache")
    if rt.main:
        prepare(args.data_root, d["train_split"], cache_dir, d["patch"], d["stride"], workers=d["prepare_workers"])
    if rt.distributed:
        dist.barrier()
    folder = cache_folder(cache_dir, d["train_split"], d["patch"], d["stride"])
    dataset = PatchDataset(folder, augmentation=d["augment"], seed=t["seed"])

    model = build_model(cfg)
    if args.backbone_weights:
        load_backbone_weights(model, args.backbone_weights)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=t["lr"], momentum=t["momentum"], weight_decay=t["weight_decay"])
    scaler = torch.amp.GradScaler("cuda") if rt.amp_dtype == torch.float16 else None
    start = 0
    latest = work_dir / "latest.pt"
    if args.resume:
        if latest.is_file():
            ckpt = read_checkpoint(latest)
            if ckpt.get("config") != model.config.to_dict():
                raise SystemExit(f"--resume: {latest} holds a {ckpt.get('config')} model, the config asks for "
                                 f"{model.config.to_dict()}")
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            if scaler is not None and ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            start = int(ckpt["iteration"])
            restore_rng(ckpt["rng"], rt.device)
            log.line(f"resumed from {latest} at iteration {start}")
        else:
            log.line(f"--resume: no {latest} yet, starting from iteration 0")

    model.to(rt.device)
    if rt.device.type == "cuda" and t["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    if rt.distributed and t["sync_bn"] and rt.device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # optimizer state was loaded on CPU before the move: put momentum buffers beside their parameters
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                state[key] = value.to(rt.device)
    net: nn.Module = model
    if rt.distributed:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    raw: FactSeg = model  # type: ignore[assignment]

    stop = min(total, args.stop_at) if args.stop_at else total
    sampler = IterationBatches(len(dataset), batch_per_rank, rt.world, rt.rank, t["seed"], start, stop)
    workers = int(d["workers"])
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=rt.device.type == "cuda",
                        persistent_workers=False, prefetch_factor=2 if workers else None)

    if rt.main:
        (work_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        amp_name = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[rt.amp_dtype]
        log.line(f"training {model.config.backbone} on {len(dataset)} patches of {cfg['data']['patch']}² from "
                 f"{args.data_root}: iterations {start}..{total}, batch {t['batch_size']} over {rt.world} process(es), "
                 f"device {rt.device}, amp {amp_name}")

    def save(iteration: int, path: Path) -> None:
        save_checkpoint(raw, path, optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler else {},
                        iteration=iteration, train_config=cfg, rng=rng_state(rt.device))

    net.train()
    bar = tqdm(total=total, initial=start, desc="train", unit="it", disable=not rt.main, dynamic_ncols=True)
    window_loss, window_n, window_start, run_start = 0.0, 0, time.perf_counter(), time.perf_counter()
    iteration = start
    for images, labels in loader:
        lr = poly_lr(t["lr"], iteration, total, t["power"], t["warmup_iters"], t["warmup_factor"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        images = images.to(rt.device, non_blocking=True)
        labels = labels.to(rt.device, non_blocking=True)
        if rt.device.type == "cuda" and t["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(rt.device.type, dtype=rt.amp_dtype or torch.float32, enabled=rt.amp_dtype is not None):
            fg, bi = net(images)
        loss = joint_loss(fg, bi, labels, sampling=t["sampling"], ratio=t["som_ratio"])
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t["grad_clip"]) if t["grad_clip"] else torch.tensor(0.0)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        iteration += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) and scaler is None:
            raise SystemExit(f"loss became {loss_value} at iteration {iteration}; lower train.lr or check the data")
        window_loss += loss_value
        window_n += 1
        bar.update()
        if rt.main:
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", refresh=False)
        if iteration % t["log_every"] == 0 or iteration == stop:
            now = time.perf_counter()
            its = window_n / max(now - window_start, 1e-9)
            mean_loss = window_loss / max(window_n, 1)
            log.line(f"iter {iteration}/{total} loss {mean_loss:.4f} lr {lr:.3e} grad_norm {float(grad_norm):.2f} "
                     f"{its:.2f} it/s eta {_eta((total - iteration) / max(its, 1e-9))}")
            log.scalars(iteration, **{"train/loss": mean_loss, "train/lr": lr, "train/grad_norm": float(grad_norm),
                                      "train/it_per_s": its})
            window_loss, window_n, window_start = 0.0, 0, now
        if iteration % t["checkpoint_every"] == 0 and iteration < stop and rt.main:
            save(iteration, work_dir / f"iter_{iteration:06d}.pt")
            save(iteration, latest)
            _prune(work_dir, t["keep_checkpoints"])
    bar.close()
    if rt.distributed:
        check_replicas_agree(raw, rt, log)

    if rt.main:
        save(iteration, latest)
        log.line(f"{iteration - start} iterations in {time.perf_counter() - run_start:.1f} s; checkpoint {latest}")
        if iteration >= total:
            save_checkpoint(raw, work_dir / "final.pt", iteration=iteration, train_config=cfg)
            log.line(f"final model: {work_dir / 'final.pt'}")
            run_final_evaluation(raw, cfg, args.data_root, work_dir, rt.device, log)
    log.close()
    if rt.distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def parameter_checksum(model: nn.Module) -> torch.Tensor:
    """Per-parameter (sum, sum of |x|, sum of squares) in float64: equal weights give equal checksums."""
    rows = [torch.stack((p.double().sum(), p.double().abs().sum(), p.double().pow(2).sum())) for p in model.parameters()]
    return torch.stack(rows).detach()


def check_replicas_agree(model: nn.Module, rt: Runtime, log: Logger) -> None:
    """Compare every rank's parameters with rank 0's (DDP keeps them in step; a mismatch means a bug or a
    rank that trained on different settings) and stop with an error if they differ."""
    mine = parameter_checksum(model)
    gathered = [torch.empty_like(mine) for _ in range(rt.world)]
    dist.all_gather(gathered, mine)
    differing = [r for r, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        raise RuntimeError(f"DDP replicas diverged: ranks {differing} hold parameters different from rank 0")
    log.line(f"parameters identical on all {rt.world} ranks")


def run_final_evaluation(model: FactSeg, cfg: dict, data_root: str, work_dir: Path, device: torch.device,
                         log: Logger) -> None:
    """Sliding-window evaluation of the trained model on the val split (if present) → eval_val.json."""
    from training.evaluate import evaluate_model, format_table

    e, split = cfg["eval"], cfg["data"]["val_split"]
    if not e["enabled"]:
        return
    if not (Path(data_root) / split / "images").is_dir():
        log.line(f"no {split} split under {data_root}: skipping the final evaluation")
        return
    model.eval()
    metrics = evaluate_model(model, data_root, split, e["patch"], e["stride"], e["batch_size"], e["tta"], device)
    (work_dir / f"eval_{split}.json").write_text(json.dumps(metrics, indent=1))
    log.line(f"evaluation on {split}:\n{format_table(metrics)}")
    fg = metrics["fg_miou"]
    log.scalars(int(cfg["train"]["iters"]), **{f"{split}/miou": metrics["miou"] or 0.0, f"{split}/fg_miou": fg or 0.0})


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train FactSeg on iSAID-layout data (also under torchrun).")
    parser.add_argument("--config", required=True, help="YAML config (see training/configs/)")
    parser.add_argument("--data-root", required=True, help="dataset root with {train,val}/images and /masks")
    parser.add_argument("--work-dir", required=True, help="folder for checkpoints, logs, TensorBoard and caches")
    parser.add_argument("--max-iters", type=int, help="override train.iters (the length of the LR schedule)")
    parser.add_argument("--stop-at", type=int, help="stop after this iteration, keeping the schedule of the full "
                        "run (a planned interruption; continue later with --resume)")
    parser.add_argument("--resume", action="store_true", help="continue from WORK_DIR/latest.pt")
    parser.add_argument("--backbone-weights", help="local torchvision ResNet state dict (ImageNet initialisation)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    parser.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on CUDA)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice; 1 is much "
                        "faster on a CPU that other processes keep busy)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (ConfigError, CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
