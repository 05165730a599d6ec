"""What runs the model, by name: users of every comparable plugin ask whether their GPU is used."""
from __future__ import annotations

from typing import Any


def device_hardware(device: str) -> dict[str, Any]:
    """What runs the model, by name: the GPU's model and memory, or the CPU's model name (``info``'s
    ``device_name`` and ``device_memory_bytes``, None where unknown), so users see whether their GPU is used."""
    if device.startswith("cuda"):
        import torch

        props = torch.cuda.get_device_properties(torch.device(device))
        return {"device_name": str(props.name), "device_memory_bytes": int(props.total_memory)}
    return {"device_name": cpu_name(), "device_memory_bytes": None}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else the platform's word for it), with its core count."""
    import os
    import platform

    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    name = name or platform.processor() or platform.machine() or "CPU"
    return f"{name} ({os.cpu_count() or '?'} logical cores)"

