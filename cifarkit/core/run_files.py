"""What a run folder holds, how it is written and read, and when it can be continued.

    <run>/best.pt        BEST_CHECKPOINT: the epoch with the highest val_accuracy (what is exported)
    <run>/last.pt        LAST_CHECKPOINT: the last finished epoch and its optimizer (for a resume)
    <run>/summary.json   SUMMARY_FILE: status, config, best_val_accuracy, cost, learning curves

A crash never leaves half a file: everything is made in memory and written by cli.write_atomic
(a temporary file renamed over the old one); a write that fails is cli.FileFailed naming the file.
Checkpoints are loaded as data only. A summary is read by load_summary alone (read_summary: None
where it is unfit), which checks its types and ranges (SUMMARY_SHAPE: a damaged one is SummaryError,
one line naming the file and the value), and the runs under a folder are found by summaries_under
alone (a damaged summary a note). A run is itself however its folder is named or copied
(run_identity: config, seed and data; distinct_runs counts a copy once). The data a run trains on
is identified by its arrays (data_identity), recorded in its checkpoints and summary: a resume or an
export on other data is refused (check_checkpoint_data), and a run's val_accuracy compares only
with runs of the same data (of_one_data_set). A resume needs what RESUME_KEYS names in last.pt,
best.pt beside it, and a run that has not ended (check_resumable); the run folder is held by one
process (hold_run_folder).
Elsewhere: which checkpoint to export is choice.py's; one process at a time writes a folder
(folders.own_folder); figures are figures.py's, the machine's facts machine.py's, a model's cost
cost.py's.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import math
import pickle
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn as nn

from cifarkit.core.cli import (
    ANSI_ESCAPE,
    DAMAGED_TEXT,
    EXIT_BAD_INPUT,
    EXIT_DONE,
    CommandError,
    FileFailed,
    NotARegularFile,
    one_line,
    read_regular,
    read_regular_text,
    write_atomic,
)
from cifarkit.core.folders import own_folder
from cifarkit.core.settings import ConfigError, Settings, shown

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
SUMMARY_FILE = "summary.json"
# a run with this status has its result; "diverged" is a real outcome of a config
ENDED = (
    "finished",
    "diverged",
)
# What makes two runs' val_accuracy comparable: the same images (SHA-256 of the decoded training and
# test arrays) and validation split, as data_identity records them (same_data's keys).
DATA_KEYS = ("train_sha256", "test_sha256", "split_seed", "val_size")
T = TypeVar("T")


def save_atomic(obj: object, path: Path) -> None:
    """torch.save made in memory, then written by write_atomic: a full disk is a FileFailed naming
    `path` (not torch's "unexpected pos"), and never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


class CheckpointError(CommandError, RuntimeError):
    """A checkpoint that is missing, unreadable or not one of ours; the message names the file."""

    exit_code = EXIT_BAD_INPUT


class _NumpyDtype:
    """Stands in for numpy.dtype while a checkpoint is read: it keeps the dtype's name and byte
    order and runs no numpy code on what the file says (pickle calls numpy.dtype('f8', False, True),
    then __setstate__)."""

    def __init__(self, name: object = None, align: object = False, copy: object = True):
        self.name, self.order = name, "="

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.order = state[1]


def _numpy_number(dtype: object, data: object = None) -> bool | int | float | complex:
    """A pickled numpy scalar (numpy.float64(3.5), np.int64 ...) as the Python number it holds. Only
    plain numbers (bool, int, uint, float, complex) are decoded, from the raw bytes with a fresh
    dtype; anything else is refused."""
    import numpy as np

    try:
        kind = (
            np.dtype(dtype.name)
            if isinstance(dtype, _NumpyDtype) and isinstance(dtype.name, str)
            else None
        )
    except TypeError:
        kind = None
    if (
        kind is None
        or kind.kind not in "biufc"
        or not isinstance(data, bytes)
        or len(data) != kind.itemsize
    ):
        raise pickle.UnpicklingError(f"a numpy scalar of dtype {getattr(dtype, 'name', dtype)!r}")
    order = dtype.order if dtype.order in ("<", ">") else "="
    return np.frombuffer(data, dtype=kind.newbyteorder(order))[0].item()


# Metrics saved from numpy (a numpy.float64 val_accuracy) are common in checkpoints of other tools:
# numpy scalars of plain number types load as Python numbers. The names are where numpy 1 and 2
# pickle them from.
NUMPY_NUMBERS = [
    (_numpy_number, "numpy.core.multiarray.scalar"),
    (_numpy_number, "numpy._core.multiarray.scalar"),
    (_NumpyDtype, "numpy.dtype"),
]


def _refused_types(path: Path, error: BaseException) -> str:
    """What weights_only refused in `path`: the globals PyTorch's own scan of the file names, else
    the name in its message, else the message's last line (what a stand-in above refused)."""
    try:
        with torch.serialization.safe_globals(NUMPY_NUMBERS):
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # the scan is a second opinion; the error's own text is the fallback
        names = []
    text = ANSI_ESCAPE.sub("", str(error))
    names = names or re.findall(r"GLOBAL (\S+) was not an allowed global", text)
    names = names or re.findall(r"whose module (\S+) is blocked", text)
    if names:
        return ", ".join(sorted(set(names)))  # the scan returns a set: one order for every process
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.startswith("Check the doc")
    ]
    return lines[-1] if lines else type(error).__name__


def load_checkpoint(path: Path, needs: tuple[str, ...] = ("model", "config")) -> dict:
    """Load a checkpoint as data only (weights_only=True: a checkpoint must not run code) and check
    its keys.

    Tensors, Python containers and numbers, and numpy scalars of number types (returned as Python
    numbers) load; anything else raises CheckpointError naming the refused types. The run's state
    beside the weights is checked as a summary's is (checkpoint_problem). Every error is one line
    naming the file.
    """
    path = Path(path)
    # The file is read here and parsed from memory: an OSError then is the disk's (a permission, an
    # I/O error: FileFailed), and whatever torch raises is the bytes' fault. Read by path, torch's
    # zip reader fails on a file cut below ~64 KiB with OSError(EINVAL), as if the disk failed.
    try:
        data = read_regular(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except NotARegularFile as e:
        raise CheckpointError(f"checkpoint {e}") from None
    except OSError as e:  # there but unreadable (permission, an I/O error): not the file's fault
        raise FileFailed(e, "read", path) from None
    try:
        with torch.serialization.safe_globals(NUMPY_NUMBERS):
            checkpoint = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds {_refused_types(path, e)}, which a checkpoint may not hold (it is "
            "loaded as plain data, so that it cannot run code): save tensors and Python numbers"
        ) from None
    # zip/EOF/runtime errors, an OSError of a seek past the start: all the bytes' fault
    except Exception as e:
        raise CheckpointError(
            f"{path} is truncated or corrupt ({type(e).__name__}: {one_line(e)})"
        ) from None
    missing = [key for key in needs if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} is not a part_2_cifar checkpoint: it lacks {', '.join(missing)}"
        )
    if (problem := checkpoint_problem(checkpoint) or odd_tensor(checkpoint)) is not None:
        raise CheckpointError(f"{path} is damaged: its {problem}")
    return checkpoint


def odd_tensor(checkpoint: dict) -> str | None:
    """The first tensor in a loaded checkpoint (at any depth of its dicts and lists) that is not a
    plain one: strided (not sparse), not quantised, with its data in host memory (map_location
    moved every device's there; a meta tensor has no data). Such a tensor is what this project
    saves; any other makes torch fail later with a traceback, or allocate what is not there. As
    "<where> is a <what> tensor, not a dense one in memory"; None if every tensor is plain."""
    found, seen = [("", checkpoint)], set()
    while found:  # a walk without recursion: a deeply nested file does not overflow the stack
        where, value = found.pop()
        if id(value) in seen:  # pickle's memo may share a list, or put one inside itself
            continue
        seen.add(id(value))
        items = (
            value.items()
            if isinstance(value, dict)
            else enumerate(value)
            if isinstance(value, (list, tuple))
            else ()
        )
        found += [(f"{where}.{shown(key)}" if where else shown(key), item) for key, item in items]
        if isinstance(value, torch.Tensor) and (
            value.layout != torch.strided or value.is_meta or value.is_quantized
        ):
            what = "meta" if value.is_meta else str(value.layout).removeprefix("torch.")
            what = "quantized" if value.is_quantized else what
            return f"{where} is a {what} tensor, not a dense one in memory"
    return None


# Prefixes PyTorch's own wrappers put before every parameter name: DataParallel,
# DistributedDataParallel and swa_utils.AveragedModel ("module."), torch.compile ("_orig_mod.");
# they nest in either order.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def without_wrapper_prefixes(weights: dict) -> dict:
    """A copy of a state dict with the prefixes of WRAPPER_PREFIXES removed (and AveragedModel's
    n_averaged)."""
    weights = copy.copy(weights)  # an OrderedDict keeps its _metadata, which load_state_dict reads
    while weights:
        prefix = next(
            (
                p
                for p in WRAPPER_PREFIXES
                if all(k.startswith(p) for k in weights if k != "n_averaged")
            ),
            None,
        )
        if prefix is None:
            break
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(weights, prefix)
        weights.pop("n_averaged", None)
    return weights


def first_nonfinite(tensors: dict) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None; one host
    sync."""
    floats = {
        name: t
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    }
    if not floats:
        return None
    finite = torch.stack([torch.isfinite(t).all() for t in floats.values()])
    if bool(finite.all()):
        return None
    return next(name for name, ok in zip(floats, finite.tolist(), strict=True) if not ok)


def _named(names: list[str], tensors: dict) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"{names[0]} {list(tensors[names[0]].shape)}{more}"


def load_weights(model: nn.Module, weights: object, path: Path) -> None:
    """Load a checkpoint's state dict into `model`, wrapper prefixes removed. CheckpointError, one
    line naming `path`: not a dict of tensors; the first missing and unexpected names and differing
    shapes; a NaN or inf."""
    if not isinstance(weights, dict) or not all(
        isinstance(name, str) and isinstance(t, torch.Tensor) for name, t in weights.items()
    ):
        raise CheckpointError(f"{path}: its 'model' is not a state dict (text names -> tensors)")
    weights = without_wrapper_prefixes(weights)
    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    reshaped = [
        name for name in expected if name in weights and weights[name].shape != expected[name].shape
    ]
    if missing or unexpected or reshaped:
        parts = [f"missing {_named(missing, expected)}"] if missing else []
        parts += [f"unexpected {_named(unexpected, weights)}"] if unexpected else []
        if reshaped:
            more = f" (and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ""
            parts.append(
                f"{reshaped[0]} is {list(weights[reshaped[0]].shape)} in the file, "
                f"{list(expected[reshaped[0]].shape)} in the model{more}"
            )
        raise CheckpointError(
            f"{path} does not fit the SimpleCNN its config describes: {'; '.join(parts)}"
        )
    bad = first_nonfinite(weights)
    if bad is not None:
        raise CheckpointError(
            f"{path} holds non-finite weights (NaN or inf in {bad}): the run that wrote it diverged"
        )
    model.load_state_dict(weights)


def to_cpu(obj: object) -> object:
    """A copy of nested dicts/lists with every tensor cloned to host memory: a snapshot training
    cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(value) for value in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# Writing a run's checkpoints


class Snapshots:
    """A run's newest end-of-epoch checkpoints (file name -> checkpoint), kept in host memory and
    written into its folder by save(): as often as the trainer asks, and before an error or a
    signal ends the run, so that a write never costs a step. The folder is made if missing.

    A folder that vanished meanwhile (a /tmp cleaner, rm -rf runs/*) is made again and gets every
    snapshot in memory, with a note. A write that fails is cli.FileFailed saying which epoch the
    files on disk hold (on_disk); later saves do nothing, the files on disk being what they are.
    """

    def __init__(self, run_dir: Path, epoch: int):
        # the last finished epoch (resumed: last.pt's)
        self.run_dir, self.epoch = (
            Path(run_dir),
            epoch,
        )
        self.epoch_on_disk = epoch  # what last.pt holds
        self.checkpoints: dict[str, dict] = {}
        self.unsaved: set[str] = set()
        self.failed = False
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FileFailed(e, "make the run folder", run_dir) from None

    def keep(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        config: dict,
        data: dict,
        state: dict,
        best: bool,
    ) -> None:
        """Keep the epoch that just finished until the next save: as last.pt (`state`: the
        trainer's epoch, history, best so far and seconds; RESUME_KEYS with the model, optimizer
        and config), and as best.pt too if it is the `best` so far. `data`: the data identity."""
        epoch = state["epoch"]
        if best:
            self.checkpoints[BEST_CHECKPOINT] = {
                "model": to_cpu(model.state_dict()),
                "config": config,
                "val_accuracy": state["best_val_accuracy"],
                "epoch": epoch,
                "data": data,
            }
            self.unsaved.add(BEST_CHECKPOINT)
        self.checkpoints[LAST_CHECKPOINT] = to_cpu(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "config": config,
                "data": data,
                **state,
            }
        )
        self.unsaved.add(LAST_CHECKPOINT)
        self.epoch = epoch

    def save(self) -> None:
        """Write the checkpoints not yet on disk."""
        if self.failed:  # tried already: the files on disk are what they are
            return
        try:
            self.write(self.unsaved)
        except FileFailed as e:
            self.failed = True
            e.kept = f"the training stopped after epoch {self.epoch}; {self.on_disk()}"
            raise
        if LAST_CHECKPOINT in self.checkpoints:
            self.epoch_on_disk = self.checkpoints[LAST_CHECKPOINT]["epoch"]

    def write(self, names: set[str]) -> None:
        """Write the checkpoints `names` (removing each from it), or every checkpoint into a folder
        that vanished, made again. FileFailed if a write fails otherwise."""
        for attempt in (1, 2):
            try:
                if not self.run_dir.is_dir():
                    try:
                        self.run_dir.mkdir(parents=True, exist_ok=True)
                    except OSError as e:
                        raise FileFailed(e, "make the run folder", self.run_dir) from None
                    if self.checkpoints:
                        kept = " and ".join(sorted(self.checkpoints))
                        print(
                            f"note: the run folder {self.run_dir} vanished while the run went on "
                            f"(deleted?): made it again, with {kept} of the newest epoch, kept in "
                            "memory",
                            flush=True,
                        )
                    names.update(self.checkpoints)
                for name in sorted(names):
                    save_atomic(self.checkpoints[name], self.run_dir / name)
                    names.discard(name)
                return
            except FileFailed:
                if attempt == 2 or self.run_dir.is_dir():
                    raise

    def write_end(self, write: Callable[[], T]) -> T:
        """write() (the run's end: its summary and curves) and what it returns. A folder that
        vanished meanwhile is made again with every checkpoint, and write() tried once more; a
        failure says which epoch the checkpoints on disk hold."""
        for attempt in (1, 2):
            try:
                return write()
            except FileFailed as e:
                if attempt == 2 or self.run_dir.is_dir():
                    e.kept = (
                        f"the training ended after epoch {self.epoch} but its summary is not "
                        f"written; {self.on_disk()}"
                    )
                    raise
            self.write(set(self.checkpoints))  # the folder vanished: made again, every checkpoint

    def on_disk(self) -> str:
        """Which epoch the run folder's checkpoints hold: part of a write failure's line."""
        last = self.run_dir / LAST_CHECKPOINT
        if self.epoch_on_disk and last.is_file():
            return f"{last} holds epoch {self.epoch_on_disk}"
        return "no last.pt of this run is on disk"


# --------------------------------------------------------------------------------------------------
# Runs: the one reader of a summary, the one walk over a runs folder

MAX_SECONDS = 1e9  # a run's wall time, ~32 years: more is a damaged file (past datetime's range)


class SummaryError(CommandError, ValueError):
    """A summary.json that cannot be read or is damaged (a wrong type, a number out of range); the
    message names the file and what is wrong."""

    exit_code = EXIT_BAD_INPUT


def finite_number(value: object) -> bool:
    """A number (not a bool) a float holds finitely: a 400-digit integer is not one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int past float's range
        return False


def _between(low: float, high: float = math.inf, integral: bool = False) -> Callable:
    def check(value: object) -> bool:
        whole = isinstance(value, int) or not integral
        return finite_number(value) and whole and low <= value <= high

    return check


def _or_none(check: Callable) -> Callable:
    return lambda value: value is None or check(value)


def _of(kind: type) -> Callable:
    return lambda value: isinstance(value, kind)


_PERCENT = ("a percentage in [0, 100]", _between(0, 100))
_COUNT = ("a whole number >= 0", _between(0, integral=True))
_TEXT = ("text", _of(str))
# What each key of a summary.json must be where present (older versions wrote fewer keys): what
# part_2_cifar.finish_run writes, as the commands read it. "history" is checked row by row.
SUMMARY_SHAPE = {
    "status": _TEXT,
    "error": _TEXT,
    "config": ("a dict of settings", _of(dict)),
    "best_val_accuracy": ("a percentage in [0, 100] or null", _or_none(_PERCENT[1])),
    "best_epoch": ("a whole number >= 0 or null", _or_none(_COUNT[1])),
    "epochs_completed": _COUNT,
    "test_accuracy": ("a percentage in [0, 100] or null", _or_none(_PERCENT[1])),
    "test_loss": ("a number >= 0 or null", _or_none(_between(0))),
    "train_images_per_second": ("a number >= 0 or null", _or_none(_between(0))),
    "total_seconds": (f"seconds in [0, {MAX_SECONDS:g}]", _between(0, MAX_SECONDS)),
    "device": _TEXT,
    "versions": ("a dict", _of(dict)),
    "parameters": _COUNT,
    "flops_per_image": ("a number > 0", lambda v: _between(0)(v) and v > 0),
    "latency_ms": (
        "a dict of batch size -> milliseconds >= 0",
        lambda v: isinstance(v, dict) and all(map(_between(0), v.values())),
    ),
    "latency_device": _TEXT,
}
# A history row (one epoch: part_2_cifar.train's metrics), each key where present
HISTORY_ROW_SHAPE = {
    "epoch": ("a whole number >= 1", _between(1, integral=True)),
    "train_loss": ("a number >= 0", _between(0)),
    "train_accuracy": _PERCENT,
    "val_loss": ("a number >= 0", _between(0)),
    "val_accuracy": _PERCENT,
    "learning_rate": ("a number >= 0", _between(0)),
    "epoch_seconds": (f"seconds in [0, {MAX_SECONDS:g}]", _between(0, MAX_SECONDS)),
    "train_images_per_second": ("a number >= 0", _between(0)),
}
# The run's state in best.pt (val_accuracy, epoch) and last.pt (RESUME_KEYS), each key where present
CHECKPOINT_SHAPE = {
    "epoch": _COUNT,
    "val_accuracy": _PERCENT,
    "best_val_accuracy": _PERCENT,
    "best_epoch": _COUNT,
    "seconds": (f"seconds in [0, {MAX_SECONDS:g}]", _between(0, MAX_SECONDS)),
}
# A data identity (data_identity's keys), in a summary or a checkpoint
DATA_SHAPE = {
    "source": _TEXT,
    "train_images": _COUNT,
    "test_images": _COUNT,
    "train_sha256": _TEXT,
    "test_sha256": _TEXT,
    "split_seed": ("a whole number", _between(-math.inf, integral=True)),
    "val_size": ("a whole number >= 0 or null", _or_none(_COUNT[1])),
}


def shape_problem(found: object, shape: dict, where: str = "", kind: str = "a dict") -> str | None:
    """What is wrong with the dict `found` against `shape` (key -> (what it must be, check)), the
    first problem as "<where><key> is <value>, not <what>"; None if nothing is."""
    if not isinstance(found, dict):
        return f"{where.rstrip('.') or 'it'} is {shown(found, True)}, not {kind}"
    for key, (what, check) in shape.items():
        if key in found and not check(found[key]):
            return f"{where}{key} is {shown(found[key], True)}, not {what}"
    return None


def data_problem(identity: object, where: str = "data.") -> str | None:
    """What is wrong with a recorded data identity (None or {}: none recorded, not a problem)."""
    if identity is None or identity == {}:
        return None
    return shape_problem(identity, DATA_SHAPE, where)


def history_problem(history: object) -> str | None:
    """What is wrong with a run's history (a list of HISTORY_ROW_SHAPE rows); None if nothing."""
    if not isinstance(history, list):
        return f"history is {shown(history, True)}, not a list of epochs"
    for i, row in enumerate(history):
        if (problem := shape_problem(row, HISTORY_ROW_SHAPE, f"history[{i}].")) is not None:
            return problem
    return None


def summary_problem(summary: object) -> str | None:
    """What is wrong with a parsed summary.json (SUMMARY_SHAPE, data, history rows); None if
    nothing is."""
    problem = shape_problem(summary, SUMMARY_SHAPE, kind="a JSON object")
    if problem is not None or not isinstance(summary, dict):
        return problem
    return data_problem(summary.get("data")) or history_problem(summary.get("history", []))


def checkpoint_problem(checkpoint: dict) -> str | None:
    """What is wrong with the run's state a checkpoint holds beside its weights (CHECKPOINT_SHAPE,
    data, history rows; the config is checked by checkpoint_config); None if nothing is."""
    return (
        shape_problem(checkpoint, CHECKPOINT_SHAPE)
        or data_problem(checkpoint.get("data"))
        or history_problem(checkpoint.get("history", []))
    )


def load_summary(run_dir: Path) -> dict:
    """The run's summary.json, checked (summary_problem); SummaryError naming the file and what is
    wrong if it is missing, unreadable, not JSON or damaged."""
    path = Path(run_dir) / SUMMARY_FILE
    try:
        summary = json.loads(read_regular_text(path))
    except FileNotFoundError:
        raise SummaryError(f"{path} does not exist: the run has not ended") from None
    except NotARegularFile as e:
        raise SummaryError(str(e)) from None
    except OSError as e:
        raise SummaryError(f"{path} cannot be read ({e.strerror})") from None
    except DAMAGED_TEXT as e:
        raise SummaryError(
            f"{path} is not valid JSON ({type(e).__name__}: {one_line(e)})"
        ) from None
    if (problem := summary_problem(summary)) is not None:
        raise SummaryError(f"{path} is damaged: {problem}")
    return summary


def read_summary(run_dir: Path) -> dict | None:
    """load_summary's summary; None if there is none fit to read (missing or damaged)."""
    try:
        return load_summary(run_dir)
    except SummaryError:
        return None


def summaries_under(runs_dir: Path) -> list[tuple[Path, dict | None]]:
    """(run folder, its summary or None) for each summary.json at any depth under runs_dir, sorted
    by path; each one that cannot be read or is damaged (None) is one `note:` line naming the file
    and what is wrong, the run left out of what the caller does.

    Single runs, `wandb agent` runs, sweep trials in <study>/trial-NNNN and selection seeds alike.
    """
    runs = []
    for path in sorted(Path(runs_dir).rglob(SUMMARY_FILE)):
        try:
            runs.append((path.parent, load_summary(path.parent)))
        except SummaryError as e:
            print(f"note: {e}; that run is left out", flush=True)
            runs.append((path.parent, None))
    return runs


# --------------------------------------------------------------------------------------------------
# The data a run trains on: recorded in its checkpoints and summary, checked on a resume; one data
# set per choice, as val_accuracy compares only between runs of one images and split


def data_identity(
    source: Path,
    train: tuple[np.ndarray, ...],
    test: tuple[np.ndarray, ...],
    val_size: int | None,
    split_seed: int,
) -> dict:
    """What identifies the data a run trains on: SHA-256 of the decoded training and test images
    and labels, and the split (split_seed, val_size; None: any split). Of the arrays, not the
    files, so the same data read from another copy, the archive or pickles written by another
    Python matches; 0.1 s for CIFAR-100. `source` is only for messages."""

    def digest(arrays: tuple[np.ndarray, ...]) -> str:
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a))
        return h.hexdigest()

    return {
        "source": str(Path(source).resolve()),
        "train_images": len(train[1]),
        "test_images": len(test[1]),
        "train_sha256": digest(train),
        "test_sha256": digest(test),
        "split_seed": split_seed,
        "val_size": val_size,
    }


def same_data(recorded: dict, current: dict) -> bool:
    """Whether two data identities name the same images and split (DATA_KEYS)."""
    return all(recorded.get(key) == current.get(key) for key in DATA_KEYS)


def describe_data(identity: dict) -> str:
    """A data identity in one line: its folder, 12 hex digits of each digest, the split."""
    size = identity.get("val_size")
    split = f"split seed {identity.get('split_seed')}, val_size {size}" if size else "any split"
    return (
        f"{identity.get('source')} (train {str(identity.get('train_sha256'))[:12]}, test "
        f"{str(identity.get('test_sha256'))[:12]}, {split})"
    )


def data_key(summary: dict | None) -> tuple | None:
    """The DATA_KEYS values of the data a summary records; None if it records none (older runs)."""
    identity = (summary or {}).get("data")
    if not isinstance(identity, dict) or not identity.get("train_sha256"):
        return None
    return tuple(identity.get(key) for key in DATA_KEYS)


def run_identity(summary: dict) -> str | None:
    """What makes a run itself, however its folder is named or copied (`cp -r runs/ID
    runs/ID.bak`): 16 hex digits of SHA-256 over its config (every setting, the seed included) and
    the data it trained on (DATA_KEYS; none recorded: the config alone). Two folders of one
    identity hold one run, or the same training done twice: one seed of a config, one trial.
    None for a summary with no config (written by hand): it is like no other."""
    if not isinstance(summary.get("config"), dict):
        return None
    text = json.dumps([summary["config"], data_key(summary)], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def distinct_runs(runs: Iterable[tuple[Path, dict | None]]) -> list[tuple[Path, dict | None]]:
    """Of (run folder, summary) pairs, one per run_identity: the first by the order given; each
    other is one `note:` line naming its folder and the one it repeats. Runs without an identity
    (no summary, no config) are kept."""
    first: dict[str, Path] = {}
    kept = []
    for run_dir, summary in runs:
        key = run_identity(summary) if summary is not None else None
        if key is not None and key in first:
            print(
                f"note: {run_dir} holds the same run as {first[key]} (the same config, seed and "
                "data: a copy?); it is counted once",
                flush=True,
            )
            continue
        if key is not None:
            first[key] = run_dir
        kept.append((run_dir, summary))
    return kept


def data_label(identity: object) -> str:
    """A data set in a few words: its folder, 8 hex digits of each digest, the split."""
    if not isinstance(identity, dict) or not identity.get("train_sha256"):
        return "no recorded data (an older version's run)"
    size = identity.get("val_size")
    split = f"val_size {size}" if size is not None else "any split"
    return (
        f"{identity.get('source')} (train {str(identity['train_sha256'])[:8]}, test "
        f"{str(identity.get('test_sha256'))[:8]}, {split})"
    )


def trained_on(summary: dict | None, reference: dict | None) -> bool:
    """Whether a summary records `reference`'s data: its DATA_KEYS that are not None (None: any)."""
    wanted = {
        key: value
        for key, value in (reference or {}).items()
        if key in DATA_KEYS and value is not None
    }
    recorded = (summary or {}).get("data")
    return (
        not wanted
        or isinstance(recorded, dict)
        and all(recorded.get(key) == value for key, value in wanted.items())
    )


def of_one_data_set(
    runs: Iterable[tuple[Path, dict | None]], reference: dict | None, where: Path, remedy: str
) -> list[tuple[Path, dict | None]]:
    """Of (run folder, summary) pairs, those trained on `reference`'s data: one data set.

    `reference` is a data identity (data_identity of select_model.py's or
    trt_export.py's --data-dir); its DATA_KEYS that are not None must match the data a run records
    (val_size None: any split). None: no reference.
    The runs left out are one `note:` line naming how many and on which data.
    If what is left spans several data sets (several splits of the reference's images; without a
    reference, any two), that is CheckpointError, one line naming them and ending in `remedy`:
    a choice across data sets is refused, never averaged.
    """
    runs = list(runs)
    kept = [run for run in runs if trained_on(run[1], reference)]
    left = [run for run in runs if not trained_on(run[1], reference)]
    if left:
        print(
            f"note: {len(left)} of {len(runs)} runs under {where} were trained on other data "
            f"than {data_label(reference)} and are left out: {by_data_set(left)}",
            flush=True,
        )
    if len({data_key(summary) for _, summary in kept}) > 1:
        raise CheckpointError(
            f"the runs under {where} were trained on several data sets ({by_data_set(kept)}): "
            f"val_accuracy on other images or another validation split does not compare; {remedy}"
        )
    return kept


def by_data_set(runs: list[tuple[Path, dict | None]]) -> str:
    """How many of `runs` were trained on which data, largest first: "3 on <data>, 1 on <data>"."""
    counts = Counter(data_key(summary) for _, summary in runs)
    labels = {data_key(summary): data_label((summary or {}).get("data")) for _, summary in runs}
    return ", ".join(f"{count} on {labels[key]}" for key, count in counts.most_common())


# --------------------------------------------------------------------------------------------------
# Resume: what last.pt holds for it, and when a run folder can be continued


RESUME_KEYS = (
    "model",
    "optimizer",
    "config",
    "epoch",
    "history",
    "best_val_accuracy",
    "best_epoch",
    "seconds",
)


def checkpoint_config(checkpoint: dict, path: Path, settings: Settings) -> dict:
    """The checkpoint's config, checked by `settings` as a command line's is; keys it lacks
    (written before they existed) get today's defaults, said in one line. CheckpointError naming
    `path` if it is not a dict or has a bad value."""
    config = checkpoint.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(
            f"{path}: its config is a {type(config).__name__}, not a dict of settings"
        )
    missing = [key for key in settings if config.get(key) is None]
    if missing:
        print(
            f"note: {path} has no {', '.join(missing)} in its config: using today's default "
            + ", ".join(f"{key}={settings[key].default}" for key in missing),
            flush=True,
        )
    try:
        return settings.validate(config)
    except ConfigError as e:
        raise CheckpointError(f"{path}: its config has {e}") from None


class RunComplete(CommandError):
    """The run to resume has ended for good (its summary.json says finished or diverged at last.pt's
    epoch): a resume does nothing, so nothing the run wrote changes. The message is the line to
    print; exit 0."""

    exit_code = EXIT_DONE


def check_resumable(run_dir: Path, resume: dict) -> None:
    """RunComplete if the run in run_dir has ended at `resume`'s epoch (its loaded last.pt);
    CheckpointError if the best epoch last.pt names has no best.pt beside it (the end of a run
    scores and uploads best.pt). A damaged summary.json is a note: the run's end writes it anew."""
    try:
        summary = load_summary(run_dir)
    except SummaryError as e:
        summary = None
        if (run_dir / SUMMARY_FILE).is_file():
            print(f"note: {e}; the resumed run writes it anew", flush=True)
    if (
        summary is not None
        and summary.get("status") in ENDED
        and summary.get("epochs_completed") == resume["epoch"]
    ):
        raise RunComplete(
            f"{run_dir} is complete ({summary['status']} after epoch {resume['epoch']}): nothing "
            "to resume and nothing changed; start a new run to train again"
        )
    if resume["best_epoch"] and not (run_dir / BEST_CHECKPOINT).is_file():
        raise CheckpointError(
            f"{run_dir} has {LAST_CHECKPOINT} but no {BEST_CHECKPOINT} (epoch "
            f"{resume['best_epoch']}'s weights, the best so far): copy the whole run folder"
        )


def check_resume_data(resume: dict, identity: dict, path: Path) -> None:
    """check_checkpoint_data for a resume: last.pt at `path` must record `identity`'s images and
    split; one from before data was recorded resumes with a note (the new last.pt records it)."""
    check_checkpoint_data(
        resume, identity, path, "resume with its --data-dir, or start a new run", "resuming on"
    )


def check_checkpoint_data(
    checkpoint: dict, identity: dict, path: Path, remedy: str, going_on: str
) -> None:
    """Whether the checkpoint at `path` (as load_checkpoint gives it: its data record checked) was
    trained on `identity`'s data: its DATA_KEYS that are not None (val_size None: any split), as
    trained_on. CheckpointError naming both data sets and ending in `remedy` if not; a checkpoint
    from before data was recorded is one note, "... without checking", `going_on` the data given.
    """
    recorded = checkpoint.get("data")
    if not recorded:
        print(
            f"note: {path} does not record its data (written by an older version): {going_on} "
            f"{identity.get('source', 'the data given')} without checking",
            flush=True,
        )
    elif not trained_on({"data": recorded}, identity):
        raise CheckpointError(
            f"{path} was trained on other data: {describe_data(recorded)}, not "
            f"{describe_data(identity)}; {remedy}"
        )


@contextmanager
def hold_run_folder(run_dir: Path, owned: ExitStack) -> Iterator[None]:
    """Hold the run folder (folders.own_folder, kept in `owned`) for what the block reads: an
    existing folder (a resume, a relaunch) before the block reads its last.pt, a new one only once
    the block ends without an error (its data found): a bad checkpoint is named before the data is
    looked for, and no folder is made for data that is not there."""
    held = run_dir.is_dir()
    if held:
        owned.enter_context(own_folder(run_dir, "run folder"))
    yield
    if not held:
        owned.enter_context(own_folder(run_dir, "run folder"))


def stopped_state(run_dir: Path) -> str:
    """What a run stopped outside training has left in run_dir, and how to go on: the end of a
    one-line message."""
    if (read_summary(run_dir) or {}).get("status") in ENDED:
        return f"the run is complete in {run_dir} (its W&B upload may be incomplete)"
    if (run_dir / LAST_CHECKPOINT).is_file():
        return (
            f"{run_dir / LAST_CHECKPOINT} holds the last finished epoch; continue with --resume "
            f"{run_dir}"
        )
    return "no epoch had finished; the same command starts again"
