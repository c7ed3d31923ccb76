"""trt_export.py and trt_runtime.py: ONNX export and parity, dynamic batch, timing statistics,
checkpoint errors, choosing the checkpoint (select_model.py's selection.json, --within, the fallback
at any depth), the CLI end to end on a checkpoint the trainer wrote; the TensorRT/CUDA layer on the
CPU through stand-in tensorrt, pycuda, cuda-python and ModelOpt modules (profile, timing cache,
graph capture, calibration arguments, error lines); and on a real GPU (marked `tensorrt`, skipped
without a GPU, TensorRT and pycuda, with the reason)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_CONFIG, ROOT, figures_drawn, quick_benchmark

import part_2_cifar
import trt_export
from cifarkit.core import choice, cifar_files, folders, run_files, timing
from cifarkit.export import backends as export_backends
from cifarkit.export import bench as inference_bench
from cifarkit.export import tensorrt_runtime as trt_runtime

TRT_MISSING = "; ".join(
    why.split(";")[0]
    for why in (
        "" if torch.cuda.is_available() else "no CUDA GPU",
        trt_runtime.why_no_tensorrt(),
        trt_runtime.why_no_pycuda(),
    )
    if why
)


def needs_tensorrt(test):
    """Marked `gpu` and `tensorrt`; skipped, with the reason, unless a CUDA GPU, TensorRT and pycuda
    are all here."""
    skip = pytest.mark.skipif(bool(TRT_MISSING), reason=f"needs TensorRT: {TRT_MISSING}")
    return pytest.mark.gpu(pytest.mark.tensorrt(skip(test)))


@pytest.fixture(scope="session")
def data_dir(learnable_data_dir) -> Path:
    """10 separable classes: a model that has learned gives decisive logits and a meaningful
    accuracy table."""
    return learnable_data_dir


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory) -> Path:
    """A run folder with best.pt and summary.json written by the trainer's own train() (2 epochs,
    small filters), two levels down as a local sweep's trial is: <runs>/<study>/trial-0000."""
    config = part_2_cifar.validate_config({**part_2_cifar.DEFAULTS, **FAST_CONFIG, "val_size": 200})
    run_dir = tmp_path_factory.mktemp("trt_runs") / "study" / "trial-0000"
    threads = torch.get_num_threads()
    # on a busy 2-core machine one thread is several times faster than two contending
    torch.set_num_threads(1)
    try:
        data = part_2_cifar.prepare_data(data_dir, config["val_size"], torch.device("cpu"))
        summary = part_2_cifar.train(config, data, run_dir)
    finally:
        torch.set_num_threads(threads)
    assert summary["test_accuracy"] > 15, summary  # it learned: chance is 10%
    assert (run_dir / "best.pt").is_file() and (run_dir / "summary.json").is_file()
    return run_dir


@pytest.fixture(scope="session")
def cli_run(trained_run, data_dir, tmp_path_factory) -> dict:
    """One real `python trt_export.py --checkpoint best ...` on the CPU with a short benchmark;
    tests read its files."""
    work = tmp_path_factory.mktemp("trt_cli")
    command = [
        sys.executable,
        str(ROOT / "trt_export.py"),
        "--checkpoint",
        "best",
        "--runs-dir",
        str(trained_run.parent.parent),
        "--data-dir",
        str(data_dir),
        "--out",
        str(work / "export"),
        "--plot",
        str(work / "plot.png"),
        "--batch-sizes",
        "1,4",
        *quick_benchmark(min_iterations=3),
    ]
    # see trained_run; the benchmark numbers are not what is tested; the plot is
    with figures_drawn():
        env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=600)
    return {"result": result, "out": work / "export", "plot": work / "plot.png"}


def normalized_test_images(
    data_dir: Path, count: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    _, _, images, labels = cifar_files.load_cifar100(data_dir, download=False)
    images, labels = images[:count], labels[:count]
    return part_2_cifar.normalize(torch.from_numpy(images)).contiguous().numpy(), labels


# --------------------------------------------------------------------------------------------------
# The CLI end to end, without TensorRT


def test_cli_exports_checks_benchmarks_and_says_what_it_skipped(cli_run, trained_run):
    result, out = cli_run["result"], cli_run["out"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    # found two levels down
    assert f"exporting checkpoint {trained_run / 'best.pt'} " in result.stdout
    assert "not confirmed by select_model.py" in result.stdout  # there is no selection.json
    assert (
        "| backend | batch | iterations | images/s | mean ms | p50 ms | p90 ms | p99 ms | GPU "
        "compute p50 ms | threads | CPU wait % | load | ranks? |"
    ) in result.stdout
    assert "CPU threads pytorch-fp32 (cpu) 1, onnxruntime-fp32 (cpu) 1" in result.stdout
    assert "ONNX fp32 vs PyTorch (ONNX Runtime CPU" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped: ")]
    assert any(
        line.startswith("skipped: TensorRT fp16 engine") and "no CUDA GPU" in line
        for line in skipped
    )
    assert any(line.startswith("skipped: PyTorch fp16/bf16") for line in skipped)
    written = sorted(path.name for path in out.iterdir())
    assert written == ["benchmark.json", "model.onnx", "model_fp16.onnx", folders.OWNER_LOCK]
    assert cli_run["plot"].stat().st_size > 10_000


def test_cli_benchmark_json_has_every_backend_and_batch_size(cli_run):
    report = json.loads((cli_run["out"] / "benchmark.json").read_text())
    rows = {(row["backend"], row["batch_size"]): row for row in report["benchmark"]}
    assert set(rows) == {
        (backend, size)
        for backend in ("pytorch-fp32 (cpu)", "onnxruntime-fp32 (cpu)")
        for size in (1, 4)
    }
    for row in rows.values():
        stats = row["end_to_end"]
        assert stats["iterations"] >= 3
        assert (
            0
            < stats["min_ms"]
            <= stats["p50_ms"]
            <= stats["p90_ms"]
            <= stats["p99_ms"]
            <= stats["max_ms"]
        )
        assert stats["images_per_second"] > 0 and stats["spread_pct"] >= 0
        assert row["gpu_compute"] is None  # no CUDA events on the CPU
        # OMP_NUM_THREADS=1: ONNX Runtime, which does not read it, gets 1 thread too
        assert row["threads"] == 1 and isinstance(row["not_rankable"], str) and row["load"] >= 0
    assert report["failures"] == [] and len(report["skipped"]) == 2
    assert report["onnx_parity"]["fp32"]["passed"] and report["onnx_parity"]["fp16"]["passed"]
    assert [row["backend"] for row in report["accuracy"]][0] == "pytorch-fp32 (cpu)"


# --------------------------------------------------------------------------------------------------
# ONNX


def test_onnx_has_named_dynamic_io_and_weights_inside(cli_run):
    import onnx

    path = cli_run["out"] / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert (graph_input.name, graph_output.name) == ("images", "logits")
    batch, *rest = graph_input.type.tensor_type.shape.dim
    assert batch.dim_param and not batch.dim_value  # symbolic: any batch size
    assert [d.dim_value for d in rest] == [3, 32, 32]
    assert not any(init.external_data for init in model.graph.initializer)


def test_onnx_matches_pytorch_on_the_checkpoint_the_trainer_wrote(cli_run, trained_run, data_dir):
    model, _ = trt_export.load_model(trained_run / "best.pt")
    images, _ = normalized_test_images(data_dir)
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy()
    got = export_backends.ort_session(cli_run["out"] / "model.onnx").run(
        ["logits"], {"images": images}
    )[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_onnx_batch_dimension_is_dynamic(cli_run, trained_run, data_dir):
    model, _ = trt_export.load_model(trained_run / "best.pt")
    session = export_backends.ort_session(cli_run["out"] / "model.onnx")
    images, _ = normalized_test_images(data_dir, 64)
    for batch_size in (3, 64):  # neither is the export's example batch of 2
        got = session.run(["logits"], {"images": images[:batch_size]})[0]
        with torch.inference_mode():
            expected = model(torch.from_numpy(images[:batch_size])).numpy()
        assert got.shape == (batch_size, 100)
        assert np.abs(got - expected).max() <= 1e-4


def test_fp16_onnx_computes_in_fp16_and_stays_close_to_pytorch(cli_run, trained_run, data_dir):
    import onnx

    path = cli_run["out"] / "model_fp16.onnx"
    weights = onnx.load(str(path)).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)
    assert not any(w.data_type == onnx.TensorProto.FLOAT for w in weights)
    model, _ = trt_export.load_model(trained_run / "best.pt")
    images, _ = normalized_test_images(data_dir)
    result = inference_bench.parity(
        export_backends.torch_predictor(model, torch.device("cpu"), None),
        export_backends.ort_predictor(export_backends.ort_session(path)),
        images,
    )
    assert result["max_abs_diff"] > 0  # it really is not the fp32 graph
    assert trt_export.check_parity(result, "fp16")


def test_parity_check_rejects_a_model_that_differs_by_more_than_1e4():
    images = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    logits = np.random.default_rng(1).normal(size=(8, 100)).astype(np.float32)
    same = inference_bench.parity(
        lambda x: logits[: len(x)], lambda x: logits[: len(x)] + 5e-5, images
    )
    off = inference_bench.parity(
        lambda x: logits[: len(x)], lambda x: logits[: len(x)] + 5e-4, images
    )
    assert trt_export.check_parity(same, "fp32") and not trt_export.check_parity(off, "fp32")


# --------------------------------------------------------------------------------------------------
# Timing and accuracy


class FakeClock:
    """A clock that only moves when a fake step advances it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latency_stats_are_nearest_rank_percentiles_and_images_per_second():
    ms = np.random.default_rng(0).permutation(np.arange(1, 101))  # 1..100 ms in random order
    stats = timing.latency_stats([m / 1000 for m in ms], batch_size=32)
    assert stats["iterations"] == 100
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert (stats["p50_ms"], stats["p90_ms"], stats["p99_ms"]) == pytest.approx((50, 90, 99))
    assert (stats["min_ms"], stats["max_ms"]) == pytest.approx((1, 100))
    assert stats["images_per_second"] == pytest.approx(32 * 100 / 5.05)  # 100 batches in 5.05 s


def test_time_iterations_warms_up_by_time_then_meets_both_minimums():
    clock, calls = FakeClock(), []

    def step() -> float:
        calls.append(clock.now)
        clock.now += 0.010  # each iteration takes 10 ms end to end ...
        return 0.004  # ... of which the GPU computed 4 ms

    end_to_end, gpu = timing.time_iterations(
        step, warmup_seconds=0.05, min_seconds=0.1, min_iterations=3, clock=clock
    )
    assert len(calls) == 5 + 10  # 50 ms of warm-up, then 100 ms of timed iterations
    assert end_to_end == pytest.approx([0.010] * 10) and gpu == pytest.approx([0.004] * 10)
    end_to_end, gpu = timing.time_iterations(
        lambda: None, warmup_seconds=0, min_seconds=0, min_iterations=7, clock=FakeClock()
    )
    assert len(end_to_end) == 7 and gpu == []  # a step that reports no GPU time (the CPU backends)


def test_engine_that_trails_pytorch_beyond_the_tolerance_fails():
    labels = np.arange(1000) % 100
    perfect = np.eye(100, dtype=np.float32)[labels]
    one_percent_wrong = perfect.copy()
    # 10 of 1000 images: 1 point lower
    one_percent_wrong[:10] = np.roll(one_percent_wrong[:10], 1, axis=1)
    rows = inference_bench.accuracy_table(
        {"pytorch-fp32 (cuda)": perfect, "tensorrt-fp16": one_percent_wrong},
        labels,
        reference="pytorch-fp32 (cuda)",
    )
    assert rows[1]["points_vs_reference"] == pytest.approx(-1.0)
    assert rows[1]["top1_agreement_with_reference"] == pytest.approx(99.0)
    tolerance = export_backends.ACCURACY_TOLERANCE
    # 0.5
    assert (
        len(inference_bench.accuracy_failures(rows, {"tensorrt-fp16": tolerance["fp16"]}, "fp16"))
        == 1
    )
    # 1.5
    assert (
        inference_bench.accuracy_failures(rows, {"tensorrt-fp16": tolerance["int8"]}, "int8") == []
    )


def test_accuracy_is_compared_with_the_named_reference_wherever_it_is_listed(capsys):
    labels = np.arange(1000) % 100
    perfect = np.eye(100, dtype=np.float32)[labels]
    one_point_lower, two_points_lower = perfect.copy(), perfect.copy()
    one_point_lower[:10] = np.roll(one_point_lower[:10], 1, axis=1)  # 10 of 1000 images wrong
    two_points_lower[:20] = np.roll(two_points_lower[:20], 1, axis=1)
    registry = [
        export_backends.Backend(
            "tensorrt-fp16", lambda x: one_point_lower[: len(x)], tolerance=0.5
        ),
        export_backends.Backend("onnxruntime-fp16 (cpu)", lambda x: two_points_lower[: len(x)]),
        export_backends.Backend("pytorch-fp32 (cpu)", lambda x: perfect[: len(x)], reference=True),
    ]
    report = inference_bench.Report()
    rows = trt_export.check_accuracy(registry, "fp16", np.zeros((1000, 1)), labels, 1000, report)
    points = {row["backend"]: row["points_vs_reference"] for row in rows}
    assert points == pytest.approx(
        {"tensorrt-fp16": -1.0, "onnxruntime-fp16 (cpu)": -2.0, "pytorch-fp32 (cpu)": 0}
    )
    (failure,) = report.failures  # the ONNX Runtime row has no tolerance: reported, not enforced
    assert failure.startswith(
        "tensorrt-fp16 top-1 99.00% trails PyTorch by 1.00 points; allowed 0.5"
    )


def identity_session(folder: Path, threads: int):
    """A real ONNX Runtime session of `threads` threads on a one-node graph (Identity)."""
    import onnx
    from onnx import TensorProto, helper

    x, y = (
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, 32, 32])
        for name in ("x", "y")
    )
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y])
    path = folder / "identity.onnx"
    onnx.save(helper.make_model(graph), str(path))
    return export_backends.ort_session(path, threads)


def test_a_cpu_registry_lists_every_backend_each_runnable_here_or_with_the_reason(tmp_path):
    # fp16 engine, CUDA graph asked
    args = trt_export.parse_args(["--checkpoint", "unused.pt", "--cuda-graph"])
    cpu = torch.device("cpu")
    engine, info = trt_export.build_tensorrt(
        args,
        tmp_path,
        {},
        lambda: pytest.fail("no calibration on the CPU"),
        cpu,
        inference_bench.Report(),
    )
    assert engine.runner is None and info is None
    sessions = {precision: identity_session(tmp_path, 1) for precision in ("fp32", "fp16")}
    registry = export_backends.backends(
        torch.nn.Linear(1, 1), cpu, sessions, engine, "fp16", cuda_graph=True
    )
    names = [backend.name for backend in registry]
    assert names == [
        "pytorch-fp32 (cpu)",
        "onnxruntime-fp32 (cpu)",
        "onnxruntime-fp16 (cpu)",
        "pytorch-fp16-autocast (cuda)",
        "pytorch-bf16-autocast (cuda)",
        "tensorrt-fp16",
        "tensorrt-fp16-cudagraph",
    ]
    runnable = {backend.name for backend in registry if backend.predict or backend.make_step}
    assert runnable == set(names[:3])
    for backend in registry:  # runnable with no reason, or a reason and nothing to run
        assert (backend.name in runnable) == (backend.unavailable == ""), backend
    assert [backend.name for backend in registry if backend.reference] == ["pytorch-fp32 (cpu)"]
    assert [backend.name for backend in registry if backend.make_step] == names[
        :2
    ]  # the fp16 ONNX is scored only
    assert all(backend.tolerance is None for backend in registry)
    with_runner = export_backends.backends(
        torch.nn.Linear(1, 1),
        cpu,
        sessions,
        export_backends.Engine(runner=lambda x: x),
        "int8",
        cuda_graph=False,
    )
    tolerances = {
        backend.name: backend.tolerance for backend in with_runner if backend.tolerance is not None
    }
    assert tolerances == {
        "tensorrt-int8": export_backends.ACCURACY_TOLERANCE["int8"]
    }  # the engine's alone


# --------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, no traceback


def test_missing_checkpoint_is_one_line_and_exit_2(tmp_path, capsys):
    # as a process: test_exit_codes.py
    assert trt_export.main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist"
    )


def test_truncated_checkpoint_is_one_line_and_exit_2(trained_run, tmp_path, capsys):
    data = (trained_run / "best.pt").read_bytes()
    (tmp_path / "best.pt").write_bytes(data[: len(data) // 2])
    assert trt_export.main(["--checkpoint", str(tmp_path / "best.pt")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "truncated or corrupt" in line


def test_foreign_checkpoints_are_one_line_and_exit_2(trained_run, tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")  # somebody else's file
    checkpoint = torch.load(trained_run / "best.pt", weights_only=True)
    checkpoint["config"] = {
        **checkpoint["config"],
        "num_filters_3": 64,
    }  # weights that do not fit their config
    torch.save(checkpoint, tmp_path / "mismatch.pt")
    for name, expected in (
        ("other.pt", "is not a part_2_cifar checkpoint: it lacks model, config"),
        ("mismatch.pt", "does not fit the SimpleCNN its config describes"),
    ):
        assert trt_export.main(["--checkpoint", str(tmp_path / name)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert expected in line


def test_best_picks_the_run_with_the_highest_best_val_accuracy_at_any_depth(tmp_path, capsys):
    runs = {
        "a": {"best_val_accuracy": 40.0},
        "study/trial-0001": {"best_val_accuracy": 55.5},
        "c": {"best_val_accuracy": 90.0},
        "d": {"best_val_accuracy": "high"},
        "e": None,
    }
    for name, summary in runs.items():
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "summary.json").write_text(
            "{not json" if summary is None else json.dumps(summary)
        )
        if name != "c":  # c scored best but has no best.pt to export
            (tmp_path / name / "best.pt").write_bytes(b"")
    assert choice.best_run(run_files.summaries_under(tmp_path)) == (
        tmp_path / "study" / "trial-0001",
        55.5,
    )
    # a run folder
    assert choice.choose_checkpoint(str(tmp_path / "a"), tmp_path) == tmp_path / "a" / "best.pt"
    assert (
        choice.choose_checkpoint("best", tmp_path) == tmp_path / "study" / "trial-0001" / "best.pt"
    )
    out = capsys.readouterr().out
    assert "e/summary.json is not valid JSON" in out and "d/summary.json is damaged" in out
    assert "not confirmed by select_model.py" in out


def test_with_no_arguments_it_exports_the_best_run_under_runs(
    with_figures, trained_run, data_dir, tmp_path
):
    """`python trt_export.py`, as the brief names it: ./runs and ./data, the default benchmark."""
    shutil.copytree(trained_run, tmp_path / "runs" / "study" / "trial-0000")
    (tmp_path / "data").symlink_to(data_dir)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "trt_export.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run = Path("runs") / "study" / "trial-0000"
    assert f"exporting checkpoint {run / 'best.pt'} " in result.stdout
    assert "not confirmed by select_model.py" in result.stdout
    report = json.loads((tmp_path / run / "export" / "benchmark.json").read_text())
    assert report["checkpoint"] == str(run / "best.pt") and report["failures"] == []
    assert {row["batch_size"] for row in report["benchmark"]} == set(trt_export.BATCH_SIZES)
    assert (tmp_path / "images" / "inference_benchmark.png").is_file()


def test_with_no_arguments_and_no_run_yet_it_says_what_to_do_and_exits_2(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    assert trt_export.main([]) == 2  # in this process; as one: test_exit_codes.py
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    (line,) = stderr.strip().splitlines()
    assert (
        line.startswith("error: no run in runs has a summary.json")
        and "train one with part_2_cifar.py" in line
    )


def test_importing_the_exporter_imports_no_optuna_nor_sqlalchemy():
    code = "import sys, trt_export; print(sorted({'optuna', 'sqlalchemy'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_best_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert trt_export.main(["--checkpoint", "best", "--runs-dir", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: no run in {tmp_path} has a summary.json with best_val_accuracy")


# --------------------------------------------------------------------------------------------------
# Choosing the checkpoint: select_model.py's selection.json, --within


def copy_run(source: Path, run_dir: Path, best_val_accuracy: float) -> None:
    """A run folder holding the trainer's real best.pt and summary.json, with a hand-written
    best_val_accuracy."""
    run_dir.mkdir(parents=True)
    shutil.copy(source / "best.pt", run_dir / "best.pt")
    summary = json.loads((source / "summary.json").read_text())
    (run_dir / "summary.json").write_text(
        json.dumps({**summary, "best_val_accuracy": best_val_accuracy})
    )


def selection_config(name: str, runs: list[str], mean: float, flops: float, pareto: bool) -> dict:
    return {
        "config": {"name": name},
        "runs": runs,
        "val_accuracy_mean": mean,
        "val_accuracy_std": 1.0,
        "val_accuracy_ci95": [mean - 2, mean + 2],
        "single_run_val_accuracy": mean + 1,
        "test_accuracy_mean": mean - 1,
        "flops_per_image": flops,
        "latency_ms": {"1": 0.5, "256": 4.0},
        "pareto": pareto,
    }


@pytest.fixture()
def selection_runs(trained_run, tmp_path) -> Path:
    """runs/ as select_model.py leaves it: sweep trials, retrained seeds in selection/, and
    selection.json naming four configs: A best (60.0, 83.5 MFLOP), B cheaper within a point (59.5,
    21 MFLOP), C off the front, D cheapest but 5 points down. A lucky single trial (70.0) is the
    highest run of all: the selection must win over it."""
    runs = tmp_path / "runs"
    seeds = {
        "study/trial-0003": 59.0,
        "selection/a-seed1": 61.0,
        "selection/b-seed1": 58.0,
        "selection/b-seed2": 61.5,
        "selection/c-seed1": 59.0,
        "selection/d-seed1": 55.0,
        "study/trial-0007": 70.0,
    }
    for run, accuracy in seeds.items():
        copy_run(trained_run, runs / run, accuracy)
    configs = [
        selection_config(
            "A", ["study/trial-0003", str(runs / "selection/a-seed1")], 60.0, 83.5e6, True
        ),
        selection_config("B", ["selection/b-seed1", "selection/b-seed2"], 59.5, 21e6, True),
        selection_config("C", ["selection/c-seed1"], 59.0, 30e6, False),  # B is better and cheaper
        selection_config("D", ["selection/d-seed1"], 55.0, 5e6, True),
    ]
    (runs / "selection.json").write_text(
        json.dumps({"configs": configs, "best": "selection/a-seed1"})
    )
    return runs


def test_best_exports_what_select_model_chose_not_the_luckiest_run(selection_runs, capsys):
    assert (
        choice.choose_checkpoint("best", selection_runs)
        == selection_runs / "selection/a-seed1/best.pt"
    )
    assert "chosen by select_model.py" in capsys.readouterr().out


def test_a_selection_json_below_runs_dir_is_found(selection_runs):
    study = selection_runs.parent / "all-runs" / "cifar"
    # select_model.py was given runs/cifar; the export looks in runs/
    shutil.move(selection_runs, study)
    assert choice.choose_checkpoint("best", study.parent) == study / "selection/a-seed1/best.pt"


@pytest.mark.parametrize(
    ("points", "run"),
    [(0, "selection/a-seed1"), (1.0, "selection/b-seed2"), (5.0, "selection/d-seed1")],
)
def test_within_picks_the_cheapest_front_config_within_the_points_at_its_best_seed(
    selection_runs, points, run, capsys
):
    assert (
        choice.choose_checkpoint("best", selection_runs, within=points)
        == selection_runs / run / "best.pt"
    )
    assert f"its best seed is {selection_runs / run}" in capsys.readouterr().out


def test_within_never_picks_a_config_off_the_front():
    configs = [
        selection_config("best", ["x"], 60.0, 80e6, True),
        selection_config("off", ["y"], 59.9, 1e6, False),
        selection_config("front", ["z"], 59.5, 20e6, True),
    ]
    assert choice.cheapest_within(configs, 1.0)["config"]["name"] == "front"


def test_cli_within_exports_the_chosen_seed_normalizing_once_with_one_session_per_model(
    selection_runs, data_dir, tmp_path, monkeypatch, capsys
):
    normalize_calls, session_paths = [], []
    real_normalize, real_session = trt_export.normalize, export_backends.ort_session
    monkeypatch.setattr(
        trt_export, "normalize", lambda x: normalize_calls.append(len(x)) or real_normalize(x)
    )
    monkeypatch.setattr(
        trt_export,
        "ort_session",
        lambda path, threads: session_paths.append(path) or real_session(path, threads),
    )
    code = trt_export.main(
        [
            "--checkpoint",
            "best",
            "--within",
            "1",
            "--runs-dir",
            str(selection_runs),
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path / "export"),
            "--plot",
            str(tmp_path / "plot.png"),
            "--batch-sizes",
            "1,3",
            "--accuracy-images",
            "40",
            *quick_benchmark(),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    exported = selection_runs / "selection/b-seed2/best.pt"
    assert f"exporting checkpoint {exported} " in out
    assert json.loads((tmp_path / "export" / "benchmark.json").read_text())["checkpoint"] == str(
        exported
    )
    assert normalize_calls == [
        40
    ]  # the test images, once, for parity, accuracy (chunks of 3) and benchmark
    assert sorted(path.name for path in session_paths) == ["model.onnx", "model_fp16.onnx"]


def test_export_leaves_the_callers_model_as_it_was(trained_run, data_dir, tmp_path):
    model, _ = trt_export.load_model(trained_run / "best.pt")
    before = {
        name: (tensor.clone(), tensor.stride()) for name, tensor in model.state_dict().items()
    }
    images, _ = normalized_test_images(data_dir, 8)
    trt_export.export_and_check(model, tmp_path, "fp16", images, inference_bench.Report())
    placed = export_backends.on_device(model, torch.device("cpu"))
    export_backends.torch_predictor(placed, torch.device("cpu"), None)(images)
    assert not model.training
    for name, tensor in model.state_dict().items():
        # not moved
        assert tensor.stride() == before[name][1] and tensor.dtype == before[name][0].dtype, name
        assert torch.equal(tensor, before[name][0]), name
    conv_weight = next(p for p in placed.parameters() if p.dim() == 4)
    # the copy was placed as the trainer runs
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is unreadable (JSONDecodeError): rerun select_model.py"),
        (
            '{"configs": [], "best": "selection/a-seed1"}',
            'is not a select_model.py selection: it needs {"configs"',
        ),
        (
            '{"configs": [{"runs": ["x"], "val_accuracy_mean": 60, "pareto": true}], "best": "x"}',
            "configs[0] needs val_accuracy_mean in [0, 100], flops_per_image > 0",
        ),
        (
            '{"configs": [{"runs": ["x"], "val_accuracy_mean": 60, "flops_per_image": 1, "pareto": '
            'true}], "best": "gone"}',
            "gone/best.pt does not exist",
        ),
    ],
)
def test_a_garbled_selection_json_is_one_line_and_exit_2(selection_runs, capsys, content, expected):
    (selection_runs / "selection.json").write_text(content)
    assert trt_export.main(["--checkpoint", "best", "--runs-dir", str(selection_runs)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and expected in line


def test_within_without_a_selection_json_is_one_line_and_exit_2(trained_run, capsys):
    runs = trained_run.parent.parent
    assert trt_export.main(["--checkpoint", "best", "--within", "1", "--runs-dir", str(runs)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert (
        line
        == f"error: --within needs a selection.json under {runs}: run select_model.py {runs} first"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--checkpoint", "runs/x/best.pt", "--within", "1"],
        ["--checkpoint", "best", "--within", "-1"],
    ],
)
def test_within_needs_best_and_points_at_least_0(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        trt_export.main(args)
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--within" in line and "use a number of points >= 0, with --checkpoint best" in line


# --------------------------------------------------------------------------------------------------
# TensorRT


def test_stub_only_or_absent_tensorrt_is_reported_not_used(monkeypatch):
    # what tensorrt-stubs leaves behind
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert "only type stubs" in trt_runtime.why_no_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed: import raises ImportError
    assert "cannot be imported" in trt_runtime.why_no_tensorrt()


# The TensorRT, pycuda, cuda-python and ModelOpt layer on the CPU, through stand-in modules that
# record each call


class Logger:
    WARNING = 2

    def __init__(self, level: int) -> None: ...


class FakeTensorRT(types.ModuleType):
    """The slice of `tensorrt` that build_engine and TrtRunner call. A timing cache made from bytes
    other than "" or "this-gpu" is refused as TensorRT refuses another GPU's; `profile` is the
    engine's batch range."""

    TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    # a number unlike 10's or 11's
    NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=7)
    MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    # TensorRT 10 still has them: they must go unused
    BuilderFlag = types.SimpleNamespace(FP16="fp16", INT8="int8")
    Dims = list

    def __init__(self, profile: tuple[int, int] = (1, 256), build_ok: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__, self.calls, self.profile, self.build_ok = (
            "10.13-fake",
            [],
            profile,
            build_ok,
        )
        self.executes: list[
            object
        ] = []  # what execute_async_v3 does next: True, False or an exception to raise
        fake = self

        class Cache:
            def __init__(self, blob: bytes) -> None:
                self.blob = blob

            def serialize(self) -> bytes:
                return b"this-gpu"

        class Config:
            cache = None

            def set_memory_pool_limit(self, pool, size) -> None: ...
            def add_optimization_profile(self, profile) -> None: ...
            def create_timing_cache(self, blob: bytes) -> Cache:
                return Cache(bytes(blob))

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> bool:
                accepted = cache.blob in (b"", b"this-gpu")
                fake.calls.append(("set_timing_cache", cache.blob, accepted))
                self.cache = cache if accepted else self.cache
                return accepted

            def get_timing_cache(self) -> Cache | None:
                return self.cache

            def set_flag(self, flag) -> None:
                fake.calls.append(("set_flag", flag))

        class Builder:
            def __init__(self, logger) -> None: ...
            def create_network(self, flags: int):
                fake.calls.append(("create_network", flags))
                return types.SimpleNamespace(
                    get_input=lambda i: types.SimpleNamespace(name="images", shape=[-1, 3, 32, 32])
                )

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self):
                return types.SimpleNamespace(
                    set_shape=lambda *shapes: fake.calls.append(("set_shape", *shapes))
                )

            def build_serialized_network(self, network, config):
                return b"engine" if fake.build_ok else None

        class Context:
            def set_tensor_address(self, name, address) -> None: ...
            def set_input_shape(self, name, shape) -> bool:
                return fake.profile[0] <= shape[0] <= fake.profile[1]

            def execute_async_v3(self, stream_handle) -> bool:
                fake.calls.append(("execute_async_v3", stream_handle))
                outcome = fake.executes.pop(0) if fake.executes else True
                if isinstance(outcome, Exception):
                    raise outcome
                return bool(outcome)

        class Engine:
            num_io_tensors = 2
            get_tensor_name = staticmethod(["images", "logits"].__getitem__)
            get_tensor_mode = staticmethod({"images": "input", "logits": "output"}.__getitem__)
            get_tensor_shape = staticmethod(
                {"images": [-1, 3, 32, 32], "logits": [-1, 100]}.__getitem__
            )
            get_tensor_dtype = staticmethod(lambda name: "float32")
            create_execution_context = staticmethod(Context)

        self.Logger = Logger
        self.Builder = Builder
        self.OnnxParser = lambda network, logger: types.SimpleNamespace(
            parse_from_file=lambda path: True
        )
        self.Runtime = lambda logger: types.SimpleNamespace(
            deserialize_cuda_engine=lambda blob: Engine()
        )
        self.nptype = np.dtype


class FakeCudaRuntime:
    """cuda-python's runtime as the runner uses it: (error, *values) tuples; `fail` maps a call to
    its error."""

    cudaError_t = types.SimpleNamespace(cudaSuccess=0, cudaErrorStreamCaptureInvalidated=901)
    cudaStreamCaptureMode = types.SimpleNamespace(cudaStreamCaptureModeGlobal="global")

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.capturing: set[int] = set()
        self.live: set[str] = set()  # graphs and instantiations not yet destroyed
        self.fail: dict[str, int] = {}

    def _made(self, call: str, handle: str) -> tuple:
        if call in self.fail:
            return self.fail[call], None
        self.live.add(handle)
        return 0, handle

    def cudaStreamBeginCapture(self, stream, mode) -> tuple:
        self.calls.append(("cudaStreamBeginCapture", stream, mode))
        self.capturing.add(stream)
        return (0,)

    def cudaStreamEndCapture(self, stream) -> tuple:
        self.calls.append(("cudaStreamEndCapture", stream))
        self.capturing.discard(stream)
        return self._made("cudaStreamEndCapture", f"graph{len(self.calls)}")

    def cudaGraphInstantiate(self, graph, flags) -> tuple:
        self.calls.append(("cudaGraphInstantiate", graph, flags))
        return self._made("cudaGraphInstantiate", f"exec-of-{graph}")

    def cudaGraphLaunch(self, graph_exec, stream) -> tuple:
        self.calls.append(("cudaGraphLaunch", graph_exec, stream))
        return (0,)

    def cudaGraphExecDestroy(self, graph_exec) -> tuple:
        self.live.remove(graph_exec)
        return (0,)

    def cudaGraphDestroy(self, graph) -> tuple:
        self.live.remove(graph)
        return (0,)

    def cudaGetErrorName(self, error) -> tuple:
        return 0, {901: b"cudaErrorStreamCaptureInvalidated"}[error]


def fake_pycuda() -> types.ModuleType:
    """pycuda.driver's buffers, stream and events, on the host. It has no graph API, as no released
    pycuda has."""
    driver = types.ModuleType("pycuda.driver")
    driver.pagelocked_empty = lambda shape, dtype: np.zeros(shape, dtype)
    driver.mem_alloc = lambda nbytes: 4096
    driver.Stream = lambda: types.SimpleNamespace(handle=77, synchronize=lambda: None)
    driver.Event = lambda: types.SimpleNamespace(
        record=lambda stream: None, time_since=lambda start: 0.25
    )
    driver.memcpy_htod_async = driver.memcpy_dtoh_async = lambda destination, source, stream: None
    package = types.ModuleType("pycuda")
    package.driver, package.autoprimaryctx = driver, types.ModuleType("pycuda.autoprimaryctx")
    return package


@pytest.fixture()
def fake_gpu(monkeypatch, tmp_path) -> types.SimpleNamespace:
    """Stand-in tensorrt, pycuda and cuda-python in place of the real ones, for build_engine and
    TrtRunner; an engine file at tmp_path/m.engine for the runner to read."""
    (tmp_path / "m.engine").write_bytes(b"engine")
    trt, cudart, pycuda = FakeTensorRT(), FakeCudaRuntime(), fake_pycuda()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name in ("pycuda", "pycuda.driver", "pycuda.autoprimaryctx"):
        monkeypatch.setitem(
            sys.modules, name, pycuda if name == "pycuda" else getattr(pycuda, name.split(".")[1])
        )
    monkeypatch.setattr(trt_runtime, "cuda_runtime", lambda: cudart)
    return types.SimpleNamespace(trt=trt, cudart=cudart)


# never mutated
def build(tmp_path: Path, batch_sizes: list[int] = [32, 256]) -> dict:  # noqa: B006
    return trt_runtime.build_engine(
        tmp_path / "m.onnx",
        tmp_path / "m.engine",
        "fp16",
        batch_sizes,
        "fake GPU",
        tmp_path / "timing.cache",
    )


def test_profile_starts_at_batch_1_so_the_accuracy_pass_remainder_fits(fake_gpu, tmp_path):
    info = build(tmp_path, [32, 256])
    (shapes,) = [call[2:] for call in fake_gpu.trt.calls if call[0] == "set_shape"]
    assert shapes == ([1, 3, 32, 32], [256, 3, 32, 32], [256, 3, 32, 32])  # min, opt, max
    assert info["profile"]["min"] == [1, 3, 32, 32]
    chunks: list[int] = []  # 10,000 test images in chunks of the largest batch end with 16
    inference_bench.predict_all(
        lambda x: chunks.append(len(x)) or np.zeros((len(x), 100)), np.zeros((10_000, 1)), 256
    )
    assert chunks[-1] == 16 and all(shapes[0][0] <= n <= shapes[2][0] for n in chunks)


def test_network_is_strongly_typed_by_the_flag_name_and_no_precision_flag_is_set(
    fake_gpu, tmp_path
):
    info = build(tmp_path)
    assert (
        "create_network",
        1 << 7,
    ) in fake_gpu.trt.calls  # 1 << int(STRONGLY_TYPED), whatever its number
    assert not [call for call in fake_gpu.trt.calls if call[0] == "set_flag"]
    assert info["typing"] == "strongly typed"


def test_a_timing_cache_from_another_gpu_is_replaced_by_a_fresh_one(fake_gpu, tmp_path, capsys):
    (tmp_path / "timing.cache").write_bytes(b"another-gpu")
    info = build(tmp_path)
    assert [call for call in fake_gpu.trt.calls if call[0] == "set_timing_cache"] == [
        ("set_timing_cache", b"another-gpu", False),
        ("set_timing_cache", b"", True),
    ]
    assert (
        "from another GPU or TensorRT version, or damaged; starting a fresh timing cache"
        in capsys.readouterr().out
    )
    assert (tmp_path / "timing.cache").read_bytes() == b"this-gpu"
    # written after the cache, not lost to it
    assert json.loads((tmp_path / "m.engine.json").read_text()) == info


def test_a_failed_build_is_an_engine_error(fake_gpu, tmp_path):
    fake_gpu.trt.build_ok = False
    with pytest.raises(trt_runtime.EngineError, match="could not build a fp16 engine from"):
        build(tmp_path)


def test_a_batch_outside_the_runner_or_profile_is_an_engine_error_line(fake_gpu, tmp_path):
    runner = trt_runtime.TrtRunner(tmp_path / "m.engine", max_batch_size=256)
    assert runner(np.zeros((16, 3, 32, 32), np.float32)).shape == (16, 100)  # the remainder fits
    with pytest.raises(
        trt_runtime.EngineError, match=r"^batch size 257 is outside this runner's 1\.\.256$"
    ):
        runner.set_batch(np.zeros((257, 3, 32, 32), np.float32))
    fake_gpu.trt.profile = (8, 256)  # an engine built with a larger minimum
    with pytest.raises(
        trt_runtime.EngineError, match="^batch size 4 is outside the engine's optimization profile$"
    ):
        runner.set_batch(np.zeros((4, 3, 32, 32), np.float32))


def test_an_engine_failing_on_a_batch_is_a_failed_line_and_the_rest_still_runs(capsys):
    def engine(images: np.ndarray) -> np.ndarray:
        raise trt_runtime.EngineError(
            f"batch size {len(images)} is outside the engine's optimization profile"
        )

    report, labels = inference_bench.Report(), np.arange(10) % 3
    registry = [
        export_backends.Backend(
            "pytorch-fp32 (cpu)", lambda x: np.eye(3)[labels[: len(x)]], reference=True
        ),
        export_backends.Backend("tensorrt-fp16", engine, tolerance=0.5),
    ]
    rows = trt_export.check_accuracy(registry, "fp16", np.zeros((10, 1)), labels, 4, report)
    assert [row["backend"] for row in rows] == ["pytorch-fp32 (cpu)"]
    rows = inference_bench.benchmark(
        {"tensorrt-fp16": lambda x: engine(x)}, np.zeros((10, 1)), [1], 0, 0, 1, report
    )
    assert rows == [] and len(report.failures) == 2
    assert report.failures[0] == (
        "tensorrt-fp16 on the test images: batch size 4 is outside the engine's optimization "
        "profile"
    )
    assert all(
        line.startswith("FAILED: ")
        for line in capsys.readouterr().out.splitlines()
        if "tensorrt" in line
    )


def test_cuda_graph_is_captured_and_replayed_with_cuda_python(fake_gpu, tmp_path):
    runner, cudart = trt_runtime.TrtRunner(tmp_path / "m.engine", max_batch_size=8), fake_gpu.cudart
    runner.set_batch(np.zeros((8, 3, 32, 32), np.float32))
    runner.capture_graph()
    begin, end, instantiate = cudart.calls
    assert begin == ("cudaStreamBeginCapture", 77, "global") and end == ("cudaStreamEndCapture", 77)
    assert instantiate == ("cudaGraphInstantiate", "graph2", 0)
    assert runner.step(use_graph=True) == pytest.approx(0.25e-3)
    assert cudart.calls[-1] == ("cudaGraphLaunch", "exec-of-graph2", 77)
    runner.capture_graph()  # a recapture destroys the first graph and its instantiation
    assert len(cudart.live) == 2 and not cudart.live & {"graph2", "exec-of-graph2"}
    # a new shape: the graph no longer matches
    runner.set_batch(np.zeros((4, 3, 32, 32), np.float32))
    assert cudart.live == set() and runner.graph_exec is None
    with pytest.raises(trt_runtime.EngineError, match="no CUDA graph captured at batch size 4"):
        runner.step(use_graph=True)


@pytest.mark.parametrize("during_capture", [RuntimeError("enqueue raised"), False])
def test_a_failure_during_capture_ends_the_capture(fake_gpu, tmp_path, during_capture):
    runner, cudart = trt_runtime.TrtRunner(tmp_path / "m.engine", max_batch_size=8), fake_gpu.cudart
    runner.set_batch(np.zeros((8, 3, 32, 32), np.float32))
    fake_gpu.trt.executes = [True, during_capture]  # the warm-up enqueue, then the captured one
    with pytest.raises((RuntimeError, trt_runtime.EngineError)):
        runner.capture_graph()
    # the stream is usable again; nothing leaked
    assert cudart.capturing == set() and cudart.live == set()
    assert runner.graph is None and runner.graph_exec is None


def test_a_cuda_error_is_an_engine_error_naming_it(fake_gpu, tmp_path):
    runner, cudart = trt_runtime.TrtRunner(tmp_path / "m.engine", max_batch_size=8), fake_gpu.cudart
    runner.set_batch(np.zeros((8, 3, 32, 32), np.float32))
    cudart.fail["cudaStreamEndCapture"] = 901
    with pytest.raises(
        trt_runtime.EngineError, match="^cudaStreamEndCapture failed: cudaErrorStreamCaptureInvalid"
    ):
        runner.capture_graph()
    assert cudart.capturing == set()


@pytest.fixture()
def fake_modelopt(monkeypatch) -> types.SimpleNamespace:
    """A stand-in `modelopt` whose onnx.quantization.quantize records its keyword arguments."""
    calls: list[dict] = []
    modules = {
        name: types.ModuleType(name)
        for name in ("modelopt", "modelopt.onnx", "modelopt.onnx.quantization")
    }
    modules["modelopt"].__version__ = "0.42.0"
    modules["modelopt"].onnx, modules["modelopt.onnx"].quantization = (
        modules["modelopt.onnx"],
        modules["modelopt.onnx.quantization"],
    )
    modules["modelopt.onnx.quantization"].quantize = lambda **kwargs: calls.append(kwargs)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return types.SimpleNamespace(
        calls=calls, package=modules["modelopt"], module=modules["modelopt.onnx.quantization"]
    )


def test_int8_calibration_gives_modelopt_batches_of_distinct_images(fake_modelopt, tmp_path):
    images = np.random.default_rng(0).normal(size=(512, 3, 32, 32)).astype(np.float32)
    trt_runtime.quantize_int8(tmp_path / "m.onnx", images, tmp_path / "q.onnx", "images")
    (kwargs,) = fake_modelopt.calls
    # 8 steps of 64, not 512 steps of a batch read as 1
    assert kwargs["calibration_shapes"] == "images:64x3x32x32"
    assert np.array_equal(kwargs["calibration_data"]["images"], images)
    assert kwargs["quantize_mode"] == "int8" and kwargs["high_precision_dtype"] == "fp16"
    assert kwargs["onnx_path"] == str(tmp_path / "m.onnx") and kwargs["output_path"] == str(
        tmp_path / "q.onnx"
    )
    # fewer: one step
    assert trt_runtime.calibration_shapes("images", images[:10]) == "images:10x3x32x32"


def test_a_modelopt_failure_is_one_engine_error_line(fake_modelopt, tmp_path):
    def broken(**kwargs):
        raise AssertionError("Calibration data has only one tensor.\nmore detail")

    fake_modelopt.module.quantize = broken
    with pytest.raises(trt_runtime.EngineError) as error:
        trt_runtime.quantize_int8(
            tmp_path / "m.onnx", np.zeros((4, 3, 32, 32)), tmp_path / "q.onnx", "images"
        )
    assert str(error.value) == (
        f"ModelOpt could not quantize {tmp_path / 'm.onnx'} to int8 (AssertionError: "
        "Calibration data has only one tensor.)"
    )


def test_modelopt_before_0_42_is_refused_with_the_reason(fake_modelopt):
    assert trt_runtime.why_no_modelopt() == ""
    fake_modelopt.package.__version__ = "0.41.0"
    assert (
        "calibrates every step on the same images (fixed in 0.42)" in trt_runtime.why_no_modelopt()
    )


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_agrees_with_onnx_runtime(cli_run, data_dir, tmp_path, precision):
    # strongly typed
    onnx_path = cli_run["out"] / ("model_fp16.onnx" if precision == "fp16" else "model.onnx")
    info = trt_runtime.build_engine(
        onnx_path,
        tmp_path / "m.engine",
        precision,
        [1, 16],
        torch.cuda.get_device_name(),
        tmp_path / "timing.cache",
    )
    assert json.loads((tmp_path / "m.engine.json").read_text()) == info
    assert info["profile"]["min"] == [1, 3, 32, 32] and info["profile"]["max"] == [16, 3, 32, 32]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    runner = trt_runtime.TrtRunner(tmp_path / "m.engine", max_batch_size=16)
    images, _ = normalized_test_images(data_dir, 16)
    expected = export_backends.ort_session(cli_run["out"] / "model.onnx").run(
        ["logits"], {"images": images}
    )[0]
    for batch_size in (1, 16):
        got = runner(images[:batch_size])
        assert got.shape == (batch_size, 100)
        # TF32 / fp16
        assert np.abs(got - expected[:batch_size]).max() <= (2e-2 if precision == "fp32" else 1e-1)
    assert runner.step() > 0  # GPU compute seconds from CUDA events
    runner.capture_graph()
    runner.host_output[:] = 0
    assert runner.step(use_graph=True) > 0
    assert np.abs(runner.host_output[:16] - expected).max() <= (
        2e-2 if precision == "fp32" else 1e-1
    )


@needs_tensorrt
def test_cli_on_gpu_builds_engine_and_times_it_with_cuda_events(trained_run, data_dir, tmp_path):
    command = [
        sys.executable,
        str(ROOT / "trt_export.py"),
        "--checkpoint",
        str(trained_run),
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "export"),
        "--plot",
        str(tmp_path / "plot.png"),
        "--device",
        "cuda",
        "--precision",
        "fp16",
        "--batch-sizes",
        "1,8",
        "--warmup-seconds",
        "0.05",
        "--min-seconds",
        "0.1",
        "--cuda-graph",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "benchmark.json").read_text())
    engine_rows = [row for row in report["benchmark"] if row["backend"].startswith("tensorrt-fp16")]
    assert {row["backend"] for row in engine_rows} == {"tensorrt-fp16", "tensorrt-fp16-cudagraph"}
    assert all(row["gpu_compute"]["p50_ms"] <= row["end_to_end"]["p50_ms"] for row in engine_rows)
    assert report["engine"]["precision"] == "fp16" and report["engine"]["gpu"]
    assert (tmp_path / "export" / "model_fp16.engine.json").is_file()
