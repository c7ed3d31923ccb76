"""Shared fixtures: tiny CIFAR-100 stand-ins in the real on-disk layout, and a fast config for short runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from synthetic_cifar100 import write_synthetic_cifar100  # the repository root is on sys.path: pythonpath in pyproject

ROOT = Path(__file__).resolve().parents[1]

# Small filters keep a CPU epoch near a second; the architecture is the same.
FAST_CONFIG = {"num_filters_1": 8, "num_filters_2": 16, "num_filters_3": 32, "batch_size": 64, "epochs": 2,
               "learning_rate": 0.01}


def trainer_command(*args: str) -> list[str]:
    """The trainer as a real process, with this interpreter."""
    return [sys.executable, str(ROOT / "part_2_cifar.py"), *args]


def cli_args(config: dict) -> list[str]:
    """--key=value arguments, the form `wandb agent` passes."""
    return [f"--{key}={value}" for key, value in config.items()]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """100 classes x 10 training images, 3 test images each: 1,000 + 300 images, str keys."""
    root = tmp_path_factory.mktemp("tiny_cifar")
    write_synthetic_cifar100(root, train_per_class=10, test_per_class=3, seed=1)
    return root


@pytest.fixture(scope="session")
def learnable_data_dir(tmp_path_factory) -> Path:
    """10 well-separated classes x 60 images: a model that learns anything ends far above 10% chance."""
    root = tmp_path_factory.mktemp("learnable_cifar")
    write_synthetic_cifar100(root, train_per_class=60, test_per_class=20, num_classes=10, noise=30.0, seed=2)
    return root


@pytest.fixture(autouse=True)
def fresh_wandb_settings():
    """wandb keeps its settings (WANDB_DIR, WANDB_MODE, ...) in a process-wide singleton from its first use, so a test
    that runs W&B in-process would leave its settings to the next: end each test as a new process would begin."""
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
    """Every test's in-process training on one torch thread, as the subprocesses have
    (OMP_NUM_THREADS=1 in offline_env): tiny models gain nothing from two, and two spinning threads
    on a busy 2-core machine train many times slower (3 epochs of FAST_CONFIG: 3.4 s on one, 26 s
    on two)."""
    with torch_threads(1):
        yield


@pytest.fixture()
def offline(monkeypatch, tmp_path, one_thread):
    """In-process runs: W&B offline, its files under tmp_path, no key to find; one torch thread. Yields tmp_path."""
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    yield tmp_path


@pytest.fixture()
def offline_env(tmp_path) -> dict:
    """Environment for a subprocess: no W&B key, no netrc, W&B files under tmp_path, never a login prompt."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    home = tmp_path / "home"
    home.mkdir()
    # One thread: tiny models gain nothing from two, and a busy machine oversubscribed is many times slower.
    env.update(HOME=str(home), WANDB_DIR=str(tmp_path), WANDB_SILENT="true", PYTHONPATH=str(ROOT),
               NETRC=str(home / ".netrc"), OMP_NUM_THREADS="1")
    return env


# ----------------------------------------------------------------------------------------------------------------------
# A throw-away PostgreSQL server, for the sweeps that several machines share


def postgres_bin_dir() -> Path | None:
    """Debian's PostgreSQL server binaries (apt-get install postgresql), newest version first, or on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: -int(p.parts[-3]))
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
    """A PostgreSQL server for the test session: own data folder, a loopback port, an unprivileged user, no
    password (trust). Yields postgresql://postgres@127.0.0.1:PORT; the server and its folder go at the end."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    as_user: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="pytest-postgres-"))  # not under pytest's tmp: the server's user reads it
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        try:
            shutil.chown(root, "postgres")
        except LookupError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = _free_loopback_port(), root / "data"
    options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off")  # a test database: speed over durability
    try:
        subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync",
                        "-E", "UTF8"], check=True, capture_output=True, text=True, timeout=120)
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-l", root / "server.log", "-o", options, "-w",
                        "-t", "60", "start"], check=True, capture_output=True, text=True, timeout=90)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        log = root / "server.log"
        detail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {' '.join(detail) or (e.stderr or '').strip()[-300:]}")
    yield f"postgresql://postgres@127.0.0.1:{port}"
    subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True,
                   timeout=60)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: str, tmp_path: Path) -> str:
    """A new, empty database on the session's server, for one test."""
    name = "db_" + "".join(c if c.isalnum() else "_" for c in tmp_path.name.lower())  # unique in a session
    port = postgres_server.rsplit(":", 1)[1]
    subprocess.run([postgres_bin_dir() / "createdb", "-h", "127.0.0.1", "-p", port, "-U", "postgres", name],
                   check=True, capture_output=True, timeout=60)
    return f"{postgres_server}/{name}"


# ----------------------------------------------------------------------------------------------------------------------
# What an offline W&B run recorded, as the W&B server will read it after `wandb sync`


def wandb_records(wandb_dir: Path, run_id: str) -> list:
    """The records of the offline W&B run `run_id`, read from its .wandb file (LevelDB log format: 32 KiB blocks of
    chunks, each a 7-byte header of CRC, length and type; the file opens with a 7-byte W&B header)."""
    from wandb.proto import wandb_internal_pb2

    (path,) = wandb_dir.glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    data, pos, chunk, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            records.append(wandb_internal_pb2.Record.FromString(chunk))
            chunk = b""
    return records


def offline_wandb_run(wandb_dir: Path, run_id: str) -> tuple[int | None, bool, dict, dict]:
    """(exit code, marked preempting, summary, config) of an offline W&B run; values as JSON reads them."""
    code, preempting, summary, config = None, False, {}, {}
    for record in wandb_records(wandb_dir, run_id):
        kind = record.WhichOneof("record_type")
        if kind == "exit":
            code = record.exit.exit_code
        elif kind == "preempting":
            preempting = True
        elif kind == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update if item.key})
        elif kind in ("run", "config"):
            items = record.run.config.update if kind == "run" else record.config.update
            config.update({item.key: json.loads(item.value_json) for item in items if item.key})
    return code, preempting, summary, config
