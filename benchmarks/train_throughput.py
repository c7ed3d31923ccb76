"""Training and evaluation speed of part_2_cifar.py against the conventional pipeline, in one
process and one run.

    python -m benchmarks.train_throughput --mode cpu             # ~3 minutes on a quiet 2-core CPU
    python -m benchmarks.train_throughput --mode gpu             # 45,000 training images, batch 256
    python -m benchmarks.train_throughput --mode gpu --ablation  # and each tuning option apart
    python -m benchmarks.train_throughput --mode cpu --ablation --only-ablation

Measured, on the same device, data, batch size, model and optimiser settings:
  - training images/s of one epoch: the project's train_epoch (uint8 data on the device, batched
    augmentation, channels_last, autocast where the hardware has bf16) against
    conventional_baseline.py (torchvision Dataset of PIL images, per-image transforms in DataLoader
    workers, fp32, NCHW);
  - evaluation images/s of both on the validation split;
  - the wall time of the project's train() for N epochs (checkpoints, evaluation and test scoring
    included);
  - the whole-process wall time of `python part_2_cifar.py ...` and of `python -m
    benchmarks.conventional_baseline ...` for the same epochs and data (imports, data loading and
    start-up included): the measure of the CPU target.
The two pipelines alternate epoch by epoch, so a busy machine slows both alike. Each figure is the
median over the repeats after warm-up epochs, with the spread (max - min) / median. Data: a
synthetic CIFAR-100 stand-in in the real layout unless --data-dir names real data (speed does not
depend on the pixels).

Last measured result: benchmarks/RESULTS.md (each figure with its machine, load and command).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import part_2_cifar as p2
from benchmarks import ablation
from benchmarks import conventional_baseline as conventional
from benchmarks.benchlib import (
    ROOT,
    describe_data,
    machine_info,
    publish,
    save_json,
    summarize,
    timed,
)
from cifarkit.core import cli, machine
from synthetic_cifar100 import write_synthetic_cifar100

BENCH_DIR = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------------
# Settings: sizes per mode. The CPU sizes keep the whole benchmark near 3 minutes on the 2-core CPU
# (~240 img/s).

MODES = {
    "cpu": {
        "train_per_class": 25,  # synthetic images per class written: 2,500 training images ...
        "test_per_class": 5,  # ... and 500 test images
        "val_size": 500,  # held out, so 2,000 train: 7 full batches of 256 = 1,792 images per epoch
        # untimed epochs first (allocator, oneDNN primitive cache, worker start-up)
        "warmup_epochs": 1,
        "repeats": 3,  # timed epochs of each pipeline, alternating
        "eval_repeats": 3,  # timed passes over the validation images
        "run_epochs": 2,  # epochs of the in-process train() run
        "process_epochs": 2,  # epochs of each whole-process run
        # whole-process runs of each program, alternating (the CPU target's measure)
        "process_repeats": 2,
        "ablation_repeats": 2,  # timed epochs per ablation variant
    },
    "gpu": {
        "train_per_class": 500,  # the real CIFAR-100 sizes: 50,000 training ...
        "test_per_class": 100,  # ... and 10,000 test images
        "val_size": 5000,  # the project default: 45,000 train, 175 batches of 256
        "warmup_epochs": 2,  # cuDNN autotuning (benchmark=True) happens in the first epoch
        "repeats": 5,
        "eval_repeats": 5,
        "run_epochs": 50,  # the target: a 50-epoch run in <= 20 s
        # the conventional pipeline is the slow one; 5 epochs keep it near a minute
        "process_epochs": 5,
        "process_repeats": 1,
        "ablation_repeats": 3,
    },
    "smoke": {  # checks that the script runs end to end (CI); its figures mean nothing
        "train_per_class": 6,
        "test_per_class": 2,
        "val_size": 100,
        "warmup_epochs": 1,
        "repeats": 1,
        "eval_repeats": 1,
        "run_epochs": 1,
        "process_epochs": 1,
        "process_repeats": 1,
        "ablation_repeats": 1,
    },
}
TARGETS = {  # from issue 5, default config, batch 256
    "gpu": {"train_images_per_second": 150_000, "run_seconds": 20.0, "train_ratio": 10.0},
    "cpu": {"process_ratio": 1.5},
}


# --------------------------------------------------------------------------------------------------
# Measurements


def compare_epochs(
    config: dict, data: p2.DeviceData, loaders: tuple, device: torch.device, sizes: dict
) -> dict:
    """Training then evaluation images/s of both pipelines, alternating so that load on the machine
    hits both."""
    amp_dtype = machine.autocast_dtype(device)
    model, optimizer = p2.new_model_and_optimizer(config, device)
    base_model, base_optimizer = conventional.make_model_and_optimizer(config, device)
    train_loader, val_loader, _ = loaders
    rates = {"project": [], "conventional": []}
    for epoch in range(1, sizes["warmup_epochs"] + sizes["repeats"] + 1):
        seconds, out = timed(
            device, lambda e=epoch: p2.train_epoch(model, optimizer, data, config, e, amp_dtype)
        )
        base_seconds, base_out = timed(
            device,
            lambda e=epoch: conventional.train_epoch(
                base_model, base_optimizer, train_loader, config, e, device
            ),
        )
        if epoch > sizes["warmup_epochs"]:
            rates["project"].append(out["train_images"] / seconds)
            rates["conventional"].append(base_out["train_images"] / base_seconds)
        print(
            f"  epoch {epoch}: project {out['train_images'] / seconds:,.0f} img/s, conventional "
            f"{base_out['train_images'] / base_seconds:,.0f} img/s",
            flush=True,
        )
    eval_rates = {"project": [], "conventional": []}
    n_val = data.val_labels.numel()
    for i in range(1 + sizes["eval_repeats"]):
        seconds, _ = timed(
            device, lambda: p2.evaluate(model, data.val_images, data.val_labels, amp_dtype)
        )
        base_seconds, base_out = timed(
            device, lambda: conventional.evaluate(base_model, val_loader, device)
        )
        if i > 0:  # the first pass is warm-up
            eval_rates["project"].append(n_val / seconds)
            eval_rates["conventional"].append(base_out["images"] / base_seconds)
    return {
        "train": {k: summarize(v) for k, v in rates.items()},
        "eval": {k: summarize(v) for k, v in eval_rates.items()},
        "amp_dtype": str(amp_dtype),
        "images_per_epoch": out["train_images"],
        "eval_images": n_val,
    }


def time_train_run(config: dict, data: p2.DeviceData, device: torch.device) -> dict:
    """Wall time of the project's train() for config["epochs"] epochs: checkpoints, evaluation and
    test included."""
    with tempfile.TemporaryDirectory() as run_dir:
        seconds, summary = timed(device, lambda: p2.train(config, data, Path(run_dir) / "run"))
    return {
        "epochs": config["epochs"],
        "wall_seconds": seconds,
        "median_epoch_train_images_per_second": summary["train_images_per_second"],
        "test_accuracy": summary.get("test_accuracy"),
    }


def time_processes(
    data_dir: Path, epochs: int, val_size: int, device: torch.device, workers: int, repeats: int
) -> dict:
    """Whole-process wall seconds of both programs for the same epochs and data, in alternating
    order."""
    env = {**os.environ, "WANDB_MODE": "disabled", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    seconds = {"project": [], "conventional": []}
    with tempfile.TemporaryDirectory() as tmp:
        commands = {
            "project": [
                sys.executable,
                str(ROOT / "part_2_cifar.py"),
                "--data-dir",
                str(data_dir),
                f"--epochs={epochs}",
                "--val-size",
                str(val_size),
                "--runs-dir",
                f"{tmp}/runs",
                "--wandb-mode",
                "disabled",
                "--no-log-model",
                "--device",
                device.type,
            ],
            "conventional": [
                sys.executable,
                "-m",
                "benchmarks.conventional_baseline",
                "--data-dir",
                str(data_dir),
                "--epochs",
                str(epochs),
                "--val-size",
                str(val_size),
                "--device",
                device.type,
                "--workers",
                str(workers),
                "--run-dir",
                f"{tmp}/conventional",
            ],
        }
        for i in range(repeats):
            order = ("project", "conventional") if i % 2 == 0 else ("conventional", "project")
            for name in order:
                t0 = time.perf_counter()
                done = subprocess.run(commands[name], env=env, capture_output=True, text=True)
                seconds[name].append(time.perf_counter() - t0)
                if done.returncode != 0:
                    raise RuntimeError(
                        f"{name} run failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
                    )
                print(f"  {name} process: {seconds[name][-1]:.1f} s", flush=True)
    return {
        "epochs": epochs,
        "commands": {k: " ".join(v) for k, v in commands.items()},
        **{k: summarize(v) for k, v in seconds.items()},
    }


# --------------------------------------------------------------------------------------------------
# Report


def fmt_rate(stats: dict) -> str:
    return f"{stats['median']:,.0f} (±{stats['spread_percent']:.0f}%)"


def fmt_seconds(stats: dict) -> str:
    return f"{stats['median']:.1f} s (±{stats['spread_percent']:.0f}%)"


def targets_status(result: dict, mode: str) -> list[tuple[str, str]]:
    """(target, status) lines for the issue's targets that this run measured."""
    lines = []
    goal = TARGETS.get(mode, {})
    if mode == "gpu":
        if "epochs" in result:
            rate, ratio = result["epochs"]["train"]["project"]["median"], result["ratios"]["train"]
            lines.append(
                (
                    f">= {goal['train_images_per_second']:,} training images/s",
                    f"{'met' if rate >= goal['train_images_per_second'] else 'NOT met'}: "
                    f"{rate:,.0f}",
                )
            )
            lines.append(
                (
                    f">= {goal['train_ratio']:.0f}x the conventional pipeline (training images/s)",
                    f"{'met' if ratio >= goal['train_ratio'] else 'NOT met'}: {ratio:.1f}x",
                )
            )
        if "train_run" in result and result["train_run"]["epochs"] == 50:
            wall = result["train_run"]["wall_seconds"]
            lines.append(
                (
                    f"50-epoch run <= {goal['run_seconds']:.0f} s wall including evaluation",
                    f"{'met' if wall <= goal['run_seconds'] else 'NOT met'}: {wall:.1f} s "
                    "(train(), in-process)",
                )
            )
    if mode == "cpu" and "process" in result["ratios"]:
        ratio = result["ratios"]["process"]
        lines.append(
            (
                f">= {goal['process_ratio']}x the conventional pipeline, whole-process wall time",
                f"{'met' if ratio >= goal['process_ratio'] else 'NOT met'}: {ratio:.2f}x",
            )
        )
    return lines


def report(result: dict, mode: str) -> str:
    m = result["machine"]
    out = [
        f"## train_throughput --mode {mode}: {m['device']}",
        f"{m['cpu']}, {m['cpu_cores']} cores, {m['torch_threads']} torch threads; torch "
        f"{m['torch']}, torchvision {m['torchvision']}, Python {m['python']}"
        + (f", CUDA {m['cuda']}" if "cuda" in m else ""),
        f"{m['date_utc']} UTC on {m['host']}; load average {m['load_average_start']} at start, "
        f"{m.get('load_average_end')} at end; data {result['data']}; batch {result['batch_size']}; "
        f"conventional: {result['workers']} DataLoader workers",
        "",
    ]
    if "epochs" in result:
        e, r = result["epochs"], result["ratios"]
        out += [
            "| measure | project | conventional | project / conventional |",
            "|---|---|---|---|",
            f"| training images/s, {e['images_per_epoch']:,}-image epoch, median of "
            f"{e['train']['project']['n']}"
            f" | {fmt_rate(e['train']['project'])} | {fmt_rate(e['train']['conventional'])} | "
            f"{r['train']:.2f}x |",
            f"| evaluation images/s, {e['eval_images']:,} images | "
            f"{fmt_rate(e['eval']['project'])} | "
            f"{fmt_rate(e['eval']['conventional'])} | {r['eval']:.2f}x |",
        ]
        if "process" in result:
            p = result["process"]
            out.append(
                f"| whole process, {p['epochs']} epochs, wall | {fmt_seconds(p['project'])} | "
                f"{fmt_seconds(p['conventional'])} | {r['process']:.2f}x faster |"
            )
        if "train_run" in result:
            t = result["train_run"]
            out.append(
                f"| train(), {t['epochs']} epochs, wall (in-process, data loaded) | "
                f"{t['wall_seconds']:.1f} s | - | - |"
            )
        out.append(
            f"\nproject autocast: {e['amp_dtype']}; data load to device "
            f"{result['data_load_seconds']:.1f} s"
        )
    if "ablation" in result:
        a = result["ablation"]
        project = next(
            (v for v in a["variants"] if v["name"] == ablation.PROJECT.name and "train" in v), None
        )
        out += [
            "",
            "| variant | change | training images/s | vs project | first-epoch extra s | "
            "break-even epochs |",
            "|---|---|---|---|---|---|",
        ]
        for v in a["variants"]:
            if "error" in v:
                out.append(f"| {v['name']} | {v['change']} | failed: {v['error']} | | | |")
                continue
            rel = f"{v['train']['median'] / project['train']['median']:.2f}x" if project else "-"
            extra = (
                f"{v['first_epoch_extra_seconds']:.1f}" if "first_epoch_extra_seconds" in v else "-"
            )
            even = v.get("break_even_epochs")
            even = (
                "-"
                if "break_even_epochs" not in v
                else ("never" if even is None else f"{even:.0f}")
            )
            out.append(
                f"| {v['name']} | {v['change']} | {fmt_rate(v['train'])} | {rel} | {extra} | "
                f"{even} |"
            )
        out += ["", "| evaluation batch | images/s (evaluate on the test images) |", "|---|---|"]
        for row in a["eval_batch_sizes"]:
            mark = " (project default)" if row["project_default"] else ""
            out.append(f"| {row['eval_batch_size']}{mark} | {fmt_rate(row['eval'])} |")
        if "compile_float_check" in a:
            out += [
                "",
                "| torch.compile: new trial | first step s | next step s |",
                "|---|---|---|",
            ]
            out += [
                f"| {c['case']} | {c['first_step_seconds']:.1f} | {c['second_step_seconds']:.3f} |"
                for c in a["compile_float_check"]
            ]
    lines = targets_status(result, mode)
    if lines:
        out += ["", "| target (issue 5) | status |", "|---|---|"] + [
            f"| {t} | {s} |" for t, s in lines
        ]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.OneLineErrorParser(__doc__)
    parser.add_argument(
        "--mode", choices=tuple(MODES), default="cpu", help="sizes and repeats (see MODES)"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="default: cuda for --mode gpu, cpu for --mode cpu",
    )
    parser.add_argument(
        "--data-dir", type=Path, help="real CIFAR-100 (holds cifar-100-python/); default: synthetic"
    )
    parser.add_argument("--json", type=Path, help="default benchmarks/results/<mode>-<host>.json")
    parser.add_argument("--batch-size", type=int, default=p2.DEFAULTS["batch_size"])
    parser.add_argument(
        "--workers",
        type=int,
        help="conventional DataLoader workers (default: most cores on a GPU "
        "machine, half of them on the CPU)",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed epochs per pipeline (default: the mode's)"
    )
    parser.add_argument("--run-epochs", type=int, help="epochs of the train() run; 0 skips it")
    parser.add_argument(
        "--process-epochs", type=int, help="epochs of each whole-process run; 0 skips them"
    )
    parser.add_argument("--ablation", action="store_true", help="also measure each tuning option")
    parser.add_argument(
        "--only-ablation", action="store_true", help="measure the tuning options only"
    )
    parser.add_argument(
        "--variants",
        help="comma-separated ablation variant names, or none (default: the mode's "
        "list; the project row is always measured); extra: "
        f"{', '.join(v.name for v in ablation.EXTRA_VARIANTS)}",
    )
    parser.add_argument(
        "--no-float-check", action="store_true", help="skip the torch.compile recompilation check"
    )
    return parser.parse_args(argv)


def pick_variants(names: str | None, mode: str) -> list[ablation.Variant]:
    default = ablation.GPU_VARIANTS if mode == "gpu" else ablation.CPU_VARIANTS
    if not names:
        return default
    if names == "none":  # the evaluation batches and the compile check only
        return []
    known = {
        v.name: v for v in ablation.GPU_VARIANTS + ablation.CPU_VARIANTS + ablation.EXTRA_VARIANTS
    }
    unknown = [n for n in names.split(",") if n not in known]
    if unknown:
        raise SystemExit(
            f"error: --variants names {', '.join(unknown)}: use some of {', '.join(known)}"
        )
    return [known[n] for n in names.split(",")]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = dict(MODES[args.mode])
    for key in ("repeats", "run_epochs", "process_epochs"):
        if getattr(args, key) is not None:
            sizes[key] = getattr(args, key)
    device = machine.pick_device(
        args.device if args.device != "auto" else ("cuda" if args.mode == "gpu" else "cpu")
    )
    variants = pick_variants(args.variants, args.mode)
    workers = conventional.default_workers(device) if args.workers is None else args.workers
    result = {
        "mode": args.mode,
        "machine": machine_info(device),
        "batch_size": args.batch_size,
        "workers": workers,
        "sizes": sizes,
        "ratios": {},
    }
    print(f"device {result['machine']['device']}; sizes {sizes}", flush=True)
    path = args.json or BENCH_DIR / "results" / f"{args.mode}-{socket.gethostname()}.json"
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = Path(tmp) / "synthetic"
            write_synthetic_cifar100(data_dir, sizes["train_per_class"], sizes["test_per_class"])
        result["data"] = describe_data(data_dir)
        config = p2.validate_config(
            p2.DEFAULTS
            | {
                "batch_size": args.batch_size,
                "val_size": sizes["val_size"],
                "epochs": sizes["warmup_epochs"] + sizes["repeats"],
            }
        )
        result["data_load_seconds"], data = timed(
            device, lambda: p2.prepare_data(data_dir, sizes["val_size"], device)
        )
        if not args.only_ablation:
            print("training and evaluation epochs, alternating:", flush=True)
            loaders = conventional.cifar100_loaders(
                data_dir, sizes["val_size"], args.batch_size, p2.EVAL_BATCH_SIZE, workers, device
            )
            result["epochs"] = compare_epochs(config, data, loaders, device, sizes)
            del loaders  # ends the persistent workers before the processes below start
            for key in ("train", "eval"):
                result["ratios"][key] = (
                    result["epochs"][key]["project"]["median"]
                    / result["epochs"][key]["conventional"]["median"]
                )
            save_json(result, path)
            if sizes["run_epochs"] > 0:
                print(f"train() for {sizes['run_epochs']} epochs:", flush=True)
                result["train_run"] = time_train_run(
                    config | {"epochs": sizes["run_epochs"]}, data, device
                )
                save_json(result, path)
            if sizes["process_epochs"] > 0:
                print(f"whole processes, {sizes['process_epochs']} epochs each:", flush=True)
                result["process"] = time_processes(
                    data_dir,
                    sizes["process_epochs"],
                    sizes["val_size"],
                    device,
                    workers,
                    sizes["process_repeats"],
                )
                result["ratios"]["process"] = (
                    result["process"]["conventional"]["median"]
                    / result["process"]["project"]["median"]
                )
                save_json(result, path)
        if args.ablation or args.only_ablation:
            print("ablation, one change at a time:", flush=True)
            ablation_config = config | {
                "epochs": sizes["warmup_epochs"] + sizes["ablation_repeats"] + 1
            }
            result["ablation"] = ablation.run_ablation(
                variants,
                ablation_config,
                data,
                device,
                sizes["warmup_epochs"],
                sizes["ablation_repeats"],
                sizes["eval_repeats"],
                float_check=not args.no_float_check,
            )
    publish(result, lambda r: report(r, args.mode), path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
