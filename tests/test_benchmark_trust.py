"""A benchmark compares equal budgets and says when it cannot be trusted: every CPU backend gets the
same threads (the affinity mask, OMP_NUM_THREADS, --threads), each figure comes with its spread,
and a figure whose spread or wait for a CPU is too high to rank the backends is marked in the
table and the plot. (trt_export.py's whole run with OMP_NUM_THREADS=1 is checked in
tests/test_trt_export.py: every row records 1 thread.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from test_trt_export import identity_session

from cifarkit.export import bench as inference_bench

IMAGES = np.zeros((4, 3, 32, 32), dtype=np.float32)


def test_the_thread_budget_is_the_affinity_mask_or_omp_num_threads_if_fewer(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    mask = os.sched_getaffinity(0)
    assert inference_bench.thread_budget() == len(mask)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert inference_bench.thread_budget() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(len(mask) + 8))  # more than it may run on
    assert inference_bench.thread_budget() == len(mask)
    monkeypatch.delenv("OMP_NUM_THREADS")
    os.sched_setaffinity(0, {min(mask)})  # `taskset -c N`, for this thread
    try:
        assert inference_bench.thread_budget() == 1
    finally:
        os.sched_setaffinity(0, mask)


def test_onnx_runtime_computes_with_the_threads_it_is_given_not_one_per_core(tmp_path):
    identity_session(tmp_path, 1)  # ONNX Runtime's own process-wide thread, made once

    def threads_made_by(threads: int) -> int:
        before = len(os.listdir("/proc/self/task"))
        session = identity_session(tmp_path, threads)
        assert session.get_session_options().intra_op_num_threads == threads
        return len(os.listdir("/proc/self/task")) - before

    assert threads_made_by(1) == 0  # the calling thread alone computes
    assert threads_made_by(3) == 2  # a pool of 2 beside it


def python_step(images: np.ndarray):
    """One CPU-bound iteration in this thread (no library threads): ~1 ms of Python."""
    return lambda: sum(range(20_000)) and None


def test_a_figure_measured_while_others_had_the_cpu_is_marked_busy_in_the_table(capsys):
    if inference_bench.cpu_times() is None:
        pytest.skip("this kernel keeps no run delay per thread (/proc/self/task/*/schedstat)")
    cpu = min(os.sched_getaffinity(0))
    spin = f"import os; os.sched_setaffinity(0, {{{cpu}}}); print(1, flush=True)\nwhile True: pass"
    spinners = [
        subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE) for _ in range(2)
    ]
    mask = os.sched_getaffinity(0)
    try:
        for spinner in spinners:
            spinner.stdout.readline()  # spinning on that CPU now
        os.sched_setaffinity(0, {cpu})  # this thread shares the CPU with both
        rows = inference_bench.benchmark(
            {"python": python_step},
            IMAGES,
            [1],
            0.05,
            0.5,
            10,
            inference_bench.Report(),
            {"python": 1},
        )
    finally:
        os.sched_setaffinity(0, mask)
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    (row,) = rows
    assert row["threads"] == 1 and row["cpu_wait_pct"] > 30  # about 2/3 of its time, waiting
    assert f"waited {row['cpu_wait_pct']:.0f}% for a CPU (load " in row["not_rankable"]
    table = inference_bench.markdown_benchmark(rows)
    # the wait is named whether or not the spread was too wide as well (it comes first then)
    assert re.search(r"\| \*\*no\*\*: [^|]*waited \d+% for a CPU", table), table
    assert "1 of 1 figures are too noisy to rank the backends" in table
    out = capsys.readouterr().out  # beside the figure, as it comes
    assert re.search(r"too noisy to rank: [^\n]*waited \d+% for a CPU", out), out


def test_a_figure_whose_iterations_spread_is_marked_noisy_with_its_spread():
    durations = iter([0.001, 0.004] * 100)
    rows = inference_bench.benchmark(
        {"uneven": lambda images: lambda: time.sleep(next(durations))},
        IMAGES,
        [1],
        0,
        0,
        20,
        inference_bench.Report(),
    )
    (row,) = rows
    assert row["end_to_end"]["spread_pct"] > 20  # half the iterations 4x the others
    assert row["not_rankable"].startswith("spread +-") and row["threads"] is None
    table = inference_bench.markdown_benchmark(rows)
    assert f"{row['end_to_end']['images_per_second']:,.0f} +-" in table


def row(spread: float, waited: float | None, load: float = 0.5, rate: float = 100.0) -> dict:
    return {
        "backend": "b",
        "batch_size": 1,
        "threads": 2,
        "cpu_wait_pct": waited,
        "load": load,
        "gpu_compute": None,
        "end_to_end": {
            "spread_pct": spread,
            "images_per_second": rate,
            "iterations": 10,
            "mean_ms": 1.0,
            "p50_ms": 1.0,
            "p90_ms": 1.0,
            "p99_ms": 1.0,
        },
    }


@pytest.mark.parametrize(
    "spread, waited, reason",
    [
        (2.0, 1.0, ""),
        (2.0, None, ""),  # a quiet machine; a kernel that keeps no run delay
        (inference_bench.NOISY_SPREAD_PCT + 1, 1.0, "spread +-6%"),
        (2.0, inference_bench.BUSY_WAIT_PCT + 5, "waited 15% for a CPU (load 3.0)"),
    ],
)
def test_a_figure_ranks_unless_its_spread_or_cpu_wait_is_over_the_limit(spread, waited, reason):
    assert inference_bench.why_not_rankable(row(spread, waited, load=3.0)) == reason


def test_the_plot_rings_the_noisy_figures_and_gives_the_load(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(inference_bench, "save_figure", lambda fig, path: drawn.append(fig))
    quiet, noisy = row(1.0, 1.0, load=0.4), row(30.0, 1.0, load=2.5, rate=300.0) | {"batch_size": 4}
    noisy["not_rankable"] = inference_bench.why_not_rankable(noisy)
    inference_bench.plot_benchmark([quiet | {"not_rankable": ""}, noisy], tmp_path / "p.png", "t")
    (fig,) = drawn
    ax_rate = fig.axes[0]
    labels = [text.get_text() for text in ax_rate.get_legend().get_texts()]
    assert "too noisy to rank (1 of 2; load 0.4-2.5)" in labels
    rings = [
        line
        for line in ax_rate.lines
        if line.get_markeredgecolor() == "red" and line.get_label() == "_noisy"
    ]
    assert [list(line.get_xdata()) for line in rings] == [[4]]  # the noisy figure alone
