"""Export the best SimpleCNN checkpoint to ONNX and a TensorRT engine, check both against PyTorch, and time them.

    python trt_export.py --checkpoint best                            # select_model.py's choice in ./runs, fp16
    python trt_export.py --checkpoint best --within 1.0               # cheapest on its front within 1 point
    python trt_export.py --checkpoint runs/<run-id>/best.pt --precision int8 --batch-sizes 1,32,256,1024
    python trt_export.py --checkpoint best --batch-sizes 1,64 --warmup-seconds 0.05 --min-seconds 0.2   # quick look

Steps: checkpoint -> SimpleCNN (eval mode, built from the checkpoint's own config) -> ONNX with a dynamic batch
dimension and the weights inside, checked by onnx.checker -> ONNX Runtime on the CPU must match PyTorch (max |logit
difference| <= 1e-4, same top-1, at two batch sizes) -> TensorRT engine (strongly typed, batch 1..max) and a JSON
beside it -> pycuda runner (cuda-python for the CUDA-graph replay) -> top-1 accuracy on the test images, PyTorch
beside each exported model -> benchmark of every backend present.
Without a GPU, TensorRT or pycuda it does all the rest and prints one `skipped:` line per part it could not run.
Exit status: 0 all that ran passed; 1 a check that ran failed (parity, accuracy tolerance, engine build); 2 bad input.

Benchmark method, as trtexec's: warm up for --warmup-seconds, then iterate for at least --min-seconds and
--min-iterations on a fixed batch of test images. End-to-end time comes from the host clock around copy in +
inference + copy out + synchronisation; GPU compute time from CUDA events around the inference call alone.
Throughput is images / end-to-end time; latency is reported as mean, p50, p90 and p99 of the iterations.

Files: <out>/model.onnx (+ model_fp16.onnx, model_int8_qdq.onnx when needed), <out>/model_<precision>.engine and
its .json, <out>/timing.cache, <out>/benchmark.json; the plot goes to --plot (default images/inference_benchmark.png).
<out> defaults to <run folder>/export, inside the git-ignored runs/.

Last measured result (2026-11-27, images/inference_benchmark.png): default SimpleCNN 64/128/256, CPU only, 2 cores
shared with other jobs (load average ~6): ONNX Runtime 575-604 images/s at batch 256-1024 against 248-284 for
PyTorch eager fp32; batch 1 p50 2.3 ms against 11 ms. fp32 ONNX max |logit diff| 9e-8, fp16 ONNX 1e-4. No GPU, so
no TensorRT or CUDA numbers yet.

`best` is what select_model.py chose (runs/selection.json); with no selection.json, the single run with the highest
best_val_accuracy anywhere under --runs-dir, with a note that no new seeds confirmed it. The checkpoint exported is
always printed.

Sections, in order: settings, checkpoint and model, ONNX, backends, timing, accuracy and benchmark, reports, main.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import select_model
import trt_runtime
from part_2_cifar import (
    DATA_DIR_HELP,
    CheckpointError,
    ConfigError,
    DataError,
    OneLineErrorParser,
    autocast,
    checkpoint_config,
    device_name,
    load_checkpoint,
    load_cifar100,
    load_weights,
    model_from_config,
    normalize,
    pick_device,
    save_figure,
    unwritable,
    versions,
    write_json_atomic,
)

# ----------------------------------------------------------------------------------------------------------------------
# Settings

PRECISION = "fp16"  # default engine precision: tensor cores and half the memory traffic of fp32
BATCH_SIZES = (1, 32, 256, 1024)  # latency (1) to throughput (1024); the engine's profile spans min..max
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # ONNX and engine tensor names
IMAGE_SHAPE = (3, 32, 32)  # one normalized CIFAR image, NCHW
PARITY_IMAGES = 256  # test images compared logit by logit between PyTorch and ONNX Runtime
PARITY_MAX_ABS_DIFF = 1e-4  # fp32 ONNX vs PyTorch on the CPU: only summation order differs
# fp16 ONNX: max |diff| <= this x max |logit| (fp16 keeps ~3 significant digits). Its top-1 agreement is reported,
# not required: where two logits are closer than the rounding, either may win.
FP16_PARITY_RELATIVE = 1e-2
# Points of top-1 accuracy an engine may trail PyTorch fp32 before the run fails. fp32 is not bit-exact either:
# TensorRT allows TF32 in convolutions and matrix products by default.
ACCURACY_TOLERANCE = {"fp32": 0.2, "fp16": 0.5, "int8": 1.5}
CALIBRATION_IMAGES = 512  # training images ModelOpt calibrates int8 activation ranges on
WARMUP_SECONDS = 0.2  # trtexec's --warmUp default
MIN_SECONDS = 1.0  # trtexec runs --duration=3 s; 1 s keeps the CPU backends' run short (--min-seconds 3 for parity)
MIN_ITERATIONS = 10  # trtexec's --iterations default


# ----------------------------------------------------------------------------------------------------------------------
# Checkpoint and model


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def run_accuracy(run_dir: Path) -> float | None:
    """best_val_accuracy from the run's summary.json if the run also has a best.pt to export; else None (why noted)."""
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        print(f"note: {summary_path} is missing or unreadable; that run is not considered", flush=True)
        return None
    accuracy = summary.get("best_val_accuracy") if isinstance(summary, dict) else None
    return accuracy if _finite(accuracy) and (run_dir / "best.pt").is_file() else None


def find_best_run(runs_dir: Path) -> tuple[Path, float]:
    """The run folder at any depth under `runs_dir` (single runs, sweep trials in <study>/trial-NNNN, selection
    seeds) whose summary.json has the highest best_val_accuracy (ties: first by path), and that accuracy."""
    candidates = []
    for summary_path in sorted(Path(runs_dir).rglob("summary.json")):
        accuracy = run_accuracy(summary_path.parent)
        if accuracy is not None:
            candidates.append((accuracy, summary_path.parent))
    if not candidates:
        raise CheckpointError(f"no run in {runs_dir} has a summary.json with best_val_accuracy and a best.pt: "
                              "train one with part_2_cifar.py, or pass --checkpoint PATH")
    accuracy, run_dir = max(candidates, key=lambda c: c[0])
    return run_dir, accuracy


def find_selection(runs_dir: Path) -> Path | None:
    """RUNS_DIR/selection.json, else the one selection.json at any depth below; None if there is none."""
    if (runs_dir / "selection.json").is_file():
        return runs_dir / "selection.json"
    found = sorted(runs_dir.rglob("selection.json"))
    if len(found) > 1:
        raise CheckpointError(f"{len(found)} selection.json files under {runs_dir} ({', '.join(map(str, found))}): "
                              "pass --runs-dir the folder of the one to export")
    return found[0] if found else None


def read_selection(path: Path) -> dict:
    """select_model.py's selection.json, checked for what choosing a checkpoint reads; CheckpointError if not."""
    try:
        selection = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}): rerun select_model.py, "
                              "or pass --checkpoint PATH") from None
    not_selection = f"{path} is not a select_model.py selection"
    if not (isinstance(selection, dict) and isinstance(selection.get("configs"), list) and selection["configs"]
            and isinstance(selection.get("best"), str)):
        raise CheckpointError(f'{not_selection}: it needs {{"configs": [...], "best": "<run folder>"}}')
    for i, config in enumerate(selection["configs"]):
        if not (isinstance(config, dict) and _finite(config.get("val_accuracy_mean"))
                and _finite(config.get("flops_per_image")) and isinstance(config.get("pareto"), bool)
                and isinstance(config.get("runs"), list) and config["runs"]
                and all(isinstance(run, str) for run in config["runs"])):
            raise CheckpointError(f"{not_selection}: configs[{i}] needs numbers val_accuracy_mean and "
                                  "flops_per_image, pareto true/false and a list of run folders in runs")
    return selection


def cheapest_within(configs: list[dict], points: float) -> dict:
    """The config on the Pareto front with the lowest flops_per_image whose val_accuracy_mean is within `points` of
    the best mean (ties: the higher mean). The best config is on the front, so there is always one."""
    best_mean = max(config["val_accuracy_mean"] for config in configs)
    near = [c for c in configs if c["pareto"] and c["val_accuracy_mean"] >= best_mean - points]
    if not near:
        raise CheckpointError(f"no config on the Pareto front is within {points} points of the best mean "
                              f"{best_mean:.2f}: the selection marks none of its best configs pareto")
    return min(near, key=lambda c: (c["flops_per_image"], -c["val_accuracy_mean"]))


def resolve_checkpoint(spec: str, runs_dir: Path, within: float | None = None) -> Path:
    """`best`, a run folder or a checkpoint file -> the checkpoint file; for `best`, print how it was chosen.

    `best` takes what select_model.py chose (selection.json under `runs_dir`: its `best`, or with `within`, the
    cheapest config on the front within that many points of the best mean, at its best seed); without a selection,
    the single run with the highest best_val_accuracy at any depth under `runs_dir`.
    """
    if spec != "best":
        path = Path(spec)
        return path / "best.pt" if path.is_dir() else path
    selection_path = find_selection(runs_dir)
    if selection_path is None:
        if within is not None:
            raise CheckpointError(f"--within needs a selection.json under {runs_dir}: run select_model.py "
                                  f"{runs_dir} first")
        run_dir, accuracy = find_best_run(runs_dir)
        print(f"note: no selection.json under {runs_dir}: taking the single run with the highest "
              f"best_val_accuracy ({accuracy:.2f}), not confirmed by select_model.py with new seeds", flush=True)
        return run_dir / "best.pt"
    selection, root = read_selection(selection_path), selection_path.parent
    if within is None:
        print(f"chosen by select_model.py ({selection_path}): {selection['best']}", flush=True)
        return root / selection["best"] / "best.pt"
    config = cheapest_within(selection["configs"], within)
    best_mean = max(c["val_accuracy_mean"] for c in selection["configs"])
    seed_dir = select_model.best_seed(config, root)
    if seed_dir is None:
        raise CheckpointError(f"none of the runs of the chosen config ({', '.join(config['runs'])}) under {root} has "
                              "a summary.json with best_val_accuracy and a best.pt")
    print(f"--within {within:g} ({selection_path}): the cheapest config on the front within {within:g} points of "
          f"the best mean val_accuracy {best_mean:.2f} has {config['val_accuracy_mean']:.2f} at "
          f"{config['flops_per_image']:,.0f} FLOPs per image; its best seed is {seed_dir}", flush=True)
    return seed_dir / "best.pt"


def load_model(path: Path) -> tuple[nn.Module, dict]:
    """SimpleCNN rebuilt from the checkpoint's stored config, weights loaded, in eval mode; and the checkpoint, its
    config completed. CheckpointError, one line: unreadable, foreign (names and shapes that do not fit; the prefixes
    of PyTorch's wrappers are removed first), a bad config, or NaN/inf weights (a diverged run's)."""
    checkpoint = load_checkpoint(path)
    config = checkpoint_config(checkpoint, path)
    model = model_from_config(config)
    load_weights(model, checkpoint["model"], path)
    return model.eval(), {**checkpoint, "config": config}


# ----------------------------------------------------------------------------------------------------------------------
# ONNX


class HalfPrecision(nn.Module):
    """The model in fp16 between fp32 input and output: an fp16 ONNX for TensorRT 11's strongly typed networks,
    with the same fp32 interface as the fp32 ONNX, so every runner feeds both alike."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.half()).float()


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of `model` on `device` in channels_last, as the trainer runs it; the caller's model stays as it was."""
    return copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)


def export_onnx(model: nn.Module, path: Path) -> None:
    """ONNX of `model` (in eval mode) with input `images` (batch, 3, 32, 32), output `logits` (batch, classes),
    weights inside.

    The dynamo exporter (torch.export), torch's default since 2.9; the TorchScript exporter is deprecated. Here it
    takes a few seconds more, but it is the maintained path and `dynamic_shapes` gives a symbolic batch dimension.
    """
    if model.training:
        raise ValueError("export_onnx needs a model in eval mode: dropout and batch statistics would be exported")
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, *IMAGE_SHAPE)  # batch 2: an example batch of 1 would be specialised away
    batch = torch.export.Dim("batch")
    torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: batch},), external_data=False, dynamo=True, verbose=False)
    import onnx

    onnx.checker.check_model(str(path), full_check=True)  # structure, types and shape inference


def ort_session(path: Path):  # -> onnxruntime.InferenceSession on the CPU, the provider every install has
    import onnxruntime as ort  # type: ignore[import-untyped]

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def parity(reference: Callable[[np.ndarray], np.ndarray], candidate: Callable[[np.ndarray], np.ndarray],
           images: np.ndarray) -> dict:
    """Max |logit difference| and top-1 agreement (%) of two predictors, over `images` as one batch and as batch 1."""
    diffs, agree, largest = [], [], 0.0
    for batch in (images, images[:1]):  # two batch sizes through one file: the batch dimension must be dynamic
        expected, got = reference(batch), candidate(batch)
        if got.shape != expected.shape:
            raise ValueError(f"logits of shape {got.shape} for a batch of {len(batch)}; expected {expected.shape}")
        diffs.append(float(np.abs(got - expected).max()))
        agree.extend(got.argmax(1) == expected.argmax(1))
        largest = max(largest, float(np.abs(expected).max()))
    return {"images": len(images), "batch_sizes": [len(images), 1], "max_abs_diff": max(diffs),
            "max_abs_logit": largest, "top1_agreement": 100 * float(np.mean(agree))}


def check_parity(result: dict, precision: str) -> bool:
    if precision == "fp32":
        return result["max_abs_diff"] <= PARITY_MAX_ABS_DIFF and result["top1_agreement"] == 100
    return result["max_abs_diff"] <= FP16_PARITY_RELATIVE * max(1.0, result["max_abs_logit"])


# ----------------------------------------------------------------------------------------------------------------------
# Backends: a predictor maps float32 (B, 3, 32, 32) to float32 logits (B, classes); a step runs one timed iteration.

Step = Callable[[], "float | None"]  # returns GPU compute seconds when it measures them, else None


def torch_predictor(model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None):
    """`model` is already on `device` (see on_device)."""

    @torch.inference_mode()
    def predict(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device.type, amp_dtype):
            return model(x).float().cpu().numpy()

    return predict


def torch_step(model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, images: np.ndarray) -> Step:
    """One iteration: (GPU: pinned host -> device) inference (GPU: -> host, which waits for the GPU). `model` is
    already on `device` (see on_device)."""
    if device.type != "cuda":
        x = torch.from_numpy(images).contiguous(memory_format=torch.channels_last)

        @torch.inference_mode()
        def cpu_step() -> None:
            with autocast(device.type, amp_dtype):
                model(x)

        return cpu_step

    host = torch.from_numpy(images).pin_memory()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    @torch.inference_mode()
    def cuda_step() -> float:
        x = host.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        start.record()
        with autocast(device.type, amp_dtype):
            logits = model(x)
        end.record()
        logits.float().cpu()  # a copy to pageable memory waits for the stream, so `end` has happened
        return start.elapsed_time(end) / 1000

    return cuda_step


def ort_predictor(session) -> Callable[[np.ndarray], np.ndarray]:
    return lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images})[0].astype(np.float32)


def ort_step(session, images: np.ndarray) -> Step:
    def step() -> None:
        session.run([OUTPUT_NAME], {INPUT_NAME: images})

    return step


def trt_step(runner: trt_runtime.TrtRunner, images: np.ndarray, use_graph: bool) -> Step:
    runner.set_batch(images)
    if use_graph:
        runner.capture_graph()
    return lambda: runner.step(use_graph)


# ----------------------------------------------------------------------------------------------------------------------
# Timing


def time_iterations(step: Step, warmup_seconds: float, min_seconds: float, min_iterations: int,
                    clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """Warm up for `warmup_seconds` (at least one call), then call `step` until both `min_seconds` have passed and
    `min_iterations` were made. Returns (end-to-end seconds of each call by `clock`, the seconds each call reported)."""
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
    """Latency mean and percentiles in ms, and throughput in images/s, of per-iteration times.

    Percentiles are nearest-rank (the smallest time with at least p% of iterations at or below it), so each is a
    time that some iteration took.
    """
    if not seconds:
        raise ValueError("no iterations to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1000
    p50, p90, p99 = np.percentile(ms, [50, 90, 99], method="inverted_cdf")
    return {"iterations": int(ms.size), "mean_ms": float(ms.mean()), "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99), "min_ms": float(ms.min()), "max_ms": float(ms.max()),
            "images_per_second": float(batch_size * ms.size / (ms.sum() / 1000))}


# ----------------------------------------------------------------------------------------------------------------------
# Accuracy and benchmark


class Report:
    """What ran, what was skipped and why, and what failed; the exit status comes from `failures`."""

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self.failures: list[str] = []

    def skip(self, part: str, why: str) -> None:
        self.skipped.append(f"{part}: {why}")
        print(f"skipped: {part}: {why}", flush=True)

    def fail(self, message: str) -> None:
        self.failures.append(message)
        print(f"FAILED: {message}", flush=True)


def predict_all(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits for normalized images (N, 3, 32, 32) in chunks of `batch_size`; the last chunk holds the remainder."""
    return np.concatenate([predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def accuracy_table(logits: dict[str, np.ndarray], labels: np.ndarray, reference: str) -> list[dict]:
    """Top-1 of each backend, and its difference in points and its top-1 agreement with the reference backend."""
    reference_top1 = logits[reference].argmax(1)
    base = 100 * float(np.mean(reference_top1 == labels))
    rows = []
    for name, values in logits.items():
        top1 = values.argmax(1)
        accuracy = 100 * float(np.mean(top1 == labels))
        rows.append({"backend": name, "top1_accuracy": accuracy, "points_vs_reference": accuracy - base,
                     "top1_agreement_with_reference": 100 * float(np.mean(top1 == reference_top1))})
    return rows


def accuracy_failures(rows: list[dict], precision: str) -> list[str]:
    """One message per TensorRT engine that trails the reference by more than ACCURACY_TOLERANCE[precision]."""
    allowed = ACCURACY_TOLERANCE[precision]
    return [f"{row['backend']} top-1 {row['top1_accuracy']:.2f}% trails PyTorch by {-row['points_vs_reference']:.2f} "
            f"points; allowed {allowed} for {precision}"
            for row in rows if row["backend"].startswith("tensorrt-") and row["points_vs_reference"] < -allowed]


def batch_of(images: np.ndarray, batch_size: int) -> np.ndarray:
    """The first `batch_size` normalized test images, repeated from the start if there are fewer."""
    return np.ascontiguousarray(images[np.arange(batch_size) % len(images)])


def benchmark(steps: dict[str, Callable[[np.ndarray], Step]], images: np.ndarray, batch_sizes: list[int],
              warmup_seconds: float, min_seconds: float, min_iterations: int, report: Report) -> list[dict]:
    """One row per backend and batch size: end-to-end statistics, and GPU compute statistics where measured.
    An engine that fails at one batch size is reported and the benchmark goes on."""
    rows = []
    for name, make_step in steps.items():
        for batch_size in batch_sizes:
            try:
                step = make_step(batch_of(images, batch_size))
                end_to_end, gpu = time_iterations(step, warmup_seconds, min_seconds, min_iterations)
            except trt_runtime.EngineError as e:
                report.fail(f"{name} batch {batch_size}: {e}")
                continue
            stats = latency_stats(end_to_end, batch_size)
            rows.append({"backend": name, "batch_size": batch_size, "end_to_end": stats,
                         "gpu_compute": latency_stats(gpu, batch_size) if gpu else None})
            print(f"  {name} batch {batch_size}: {stats['images_per_second']:,.0f} img/s", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------------------------------
# Reports


def markdown_benchmark(rows: list[dict]) -> str:
    lines = ["| backend | batch | iterations | images/s | mean ms | p50 ms | p90 ms | p99 ms | GPU compute p50 ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        e2e, gpu = row["end_to_end"], row["gpu_compute"]
        gpu_p50 = f"{gpu['p50_ms']:.3f}" if gpu else "-"
        lines.append(f"| {row['backend']} | {row['batch_size']} | {e2e['iterations']} | "
                     f"{e2e['images_per_second']:,.0f} | {e2e['mean_ms']:.3f} | {e2e['p50_ms']:.3f} | "
                     f"{e2e['p90_ms']:.3f} | {e2e['p99_ms']:.3f} | {gpu_p50} |")
    return "\n".join(lines)


def markdown_accuracy(rows: list[dict], images: int) -> str:
    lines = [f"| backend | top-1 % ({images} test images) | points vs PyTorch | same top-1 as PyTorch % |",
             "|---|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row['backend']} | {row['top1_accuracy']:.2f} | {row['points_vs_reference']:+.2f} | "
                     f"{row['top1_agreement_with_reference']:.2f} |")
    return "\n".join(lines)


def plot_benchmark(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rate, ax_latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    for backend in dict.fromkeys(row["backend"] for row in rows):
        mine = [row for row in rows if row["backend"] == backend]
        sizes = [row["batch_size"] for row in mine]
        ax_rate.plot(sizes, [row["end_to_end"]["images_per_second"] for row in mine], marker="o", label=backend)
        ax_latency.plot(sizes, [row["end_to_end"]["p50_ms"] for row in mine], marker="o", label=backend)
    ax_rate.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s (end to end)", title="throughput")
    ax_latency.set(xscale="log", yscale="log", xlabel="batch size", ylabel="p50 latency per batch (ms)",
                   title="latency")
    sizes = sorted({row["batch_size"] for row in rows})
    for ax in (ax_rate, ax_latency):
        ax.set_xticks(sizes, [str(size) for size in sizes])
        ax.tick_params(axis="x", which="minor", bottom=False, labelbottom=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------------------
# Main


def batch_sizes_arg(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",")})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: use positive integers separated by commas, "
                                         "e.g. 1,32,256")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(__doc__)
    parser.add_argument("--checkpoint", required=True, metavar="PATH|best",
                        help="a best.pt, a run folder, or `best`: what select_model.py chose (selection.json under "
                             "--runs-dir), else the run at any depth in --runs-dir with the highest best_val_accuracy")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where `best` looks (default ./runs)")
    parser.add_argument("--within", type=float, metavar="POINTS",
                        help="with `best`: the cheapest config (FLOPs) on selection.json's Pareto front whose mean "
                             "val_accuracy is within POINTS of the best mean, at its best seed")
    parser.add_argument("--out", type=Path, help="output folder (default <run folder>/export)")
    parser.add_argument("--precision", choices=trt_runtime.PRECISIONS, default=PRECISION,
                        help=f"TensorRT engine precision (default {PRECISION})")
    parser.add_argument("--batch-sizes", type=batch_sizes_arg, default=list(BATCH_SIZES), metavar="N,N,...",
                        help=f"benchmarked batch sizes; the engine serves min..max (default "
                             f"{','.join(map(str, BATCH_SIZES))})")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help=DATA_DIR_HELP)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="where PyTorch runs")
    parser.add_argument("--accuracy-images", type=int, default=0, help="test images scored (default 0: all)")
    parser.add_argument("--warmup-seconds", type=float, default=WARMUP_SECONDS,
                        help=f"untimed iterations first, per backend and batch size (default {WARMUP_SECONDS})")
    parser.add_argument("--min-seconds", type=float, default=MIN_SECONDS,
                        help=f"timed seconds per backend and batch size, at least (default {MIN_SECONDS})")
    parser.add_argument("--min-iterations", type=int, default=MIN_ITERATIONS,
                        help=f"timed iterations per backend and batch size, at least (default {MIN_ITERATIONS})")
    parser.add_argument("--cuda-graph", action="store_true", help="also time the engine replayed as a CUDA graph")
    parser.add_argument("--plot", type=Path, default=Path("images/inference_benchmark.png"),
                        help="throughput and latency figure (default images/inference_benchmark.png)")
    args = parser.parse_args(argv)
    if args.within is not None and (args.checkpoint != "best" or not math.isfinite(args.within) or args.within < 0):
        parser.error(f"--within={args.within} is not allowed: use a number of points >= 0, with --checkpoint best")
    for name in ("accuracy_images", "warmup_seconds", "min_seconds", "min_iterations"):
        if getattr(args, name) < (1 if name == "min_iterations" else 0):
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: use a number >= "
                         f"{1 if name == 'min_iterations' else 0}")
    return args


def export_and_check(model: nn.Module, out: Path, precision: str, parity_images: np.ndarray,
                     report: Report) -> tuple[dict[str, Path], dict[str, object], dict]:
    """fp32 ONNX (and the fp16 one when the precision is fp16), each checked against PyTorch in ONNX Runtime.
    Returns ({"fp32": path, ...}, {"fp32": its ONNX Runtime session, ...}, the parity results)."""
    reference = torch_predictor(on_device(model, torch.device("cpu")), torch.device("cpu"), None)
    paths, sessions, results = {"fp32": out / "model.onnx"}, {}, {}
    export_onnx(model, paths["fp32"])
    if precision == "fp16":  # the engine is built from it; in ONNX Runtime it shows what fp16 does to the logits
        paths["fp16"] = out / "model_fp16.onnx"
        export_onnx(HalfPrecision(model).eval(), paths["fp16"])
    for name, path in paths.items():
        sessions[name] = ort_session(path)
        result = results[name] = parity(reference, ort_predictor(sessions[name]), parity_images)
        result["passed"] = check_parity(result, name)
        line = (f"ONNX {name} vs PyTorch (ONNX Runtime CPU, {result['images']} test images, batch sizes "
                f"{result['images']} and 1): max |logit diff| {result['max_abs_diff']:.2e}, same top-1 "
                f"{result['top1_agreement']:.2f}%")
        print(line, flush=True)
        if not result["passed"]:
            allowed = (f"<= {PARITY_MAX_ABS_DIFF} and 100%" if name == "fp32"
                       else f"<= {FP16_PARITY_RELATIVE} x max |logit| ({result['max_abs_logit']:.3g})")
            report.fail(f"{line}; allowed: {allowed}")
    return paths, sessions, results


def build_tensorrt(args: argparse.Namespace, out: Path, onnx_paths: dict[str, Path],
                   calibration: Callable[[], np.ndarray], device: torch.device,
                   report: Report) -> tuple[trt_runtime.TrtRunner | None, dict | None]:
    """Build the engine and open a runner for it, or say why not. Returns (runner or None, engine JSON or None)."""
    part = f"TensorRT {args.precision} engine"
    if device.type != "cuda":
        report.skip(f"{part}, its accuracy and benchmark", "no CUDA GPU (PyTorch sees none, or --device cpu)")
        return None, None
    why = trt_runtime.why_no_tensorrt() or (trt_runtime.why_no_modelopt() if args.precision == "int8" else "")
    if why:
        report.skip(f"{part}, its accuracy and benchmark", why)
        return None, None
    engine_path = out / f"model_{args.precision}.engine"
    try:
        # One path on TensorRT 10 and 11: a strongly typed network whose precision comes from the ONNX.
        if args.precision == "int8":
            source = out / "model_int8_qdq.onnx"
            trt_runtime.quantize_int8(onnx_paths["fp32"], calibration(), source, INPUT_NAME)
        else:
            source = onnx_paths[args.precision]
        info = trt_runtime.build_engine(source, engine_path, args.precision, args.batch_sizes,
                                        torch.cuda.get_device_name(device), out / "timing.cache")
    except trt_runtime.EngineError as e:
        report.fail(str(e))
        return None, None
    print(f"TensorRT {info['tensorrt_version']} built {engine_path} ({info['typing']}, batch "
          f"{info['profile']['min'][0]}..{info['profile']['max'][0]}) in {info['build_seconds']} s", flush=True)
    why = trt_runtime.why_no_pycuda()
    if why:
        report.skip(f"{part} accuracy and benchmark (the engine was built)", why)
        return None, info
    try:
        return trt_runtime.TrtRunner(engine_path, max(args.batch_sizes)), info
    except trt_runtime.EngineError as e:
        report.fail(str(e))
        return None, info


def check_accuracy(predictors: dict[str, Callable[[np.ndarray], np.ndarray]], precision: str, images: np.ndarray,
                   labels: np.ndarray, batch_size: int, report: Report) -> list[dict]:
    """Top-1 on the normalized test images of each predictor, the first (PyTorch fp32) the reference; an engine that
    fails to run, or trails PyTorch by more than ACCURACY_TOLERANCE, is reported as a failure."""
    logits = {}
    for name, predict in predictors.items():
        try:
            logits[name] = predict_all(predict, images, batch_size)
        except trt_runtime.EngineError as e:
            report.fail(f"{name} on the test images: {e}")
    rows = accuracy_table(logits, labels, reference=next(iter(predictors)))
    print(markdown_accuracy(rows, len(images)), flush=True)
    for message in accuracy_failures(rows, precision):
        report.fail(message)
    return rows


def backend_steps(model: nn.Module, device: torch.device, session, runner: trt_runtime.TrtRunner | None,
                  precision: str, cuda_graph: bool, report: Report) -> dict[str, Callable[[np.ndarray], Step]]:
    """backend name -> a function that makes its timed step for a batch, for every backend present. `model` is
    already on `device` (see on_device)."""
    steps: dict[str, Callable[[np.ndarray], Step]] = {
        f"pytorch-fp32 ({device.type})": lambda x: torch_step(model, device, None, x),
        "onnxruntime-fp32 (cpu)": lambda x: ort_step(session, x)}
    if device.type == "cuda":
        steps["pytorch-fp16-autocast (cuda)"] = lambda x: torch_step(model, device, torch.float16, x)
        if torch.cuda.is_bf16_supported():
            steps["pytorch-bf16-autocast (cuda)"] = lambda x: torch_step(model, device, torch.bfloat16, x)
    else:
        report.skip("PyTorch fp16/bf16 autocast benchmark", "no CUDA GPU; fp16/bf16 are timed on the GPU only")
    if runner is not None:
        steps[f"tensorrt-{precision}"] = lambda x: trt_step(runner, x, use_graph=False)
    why_no_graph = ("there is no engine runner on this machine (see above)" if runner is None
                    else trt_runtime.why_no_cuda_python())
    if cuda_graph and why_no_graph:
        report.skip("CUDA-graph replay of the engine", why_no_graph)
    elif cuda_graph and runner is not None:
        steps[f"tensorrt-{precision}-cudagraph"] = lambda x: trt_step(runner, x, use_graph=True)
    return steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        checkpoint_path = resolve_checkpoint(args.checkpoint, args.runs_dir, args.within)
        model, checkpoint = load_model(checkpoint_path)
        device = pick_device(args.device)
        out = args.out or checkpoint_path.parent / "export"
        for option, folder in (("--out", out), ("--plot", args.plot.parent)):
            if why := unwritable(folder):
                raise ConfigError(f"{option} {folder} cannot be written: {why}; use a folder you can write to")
        train_images, _, test_images, test_labels = load_cifar100(args.data_dir)
    except (CheckpointError, ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code if isinstance(e, DataError) else 2
    config = checkpoint["config"]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per batch size: let cuDNN pick kernels in the warm-up
    out.mkdir(parents=True, exist_ok=True)
    report = Report()
    print(f"exporting checkpoint {checkpoint_path} (epoch {checkpoint.get('epoch')}, val_accuracy "
          f"{checkpoint.get('val_accuracy')}); filters {config['num_filters_1']}/{config['num_filters_2']}/"
          f"{config['num_filters_3']}; PyTorch on {device_name(device)}", flush=True)

    images = torch.from_numpy(test_images[:args.accuracy_images or None])
    labels = test_labels[:len(images)]
    normalized = normalize(images).contiguous().numpy()  # (N, 3, 32, 32) float32, once: parity, accuracy, benchmark
    onnx_paths, sessions, onnx_parity = export_and_check(model, out, args.precision, normalized[:PARITY_IMAGES],
                                                         report)

    def calibration() -> np.ndarray:  # real training images, a fixed random subset across classes
        pick = np.random.default_rng(0).permutation(len(train_images))[:CALIBRATION_IMAGES]
        return normalize(torch.from_numpy(train_images[np.sort(pick)])).contiguous().numpy()

    runner, engine_info = build_tensorrt(args, out, onnx_paths, calibration, device, report)

    placed = on_device(model, device)
    predictors = {f"pytorch-fp32 ({device.type})": torch_predictor(placed, device, None),
                  **{f"onnxruntime-{name} (cpu)": ort_predictor(session) for name, session in sessions.items()}}
    if runner is not None:
        predictors[f"tensorrt-{args.precision}"] = runner
    accuracy = check_accuracy(predictors, args.precision, normalized, labels, max(args.batch_sizes), report)
    steps = backend_steps(placed, device, sessions["fp32"], runner, args.precision, args.cuda_graph, report)
    print(f"benchmark: warm-up {args.warmup_seconds} s, then >= {args.min_seconds} s and >= {args.min_iterations} "
          f"iterations per backend and batch size", flush=True)
    load_before = os.getloadavg()[0]  # other processes slow the CPU backends most: say how busy the machine was
    rows = benchmark(steps, normalized, args.batch_sizes, args.warmup_seconds, args.min_seconds, args.min_iterations,
                     report)
    load = max(load_before, os.getloadavg()[0])
    print(markdown_benchmark(rows), flush=True)

    machine = f"{device_name(device)}; load average up to {load:.1f} on {os.cpu_count()} CPUs"
    found = versions()
    for package in ("onnx", "onnxruntime"):
        found[package] = __import__(package).__version__
    if engine_info:
        found["tensorrt"] = engine_info["tensorrt_version"]
    write_json_atomic({"checkpoint": str(checkpoint_path), "config": config, "machine": machine, "versions": found,
                       "data": {"data_dir": str(args.data_dir), "test_images": len(images)},
                       "method": {"warmup_seconds": args.warmup_seconds, "min_seconds": args.min_seconds,
                                  "min_iterations": args.min_iterations, "percentiles": "nearest-rank",
                                  "end_to_end": "host clock around copy in + inference + copy out + sync",
                                  "gpu_compute": "CUDA events around the inference call"},
                       "onnx_parity": onnx_parity, "engine": engine_info, "accuracy": accuracy, "benchmark": rows,
                       "skipped": report.skipped, "failures": report.failures}, out / "benchmark.json")
    filters = f"{config['num_filters_1']}/{config['num_filters_2']}/{config['num_filters_3']}"
    plot_benchmark(rows, args.plot, f"SimpleCNN {filters} inference on {machine}\ninputs: batches of the "
                                    f"{len(images)} test images in {args.data_dir} (speed does not depend on content)")
    print(f"wrote {out / 'benchmark.json'} and {args.plot}", flush=True)
    if report.failures:
        print(f"{len(report.failures)} check(s) failed: " + "; ".join(report.failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
