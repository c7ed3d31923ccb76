"""The inference backends trt_export.py scores and times, in one registry; and the ONNX export.

A backend is one way to run the model: PyTorch eager, ONNX Runtime on the CPU, or the engine.
Its predictor maps float32 images (B, 3, 32, 32) to float32 logits (B, classes).
Its step factory takes a fixed batch and returns one timed iteration on it (see inference_bench.py).
`backends()` lists every backend of a run, each with what it can do here, or why it cannot run.
PyTorch fp32 is the reference: the accuracy of every other backend is compared with it.
Adding a backend is one entry in `backends()` and one test.

Sections, in order: settings, ONNX, adapters, registry.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from cifarkit.core.cli import FileFailed, require, write_atomic
from cifarkit.core.machine import autocast
from cifarkit.core.timing import Step
from cifarkit.export import tensorrt_runtime
from cifarkit.export.bench import Predictor, StepFactory, thread_budget

# --------------------------------------------------------------------------------------------------
# Settings

INPUT_NAME, OUTPUT_NAME = "images", "logits"  # ONNX and engine tensor names
IMAGE_SHAPE = (3, 32, 32)  # one normalized CIFAR image, NCHW
# Points of top-1 accuracy an engine may trail PyTorch fp32 before the run fails.
# fp32 is not bit-exact either: TensorRT allows TF32 in convolutions and matrix products by default.
ACCURACY_TOLERANCE = {"fp32": 0.2, "fp16": 0.5, "int8": 1.5}
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}  # PyTorch autocast, timed on a GPU only


# --------------------------------------------------------------------------------------------------
# ONNX


class HalfPrecision(nn.Module):
    """The model in fp16 between fp32 input and output.

    It gives an fp16 ONNX for TensorRT's strongly typed networks.
    Its interface is fp32, as the fp32 ONNX's is, so every runner feeds both alike.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.half()).float()


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of `model` on `device` in channels_last, as the trainer runs it.

    The caller's model stays as it was.
    """
    return copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)


def export_onnx(model: nn.Module, path: Path) -> None:
    """Write the ONNX of `model` to `path`, weights inside, and check it with onnx.checker.

    The input is `images` (batch, 3, 32, 32), the output `logits` (batch, classes).
    The batch dimension is dynamic.
    `model` must be in eval mode, else ValueError.
    This uses the dynamo exporter (torch.export), torch's default since 2.9.
    The TorchScript exporter is deprecated.
    Dynamo takes a few seconds more, but it is the maintained path.
    Its `dynamic_shapes` gives a symbolic batch dimension.
    The model is exported and checked in memory, then written by cli.write_atomic: `path` only
    ever holds a whole, checked model (a full disk is cli.FileFailed naming it, the old file whole).
    """
    if model.training:
        raise ValueError(
            "export_onnx needs a model in eval mode: dropout and batch statistics would be exported"
        )
    example = torch.zeros(2, *IMAGE_SHAPE)  # batch 2: a batch of 1 would be specialised away
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        model,
        (example,),
        None,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    import onnx

    assert program is not None  # the dynamo exporter returns its ONNXProgram (None: TorchScript's)
    proto = program.model_proto
    onnx.checker.check_model(proto, full_check=True)  # structure, types and shape inference
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileFailed(e, "make the folder of", path) from None
    write_atomic(path, proto.SerializeToString())


# ONNX Runtime's advice for onnxruntime and onnxruntime-gpu installed over each other (README)
ONNXRUNTIME_FIX = (
    "keep one: pip uninstall -y onnxruntime onnxruntime-gpu, then pip install onnxruntime (or "
    "onnxruntime-gpu, which has the CPU provider too)"
)


def onnxruntime():  # -> the onnxruntime module
    """The onnxruntime module, checked: cli.BrokenInstall naming it and ONNXRUNTIME_FIX when it
    imports but has no InferenceSession (two packages writing one module, e.g. ModelOpt's
    onnxruntime-gpu over onnxruntime)."""
    return require("onnxruntime", "InferenceSession", fix=ONNXRUNTIME_FIX)


def ort_session(path: Path, threads: int | None = None):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime session on the CPU, the provider every install has, of `threads` threads.

    None: inference_bench.thread_budget(). Left to itself, ONNX Runtime takes one thread per
    physical core whatever OMP_NUM_THREADS or the affinity mask say (onnxruntime issue 23747):
    beside PyTorch, a benchmark would compare unequal budgets.
    """
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or thread_budget()  # the pool that splits one operator
    options.inter_op_num_threads = 1  # the graph runs its nodes one after another (sequential mode)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------------
# Adapters: each backend's predictor and timed step


def torch_predictor(
    model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None
) -> Predictor:
    """`model` as a predictor, under autocast when `amp_dtype` is set.

    `model` is already on `device` (see on_device).
    """

    @torch.inference_mode()
    def predict(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).to(device).contiguous(memory_format=torch.channels_last)
        with autocast(device.type, amp_dtype):
            return model(x).float().cpu().numpy()

    return predict


def torch_step(
    model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, images: np.ndarray
) -> Step:
    """One timed PyTorch iteration on `images`; `model` is already on `device` (see on_device).

    On a GPU it copies the batch in from pinned memory, runs the model and copies the logits out.
    The copy out waits for the GPU, so the host clock sees the whole iteration.
    CUDA events around the model call give the GPU compute seconds the step returns.
    On the CPU it runs the model alone and returns None.
    """
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
        logits.float().cpu()  # a copy to pageable memory waits for the stream: `end` has happened
        return start.elapsed_time(end) / 1000

    return cuda_step


def ort_predictor(session) -> Predictor:
    """An ONNX Runtime session as a predictor."""
    return lambda images: session.run([OUTPUT_NAME], {INPUT_NAME: images})[0].astype(np.float32)


def ort_step(session, images: np.ndarray) -> Step:
    """One timed ONNX Runtime iteration on `images`; it returns None (no GPU time)."""

    def step() -> None:
        session.run([OUTPUT_NAME], {INPUT_NAME: images})

    return step


def trt_step(runner: tensorrt_runtime.TrtRunner, images: np.ndarray, use_graph: bool) -> Step:
    """One timed engine iteration on `images`; it returns the GPU compute seconds.

    With `use_graph` the iteration is captured once and replayed as a CUDA graph.
    """
    runner.set_batch(images)
    if use_graph:
        runner.capture_graph()
    return lambda: runner.step(use_graph)


# --------------------------------------------------------------------------------------------------
# Registry


@dataclass(frozen=True)
class Backend:
    """One way to run the model, named as the tables and benchmark.json name it."""

    name: str
    predict: Predictor | None = None  # scored on the test images; None: timed only
    make_step: StepFactory | None = None  # timed; None: scored only
    tolerance: float | None = None  # top-1 points it may trail the reference; None: not enforced
    unavailable: str = ""  # why it cannot run here; "" when it can
    part: str = ""  # what its `skipped:` line names (default: `name`)
    reference: bool = False  # the backend every other one is compared with
    threads: int | None = None  # CPU threads it computes with; None: a GPU backend (or not timed)


@dataclass(frozen=True)
class Engine:
    """What the engine build left for the registry: a runner, or why there is none.

    `unavailable` is "" with a runner, and also when the build failed (a failure, reported).
    `part` is what the `skipped:` line names when there is no runner.
    """

    runner: tensorrt_runtime.TrtRunner | None = None
    unavailable: str = ""
    part: str = ""


def backends(
    model: nn.Module,
    device: torch.device,
    sessions: dict[str, Any],
    engine: Engine,
    precision: str,
    cuda_graph: bool,
) -> list[Backend]:
    """Every backend of this run, in the order the tables list them.

    `model` is already on `device` (see on_device).
    `sessions` maps an ONNX precision to its ONNX Runtime session: "fp32", and "fp16" for fp16.
    `precision` is the engine's; it sets the engine's accuracy tolerance.
    `cuda_graph` asks for the engine replayed as a CUDA graph as well.
    """
    cpu_threads = torch.get_num_threads() if device.type == "cpu" else None
    registry = [
        Backend(
            f"pytorch-fp32 ({device.type})",
            torch_predictor(model, device, None),
            partial(torch_step, model, device, None),
            reference=True,
            threads=cpu_threads,
        )
    ]
    for onnx_precision, session in sessions.items():
        # The fp16 ONNX is scored only: it shows what fp16 does to the logits.
        timed = partial(ort_step, session) if onnx_precision == "fp32" else None
        registry.append(
            Backend(
                f"onnxruntime-{onnx_precision} (cpu)",
                ort_predictor(session),
                timed,
                threads=session.get_session_options().intra_op_num_threads,
            )
        )
    gpu = device.type == "cuda"
    no_gpu = "" if gpu else "no CUDA GPU; fp16/bf16 are timed on the GPU only"
    for name, dtype in AUTOCAST.items():
        if gpu and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            continue  # a GPU without bf16 (before Ampere) times fp16 only, and says nothing of it
        registry.append(
            Backend(
                f"pytorch-{name}-autocast (cuda)",
                None,
                partial(torch_step, model, device, dtype) if gpu else None,
                unavailable=no_gpu,
                part="PyTorch fp16/bf16 autocast benchmark",
            )
        )
    runner, engine_name = engine.runner, f"tensorrt-{precision}"
    if runner is not None:
        registry.append(
            Backend(
                engine_name,
                runner,
                partial(trt_step, runner, use_graph=False),
                tolerance=ACCURACY_TOLERANCE[precision],
            )
        )
    elif engine.unavailable:
        registry.append(Backend(engine_name, unavailable=engine.unavailable, part=engine.part))
    if cuda_graph:
        why = (
            "there is no engine runner on this machine (see above)"
            if runner is None
            else tensorrt_runtime.why_no_cuda_python()
        )
        replay = None if runner is None or why else partial(trt_step, runner, use_graph=True)
        registry.append(
            Backend(
                f"{engine_name}-cudagraph",
                None,
                replay,
                unavailable=why,
                part="CUDA-graph replay of the engine",
            )
        )
    return registry
