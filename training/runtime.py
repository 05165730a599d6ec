"""Where a training process runs: device, torchrun rank and world, mixed precision, seeds and RNG state."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import TrainingError
from .train_config import OptimConfig


@dataclass
class Runtime:
    """Device, distributed rank/world, mixed-precision dtype of this process."""

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

    @property
    def amp_name(self) -> str:
        return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]


def _device(device_arg: str, world: int, local_rank: int) -> torch.device:
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    if not device_arg.startswith("cuda"):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrainingError("--device cuda asked for, but torch sees no CUDA GPU")
    device = torch.device("cuda", local_rank) if world > 1 or device_arg == "cuda" else torch.device(device_arg)
    torch.cuda.set_device(device)
    return device


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto" and device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise TrainingError("train.amp fp16 needs CUDA; use bf16 or off on CPU")
        return torch.float16
    return None


def setup_runtime(device_arg: str, train: OptimConfig) -> Runtime:
    """Pick the device, join the process group under torchrun (nccl on CUDA, gloo on CPU), choose AMP."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(device_arg, world, local_rank)
    amp_dtype = _amp_dtype(train.amp, device)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=train.dist_timeout_min))
    return Runtime(device, rank, world, local_rank, amp_dtype)


def set_determinism(train: OptimConfig, device: torch.device) -> None:
    """Seed torch; deterministic algorithms when asked, else cuDNN autotuning on CUDA."""
    torch.manual_seed(int(train.seed))
    if train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def parameter_checksum(model: nn.Module) -> torch.Tensor:
    """Per-parameter (sum, sum of |x|, sum of squares) in float64: equal weights give equal checksums."""
    rows = [torch.stack((p.double().sum(), p.double().abs().sum(), p.double().pow(2).sum())) for p in model.parameters()]
    return torch.stack(rows).detach()


def check_replicas_agree(model: nn.Module, rt: Runtime) -> str:
    """Compare every rank's parameters with rank 0's (DDP keeps them in step; a mismatch means a bug or a
    rank that trained on different settings); raise TrainingError if they differ, else return a log line."""
    mine = parameter_checksum(model)
    gathered = [torch.empty_like(mine) for _ in range(rt.world)]
    dist.all_gather(gathered, mine)
    differing = [r for r, other in enumerate(gathered) if not torch.equal(other, gathered[0])]
    if differing:
        raise TrainingError(f"DDP replicas diverged: ranks {differing} hold parameters different from rank 0")
    return f"parameters identical on all {rt.world} ranks"
