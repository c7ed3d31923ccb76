"""Shared fixtures: tiny CIFAR-100 stand-ins in the real on-disk layout, a fast config for short
runs, runs built once per session and copied into each test that starts from them, and the signal
dispositions a terminal gives."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cifarkit.core import cli

# the repository root is on sys.path: pythonpath in pyproject
from synthetic_cifar100 import (
    write_synthetic_cifar100,
)

ROOT = Path(__file__).resolve().parents[1]

# One torch thread in this process and in every process a test starts (they inherit it): tiny models
# gain nothing from two, and with more test workers than cores, two threads per process spin
# against each other (test_select_model's three fixture trainings: 41 s on two threads, 4 s on one,
# with two workers on a busy 2-core machine). Set before any test module imports torch, which reads
# it once; a test of the thread budget sets its own.
os.environ["OMP_NUM_THREADS"] = "1"

# No figure from the commands a test runs (figures.figures_wanted: matplotlib's import and the
# drawing, about 0.9 s of CPU in each training process and as much in each sweep report), in this
# process and the processes it starts. A test that looks at a figure, or at every file a command
# writes, draws them: the `with_figures` fixture, or `figures_drawn()` in a session fixture.
os.environ["CIFARKIT_NO_FIGURES"] = "1"


@contextlib.contextmanager
def figures_drawn():
    """Commands run inside draw their figures (curves.png, the sweep report's plots, ...), as a
    user's do."""
    os.environ.pop("CIFARKIT_NO_FIGURES")
    try:
        yield
    finally:
        os.environ["CIFARKIT_NO_FIGURES"] = "1"


@pytest.fixture()
def with_figures():
    """This test's commands draw their figures (and the processes it starts), as a user's do."""
    with figures_drawn():
        yield


# Small filters keep a CPU epoch near a second; the architecture is the same.
FAST_CONFIG = {
    "num_filters_1": 8,
    "num_filters_2": 16,
    "num_filters_3": 32,
    "batch_size": 64,
    "epochs": 2,
    "learning_rate": 0.01,
}


def trainer_command(*args: str) -> list[str]:
    """The trainer as a real process, with this interpreter."""
    return [sys.executable, str(ROOT / "part_2_cifar.py"), *args]


def cli_args(config: dict) -> list[str]:
    """--key=value arguments, the form `wandb agent` passes."""
    return [f"--{key}={value}" for key, value in config.items()]


def command_args(
    data_dir: Path, runs_dir: Path, val_size: int, wandb_mode: str | None = "disabled"
) -> list[str]:
    """--data-dir, --runs-dir, --val-size and (unless None) --wandb-mode: the options every command
    a test runs takes. W&B off unless the case is W&B's."""
    mode = [] if wandb_mode is None else ["--wandb-mode", wandb_mode]
    return [
        "--data-dir",
        str(data_dir),
        "--runs-dir",
        str(runs_dir),
        "--val-size",
        str(val_size),
        *mode,
    ]


def trainer_args(
    data_dir: Path,
    runs_dir: Path,
    val_size: int = 200,
    wandb_mode: str = "disabled",
    log_model: bool = True,
    **config,
) -> list[str]:
    """part_2_cifar.py's arguments: FAST_CONFIG and `config` as `wandb agent` passes them, then
    command_args; --no-log-model unless `log_model`."""
    no_upload = [] if log_model else ["--no-log-model"]
    return [
        *cli_args({**FAST_CONFIG, **config}),
        *command_args(data_dir, runs_dir, val_size, wandb_mode),
        *no_upload,
    ]


def sweep_args(
    sweep: Path,
    data_dir: Path,
    runs_dir: Path,
    *more: str,
    val_size: int = 100,
    wandb_mode: str | None = "disabled",
) -> list[str]:
    """local_sweep.py's arguments: the sweep file, command_args, the report's images under the runs
    folder, then `more`."""
    images = ["--images-dir", str(runs_dir / "images")]
    return [str(sweep), *command_args(data_dir, runs_dir, val_size, wandb_mode), *images, *more]


def write_sweep_file(path: Path, parameters: dict, method: str = "random") -> Path:
    """A sweep file for part_2_cifar.py maximizing val_accuracy over `parameters`, as JSON."""
    sweep = {"program": "part_2_cifar.py", "method": method, "parameters": parameters}
    path.write_text(json.dumps(sweep | {"metric": {"name": "val_accuracy", "goal": "maximize"}}))
    return path


def quick_benchmark(min_iterations: int = 1) -> list[str]:
    """trt_export.py's options for a benchmark on the CPU that times as little as it can: for tests
    of what the export writes and says, not of its figures."""
    timing = [
        "--warmup-seconds",
        "0",
        "--min-seconds",
        "0",
        "--min-iterations",
        str(min_iterations),
    ]
    return ["--device", "cpu", *timing]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """100 classes x 10 training images, 3 test images each: 1,000 + 300 images, str keys."""
    root = tmp_path_factory.mktemp("tiny_cifar")
    write_synthetic_cifar100(root, train_per_class=10, test_per_class=3, seed=1)
    return root


@pytest.fixture(scope="session")
def learnable_data_dir(tmp_path_factory) -> Path:
    """10 well-separated classes x 60 images: a model that learns anything ends far above 10%
    chance."""
    root = tmp_path_factory.mktemp("learnable_cifar")
    write_synthetic_cifar100(
        root, train_per_class=60, test_per_class=20, num_classes=10, noise=30.0, seed=2
    )
    return root


@pytest.fixture(autouse=True)
def fresh_wandb_settings():
    """wandb keeps its settings (WANDB_DIR, WANDB_MODE, ...) in a process-wide singleton from its
    first use, so a test that runs W&B in-process would leave its settings to the next: end each
    test as a new process would begin."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


@contextlib.contextmanager
def torch_threads(count: int):
    """torch's intra-op threads set to `count` inside the block, then back to what they were."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def one_thread():
    """Every test's in-process training on one torch thread, as OMP_NUM_THREADS above gives every
    process, whatever an earlier test or a command run in-process (trt_export's --threads) set."""
    with torch_threads(1):
        yield


@pytest.fixture()
def offline(monkeypatch, tmp_path, one_thread):
    """In-process runs: W&B offline, its files under tmp_path, no key to find; one torch thread.
    Yields tmp_path."""
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    yield tmp_path


def process_env(folder: Path) -> dict:
    """Environment for a subprocess: no W&B key, no netrc, W&B files under `folder` (HOME is
    folder/home), never a login prompt; one torch thread (see OMP_NUM_THREADS above)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = folder / "home"
    home.mkdir()
    env.update(
        HOME=str(home),
        WANDB_DIR=str(folder),
        WANDB_SILENT="true",
        PYTHONPATH=str(ROOT),
        NETRC=str(home / ".netrc"),
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.fixture()
def quiet_optuna():
    """Optuna's INFO lines and its experimental-API warnings (heartbeats, retries) kept out of
    tests that use its storage directly."""
    import warnings

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


@pytest.fixture()
def offline_env(tmp_path) -> dict:
    """process_env(tmp_path): a subprocess with no W&B key, its W&B files under tmp_path."""
    return process_env(tmp_path)


# --------------------------------------------------------------------------------------------------
# Runs built once per session, a copy for each test
#
# Several tests start from the same training: a finished run, a run that crashed after epoch 1, a
# local sweep with one finished trial. Each is built once per session in pytest's tmp folder, and
# each test that asks for it gets a copy in its own tmp_path (shutil.copytree: the same files and
# file times), to change as it likes; the original is never handed out. A new test names one:
#
#     def test_x(finished_run):      # tmp_path/runs/finished: FINISHED_RUN trained to its end
#     def test_x(crashed_run):       # tmp_path/runs/crashed: CRASHED_RUN's epoch 1, no summary
#     def test_x(finished_journal):  # (local_sweep.py arguments, journal): study "cut", 1 trial
#
# A case that needs another training builds its own (FAST_CONFIG, 1-2 epochs: about a second in
# process, five as a process).

FINISHED_RUN = {**FAST_CONFIG, "epochs": 1, "val_size": 200}  # on tiny_data_dir
CRASHED_RUN = {**FAST_CONFIG, "epochs": 2, "val_size": 200}  # tiny_data_dir, crashed after epoch 1
FINISHED_SWEEP = {  # on learnable_data_dir: a CPU epoch well under a second
    "program": "part_2_cifar.py",
    "method": "random",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "parameters": {
        "batch_size": {"value": 64},
        "num_filters_1": {"value": 8},
        "num_filters_2": {"value": 16},
        "num_filters_3": {"value": 16},
        "learning_rate": {"min": 0.01, "max": 0.05},
        "epochs": {"value": 1},
    },
}


def copy_of(original: Path, copy: Path) -> Path:
    """`original`, a folder built once per session, copied to `copy` for one test: every file, with
    its times. A text file naming a path inside the original (a journal records each trial's run
    folder) names the copy's instead."""
    shutil.copytree(original, copy, dirs_exist_ok=True)
    inside, moved = f"{original}{os.sep}", f"{copy}{os.sep}"
    for path in copy.rglob("*"):
        if path.suffix in (".json", ".csv", ".log") and inside in (text := path.read_text()):
            path.write_text(text.replace(inside, moved))
    return copy


def train_in_process(config: dict, data_dir: Path, run_dir: Path, **train_options) -> dict:
    """part_2_cifar.train of `config` (val_size included) on the CPU, one torch thread: the
    summary. The config's keys in the trainer's SETTINGS order, as its command line gives them (a
    resume names each differing value in that order)."""
    import torch

    import part_2_cifar as trainer

    config = trainer.validate_config(
        {key: config[key] for key in trainer.SETTINGS if key in config} | config
    )
    with torch_threads(1):
        data = trainer.prepare_data(data_dir, config["val_size"], torch.device("cpu"))
        return trainer.train(config, data, run_dir, **train_options)


@pytest.fixture(scope="session")
def _finished_run_once(tiny_data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("finished_run") / "finished"
    with figures_drawn():  # every file a finished run holds
        assert train_in_process(FINISHED_RUN, tiny_data_dir, run_dir)["status"] == "finished"
    return run_dir


@pytest.fixture()
def finished_run(_finished_run_once, tmp_path) -> Path:
    """tmp_path/runs/finished: FINISHED_RUN trained to its end (best.pt, last.pt, summary.json,
    curves.png), as part_2_cifar.train writes it."""
    return copy_of(_finished_run_once, tmp_path / "runs" / "finished")


@pytest.fixture(scope="session")
def _crashed_run_once(tiny_data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("crashed_run") / "crashed"

    def crash(metrics: dict) -> None:
        raise RuntimeError("crash after epoch 1 (injected)")

    with pytest.raises(RuntimeError, match="injected"):
        train_in_process(CRASHED_RUN, tiny_data_dir, run_dir, on_epoch=crash)
    return run_dir


@pytest.fixture()
def crashed_run(_crashed_run_once, tmp_path) -> Path:
    """tmp_path/runs/crashed: CRASHED_RUN trained epoch 1 of 2 and crashed: last.pt and best.pt
    hold epoch 1, there is no summary.json; a resume trains epoch 2."""
    return copy_of(_crashed_run_once, tmp_path / "runs" / "crashed")


def finished_sweep_args(folder: Path, data_dir: Path) -> list[str]:
    """local_sweep.py's arguments, without --trials, for the sweep file cut.json in `folder`."""
    runs = folder / "runs"
    return [
        str(folder / "cut.json"),
        "--data-dir",
        str(data_dir),
        "--runs-dir",
        str(runs),
        "--val-size",
        "100",
        "--images-dir",
        str(runs / "images"),
        "--wandb-mode",
        "disabled",
    ]


@pytest.fixture(scope="session")
def _finished_journal_once(learnable_data_dir, tmp_path_factory) -> Path:
    import local_sweep

    folder = tmp_path_factory.mktemp("finished_journal")
    (folder / "cut.json").write_text(json.dumps(FINISHED_SWEEP))
    with torch_threads(1):
        args = finished_sweep_args(folder, learnable_data_dir)
        assert local_sweep.main([*args, "--trials", "1"]) == 0
    return folder


@pytest.fixture()
def finished_journal(_finished_journal_once, learnable_data_dir, tmp_path) -> tuple[list, Path]:
    """A local sweep (FINISHED_SWEEP in tmp_path/cut.json, study "cut") whose one trial finished:
    (its arguments without --trials, its journal tmp_path/runs/optuna-journal.log)."""
    from cifarkit.sweeps import storage as sweep_storage

    copy_of(_finished_journal_once, tmp_path)
    journal = tmp_path / "runs" / sweep_storage.DEFAULT_STORAGE_FILE
    return finished_sweep_args(tmp_path, learnable_data_dir), journal


# --------------------------------------------------------------------------------------------------
# Signal dispositions: the ones a test's case needs, whatever its runner inherited
#
# A process started from a terminal has every stop signal at its default action; the test runner
# may not: `nohup` ignores SIGHUP, and a non-interactive shell starts a background job (`pytest &`
# in a script) with SIGINT and SIGQUIT ignored. Children inherit an ignored signal, and the
# programs rightly keep it (cli.StopOnSignal), so a test that sends a signal sets what its case
# needs: `at_terminal_defaults(command)` starts a process as from a terminal (a case of an
# inherited ignore then sets it itself: nohup, `bash -c 'cmd &'`), and the fixture
# `terminal_signal_defaults` does the same for the test's own process (signal.raise_signal).

_RESET_AND_EXEC = """import os, signal, sys
for number in sys.argv[1].split(","):
    signal.signal(int(number), signal.SIG_DFL)
os.execvp(sys.argv[2], sys.argv[2:])"""


def at_terminal_defaults(command: list) -> list[str]:
    """`command` started with every stop signal (cli.STOP_SIGNALS) at its default action, as from
    a terminal: a bare Python resets them and execs `command`, so the process and its pid are the
    command's."""
    numbers = ",".join(str(int(signum)) for signum in cli.STOP_SIGNALS)
    return [sys.executable, "-I", "-S", "-c", _RESET_AND_EXEC, numbers, *map(str, command)]


@pytest.fixture()
def terminal_signal_defaults():
    """For one test, this process's stop signals as a terminal starts Python (SIGINT raises
    KeyboardInterrupt, the others at their default action); then as they were."""
    before = {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS}
    for signum in cli.STOP_SIGNALS:
        default = signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL
        signal.signal(signum, default)
    yield
    for signum, handler in before.items():
        if handler is not None:  # None: set outside Python, which cannot put it back
            signal.signal(signum, handler)


# --------------------------------------------------------------------------------------------------
# A throw-away PostgreSQL server, for the sweeps that several machines share


def postgres_bin_dir() -> Path | None:
    """Debian's PostgreSQL server binaries (apt-get install postgresql), newest version first, or on
    PATH."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: -int(p.parts[-3])
    )
    if found:
        return found[0].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """A PostgreSQL server for the test session: own data folder, a loopback port, an unprivileged
    user, no password (trust). Yields postgresql://postgres@127.0.0.1:PORT; the server and its
    folder go at the end."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    as_user: list[str] = []
    # not under pytest's tmp: the server's user reads it
    root = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            shutil.chown(root, "postgres")
        except LookupError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = _free_loopback_port(), root / "data"
    # a test database: speed over durability
    options = (
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off"
    )
    try:
        subprocess.run(
            [
                *as_user,
                bin_dir / "initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        subprocess.run(
            [
                *as_user,
                bin_dir / "pg_ctl",
                "-D",
                data,
                "-l",
                root / "server.log",
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=90,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log = root / "server.log"
        detail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(
            f"PostgreSQL did not start: {' '.join(detail) or (e.stderr or '').strip()[-300:]}"
        )
    yield f"postgresql://postgres@127.0.0.1:{port}"
    subprocess.run(
        [*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
        capture_output=True,
        timeout=60,
    )
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: str, tmp_path: Path) -> str:
    """A new, empty database on the session's server, for one test."""
    # unique in a session
    name = "db_" + "".join(c if c.isalnum() else "_" for c in tmp_path.name.lower())
    return create_database(postgres_server, name)


def create_database(server: str, name: str) -> str:
    """A new, empty database `name` on the server at URL `server`; its URL."""
    port = server.rsplit(":", 1)[1]
    subprocess.run(
        [postgres_bin_dir() / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", name],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return f"{server}/{name}"


# --------------------------------------------------------------------------------------------------
# What an offline W&B run recorded, as the W&B server will read it after `wandb sync`


def wandb_records(wandb_dir: Path, run_id: str) -> list:
    """The records of the offline W&B run `run_id`, read from its .wandb file (LevelDB log format:
    32 KiB blocks of chunks, each a 7-byte header of CRC, length and type; the file opens with a
    7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data, pos, chunk, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk, pos = chunk + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def offline_wandb_run(wandb_dir: Path, run_id: str) -> tuple[int | None, bool, dict, dict]:
    """(exit code, marked preempting, summary, config) of an offline W&B run; values as JSON reads
    them."""
    code, preempting, summary, config = None, False, {}, {}
    for record in wandb_records(wandb_dir, run_id):
        kind = record.WhichOneof("record_type")
        if kind == "exit":
            code = record.exit.exit_code
        elif kind == "preempting":
            preempting = True
        elif kind == "summary":
            summary.update(
                {
                    item.key: json.loads(item.value_json)
                    for item in record.summary.update
                    if item.key
                }
            )
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items if item.key})
    return code, preempting, summary, config


# --------------------------------------------------------------------------------------------------
# W&B's own process


def wandb_core_under(pid: int) -> int | None:
    """The pid of the wandb-core process among `pid`'s descendants, as /proc lists them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            children.setdefault(parent, []).append(int(entry.name))
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            if b"wandb-core" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:
            continue
        todo += children.get(child, [])
    return None
