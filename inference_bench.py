"""Timing, accuracy scoring and reports for trt_export.py: plain functions over backends.

A predictor maps float32 images (B, 3, 32, 32) to float32 logits (B, classes).
A timed step runs one iteration on a batch fixed beforehand.
It returns the GPU compute seconds when it measures them, else None.
Times are kept in seconds and reported in milliseconds; throughput is in images per second.
Nothing here knows which backends exist: export_backends.py lists them.

Sections, in order: timing, accuracy, benchmark, reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import trt_runtime
from run_files import save_figure

Step = Callable[[], "float | None"]  # one timed iteration -> GPU compute seconds, or None
Predictor = Callable[[np.ndarray], np.ndarray]  # float32 (B, 3, 32, 32) -> logits (B, classes)
StepFactory = Callable[[np.ndarray], Step]  # a batch (B, 3, 32, 32) -> a timed step on it
# How the numbers are taken, as benchmark.json records it beside the durations and counts
METHOD = {"percentiles": "nearest-rank",
          "end_to_end": "host clock around copy in + inference + copy out + sync",
          "gpu_compute": "CUDA events around the inference call"}


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
# Timing


def time_iterations(step: Step, warmup_seconds: float, min_seconds: float, min_iterations: int,
                    clock: Callable[[], float] = time.perf_counter
                    ) -> tuple[list[float], list[float]]:
    """Warm up, then time `step` until both minimums are met.

    The warm-up lasts `warmup_seconds` and makes at least one call.
    Timed calls go on until `min_seconds` have passed and `min_iterations` calls were made.
    Returns (end-to-end seconds of each timed call by `clock`, the GPU seconds each call reported).
    """
    started = clock()
    step()
    while clock() - started < warmup_seconds:
        step()
    end_to_end: list[float] = []
    reported: list[float] = []
    started = clock()
    while len(end_to_end) < min_iterations or clock() - started < min_seconds:
        t0 = clock()
        gpu_seconds = step()
        end_to_end.append(clock() - t0)
        if gpu_seconds is not None:
            reported.append(gpu_seconds)
    return end_to_end, reported


def latency_stats(seconds: list[float], batch_size: int) -> dict:
    """Latency mean and percentiles in ms, and throughput in images/s, of per-iteration seconds.

    Percentiles are nearest-rank: the smallest time with at least p% of iterations at or below it.
    So each one is a time that some iteration took.
    Raises ValueError when `seconds` is empty.
    """
    if not seconds:
        raise ValueError("no iterations to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99], method="inverted_cdf")
    return {"iterations": int(ms.size), "mean_ms": float(ms.mean()),
            "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "images_per_second": float(batch_size * ms.size / (ms.sum() / 1000))}


# --------------------------------------------------------------------------------------------------
# Accuracy


def predict_all(predict: Predictor, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits (N, classes) for normalized images (N, 3, 32, 32), in chunks of `batch_size`.

    The last chunk holds the remainder.
    So a backend must accept every batch size up to `batch_size`.
    """
    chunks = range(0, len(images), batch_size)
    return np.concatenate([predict(images[i:i + batch_size]) for i in chunks])


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
            raise ValueError(f"logits of shape {got.shape} for a batch of {len(batch)}; "
                             f"expected {expected.shape}")
        diffs.append(float(np.abs(got - expected).max()))
        agree.extend(got.argmax(1) == expected.argmax(1))
        largest = max(largest, float(np.abs(expected).max()))
    return {"images": len(images), "batch_sizes": [len(images), 1], "max_abs_diff": max(diffs),
            "max_abs_logit": largest, "top1_agreement": 100 * float(np.mean(agree))}


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
        rows.append({"backend": name, "top1_accuracy": accuracy,
                     "points_vs_reference": accuracy - base,
                     "top1_agreement_with_reference": 100 * float(np.mean(top1 == reference_top1))})
    return rows


def accuracy_failures(rows: list[dict], tolerances: dict[str, float], precision: str) -> list[str]:
    """One message per backend that trails the reference by more than its tolerance.

    `tolerances` maps a backend name to the top-1 points it may trail.
    Backends not in it are not checked.
    `precision` is the engine precision the tolerances were chosen for; the message names it.
    """
    return [f"{row['backend']} top-1 {row['top1_accuracy']:.2f}% trails PyTorch by "
            f"{-row['points_vs_reference']:.2f} points; allowed {allowed} for {precision}"
            for row in rows if (allowed := tolerances.get(row["backend"])) is not None
            and row["points_vs_reference"] < -allowed]


# --------------------------------------------------------------------------------------------------
# Benchmark


def batch_of(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first `batch_size` normalized images (batch_size, 3, 32, 32).

    When there are fewer images, they are repeated from the start.
    """
    return np.ascontiguousarray(images[np.arange(batch_size) % len(images)])


def benchmark(steps: dict[str, StepFactory], images: np.ndarray, batch_sizes: list[int],
              warmup_seconds: float, min_seconds: float, min_iterations: int,
              report: Report) -> list[dict]:
    """Time each backend at each batch size on the normalized `images` (N, 3, 32, 32).

    `steps` maps a backend name to the factory of its timed step.
    Returns one row per backend and batch size.
    A row holds end-to-end statistics, and GPU compute statistics where they were measured.
    An engine that fails at one batch size is reported as a failure, and the benchmark goes on.
    """
    rows = []
    for name, make_step in steps.items():
        for batch_size in batch_sizes:
            try:
                step = make_step(batch_of(images, batch_size))
                end_to_end, gpu = time_iterations(step, warmup_seconds, min_seconds,
                                                  min_iterations)
            except trt_runtime.EngineError as e:
                report.fail(f"{name} batch {batch_size}: {e}")
                continue
            stats = latency_stats(end_to_end, batch_size)
            rows.append({"backend": name, "batch_size": batch_size, "end_to_end": stats,
                         "gpu_compute": latency_stats(gpu, batch_size) if gpu else None})
            print(f"  {name} batch {batch_size}: {stats['images_per_second']:,.0f} img/s",
                  flush=True)
    return rows


# --------------------------------------------------------------------------------------------------
# Reports


def markdown_benchmark(rows: list[dict]) -> str:
    """The benchmark rows as a markdown table: throughput, latency in ms, GPU compute p50."""
    lines = ["| backend | batch | iterations | images/s | mean ms | p50 ms | p90 ms | p99 ms "
             "| GPU compute p50 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        e2e, gpu = row["end_to_end"], row["gpu_compute"]
        gpu_p50 = f"{gpu['p50_ms']:.3f}" if gpu else "-"
        lines.append(f"| {row['backend']} | {row['batch_size']} | {e2e['iterations']} | "
                     f"{e2e['images_per_second']:,.0f} | {e2e['mean_ms']:.3f} | "
                     f"{e2e['p50_ms']:.3f} | {e2e['p90_ms']:.3f} | {e2e['p99_ms']:.3f} | "
                     f"{gpu_p50} |")
    return "\n".join(lines)


def markdown_accuracy(rows: list[dict], images: int) -> str:
    """The accuracy rows as a markdown table; `images` is how many test images were scored."""
    lines = [f"| backend | top-1 % ({images} test images) | points vs PyTorch "
             "| same top-1 as PyTorch % |",
             "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['top1_accuracy']:.2f} | "
                     f"{row['points_vs_reference']:+.2f} | "
                     f"{row['top1_agreement_with_reference']:.2f} |")
    return "\n".join(lines)


def plot_benchmark(rows: list[dict], path: Path, title: str) -> None:
    """Throughput (images/s) and p50 latency (ms) against batch size, one line per backend.

    The figure is saved to `path`.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in dict.fromkeys(row["backend"] for row in rows):
        mine = [row for row in rows if row["backend"] == backend]
        sizes = [row["batch_size"] for row in mine]
        rates = [row["end_to_end"]["images_per_second"] for row in mine]
        ax_rate.plot(sizes, rates, marker="o", label=backend)
        ax_latency.plot(sizes, [row["end_to_end"]["p50_ms"] for row in mine], marker="o",
                        label=backend)
    ax_rate.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s (end to end)",
                title="throughput")
    ax_latency.set(xscale="log", yscale="log", xlabel="batch size",
                   ylabel="p50 latency per batch (ms)", title="latency")
    sizes = sorted({row["batch_size"] for row in rows})
    for ax in (ax_rate, ax_latency):
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
