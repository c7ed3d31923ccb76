"""Export the best SimpleCNN checkpoint to ONNX and a TensorRT engine, check both against PyTorch,
and time them.

    python trt_export.py                                 # select_model.py's choice in ./runs, fp16
    python trt_export.py --checkpoint best --within 1.0  # the cheapest on its front within 1 point
    python trt_export.py --checkpoint runs/<run-id>/best.pt --precision int8 --batch-sizes 1,32,1024
    python trt_export.py --batch-sizes 1,64 --warmup-seconds 0.05 --min-seconds 0.2   # a quick look

Steps: checkpoint -> SimpleCNN (eval mode, built from the checkpoint's own config) -> ONNX with a
dynamic batch dimension and the weights inside, checked by onnx.checker -> ONNX Runtime on the CPU
must match PyTorch (max |logit difference| <= 1e-4, same top-1, at two batch sizes) -> TensorRT
engine (strongly typed, batch 1..max) and a JSON beside it -> pycuda runner (cuda-python for the
CUDA-graph replay) -> top-1 accuracy on the test images, PyTorch beside each exported model ->
benchmark of every backend present. Without a GPU, TensorRT or pycuda it does all the rest and
prints one `skipped:` line per part it could not run. Exit status (cli.EXIT_CODES): 0 all that ran
passed; 1 a check that ran failed (parity, accuracy tolerance, engine build), a file that cannot be
written; 2 bad input (an option, a checkpoint, the data set, no run to export, a broken onnxruntime
install); 128+n a stop signal, at once, inside torch's exporter too.

Benchmark method, as trtexec's: warm up for --warmup-seconds, then iterate for at least
--min-seconds and
--min-iterations on a fixed batch of test images. End-to-end time comes from the host clock around
copy in + inference + copy out + synchronisation; GPU compute time from CUDA events around the
inference call alone. Throughput is images / end-to-end time; latency is reported as mean, p50, p90
and p99 of the iterations. Every CPU backend computes with the same threads (--threads; default the
CPUs of the affinity mask, or OMP_NUM_THREADS if fewer), recorded per row. Each figure is printed
with its spread; one whose spread, or wait for a CPU (others on the cores), is too high to rank the
backends is marked.

Files: <out>/model.onnx (+ model_fp16.onnx, model_int8_qdq.onnx when needed),
<out>/model_<precision>.engine and its .json, <out>/timing.cache, <out>/benchmark.json; the plot
goes to --plot (default images/inference_benchmark.png). <out> defaults to <run folder>/export,
inside the git-ignored runs/. One export writes there at a time: a second is refused in one line
naming the first (folders.own_folder).

Last measured result (2026-11-27, images/inference_benchmark.png): default SimpleCNN 64/128/256, CPU
only, 2 cores shared with other jobs (load average ~6): ONNX Runtime 575-604 images/s at batch
256-1024 against 248-284 for PyTorch eager fp32; batch 1 p50 2.3 ms against 11 ms. fp32 ONNX max
|logit diff| 9e-8, fp16 ONNX 1e-4. No GPU, so no TensorRT or CUDA numbers yet.

`--checkpoint best` is the default: with no arguments, this exports what select_model.py chose
(runs/selection.json); with no selection.json, the single run with the highest best_val_accuracy
anywhere under
--runs-dir among those trained on --data-dir's images, with a note that no new seeds confirmed
it. The checkpoint exported is always printed.
choice.choose_checkpoint makes that choice, for select_model.py's selection and this command alike.

This file is the command line and the pipeline; `main` reads top to bottom:
choose the checkpoint -> export and check the ONNX -> build the engine -> accuracy -> benchmark ->
write. The backends (PyTorch, ONNX Runtime, the engine), each with its predictor, timed step and
accuracy tolerance, are listed in one registry in cifarkit/export/backends.py, with the ONNX export.
Timing statistics, accuracy scoring, the tables and the plot are in cifarkit/export/bench.py.
TensorRT and CUDA themselves are in cifarkit/export/tensorrt_runtime.py.

Sections, in order: settings, model, command line, pipeline, main.
"""

from __future__ import annotations

# Run as a program, a stop signal while the imports below run (torch takes a second) is one line
# and exit 128 + n, as from main on (cli.StopWhileImporting)
if __name__ == "__main__":
    from cifarkit.core.cli import stop_while_importing

    stop_while_importing()

import argparse
import math
import os
import sys
from collections.abc import Callable
from contextlib import ExitStack
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cifarkit.core.choice import choose_checkpoint
from cifarkit.core.cifar_files import DATA_DIR_HELP, load_cifar100
from cifarkit.core.cli import (
    EXIT_DONE,
    EXIT_FAILED,
    FileFailed,
    InterruptOnSignal,
    OneLineErrorParser,
    boundary,
    positive_int,
    write_json_atomic,
)
from cifarkit.core.figures import NO_FIGURES_VARIABLE, figures_wanted
from cifarkit.core.folders import own_folder, unwritable
from cifarkit.core.machine import device_name, pick_device, versions
from cifarkit.core.run_files import (
    check_checkpoint_data,
    checkpoint_config,
    data_identity,
    load_checkpoint,
    load_weights,
)
from cifarkit.core.settings import ConfigError
from cifarkit.export import tensorrt_runtime
from cifarkit.export.backends import (
    INPUT_NAME,
    Backend,
    Engine,
    HalfPrecision,
    backends,
    export_onnx,
    on_device,
    onnxruntime,
    ort_predictor,
    ort_session,
    torch_predictor,
)
from cifarkit.export.bench import (
    BUSY_WAIT_PCT,
    METHOD,
    NOISY_SPREAD_PCT,
    Report,
    accuracy_failures,
    accuracy_table,
    benchmark,
    markdown_accuracy,
    markdown_benchmark,
    parity,
    plot_benchmark,
    predict_all,
    thread_budget,
)
from part_2_cifar import SETTINGS, SPLIT_SEED, model_from_config, normalize

# --------------------------------------------------------------------------------------------------
# Settings

PRECISION = "fp16"  # default engine precision: tensor cores and half the memory traffic of fp32
# latency (1) to throughput (1024); the engine's profile spans min..max
BATCH_SIZES = (
    1,
    32,
    256,
    1024,
)
PARITY_IMAGES = 256  # test images compared logit by logit between PyTorch and ONNX Runtime
PARITY_MAX_ABS_DIFF = 1e-4  # fp32 ONNX vs PyTorch on the CPU: only summation order differs
# fp16 ONNX: max |diff| <= this x max |logit| (fp16 keeps ~3 significant digits). Its top-1
# agreement is reported, not required: where two logits are closer than the rounding, either may
# win.
FP16_PARITY_RELATIVE = 1e-2
CALIBRATION_IMAGES = 512  # training images ModelOpt calibrates int8 activation ranges on
WARMUP_SECONDS = 0.2  # trtexec's --warmUp default
# trtexec runs --duration=3 s; 1 s keeps the CPU backends' run short (--min-seconds 3 for parity)
MIN_SECONDS = 1.0
MIN_ITERATIONS = 10  # trtexec's --iterations default


# --------------------------------------------------------------------------------------------------
# Model


def load_model(path: Path) -> tuple[nn.Module, dict]:
    """SimpleCNN rebuilt from the checkpoint's stored config, weights loaded, in eval mode; and the
    checkpoint, its config completed. CheckpointError, one line: unreadable, foreign (names and
    shapes that do not fit; the prefixes of PyTorch's wrappers are removed first), a bad config, or
    NaN/inf weights (a diverged run's)."""
    checkpoint = load_checkpoint(path)
    config = checkpoint_config(checkpoint, path, SETTINGS)
    model = model_from_config(config)
    load_weights(model, checkpoint["model"], path)
    return model.eval(), {**checkpoint, "config": config}


# --------------------------------------------------------------------------------------------------
# Command line


def batch_sizes_arg(text: str) -> list[int]:
    try:
        sizes = sorted({int(part) for part in text.split(",")})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not allowed: use positive integers separated by commas, e.g. 1,32,256"
        )
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineErrorParser(__doc__)
    parser.add_argument(
        "--checkpoint",
        default="best",
        metavar="PATH|best",
        help="a best.pt, a run folder, or `best` (the default): what select_model.py chose "
        "(selection.json under --runs-dir), else the run at any depth in --runs-dir with the "
        "highest best_val_accuracy",
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="where `best` looks (default ./runs)"
    )
    parser.add_argument(
        "--within",
        type=float,
        metavar="POINTS",
        help="with `best`: the cheapest config (FLOPs) on selection.json's Pareto front whose mean "
        "val_accuracy is within POINTS of the best mean, at its best seed",
    )
    parser.add_argument("--out", type=Path, help="output folder (default <run folder>/export)")
    parser.add_argument(
        "--precision",
        choices=tensorrt_runtime.PRECISIONS,
        default=PRECISION,
        help=f"TensorRT engine precision (default {PRECISION})",
    )
    parser.add_argument(
        "--batch-sizes",
        type=batch_sizes_arg,
        default=list(BATCH_SIZES),
        metavar="N,N,...",
        help=f"benchmarked batch sizes; the engine serves min..max (default "
        f"{','.join(map(str, BATCH_SIZES))})",
    )
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help=DATA_DIR_HELP)
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), default="auto", help="where PyTorch runs"
    )
    parser.add_argument(
        "--accuracy-images", type=int, default=0, help="test images scored (default 0: all)"
    )
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        default=WARMUP_SECONDS,
        help=f"untimed iterations first, per backend and batch size (default {WARMUP_SECONDS})",
    )
    parser.add_argument(
        "--min-seconds",
        type=float,
        default=MIN_SECONDS,
        help=f"timed seconds per backend and batch size, at least (default {MIN_SECONDS})",
    )
    parser.add_argument(
        "--min-iterations",
        type=int,
        default=MIN_ITERATIONS,
        help=f"timed iterations per backend and batch size, at least (default {MIN_ITERATIONS})",
    )
    parser.add_argument(
        "--cuda-graph", action="store_true", help="also time the engine replayed as a CUDA graph"
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="CPU threads of every CPU backend (PyTorch, ONNX Runtime; "
        "default: the CPUs this process may run on, or OMP_NUM_THREADS "
        "if fewer)",
    )
    parser.add_argument(
        "--plot",
        type=Path,
        default=Path("images/inference_benchmark.png"),
        help="throughput and latency figure (default images/inference_benchmark.png)",
    )
    args = parser.parse_args(argv)
    if args.within is not None and (
        args.checkpoint != "best" or not math.isfinite(args.within) or args.within < 0
    ):
        parser.error(
            f"--within={args.within} is not allowed: use a number of points >= 0, with "
            "--checkpoint best"
        )
    for name in ("accuracy_images", "warmup_seconds", "min_seconds", "min_iterations"):
        if getattr(args, name) < (1 if name == "min_iterations" else 0):
            parser.error(
                f"--{name.replace('_', '-')}={getattr(args, name)} is not allowed: use a number >= "
                f"{1 if name == 'min_iterations' else 0}"
            )
    return args


# --------------------------------------------------------------------------------------------------
# Pipeline: export and check -> build -> accuracy -> benchmark -> write


def begin_export(out: Path, checkpoint_path: Path, checkpoint: dict, device: torch.device) -> None:
    """Make the output folder `out`; say which checkpoint is exported and where PyTorch runs."""
    if device.type == "cuda":
        # fixed shapes per batch size: cuDNN picks in the warm-up
        torch.backends.cudnn.benchmark = True
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileFailed(e, "make the output folder", out) from None
    print(
        f"exporting checkpoint {checkpoint_path} (epoch {checkpoint.get('epoch')}, val_accuracy "
        f"{checkpoint.get('val_accuracy')}); filters {filters(checkpoint['config'])}; PyTorch on "
        f"{device_name(device)}",
        flush=True,
    )


def normalized_test_set(
    test_images: np.ndarray, test_labels: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` test images (0: all), normalized (N, 3, 32, 32) float32, and their labels.

    They are normalized once: parity, accuracy and the benchmark all use them.
    """
    images = torch.from_numpy(test_images[: count or None])
    return normalize(images).contiguous().numpy(), test_labels[: len(images)]


def export_and_check(
    model: nn.Module,
    out: Path,
    precision: str,
    parity_images: np.ndarray,
    report: Report,
    threads: int | None = None,
) -> tuple[dict[str, Path], dict[str, object], dict]:
    """fp32 ONNX (and the fp16 one when the precision is fp16), each checked against PyTorch in
    ONNX Runtime, whose sessions compute with `threads` threads (None: thread_budget()).
    Returns ({"fp32": path, ...}, {"fp32": its ONNX Runtime session, ...}, the parity results)."""
    reference = torch_predictor(on_device(model, torch.device("cpu")), torch.device("cpu"), None)
    paths, sessions, results = {"fp32": out / "model.onnx"}, {}, {}
    export_onnx(model, paths["fp32"])
    # the engine is built from it; in ONNX Runtime it shows what fp16 does to the logits
    if precision == "fp16":
        paths["fp16"] = out / "model_fp16.onnx"
        export_onnx(HalfPrecision(model).eval(), paths["fp16"])
    for name, path in paths.items():
        sessions[name] = ort_session(path, threads)
        result = results[name] = parity(reference, ort_predictor(sessions[name]), parity_images)
        result["passed"] = check_parity(result, name)
        line = (
            f"ONNX {name} vs PyTorch (ONNX Runtime CPU, {result['images']} test images, batch "
            "sizes "
            f"{result['images']} and 1): max |logit diff| {result['max_abs_diff']:.2e}, same top-1 "
            f"{result['top1_agreement']:.2f}%"
        )
        print(line, flush=True)
        if not result["passed"]:
            allowed = (
                f"<= {PARITY_MAX_ABS_DIFF} and 100%"
                if name == "fp32"
                else f"<= {FP16_PARITY_RELATIVE} x max |logit| ({result['max_abs_logit']:.3g})"
            )
            report.fail(f"{line}; allowed: {allowed}")
    return paths, sessions, results


def check_parity(result: dict, precision: str) -> bool:
    if precision == "fp32":
        return result["max_abs_diff"] <= PARITY_MAX_ABS_DIFF and result["top1_agreement"] == 100
    return result["max_abs_diff"] <= FP16_PARITY_RELATIVE * max(1.0, result["max_abs_logit"])


def calibration_images(train_images: np.ndarray) -> np.ndarray:
    """CALIBRATION_IMAGES training images, normalized (N, 3, 32, 32).

    They are real images, a fixed random subset across the classes.
    """
    pick = np.random.default_rng(0).permutation(len(train_images))[:CALIBRATION_IMAGES]
    return normalize(torch.from_numpy(train_images[np.sort(pick)])).contiguous().numpy()


def build_tensorrt(
    args: argparse.Namespace,
    out: Path,
    onnx_paths: dict[str, Path],
    calibration: Callable[[], np.ndarray],
    device: torch.device,
    report: Report,
) -> tuple[Engine, dict | None]:
    """Build the engine and open a runner for it, or say why not. A build or a runner that fails is
    a failure. Returns (the runner, or why there is none; the engine's JSON, or None when none was
    built)."""
    part = f"TensorRT {args.precision} engine, its accuracy and benchmark"
    if device.type != "cuda":
        return Engine(
            unavailable="no CUDA GPU (PyTorch sees none, or --device cpu)", part=part
        ), None
    why = tensorrt_runtime.why_no_tensorrt() or (
        tensorrt_runtime.why_no_modelopt() if args.precision == "int8" else ""
    )
    if why:
        return Engine(unavailable=why, part=part), None
    engine_path = out / f"model_{args.precision}.engine"
    try:
        # One path on TensorRT 10 and 11: a strongly typed network whose precision comes from the
        # ONNX.
        if args.precision == "int8":
            source = out / "model_int8_qdq.onnx"
            tensorrt_runtime.quantize_int8(onnx_paths["fp32"], calibration(), source, INPUT_NAME)
        else:
            source = onnx_paths[args.precision]
        info = tensorrt_runtime.build_engine(
            source,
            engine_path,
            args.precision,
            args.batch_sizes,
            torch.cuda.get_device_name(device),
            out / "timing.cache",
        )
    except tensorrt_runtime.EngineError as e:
        report.fail(str(e))
        return Engine(), None
    print(
        f"TensorRT {info['tensorrt_version']} built {engine_path} ({info['typing']}, batch "
        f"{info['profile']['min'][0]}..{info['profile']['max'][0]}) in {info['build_seconds']} s",
        flush=True,
    )
    why = tensorrt_runtime.why_no_pycuda()
    if why:
        return Engine(
            unavailable=why,
            part=f"TensorRT {args.precision} engine accuracy and benchmark (the engine was built)",
        ), info
    try:
        return Engine(tensorrt_runtime.TrtRunner(engine_path, max(args.batch_sizes))), info
    except tensorrt_runtime.EngineError as e:
        report.fail(str(e))
        return Engine(), info


def report_unavailable(registry: list[Backend], report: Report) -> None:
    """One `skipped:` line for each part and reason among the backends that cannot run here."""
    for part, why in dict.fromkeys(
        (backend.part or backend.name, backend.unavailable)
        for backend in registry
        if backend.unavailable
    ):
        report.skip(part, why)


def check_accuracy(
    registry: list[Backend],
    precision: str,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    report: Report,
) -> list[dict]:
    """Top-1 of each backend with a predictor on the normalized test images (N, 3, 32, 32).

    Each is compared with the registry's reference backend, wherever it is listed.
    A backend that fails to run, or trails the reference by more than its tolerance, is a failure.
    Returns the rows of the accuracy table.
    """
    logits = {}
    for backend in registry:
        if backend.predict is None:
            continue
        try:
            logits[backend.name] = predict_all(backend.predict, images, batch_size)
        except tensorrt_runtime.EngineError as e:
            report.fail(f"{backend.name} on the test images: {e}")
    reference = next(backend.name for backend in registry if backend.reference)
    rows = accuracy_table(logits, labels, reference)
    print(markdown_accuracy(rows, len(images)), flush=True)
    tolerances = {
        backend.name: backend.tolerance for backend in registry if backend.tolerance is not None
    }
    for message in accuracy_failures(rows, tolerances, precision):
        report.fail(message)
    return rows


def run_benchmark(
    registry: list[Backend], images: np.ndarray, args: argparse.Namespace, report: Report
) -> tuple[list[dict], float]:
    """Time each backend with a timed step at each of --batch-sizes, and print the table.

    Returns (the benchmark rows, the highest 1-minute load average before and after).
    """
    steps = {backend.name: backend.make_step for backend in registry if backend.make_step}
    threads = {backend.name: backend.threads for backend in registry if backend.make_step}
    print(
        f"benchmark: warm-up {args.warmup_seconds} s, then >= {args.min_seconds} s and >= "
        f"{args.min_iterations} iterations per backend and batch size; CPU threads "
        + ", ".join(f"{name} {n}" for name, n in threads.items() if n is not None),
        flush=True,
    )
    # Other processes slow the CPU backends most: say how busy the machine was.
    load_before = os.getloadavg()[0]
    rows = benchmark(
        steps,
        images,
        args.batch_sizes,
        args.warmup_seconds,
        args.min_seconds,
        args.min_iterations,
        report,
        threads,
    )
    print(markdown_benchmark(rows), flush=True)
    return rows, max(load_before, os.getloadavg()[0])


def write_results(
    args: argparse.Namespace,
    out: Path,
    checkpoint_path: Path,
    config: dict,
    machine: str,
    test_images: int,
    report: Report,
    results: dict,
) -> None:
    """Write <out>/benchmark.json and the plot at --plot (none where figures_wanted() is False).

    `results` holds onnx_parity, engine, accuracy and benchmark, as benchmark.json names them.
    """
    found = versions()
    for package in ("onnx", "onnxruntime"):
        found[package] = __import__(package).__version__
    if results["engine"]:
        found["tensorrt"] = results["engine"]["tensorrt_version"]
    method = {
        "warmup_seconds": args.warmup_seconds,
        "min_seconds": args.min_seconds,
        "min_iterations": args.min_iterations,
        "threads_asked": args.threads,
        "noisy_spread_pct": NOISY_SPREAD_PCT,
        "busy_wait_pct": BUSY_WAIT_PCT,
        **METHOD,
    }
    write_json_atomic(
        {
            "checkpoint": str(checkpoint_path),
            "config": config,
            "machine": machine,
            "versions": found,
            "data": {"data_dir": str(args.data_dir), "test_images": test_images},
            "method": method,
            **results,
            "skipped": report.skipped,
            "failures": report.failures,
        },
        out / "benchmark.json",
    )
    if not figures_wanted():
        print(f"wrote {out / 'benchmark.json'}; no plot: {NO_FIGURES_VARIABLE}=1", flush=True)
        return
    plot_benchmark(
        results["benchmark"],
        args.plot,
        f"SimpleCNN {filters(config)} inference on {machine}\ninputs: batches of the "
        f"{test_images} test images in {args.data_dir} (speed does not depend on content)",
    )
    print(f"wrote {out / 'benchmark.json'} and {args.plot}", flush=True)


def filters(config: dict) -> str:
    """The model's three convolution widths, e.g. 64/128/256."""
    return f"{config['num_filters_1']}/{config['num_filters_2']}/{config['num_filters_3']}"


# --------------------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    """The command; exit codes as cli.EXIT_CODES, its one boundary cli.boundary. A stop signal
    ends it at once, even inside torch's exporter or ONNX Runtime (cli.Interrupted is a
    BaseException they let pass): each run writes every file anew, whole or not at all."""
    with InterruptOnSignal() as stop, ExitStack() as owned:  # `owned`: --out, held until the end
        try:
            code = export(parse_args(argv), owned)
            stop.check()  # a stop a library swallowed after all: the export did not end as asked
            return code
        except BaseException as e:
            return boundary(
                e,
                stopped="the export stopped; run the same command again",
                kept="the files of an earlier export stay whole; run the same command again",
            )


def export(args: argparse.Namespace, owned: ExitStack) -> int:
    """choose -> export and check -> build -> accuracy -> benchmark -> write; the exit code.

    `owned` holds the --out folder until the end, from before the data set is loaded for the
    export (`best` may have read it first, to know which runs count).
    """
    onnxruntime()  # a broken install: one line before any work
    dataset = cache(partial(load_cifar100, args.data_dir))  # read once, if at all

    @cache
    def images_identity() -> dict:  # --data-dir's data: `best` chooses among the runs trained on it
        train_x, train_y, test_x, test_y = dataset()
        return data_identity(args.data_dir, (train_x, train_y), (test_x, test_y), None, SPLIT_SEED)

    checkpoint_path = choose_checkpoint(
        args.checkpoint, args.runs_dir, args.within, images_identity
    )
    model, checkpoint = load_model(checkpoint_path)
    device = pick_device(args.device)
    out = args.out or checkpoint_path.parent / "export"
    for option, folder in (("--out", out), ("--plot", args.plot.parent)):
        if why := unwritable(folder):
            raise ConfigError(
                f"{option} {folder} cannot be written: {why}; use a folder you can write to"
            )
    # However it was chosen, a model is scored (and int8 calibrated) on the images it learned from:
    # accuracy on other images would be recorded in benchmark.json as this model's. After the
    # output folders' checks, which cost nothing (the data may need a download).
    check_checkpoint_data(
        checkpoint,
        images_identity(),
        checkpoint_path,
        "pass --data-dir the data it was trained on",
        "scoring it on",
    )
    owned.enter_context(own_folder(out, "export folder"))
    train_images, _, test_images, test_labels = dataset()
    threads = args.threads or thread_budget()
    owned.callback(torch.set_num_threads, torch.get_num_threads())  # the caller's, after the export
    torch.set_num_threads(threads)  # PyTorch's budget: ONNX Runtime's too (export_and_check)
    begin_export(out, checkpoint_path, checkpoint, device)
    images, labels = normalized_test_set(test_images, test_labels, args.accuracy_images)
    report = Report()
    onnx_paths, sessions, onnx_parity = export_and_check(
        model, out, args.precision, images[:PARITY_IMAGES], report, threads
    )
    engine, engine_info = build_tensorrt(
        args, out, onnx_paths, partial(calibration_images, train_images), device, report
    )
    registry = backends(
        on_device(model, device), device, sessions, engine, args.precision, args.cuda_graph
    )
    report_unavailable(registry, report)
    accuracy = check_accuracy(
        registry, args.precision, images, labels, max(args.batch_sizes), report
    )
    rows, load = run_benchmark(registry, images, args, report)
    machine = f"{device_name(device)}; load average up to {load:.1f} on {os.cpu_count()} CPUs"
    write_results(
        args,
        out,
        checkpoint_path,
        checkpoint["config"],
        machine,
        len(images),
        report,
        {
            "onnx_parity": onnx_parity,
            "engine": engine_info,
            "accuracy": accuracy,
            "benchmark": rows,
        },
    )
    if report.failures:
        print(
            f"{len(report.failures)} check(s) failed: " + "; ".join(report.failures),
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
