"""The one way a latency is measured here, trtexec's: warm up for a time, then time iterations
until both a minimum time and a minimum count are reached; report the mean and nearest-rank
percentiles of the iterations, and the throughput.

Used for a run's latency_ms in summary.json (cost.py) and for every row of the export's
benchmark.json (cifarkit/export/bench.py), so the two are measured alike. A step is one iteration on
a batch fixed beforehand; it returns the GPU compute seconds when it measures them, else None.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

Step = Callable[[], "float | None"]  # one timed iteration -> GPU compute seconds, or None


def time_iterations(
    step: Step,
    warmup_seconds: float,
    min_seconds: float,
    min_iterations: int,
    clock: Callable[[], float] = time.perf_counter,
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
    p25, p50, p75, p90, p99 = np.percentile(ms, [25, 50, 75, 90, 99], method="inverted_cdf")
    return {
        "iterations": int(ms.size),
        "mean_ms": float(ms.mean()),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "images_per_second": float(batch_size * ms.size / (ms.sum() / 1000)),
        "spread_pct": float(50 * (p75 - p25) / p50) if p50 > 0 else 0.0,
    }
