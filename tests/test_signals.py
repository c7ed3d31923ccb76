"""Every signal that asks a process to stop is a graceful stop, in the trainer, a local sweep and
model selection; a signal the caller ignores (nohup, a script's background job) stays ignored. Real
processes, real signals; each process starts with the dispositions its case needs
(conftest.at_terminal_defaults), whatever pytest itself inherited."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import (
    FAST_CONFIG,
    ROOT,
    at_terminal_defaults,
    offline_wandb_run,
    trainer_args,
    trainer_command,
    write_sweep_file,
)

import local_sweep
import part_2_cifar as trainer
from cifarkit.core import cli, run_files

EPOCHS = 20  # far more than the test waits for: a stop must land mid-run even on a loaded machine
EPOCH_LINE = re.compile(r"epoch +(\d+)/")


class Process:
    """A child process, started with the stop signals at a terminal's defaults, whose stdout is read
    line by line in the background; stderr is kept for the end."""

    def __init__(self, command: list[str], env: dict, cwd: Path, **popen):
        self.popen = subprocess.Popen(
            at_terminal_defaults(command),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            **popen,
        )
        self.lines: list[str] = []
        self.errors: list[str] = []  # stderr as it comes: one reader a pipe, or lines get lost
        self.readers = [
            threading.Thread(target=lines.extend, args=(pipe,), daemon=True)
            for lines, pipe in ((self.lines, self.popen.stdout), (self.errors, self.popen.stderr))
        ]
        for reader in self.readers:
            reader.start()

    def wait_until(self, condition, seconds: float = 240) -> None:
        """Until condition() is true, the process alive all the while."""
        deadline = time.monotonic() + seconds
        while not condition():
            assert self.popen.poll() is None, self.ended_early()
            assert time.monotonic() < deadline, f"waited {seconds} s: {self.lines[-5:]}"
            time.sleep(0.05)

    def wait_for_epoch(self, epoch: int, seconds: float = 240) -> None:
        """Until some process writing to stdout has printed the line of `epoch` (a trainer, or a
        sweep's worker)."""
        deadline = time.monotonic() + seconds
        while not any(
            (m := EPOCH_LINE.match(line)) and int(m[1]) >= epoch for line in list(self.lines)
        ):
            assert self.popen.poll() is None, self.ended_early()
            assert time.monotonic() < deadline, f"no epoch {epoch} line: {self.lines[-5:]}"
            time.sleep(0.01)

    def wait_for_more_epochs(self, count: int, seconds: float = 240) -> None:
        """Until `count` more epoch lines than now have been printed (by any of the processes
        writing to stdout)."""
        start, deadline = len(self.lines), time.monotonic() + seconds
        while sum(bool(EPOCH_LINE.match(line)) for line in self.lines[start:]) < count:
            assert self.popen.poll() is None, self.ended_early()
            assert time.monotonic() < deadline, f"no {count} more epochs: {self.lines[-5:]}"
            time.sleep(0.01)

    def ended_early(self) -> str:
        return f"ended early ({self.popen.returncode}): {''.join(self.errors)}"

    def finish(self, seconds: float = 240) -> tuple[int, str]:
        """(exit code, stderr) once it has ended and both pipes are read to their end."""
        self.popen.wait(timeout=seconds)
        for reader in self.readers:
            reader.join(timeout=60)
        return self.popen.returncode, "".join(self.errors)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def run_args(
    data_dir: Path, runs_dir: Path, epochs: int = EPOCHS, wandb_mode: str = "offline"
) -> list[str]:
    """The trainer's arguments; W&B offline, as most cases here check what the W&B run recorded."""
    return trainer_args(data_dir, runs_dir, wandb_mode=wandb_mode, log_model=False, epochs=epochs)


def saved_epoch(run_dir: Path) -> int:
    return run_files.load_checkpoint(run_dir / "last.pt", needs=("epoch",))["epoch"]


# --------------------------------------------------------------------------------------------------
# The trainer


def test_sighup_to_the_trainer_keeps_the_latest_epoch_finishes_the_wandb_run_and_exits_129(
    tiny_data_dir, tmp_path, offline_env
):
    # What `wandb agent --forward-signals` passes on. Checkpoints are written after epoch 1 and then
    # once a minute: only a graceful stop (as SIGTERM's, tests/test_reliability.py) has epoch 2 or
    # later in last.pt.
    env = offline_env | {"WANDB_RUN_ID": "stopped"}
    process = Process(trainer_command(*run_args(tiny_data_dir, tmp_path / "runs")), env, tmp_path)
    process.wait_for_epoch(2)
    process.popen.send_signal(signal.SIGHUP)
    code, stderr = process.finish()
    assert code == 128 + signal.SIGHUP
    assert one_line(stderr).startswith("interrupted by SIGHUP: ") and "--resume" in stderr
    assert 2 <= saved_epoch(tmp_path / "runs" / "stopped") < EPOCHS
    # finished, requeueable
    assert offline_wandb_run(tmp_path / "wandb", "stopped")[:2] == (
        128 + signal.SIGHUP,
        True,
    )


def test_a_dropped_ssh_session_is_a_graceful_stop(tiny_data_dir, tmp_path, offline_env):
    """The trainer on a terminal (a pseudo-terminal, as sshd gives) that goes away: the kernel sends
    SIGHUP and every later write to the terminal fails; the run still saves, finishes its W&B run
    and exits 129."""
    master, terminal = os.openpty()

    # a session of its own with the pty as controlling terminal, as a login shell has
    def on_the_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = offline_env | {"WANDB_RUN_ID": "ssh"}
    command = at_terminal_defaults(trainer_command(*run_args(tiny_data_dir, tmp_path / "runs")))
    process = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        preexec_fn=on_the_terminal,
    )
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + 240
    while not re.search(rb"epoch +2/", shown):
        assert process.poll() is None and time.monotonic() < deadline, shown.decode()[-2000:]
        try:
            shown += os.read(master, 65536)
        except OSError:  # EIO: nothing to read just now
            time.sleep(0.01)
    os.close(master)  # the connection drops
    assert process.wait(timeout=240) == 128 + signal.SIGHUP
    assert 2 <= saved_epoch(tmp_path / "runs" / "ssh") < EPOCHS
    assert offline_wandb_run(tmp_path / "wandb", "ssh")[:2] == (128 + signal.SIGHUP, True)


def test_signals_the_caller_ignores_stay_ignored_and_the_others_still_stop(
    tiny_data_dir, tmp_path, offline_env
):
    # `nohup` ignores SIGHUP; bash without job control starts `cmd &` with SIGINT and SIGQUIT
    # ignored. The user asked for the run to go on after the terminal closes: it does, and SIGTERM
    # still stops it gracefully.
    args = run_args(tiny_data_dir, tmp_path / "runs", wandb_mode="disabled")
    command = " ".join(f"'{part}'" for part in trainer_command(*args))
    env = offline_env | {"WANDB_RUN_ID": "nohup"}
    process = Process(["nohup", "bash", "-c", f"{command} & echo pid $!; wait $!"], env, tmp_path)
    process.wait_for_epoch(2)
    pid = int(next(line.split()[1] for line in process.lines if line.startswith("pid ")))
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT):
        os.kill(pid, signum)
    process.wait_for_more_epochs(2)  # still training
    os.kill(pid, signal.SIGTERM)
    code, stderr = process.finish()
    assert code == 128 + signal.SIGTERM and one_line(stderr).startswith("interrupted by SIGTERM: ")
    assert 4 <= saved_epoch(tmp_path / "runs" / "nohup") < EPOCHS


# W&B's start and the end of a run (upload, finish) are outside the training loop. A slow one is
# made here by a stand-in that prints a line and sleeps; the process, its signals and what it prints
# are real.
SLOW_STAGE = """
import sys, time
import part_2_cifar as p2
from cifarkit.core import wandb_connect
real = getattr(wandb_connect, sys.argv[1])
def slow(*args, **kwargs):
    print("slow stage", flush=True)
    time.sleep(120)
    return real(*args, **kwargs)
setattr(wandb_connect, sys.argv[1], slow)
sys.exit(p2.main(sys.argv[2:]))
"""


@pytest.mark.parametrize(
    ("stage", "said"),
    [
        ("start_wandb_run", "no epoch had finished; the same command starts again"),
        ("end_run", "the run is complete in "),
    ],
)
def test_ctrl_c_twice_during_the_wandb_start_or_end_is_one_line_and_exit_130(
    stage, said, tiny_data_dir, tmp_path, offline_env
):
    process = Process(
        [sys.executable, "-c", SLOW_STAGE, stage, *run_args(tiny_data_dir, tmp_path / "runs", 1)],
        offline_env,
        tmp_path,
    )
    process.wait_until(lambda: "slow stage\n" in process.lines)
    process.popen.send_signal(signal.SIGINT)
    time.sleep(0.5)  # the first one is only noted; the second means "stop now"
    process.popen.send_signal(signal.SIGINT)
    code, stderr = process.finish()
    assert code == 128 + signal.SIGINT
    assert one_line(stderr).startswith(f"interrupted by SIGINT: {said}")


# --------------------------------------------------------------------------------------------------
# Output that goes away without a SIGHUP: the work goes on unseen (cli.OutputThatMayGoAway)


def assert_finished_quietly(
    code: int, stderr: str, tmp_path: Path, run_id: str, epochs: int
) -> None:
    assert code == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    summary = json.loads((tmp_path / "runs" / run_id / "summary.json").read_text())
    assert (summary["status"], summary["epochs_completed"]) == ("finished", epochs)
    assert offline_wandb_run(tmp_path / "wandb", run_id)[0] == 0  # the W&B run finished, exit 0


def test_a_pipe_whose_reader_exits_after_the_first_line_does_not_end_the_training(
    tiny_data_dir, tmp_path, offline_env
):
    # `part_2_cifar.py ... | head -1`: once head exits, every write to stdout fails (EPIPE; Python
    # ignores SIGPIPE).
    epochs, read_end, write_end = 5, *os.pipe()
    process = subprocess.Popen(
        trainer_command(*run_args(tiny_data_dir, tmp_path / "runs", epochs)),
        env=offline_env | {"WANDB_RUN_ID": "piped"},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        assert EPOCH_LINE.match(reader.readline())
    _, stderr = process.communicate(timeout=240)
    assert_finished_quietly(process.returncode, stderr, tmp_path, "piped", epochs)


def test_only_a_reader_that_went_away_is_forgiven_a_full_disk_still_raises():
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as piped:
        stream = cli.OutputThatMayGoAway(piped)
        stream.write("x")
        stream.flush()  # EPIPE: from now on the descriptor is /dev/null
        stream.write("y")
        stream.flush()
        assert os.fstat(piped.fileno()).st_rdev == os.stat(os.devnull).st_rdev
    full = open("/dev/full", "w")  # noqa: SIM115 - closed by hand below: its close fails as well
    stream = cli.OutputThatMayGoAway(full)
    stream.write("x")
    with pytest.raises(OSError, match="No space left"):
        stream.flush()
    with contextlib.suppress(OSError):
        full.close()


def test_a_terminal_gone_without_a_sighup_does_not_end_the_training(
    tiny_data_dir, tmp_path, offline_env
):
    # `part_2_cifar.py ... &` then logout: bash sends background jobs no SIGHUP, and every write to
    # the terminal the job still holds fails (EIO), on stdout and stderr alike. A pty that is not
    # the job's controlling terminal is that.
    epochs, (master, terminal) = 5, os.openpty()
    process = subprocess.Popen(
        trainer_command(*run_args(tiny_data_dir, tmp_path / "runs", epochs)),
        env=offline_env | {"WANDB_RUN_ID": "bg"},
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=terminal,
        stderr=terminal,
        start_new_session=True,
    )
    os.close(terminal)
    shown, deadline = b"", time.monotonic() + 240
    while not EPOCH_LINE.search(shown.decode(errors="replace")):
        assert process.poll() is None and time.monotonic() < deadline, shown.decode()[-2000:]
        shown += os.read(master, 65536)
    os.close(master)  # logout: the terminal is gone
    process.wait(timeout=240)
    assert_finished_quietly(process.returncode, "", tmp_path, "bg", epochs)


# --------------------------------------------------------------------------------------------------
# A local sweep


def write_sweep(path: Path, epochs: int) -> Path:
    tiny = {key: {"value": value} for key, value in FAST_CONFIG.items() if key != "epochs"}
    more = {"epochs": {"value": epochs}, "seed": {"values": [0, 1, 2, 3]}}
    return write_sweep_file(path, tiny | more)


def sweep_command(sweep: Path, data_dir: Path, runs_dir: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "local_sweep.py"),
        str(sweep),
        "--data-dir",
        str(data_dir),
        "--runs-dir",
        str(runs_dir),
        "--val-size",
        "200",
        "--wandb-mode",
        "disabled",
        "--images-dir",
        str(runs_dir / "img"),
        *more,
    ]


def states(runs_dir: Path, study: str) -> list[str]:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(runs_dir / "optuna-journal.log"))
    )
    return [t.state.name for t in optuna.load_study(study_name=study, storage=storage).trials]


def test_sighup_to_a_local_sweep_leaves_its_trial_for_a_retry_that_continues_it(
    tiny_data_dir, tmp_path, offline_env, one_thread, capsys
):
    sweep, runs = write_sweep(tmp_path / "hup.json", epochs=6), tmp_path / "runs"
    process = Process(
        sweep_command(sweep, tiny_data_dir, runs, "--trials", "1"), offline_env, tmp_path
    )
    process.wait_for_epoch(2)
    process.popen.send_signal(signal.SIGHUP)
    code, stderr = process.finish()
    assert code == 128 + signal.SIGHUP
    assert "trial 0 is failed and queued for a retry" in one_line(stderr)
    assert states(runs, "hup") == [
        "FAIL",
        "WAITING",
    ]  # not RUNNING: nobody has to notice a dead process
    interrupted_at = saved_epoch(runs / "hup" / "trial-0000")
    assert interrupted_at >= 2

    # the same command
    assert local_sweep.main(sweep_command(sweep, tiny_data_dir, runs, "--trials", "1")[2:]) == 0
    assert states(runs, "hup") == ["FAIL", "COMPLETE"]
    assert f"resuming after epoch {interrupted_at}" in capsys.readouterr().out


def test_a_signal_while_a_local_sweep_starts_up_is_one_line_and_starts_no_trial(
    tiny_data_dir, tmp_path, one_thread, monkeypatch, capsys, terminal_signal_defaults
):
    real_prepare_data = trainer.prepare_data

    def prepare_data_then_hang_up(*args, **kwargs):
        # arrives while the data set loads, before the worker loop
        signal.raise_signal(signal.SIGHUP)
        return real_prepare_data(*args, **kwargs)

    monkeypatch.setattr(trainer, "prepare_data", prepare_data_then_hang_up)
    sweep, runs = write_sweep(tmp_path / "early.json", epochs=2), tmp_path / "runs"
    handler_before = signal.getsignal(signal.SIGHUP)
    assert (
        local_sweep.main(sweep_command(sweep, tiny_data_dir, runs, "--trials", "1")[2:])
        == 128 + signal.SIGHUP
    )
    assert "interrupted by SIGHUP before a trial started" in one_line(capsys.readouterr().err)
    assert states(runs, "early") == []
    assert signal.getsignal(signal.SIGHUP) is handler_before


def test_a_launcher_under_nohup_ignores_a_hangup_and_passes_other_signals_on_to_its_workers(
    tiny_data_dir, tmp_path, offline_env
):
    sweep, runs = write_sweep(tmp_path / "two.json", epochs=EPOCHS), tmp_path / "runs"
    process = Process(
        ["nohup", *sweep_command(sweep, tiny_data_dir, runs, "--trials", "2", "--workers", "2")],
        offline_env,
        tmp_path,
        start_new_session=True,
    )
    # both workers saved an epoch
    process.wait_until(lambda: len(list(runs.glob("two/trial-*/last.pt"))) >= 2)
    # the terminal closes: launcher and workers all get it, and ignore it
    os.killpg(process.popen.pid, signal.SIGHUP)
    process.wait_for_more_epochs(4)  # both still training
    process.popen.send_signal(signal.SIGQUIT)  # the launcher only: it passes the signal on
    code, stderr = process.finish()
    assert code == 128 + signal.SIGQUIT and "Traceback" not in stderr
    assert stderr.count("interrupted by SIGQUIT: ") == 3  # each worker's line, the launcher's
    assert "interrupted by SIGQUIT: passed on to the workers" in stderr
    assert sorted(states(runs, "two")) == [
        "FAIL",
        "FAIL",
        "WAITING",
        "WAITING",
    ]  # none left RUNNING


# --------------------------------------------------------------------------------------------------
# Model selection


@pytest.fixture()
def one_finished_run(finished_run) -> Path:
    """A runs folder with one finished run of FAST_CONFIG; its summary says `epochs` EPOCHS, which
    is what select_model retrains (set_epochs changes it)."""
    set_epochs(finished_run, EPOCHS)  # long enough to be stopped in the middle
    return finished_run.parent


def set_epochs(run_dir: Path, epochs: int) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["config"]["epochs"] = epochs
    (run_dir / "summary.json").write_text(json.dumps(summary))


def select_command(runs: Path, data_dir: Path, seeds: int = 1) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "select_model.py"),
        str(runs),
        "--top",
        "1",
        "--seeds",
        str(seeds),
        "--data-dir",
        str(data_dir),
        "--wandb-mode",
        "disabled",
        "--images-dir",
        str(runs.parent / "images"),
    ]


def test_sighup_to_model_selection_stops_its_trainer_gracefully(
    one_finished_run, tiny_data_dir, tmp_path, offline_env
):
    process = Process(select_command(one_finished_run, tiny_data_dir), offline_env, tmp_path)
    process.wait_until(lambda: list(one_finished_run.glob("selection/*/last.pt")))
    process.popen.send_signal(signal.SIGHUP)
    code, stderr = process.finish()
    assert code == 128 + signal.SIGHUP
    assert one_line(stderr) == "interrupted by SIGHUP: run the same command to continue"
    (seed,) = one_finished_run.glob("selection/*/")
    # the trainer got it and saved
    assert "interrupted by SIGHUP" in (seed / "output.log").read_text()
    assert saved_epoch(seed) < EPOCHS and not (one_finished_run / "selection.json").exists()


def test_model_selection_under_nohup_ignores_sighup_and_finishes(
    one_finished_run, tiny_data_dir, tmp_path, offline_env
):
    set_epochs(one_finished_run / "finished", 6)  # the retraining runs to its end
    process = Process(
        ["nohup", *select_command(one_finished_run, tiny_data_dir)], offline_env, tmp_path
    )
    process.wait_until(lambda: list(one_finished_run.glob("selection/*/last.pt")))
    process.popen.send_signal(signal.SIGHUP)
    code, stderr = process.finish()
    assert code == 0, stderr
    (seed,) = one_finished_run.glob("selection/*/")
    assert json.loads((seed / "summary.json").read_text())["status"] == "finished"
    assert (one_finished_run / "selection.json").is_file()


def test_a_stop_with_trainings_not_yet_started_ends_model_selection_and_the_same_command_resumes(
    one_finished_run, tiny_data_dir, tmp_path, offline_env
):
    # one worker: the second seed waits its turn
    command = select_command(one_finished_run, tiny_data_dir, seeds=2)

    def saved() -> bool:
        return bool(list(one_finished_run.glob("selection/*/last.pt")))

    def resumed() -> bool:
        return "resuming" in "".join(
            p.read_text() for p in one_finished_run.glob("selection/*/output.log")
        )

    for attempt in range(2):
        process = Process(command, offline_env, tmp_path)
        # The first command stops its first seed once an epoch is saved; the second once it has
        # resumed that seed.
        process.wait_until(saved if attempt == 0 else resumed)
        process.popen.send_signal(signal.SIGTERM)
        code, stderr = process.finish()
        assert code == 128 + signal.SIGTERM
        assert one_line(stderr) == "interrupted by SIGTERM: run the same command to continue"
        (seed,) = one_finished_run.glob("selection/*/")  # the second seed never started
        assert saved_epoch(seed) < EPOCHS and not (one_finished_run / "selection.json").exists()
    assert "2 trainings to run, 0 already finished" in "".join(process.lines)


# --------------------------------------------------------------------------------------------------
# A stop while a command starts up: Python still imports torch, Optuna, W&B (cli.StopWhileImporting)
#
# A command run as a program catches its stop signals before its imports. The tests wait until it
# does (its SigCgt in /proc, SIGXCPU last of cli.STOP_SIGNALS), then send the signal at once: the
# imports below take a second, the wait a millisecond.

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="needs Linux's /proc/PID/status"
)


def catches_stop_signals(pid: int) -> bool:
    """Whether process `pid` has a handler of its own for SIGXCPU (the last stop signal that
    StopWhileImporting takes)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:  # not there yet, or gone
        return False
    caught = int(re.search(r"^SigCgt:\s*([0-9a-f]+)$", status, re.MULTILINE)[1], 16)
    return bool(caught >> (signal.SIGXCPU - 1) & 1)


def wait_for_handlers(pid: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not catches_stop_signals(pid):
        assert time.monotonic() < deadline, f"pid {pid} never caught its stop signals"
        time.sleep(0.001)


COMMANDS = ["part_2_cifar.py", "local_sweep.py", "select_model.py", "trt_export.py"]


@needs_proc
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", [*COMMANDS, "synthetic_cifar100.py"])
def test_a_stop_while_a_command_imports_is_one_line_and_128_plus_n(command, signum, tmp_path):
    # --help: a signal that missed the imports would end in the help text and exit 0
    process = subprocess.Popen(
        at_terminal_defaults([sys.executable, ROOT / command, "--help"]),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_handlers(process.pid)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=60)
    name = signal.Signals(signum).name
    assert (process.returncode, output) == (
        128 + signum,
        f"interrupted by {name}: nothing was started\n",
    )


@needs_proc
def test_a_signal_ignored_by_the_caller_stays_ignored_while_a_command_imports(tmp_path):
    # a background job of a non-interactive shell: SIGINT ignored; SIGTERM still stops it
    command = [sys.executable, ROOT / "part_2_cifar.py", "--help"]
    process = subprocess.Popen(
        ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *map(str, command)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_handlers(process.pid)
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert (process.returncode, output) == (143, "interrupted by SIGTERM: nothing was started\n")


def worker_pids(lines: list[str]) -> list[int]:
    return [int(m[1]) for line in lines if (m := re.match(r"worker \d+: pid (\d+)", line))]


@needs_proc
def test_a_stop_while_a_launchers_workers_import_is_one_line_from_each_process(
    tiny_data_dir, tmp_path
):
    sweep, runs = write_sweep(tmp_path / "two.json", epochs=EPOCHS), tmp_path / "runs"
    command = sweep_command(sweep, tiny_data_dir, runs, "--trials", "2", "--workers", "2")
    process = Process(
        command, os.environ | {"OMP_NUM_THREADS": "1"}, tmp_path, start_new_session=True
    )
    process.wait_until(lambda: len(worker_pids(process.lines)) == 2)
    for pid in worker_pids(process.lines):
        wait_for_handlers(pid)
    # kill PID, a scheduler: the launcher alone, which passes it on (a Ctrl-C reaches each worker
    # itself: the case of a command above)
    process.popen.send_signal(signal.SIGTERM)
    code, stderr = process.finish()
    name = "SIGTERM"
    assert code == 128 + signal.SIGTERM and "Traceback" not in stderr, stderr
    assert sorted(stderr.splitlines()) == [
        f"interrupted by {name}: nothing was started",  # each worker
        f"interrupted by {name}: nothing was started",
        f"interrupted by {name}: passed on to the workers, which stopped; run the same command "
        "again to continue",
    ]


def children(pid: int) -> list[int]:
    try:
        return [
            int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        ]
    except OSError:
        return []


def runs_the_trainer(pid: int) -> bool:
    try:
        return b"part_2_cifar.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # gone
        return False


@needs_proc
def test_a_stop_while_model_selections_trainer_imports_is_one_line_in_its_log(
    one_finished_run, tiny_data_dir, tmp_path, offline_env
):
    process = Process(select_command(one_finished_run, tiny_data_dir), offline_env, tmp_path)

    def trainer_catching_signals() -> bool:
        # The trainer itself (exec'd: a child between fork and exec still holds its parent's
        # handlers), with its own handlers; children are read again each time.
        return any(
            runs_the_trainer(pid) and catches_stop_signals(pid)
            for pid in children(process.popen.pid)
        )

    process.wait_until(trainer_catching_signals)
    process.popen.send_signal(signal.SIGTERM)  # passed on to the trainer
    code, stderr = process.finish()
    assert code == 128 + signal.SIGTERM
    assert one_line(stderr) == "interrupted by SIGTERM: run the same command to continue"
    (log,) = one_finished_run.glob("selection/*/output.log")
    assert log.read_text() == "interrupted by SIGTERM: nothing was started\n"
