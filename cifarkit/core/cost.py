"""What a model costs to deploy, recorded in every summary so that a sweep's runs can be chosen on
accuracy and cost: its parameters, its forward-pass FLOPs per image, and its latency at batch 1
and 256 on the run's device, timed as the export times its backends (timing.py).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
import torch.nn as nn

from cifarkit.core.machine import device_name
from cifarkit.core.timing import latency_stats, time_iterations

LATENCY_BATCH_SIZES = (1, 256)  # one image (interactive use) and a large batch (throughput)
LATENCY_SECONDS = 1.0  # a run's whole latency timing, both batch sizes and their warm-ups ...
LATENCY_SHARE = 0.02  # ... or this share of the run's own time if less: a run of a few seconds (a
# smoke test's, a test suite's) is not timed for longer than a sliver of what it trained
LATENCY_REPEATS = 3  # timed calls per batch size at least, however short the time: a median of 3
LATENCY_WARMUP = 0.2  # the share of each batch size's time spent warming up, at least one call


def flops_per_image(model: nn.Module) -> int:
    """Forward-pass FLOPs of one 32x32 image in the convolutions and fully connected layers, a
    multiply-add being 2 FLOPs: the count of PyTorch's FlopCounterMode, which counts only those
    (matrix products; batch norm, ReLU and pooling are 0), as tests/test_trainer.py checks. Counted
    from each layer's output shape, without FlopCounterMode: its first use imports torch._dynamo,
    over a second for every process that trains."""
    flops = 0

    def count(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(layer, nn.Conv2d):  # each output value: in/groups x kernel multiply-adds
            kernel = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
            flops += 2 * output.numel() * kernel
        elif isinstance(layer, nn.Linear):
            flops += 2 * output.numel() * layer.in_features

    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    hooks = [
        m.register_forward_hook(count)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return flops


@torch.inference_mode()
def latency_ms(
    model: nn.Module,
    device: torch.device,
    precision: Callable[[], AbstractContextManager],
    batch_size: int,
    seconds: float,
) -> float:
    """p50 ms of one forward pass at `batch_size` on `device` under `precision()` (the trainer's
    autocast, as evaluate() runs it), channels_last input already on the device, the device
    synchronised after each call: timing.time_iterations for `seconds` (a LATENCY_WARMUP share of
    them warming up), LATENCY_REPEATS calls at least; timing.latency_stats's nearest-rank p50."""
    model.eval()
    x = torch.zeros(batch_size, 3, 32, 32, device=device)
    x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with precision():
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times, _ = time_iterations(
        step, LATENCY_WARMUP * seconds, (1 - LATENCY_WARMUP) * seconds, LATENCY_REPEATS
    )
    return latency_stats(times, batch_size)["p50_ms"]


def model_size(model: nn.Module) -> dict:
    """{"parameters": how many, "flops_per_image": flops_per_image}: known before training."""
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_image": flops_per_image(model),
    }


def model_cost(
    model: nn.Module,
    device: torch.device,
    precision: Callable[[], AbstractContextManager],
    run_seconds: float = math.inf,
) -> dict:
    """parameters, flops_per_image and latency_ms ({batch size: p50 ms}) with the device they were
    timed on. The timing takes LATENCY_SECONDS in all, or LATENCY_SHARE of `run_seconds` (the
    run's wall time) if that is less, shared by the batch sizes."""
    seconds = min(LATENCY_SECONDS, LATENCY_SHARE * run_seconds) / len(LATENCY_BATCH_SIZES)
    latency = {
        str(b): latency_ms(model, device, precision, b, seconds) for b in LATENCY_BATCH_SIZES
    }
    return {**model_size(model), "latency_ms": latency, "latency_device": device_name(device)}
