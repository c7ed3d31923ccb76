"""Check the TensorRT layer statically: mypy against tensorrt-stubs, whose generated .pyi files do
not parse as shipped, and every cuda-python call against the installed cuda-bindings, which ships no
stubs at all.

    pip install --no-deps tensorrt-stubs==10.13.0.35.1  # the stubs only, not tensorrt itself
    python .ci/trt_typecheck.py                         # the TensorRT layer and its callers
    python .ci/trt_typecheck.py cifarkit/export/tensorrt_runtime.py   # the TensorRT layer alone

tensorrt-stubs 10.13.0.35.1 (pybind11-stubgen output, the only release) stops mypy with syntax
errors before it checks a line: parameters named `in` (a keyword) and a parameter without a default
after defaulted ones (`add_scale_nd(..., channel_axis)`); its folders also lack the py.typed marker,
so mypy would not read them anyway. This copies the .pyi files to a temporary folder with exactly
those faults fixed, puts the folder on MYPYPATH and runs mypy with errors *inside* the stubs
silenced; the code that calls TensorRT is checked in full. Modules the files import
(part_2_cifar.py, cifarkit's core, torch) are read for types, their own errors not reported
(follow_imports = silent): they are checked where they are owned. File names are relative to the
repository's root, where it runs whatever the current folder.

cuda-python (`cuda.bindings.runtime`, installed with torch's CUDA 13 wheels, no GPU needed to
import) is Cython with real signatures: each `cudart.NAME(...)` call in the checked files must name
a function that exists and bind to its signature, and each `cudart.Enum.member` must exist. Exit
status: mypy's, else 1 if a cuda-python call does not fit.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
FIXES = (
    (re.compile(r"([(, ])in: "), r"\1in_: "),  # `def f(self, in: list[...])` -> `in_`
    # add_scale_nd's non-default after defaults
    (
        re.compile(r", channel_axis: int\)"),
        ", channel_axis: int = ...)",
    ),
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
        raise SystemExit(
            f"error: {package} stubs not found: pip install --no-deps tensorrt-stubs==10.13.0.35.1"
        )
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


def cuda_python_problems(
    path: Path, runtime: object, alias: str = "cudart"
) -> tuple[int, list[str]]:
    """(how many `alias.X` uses were checked, one line per use in `path` that the real cuda-python
    lacks: a missing function or enum member, or a call that does not bind to the signature;
    arguments stand in as placeholders, so only their number and names are checked)."""
    uses, problems = 0, []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == alias
        ):
            uses += 1
            if not hasattr(runtime, node.attr):
                problems.append(
                    f"{path}:{node.lineno}: {alias}.{node.attr} does not exist in "
                    "cuda.bindings.runtime"
                )
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == alias
        ):
            if not hasattr(getattr(runtime, node.value.attr, None), node.attr):
                problems.append(
                    f"{path}:{node.lineno}: {alias}.{node.value.attr}.{node.attr} does not exist"
                )
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == alias
            and callable(function := getattr(runtime, node.func.attr, None))
        ):
            try:
                inspect.signature(function).bind(
                    *node.args, **{k.arg: k.value for k in node.keywords if k.arg}
                )
            except TypeError as e:
                problems.append(
                    f"{path}:{node.lineno}: {alias}.{node.func.attr}{inspect.signature(function)}: "
                    f"{e}"
                )
    return uses, problems


def check_cuda_python(files: list[str]) -> int:
    try:
        from cuda.bindings import runtime
    except ImportError as e:
        print(
            f"error: cuda-python cannot be imported ({e}): pip install cuda-bindings",
            file=sys.stderr,
        )
        return 1
    results = [cuda_python_problems(Path(name), runtime) for name in files]
    problems = [line for _, lines in results for line in lines]
    for line in problems:
        print(line, file=sys.stderr)
    print(
        f"cuda-python: {sum(uses for uses, _ in results)} uses of cudart checked against "
        f"cuda-bindings {version('cuda-bindings')}: {len(problems) or 'no'} problem(s)"
    )
    return 1 if problems else 0


def version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "(version unknown)"


ROOT = Path(__file__).resolve().parents[1]  # the repository
FILES = [
    "cifarkit/export/tensorrt_runtime.py",
    "cifarkit/export/backends.py",
    "cifarkit/export/bench.py",
    "trt_export.py",
]  # the TensorRT layer and its callers


def main(argv: list[str]) -> int:
    files = [str(Path(name).resolve()) for name in argv] or FILES
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix="trt-stubs-") as tmp:
        write_fixed_stubs(Path(tmp) / "stubs")
        config = Path(tmp) / "mypy.ini"
        config.write_text(MYPY_CONFIG)
        env = dict(os.environ, MYPYPATH=str(Path(tmp) / "stubs"))
        mypy = subprocess.run(
            [sys.executable, "-m", "mypy", "--config-file", str(config), *files], env=env
        ).returncode
    return mypy or check_cuda_python(files)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
