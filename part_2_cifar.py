"""Train SimpleCNN on CIFAR-100 with hyperparameters from wandb.config; the program a W&B sweep
launches.

    python part_2_cifar.py                       # one default run; downloads CIFAR-100 to ./data
    python part_2_cifar.py --learning_rate=0.005 --epochs 40 --wandb-mode offline
    wandb sweep sweep_config.json && wandb agent <sweep-id>   # W&B Bayesian sweep (launches this)
    python local_sweep.py sweep_config.json --trials 30        # the same sweep without a W&B server

The whole data set lives on the device as uint8; every epoch draws a permutation there, cuts
batches by indexing and crops/flips them as batched tensor ops: no PIL, no per-image Python.
Validation accuracy (the sweep's metric) comes from 5,000 training images held out by a fixed,
stratified split; the 10,000 test images are scored once, at the end, for the report.

Last measured (2026-11-27, benchmarks/RESULTS.md; synthetic data in the CIFAR-100 layout, batch
256): 2-core Intel Xeon with AVX512-BF16/AMX (bf16 autocast) ~1,000 training images/s, 2.6-2.9x a
PIL + DataLoader pipeline; 2-core AMD EPYC without AVX512 (fp32) 288 images/s, 1.27x. CIFAR-100
accuracy: not measured yet (no data set and no GPU where this was written); README "Results".

Sections: settings, data, model, train/evaluate, one training as one W&B run, command line, main.
The rest is cifarkit/core's: settings.py (parsing and checking a setting), cifar_files.py (where
CIFAR-100 is on disk), run_files.py (what a run folder holds: checkpoints and their writing, the
summary, the data identity, the resume rules), wandb_connect.py (W&B and `wandb agent`'s protocol:
its arguments, a sweep's null, a refused value, the model artifact), cli.py (exit codes, errors,
parser, stop signals), machine.py, cost.py, figures.py. benchmarks/ablation.py varies the loop.
"""

from __future__ import annotations

# As a program: a stop while torch imports (a second) is one line and 128 + n, as in main.
if __name__ == "__main__":
    from cifarkit.core.cli import stop_while_importing

    stop_while_importing()

import argparse
import functools
import math
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from cifarkit.core import cli, run_files, wandb_connect
from cifarkit.core.cifar_files import (
    DATA_DIR_HELP,
    NUM_CLASSES,
    CifarSource,
    cifar100_source,
    load_cifar100,
)
from cifarkit.core.cost import model_cost, model_size
from cifarkit.core.figures import figures_wanted, plot_learning_curve
from cifarkit.core.folders import unwritable
from cifarkit.core.machine import autocast, autocast_dtype, device_name, pick_device, versions
from cifarkit.core.run_files import BEST_CHECKPOINT, LAST_CHECKPOINT, CheckpointError
from cifarkit.core.settings import ConfigError, Setting, Settings

# --------------------------------------------------------------------------------------------------
# Settings: one row per key, the only place a hyperparameter is written down. Keys are exactly the
# parameter names in sweep_config.json; each is a `--key=value` option too. A value is parsed by
# its default's type and checked against `allowed` (settings.py).
# Upper bounds refuse a damaged config before it allocates: 4096 filters is twice ResNet-50's widest
# layer, a batch at most CIFAR-100's 50000 training images, 10000 epochs ten times ~1000 in use.

SETTINGS = Settings(  # key=Setting(default, allowed, help)
    learning_rate=Setting(0.01, "(0, inf)", "peak SGD rate after warm-up (swept 1e-4..1e-2)"),
    momentum=Setting(0.9, "[0, 1)", "SGD Nesterov momentum (swept 0.8..0.99)"),
    batch_size=Setting(256, "[1, 50000]", "training images per step (swept 64..512)"),
    num_filters_1=Setting(64, "[1, 4096]", "channels of the first 3x3 convolution"),
    num_filters_2=Setting(128, "[1, 4096]", "channels of the second 3x3 convolution"),
    num_filters_3=Setting(256, "[1, 4096]", "channels of the third 3x3 convolution"),
    dropout_rate=Setting(0.25, "[0, 1)", "dropout before each fully connected layer"),
    epochs=Setting(30, "[1, 10000]", "the budget: the schedule anneals to 0 at its end"),
    weight_decay=Setting(5e-4, "[0, inf)", "SGD's L2 penalty (CIFAR's usual, He et al. 2016)"),
    label_smoothing=Setting(0.1, "[0, 1)", "cross-entropy label smoothing (Szegedy et al. 2016)"),
    warmup_epochs=Setting(1.0, "[0, 10000]", "linear learning-rate warm-up from 0, in epochs"),
    lr_schedule=Setting("cosine", "{cosine, constant}", "after warm-up: cosine to 0, or constant"),
    seed=Setting(0, "[0, 2147483648)", "initialisation, batch order, augmentation, dropout"),
    val_size=Setting(5000, "[1, inf)", "images held out for validation, by class (not swept)"),
)
DEFAULTS = SETTINGS.defaults
with_defaults = SETTINGS.with_defaults  # absent or None (a sweep's null): the default
validate_config = SETTINGS.validate  # every key parsed and checked; ConfigError names a bad one

# --------------------------------------------------------------------------------------------------
# Data: uint8 arrays (cifar_files.load_cifar100) -> stratified split -> uint8 tensors on the
# device, augmented in batches.

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)  # per-channel mean of the 50,000 training images, [0, 1]
CIFAR100_STD = (0.2673, 0.2564, 0.2762)  # per-channel standard deviation of the same images
SPLIT_SEED = 20240601  # fixed, so every run and sweep trial is scored on the same validation images
CROP_PADDING = 4  # pixels of zero padding around each image before the random 32x32 crop
EVAL_BATCH_SIZE = 1000  # evaluation batch; no gradients, so large batches are cheap
PROGRESS_SECONDS = 15.0  # an epoch longer than this (a CPU) prints a progress line this often
# Checkpoints are written at most this often, plus at the end and on any exception: a save takes
# ~0.1 s and a GPU epoch ~0.3 s, so saving every epoch would slow a run by a third.
CHECKPOINT_SECONDS = 60.0  # a SIGKILL loses less than this


def stratified_split(
    labels: np.ndarray, val_size: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train_indices, val_indices): val_size images, each class held out in proportion to
    its size. ConfigError, one line with the class counts and the sizes allowed, for a val_size
    that would leave a class without a training or without a validation image."""
    n, refused = labels.size, f"--val-size={val_size} is not allowed"
    if n < 2:
        raise ConfigError(f"{refused}: {n} training image(s) cannot be split")
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    order = order[np.argsort(labels[order], kind="stable")]  # by class, random inside each class
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    starts = np.cumsum(counts) - counts
    rank = np.empty(n)
    rank[order] = np.arange(n) - np.repeat(starts, counts)  # each image's position in its class
    # The first val_size images by (rank + u) / class_size: the same share of every class. A class
    # has a validation image once its first is taken, and a training image while its last is not.
    by_key = np.argsort((rank + rng.random(n)) / counts[labels], kind="stable")
    place = np.empty(n, dtype=np.int64)
    place[by_key] = np.arange(n)
    first, last = np.full(counts.size, n), np.full(counts.size, -1)
    np.minimum.at(first, labels, place)
    np.maximum.at(last, labels, place)
    present = counts > 0
    low, high = int(first[present].max()) + 1, int(last[present].min())
    if not low <= val_size <= high:
        sizes = counts[present]
        per_class = f"{sizes.min()}" + (f" to {sizes.max()}" if sizes.min() < sizes.max() else "")
        lacks = "validation" if val_size < low else "training"
        allowed = f"use {low}..{high}"
        if low > high:
            allowed = "none can (a split needs 2 images in every class)"
        where = f"with {n:,} training images in {present.sum()} classes of {per_class}"
        raise ConfigError(f"{refused}: {where}, it leaves a class with no {lacks} image; {allowed}")
    return np.setdiff1d(np.arange(n), by_key[:val_size]), np.sort(by_key[:val_size])


@dataclass
class DeviceData:
    """The data set on the device: uint8 NHWC images (training ones padded), int64 labels."""

    train_images: Tensor  # (N_train, 32 + 2 * CROP_PADDING, same, 3) uint8, zero border
    train_labels: Tensor  # (N_train,)
    val_images: Tensor  # (N_val, 32, 32, 3) uint8
    val_labels: Tensor
    test_images: Tensor  # (N_test, 32, 32, 3) uint8
    test_labels: Tensor
    source: CifarSource | None = None  # the files they came from
    identity: dict = field(default_factory=dict)  # run_files.data_identity: checked on resume


def prepare_data(data_dir: Path | CifarSource, val_size: int, device: torch.device) -> DeviceData:
    """Load CIFAR-100 (load_cifar100), split off the validation images and move everything to the
    device once. A split that cannot hold out the same share of every class says so in one line."""
    source = data_dir if isinstance(data_dir, CifarSource) else cifar100_source(data_dir)
    train_x, train_y, test_x, test_y = load_cifar100(source)
    identity = run_files.data_identity(
        source.path, (train_x, train_y), (test_x, test_y), val_size, SPLIT_SEED
    )
    train_idx, val_idx = stratified_split(train_y, val_size)
    sizes = np.bincount(train_y)
    held = np.bincount(train_y[val_idx], minlength=sizes.size)[sizes > 0]
    sizes = sizes[sizes > 0]
    if np.any(held * train_y.size != val_size * sizes):  # not the same share of every class
        share = held / sizes
        held_out = f"{share.min():.1%} to {share.max():.1%} ({held.min()} to {held.max()} images)"
        not_same = f"cannot hold out the same share of each of the {sizes.size} classes"
        print(f"note: --val-size={val_size} {not_same}: {held_out}", flush=True)
    p = CROP_PADDING
    padded = np.pad(train_x[train_idx], ((0, 0), (p, p), (p, p), (0, 0)))  # zeros, as RandomCrop

    def put(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    arrays = (padded, train_y[train_idx], train_x[val_idx], train_y[val_idx], test_x, test_y)
    return DeviceData(*map(put, arrays), source, identity)


def augment(padded: Tensor, indices: Tensor, generator: torch.Generator) -> Tensor:
    """Random 32x32 crops of the padded images at `indices`, each flipped left-right with
    probability 1/2: (B, 32, 32, 3) uint8. One gather does both: per-sample row and column
    indices, the columns reversed for flipped samples."""
    b, device = indices.numel(), padded.device
    shift = torch.randint(0, 2 * CROP_PADDING + 1, (2, b, 1), device=device, generator=generator)
    flip = torch.randint(0, 2, (b, 1), device=device, generator=generator, dtype=torch.bool)
    ramp = torch.arange(32, device=device)
    rows = shift[0] + ramp  # (B, 32)
    cols = shift[1] + torch.where(flip, 31 - ramp, ramp)  # (B, 32)
    return padded[indices[:, None, None], rows[:, :, None], cols[:, None, :]]


@functools.cache
def _scale_and_shift(device: torch.device) -> tuple[Tensor, Tensor]:
    """x * scale - shift == (x / 255 - mean) / std, per channel; made once per device, since a
    tensor built from Python numbers is copied from the host, a wait for the GPU every step."""
    mean = torch.tensor(CIFAR100_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR100_STD, device=device).view(1, 3, 1, 1)
    return 1 / (255 * std), mean / std


def normalize(images: Tensor) -> Tensor:
    """uint8 (B, 32, 32, 3) -> float (B, 3, 32, 32) in channels_last memory, standardised."""
    scale, shift = _scale_and_shift(images.device)
    x = images.permute(0, 3, 1, 2).float()  # a view of NHWC memory: NCHW in channels_last
    x = x.contiguous(memory_format=torch.channels_last)  # no copy unless not dense NHWC
    return x.mul_(scale).sub_(shift)


# --------------------------------------------------------------------------------------------------
# Model


class SimpleCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool stages and three fully connected layers; 2,626,404 parameters by
    default."""

    def __init__(
        self,
        num_filters_1: int = 64,
        num_filters_2: int = 128,
        num_filters_3: int = 256,
        dropout_rate: float = 0.25,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, num_filters_1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(num_filters_1)
        self.conv2 = nn.Conv2d(num_filters_1, num_filters_2, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(num_filters_2)
        self.conv3 = nn.Conv2d(num_filters_2, num_filters_3, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(num_filters_3)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(dropout_rate)
        self.fc1 = nn.Linear(num_filters_3 * 4 * 4, 512)
        self.fc2 = nn.Linear(512, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))  # (B, f1, 16, 16)
        x = self.pool(F.relu(self.bn2(self.conv2(x))))  # (B, f2, 8, 8)
        x = self.pool(F.relu(self.bn3(self.conv3(x))))  # (B, f3, 4, 4)
        x = self.dropout(torch.flatten(x, 1))  # (B, f3 * 16)
        x = self.dropout(F.relu(self.fc1(x)))  # (B, 512)
        x = self.dropout(F.relu(self.fc2(x)))  # (B, 256)
        return self.fc3(x)  # (B, num_classes) logits


def model_from_config(config: dict) -> SimpleCNN:
    filters = (config["num_filters_1"], config["num_filters_2"], config["num_filters_3"])
    return SimpleCNN(*filters, config["dropout_rate"])


# --------------------------------------------------------------------------------------------------
# Train / evaluate


def make_optimizer(model: nn.Module, config: dict, **options) -> torch.optim.SGD:
    """SGD as the config asks: Nesterov momentum (when momentum > 0) and weight decay; `options`
    e.g. fused=True."""
    lr, momentum, decay = config["learning_rate"], config["momentum"], config["weight_decay"]
    options |= {"momentum": momentum, "nesterov": momentum > 0, "weight_decay": decay}
    return torch.optim.SGD(model.parameters(), lr, **options)


def new_model_and_optimizer(
    config: dict, device: torch.device
) -> tuple[SimpleCNN, torch.optim.SGD]:
    """A freshly initialised model (seeded, channels_last, on the device) and its optimizer."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels
    torch.manual_seed(config["seed"])
    model = model_from_config(config).to(device, memory_format=torch.channels_last)
    return model, make_optimizer(model, config)


def learning_rate_at(
    step: int, total_steps: int, warmup_steps: int, peak: float, schedule: str
) -> float:
    """The learning rate of step `step` in [0, total_steps): linear warm-up to `peak` over
    warmup_steps, then ("cosine") a cosine from `peak` at the first step after warm-up to 0 at the
    final step, or ("constant") `peak`. Tied to the budget, every run ends annealed, even at one
    step per epoch; a warm-up as long as the budget keeps its ramp; one step trains at `peak`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps  # from the first step after warm-up to the last
    if schedule == "constant" or total_steps == 1:
        return peak
    progress = (step - warmup_steps) / decay_steps if decay_steps > 0 else 1.0
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Full batches only (a tiny last batch would upset batch norm), but at least one."""
    return max(1, num_images // batch_size)


def _never_interrupted() -> None:
    pass


class StopEarly(cli.CommandError):
    """Raised by an `on_epoch` callback (a sweep's pruner) to end the run after that epoch with
    `status`: an outcome (exit 0), not a failure; train() prints its line."""

    exit_code = cli.EXIT_DONE

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status


def epoch_batches(
    data: DeviceData, config: dict, epoch: int
) -> Iterator[tuple[float, Tensor, Tensor]]:
    """One epoch's steps as (learning rate, normalized augmented images (B, 3, 32, 32), labels):
    full batches cut from a device-side permutation. Randomness depends only on (seed, epoch), so
    a resumed run repeats the epoch exactly."""
    device = data.train_labels.device
    n, batch_size = data.train_labels.numel(), config["batch_size"]
    steps = steps_per_epoch(n, batch_size)
    warmup, total = round(config["warmup_epochs"] * steps), config["epochs"] * steps
    peak, schedule = config["learning_rate"], config["lr_schedule"]
    seed = config["seed"] * 100_003 + epoch  # the epoch's batch order, augmentation and dropout
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)  # dropout draws from the global generator
    order = torch.randperm(n, device=device, generator=generator)
    for step in range(steps):
        lr = learning_rate_at((epoch - 1) * steps + step, total, warmup, peak, schedule)
        indices = order[step * batch_size : (step + 1) * batch_size]
        images = normalize(augment(data.train_images, indices, generator))
        yield lr, images, data.train_labels[indices]


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DeviceData,
    config: dict,
    epoch: int,
    amp_dtype: torch.dtype | None,
    check_interrupt=_never_interrupted,
) -> dict:
    """One pass over the training split (epoch_batches): {"train_loss", "train_accuracy" (%),
    "learning_rate" (the last step's), "train_images"}."""
    device = data.train_labels.device
    steps = steps_per_epoch(data.train_labels.numel(), config["batch_size"])
    loss_sum = torch.zeros((), device=device)  # sums on the device: no host sync until the end
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen, shown_at = 0, time.perf_counter()
    model.train()
    for step, (lr, x, y) in enumerate(epoch_batches(data, config, epoch)):
        check_interrupt()  # a Python flag test: no device synchronisation
        if time.perf_counter() - shown_at > PROGRESS_SECONDS:  # a slow device: show it is alive
            print(f"  epoch {epoch}: step {step}/{steps}", flush=True)
            shown_at = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device.type, amp_dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * y.numel()
        correct += (logits.argmax(1) == y).sum()
        seen += y.numel()
    loss, acc = loss_sum.item() / seen, 100 * correct.item() / seen
    return {"train_loss": loss, "train_accuracy": acc, "learning_rate": lr, "train_images": seen}


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: Tensor,
    labels: Tensor,
    amp_dtype: torch.dtype | None,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict:
    """{"loss": mean cross-entropy, "accuracy": top-1 in percent, "nonfinite_logits": how many
    logits were NaN or infinite} over all images, in large batches. The loss alone misses some: a
    -inf logit of a wrong class leaves it finite."""
    model.eval()
    device = labels.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    nonfinite = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, labels.numel(), batch_size):
        x, y = normalize(images[start : start + batch_size]), labels[start : start + batch_size]
        with autocast(device.type, amp_dtype):
            logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        nonfinite += (~torch.isfinite(logits)).sum()
    n = max(1, labels.numel())
    loss, accuracy = loss_sum.item() / n, 100 * correct.item() / n
    return {"loss": loss, "accuracy": accuracy, "nonfinite_logits": nonfinite.item()}


def divergence(train_loss: float, val: dict | None, model: nn.Module) -> str | None:
    """Why an epoch diverged (a NaN or inf in the training loss, the validation loss or logits, or
    the weights and batch-norm statistics), or None. Values the epoch computed anyway, and one
    reduction over the weights."""
    if not math.isfinite(train_loss):
        return f"training loss is {train_loss}"
    if val is not None and not math.isfinite(val["loss"]):
        return f"validation loss is {val['loss']}"
    if val is not None and val["nonfinite_logits"]:
        return f"{val['nonfinite_logits']} validation logits are NaN or infinite"
    bad = run_files.first_nonfinite(model.state_dict())
    return None if bad is None else f"{bad} holds NaN or inf"


def format_epoch(m: dict, epochs: int) -> str:
    return (
        f"epoch {m['epoch']:3d}/{epochs}  train_loss {m['train_loss']:.3f}  train_acc "
        f"{m['train_accuracy']:5.2f}%  val_loss {m['val_loss']:.3f}  val_acc "
        f"{m['val_accuracy']:5.2f}%  lr {m['learning_rate']:.2e}  {m['epoch_seconds']:.1f}s  "
        f"{m['train_images_per_second']:,.0f} img/s"
    )


def train(
    config: dict,
    data: DeviceData,
    run_dir: Path,
    on_epoch=None,
    resume: dict | None = None,
    check_interrupt=_never_interrupted,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> dict:
    """Train one model; write best.pt, last.pt, summary.json and curves.png into run_dir; return
    the summary.

    `on_epoch(metrics)` sees each epoch's metrics (W&B logging, sweep pruning) and may raise
    StopEarly; `check_interrupt()` runs before every step and may raise (StopOnSignal.check).
    Whatever ends the loop, an exception too, the last finished epoch is written to last.pt first.
    `resume` is a loaded last.pt: training continues after its epoch (all randomness is a function
    of seed, epoch and step), on the same data (data.identity; else CheckpointError). A NaN or inf
    in a loss, the validation logits or the weights ends the run as "diverged" before that epoch is
    kept: best.pt and last.pt only ever hold finite weights.
    """
    run_dir, device = Path(run_dir), data.train_labels.device
    amp_dtype = autocast_dtype(device)
    model, optimizer = new_model_and_optimizer(config, device)
    state = {"history": [], "best_val_accuracy": 0.0, "best_epoch": 0, "epoch": 0, "seconds": 0.0}
    if resume is not None:
        last = run_dir / LAST_CHECKPOINT
        run_files.check_resume_data(resume, data.identity, last)
        run_files.load_weights(model, resume["model"], last)
        try:
            optimizer.load_state_dict(resume["optimizer"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"{last}: its optimizer state does not fit SGD on this model ({type(e).__name__}: "
                f"{cli.one_line(e)})"
            ) from None
        state = {key: resume[key] for key in state}
    status, started, written_at = "finished", time.perf_counter() - state["seconds"], -math.inf
    snapshots = run_files.Snapshots(run_dir, state["epoch"])  # the newest checkpoints, in memory
    try:
        for epoch in range(state["epoch"] + 1, config["epochs"] + 1):
            t0 = time.perf_counter()
            trained = train_epoch(model, optimizer, data, config, epoch, amp_dtype, check_interrupt)
            train_seconds = time.perf_counter() - t0
            finite = math.isfinite(trained["train_loss"])  # else nothing to validate: diverged
            val = evaluate(model, data.val_images, data.val_labels, amp_dtype) if finite else None
            why = divergence(trained["train_loss"], val, model)
            if why is not None:
                status, why = "diverged", f"{why}; stopping (diverged), epoch {epoch} is not kept"
                print(f"epoch {epoch}: {why}", flush=True)
                break
            metrics = {
                "epoch": epoch,
                "train_loss": trained["train_loss"],
                "train_accuracy": trained["train_accuracy"],
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "learning_rate": trained["learning_rate"],
                "epoch_seconds": time.perf_counter() - t0,
                "train_images_per_second": trained["train_images"] / train_seconds,
            }
            state["history"].append(metrics)
            state["epoch"], state["seconds"] = epoch, time.perf_counter() - started
            if state["best_epoch"] == 0 or metrics["val_accuracy"] > state["best_val_accuracy"]:
                state["best_val_accuracy"], state["best_epoch"] = metrics["val_accuracy"], epoch
            best = state["best_epoch"] == epoch
            snapshots.keep(model, optimizer, config, data.identity, state, best)  # in memory
            if time.perf_counter() - written_at >= checkpoint_seconds or epoch == config["epochs"]:
                snapshots.save()
                written_at = time.perf_counter()
            print(format_epoch(metrics, config["epochs"]), flush=True)
            if on_epoch is not None:
                on_epoch(metrics)
    except StopEarly as e:
        status = e.status
        print(f"stopped after epoch {state['epoch']}: {e}", flush=True)
    finally:
        snapshots.save()
    state = {**state, "seconds": time.perf_counter() - started}  # the whole run's
    return snapshots.write_end(lambda: finish_run(model, data, run_dir, config, state, status))


def finish_run(
    model: nn.Module, data: DeviceData, run_dir: Path, config: dict, state: dict, status: str
) -> dict:
    """Score best.pt once on the test images (not for a stopped run); write summary.json with the
    model's cost, the data it trained on and the learning curves; return the summary.
    best_val_accuracy is None if no epoch finished. `state`: train()'s, "seconds" the whole run."""
    device, best_epoch, history = data.test_labels.device, state["best_epoch"], state["history"]
    seconds = state["seconds"]
    amp_dtype = autocast_dtype(device)
    summary = {
        "status": status,
        "config": config,
        "best_val_accuracy": state["best_val_accuracy"] if best_epoch else None,
        "best_epoch": best_epoch,
        "epochs_completed": state["epoch"],
        "data": data.identity,
    }
    if best_epoch and status in ("finished", "diverged"):  # what would be exported, not the last
        best = run_dir / BEST_CHECKPOINT
        run_files.load_weights(model, run_files.load_checkpoint(best)["model"], best)
        test = evaluate(model, data.test_images, data.test_labels, amp_dtype)
        summary.update(test_accuracy=test["accuracy"], test_loss=test["loss"])
    rates = [m["train_images_per_second"] for m in history]
    summary["train_images_per_second"] = float(np.median(rates)) if rates else None
    summary.update(total_seconds=seconds, device=device_name(device), versions=versions())
    summary.update(model_cost(model, device, lambda: autocast(device.type, amp_dtype), seconds))
    summary["history"] = history
    if history and figures_wanted():  # before summary.json, which says the run is complete
        title = f"{run_dir.name} ({summary['device']})"
        plot_learning_curve(history, run_dir / "curves.png", title=title)
    cli.write_json_atomic(summary, run_dir / run_files.SUMMARY_FILE)
    return summary


def outcome_line(summary: dict, run_dir: Path) -> str:
    """The last line of a run that ended with exit code 0: its best epoch and test accuracy, or
    that none finished."""
    if not summary.get("best_epoch"):
        hint = "a lower learning_rate or more warmup_epochs may help"
        return (
            f"done: {summary['status']} before any epoch finished (no best.pt, no test accuracy; "
            f"{hint}); summary in {run_dir}"
        )
    test, n = summary.get("test_accuracy"), summary["epochs_completed"]
    status = f" ({summary['status']}, {n} epochs completed)"
    status = "" if summary["status"] == "finished" else status
    tested = f"test_accuracy {test:.2f}%" if test is not None else "not tested"
    return (
        f"done{status}: best val_accuracy {summary['best_val_accuracy']:.2f}% at epoch "
        f"{summary['best_epoch']}, {tested}; files in {run_dir}"
    )


# --------------------------------------------------------------------------------------------------
# One training as one W&B run: what main(), every local sweep trial and every model-selection seed
# run.


def run_training(
    config: dict,
    load_data: Callable[[], DeviceData],
    run_dir: Path,
    init: dict,
    *,
    check_interrupt: Callable[[], None] = _never_interrupted,
    resume: dict | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    in_sweep: bool = False,
    log_model: bool = True,
    how_to_continue: str | None = None,
) -> tuple[int, dict]:
    """Train `config` as one W&B run (`init`: wandb.init's keywords but config) into run_dir;
    (exit code, summary). Exit codes (cli.EXIT_CODES): 0 finished, diverged or stopped early
    (StopEarly from `on_epoch`); 1 out of memory, no W&B server in a sweep, a failed download; 2 a
    bad value (a sweep's), data or a checkpoint to fix; 128 + n when `check_interrupt` raised
    Interrupted. The summary always has "status"; a failure's has "error", the line printed. W&B
    gets every epoch (step = epoch: a relaunched run never logs over its first launch), the
    summary, and best.pt if `log_model`. `in_sweep`: a sweep's run (W&B's or local_sweep.py's), for
    cli.requeues. `how_to_continue`: how a stop's line ends (default: --resume RUN_DIR)."""
    try:  # only a W&B sweep needs the server (it picks configs from what runs upload)
        run = wandb_connect.start_wandb_run({**init, "config": config})
    except wandb_connect.WandbUnavailable as e:  # no server in a W&B sweep: nothing to train for
        return cli.fail(e), {"status": "failed", "error": str(e)}
    run.define_metric("val_accuracy", summary="max")  # the summary keeps the best epoch's value
    failed, data = {"status": "failed"}, None
    how_to_continue = how_to_continue or f"continue with --resume {run_dir}"
    try:
        config = validate_config(dict(run.config))  # a sweep's values override the command line
        wandb_connect.defaults_used(run, config)
        # The model's size is known before training: in the summary from the start, a run stopped
        # early or killed has it too (a sweep's cost objective, W&B's charts of running runs).
        model = model_from_config(config)
        run.summary.update(model_size(model))
        check_interrupt()
        data = load_data()

        def log_epoch(metrics: dict) -> None:
            run.log(metrics, step=metrics["epoch"])
            best = max(metrics["val_accuracy"], run.summary.get("best_val_accuracy", 0.0))
            run.summary["best_val_accuracy"] = best
            if on_epoch is not None:
                on_epoch(metrics)

        summary = train(config, data, run_dir, log_epoch, resume, check_interrupt)
    except (OSError, cli.FileFailed) as e:  # the disk
        error = e if isinstance(e, cli.FileFailed) else cli.FileFailed(e)
        going_on = "the same command starts the run again"
        if (Path(run_dir) / LAST_CHECKPOINT).is_file():
            going_on = f"{how_to_continue} once it can be written"
        error.kept = "; ".join(filter(None, (error.kept, going_on)))
        wandb_connect.end_run(run, cli.exit_code(error), failed | {"error": str(error)}, show=False)
        raise error from None
    except cli.CommandError as e:  # a bad value (a sweep's), data or a checkpoint to fix
        return wandb_connect.end_run(run, cli.exit_code(e), failed | {"error": str(e)})
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        error = (
            f"out of memory on {data.train_labels.device if data else 'the device'} with "
            f"batch_size={config['batch_size']}, filters {config['num_filters_1']}/"
            f"{config['num_filters_2']}/{config['num_filters_3']}: try a smaller batch_size "
            "or fewer filters"
        )
        return wandb_connect.end_run(run, cli.EXIT_FAILED, failed | {"error": error})
    except (cli.Interrupted, KeyboardInterrupt) as e:
        signum = e.signum if isinstance(e, cli.Interrupted) else signal.SIGINT
        last = Path(run_dir) / LAST_CHECKPOINT
        kept = "no epoch had finished; the same command starts again"
        if last.is_file():
            kept = f"{last} holds the last finished epoch; {how_to_continue}"
        print(f"interrupted by {signal.Signals(signum).name}: {kept}", file=sys.stderr, flush=True)
        if cli.requeues(signum, in_sweep):
            run.mark_preempting()
        return wandb_connect.end_run(run, cli.stopped_by(signum), {"status": "interrupted"})
    wandb_connect.log_summary(run, summary)
    if log_model and init.get("mode") != "disabled" and summary["best_epoch"]:
        wandb_connect.upload_model(run, Path(run_dir) / BEST_CHECKPOINT, summary)
    return wandb_connect.end_run(run, cli.EXIT_DONE, summary)


# --------------------------------------------------------------------------------------------------
# Command line and main


def shared_options() -> argparse.ArgumentParser:
    """cli.common_options with this program's help for --data-dir and --val-size: the parent
    parser of every command that trains (this one, local_sweep.py, select_model.py)."""
    val_size = f"default {DEFAULTS['val_size']}; {SETTINGS['val_size'].help}"
    return cli.common_options(DATA_DIR_HELP, val_size)


def parse_args(argv: list[str] | None, in_sweep: bool = False) -> argparse.Namespace:
    """The options. Outside a W&B sweep an unknown argument is one line and exit 2 here; inside
    one it is wandb_connect.parse_agent_args's (`unrecognized`: for the run to fail with it where
    the sweep is watched)."""
    # No abbreviations: a sweep names each key in full; a prefix (`--lr` of lr_schedule) is a typo
    parser = cli.OneLineErrorParser(__doc__, parents=(shared_options(),), allow_abbrev=False)
    SETTINGS.add_options(parser, but=("val_size",))  # --val-size is a common option
    upload = "upload best.pt as a W&B model artifact at the end (default on)"
    parser.add_argument(
        "--log-model", action=argparse.BooleanOptionalAction, default=True, help=upload
    )
    resume = "continue the run whose last.pt is in RUN_DIR"
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help=resume)
    if in_sweep:
        return wandb_connect.parse_agent_args(parser, argv)
    return parser.parse_args(argv, argparse.Namespace(unrecognized=None))


def find_resume(args: argparse.Namespace, config: dict, run_dir: Path) -> dict | None:
    """run_dir's last.pt to continue, or None. A run resumes from --resume, or when an agent
    relaunches a preempted run under the same WANDB_RUN_ID. The checkpoint's config wins; each
    command-line value that differs is one line. CheckpointError for a last.pt that cannot be
    resumed, RunComplete for a run that has ended (run_files.check_resumable)."""
    last = run_dir / LAST_CHECKPOINT
    if args.resume is None and not (os.environ.get("WANDB_RUN_ID") and last.is_file()):
        return None
    resume = run_files.load_checkpoint(last, needs=run_files.RESUME_KEYS)
    resume["config"] = run_files.checkpoint_config(resume, last, SETTINGS)
    run_files.load_weights(model_from_config(resume["config"]), resume["model"], last)  # no work
    budget = " (its schedule is fixed by its budget: start a new run to train longer)"
    for key, value in resume["config"].items():
        given = getattr(args, key, None)
        if given is not None and config[key] != value:
            why = budget if key == "epochs" else ""
            print(f"--{key}={given} ignored: the resumed run keeps {key}={value}{why}", flush=True)
    run_files.check_resumable(run_dir, resume)
    print(f"resuming {run_dir} after epoch {resume['epoch']}", flush=True)
    return resume


def prepare_run(
    args: argparse.Namespace, owned: ExitStack
) -> tuple[dict, Callable[[], DeviceData], Path, dict | None]:
    """(config, what loads its data, run folder, its last.pt or None), each checked before any work
    (a resumed run's config is its last.pt's): ConfigError, CheckpointError ("cannot resume:
    ..."), RunComplete, DataError, FolderInUse. The run folder (--resume RUN_DIR, else
    <runs-dir>/<WANDB_RUN_ID> for an agent relaunching a preempted run, else a new id) is held in
    `owned` (run_files.hold_run_folder). Data that is not there (no network for the download)
    fails here, before wandb.init: it leaves no W&B run and no folder."""
    if args.unrecognized:
        raise ConfigError(args.unrecognized)
    config = validate_config({key: getattr(args, key) for key in SETTINGS})
    device = pick_device(args.device)
    run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)  # [0-9a-f]{8}: a W&B id
    run_dir = args.resume or args.runs_dir / run_id
    if why := unwritable(run_dir):
        option = "--resume" if args.resume else "--runs-dir"
        raise ConfigError(
            f"the run folder {run_dir} cannot be written: {why}; use a {option} you can write to"
        )
    try:
        with run_files.hold_run_folder(run_dir, owned):
            resume, source = find_resume(args, config, run_dir), cifar100_source(args.data_dir)
    except CheckpointError as e:
        raise CheckpointError(f"cannot resume: {e}") from None
    config = resume["config"] if resume else config
    return config, lambda: prepare_data(source, config["val_size"], device), run_dir, resume


def main(argv: list[str] | None = None) -> int:
    """The command; its one boundary (cli.boundary) makes whatever ends it one line and a code."""
    # From the first line: a notice during start-up or upload is kept; `owned` holds the run folder
    with cli.StopOnSignal() as stop, ExitStack() as owned:
        in_sweep = wandb_connect.in_wandb_sweep()
        args = parse_args(argv, in_sweep)
        mode, run_dir = None, None
        try:
            mode = wandb_connect.resolve_wandb_mode(args.wandb_mode)  # refused: one line, no work
            config, load_data, run_dir, resume = prepare_run(args, owned)
            init = wandb_connect.run_init(mode, args.wandb_project, run_dir.name)
            options = {"resume": resume, "in_sweep": in_sweep, "log_model": args.log_model}
            code, summary = run_training(
                config, load_data, run_dir, init, check_interrupt=stop.check, **options
            )
        except BaseException as e:  # Ctrl-C twice outside training: W&B's start, upload or finish
            if in_sweep and isinstance(e, (ConfigError, CheckpointError)):  # a sweep's bad value:
                config = {key: getattr(args, key) for key in SETTINGS}  # shown where it is watched
                return wandb_connect.fail_sweep_run(str(e), config, mode)
            stopped = isinstance(e, (cli.Interrupted, KeyboardInterrupt)) and run_dir is not None
            where = run_files.stopped_state(run_dir) if stopped else "nothing was started"
            return cli.boundary(e, stopped=where)
        if code == 0:
            print(outcome_line(summary, run_dir), flush=True)
        if code == 0 and stop.signum is not None:
            name = signal.Signals(stop.signum).name
            print(f"{name} arrived after training had finished: the run is complete", flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
