"""Run mypy on the TensorRT layer against tensorrt-stubs, whose generated .pyi files do not parse as shipped.

    pip install --no-deps tensorrt-stubs==10.13.0.35.1     # the stubs only; the real tensorrt is not needed
    python trt_typecheck.py                                # mypy trt_runtime.py trt_export.py
    python trt_typecheck.py trt_runtime.py                 # just the TensorRT/pycuda layer

tensorrt-stubs 10.13.0.35.1 (pybind11-stubgen output, the only release) stops mypy with syntax errors before it
checks a line: parameters named `in` (a keyword) and a parameter without a default after defaulted ones
(`add_scale_nd(..., channel_axis)`); its folders also lack the py.typed marker, so mypy would not read them anyway.
This copies the .pyi files to a temporary folder with exactly those faults fixed, puts the folder on MYPYPATH
and runs mypy with errors *inside* the stubs silenced; the code that calls TensorRT is checked in full.
Modules the files import (part_2_cifar.py, torch) are read for types, their own errors not reported
(follow_imports = silent): they are checked where they are owned.
Exit status is mypy's.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
FIXES = (
    (re.compile(r"([(, ])in: "), r"\1in_: "),  # `def f(self, in: list[...])` -> `in_`
    (re.compile(r", channel_axis: int\)"), ", channel_axis: int = ...)"),  # add_scale_nd's non-default after defaults
)
MYPY_CONFIG = """[mypy]
follow_imports = silent
[mypy-tensorrt.*,tensorrt_bindings.*]
ignore_errors = True
[mypy-tensorrt_libs]
ignore_missing_imports = True
"""


def installed_stub_folder(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: {package} stubs not found: pip install --no-deps tensorrt-stubs==10.13.0.35.1")
    return Path(next(iter(spec.submodule_search_locations)))


def write_fixed_stubs(root: Path) -> None:
    for package in STUB_PACKAGES:
        source = installed_stub_folder(package)
        (root / package).mkdir(parents=True)
        for pyi in source.glob("*.pyi"):
            text = pyi.read_text()
            for pattern, replacement in FIXES:
                text = pattern.sub(replacement, text)
            (root / package / pyi.name).write_text(text)


def main(argv: list[str]) -> int:
    files = argv or ["trt_runtime.py", "trt_export.py"]
    with tempfile.TemporaryDirectory(prefix="trt-stubs-") as tmp:
        write_fixed_stubs(Path(tmp) / "stubs")
        config = Path(tmp) / "mypy.ini"
        config.write_text(MYPY_CONFIG)
        env = dict(os.environ, MYPYPATH=str(Path(tmp) / "stubs"))
        return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), *files], env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
