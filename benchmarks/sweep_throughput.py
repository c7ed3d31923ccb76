"""Sweep throughput: finished trials per hour with 1, 2, 4, 8 local_sweep.py workers sharing one
device.

    python -m benchmarks.sweep_throughput --workers 1,2,4,8 --trials-per-worker 3 --epochs 3  # GPU
    python -m benchmarks.sweep_throughput --device cpu --workers 1,2 --trials-per-worker 1 \\
        --epochs 1 --train-per-class 6 --val-size 100 --batch-size 64                  # smoke test

For each worker count K, `python local_sweep.py <sweep.json> --trials K*T --workers K` runs in a
fresh runs folder on the same data, and the benchmark reports two rates: the whole command's
(process start, imports and data loading included, what a user waits for) and the steady one, from
the first trial's start to the last trial's end in Optuna's storage. The temporary sweep file keeps
the real sweep's sampled floats (learning rate, momentum, dropout) but fixes the architecture, batch
size and epochs and has no early termination, so every trial does the same work and the rates
compare the worker counts, not the sampled configs.

Last measured result: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

import part_2_cifar as p2
from benchmarks.benchlib import ROOT, describe_data, machine_info, publish, save_json, summarize
from cifarkit.core import cli, machine
from synthetic_cifar100 import write_synthetic_cifar100

BENCH_DIR = Path(__file__).resolve().parent


def short_sweep(epochs: int, batch_size: int) -> dict:
    """The project's sweep with fixed work per trial: sampled floats only, no pruning, random
    search."""
    real = json.loads((ROOT / "sweep_config.json").read_text())
    fixed = {
        "batch_size": batch_size,
        "epochs": epochs,
        "num_filters_1": p2.DEFAULTS["num_filters_1"],
        "num_filters_2": p2.DEFAULTS["num_filters_2"],
        "num_filters_3": p2.DEFAULTS["num_filters_3"],
    }
    parameters = {
        name: ({"value": fixed[name]} if name in fixed else spec)
        for name, spec in real["parameters"].items()
    }
    return {
        "program": real.get("program", "part_2_cifar.py"),
        "method": "random",
        "metric": real["metric"],
        "parameters": parameters,
    }


def trial_times(runs_dir: Path, study: str) -> list[tuple[float, float, str]]:
    """(start, end, state) in epoch seconds of every trial in local_sweep's default journal
    storage."""
    backend = optuna.storages.journal.JournalFileBackend(str(runs_dir / "optuna-journal.log"))
    trials = optuna.load_study(
        study_name=study, storage=optuna.storages.JournalStorage(backend)
    ).get_trials()
    return [
        (t.datetime_start.timestamp(), t.datetime_complete.timestamp(), t.state.name)
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    ]


def run_sweep(
    workers: int,
    trials: int,
    sweep_file: Path,
    data_dir: Path,
    val_size: int,
    device: str,
    tmp: Path,
) -> dict:
    """One local_sweep.py command with `workers` workers; its wall time and the trials' own
    times."""
    runs_dir, study = tmp / f"runs-{workers}", f"throughput-{workers}"
    command = [
        sys.executable,
        str(ROOT / "local_sweep.py"),
        str(sweep_file),
        "--trials",
        str(trials),
        "--workers",
        str(workers),
        "--study",
        study,
        "--data-dir",
        str(data_dir),
        "--runs-dir",
        str(runs_dir),
        "--val-size",
        str(val_size),
        "--device",
        device,
        "--wandb-mode",
        "disabled",
        "--images-dir",
        str(tmp / f"images-{workers}"),
    ]
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(
            f"local_sweep.py with {workers} workers exited {done.returncode}: "
            f"{(done.stderr or done.stdout).strip()[-2000:]}"
        )
    times = trial_times(runs_dir, study)
    finished = [t for t in times if t[2] in ("COMPLETE", "PRUNED")]
    span = max(t[1] for t in finished) - min(t[0] for t in finished) if finished else float("nan")
    return {
        "workers": workers,
        "trials": len(finished),
        "wall_seconds": wall,
        "trials_per_hour_wall": 3600 * len(finished) / wall,
        "steady_seconds": span,
        "trials_per_hour_steady": 3600 * len(finished) / span if finished else None,
        "trial_seconds": summarize([end - start for start, end, _ in finished])
        if finished
        else None,
        "command": " ".join(command),
    }


def report(result: dict) -> str:
    m = result["machine"]
    out = [
        f"## sweep_throughput: {m['device']}",
        f"{m['cpu']}, {m['cpu_cores']} cores; torch {m['torch']}; {m['date_utc']} UTC on "
        f"{m['host']}; load "
        f"average {m['load_average_start']} at start, {m.get('load_average_end')} at end",
        f"trials: {result['epochs']} epochs, batch {result['batch_size']}, default filters; data "
        f"{result['data']}",
        "",
        "| workers | trials | wall s | trials/hour (wall) | trials/hour (steady) | vs 1 worker "
        "(steady) | "
        "median trial s |",
        "|---|---|---|---|---|---|---|",
    ]
    base = next(
        (r for r in result["runs"] if r["workers"] == 1 and r.get("trials_per_hour_steady")), None
    )
    for r in result["runs"]:
        if "error" in r:
            out.append(f"| {r['workers']} | failed: {r['error'][:300]} | | | | | |")
            continue
        rel = (
            f"{r['trials_per_hour_steady'] / base['trials_per_hour_steady']:.2f}x" if base else "-"
        )
        median = f"{r['trial_seconds']['median']:.1f}" if r["trial_seconds"] else "-"
        out.append(
            f"| {r['workers']} | {r['trials']} | {r['wall_seconds']:.0f} | "
            f"{r['trials_per_hour_wall']:.0f} | {r['trials_per_hour_steady']:.0f} | {rel} | "
            f"{median} |"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.OneLineErrorParser(__doc__)
    parser.add_argument(
        "--workers", default="1,2,4,8", help="comma-separated worker counts (default 1,2,4,8)"
    )
    parser.add_argument(
        "--trials-per-worker", type=int, default=3, help="trials = workers x this (default 3)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default 3)")
    parser.add_argument("--batch-size", type=int, default=p2.DEFAULTS["batch_size"])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--data-dir", type=Path, help="real CIFAR-100 (holds cifar-100-python/); default: synthetic"
    )
    parser.add_argument(
        "--train-per-class", type=int, default=500, help="synthetic images per class (default 500)"
    )
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument(
        "--json", type=Path, help="default benchmarks/results/sweep-<device>-<host>.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (ROOT / "local_sweep.py").is_file():
        print(
            f"error: {ROOT / 'local_sweep.py'} does not exist: this benchmark runs it",
            file=sys.stderr,
        )
        return 2
    device = machine.pick_device(args.device)
    path = args.json or BENCH_DIR / "results" / f"sweep-{device.type}-{socket.gethostname()}.json"
    result = {
        "machine": machine_info(device),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = tmp / "synthetic"
            write_synthetic_cifar100(
                data_dir, args.train_per_class, max(1, args.train_per_class // 5)
            )
        result["data"] = describe_data(data_dir)
        sweep_file = tmp / "sweep_throughput.json"
        sweep_file.write_text(json.dumps(short_sweep(args.epochs, args.batch_size), indent=2))
        for workers in (int(k) for k in args.workers.split(",")):
            try:
                row = run_sweep(
                    workers,
                    workers * args.trials_per_worker,
                    sweep_file,
                    data_dir.resolve(),
                    args.val_size,
                    device.type,
                    tmp,
                )
            except (
                RuntimeError
            ) as e:  # record it (out of memory at 8 workers, say) and measure the rest
                row = {"workers": workers, "error": str(e)}
            result["runs"].append(row)
            save_json(result, path)
            print(
                f"  {workers} workers: "
                + (
                    row.get("error")
                    or f"{row['trials']} trials in "
                    f"{row['wall_seconds']:.0f} s, {row['trials_per_hour_steady']:.0f} trials/hour "
                    "steady"
                ),
                flush=True,
            )
    publish(result, report, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
