"""trt_export.py and trt_runtime.py: ONNX export and parity, dynamic batch, timing statistics, checkpoint errors,
the CLI end to end on a checkpoint the trainer wrote, and the TensorRT path (marked `tensorrt`, skipped without a GPU,
TensorRT and pycuda, with the reason)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_CONFIG, ROOT

import part_2_cifar
import trt_export
import trt_runtime

TRT_MISSING = "; ".join(why.split(";")[0] for why in ("" if torch.cuda.is_available() else "no CUDA GPU",
                                                      trt_runtime.why_no_tensorrt(), trt_runtime.why_no_pycuda())
                        if why)


def needs_tensorrt(test):
    """Marked `gpu` and `tensorrt`; skipped, with the reason, unless a CUDA GPU, TensorRT and pycuda are all here."""
    skip = pytest.mark.skipif(bool(TRT_MISSING), reason=f"needs TensorRT: {TRT_MISSING}")
    return pytest.mark.gpu(pytest.mark.tensorrt(skip(test)))


@pytest.fixture(scope="session")
def data_dir(learnable_data_dir) -> Path:
    """10 separable classes: a model that has learned gives decisive logits and a meaningful accuracy table."""
    return learnable_data_dir


@pytest.fixture(scope="session")
def trained_run(data_dir, tmp_path_factory) -> Path:
    """A run folder with best.pt and summary.json written by the trainer's own train() (2 epochs, small filters)."""
    config = part_2_cifar.validate_config({**part_2_cifar.DEFAULTS, **FAST_CONFIG, "val_size": 200})
    run_dir = tmp_path_factory.mktemp("trt_runs") / "tiny-run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy 2-core machine one thread is several times faster than two contending
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
    """One real `python trt_export.py --checkpoint best ...` on the CPU with a short benchmark; tests read its files."""
    work = tmp_path_factory.mktemp("trt_cli")
    command = [sys.executable, str(ROOT / "trt_export.py"), "--checkpoint", "best",
               "--runs-dir", str(trained_run.parent), "--data-dir", str(data_dir),
               "--out", str(work / "export"), "--plot", str(work / "plot.png"),
               "--device", "cpu", "--batch-sizes", "1,4", "--warmup-seconds", "0", "--min-seconds", "0",
               "--min-iterations", "3"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # see trained_run; the benchmark numbers are not what is tested
    result = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=600)
    return {"result": result, "out": work / "export", "plot": work / "plot.png"}


def normalized_test_images(data_dir: Path, count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    _, _, images, labels = part_2_cifar.load_cifar100(data_dir, download=False)
    images, labels = images[:count], labels[:count]
    return part_2_cifar.normalize(torch.from_numpy(images)).contiguous().numpy(), labels


# ----------------------------------------------------------------------------------------------------------------------
# The CLI end to end, without TensorRT


def test_cli_exports_checks_benchmarks_and_says_what_it_skipped(cli_run):
    result, out = cli_run["result"], cli_run["out"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "| backend | batch | iterations | images/s | mean ms | p50 ms | p90 ms | p99 ms |" in result.stdout
    assert "ONNX fp32 vs PyTorch (ONNX Runtime CPU" in result.stdout
    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped: ")]
    assert any(line.startswith("skipped: TensorRT fp16 engine") and "no CUDA GPU" in line for line in skipped)
    assert any(line.startswith("skipped: PyTorch fp16/bf16") for line in skipped)
    assert sorted(path.name for path in out.iterdir()) == ["benchmark.json", "model.onnx", "model_fp16.onnx"]
    assert cli_run["plot"].stat().st_size > 10_000


def test_cli_benchmark_json_has_every_backend_and_batch_size(cli_run):
    report = json.loads((cli_run["out"] / "benchmark.json").read_text())
    rows = {(row["backend"], row["batch_size"]): row for row in report["benchmark"]}
    assert set(rows) == {(backend, size) for backend in ("pytorch-fp32 (cpu)", "onnxruntime-fp32 (cpu)")
                         for size in (1, 4)}
    for row in rows.values():
        stats = row["end_to_end"]
        assert stats["iterations"] >= 3
        assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert stats["images_per_second"] > 0
        assert row["gpu_compute"] is None  # no CUDA events on the CPU
    assert report["failures"] == [] and len(report["skipped"]) == 2
    assert report["onnx_parity"]["fp32"]["passed"] and report["onnx_parity"]["fp16"]["passed"]
    assert [row["backend"] for row in report["accuracy"]][0] == "pytorch-fp32 (cpu)"


# ----------------------------------------------------------------------------------------------------------------------
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
    got = trt_export.ort_session(cli_run["out"] / "model.onnx").run(["logits"], {"images": images})[0]
    assert np.abs(got - expected).max() <= 1e-4
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_onnx_batch_dimension_is_dynamic(cli_run, trained_run, data_dir):
    model, _ = trt_export.load_model(trained_run / "best.pt")
    session = trt_export.ort_session(cli_run["out"] / "model.onnx")
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
    result = trt_export.parity(trt_export.torch_predictor(model, torch.device("cpu"), None),
                               trt_export.ort_predictor(trt_export.ort_session(path)), images)
    assert result["max_abs_diff"] > 0  # it really is not the fp32 graph
    assert trt_export.check_parity(result, "fp16")


def test_parity_check_rejects_a_model_that_differs_by_more_than_1e4():
    images = np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32)
    logits = np.random.default_rng(1).normal(size=(8, 100)).astype(np.float32)
    same = trt_export.parity(lambda x: logits[:len(x)], lambda x: logits[:len(x)] + 5e-5, images)
    off = trt_export.parity(lambda x: logits[:len(x)], lambda x: logits[:len(x)] + 5e-4, images)
    assert trt_export.check_parity(same, "fp32") and not trt_export.check_parity(off, "fp32")


# ----------------------------------------------------------------------------------------------------------------------
# Timing and accuracy


class FakeClock:
    """A clock that only moves when a fake step advances it."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_latency_stats_are_nearest_rank_percentiles_and_images_per_second():
    ms = np.random.default_rng(0).permutation(np.arange(1, 101))  # 1..100 ms in random order
    stats = trt_export.latency_stats([m / 1000 for m in ms], batch_size=32)
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

    end_to_end, gpu = trt_export.time_iterations(step, warmup_seconds=0.05, min_seconds=0.1, min_iterations=3,
                                                 clock=clock)
    assert len(calls) == 5 + 10  # 50 ms of warm-up, then 100 ms of timed iterations
    assert end_to_end == pytest.approx([0.010] * 10) and gpu == pytest.approx([0.004] * 10)
    end_to_end, gpu = trt_export.time_iterations(lambda: None, warmup_seconds=0, min_seconds=0, min_iterations=7,
                                                 clock=FakeClock())
    assert len(end_to_end) == 7 and gpu == []  # a step that reports no GPU time (the CPU backends)


def test_engine_that_trails_pytorch_beyond_the_tolerance_fails():
    labels = np.arange(1000) % 100
    perfect = np.eye(100, dtype=np.float32)[labels]
    one_percent_wrong = perfect.copy()
    one_percent_wrong[:10] = np.roll(one_percent_wrong[:10], 1, axis=1)  # 10 of 1000 images: 1 point lower
    rows = trt_export.accuracy_table({"pytorch-fp32 (cuda)": perfect, "tensorrt-fp16": one_percent_wrong},
                                     labels, reference="pytorch-fp32 (cuda)")
    assert rows[1]["points_vs_reference"] == pytest.approx(-1.0)
    assert rows[1]["top1_agreement_with_reference"] == pytest.approx(99.0)
    assert len(trt_export.accuracy_failures(rows, "fp16")) == 1  # 0.5 points allowed
    assert trt_export.accuracy_failures(rows, "int8") == []  # 1.5 points allowed


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, no traceback


def test_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "trt_export.py"), "--checkpoint", str(tmp_path / "nope.pt")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: checkpoint {tmp_path / 'nope.pt'} does not exist"


def test_truncated_checkpoint_is_one_line_and_exit_2(trained_run, tmp_path, capsys):
    data = (trained_run / "best.pt").read_bytes()
    (tmp_path / "best.pt").write_bytes(data[:len(data) // 2])
    assert trt_export.main(["--checkpoint", str(tmp_path / "best.pt")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "truncated or corrupt" in line


def test_foreign_checkpoints_are_one_line_and_exit_2(trained_run, tmp_path, capsys):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")  # somebody else's file
    checkpoint = torch.load(trained_run / "best.pt", weights_only=True)
    checkpoint["config"] = {**checkpoint["config"], "num_filters_3": 64}  # weights that do not fit their config
    torch.save(checkpoint, tmp_path / "mismatch.pt")
    for name, expected in (("other.pt", "is not a part_2_cifar checkpoint: it lacks model, config"),
                           ("mismatch.pt", "does not fit the SimpleCNN its config describes")):
        assert trt_export.main(["--checkpoint", str(tmp_path / name)]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert expected in line


def test_best_picks_the_run_with_the_highest_best_val_accuracy(tmp_path, capsys):
    runs = {"a": {"best_val_accuracy": 40.0}, "b": {"best_val_accuracy": 55.5}, "c": {"best_val_accuracy": 90.0},
            "d": {"best_val_accuracy": "high"}, "e": None}
    for name, summary in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text("{not json" if summary is None else json.dumps(summary))
        if name != "c":  # c scored best but has no best.pt to export
            (tmp_path / name / "best.pt").write_bytes(b"")
    assert trt_export.find_best_run(tmp_path) == tmp_path / "b" / "best.pt"
    assert trt_export.resolve_checkpoint(str(tmp_path / "a"), tmp_path) == tmp_path / "a" / "best.pt"  # a run folder
    assert "e/summary.json is unreadable" in capsys.readouterr().out


def test_best_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert trt_export.main(["--checkpoint", "best", "--runs-dir", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: no run in {tmp_path} has a summary.json with best_val_accuracy")


# ----------------------------------------------------------------------------------------------------------------------
# TensorRT


def test_stub_only_or_absent_tensorrt_is_reported_not_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # what tensorrt-stubs leaves behind
    assert "only type stubs" in trt_runtime.why_no_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed: import raises ImportError
    assert "cannot be imported" in trt_runtime.why_no_tensorrt()


@needs_tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engine_agrees_with_onnx_runtime(cli_run, data_dir, tmp_path, precision):
    onnx_path = cli_run["out"] / ("model_fp16.onnx" if precision == "fp16" and not trt_runtime.uses_precision_flags()
                                  else "model.onnx")
    info = trt_runtime.build_engine(onnx_path, tmp_path / "m.engine", precision, [1, 16], torch.cuda.get_device_name(),
                                    tmp_path / "timing.cache")
    assert json.loads((tmp_path / "m.engine.json").read_text()) == info
    assert info["profile"]["min"] == [1, 3, 32, 32] and info["profile"]["max"] == [16, 3, 32, 32]
    assert (tmp_path / "timing.cache").stat().st_size > 0
    runner = trt_runtime.TrtRunner(tmp_path / "m.engine", max_batch_size=16)
    images, _ = normalized_test_images(data_dir, 16)
    expected = trt_export.ort_session(cli_run["out"] / "model.onnx").run(["logits"], {"images": images})[0]
    for batch_size in (1, 16):
        got = runner(images[:batch_size])
        assert got.shape == (batch_size, 100)
        assert np.abs(got - expected[:batch_size]).max() <= (2e-2 if precision == "fp32" else 1e-1)  # TF32 / fp16
    assert runner.step() > 0  # GPU compute seconds from CUDA events
    runner.capture_graph()
    runner.host_output[:] = 0
    assert runner.step(use_graph=True) > 0
    assert np.abs(runner.host_output[:16] - expected).max() <= (2e-2 if precision == "fp32" else 1e-1)


@needs_tensorrt
def test_cli_on_gpu_builds_engine_and_times_it_with_cuda_events(trained_run, data_dir, tmp_path):
    command = [sys.executable, str(ROOT / "trt_export.py"), "--checkpoint", str(trained_run), "--data-dir",
               str(data_dir), "--out", str(tmp_path / "export"), "--plot", str(tmp_path / "plot.png"),
               "--device", "cuda", "--precision", "fp16", "--batch-sizes", "1,8", "--warmup-seconds", "0.05",
               "--min-seconds", "0.1", "--cuda-graph"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "export" / "benchmark.json").read_text())
    engine_rows = [row for row in report["benchmark"] if row["backend"].startswith("tensorrt-fp16")]
    assert {row["backend"] for row in engine_rows} == {"tensorrt-fp16", "tensorrt-fp16-cudagraph"}
    assert all(row["gpu_compute"]["p50_ms"] <= row["end_to_end"]["p50_ms"] for row in engine_rows)
    assert report["engine"]["precision"] == "fp16" and report["engine"]["gpu"]
    assert (tmp_path / "export" / "model_fp16.engine.json").is_file()
