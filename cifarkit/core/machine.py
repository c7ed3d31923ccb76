"""What the machine is: the device to run on (pick_device), its name, the versions that ran, and
the precision its hardware computes natively (autocast_dtype), as every summary and benchmark
records them.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from cifarkit.core.settings import ConfigError


def pick_device(name: str) -> torch.device:
    """--device: auto (a CUDA GPU if one is visible, else the CPU), cpu or cuda; ConfigError for
    cuda without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device=cuda is not allowed: no CUDA GPU is visible (use --device cpu or auto)"
        )
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's with the threads torch computes with."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def versions() -> dict:
    """The versions of Python and of the libraries a run depends on."""
    import torchvision

    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    try:
        import wandb

        found["wandb"] = wandb.__version__
    except ImportError:
        pass
    return found


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the hardware computes it natively (CUDA, CPUs with AVX512-BF16 or AMX), else None
    for fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None


def autocast(device_type: str, amp_dtype: torch.dtype | None, **options) -> torch.autocast:
    """Mixed precision in `amp_dtype`, or plain fp32 when it is None."""
    return torch.autocast(
        device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None, **options
    )
