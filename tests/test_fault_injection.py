"""Every call by which a command touches the world outside it fails once in turn, with an error it
really raises: every run ends with a line of the exit-code table, no traceback, and every file under
its final name is the old one or a whole new one.

Each command runs in-process (`main(argv)`) on tiny data: first cleanly, counting its outside calls
(each file opened for writing, each rename and new folder under its output folders, each W&B call,
the ONNX export, each call into the study's storage), then once per call site with that call
failing. The seed picks which occurrence of a site fails and with which error. FAULT_SEEDS=0,1,2
runs several seeds (CI runs one); FAULT_SITES=all every site of every command (by default the seed
picks FAULT_SITES_DEFAULT of each).

The errors are the ones the calls raise: a full disk (ENOSPC, at the write), a quota (EDQUOT), a
read-only file system (EROFS), a permission (EACCES), an I/O error (EIO), a folder that vanished
(ENOENT: the folder is really deleted, as a /tmp cleaner would, and the real call fails); W&B's own
(a killed wandb-core gives ConnectionResetError, a staging folder W&B cannot write PermissionError,
wandb.errors.CommError); Optuna's StorageInternalError (an RDB storage failing); torch's
OnnxExporterError.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import pickle
import random
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from conftest import FAST_CONFIG, cli_args, quick_benchmark

import local_sweep
import part_2_cifar as p2
import select_model
import synthetic_cifar100
import trt_export
from cifarkit.core import cost, run_files

SEEDS = [int(seed) for seed in os.environ.get("FAULT_SEEDS", "0").split(",")]
FAULT_SITES_DEFAULT = 3  # sites per command and seed (about a minute in all); FAULT_SITES=all: each
SITES = os.environ.get("FAULT_SITES", str(FAULT_SITES_DEFAULT))
REAL_OPEN, REAL_REPLACE, REAL_RENAME, REAL_MKDIR = builtins.open, os.replace, os.rename, os.mkdir

# The errors each kind of call really raises
AT_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EIO)  # the file opens, its writes fail
AT_OPEN = (errno.EROFS, errno.EACCES, errno.ENOENT)
ERRORS = {
    "open": AT_WRITE + AT_OPEN,
    "lock": AT_OPEN,
    "replace": (errno.EROFS, errno.EACCES, errno.ENOENT, errno.EIO),
    "mkdir": (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.ENOENT),
}


def wandb_errors() -> list[Callable[[], Exception]]:
    import wandb

    return [
        lambda: ConnectionResetError("Connection lost"),  # each call once wandb-core is killed
        lambda: wandb.errors.CommError("injected: the W&B service did not answer"),
        lambda: PermissionError("Unable to write staging files (injected)"),
    ]


def storage_error() -> Exception:
    import optuna

    return optuna.exceptions.StorageInternalError("injected: an exception during the commit")


@dataclass
class Site:
    """Where an outside call is made: its kind and what it touches (a file's final name, a call)."""

    kind: str  # open, lock, replace, mkdir, wandb, storage, export
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def final_name(path: os.PathLike | str) -> str:
    """The name a file will have: write_atomic's `.{name}.{pid}.tmp` is `name`; numbers go."""
    name = re.sub(r"^\.(.+)\.\d+\.tmp$", r"\1", Path(path).name)
    name = re.sub(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", "UUID", name)  # Optuna's locks
    return (
        name
        if name.endswith((".pt", ".json", ".csv", ".png", ".onnx"))
        else re.sub(r"\d+", "N", name)
    )


@dataclass
class Outside:
    """The outside calls of one in-process command run under `roots`, counted in order; the one
    numbered `fail_at` (0-based) fails once, with errno `error` (files) or W&B error number `error`.
    """

    roots: list[Path]
    fail_at: int | None = None
    error: int = 0
    calls: list[Site] = field(default_factory=list)
    failed: str = ""

    def ours(self, path: object) -> bool:
        if not isinstance(path, (str, os.PathLike)):
            return False
        return any(Path(os.fsdecode(path)).absolute().is_relative_to(root) for root in self.roots)

    def now(self, site: Site) -> bool:
        """Count a call; True if it is the one to fail."""
        self.calls.append(site)
        if len(self.calls) - 1 == self.fail_at:
            self.failed = str(site)
            return True
        return False

    def os_error(self, path: object) -> OSError:
        return OSError(self.error, os.strerror(self.error), os.fsdecode(path))

    def vanish(self, path: object) -> None:
        """A folder deleted meanwhile (a cleaner): the folder of `path` goes; the call fails."""
        folder = Path(os.fsdecode(path)).parent
        if self.ours(folder):
            shutil.rmtree(folder, ignore_errors=True)

    def open(self, file, mode="r", *args, **kwargs):
        probe = "opener" in kwargs  # tempfile's O_TMPFILE probe (folders.unwritable): no output
        if (
            isinstance(file, (str, os.PathLike))
            and any(c in mode for c in "wax+")
            and not probe
            and self.ours(file)
        ):
            lock = str(file).endswith(".lock")  # fcntl's lock files: opened, never written
            if self.now(Site("lock" if lock else "open", final_name(file))):
                if self.error == errno.ENOENT:
                    self.vanish(file)
                elif self.error in AT_OPEN or lock:
                    raise self.os_error(file)
                else:
                    return FailingWrites(
                        REAL_OPEN(file, mode, *args, **kwargs), self.os_error(file)
                    )
        return REAL_OPEN(file, mode, *args, **kwargs)

    def renamed(self, real: Callable) -> Callable:
        def rename(src, dst, *args, **kwargs):
            if self.ours(dst) and self.now(Site("replace", final_name(dst))):
                if self.error != errno.ENOENT:
                    raise self.os_error(dst)
                self.vanish(dst)
            return real(src, dst, *args, **kwargs)

        return rename

    def mkdir(self, path, *args, **kwargs):
        if self.ours(path) and self.now(Site("mkdir", final_name(path))):
            if self.error != errno.ENOENT:
                raise self.os_error(path)
            self.vanish(path)
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(path))
        return REAL_MKDIR(path, *args, **kwargs)

    def failing(
        self, kind: str, name: str, real: Callable, error: Callable[[], Exception]
    ) -> Callable:
        def call(*args, **kwargs):
            if self.now(Site(kind, name)):
                raise error()
            return real(*args, **kwargs)

        return call

    def install(self, monkeypatch, wandb_calls: bool) -> None:
        monkeypatch.setattr(builtins, "open", self.open)
        monkeypatch.setattr(io, "open", self.open)
        monkeypatch.setattr(os, "replace", self.renamed(REAL_REPLACE))
        monkeypatch.setattr(os, "rename", self.renamed(REAL_RENAME))
        monkeypatch.setattr(os, "mkdir", self.mkdir)
        monkeypatch.setattr(
            torch.onnx,
            "export",
            self.failing(
                "export",
                "torch.onnx.export",
                torch.onnx.export,
                lambda: torch.onnx.OnnxExporterError("injected: Failed to export the model"),
            ),
        )
        from optuna.storages import JournalStorage

        for name in (
            "create_new_study",
            "create_new_trial",
            "set_trial_param",
            "set_trial_state_values",
            "set_trial_intermediate_value",
            "set_trial_user_attr",
            "set_trial_system_attr",
            "set_study_user_attr",
            "get_all_trials",
        ):
            monkeypatch.setattr(
                JournalStorage,
                name,
                self.failing("storage", name, getattr(JournalStorage, name), storage_error),
            )
        if wandb_calls:
            import wandb
            from wandb.sdk import wandb_run, wandb_summary

            chosen = wandb_errors()[self.error % len(wandb_errors())]
            monkeypatch.setattr(
                wandb,
                "init",
                self.failing(
                    "wandb",
                    "init",
                    wandb.init,
                    lambda: wandb.errors.CommError("injected: wandb.init failed"),
                ),
            )
            for name in ("log", "define_metric", "mark_preempting", "log_artifact", "finish"):
                monkeypatch.setattr(
                    wandb_run.Run,
                    name,
                    self.failing("wandb", name, getattr(wandb_run.Run, name), chosen),
                )
            for name in ("update", "__setitem__", "get"):
                monkeypatch.setattr(
                    wandb_summary.Summary,
                    name,
                    self.failing(
                        "wandb", f"summary.{name}", getattr(wandb_summary.Summary, name), chosen
                    ),
                )


class FailingWrites:
    """A file opened for writing on a full disk: every write fails (the file stays empty)."""

    def __init__(self, file, error: OSError):
        self.file, self.error = file, error

    def write(self, data) -> int:
        raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.file.close()

    def __getattr__(self, name: str):
        return getattr(self.file, name)


# --------------------------------------------------------------------------------------------------
# What a run must leave


def whole(path: Path) -> bool:
    """Whether the file at its final name is complete, as its reader needs it."""
    data = path.read_bytes()
    try:
        if path.suffix == ".pt":
            with torch.serialization.safe_globals(run_files.NUMPY_NUMBERS):
                torch.load(io.BytesIO(data), weights_only=True)
        elif path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".png":
            return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
        elif path.suffix == ".csv":
            import pandas as pd

            pd.read_csv(io.BytesIO(data))
        elif path.suffix == ".onnx":
            import onnx

            onnx.checker.check_model(onnx.load_from_string(data))
        elif path.suffix == ".log" and path.name != "output.log":  # the journal: whole lines parse
            for line in data.splitlines(keepends=True):
                if line.endswith(b"\n"):
                    json.loads(line)
        elif path.parent.name == "cifar-100-python":
            pickle.loads(data)
    except Exception:  # noqa: BLE001 (a reader's error of any kind: the file is not whole)
        return False
    return True


def files_under(roots: list[Path]) -> dict[Path, bytes]:
    return {
        path: path.read_bytes()
        for root in roots
        if root.exists()
        for path in root.rglob("*")
        if path.is_file()
    }


def check_files(before: dict[Path, bytes], roots: list[Path]) -> None:
    """Each file under its final name is the old one or a whole new one; no temporary is left."""
    for path, data in files_under(roots).items():
        assert not re.search(r"\.tmp$|\.partial-", path.name), f"a temporary file is left: {path}"
        assert before.get(path) == data or whole(path), f"{path}: not the old nor a whole file"


def check_ending(code: int, out: str, err: str, failed: str) -> None:
    """A line of the exit-code table, no traceback; a W&B failure costs W&B only."""
    assert "Traceback" not in out + err, f"{failed}:\n{err[-3000:]}"
    assert code in (0, 1, 2) or code > 128, f"{failed}: exit {code}"
    lines = [line for line in err.splitlines() if line.strip()]
    if code != 0:
        assert lines and lines[-1].startswith(("error: ", "interrupted by ")), f"{failed}: {err}"
    if failed.startswith("wandb"):
        assert code == 0 and "W&B: " in out, f"{failed}: exit {code}, {out[-2000:]}{err[-2000:]}"


# --------------------------------------------------------------------------------------------------
# The commands on tiny data, each with the files it finds (the old ones)


@dataclass
class Command:
    main: Callable[[list[str]], int]
    argv: list[str]
    roots: list[Path]  # where its outputs go: the calls counted are there
    wandb_calls: bool = False


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """100 classes x 3 training images, 1 test image each: with --val-size 100, 200 to train on."""
    root = tmp_path_factory.mktemp("fault_data")
    synthetic_cifar100.write_synthetic_cifar100(root, train_per_class=3, test_per_class=1, seed=3)
    return root


@pytest.fixture(scope="module")
def made(tmp_path_factory, data) -> Path:
    """What the commands need once: a trained checkpoint, and a runs folder to select from whose
    new seed has finished (so that select_model trains nothing)."""
    root = tmp_path_factory.mktemp("made")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = p2.validate_config({**FAST_CONFIG, "epochs": 1, "val_size": 100})
    runs = root / "select" / "runs"
    p2.train(config, p2.prepare_data(data, 100, torch.device("cpu")), runs / "original")
    torch.set_num_threads(threads)
    seed = runs / select_model.SELECTION_DIR / f"{select_model.config_key(config)}-seed1"
    shutil.copytree(runs / "original", seed)
    summary = json.loads((seed / "summary.json").read_text())
    summary["config"]["seed"] = 1
    (seed / "summary.json").write_text(json.dumps(summary))
    return root


def sweep_file(path: Path) -> Path:
    fixed = {key: {"value": value} for key, value in FAST_CONFIG.items()}
    path.write_text(
        json.dumps(
            {
                "program": "part_2_cifar.py",
                "method": "random",
                "metric": {"name": "val_accuracy", "goal": "maximize"},
                "parameters": fixed | {"epochs": {"value": 1}},
            }
        )
    )
    return path


def command(name: str, made: Path, data: Path, work: Path) -> Command:
    """The command `name` with its outputs in folder `work`."""
    quick = ["--val-size", "100", "--data-dir", str(data)]
    runs, images = work / "runs", work / "images"
    if name in ("trainer", "trainer-wandb"):
        mode = "offline" if name == "trainer-wandb" else "disabled"
        return Command(
            p2.main,
            [*cli_args(FAST_CONFIG), *quick, "--runs-dir", str(runs), "--wandb-mode", mode],
            [runs],
            wandb_calls=mode == "offline",
        )
    if name in ("local_sweep", "local_sweep-report"):
        what = ["--report"] if name.endswith("report") else ["--trials", "1"]
        return Command(
            local_sweep.main,
            [
                str(sweep_file(work / "sweep.json")),
                *what,
                *quick,
                "--runs-dir",
                str(runs),
                "--images-dir",
                str(images),
                "--wandb-mode",
                "disabled",
            ],
            [runs, images],
        )
    if name == "select_model":
        return Command(
            select_model.main,
            [
                str(runs),
                "--top",
                "1",
                "--seeds",
                "1",
                *quick,
                "--images-dir",
                str(images),
                "--wandb-mode",
                "disabled",
            ],
            [runs, images],
        )
    if name == "trt_export":
        checkpoint = made / "select" / "runs" / "original" / "best.pt"
        return Command(
            trt_export.main,
            [
                "--checkpoint",
                str(checkpoint),
                "--data-dir",
                str(data),
                "--out",
                str(work / "export"),
                "--plot",
                str(images / "bench.png"),
                "--precision",
                "fp32",
                "--batch-sizes",
                "1",
                *quick_benchmark(),
                "--accuracy-images",
                "20",
            ],
            [work / "export", images],
        )
    assert name == "synthetic_cifar100"
    return Command(
        synthetic_cifar100.main,
        [str(work / "data"), "--train-per-class", "1", "--test-per-class", "1"],
        [work / "data"],
    )


COMMANDS = [
    "trainer",
    "trainer-wandb",
    "local_sweep",
    "local_sweep-report",
    "select_model",
    "trt_export",
    "synthetic_cifar100",
]
FRESH = ("trainer", "trainer-wandb", "local_sweep")  # start empty (a run folder found resumes)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", COMMANDS)
def test_every_outside_failure_ends_with_a_line_of_the_table_and_leaves_only_whole_files(
    name, seed, made, data, tmp_path, monkeypatch, capsys, offline, with_figures
):
    monkeypatch.setattr(cost, "LATENCY_REPEATS", 3)  # the cost measurement at its least
    monkeypatch.setenv("WANDB_RUN_ID", "faultrun")  # the trainer's run folder: one name in all
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # W&B's artifact staging
    found = tmp_path / "found"  # what every run finds: nothing, or what a first clean run left
    found.mkdir()
    if name == "local_sweep-report":
        sweep = command("local_sweep", made, data, found)
        assert sweep.main(sweep.argv) == 0
    if name == "select_model":
        shutil.copytree(made / "select" / "runs", found / "runs")
    if name not in FRESH:
        first = command(name, made, data, found)
        assert first.main(first.argv) == 0
    capsys.readouterr()

    def run(folder: Path, outside: Outside) -> tuple[Command, int, str, str, dict]:
        """The command in `folder` (a copy of `found`) with the outside calls `outside` watches."""
        shutil.copytree(found, folder)
        ran = command(name, made, data, folder)
        outside.roots = [root.absolute() for root in ran.roots]
        before = files_under(ran.roots)
        with monkeypatch.context() as patch:
            outside.install(patch, ran.wandb_calls)
            code = ran.main(ran.argv)
        out, err = capsys.readouterr()
        return ran, code, out, err, before

    counted = Outside([])
    _, code, out, err, _ = run(tmp_path / "counted", counted)
    assert code == 0 and "Traceback" not in out + err, err[-3000:]
    kinds = (
        ("wandb",)
        if name == "trainer-wandb"
        else ("open", "lock", "replace", "mkdir", "storage", "export")
    )
    sites: dict[str, list[int]] = {}
    for index, site in enumerate(counted.calls):
        if site.kind in kinds:
            sites.setdefault(str(site), []).append(index)
    assert sites, counted.calls
    rng = random.Random(f"{name}-{seed}")
    chosen = (
        sorted(sites) if SITES == "all" else rng.sample(sorted(sites), min(int(SITES), len(sites)))
    )
    seen = []
    for number, site in enumerate(chosen):
        kind = site.split()[0]
        error = rng.choice(ERRORS.get(kind, range(len(wandb_errors()))))
        outside = Outside([], rng.choice(sites[site]), error)
        ran, code, out, err, before = run(tmp_path / f"fault{number}", outside)
        failed = f"{site} ({errno.errorcode[error] if kind in ERRORS else kind})"
        assert outside.failed == site, f"the calls changed: {outside.failed} instead of {site}"
        check_ending(code, out, err, failed)
        check_files(before, ran.roots)
        said = [line for line in (out + err).splitlines() if line.startswith(("error:", "W&B:"))]
        seen.append(f"{failed}: exit {code}: {said}")
    (tmp_path / "faults.txt").write_text("\n".join(seen) + "\n")  # what each failure said
