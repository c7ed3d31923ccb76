"""Timing, accuracy scoring and reports for trt_export.py: plain functions over backends.

A predictor maps float32 images (B, 3, 32, 32) to float32 logits (B, classes).
A timed step runs one iteration on a batch fixed beforehand.
It returns the GPU compute seconds when it measures them, else None.
Its iterations are timed by timing.py (time_iterations, latency_stats), the one timer, which also
times a run's latency_ms in summary.json.
Times are kept in seconds and reported in milliseconds; throughput is in images per second.
Nothing here knows which backends exist: backends.py lists them.

Every CPU backend computes with one thread budget (thread_budget, or trt_export.py --threads).
Each figure comes with its spread (+- half the interquartile range of its iterations, over their
median) and with the share of its CPU time the process spent waiting for a CPU others held (the
kernel's run-queue delay). A figure whose spread or wait is above NOISY_SPREAD_PCT or
BUSY_WAIT_PCT cannot rank the backends, and is marked so.

Sections, in order: timing, accuracy, benchmark, reports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifarkit.core.figures import pyplot, save_figure
from cifarkit.core.timing import Step, latency_stats, time_iterations
from cifarkit.export import tensorrt_runtime

Predictor = Callable[[np.ndarray], np.ndarray]  # float32 (B, 3, 32, 32) -> logits (B, classes)
StepFactory = Callable[[np.ndarray], Step]  # a batch (B, 3, 32, 32) -> a timed step on it
# How the numbers are taken, as benchmark.json records it beside the durations and counts
METHOD = {
    "percentiles": "nearest-rank",
    "end_to_end": "host clock around copy in + inference + copy out + sync",
    "gpu_compute": "CUDA events around the inference call",
    "spread_pct": "50 x (p75 - p25) / p50 of the end-to-end iteration times: the figure +-",
    "cpu_wait_pct": "time the process's threads waited, runnable, for a CPU, in % of "
    "the time they ran or waited (/proc/self/task/*/schedstat)",
    "load": "1-minute load average when the row ended",
    "threads": "CPU threads the backend computes with; null for a GPU backend",
}
# A figure cannot rank two backends when its iterations spread by more than this (half the IQR over
# the median, in %): two figures of +-5% keep their order when 10% apart, and the backends here
# differ by 2x or more (README, "Results") ...
NOISY_SPREAD_PCT = 5.0
# ... or when the process waited for a CPU more than this share of the time it wanted one: others
# had the cores, and the figure measures them as much as the backend.
BUSY_WAIT_PCT = 10.0


class Report:
    """What ran, what was skipped and why, and what failed.

    The exit status comes from `failures`.
    """

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self.failures: list[str] = []

    def skip(self, part: str, why: str) -> None:
        self.skipped.append(f"{part}: {why}")
        print(f"skipped: {part}: {why}", flush=True)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"FAILED: {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# Timing: the iterations themselves are timed by timing.py (time_iterations, latency_stats), as a
# run's latency_ms is


def thread_budget() -> int:
    """The CPU threads every CPU backend gets: the CPUs this process may run on (its affinity mask,
    which taskset, a container's cpuset or a batch scheduler sets), or OMP_NUM_THREADS if fewer.

    PyTorch reads OMP_NUM_THREADS but ONNX Runtime does not, and neither reads the mask: each is
    told this number.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    asked = os.environ.get("OMP_NUM_THREADS", "")
    return min(cpus, int(asked)) if asked.isdigit() and int(asked) > 0 else cpus


def cpu_times() -> tuple[float, float] | None:
    """(seconds this process's threads ran, seconds they waited runnable for a CPU).

    Summed over its threads from /proc/self/task/*/schedstat (Linux); None where the kernel keeps
    no such statistics.
    """
    ran = waited = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/schedstat") as f:
                fields = f.read().split()
        except OSError:  # a thread that ended meanwhile
            continue
        ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return (ran / 1e9, waited / 1e9) if ran else None


def cpu_wait_pct(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> float | None:
    """Between two cpu_times(): the time the process waited for a CPU, in % of the time it wanted
    one (ran or waited)."""
    if before is None or after is None:
        return None
    ran, waited = max(0.0, after[0] - before[0]), max(0.0, after[1] - before[1])
    return 100 * waited / (ran + waited) if ran + waited > 0 else None


def why_not_rankable(row: dict) -> str:
    """Why a benchmark row's figure cannot rank the backends ("" if it can): spread, busy CPU."""
    spread, waited = row["end_to_end"]["spread_pct"], row.get("cpu_wait_pct")
    reasons = [f"spread +-{spread:.0f}%"] if spread > NOISY_SPREAD_PCT else []
    if waited is not None and waited > BUSY_WAIT_PCT:
        reasons.append(f"waited {waited:.0f}% for a CPU (load {row['load']:.1f})")
    return ", ".join(reasons)


# --------------------------------------------------------------------------------------------------
# Accuracy


def predict_all(predict: Predictor, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N, classes) for normalized images (N, 3, 32, 32), in chunks of `batch_size`.

    The last chunk holds the remainder.
    So a backend must accept every batch size up to `batch_size`.
    """
    chunks = range(0, len(images), batch_size)
    return np.concatenate([predict(images[i : i + batch_size]) for i in chunks])


def parity(reference: Predictor, candidate: Predictor, images: np.ndarray) -> dict:
    """How closely `candidate` reproduces `reference` on `images` (N, 3, 32, 32).

    Both run on the images as one batch and on the first image alone.
    Returns the max |logit difference|, the largest |logit| of the reference,
    and the top-1 agreement in %.
    Raises ValueError when the two give logits of different shapes.
    """
    diffs, agree, largest = [], [], 0.0
    # Two batch sizes through one file: the batch dimension must be dynamic.
    for batch in (images, images[:1]):
        expected, got = reference(batch), candidate(batch)
        if got.shape != expected.shape:
            raise ValueError(
                f"logits of shape {got.shape} for a batch of {len(batch)}; expected "
                f"{expected.shape}"
            )
        diffs.append(float(np.abs(got - expected).max()))
        agree.extend(got.argmax(1) == expected.argmax(1))
        largest = max(largest, float(np.abs(expected).max()))
    return {
        "images": len(images),
        "batch_sizes": [len(images), 1],
        "max_abs_diff": max(diffs),
        "max_abs_logit": largest,
        "top1_agreement": 100 * float(np.mean(agree)),
    }


def accuracy_table(logits: dict[str, np.ndarray], labels: np.ndarray, reference: str) -> list[dict]:
    """One row per backend: its top-1 in %, and how it compares with the backend named `reference`.

    `logits` maps a backend name to its logits (N, classes); `labels` holds the N true classes.
    The comparison is the difference in top-1 points and the top-1 agreement in %.
    """
    reference_top1 = logits[reference].argmax(1)
    base = 100 * float(np.mean(reference_top1 == labels))
    rows = []
    for name, values in logits.items():
        top1 = values.argmax(1)
        accuracy = 100 * float(np.mean(top1 == labels))
        rows.append(
            {
                "backend": name,
                "top1_accuracy": accuracy,
                "points_vs_reference": accuracy - base,
                "top1_agreement_with_reference": 100 * float(np.mean(top1 == reference_top1)),
            }
        )
    return rows


def accuracy_failures(rows: list[dict], tolerances: dict[str, float], precision: str) -> list[str]:
    """One message per backend that trails the reference by more than its tolerance.

    `tolerances` maps a backend name to the top-1 points it may trail.
    Backends not in it are not checked.
    `precision` is the engine precision the tolerances were chosen for; the message names it.
    """
    return [
        f"{row['backend']} top-1 {row['top1_accuracy']:.2f}% trails PyTorch by "
        f"{-row['points_vs_reference']:.2f} points; allowed {allowed} for {precision}"
        for row in rows
        if (allowed := tolerances.get(row["backend"])) is not None
        and row["points_vs_reference"] < -allowed
    ]


# --------------------------------------------------------------------------------------------------
# Benchmark


def batch_of(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first `batch_size` normalized images (batch_size, 3, 32, 32).

    When there are fewer images, they are repeated from the start.
    """
    return np.ascontiguousarray(images[np.arange(batch_size) % len(images)])


def benchmark(
    steps: dict[str, StepFactory],
    images: np.ndarray,
    batch_sizes: list[int],
    warmup_seconds: float,
    min_seconds: float,
    min_iterations: int,
    report: Report,
    threads: dict[str, int | None] | None = None,
) -> list[dict]:
    """Time each backend at each batch size on the normalized `images` (N, 3, 32, 32).

    `steps` maps a backend name to the factory of its timed step.
    `threads` maps a backend name to the CPU threads it computes with (None: a GPU backend).
    Returns one row per backend and batch size.
    A row holds end-to-end statistics, and GPU compute statistics where they were measured.
    It also holds its threads, its CPU wait (cpu_wait_pct), the load average at its end, and
    `not_rankable`: "" or why its figure cannot rank the backends.
    An engine that fails at one batch size is reported as a failure, and the benchmark goes on.
    """
    rows = []
    for name, make_step in steps.items():
        for batch_size in batch_sizes:
            try:
                step = make_step(batch_of(images, batch_size))
                before = cpu_times()
                end_to_end, gpu = time_iterations(step, warmup_seconds, min_seconds, min_iterations)
                waited = cpu_wait_pct(before, cpu_times())
            except tensorrt_runtime.EngineError as e:
                report.fail(f"{name} batch {batch_size}: {e}")
                continue
            stats = latency_stats(end_to_end, batch_size)
            row = {
                "backend": name,
                "batch_size": batch_size,
                "threads": (threads or {}).get(name),
                "end_to_end": stats,
                "gpu_compute": latency_stats(gpu, batch_size) if gpu else None,
                "cpu_wait_pct": waited,
                "load": os.getloadavg()[0],
            }
            row["not_rankable"] = why_not_rankable(row)
            rows.append(row)
            mark = f"; too noisy to rank: {row['not_rankable']}" if row["not_rankable"] else ""
            print(
                f"  {name} batch {batch_size}: {stats['images_per_second']:,.0f} img/s "
                f"+-{stats['spread_pct']:.0f}%{mark}",
                flush=True,
            )
    return rows


# --------------------------------------------------------------------------------------------------
# Reports


def markdown_benchmark(rows: list[dict]) -> str:
    """The benchmark rows as a markdown table.

    Throughput +- its spread, latency in ms, GPU compute p50, threads, CPU wait and load.
    A figure too noisy to rank the backends is marked, and a line under the table counts them.
    """
    lines = [
        "| backend | batch | iterations | images/s | mean ms | p50 ms | p90 ms | p99 ms "
        "| GPU compute p50 ms | threads | CPU wait % | load | ranks? |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        e2e, gpu = row["end_to_end"], row["gpu_compute"]
        gpu_p50 = f"{gpu['p50_ms']:.3f}" if gpu else "-"
        waited = f"{row['cpu_wait_pct']:.0f}" if row.get("cpu_wait_pct") is not None else "-"
        noisy = row.get("not_rankable")
        lines.append(
            f"| {row['backend']} | {row['batch_size']} | {e2e['iterations']} | "
            f"{e2e['images_per_second']:,.0f} +-{e2e['spread_pct']:.0f}% | {e2e['mean_ms']:.3f} | "
            f"{e2e['p50_ms']:.3f} | {e2e['p90_ms']:.3f} | {e2e['p99_ms']:.3f} | {gpu_p50} | "
            f"{row.get('threads') or '-'} | {waited} | {row.get('load', 0):.1f} | "
            f"{'**no**: ' + noisy if noisy else 'yes'} |"
        )
    noisy = sum(bool(row.get("not_rankable")) for row in rows)
    if noisy:
        lines.append(
            f"\n{noisy} of {len(rows)} figures are too noisy to rank the backends (spread over "
            f"+-{NOISY_SPREAD_PCT:g}%, or over {BUSY_WAIT_PCT:g}% of the "
            "time waiting for a CPU): other processes had the cores; rerun when idle"
        )
    return "\n".join(lines)


def markdown_accuracy(rows: list[dict], images: int) -> str:
    """The accuracy rows as a markdown table; `images` is how many test images were scored."""
    lines = [
        f"| backend | top-1 % ({images} test images) | points vs PyTorch "
        "| same top-1 as PyTorch % |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['backend']} | {row['top1_accuracy']:.2f} | {row['points_vs_reference']:+.2f} "
            f"| {row['top1_agreement_with_reference']:.2f} |"
        )
    return "\n".join(lines)


def plot_benchmark(rows: list[dict], path: Path, title: str) -> None:
    """Throughput (images/s, +- its spread) and p50 latency (ms) against batch size, per backend.

    A figure too noisy to rank the backends is ringed in red; the legend counts them, with the load.

    The figure is saved to `path`.
    """
    plt = pyplot()

    fig, (ax_rate, ax_latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in dict.fromkeys(row["backend"] for row in rows):
        mine = [row for row in rows if row["backend"] == backend]
        sizes = [row["batch_size"] for row in mine]
        rates = [row["end_to_end"]["images_per_second"] for row in mine]
        spreads = [
            rate * row["end_to_end"]["spread_pct"] / 100
            for rate, row in zip(rates, mine, strict=True)
        ]
        (line,) = ax_rate.plot(sizes, rates, marker="o", label=backend)
        ax_rate.errorbar(sizes, rates, yerr=spreads, fmt="none", color=line.get_color(), capsize=3)
        ax_latency.plot(
            sizes, [row["end_to_end"]["p50_ms"] for row in mine], marker="o", label=backend
        )
        noisy = [row for row in mine if row.get("not_rankable")]
        for ax, key in ((ax_rate, "images_per_second"), (ax_latency, "p50_ms")):  # a red ring
            ax.plot(
                [row["batch_size"] for row in noisy],
                [row["end_to_end"][key] for row in noisy],
                "o",
                color="red",
                markersize=11,
                markerfacecolor="none",
                label="_noisy",
            )
    noisy = [row for row in rows if row.get("not_rankable")]
    if noisy:
        loads = [row["load"] for row in rows]
        ax_rate.plot(
            [],
            [],
            "o",
            color="red",
            markersize=11,
            markerfacecolor="none",
            label=f"too noisy to rank ({len(noisy)} of {len(rows)}; load {min(loads):.1f}-"
            f"{max(loads):.1f})",
        )
    ax_rate.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="images/s (end to end)",
        title="throughput",
    )
    ax_latency.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="p50 latency per batch (ms)",
        title="latency",
    )
    sizes = sorted({row["batch_size"] for row in rows})
    for ax in (ax_rate, ax_latency):
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
