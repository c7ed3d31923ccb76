"""The TensorRT and CUDA layer of trt_export.py: build an engine from ONNX, run it, time it. Nothing
else.

Targets TensorRT 10.x and 11.x through the name-based API both share (`build_serialized_network`,
`set_input_shape`, `set_tensor_address`, `execute_async_v3`), with one precision path for both: the
network is strongly typed (TensorRT 11 always is; on 10 the flag is asked for by name, as its number
changed between the two), so the ONNX carries the precision and no builder flag is set:

    fp32  the fp32 ONNX
    fp16  the fp16 ONNX (fp32 in and out, fp16 inside)
    int8  ModelOpt's Q/DQ copy of the fp32 ONNX (int8 where quantized, fp16 elsewhere)

Buffers, copies, the stream and CUDA events come from pycuda; CUDA-graph capture and replay from
cuda-python (`cuda.bindings.runtime`), as NVIDIA's TensorRT samples do it: no released pycuda
(through 2026.1) has a graph API. `tensorrt`, `pycuda`, `cuda.bindings` and `modelopt` are imported
inside the functions that use them, so importing this file needs only numpy: trt_export.py imports
it on every machine, and the tests run without a GPU. Each `why_no_*` function returns "" when the
part can run, else one sentence saying why not.

Checked statically with `python .ci/trt_typecheck.py`: mypy against tensorrt-stubs (the 10.x API),
and every cuda-python call bound to the signature of the installed cuda-bindings. pycuda and
modelopt ship no stubs, so their imports carry narrow ignores.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cifarkit.core.cli import CommandError, one_line, write_atomic

if TYPE_CHECKING:
    import tensorrt as trt

# builder scratch memory limit; SimpleCNN needs far less, big tactics may want more
WORKSPACE_BYTES = 1 << 30
PRECISIONS = ("fp32", "fp16", "int8")
# before 0.42 every calibration step saw the same data (NVIDIA/Model-Optimizer#794)
MODELOPT_MIN_VERSION = (
    0,
    42,
)
# images per int8 calibration step; ModelOpt reads a dynamic batch as 1 unless told
CALIBRATION_BATCH = 64
INSTALL_HINT = (
    "on a GPU machine: pip install --extra-index-url https://pypi.nvidia.com -r "
    "requirements-trt.txt"
)


class EngineError(CommandError, RuntimeError):
    """TensorRT or CUDA could not parse, build, load or run an engine; the message says which step
    and why."""


# --------------------------------------------------------------------------------------------------
# What this machine has


def why_no_tensorrt() -> str:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not
        return (
            f"the tensorrt package cannot be imported ({type(e).__name__}: {e}); install it "
            f"{INSTALL_HINT}"
        )
    # tensorrt-stubs alone leaves an importable namespace package with no code
    if not hasattr(trt, "Builder"):
        return (
            "the tensorrt found here is only type stubs (no Builder); install the real package "
            f"{INSTALL_HINT}"
        )
    return ""


def why_no_pycuda() -> str:
    try:
        import pycuda.driver  # type: ignore[import-not-found,import-untyped]  # noqa: F401
    except ImportError as e:
        return (
            f"pycuda cannot be imported ({e}); it builds from source against a CUDA toolkit: "
            f"{INSTALL_HINT}"
        )
    return ""


def why_no_cuda_python() -> str:
    try:
        cuda_runtime()
    except ImportError as e:
        return (
            f"cuda-python cannot be imported ({e}); CUDA-graph replay needs it: pip install "
            "cuda-bindings"
        )
    return ""


def why_no_modelopt() -> str:
    try:
        import modelopt  # type: ignore[import-not-found,import-untyped]

        # # noqa: F401
        import modelopt.onnx.quantization  # type: ignore[import-not-found,import-untyped]
    except ImportError as e:
        return (
            "int8 needs NVIDIA ModelOpt for explicit (Q/DQ) quantization and it cannot be "
            f"imported ({e}); install nvidia-modelopt[onnx]>=0.42 {INSTALL_HINT}"
        )
    version = str(getattr(modelopt, "__version__", "0"))
    if _release(version) < MODELOPT_MIN_VERSION:
        return (
            f"nvidia-modelopt {version} calibrates every step on the same images (fixed in 0.42); "
            "pip install 'nvidia-modelopt[onnx]>=0.42'"
        )
    return ""


def _release(version: str) -> tuple[int, int]:
    """(0, 42) for "0.42.0rc1"; (0, 0) for a version string that does not start with two numbers."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def cuda_runtime() -> Any:
    """cuda-python's CUDA runtime module (`cuda.bindings.runtime`); a function so that tests can
    stand one in."""
    from cuda.bindings import runtime  # type: ignore[import-untyped]

    return runtime


def _ints(dims: trt.Dims) -> list[int]:
    return [
        dims[i] for i in range(len(dims))
    ]  # Dims indexes like a sequence but the stubs declare no __iter__


# --------------------------------------------------------------------------------------------------
# Int8: explicit quantization with ModelOpt (TensorRT 10 deprecated implicit calibration and 11
# removed it)


def calibration_shapes(
    input_name: str, images: np.ndarray, batch_size: int = CALIBRATION_BATCH
) -> str:
    """ModelOpt's shape of one calibration step, e.g. "images:64x3x32x32" (fewer images: one step of
    all of them)."""
    return f"{input_name}:" + "x".join(
        str(n) for n in (min(batch_size, len(images)), *images.shape[1:])
    )


def quantize_int8(
    onnx_path: Path, calibration_images: np.ndarray, out_path: Path, input_name: str
) -> None:
    """Write a Q/DQ copy of the fp32 ONNX, with activation ranges calibrated on `calibration_images`
    (N, 3, 32, 32): int8 where ModelOpt quantizes, fp16 elsewhere, fp32 in and out. Raises
    EngineError if ModelOpt fails."""
    from modelopt.onnx.quantization import quantize  # type: ignore[import-not-found,import-untyped]

    try:
        # calibration_shapes: without it ModelOpt reads the dynamic batch as 1 and runs one step per
        # image. "cpu" only: calibration runs through ONNX Runtime, and its CPU provider is the one
        # every install has.
        quantize(
            onnx_path=str(onnx_path),
            quantize_mode="int8",
            calibration_method="entropy",
            calibration_data={
                input_name: np.ascontiguousarray(calibration_images, dtype=np.float32)
            },
            calibration_shapes=calibration_shapes(input_name, calibration_images),
            calibration_eps=["cpu"],
            high_precision_dtype="fp16",
            output_path=str(out_path),
        )
    except Exception as e:  # a third party's failure, whatever its type, is one line for the report
        raise EngineError(
            f"ModelOpt could not quantize {onnx_path} to int8 ({type(e).__name__}: {one_line(e)})"
        ) from e


# --------------------------------------------------------------------------------------------------
# Build


def profile_batches(batch_sizes: list[int]) -> tuple[int, int, int]:
    """(min, opt, max) batch of the engine's optimization profile for the benchmarked `batch_sizes`.

    min is 1, not min(batch_sizes): a data set fed in chunks of the largest size ends with the
    remainder (10,000 test images in chunks of 256 end with 16). opt = max: kernels are tuned for
    the throughput case.
    """
    largest = max(batch_sizes)
    return 1, largest, largest


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    precision: str,
    batch_sizes: list[int],
    gpu: str,
    timing_cache_path: Path,
    workspace_bytes: int = WORKSPACE_BYTES,
) -> dict:
    """Parse the ONNX into a strongly typed network, build an engine for batches
    1..max(batch_sizes), save it and a
    JSON beside it; return the JSON.

    `onnx_path` carries the precision (see the module docstring); `precision` only names it. The
    timing cache is read if present and written back, so a rebuild skips the kernel timing it
    already did.
    """
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    input_tensor = network.get_input(0)
    sample_shape = _ints(input_tensor.shape)[
        1:
    ]  # (3, 32, 32); dimension 0 is the dynamic batch (-1)
    shape_min, shape_opt, shape_max = (
        [batch, *sample_shape] for batch in profile_batches(batch_sizes)
    )
    profile = builder.create_optimization_profile()
    profile.set_shape(
        input_tensor.name, trt.Dims(shape_min), trt.Dims(shape_opt), trt.Dims(shape_max)
    )
    config.add_optimization_profile(profile)

    cache_blob = timing_cache_path.read_bytes() if timing_cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_blob)
    # A cache from another GPU or TensorRT version is refused (False), a damaged one not read
    # (None): start afresh rather than fail later, when the cache is written back.
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        print(
            f"note: {timing_cache_path} is from another GPU or TensorRT version, or damaged; "
            "starting a fresh timing cache",
            flush=True,
        )
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(
            f"TensorRT could not build a {precision} engine from {onnx_path}; its log above says "
            "why"
        )
    build_seconds = time.perf_counter() - started
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(engine_path, bytes(memoryview(serialized)))  # whole or not there, as every output
    built_cache = config.get_timing_cache()
    if built_cache is not None:
        write_atomic(timing_cache_path, bytes(memoryview(built_cache.serialize())))

    info = {
        "precision": precision,
        "tensorrt_version": str(trt.__version__),
        "gpu": gpu,
        "typing": "strongly typed",
        "onnx": str(onnx_path),
        "engine": str(engine_path),
        "engine_bytes": engine_path.stat().st_size,
        "profile": {
            "input": input_tensor.name,
            "min": shape_min,
            "opt": shape_opt,
            "max": shape_max,
        },
        "workspace_bytes": workspace_bytes,
        "timing_cache": str(timing_cache_path) if built_cache else None,
        "build_seconds": round(build_seconds, 2),
    }
    write_atomic(
        engine_path.with_name(engine_path.name + ".json"),
        (json.dumps(info, indent=2) + "\n").encode(),
    )
    return info


# --------------------------------------------------------------------------------------------------
# Run


def cuda_check(result: tuple, call: str) -> Any:
    """cuda-python returns (error, *values): the value (or None) if the error is cudaSuccess, else
    EngineError."""
    cudart = cuda_runtime()
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise EngineError(f"{call} failed: {cudart.cudaGetErrorName(error)[1].decode()}")
    return values[0] if values else None


class TrtRunner:
    """One engine, one execution context, page-locked host buffers and device buffers for the
    largest batch, and optionally a CUDA graph of one enqueue.

    pycuda.autoprimaryctx retains the device's primary context, the same one PyTorch's runtime and
    cuda-python's runtime API use, so all three share a process (pycuda.autoinit would create a
    second context that clashes).
    """

    def __init__(self, engine_path: Path, max_batch_size: int):
        import pycuda.autoprimaryctx  # type: ignore[import-not-found,import-untyped]  # noqa: F401
        import pycuda.driver as cuda  # type: ignore[import-not-found,import-untyped]
        import tensorrt as trt

        self.cuda = cuda
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise EngineError(
                f"TensorRT could not load {engine_path} (built by another TensorRT version or GPU?)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(
                f"{engine_path} has inputs {inputs} and outputs {outputs}; expected one of each"
            )
        self.input_name, self.output_name = inputs[0], outputs[0]
        sample_shape = _ints(self.engine.get_tensor_shape(self.input_name))[1:]
        num_classes = _ints(self.engine.get_tensor_shape(self.output_name))[1]
        in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        # Page-locked host memory: the copies run asynchronously on the stream at full PCIe speed.
        self.max_batch_size = max_batch_size
        self.host_input = cuda.pagelocked_empty((max_batch_size, *sample_shape), in_dtype)
        self.host_output = cuda.pagelocked_empty((max_batch_size, num_classes), out_dtype)
        self.device_input = cuda.mem_alloc(self.host_input.nbytes)
        self.device_output = cuda.mem_alloc(self.host_output.nbytes)
        self.context.set_tensor_address(self.input_name, int(self.device_input))
        self.context.set_tensor_address(self.output_name, int(self.device_output))
        self.stream = cuda.Stream()
        self.compute_start, self.compute_end = cuda.Event(), cuda.Event()
        self.batch_size = 0
        self.graph: Any = None  # cuda-python cudaGraph_t of one enqueue at self.batch_size, or None
        self.graph_exec: Any = None  # its instantiation (cudaGraphExec_t), what a replay launches

    def set_batch(self, images: np.ndarray) -> None:
        """Put a batch (B, 3, 32, 32) into the page-locked input buffer and size the context for
        it."""
        batch_size = len(images)
        if not 1 <= batch_size <= self.max_batch_size:
            raise EngineError(
                f"batch size {batch_size} is outside this runner's 1..{self.max_batch_size}"
            )
        if batch_size != self.batch_size:
            if not self.context.set_input_shape(
                self.input_name, (batch_size, *self.host_input.shape[1:])
            ):
                raise EngineError(
                    f"batch size {batch_size} is outside the engine's optimization profile"
                )
            self.release_graph()  # captured at the old shape
            self.batch_size = batch_size
        self.host_input[:batch_size] = images

    def capture_graph(self) -> None:
        """Record one enqueue at the current batch size as a CUDA graph; `step(use_graph=True)`
        replays it.

        As NVIDIA's TensorRT samples do (demo/Diffusion engine.py): cudaStreamBeginCapture on the
        stream, execute_async_v3, cudaStreamEndCapture, cudaGraphInstantiate.
        """
        cudart, handle = cuda_runtime(), self.stream.handle
        self.release_graph()
        # One plain enqueue first: TensorRT finishes shape-dependent setup there, which a capture
        # must not contain.
        if not self.context.execute_async_v3(handle):
            raise EngineError(f"execute_async_v3 failed at batch size {self.batch_size}")
        self.stream.synchronize()
        cuda_check(
            cudart.cudaStreamBeginCapture(
                handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            ),
            "cudaStreamBeginCapture",
        )
        enqueued = False
        try:
            enqueued = self.context.execute_async_v3(handle)
        finally:
            # End the capture whatever happened: a stream left capturing makes every later call on
            # it fail.
            error, graph = cudart.cudaStreamEndCapture(handle)
            if graph is not None and not (enqueued and error == cudart.cudaError_t.cudaSuccess):
                cudart.cudaGraphDestroy(graph)
        cuda_check((error,), "cudaStreamEndCapture")
        if not enqueued:
            raise EngineError(
                "execute_async_v3 failed while capturing a CUDA graph at batch size "
                f"{self.batch_size}"
            )
        self.graph = graph
        self.graph_exec = cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")

    def release_graph(self) -> None:
        """Destroy the captured graph and its instantiation, if any (a new batch size or a
        recapture)."""
        if self.graph is None and self.graph_exec is None:
            return
        cudart = cuda_runtime()
        if self.graph_exec is not None:
            cuda_check(cudart.cudaGraphExecDestroy(self.graph_exec), "cudaGraphExecDestroy")
        if self.graph is not None:
            cuda_check(cudart.cudaGraphDestroy(self.graph), "cudaGraphDestroy")
        self.graph = self.graph_exec = None

    def step(self, use_graph: bool = False) -> float:
        """Copy in, compute, copy out, wait; return the GPU compute seconds (CUDA events around the
        enqueue only)."""
        b, cuda = self.batch_size, self.cuda
        if use_graph and self.graph_exec is None:
            raise EngineError(
                f"no CUDA graph captured at batch size {b}: call capture_graph() first"
            )
        cuda.memcpy_htod_async(self.device_input, self.host_input[:b], self.stream)
        self.compute_start.record(self.stream)
        if use_graph:
            cuda_check(
                cuda_runtime().cudaGraphLaunch(self.graph_exec, self.stream.handle),
                "cudaGraphLaunch",
            )
        elif not self.context.execute_async_v3(self.stream.handle):
            raise EngineError(f"execute_async_v3 failed at batch size {b}")
        self.compute_end.record(self.stream)
        cuda.memcpy_dtoh_async(self.host_output[:b], self.device_output, self.stream)
        self.stream.synchronize()
        return float(self.compute_end.time_since(self.compute_start)) / 1000

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits (B, classes) as float32 for a batch of normalized images (B, 3, 32, 32)."""
        self.set_batch(images)
        self.step()
        return self.host_output[: self.batch_size].astype(np.float32)
