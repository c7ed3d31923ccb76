"""What a run writes and reads: atomic saves, checkpoints loaded as data only, figures, where it ran, what it costs.

Plain helpers for part_2_cifar.py (which re-exports them), local_sweep.py, select_model.py and trt_export.py.
A crash never leaves half a file: everything is written to a temporary file and renamed over the old one.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import platform
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn


def save_atomic(obj: object, path: Path) -> None:
    """torch.save to a temporary file, flushed to disk, then renamed: a crash never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(obj: object, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # its own: several processes may write one file at once
    try:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig: object, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure through a temporary file and close it: a reader never sees half a PNG."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.png")  # two machines' sweep reports may draw one plot at once
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not one of ours; the message names the file."""


def load_checkpoint(path: Path, needs: tuple[str, ...] = ("model", "config")) -> dict:
    """Load a checkpoint as data only (weights_only=True: a checkpoint must not run code) and check its keys."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path} is not a plain-data checkpoint ({first_line})") from None
    except Exception as e:  # zip/EOF/runtime errors all mean the same thing to a person
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {e})") from None
    missing = [key for key in needs if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a part_2_cifar checkpoint: it lacks {', '.join(missing)}")
    return checkpoint


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def versions() -> dict:
    import torchvision

    found = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        import wandb

        found["wandb"] = wandb.__version__
    except ImportError:
        pass
    return found


def plot_learning_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [m[f"{split}_loss"] for m in history], label=split)
        ax_acc.plot(epochs, [m[f"{split}_accuracy"] for m in history], label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def to_cpu(obj: object) -> object:
    """A copy of nested dicts/lists with every tensor cloned to host memory: a snapshot training cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(value) for value in obj]
    return obj


# Cost: what a model costs to deploy, recorded in every summary so a sweep's runs can be chosen on accuracy and cost.

LATENCY_BATCH_SIZES = (1, 256)  # one image (interactive use) and a large batch (throughput)
LATENCY_SECONDS = 0.5  # timed per batch size, after one warm-up call: about a second or two per run in all ...
LATENCY_REPEATS = 50  # ... or this many calls, if sooner: the median of 50 is steady, and tiny models finish fast


def flops_per_image(model: nn.Module) -> int:
    """Forward-pass FLOPs of one 32x32 image, counted by PyTorch's FlopCounterMode (a multiply-add is 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()


@torch.inference_mode()
def latency_ms(model: nn.Module, device: torch.device, precision: Callable[[], AbstractContextManager],
               batch_size: int, seconds: float = LATENCY_SECONDS) -> float:
    """Median wall time of one forward pass at `batch_size` on `device` under `precision()` (the trainer's autocast,
    as evaluate() runs it), channels_last input, after a warm-up."""
    model.eval()
    x = torch.zeros(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    times: list[float] = []
    with precision():
        model(x)  # warm-up: cuDNN's kernel choice, lazy allocations
        while len(times) < 3 or (sum(times) < seconds * 1e3 and len(times) < LATENCY_REPEATS):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def model_cost(model: nn.Module, device: torch.device, precision: Callable[[], AbstractContextManager]) -> dict:
    """parameters, flops_per_image and latency_ms ({batch size: median ms}) with the device they were timed on."""
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops_per_image": flops_per_image(model),
            "latency_ms": {str(b): latency_ms(model, device, precision, b) for b in LATENCY_BATCH_SIZES},
            "latency_device": device_name(device)}
