"""What every benchmark here shares: the machine's description, synchronised timing, median and
spread."""

from __future__ import annotations

import datetime
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cifarkit.core import cifar_files, cli, machine

# the repository root: run the benchmarks from it, `python -m benchmarks.x`
ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict:
    """Host, date, device, CPU model and cores, threads, versions and the load average (1 min) right
    now."""
    import torchvision

    info = {
        "host": socket.gethostname(),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "device": machine.device_name(device),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "load_average_start": round(os.getloadavg()[0], 2),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def describe_data(data_dir: Path) -> str:
    """ "synthetic ..." or "real ...", with the image counts, read from the training file's own
    labels."""
    train = cifar_files.read_cifar_pickle(Path(data_dir) / cifar_files.CIFAR100_DIR / "train")
    test = cifar_files.read_cifar_pickle(Path(data_dir) / cifar_files.CIFAR100_DIR / "test")
    kind = "synthetic" if "synthetic" in str(train.get("batch_label", "")) else "real"
    return (
        f"{kind} CIFAR-100 layout, {len(train['fine_labels']):,} train / "
        f"{len(test['fine_labels']):,} test images"
    )


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of fn(), the device synchronised before and after: device work is
    asynchronous."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def summarize(values: list[float]) -> dict:
    """Median and spread ((max - min) / median, in percent) of repeated measurements."""
    median = statistics.median(values)
    spread = 100 * (max(values) - min(values)) / median if median else float("nan")
    return {"median": median, "spread_percent": spread, "n": len(values), "values": values}


def save_json(result: dict, path: Path) -> None:
    """Write results atomically; callers save after every phase, so a run cut short keeps what it
    measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cli.write_json_atomic(result, path)


def publish(result: dict, report: Callable[[dict], str], path: Path) -> None:
    """End of a benchmark: note the closing load average, then make the table (it shows that load),
    print, save."""
    result["machine"]["load_average_end"] = round(os.getloadavg()[0], 2)
    table = report(result)
    print("\n" + table, flush=True)
    save_json(result | {"table": table}, path)
    print(f"\nwrote {path}")
