"""The conventional CIFAR-100 pipeline, as most tutorials write it: the yardstick for
part_2_cifar.py's speed.

    python -m benchmarks.conventional_baseline --data-dir data --epochs 2 --val-size 500 \\
        --device cpu

torchvision's CIFAR100 Dataset hands out PIL images; RandomCrop(32, padding=4),
RandomHorizontalFlip, ToTensor and Normalize run per image in DataLoader workers; the model trains
in fp32 and NCHW memory. Everything else is the project's on purpose, so that only the pipeline
differs: the same SimpleCNN, the same stratified train/val split, the same SGD (Nesterov momentum,
weight decay), learning-rate schedule and label smoothing, full batches only, validation every epoch
and the test set scored once at the end. The workers persist across epochs, which is kinder to the
baseline than the DataLoader default.

train_throughput.py imports the pieces to time one epoch; run as a module it is the whole-process
baseline.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

import part_2_cifar as p2
from cifarkit.core import cli, machine
from cifarkit.core.run_files import BEST_CHECKPOINT


class CIFAR100Files(datasets.CIFAR100):
    """torchvision's CIFAR100 with no MD5 check of the official files (md5 None: only existence), so
    synthetic stand-ins in the same layout load too."""

    train_list = [["train", None]]
    test_list = [["test", None]]
    meta = {**datasets.CIFAR100.meta, "md5": None}


def default_workers(device: torch.device) -> int:
    """DataLoader workers: most of the cores on a GPU machine; on the CPU, half, since training
    needs the rest."""
    cores = os.cpu_count() or 1
    return min(8, cores) if device.type == "cuda" else max(1, cores // 2)


def cifar100_loaders(
    data_dir: Path,
    val_size: int,
    batch_size: int,
    eval_batch_size: int,
    workers: int,
    device: torch.device,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """(train, val, test) loaders over <data_dir>/cifar-100-python with the project's stratified
    split."""
    normalize = transforms.Normalize(p2.CIFAR100_MEAN, p2.CIFAR100_STD)
    train_tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=p2.CROP_PADDING),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            normalize,
        ]
    )
    eval_tf = transforms.Compose([transforms.ToTensor(), normalize])
    train_set = CIFAR100Files(str(data_dir), train=True, transform=train_tf, download=False)
    labelled = CIFAR100Files(str(data_dir), train=True, transform=eval_tf, download=False)
    test_set = CIFAR100Files(str(data_dir), train=False, transform=eval_tf, download=False)
    train_idx, val_idx = p2.stratified_split(np.asarray(train_set.targets), val_size)
    common = {
        "num_workers": workers,
        "pin_memory": device.type == "cuda",
        "persistent_workers": workers > 0,
    }
    train = DataLoader(
        Subset(train_set, train_idx.tolist()),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        **common,
    )
    val = DataLoader(Subset(labelled, val_idx.tolist()), batch_size=eval_batch_size, **common)
    test = DataLoader(test_set, batch_size=eval_batch_size, **common)
    return train, val, test


def make_model_and_optimizer(
    config: dict, device: torch.device
) -> tuple[p2.SimpleCNN, torch.optim.SGD]:
    torch.manual_seed(config["seed"])
    model = p2.model_from_config(config).to(device)  # NCHW, fp32: the conventional default
    return model, p2.make_optimizer(model, config)


def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    config: dict,
    epoch: int,
    device: torch.device,
) -> dict:
    """One pass over the loader; the loss is summed on the device, as the project does, so no sync
    per step."""
    steps = len(loader)
    warmup_steps = round(config["warmup_epochs"] * steps)
    loss_sum = torch.zeros((), device=device)
    seen = 0
    model.train()
    for step, (x, y) in enumerate(loader):
        lr = p2.learning_rate_at(
            (epoch - 1) * steps + step,
            config["epochs"] * steps,
            warmup_steps,
            config["learning_rate"],
            config["lr_schedule"],
        )
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y, label_smoothing=config["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * y.numel()
        seen += y.numel()
    return {"train_loss": loss_sum.item() / max(1, seen), "train_images": seen}


@torch.inference_mode()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict:
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        seen += y.numel()
    return {
        "loss": loss_sum.item() / max(1, seen),
        "accuracy": 100 * correct.item() / max(1, seen),
        "images": seen,
    }


def run(
    config: dict, data_dir: Path, device: torch.device, workers: int, run_dir: Path | None
) -> dict:
    """A whole training run: N epochs with validation each epoch, the best model saved, the test set
    at the end."""
    started = time.perf_counter()
    train_loader, val_loader, test_loader = cifar100_loaders(
        data_dir, config["val_size"], config["batch_size"], p2.EVAL_BATCH_SIZE, workers, device
    )
    model, optimizer = make_model_and_optimizer(config, device)
    best = -1.0
    for epoch in range(1, config["epochs"] + 1):
        t0 = time.perf_counter()
        metrics = train_epoch(model, optimizer, train_loader, config, epoch, device)
        val = evaluate(model, val_loader, device)
        if val["accuracy"] > best and run_dir is not None:
            best = val["accuracy"]
            run_dir.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), run_dir / BEST_CHECKPOINT)
        print(
            f"epoch {epoch}/{config['epochs']}  train_loss {metrics['train_loss']:.3f}  "
            f"val_acc {val['accuracy']:5.2f}%  {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
    test = evaluate(model, test_loader, device)
    return {"test_accuracy": test["accuracy"], "total_seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = cli.OneLineErrorParser(__doc__)
    parser.add_argument("--data-dir", type=Path, required=True, help="holds cifar-100-python/")
    parser.add_argument("--epochs", type=int, default=p2.DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int, default=p2.DEFAULTS["batch_size"])
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--workers", type=int, help="DataLoader workers (default: see default_workers)"
    )
    parser.add_argument("--run-dir", type=Path, help="save best.pt here (default: save nothing)")
    args = parser.parse_args(argv)
    device = machine.pick_device(args.device)
    config = p2.validate_config(
        p2.DEFAULTS
        | {"epochs": args.epochs, "batch_size": args.batch_size, "val_size": args.val_size}
    )
    workers = default_workers(device) if args.workers is None else args.workers
    result = run(config, args.data_dir, device, workers, args.run_dir)
    print(
        f"done: test_accuracy {result['test_accuracy']:.2f}% in {result['total_seconds']:.1f}s "
        f"({workers} workers, {device})",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
