"""Tuning options for the project's training step, each measured as one change from the project's
defaults.

Imported by train_throughput.py (`--ablation`). Every variant runs train_epoch below: the trainer's
epoch built from its parts (part_2_cifar.epoch_batches: the same batches, augmentation and learning
rates; the same loss and step), with the one change passed in (amp_dtype, and the forward / scaler /
after_step hooks) or made to the model and optimizer it is given. With no change it is
part_2_cifar.train_epoch exactly (tests/test_benchmarks.py checks the numbers), so the "project" row
is the loop train() runs, and each other row is read against it. Each variant gets a fresh model,
untimed warm-up epochs, then timed epochs; compiled variants also report their first epoch
(compilation included) and the epochs a run needs before the compile time pays for itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

import part_2_cifar as p2
from benchmarks.benchlib import summarize, timed
from cifarkit.core import cifar_files, machine


@dataclass(frozen=True)
class Variant:
    name: str
    change: str  # what differs from part_2_cifar's defaults, in words
    # "auto" (the project's autocast_dtype), "bf16", "fp16" (with GradScaler) or "fp32"
    amp: str = "auto"
    channels_last: bool = True
    # "default" (foreach on CUDA, for-loop on CPU), "for-loop", "foreach" or "fused"
    sgd: str = "default"
    compile_mode: str | None = None  # None for eager, else torch.compile's mode
    cuda_graph: bool = False  # forward and backward captured with torch.cuda.make_graphed_callables
    # loss.item() every step, as many training loops do to print the loss
    sync_per_step: bool = False


PROJECT = Variant(
    "project", "none: the epoch of part_2_cifar.train_epoch, as train() runs it (the reference row)"
)
GPU_VARIANTS = [
    PROJECT,
    replace(
        PROJECT, name="fp16", change="fp16 autocast with GradScaler instead of bf16", amp="fp16"
    ),
    replace(
        PROJECT, name="fp32", change="no autocast (fp32; TF32 off, PyTorch's default)", amp="fp32"
    ),
    replace(
        PROJECT, name="nchw", change="channels_last off (NCHW model and input)", channels_last=False
    ),
    replace(
        PROJECT,
        name="sgd-for-loop",
        change="SGD foreach=False (a Python loop over parameters)",
        sgd="for-loop",
    ),
    replace(PROJECT, name="sgd-fused", change="SGD fused=True (one kernel)", sgd="fused"),
    replace(
        PROJECT,
        name="sync-per-step",
        change="loss.item() every step (a host sync per step)",
        sync_per_step=True,
    ),
    replace(
        PROJECT,
        name="cuda-graph",
        change="forward+backward as CUDA graphs (make_graphed_callables)",
        cuda_graph=True,
    ),
    replace(
        PROJECT, name="compile", change="torch.compile(model), mode default", compile_mode="default"
    ),
    replace(
        PROJECT,
        name="compile-ro",
        change="torch.compile(model, mode='reduce-overhead'): CUDA graphs",
        compile_mode="reduce-overhead",
    ),
]
CPU_VARIANTS = [
    PROJECT,
    replace(
        PROJECT, name="nchw", change="channels_last off (NCHW model and input)", channels_last=False
    ),
    replace(PROJECT, name="sgd-foreach", change="SGD foreach=True", sgd="foreach"),
    replace(PROJECT, name="sgd-fused", change="SGD fused=True", sgd="fused"),
    replace(
        PROJECT, name="compile", change="torch.compile(model), mode default", compile_mode="default"
    ),
]
EXTRA_VARIANTS = [  # opt-in by name with --variants: minutes of autotuning on a GPU
    replace(
        PROJECT,
        name="compile-max",
        change="torch.compile(model, mode='max-autotune-no-cudagraphs')",
        compile_mode="max-autotune-no-cudagraphs",
    ),
    replace(PROJECT, name="bf16", change="bf16 autocast forced", amp="bf16"),
]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
SGD_OPTIONS = {
    "for-loop": {"foreach": False},
    "foreach": {"foreach": True},
    "fused": {"fused": True},
}


@contextlib.contextmanager
def fresh_compile_cache() -> Iterator[None]:
    """Empty on-disk caches for inductor and Triton, so compile times are those of a user's first
    run."""
    saved = {key: os.environ.get(key) for key in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
        os.environ.update(
            TORCHINDUCTOR_CACHE_DIR=f"{tmp}/inductor", TRITON_CACHE_DIR=f"{tmp}/triton"
        )
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: p2.DeviceData,
    config: dict,
    epoch: int,
    amp_dtype: torch.dtype | None,
    *,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    after_step: Callable[[torch.Tensor], None] | None = None,
) -> dict:
    """part_2_cifar.train_epoch with one thing changed: `forward` replaces model(x) (a compiled or
    CUDA-graphed model), `scaler` is a GradScaler for fp16, and `after_step(loss)` runs after each
    step (e.g. loss.item(), the host sync many loops do to print the loss). Returns the same
    metrics."""
    device = data.train_labels.device
    # not `or`: bool() of a compiled module calls len()
    forward = model if forward is None else forward
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    model.train()
    for lr, x, y in p2.epoch_batches(data, config, epoch):
        for group in optimizer.param_groups:
            group["lr"] = lr
        with machine.autocast(device.type, amp_dtype):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if after_step is not None:
            after_step(loss)
        loss_sum += loss.detach() * y.numel()
        correct += (logits.argmax(1) == y).sum()
        seen += y.numel()
    return {
        "train_loss": loss_sum.item() / seen,
        "train_accuracy": 100 * correct.item() / seen,
        "learning_rate": lr,
        "train_images": seen,
    }


def sync(loss: torch.Tensor) -> None:
    loss.item()  # waits for the step: what printing the loss every step costs


def build(
    variant: Variant, config: dict, data: p2.DeviceData | None, device: torch.device
) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    """(model, optimizer, the rest of train_epoch's arguments) for one variant: the trainer's setup,
    one change."""
    model, optimizer = p2.new_model_and_optimizer(config, device)
    amp_dtype = machine.autocast_dtype(device) if variant.amp == "auto" else AMP_DTYPES[variant.amp]
    forward = None  # train_epoch's default: model(x)
    # NCHW weights (the same parameters, so the optimizer still holds them) and input
    if not variant.channels_last:
        model.to(memory_format=torch.contiguous_format)

        def forward(x: torch.Tensor) -> torch.Tensor:
            return model(x.contiguous())

    if variant.sgd != "default":
        optimizer = p2.make_optimizer(model, config, **SGD_OPTIONS[variant.sgd])
    if variant.cuda_graph:
        crop = p2.CROP_PADDING
        sample = p2.normalize(
            data.train_images[
                : config["batch_size"], crop : crop + 32, crop : crop + 32
            ].contiguous()
        )
        # graphed callables need the cache off
        with machine.autocast(device.type, amp_dtype, cache_enabled=False):
            forward = torch.cuda.make_graphed_callables(model, (sample,))
    elif variant.compile_mode is not None:
        forward = torch.compile(model, mode=variant.compile_mode)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return (
        model,
        optimizer,
        {
            "amp_dtype": amp_dtype,
            "forward": forward,
            "scaler": scaler,
            "after_step": sync if variant.sync_per_step else None,
        },
    )


def measure_variant(
    variant: Variant,
    config: dict,
    data: p2.DeviceData,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict:
    """Images/s of one variant: setup and first epoch timed apart (compilation, graph capture), then
    the median."""
    setup_seconds, (model, optimizer, options) = timed(
        device, lambda: build(variant, config, data, device)
    )

    def epoch(e: int) -> int:
        return train_epoch(model, optimizer, data, config, e, **options)["train_images"]

    first_seconds, images = timed(device, lambda: epoch(1))
    rates = []
    for e in range(2, 2 + warmup - 1 + repeats):
        seconds, images = timed(device, lambda e=e: epoch(e))
        if e > warmup:
            rates.append(images / seconds)
    stats = summarize(rates)
    steady_epoch = images / stats["median"]
    return {
        **asdict(variant),
        "train": stats,
        "setup_seconds": setup_seconds,
        "first_epoch_seconds": first_seconds,
        "steady_epoch_seconds": steady_epoch,
        "first_epoch_extra_seconds": setup_seconds + first_seconds - steady_epoch,
    }


def eval_batch_sizes(
    data: p2.DeviceData, config: dict, device: torch.device, repeats: int
) -> list[dict]:
    """part_2_cifar.evaluate on the test images with each batch size in turn."""
    model, _ = p2.new_model_and_optimizer(config, device)
    amp_dtype = machine.autocast_dtype(device)
    n = data.test_labels.numel()
    rows = []
    for size in sorted({s for s in (250, 500, 1000, 2500, 5000, 10_000) if s <= n} | {n}):
        rates = []
        for i in range(1 + repeats):
            seconds, _ = timed(
                device,
                lambda size=size: p2.evaluate(
                    model, data.test_images, data.test_labels, amp_dtype, batch_size=size
                ),
            )
            if i > 0:
                rates.append(n / seconds)
        rows.append(
            {
                "eval_batch_size": size,
                "images": n,
                "eval": summarize(rates),
                "project_default": size == p2.EVAL_BATCH_SIZE,
            }
        )
    return rows


# (case, dropout_rate, learning_rate) run in order in one process; then the next process
FLOAT_CHECK_PROCESSES = [
    [
        ("first compile in a new process, empty on-disk cache", 0.25, 0.01),
        ("same process, new model, same floats", 0.25, 0.01),
        ("same process, new model, new dropout_rate", 0.30, 0.01),
    ],
    [
        ("new process, warm on-disk cache, same floats as the first", 0.25, 0.01),
        ("new process, new dropout_rate and learning_rate", 0.35, 0.02),
    ],
]


def first_steps(
    cases: list[tuple[str, float, float]], config: dict, device: torch.device, mode: str
) -> list[dict]:
    """In this process: the first and second training step of a freshly compiled model for each
    (case, p, lr)."""
    batch = config["batch_size"]
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(
        0, 256, (batch, 32, 32, 3), dtype=torch.uint8, device=device, generator=generator
    )
    x, y = (
        p2.normalize(images),
        torch.randint(0, cifar_files.NUM_CLASSES, (batch,), device=device, generator=generator),
    )
    rows = []
    for label, dropout, lr in cases:
        trial = {**config, "dropout_rate": dropout, "learning_rate": lr}
        _, optimizer, options = build(replace(PROJECT, compile_mode=mode), trial, None, device)

        def step(options=options, optimizer=optimizer) -> None:
            with machine.autocast(device.type, options["amp_dtype"]):
                loss = F.cross_entropy(options["forward"](x).float(), y)
            loss.backward()
            optimizer.step()

        first, _ = timed(device, step)
        second, _ = timed(device, step)
        rows.append(
            {
                "case": label,
                "dropout_rate": dropout,
                "learning_rate": lr,
                "first_step_seconds": first,
                "second_step_seconds": second,
            }
        )
    return rows


def compile_float_check(config: dict, device: torch.device, mode: str = "default") -> list[dict]:
    """Does a new trial's dropout or learning rate make torch.compile compile again?

    Real processes, since in-memory caches outlive torch._dynamo.reset(): the first runs a first
    compile, a new model with the same floats and one with a new dropout; the second, sharing the
    first's on-disk inductor and Triton caches, the same floats again and then new ones. The
    learning rate never enters the compiled graph (only the model is compiled), so it changes
    together with dropout in the last row.
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="compile-cache-") as tmp:
        env = {
            **os.environ,
            "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor",
            "TRITON_CACHE_DIR": f"{tmp}/triton",
        }
        for cases in FLOAT_CHECK_PROCESSES:
            request = json.dumps(
                {"cases": cases, "config": config, "device": str(device), "mode": mode}
            )
            done = subprocess.run(
                [sys.executable, "-m", "benchmarks.ablation", request],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise RuntimeError(
                    f"float check process exited {done.returncode}: {done.stderr.strip()[-500:]}"
                )
            rows += json.loads(done.stdout.strip().splitlines()[-1])
            for row in rows[-len(cases) :]:
                print(
                    f"  compile check: {row['case']}: first step {row['first_step_seconds']:.1f} "
                    "s, next "
                    f"{row['second_step_seconds']:.3f} s",
                    flush=True,
                )
    return rows


def measure_or_error(
    variant: Variant,
    config: dict,
    data: p2.DeviceData,
    device: torch.device,
    warmup: int,
    repeats: int,
) -> dict:
    """measure_variant's row, or the variant with the error that stopped it (an option this torch or
    GPU lacks)."""
    try:
        row = measure_variant(variant, config, data, device, warmup, repeats)
        print(
            f"  ablation {variant.name}: {row['train']['median']:,.0f} img/s, first epoch extra "
            f"{row['first_epoch_extra_seconds']:.1f} s",
            flush=True,
        )
    except Exception as e:
        row = {
            **asdict(variant),
            "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}",
        }
        print(f"  ablation {variant.name}: failed: {row['error']}", flush=True)
    finally:
        torch._dynamo.reset()
    return row


def run_ablation(
    variants: list[Variant],
    config: dict,
    data: p2.DeviceData,
    device: torch.device,
    warmup: int,
    repeats: int,
    eval_repeats: int,
    float_check: bool,
) -> dict:
    """The project row first, then each variant; a failure is recorded as its error, not the end of
    the benchmark."""
    rows = []
    for variant in [PROJECT, *(v for v in variants if v != PROJECT)]:
        with fresh_compile_cache():
            rows.append(measure_or_error(variant, config, data, device, warmup, repeats))
    eager = next((r for r in rows if r["name"] == PROJECT.name and "error" not in r), None)
    for row in rows:
        if row.get("compile_mode") or row.get("cuda_graph"):
            if "error" not in row and eager is not None:
                gain = eager["steady_epoch_seconds"] - row["steady_epoch_seconds"]
                row["break_even_epochs"] = (
                    (row["first_epoch_extra_seconds"] - eager["first_epoch_extra_seconds"]) / gain
                    if gain > 0
                    else None
                )
    result = {
        "variants": rows,
        "eval_batch_sizes": eval_batch_sizes(data, config, device, eval_repeats),
    }
    if float_check:
        try:
            result["compile_float_check"] = compile_float_check(config, device)
        except Exception as e:
            result["compile_float_check_error"] = (
                f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"
            )
    return result


# one process of compile_float_check: JSON request in argv, JSON rows as stdout's last line
if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    print(
        json.dumps(
            first_steps(
                request["cases"],
                request["config"],
                torch.device(request["device"]),
                request["mode"],
            )
        )
    )
