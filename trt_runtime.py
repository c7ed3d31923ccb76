"""The TensorRT and pycuda layer of trt_export.py: build an engine from ONNX, run it, time it. Nothing else.

Targets TensorRT 10.x and 11.x through the name-based API both share (`build_serialized_network`,
`set_input_shape`, `set_tensor_address`, `execute_async_v3`). Precision differs between them:

    TensorRT 10.x  fp16: the fp32 ONNX plus BuilderFlag.FP16; int8: ModelOpt's Q/DQ ONNX plus FP16 and INT8 flags
    TensorRT 11.x  no precision flags, every network is strongly typed: fp16 comes from an fp16 ONNX and int8 from
                   ModelOpt's Q/DQ ONNX (the caller passes the right file; `uses_precision_flags` says which)

`tensorrt`, `pycuda` and `modelopt` are imported inside the functions that use them, so importing this file needs
only numpy: trt_export.py imports it on every machine, and the tests run without a GPU. Each `why_no_*` function
returns "" when the part can run, else one sentence saying why not.

Type-checked against tensorrt-stubs (the 10.x API) with `python trt_typecheck.py`, which repairs the stubs' syntax
first; pycuda and modelopt ship no stubs, so their imports carry narrow ignores.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorrt as trt

WORKSPACE_BYTES = 1 << 30  # builder scratch memory limit; SimpleCNN needs far less, big tactics may want more
PRECISIONS = ("fp32", "fp16", "int8")
INSTALL_HINT = "on a GPU machine: pip install --extra-index-url https://pypi.nvidia.com -r requirements-trt.txt"


class EngineError(RuntimeError):
    """TensorRT could not parse, build or load an engine; the message says which step and why."""


# ----------------------------------------------------------------------------------------------------------------------
# What this machine has


def why_no_tensorrt() -> str:
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not
        return f"the tensorrt package cannot be imported ({type(e).__name__}: {e}); install it {INSTALL_HINT}"
    if not hasattr(trt, "Builder"):  # tensorrt-stubs alone leaves an importable namespace package with no code
        return f"the tensorrt found here is only type stubs (no Builder); install the real package {INSTALL_HINT}"
    return ""


def why_no_pycuda() -> str:
    try:
        import pycuda.driver  # type: ignore[import-not-found,import-untyped]  # noqa: F401
    except ImportError as e:
        return f"pycuda cannot be imported ({e}); it builds from source against a CUDA toolkit: {INSTALL_HINT}"
    return ""


def why_no_modelopt() -> str:
    try:
        import modelopt.onnx.quantization  # type: ignore[import-not-found,import-untyped]  # noqa: F401
    except ImportError as e:
        return (f"int8 needs NVIDIA ModelOpt for explicit (Q/DQ) quantization and it cannot be imported ({e}); "
                f"install nvidia-modelopt[onnx] {INSTALL_HINT}")
    return ""


def tensorrt_version() -> str:
    import tensorrt as trt

    return str(trt.__version__)


def uses_precision_flags() -> bool:
    """True on TensorRT 10 (BuilderFlag.FP16/INT8 exist); False on 11, where networks are always strongly typed."""
    import tensorrt as trt

    return hasattr(trt.BuilderFlag, "FP16")


def _ints(dims: trt.Dims) -> list[int]:
    return [dims[i] for i in range(len(dims))]  # Dims indexes like a sequence but the stubs declare no __iter__


# ----------------------------------------------------------------------------------------------------------------------
# Int8: explicit quantization with ModelOpt (TensorRT 10 deprecated implicit calibration and 11 removed it)


def quantize_int8(onnx_path: Path, calibration_images: np.ndarray, out_path: Path, input_name: str) -> None:
    """Write a Q/DQ copy of the fp32 ONNX, with activation ranges calibrated on `calibration_images` (N, 3, 32, 32)."""
    from modelopt.onnx.quantization import quantize  # type: ignore[import-not-found,import-untyped]

    # "cpu" only: calibration runs through ONNX Runtime, and its CPU provider is the one every install has.
    quantize(onnx_path=str(onnx_path), quantize_mode="int8", calibration_method="entropy",
             calibration_data={input_name: np.ascontiguousarray(calibration_images, dtype=np.float32)},
             calibration_eps=["cpu"], output_path=str(out_path))


# ----------------------------------------------------------------------------------------------------------------------
# Build


def build_engine(onnx_path: Path, engine_path: Path, precision: str, batch_sizes: list[int], gpu: str,
                 timing_cache_path: Path, workspace_bytes: int = WORKSPACE_BYTES) -> dict:
    """Parse the ONNX, build an engine for batch sizes min..max, save it and a JSON beside it; return the JSON.

    `onnx_path` must already carry the precision where TensorRT needs it to (see the module docstring).
    The timing cache is read if present and written back, so a rebuild skips the kernel timing it already did.
    """
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # 10.x: always explicit batch; 11.x: always strongly typed
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT could not parse {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    flags = uses_precision_flags()
    if flags and precision in ("fp16", "int8"):  # int8 keeps fp16 for the layers ModelOpt left unquantized
        config.set_flag(trt.BuilderFlag.FP16)
    if flags and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)

    input_tensor = network.get_input(0)
    sample_shape = _ints(input_tensor.shape)[1:]  # (3, 32, 32); dimension 0 is the dynamic batch (-1)
    profile = builder.create_optimization_profile()
    shape_min, shape_max = [min(batch_sizes), *sample_shape], [max(batch_sizes), *sample_shape]
    # opt = max: kernels are tuned for the throughput case; small batches still run, a little less tuned.
    profile.set_shape(input_tensor.name, trt.Dims(shape_min), trt.Dims(shape_max), trt.Dims(shape_max))
    config.add_optimization_profile(profile)

    cache = config.create_timing_cache(timing_cache_path.read_bytes() if timing_cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)  # a cache from another GPU or version is not reused

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f"TensorRT could not build a {precision} engine from {onnx_path}; its log above says why")
    build_seconds = time.perf_counter() - started
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    engine_path.write_bytes(memoryview(serialized))
    timing_cache_path.write_bytes(memoryview(config.get_timing_cache().serialize()))

    info = {"precision": precision, "tensorrt_version": str(trt.__version__), "gpu": gpu,
            "typing": "builder flags (TensorRT 10)" if flags else "strongly typed (TensorRT 11)",
            "onnx": str(onnx_path), "engine": str(engine_path), "engine_bytes": engine_path.stat().st_size,
            "profile": {"input": input_tensor.name, "min": shape_min, "opt": shape_max, "max": shape_max},
            "workspace_bytes": workspace_bytes, "timing_cache": str(timing_cache_path),
            "build_seconds": round(build_seconds, 2)}
    engine_path.with_name(engine_path.name + ".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


# ----------------------------------------------------------------------------------------------------------------------
# Run


class TrtRunner:
    """One engine, one execution context, page-locked host buffers and device buffers for the largest batch.

    pycuda.autoprimaryctx retains the device's primary context, the same one PyTorch's runtime uses, so torch and
    this runner share a process (pycuda.autoinit would create a second context that clashes with PyTorch's).
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
            raise EngineError(f"TensorRT could not load {engine_path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineError(f"{engine_path} has inputs {inputs} and outputs {outputs}; expected one of each")
        self.input_name, self.output_name = inputs[0], outputs[0]
        sample_shape = _ints(self.engine.get_tensor_shape(self.input_name))[1:]
        num_classes = _ints(self.engine.get_tensor_shape(self.output_name))[1]
        in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.input_name)))
        out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.output_name)))
        # Page-locked host memory: the copies run asynchronously on the stream at full PCIe speed.
        self.host_input = cuda.pagelocked_empty((max_batch_size, *sample_shape), in_dtype)
        self.host_output = cuda.pagelocked_empty((max_batch_size, num_classes), out_dtype)
        self.device_input = cuda.mem_alloc(self.host_input.nbytes)
        self.device_output = cuda.mem_alloc(self.host_output.nbytes)
        self.context.set_tensor_address(self.input_name, int(self.device_input))
        self.context.set_tensor_address(self.output_name, int(self.device_output))
        self.stream = cuda.Stream()
        self.compute_start, self.compute_end = cuda.Event(), cuda.Event()
        self.batch_size = 0
        self.graph = None  # an instantiated CUDA graph of one enqueue at self.batch_size, or None

    def set_batch(self, images: np.ndarray) -> None:
        """Put a batch (B, 3, 32, 32) into the page-locked input buffer and size the context for it."""
        batch_size = len(images)
        self.host_input[:batch_size] = images
        if batch_size != self.batch_size:
            if not self.context.set_input_shape(self.input_name, (batch_size, *self.host_input.shape[1:])):
                raise EngineError(f"batch size {batch_size} is outside the engine's optimization profile")
            self.batch_size, self.graph = batch_size, None

    def capture_graph(self) -> None:
        """Record one enqueue at the current batch size as a CUDA graph; `step(use_graph=True)` replays it."""
        # One plain enqueue first: TensorRT finishes shape-dependent setup there, which a capture must not contain.
        self.context.execute_async_v3(self.stream.handle)
        self.stream.synchronize()
        self.stream.begin_capture()
        self.context.execute_async_v3(self.stream.handle)
        self.graph = self.stream.end_capture().instantiate()

    def step(self, use_graph: bool = False) -> float:
        """Copy in, compute, copy out, wait; return the GPU compute seconds (CUDA events around the enqueue only)."""
        b, cuda = self.batch_size, self.cuda
        cuda.memcpy_htod_async(self.device_input, self.host_input[:b], self.stream)
        self.compute_start.record(self.stream)
        if use_graph and self.graph is not None:
            self.graph.launch(self.stream)
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
        return self.host_output[:self.batch_size].astype(np.float32)
