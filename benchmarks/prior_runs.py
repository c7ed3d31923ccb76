"""Prior runs pay: a local sweep that starts from a previous sweep's runs (--prior-runs) reaches
that sweep's best value in fewer new trials than one that starts cold.

    python -m benchmarks.prior_runs                  # 5 seeds: 12 + 5 x 2 x 12 trials
    python -m benchmarks.prior_runs --seeds 2 --previous 4 --trials 3 --train-per-class 10 \\
        --classes 20 --val-size 100                                                  # smoke

On a synthetic CIFAR-100 layout (synthetic_cifar100.py), one previous sweep runs --previous trials
(sampler seed 0). Then for each sampler seed s in 1..--seeds, two sweeps of the same file train
--trials new trials each: cold (an empty study) and warm (--prior-runs the previous sweep's runs
folder). For each the benchmark counts the new trials until one's value reaches the previous
sweep's best (">N" when none of the N did), and reports the median and range over the seeds, how
many seeds reached it, and the best value after all N. Every sweep is local_sweep.main in this
process, W&B disabled, one torch thread. The sweep: the project's sampled floats (learning rate
over a range wide enough to have an optimum inside, momentum) and dropout over a small fixed
model, two epochs, no early termination, so a trial's value depends on its config alone.

Last measured result: benchmarks/RESULTS.md ("Prior runs").
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import optuna
import torch

import local_sweep
from benchmarks.benchlib import describe_data, machine_info, publish, save_json
from cifarkit.core import cli
from cifarkit.sweeps import report as sweep_report
from cifarkit.sweeps import storage as sweep_storage
from synthetic_cifar100 import write_synthetic_cifar100

BENCH_DIR = Path(__file__).resolve().parent
SWEEP = {
    "program": "part_2_cifar.py",
    "method": "bayes",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "parameters": {
        "learning_rate": {"distribution": "log_uniform_values", "min": 0.001, "max": 3.0},
        "momentum": {"distribution": "uniform", "min": 0.5, "max": 0.99},
        "dropout_rate": {"values": [0.0, 0.25, 0.5]},
        "batch_size": {"value": 64},
        "epochs": {"value": 2},
        "num_filters_1": {"value": 8},
        "num_filters_2": {"value": 16},
        "num_filters_3": {"value": 32},
    },
}


def sweep(
    sweep_file: Path,
    data_dir: Path,
    val_size: int,
    runs_dir: Path,
    trials: int,
    seed: int,
    *more: str,
) -> list[float | None]:
    """One local_sweep.py command; the values of the trials it trained, in order (None: none)."""
    args = [
        str(sweep_file),
        "--data-dir",
        str(data_dir),
        "--runs-dir",
        str(runs_dir),
        "--images-dir",
        str(runs_dir / "images"),
        "--val-size",
        str(val_size),
        "--trials",
        str(trials),
        "--sampler-seed",
        str(seed),
        "--wandb-mode",
        "disabled",
        *more,
    ]
    log = runs_dir.with_suffix(".log")
    with open(log, "w") as out, redirect_stdout(out), redirect_stderr(out):
        code = local_sweep.main(args)
    if code != 0:
        raise RuntimeError(
            f"local_sweep.py {' '.join(args)} exited {code}: {log.read_text().strip()[-1000:]}"
        )
    storage = sweep_storage.open_storage(None, runs_dir).storage
    trials = optuna.load_study(study_name=sweep_file.stem, storage=storage).trials
    return [t.value for t in trials if t.user_attrs.get("origin") != sweep_report.PRIOR_RUN]


def trials_to_reach(values: list[float | None], target: float) -> int | None:
    """1-based number of the first new trial whose value reaches `target`; None if none does."""
    return next((i for i, v in enumerate(values, 1) if v is not None and v >= target), None)


def summarize(counts: list[int | None], trials: int) -> dict:
    """Median and range of trials-to-reach over seeds, a seed that never reached it counted as
    N + 1 (so the median is an upper bound when it is N + 1)."""
    censored = [trials + 1 if c is None else c for c in counts]
    return {
        "counts": counts,
        "median": statistics.median(censored),
        "min": min(censored),
        "max": max(censored),
        "reached": sum(c is not None for c in counts),
    }


def shown(value: float, trials: int) -> str:
    return f">{trials}" if value > trials else f"{value:g}"


def report(result: dict) -> str:
    m, n = result["machine"], result["trials"]
    out = [
        f"## prior_runs: {m['device']}",
        f"{m['cpu']}, {m['cpu_cores']} cores; torch {m['torch']}, optuna {result['optuna']}; "
        f"{m['date_utc']} UTC on {m['host']}; load average {m['load_average_start']} at start, "
        f"{m.get('load_average_end')} at end",
        f"data: {result['data']}, {result['val_size']} held out; previous sweep: "
        f"{result['previous']} trials, best {result['previous_best']:.1f}%",
        "",
        "| start | seeds that reached the previous best | new trials to reach it: median "
        "(range) | per seed | best after all |",
        "|---|---|---|---|---|",
    ]
    for arm in ("cold", "warm"):
        s = result[arm]
        per_seed = ", ".join(shown(c or n + 1, n) for c in s["counts"])
        out.append(
            f"| {arm} | {s['reached']} of {len(s['counts'])} | {shown(s['median'], n)} "
            f"({shown(s['min'], n)} to {shown(s['max'], n)}) | {per_seed} | "
            f"{statistics.median(s['best']):.1f}% median |"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.OneLineErrorParser(__doc__)
    parser.add_argument("--seeds", type=cli.positive_int, default=5, help="seeds (default 5)")
    parser.add_argument(
        "--previous",
        type=cli.positive_int,
        default=12,
        help="trials of the previous sweep (default 12)",
    )
    parser.add_argument(
        "--trials",
        type=cli.positive_int,
        default=12,
        help="new trials of each cold and warm sweep (default 12)",
    )
    parser.add_argument("--classes", type=cli.positive_int, default=100, help="synthetic classes")
    parser.add_argument("--train-per-class", type=cli.positive_int, default=30)
    parser.add_argument(
        "--noise",
        type=float,
        default=110.0,
        help="synthetic pixel noise (default 110: 2 epochs reach 0-20%%)",
    )
    parser.add_argument(
        "--val-size",
        type=cli.positive_int,
        default=500,
        help="held-out images (default 500: a value is a multiple of 0.2%%)",
    )
    parser.add_argument(
        "--json", type=Path, help="default benchmarks/results/prior-runs-<host>.json"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)  # as a sweep worker on a shared CPU, the same for every sweep
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    path = args.json or BENCH_DIR / "results" / f"prior-runs-{socket.gethostname()}.json"
    result = {
        "machine": machine_info(torch.device("cpu")),
        "optuna": optuna.__version__,
        "trials": args.trials,
        "previous": args.previous,
        "val_size": args.val_size,
        "command": " ".join(sys.argv),
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_dir = tmp / "synthetic"
        write_synthetic_cifar100(
            data_dir,
            args.train_per_class,
            max(1, args.train_per_class // 5),
            num_classes=args.classes,
            noise=args.noise,
            seed=3,
        )
        result["data"] = describe_data(data_dir) + f", {args.classes} classes"
        sweep_file = tmp / "prior_runs.json"
        sweep_file.write_text(json.dumps(SWEEP, indent=2))
        previous = tmp / "previous"
        values = sweep(sweep_file, data_dir, args.val_size, previous, args.previous, 0)
        result["previous_best"] = best = max(v for v in values if v is not None)
        print(f"previous sweep: {args.previous} trials, best {best:.1f}%", flush=True)
        arms = {"cold": [], "warm": []}
        for seed in range(1, args.seeds + 1):
            for arm, more in (("cold", ()), ("warm", ("--prior-runs", str(previous)))):
                runs_dir = tmp / f"{arm}-{seed}"
                values = sweep(
                    sweep_file, data_dir, args.val_size, runs_dir, args.trials, seed, *more
                )
                arms[arm].append(values)
                print(
                    f"seed {seed} {arm}: reached after {trials_to_reach(values, best)} new "
                    f"trials; best {max(v for v in values if v is not None):.1f}%",
                    flush=True,
                )
            for arm, runs in arms.items():
                result[arm] = summarize([trials_to_reach(v, best) for v in runs], args.trials) | {
                    "best": [max(x for x in v if x is not None) for v in runs]
                }
            save_json(result, path)
    publish(result, report, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
