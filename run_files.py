"""What a run folder holds, and how it is written and read; which checkpoint to export.

    <run>/best.pt        BEST_CHECKPOINT: the epoch with the highest val_accuracy (what is exported)
    <run>/last.pt        LAST_CHECKPOINT: the last finished epoch and its optimizer (what a resume continues)
    <run>/summary.json   SUMMARY_FILE: status, config, best_val_accuracy, cost, learning curves
    <runs>/selection.json  SELECTION_FILE: what select_model.py chose among the runs under <runs>
    <folder>/owner.lock  OWNER_LOCK: who holds a run, trial, selection or export folder

A crash never leaves half a file: everything is made in memory and written by cli.write_atomic
(a temporary file renamed over the old one); a write that fails is cli.FileFailed naming the file.
Checkpoints are loaded as data only. A summary is read by read_summary alone, and the runs under a folder
are found by summaries_under alone. choose_checkpoint answers "which checkpoint" for every command,
among the runs of one data set (of_one_data_set). One process at a time writes a folder
(own_folder).
Also here: figures, where a run ran and what its model costs.
"""

from __future__ import annotations

import copy
import fcntl
import io
import json
import math
import os
import pickle
import platform
import re
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from cli import ANSI_ESCAPE, EXIT_BAD_INPUT, CommandError, FileFailed, one_line, write_atomic

BEST_CHECKPOINT = "best.pt"
LAST_CHECKPOINT = "last.pt"
SUMMARY_FILE = "summary.json"
SELECTION_FILE = "selection.json"
OWNER_LOCK = "owner.lock"
ENDED = ("finished", "diverged")  # a run with this status has its result; "diverged" is a real outcome of a config
# What makes two runs' val_accuracy comparable: the same images (SHA-256 of the decoded training and
# test arrays) and validation split, as part_2_cifar.data_identity records them (same_data's keys).
DATA_KEYS = ("train_sha256", "test_sha256", "split_seed", "val_size")


def save_atomic(obj: object, path: Path) -> None:
    """torch.save made in memory, then written by write_atomic: a full disk is a FileFailed naming
    `path` (not torch's "unexpected pos"), and never leaves half a checkpoint."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, buffer.getvalue())


def write_json_atomic(obj: object, path: Path) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def save_figure(fig: object, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure (drawn in memory, in the format of the path's suffix) and close it:
    a reader never sees half a PNG. FileFailed naming `path` when it cannot be written."""
    import matplotlib.pyplot as plt

    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileFailed(e, "make the folder of", path) from None
    write_atomic(path, buffer.getvalue())


def unwritable(folder: Path) -> str | None:
    """Why no file can be written in `folder`, or None if one can. A folder that does not exist yet is judged by
    the nearest one above it that does (nothing is created). A real file is tried and removed at once: permission
    bits tell nothing for root, ACLs or read-only mounts."""
    for existing in (Path(folder), *Path(folder).parents):
        try:
            if existing.exists():
                break
        except OSError as e:  # a folder above that cannot be searched
            return f"{existing} cannot be read ({e.strerror or e})"
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"{existing} is not writable ({e.strerror or e})"
    return None


# --------------------------------------------------------------------------------------------------
# One owner per folder


class FolderInUse(CommandError):
    """Another process holds the folder: two writers would replace each other's files."""

    exit_code = EXIT_BAD_INPUT


HOLDER_WAIT_SECONDS = 1.0  # a holder names itself just after it takes the lock: a reader waits this


@contextmanager
def own_folder(folder: Path, what: str) -> Iterator[Path]:
    """Hold `folder` (made if missing) for this process while inside.

    The hold is an exclusive flock on <folder>/owner.lock, which then names the holder: pid, host,
    since when, and the command. Another process holding it is FolderInUse, one line naming it;
    `what` names the folder there ("run folder", "trial folder", ...).
    The kernel drops an flock when its process ends, however it ends (SIGKILL, a crash): a dead
    holder never blocks the next process, and no stale lock needs removing. On NFS, Linux takes an
    flock as a lock on the whole file at the server: machines sharing a runs folder exclude each
    other. A folder this made and left with nothing in it but owner.lock (a run that never
    started: no W&B server in a sweep) is removed on the way out, with the folders made for it.
    """
    folder = Path(folder)
    made = []  # the folder and those above it that do not exist yet, deepest first
    for above in (folder, *folder.parents):
        if above.exists():
            break
        made.append(above)
    lock = locked(folder / OWNER_LOCK, what)
    try:
        lock.truncate(0)
        since = datetime.now().astimezone().isoformat(timespec="seconds")
        command = Path(sys.argv[0]).name
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {since} ({command})\n")
        lock.flush()
        yield folder
    finally:
        if made and [path.name for path in folder.iterdir()] == [OWNER_LOCK]:
            (folder / OWNER_LOCK).unlink()  # while held: a waiter then finds it gone (locked)
            for empty in made:
                try:
                    empty.rmdir()
                except OSError:  # another process's files are in it
                    break
        lock.close()


def locked(path: Path, what: str):
    """`path` opened and exclusively flock'ed, its folder made if missing; FolderInUse if held.

    A lock file removed by its holder (own_folder) after another opened it is not the one at
    `path` any more: locking it would exclude nobody, so the one at `path` is opened again.
    """
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_of(f)
            f.close()
            raise FolderInUse(f"{what} {path.parent} is in use by {holder}: two processes would "
                              "overwrite each other's files; wait for it to end, or use another "
                              "folder") from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def holder_of(lock_file) -> str:
    """What the holder of an open owner.lock wrote of itself; waits HOLDER_WAIT_SECONDS for it."""
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    while True:
        lock_file.seek(0)
        text = lock_file.read().strip()
        if text or time.monotonic() > deadline:
            return text or "another process (it has not written its name)"
        time.sleep(0.05)


class CheckpointError(CommandError, RuntimeError):
    """A checkpoint that is missing, unreadable or not one of ours; the message names the file."""

    exit_code = EXIT_BAD_INPUT


class _NumpyDtype:
    """Stands in for numpy.dtype while a checkpoint is read: it keeps the dtype's name and byte order and runs no
    numpy code on what the file says (pickle calls numpy.dtype('f8', False, True), then __setstate__)."""

    def __init__(self, name: object = None, align: object = False, copy: object = True):
        self.name, self.order = name, "="

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.order = state[1]


def _numpy_number(dtype: object, data: object = None) -> bool | int | float | complex:
    """A pickled numpy scalar (numpy.float64(3.5), np.int64 ...) as the Python number it holds. Only plain numbers
    (bool, int, uint, float, complex) are decoded, from the raw bytes with a fresh dtype; anything else is refused."""
    import numpy as np

    try:
        kind = np.dtype(dtype.name) if isinstance(dtype, _NumpyDtype) and isinstance(dtype.name, str) else None
    except TypeError:
        kind = None
    if kind is None or kind.kind not in "biufc" or not isinstance(data, bytes) or len(data) != kind.itemsize:
        raise pickle.UnpicklingError(f"a numpy scalar of dtype {getattr(dtype, 'name', dtype)!r}")
    order = dtype.order if dtype.order in ("<", ">") else "="
    return np.frombuffer(data, dtype=kind.newbyteorder(order))[0].item()


# Metrics saved from numpy (a numpy.float64 val_accuracy) are common in checkpoints of other tools: numpy scalars of
# plain number types load as Python numbers. The names are where numpy 1 and 2 pickle them from.
NUMPY_NUMBERS = [(_numpy_number, "numpy.core.multiarray.scalar"), (_numpy_number, "numpy._core.multiarray.scalar"),
                 (_NumpyDtype, "numpy.dtype")]


def _refused_types(path: Path, error: BaseException) -> str:
    """What weights_only refused in `path`: the globals PyTorch's own scan of the file names, else the name in its
    message, else the message's last line (what a stand-in above refused)."""
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
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Check the doc")]
    return lines[-1] if lines else type(error).__name__


def load_checkpoint(path: Path, needs: tuple[str, ...] = ("model", "config")) -> dict:
    """Load a checkpoint as data only (weights_only=True: a checkpoint must not run code) and check its keys.

    Tensors, Python containers and numbers, and numpy scalars of number types (returned as Python numbers) load;
    anything else raises CheckpointError naming the refused types. Every error is one line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(NUMPY_NUMBERS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # there but unreadable (permission, an I/O error): not the file's fault
        raise FileFailed(e, "read", path) from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} holds {_refused_types(path, e)}, which a checkpoint may not hold (it is loaded "
                              "as plain data, so that it cannot run code): save tensors and Python numbers") from None
    except Exception as e:  # zip/EOF/runtime errors all mean the same thing to a person
        raise CheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {one_line(e)})") from None
    missing = [key for key in needs if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a part_2_cifar checkpoint: it lacks {', '.join(missing)}")
    return checkpoint


# Prefixes PyTorch's own wrappers put before every parameter name: DataParallel, DistributedDataParallel and
# swa_utils.AveragedModel ("module."), torch.compile ("_orig_mod."); they nest in either order.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def without_wrapper_prefixes(weights: dict) -> dict:
    """A copy of a state dict with the prefixes of WRAPPER_PREFIXES removed (and AveragedModel's n_averaged)."""
    weights = copy.copy(weights)  # an OrderedDict keeps its _metadata, which load_state_dict reads
    while weights:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in weights if k != "n_averaged")),
                      None)
        if prefix is None:
            break
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(weights, prefix)
        weights.pop("n_averaged", None)
    return weights


def first_nonfinite(tensors: dict) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None; one host sync."""
    floats = {name: t for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
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
    """Load a checkpoint's state dict into `model`, wrapper prefixes removed. CheckpointError, one line naming
    `path`: not a dict of tensors; the first missing and unexpected names and differing shapes; a NaN or inf."""
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{path}: its 'model' is not a state dict (names -> tensors)")
    weights = without_wrapper_prefixes(weights)
    expected = model.state_dict()
    missing = [name for name in expected if name not in weights]
    unexpected = [name for name in weights if name not in expected]
    reshaped = [name for name in expected if name in weights and weights[name].shape != expected[name].shape]
    if missing or unexpected or reshaped:
        parts = [f"missing {_named(missing, expected)}"] if missing else []
        parts += [f"unexpected {_named(unexpected, weights)}"] if unexpected else []
        if reshaped:
            more = f" (and {len(reshaped) - 1} more)" if len(reshaped) > 1 else ""
            parts.append(f"{reshaped[0]} is {list(weights[reshaped[0]].shape)} in the file, "
                         f"{list(expected[reshaped[0]].shape)} in the model{more}")
        raise CheckpointError(f"{path} does not fit the SimpleCNN its config describes: {'; '.join(parts)}")
    bad = first_nonfinite(weights)
    if bad is not None:
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf in {bad}): the run that wrote it diverged")
    model.load_state_dict(weights)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def versions() -> dict:
    import torchvision

    found = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        import wandb

        found["wandb"] = wandb.__version__
    except ImportError:
        pass
    return found


def plot_learning_curve(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [m[f"{split}_loss"] for m in history], label=split)
        ax_acc.plot(epochs, [m[f"{split}_accuracy"] for m in history], label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def to_cpu(obj: object) -> object:
    """A copy of nested dicts/lists with every tensor cloned to host memory: a snapshot training cannot change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {key: to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [to_cpu(value) for value in obj]
    return obj


# Cost: what a model costs to deploy, recorded in every summary so a sweep's runs can be chosen on accuracy and cost.

LATENCY_BATCH_SIZES = (1, 256)  # one image (interactive use) and a large batch (throughput)
LATENCY_SECONDS = 0.5  # timed per batch size, after one warm-up call: about a second or two per run in all ...
LATENCY_REPEATS = 50  # ... or this many calls, if sooner: the median of 50 is steady, and tiny models finish fast
LATENCY_SHARE = 0.02  # ... and at most this share of the run's own time: a run of a few
# seconds (a smoke test's, a test suite's) is not timed longer than it trained; 3 calls at least


def flops_per_image(model: nn.Module) -> int:
    """Forward-pass FLOPs of one 32x32 image in the convolutions and fully connected layers, a
    multiply-add being 2 FLOPs: the count of PyTorch's FlopCounterMode, which counts only those
    (matrix products; batch norm, ReLU and pooling are 0), as tests/test_trainer.py checks. Counted
    from each layer's output shape, without FlopCounterMode: its first use imports torch._dynamo,
    over a second for every process that trains."""
    flops = 0

    def count(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal flops
        if isinstance(layer, nn.Conv2d):  # each output value: in/groups x kernel multiply-adds
            kernel = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
            flops += 2 * output.numel() * kernel
        elif isinstance(layer, nn.Linear):
            flops += 2 * output.numel() * layer.in_features

    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    return flops


@torch.inference_mode()
def latency_ms(model: nn.Module, device: torch.device, precision: Callable[[], AbstractContextManager],
               batch_size: int, seconds: float = LATENCY_SECONDS) -> float:
    """Median wall time of one forward pass at `batch_size` on `device` under `precision()` (the trainer's autocast,
    as evaluate() runs it), channels_last input, after a warm-up."""
    model.eval()
    x = torch.zeros(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    times: list[float] = []
    with precision():
        model(x)  # warm-up: cuDNN's kernel choice, lazy allocations
        while len(times) < 3 or (sum(times) < seconds * 1e3 and len(times) < LATENCY_REPEATS):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def model_cost(model: nn.Module, device: torch.device,
               precision: Callable[[], AbstractContextManager],
               run_seconds: float = math.inf) -> dict:
    """parameters, flops_per_image and latency_ms ({batch size: median ms}) with the device they
    were timed on. Each batch size is timed for LATENCY_SECONDS, or for LATENCY_SHARE of
    `run_seconds` (the run's wall time) if that is less."""
    seconds = min(LATENCY_SECONDS, LATENCY_SHARE * run_seconds)
    latency = {str(b): latency_ms(model, device, precision, b, seconds)
               for b in LATENCY_BATCH_SIZES}
    return {"parameters": sum(p.numel() for p in model.parameters()), "flops_per_image": flops_per_image(model),
            "latency_ms": latency, "latency_device": device_name(device)}


# ----------------------------------------------------------------------------------------------------------------------
# Runs: the one reader of a summary, the one walk over a runs folder


def finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_summary(run_dir: Path) -> dict | None:
    """The run's summary.json as a dict; None if it is missing, unreadable or not a JSON object."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def summaries_under(runs_dir: Path) -> list[tuple[Path, dict | None]]:
    """(run folder, its summary or None) for each summary.json at any depth under runs_dir, sorted by path.

    Single runs, `wandb agent` runs, sweep trials in <study>/trial-NNNN and selection seeds alike.
    """
    return [(path.parent, read_summary(path.parent)) for path in sorted(Path(runs_dir).rglob(SUMMARY_FILE))]


def exportable(runs: Iterable[tuple[Path, dict | None]]) -> list[tuple[Path, dict]]:
    """The (run folder, summary) pairs with a finite best_val_accuracy and a best.pt to export."""
    return [(run_dir, summary) for run_dir, summary in runs
            if finite_number((summary or {}).get("best_val_accuracy"))
            and (run_dir / BEST_CHECKPOINT).is_file()]


def best_run(runs: Iterable[tuple[Path, dict | None]]) -> tuple[Path, float] | None:
    """Of (run folder, summary) pairs, the run with the highest best_val_accuracy that has a best.pt to export.

    Returns (its folder, that accuracy), the first of a tie; None if no run has both.
    """
    scored = [(summary["best_val_accuracy"], run_dir) for run_dir, summary in exportable(runs)]
    if not scored:
        return None
    accuracy, run_dir = max(scored, key=lambda s: s[0])
    return run_dir, accuracy


# --------------------------------------------------------------------------------------------------
# One data set per choice: val_accuracy compares only between runs of one images and split


def data_key(summary: dict | None) -> tuple | None:
    """The DATA_KEYS values of the data a summary records; None if it records none (older runs)."""
    identity = (summary or {}).get("data")
    if not isinstance(identity, dict) or not identity.get("train_sha256"):
        return None
    return tuple(identity.get(key) for key in DATA_KEYS)


def data_label(identity: object) -> str:
    """A data set in a few words: its folder, 8 hex digits of each digest, the split."""
    if not isinstance(identity, dict) or not identity.get("train_sha256"):
        return "no recorded data (an older version's run)"
    size = identity.get("val_size")
    split = f"val_size {size}" if size is not None else "any split"
    return (f"{identity.get('source')} (train {str(identity['train_sha256'])[:8]}, test "
            f"{str(identity.get('test_sha256'))[:8]}, {split})")


def trained_on(summary: dict | None, reference: dict | None) -> bool:
    """Whether a summary records `reference`'s data: its DATA_KEYS that are not None (None: any)."""
    wanted = {key: value for key, value in (reference or {}).items()
              if key in DATA_KEYS and value is not None}
    recorded = (summary or {}).get("data")
    return not wanted or isinstance(recorded, dict) and all(
        recorded.get(key) == value for key, value in wanted.items())


def of_one_data_set(runs: Iterable[tuple[Path, dict | None]], reference: dict | None, where: Path,
                    remedy: str) -> list[tuple[Path, dict | None]]:
    """Of (run folder, summary) pairs, those trained on `reference`'s data: one data set.

    `reference` is a data identity (part_2_cifar.data_identity of select_model.py's or
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
        print(f"note: {len(left)} of {len(runs)} runs under {where} were trained on other data "
              f"than {data_label(reference)} and are left out: {by_data_set(left)}", flush=True)
    if len({data_key(summary) for _, summary in kept}) > 1:
        raise CheckpointError(f"the runs under {where} were trained on several data sets "
                              f"({by_data_set(kept)}): val_accuracy on other images or another "
                              f"validation split does not compare; {remedy}")
    return kept


def by_data_set(runs: list[tuple[Path, dict | None]]) -> str:
    """How many of `runs` were trained on which data, largest first: "3 on <data>, 1 on <data>"."""
    counts = Counter(data_key(summary) for _, summary in runs)
    labels = {data_key(summary): data_label((summary or {}).get("data")) for _, summary in runs}
    return ", ".join(f"{count} on {labels[key]}" for key, count in counts.most_common())


# ----------------------------------------------------------------------------------------------------------------------
# Which checkpoint: select_model.py's selection.json (written and read here), else the best single run


def save_selection(selection: dict, runs_dir: Path) -> Path:
    """Write select_model.py's choice to <runs_dir>/selection.json; return its path.

    `selection`: {"configs": [config reports, the chosen first], "best": its best seed's folder, relative}.
    """
    path = Path(runs_dir) / SELECTION_FILE
    write_json_atomic(selection, path)
    return path


def find_selection(runs_dir: Path) -> Path | None:
    """RUNS_DIR/selection.json, else the one selection.json at any depth below; None if there is none."""
    if (runs_dir / SELECTION_FILE).is_file():
        return runs_dir / SELECTION_FILE
    found = sorted(runs_dir.rglob(SELECTION_FILE))
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
        if not (isinstance(config, dict) and finite_number(config.get("val_accuracy_mean"))
                and finite_number(config.get("flops_per_image")) and isinstance(config.get("pareto"), bool)
                and isinstance(config.get("runs"), list) and config["runs"]
                and all(isinstance(run, str) for run in config["runs"])):
            raise CheckpointError(f"{not_selection}: configs[{i}] needs numbers val_accuracy_mean and "
                                  "flops_per_image, pareto true/false and a list of run folders in runs")
    return selection


def best_seed(config: dict, root: Path) -> Path | None:
    """The folder of a selection config's seed with the highest best_val_accuracy and a best.pt to export.

    Its `runs` are relative to root, or absolute; ties: the first. None if no seed has both.
    """
    found = best_run((root / run, read_summary(root / run)) for run in config["runs"])
    return found[0] if found else None


def cheapest_within(configs: list[dict], points: float) -> dict:
    """The config on the Pareto front with the lowest flops_per_image whose val_accuracy_mean is within `points` of
    the best mean (ties: the higher mean). The best config is on the front, so there is always one."""
    best_mean = max(config["val_accuracy_mean"] for config in configs)
    near = [c for c in configs if c["pareto"] and c["val_accuracy_mean"] >= best_mean - points]
    if not near:
        raise CheckpointError(f"no config on the Pareto front is within {points} points of the best mean "
                              f"{best_mean:.2f}: the selection marks none of its best configs pareto")
    return min(near, key=lambda c: (c["flops_per_image"], -c["val_accuracy_mean"]))


def choose_checkpoint(spec: str, runs_dir: Path, within: float | None = None,
                      data: Callable[[], dict] | None = None) -> Path:
    """`best`, a run folder or a checkpoint file -> the checkpoint file; for `best`, print how it was chosen.

    `best` takes what select_model.py chose (selection.json under `runs_dir`: its `best`, or with `within`, the
    cheapest config on the front within that many points of the best mean, at its best seed); without a selection,
    the single run with the highest best_val_accuracy at any depth under `runs_dir`.
    `data()` gives the data identity of the images the export is checked on: the single run is
    chosen among the runs of those, and a selection's choice must be one (None: no check). It is
    called only once there is a run to check: `python trt_export.py` before any training loads no
    data. Raises CheckpointError, one line, when there is nothing to choose, when the runs span
    several data sets, or when the selection chose a run of other images.
    """
    if spec != "best":
        path = Path(spec)
        return path / BEST_CHECKPOINT if path.is_dir() else path
    selection_path = find_selection(runs_dir)
    if selection_path is None:
        if within is not None:
            raise CheckpointError(f"--within needs a selection.json under {runs_dir}: run select_model.py "
                                  f"{runs_dir} first")
        return best_single_run(runs_dir, data) / BEST_CHECKPOINT
    selection, root = read_selection(selection_path), selection_path.parent
    if within is None:
        check_chosen_data(root / selection["best"], data, selection_path)
        print(f"chosen by select_model.py ({selection_path}): {selection['best']}", flush=True)
        return root / selection["best"] / BEST_CHECKPOINT
    config = cheapest_within(selection["configs"], within)
    best_mean = max(c["val_accuracy_mean"] for c in selection["configs"])
    seed_dir = best_seed(config, root)
    if seed_dir is None:
        raise CheckpointError(f"none of the runs of the chosen config ({', '.join(config['runs'])}) under {root} has "
                              "a summary.json with best_val_accuracy and a best.pt")
    check_chosen_data(seed_dir, data, selection_path)
    print(f"--within {within:g} ({selection_path}): the cheapest config on the front within {within:g} points of "
          f"the best mean val_accuracy {best_mean:.2f} has {config['val_accuracy_mean']:.2f} at "
          f"{config['flops_per_image']:,.0f} FLOPs per image; its best seed is {seed_dir}", flush=True)
    return seed_dir / BEST_CHECKPOINT


def check_chosen_data(run_dir: Path, data: Callable[[], dict] | None, selection_path: Path) -> None:
    """CheckpointError if the run select_model.py chose was trained on other images than `data()`'s.

    None: no check. A chosen run with no best.pt is not checked: loading it says so.
    """
    if data is None or not (run_dir / BEST_CHECKPOINT).is_file():
        return
    summary, data = read_summary(run_dir), data()
    if trained_on(summary, data):
        return
    recorded = data_label((summary or {}).get("data"))
    raise CheckpointError(f"{selection_path} chose {run_dir}, trained on {recorded}, not on "
                          f"{data_label(data)}: pass --data-dir the data it was chosen on, or run "
                          "select_model.py with this --data-dir")


def best_single_run(runs_dir: Path, data: Callable[[], dict] | None = None) -> Path:
    """The run folder under `runs_dir` with the highest best_val_accuracy and a best.pt, said in one
    line, among the runs of the data `data()` names (of_one_data_set; None: of the one data set).

    A summary.json that cannot be read is a note. CheckpointError when no run qualifies, or the runs
    span several data sets.
    """
    runs = summaries_under(runs_dir)
    for run_dir, summary in runs:
        if summary is None:
            print(f"note: {run_dir / SUMMARY_FILE} is missing or unreadable; that run is not considered", flush=True)
    candidates, reference = exportable(runs), None
    if candidates:
        reference = data() if data else None
        candidates = of_one_data_set(candidates, reference, runs_dir,
                                     "pass --data-dir the data to choose for, a --runs-dir of one "
                                     "data set, or --checkpoint PATH")
    found = best_run(candidates)
    if found is None:
        on = f" trained on {data_label(reference)}" if reference else ""
        raise CheckpointError(f"no run in {runs_dir}{on} has a summary.json with best_val_accuracy "
                              "and a best.pt: train one with part_2_cifar.py, or pass --checkpoint "
                              "PATH")
    print(f"note: no selection.json under {runs_dir}: taking the single run with the highest "
          f"best_val_accuracy ({found[1]:.2f}), not confirmed by select_model.py with new seeds", flush=True)
    return found[0]
