"""The export (trt_export.py): ONNX and TensorRT, checked against PyTorch and timed.

backends.py          the backends in one registry, and the ONNX export
bench.py             the benchmark's rows, accuracy scoring, tables and plot
tensorrt_runtime.py  TensorRT (10 and 11, strongly typed) and pycuda inference, CUDA graphs
"""
