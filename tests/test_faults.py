"""When the world outside fails, each case as a user met it: a full disk (a real tmpfs) under the
checkpoints and under model.onnx, the run folder deleted mid-run, Ctrl-C inside torch's ONNX export
and during a sweep report, W&B's own process killed, a home folder W&B cannot write, WANDB_MODE set
but empty, a half-installed onnxruntime. Real processes and real signals where the behaviour is
about processes.

Each ends with one line of the exit-code table and no traceback; what was in memory is written where
it can be, and no file is ever left cut under its final name. tests/test_fault_injection.py makes
every outside call of every command fail in turn; this file holds the cases themselves."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import (
    FAST_CONFIG,
    ROOT,
    quick_benchmark,
    trainer_args,
    trainer_command,
    wandb_core_under,
)
from test_data_files import as_non_root  # noqa: F401 (a fixture)
from test_signals import Process, one_line, saved_epoch, states, sweep_command, write_sweep

import local_sweep
import part_2_cifar as p2
import trt_export
from cifarkit.core import cli, run_files, settings


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def no_temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if re.search(r"\.tmp$|\.partial-", path.name)]


@pytest.fixture()
def small_disk(tmp_path):
    """small_disk(size) -> a folder on a tmpfs of that size: a real file system that fills up. Skips
    where mounting is not allowed (not root, a container without CAP_SYS_ADMIN)."""
    mounted = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}): "
                "a real full disk needs root with CAP_SYS_ADMIN"
            )
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def grow(folder: Path, size: str) -> None:
    """The tmpfs at `folder`, made larger: room again on the same file system."""
    subprocess.run(
        ["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True
    )


def trained_checkpoint(data_dir: Path, folder: Path) -> Path:
    """best.pt of a FAST_CONFIG model trained one epoch (in-process, one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = p2.validate_config({**FAST_CONFIG, "epochs": 1, "val_size": 200})
    p2.train(config, p2.prepare_data(data_dir, 200, torch.device("cpu")), folder)
    torch.set_num_threads(threads)
    return folder / "best.pt"


def export_args(checkpoint: Path, data_dir: Path, out: Path) -> list[str]:
    return [
        "--checkpoint",
        str(checkpoint),
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--plot",
        str(out.parent / "bench.png"),
        "--precision",
        "fp32",
        "--batch-sizes",
        "1",
        *quick_benchmark(),
        "--accuracy-images",
        "20",
    ]


def train_args(data_dir: Path, runs: Path, epochs: int, mode: str = "disabled") -> list[str]:
    return trainer_args(data_dir, runs, val_size=100, wandb_mode=mode, epochs=epochs)


# --------------------------------------------------------------------------------------------------
# A full disk; a folder that vanished


def test_a_full_disk_under_the_checkpoints_is_one_line_keeps_whole_files_and_resumes_with_room(
    tiny_data_dir, small_disk, monkeypatch, offline, capsys
):
    # FAST_CONFIG: best.pt 1.7 MB, last.pt 3.4 MB. On 6 MB epoch 1's pair fits; epoch 3's does not
    # (2 is not written: checkpoints are written once a minute and at the end). It was torch's
    # "unexpected pos" under 54 lines of traceback.
    disk = small_disk("6m")
    monkeypatch.setenv("WANDB_RUN_ID", "full")
    assert p2.main(train_args(tiny_data_dir, disk, epochs=3)) == cli.EXIT_FAILED
    line, run = one_line(capsys.readouterr().err), disk / "full"
    assert line.startswith(f"error: cannot write {run}/"), line
    assert "No space left on device (ENOSPC)" in line and f"{run / 'last.pt'} holds epoch 1" in line
    assert f"--resume {run}" in line
    assert saved_epoch(run) == 1 and run_files.load_checkpoint(run / "best.pt")["epoch"] == 1
    assert no_temporaries(disk) == []

    grow(disk, "20m")
    resume = ["--resume", str(run), "--data-dir", str(tiny_data_dir), "--wandb-mode", "disabled"]
    assert p2.main(resume) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and lines(out)[-1].startswith("done: ")
    assert json.loads((run / "summary.json").read_text())["epochs_completed"] == 3


def test_a_full_disk_under_model_onnx_leaves_no_cut_model(
    tiny_data_dir, tmp_path, small_disk, one_thread, capsys
):
    # model.onnx was the one output not written through a temporary file: 512 KB of it stayed,
    # which ONNX Runtime later refused ("Protobuf parsing failed").
    checkpoint = trained_checkpoint(tiny_data_dir, tmp_path / "run")
    out = small_disk("512k") / "export"  # the model is 1.7 MB
    assert trt_export.main(export_args(checkpoint, tiny_data_dir, out)) == cli.EXIT_FAILED
    line = one_line(capsys.readouterr().err)
    assert line.startswith(
        f"error: cannot write {out / 'model.onnx'}: No space left on device (ENOSPC)"
    ), line
    assert not (out / "model.onnx").exists() and no_temporaries(out) == []


def test_a_run_folder_deleted_mid_run_is_made_again_with_every_epoch(
    tiny_data_dir, tmp_path, monkeypatch, offline, capsys
):
    # A /tmp cleaner, or rm -rf runs/*, while epoch 3 trains: the final save failed and every epoch
    # was lost, though all were in memory.
    runs = tmp_path / "runs"
    real_train_epoch = p2.train_epoch

    def cleaned_during_epoch_3(*args, **kwargs):
        if args[4] == 3:
            shutil.rmtree(runs / "cleaned")
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(p2, "train_epoch", cleaned_during_epoch_3)
    monkeypatch.setenv("WANDB_RUN_ID", "cleaned")
    assert p2.main(train_args(tiny_data_dir, runs, epochs=4)) == 0
    out, err = capsys.readouterr()
    assert err == "" and lines(out)[-1].startswith("done: ")
    assert f"note: the run folder {runs / 'cleaned'} vanished while the run went on" in out
    summary = json.loads((runs / "cleaned" / "summary.json").read_text())
    assert [m["epoch"] for m in summary["history"]] == [1, 2, 3, 4]
    assert summary["epochs_completed"] == 4 and saved_epoch(runs / "cleaned") == 4
    assert (runs / "cleaned" / "best.pt").is_file()


# --------------------------------------------------------------------------------------------------
# A stop inside a library call


EXPORTER_STAGES = [  # where torch's exporter catches Exception: the capture falls back to its next
    # strategy (a stop there was ignored, exit 0), the other stages re-raise as an export error
    ("torch.export", "export"),
    ("torch.onnx._internal.exporter._core", "_prepare_exported_program_for_export"),
    ("torch.onnx._internal.exporter._core", "_exported_program_to_onnx_program"),
]


@pytest.mark.parametrize(("module", "stage"), EXPORTER_STAGES, ids=[s for _, s in EXPORTER_STAGES])
def test_ctrl_c_inside_each_stage_of_the_onnx_exporter_ends_with_130(
    module,
    stage,
    tiny_data_dir,
    tmp_path,
    monkeypatch,
    one_thread,
    capsys,
    terminal_signal_defaults,
):
    # torch's exporter catches Exception, and a stop used to be one: of 12 tries 4 stopped, 5 ended
    # in an export-error traceback and 3 exported on and exited 0. The SIGINT is a real one, sent
    # by the process to itself as the stage begins.
    checkpoint = trained_checkpoint(tiny_data_dir, tmp_path / "run")
    owner = __import__(module, fromlist=[stage])
    real_stage, sent = getattr(owner, stage), []

    def ctrl_c_first(*args, **kwargs):
        if not sent:  # once: a second Ctrl-C is "stop now" (KeyboardInterrupt), always a stop
            sent.append(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
        return real_stage(*args, **kwargs)

    monkeypatch.setattr(owner, stage, ctrl_c_first)
    code = trt_export.main(export_args(checkpoint, tiny_data_dir, tmp_path / "out"))
    out, err = capsys.readouterr()
    assert code == 128 + signal.SIGINT, err[-3000:]
    assert one_line(err) == "interrupted by SIGINT: the export stopped; run the same command again"
    assert "ONNX fp32" not in out and not (tmp_path / "out" / "model.onnx").exists()


@pytest.fixture()
def finished_study(tiny_data_dir, tmp_path, one_thread) -> tuple[Path, Path]:
    """(sweep file, runs folder) of a study with one finished trial."""
    sweep, runs = write_sweep(tmp_path / "done.json", epochs=1), tmp_path / "runs"
    assert local_sweep.main(sweep_command(sweep, tiny_data_dir, runs, "--trials", "1")[2:]) == 0
    return sweep, runs


def test_a_stop_signal_during_a_sweep_report_ends_it_with_128_plus_n(
    with_figures, finished_study, tiny_data_dir, tmp_path, offline_env
):
    # The report ran on after SIGINT or SIGTERM and exited 0, with no line.
    sweep, runs = finished_study
    # One at a time, each stopped as soon as it says the study is done: the table, then the plots
    # (matplotlib's import: a stop inside a C extension's import came out as "matplotlib failed:
    # ImportError: initialization failed", exit 1, or as a printed "Exception ignored" traceback).
    # A report of one trial can end before its signal comes: a run whose report is whole and that
    # ended 0, or by the signal after its handlers were let go, is tried again.
    for signum in (signal.SIGINT, signal.SIGTERM):
        for attempt in range(3):
            images = tmp_path / f"images{signum}-{attempt}"
            command = sweep_command(
                sweep, tiny_data_dir, runs, "--report", "--images-dir", str(images)
            )
            process = Process(command, offline_env, tmp_path)
            process.wait_until(lambda p=process: any(x.startswith("study done:") for x in p.lines))
            process.popen.send_signal(signum)
            code, stderr = process.finish()
            if code in (0, -signum) and len(list(images.glob("*.png"))) == 2:
                continue  # the report had ended: the signal came too late
            assert code == 128 + signum, stderr[-2000:]
            name = signal.Signals(signum).name
            line = f"interrupted by {name}: run the same command again to continue"
            assert one_line(stderr) == line, stderr[-2000:]
            assert no_temporaries(runs) == [] and no_temporaries(images) == []
            break
        else:
            pytest.fail(f"three reports ended before their {signal.Signals(signum).name} came")


def test_a_stop_inside_a_c_extensions_import_is_the_stop_not_the_librarys_error(capsys):
    # pybind11 (matplotlib's ft2font, _c_internal_utils) turns an exception raised while its module
    # initialises into ImportError("initialization failed") caused by it
    try:
        try:
            raise cli.Interrupted(signal.SIGTERM)
        except cli.Interrupted as stop:
            raise ImportError("initialization failed") from stop
    except ImportError as e:
        code = cli.boundary(e, stopped="run the same command again to continue")
    assert code == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert err == "interrupted by SIGTERM: run the same command again to continue\n"


def test_a_stop_raised_where_python_can_only_print_it_is_kept_quiet(monkeypatch):
    import weakref

    printed = []  # what Python's hook would print: "Exception ignored in ...", with a traceback

    def hook(unraisable: object) -> None:
        printed.append(type(unraisable.exc_value))

    monkeypatch.setattr(sys, "unraisablehook", hook)

    class Thing:
        pass

    def raise_stop(ref: object) -> None:
        raise cli.Interrupted(signal.SIGTERM)

    def raise_bug(ref: object) -> None:
        raise ValueError("a callback's own bug")

    with cli.InterruptOnSignal():
        thing, other = Thing(), Thing()
        refs = [weakref.ref(thing, raise_stop), weakref.ref(other, raise_bug)]
        del thing, other  # each callback raises where nothing can catch it
    assert printed == [ValueError] and [ref() for ref in refs] == [None, None]
    assert sys.unraisablehook is hook  # given back


# --------------------------------------------------------------------------------------------------
# W&B failing after the run started; a W&B setting W&B refuses


def test_wandb_core_killed_mid_run_costs_wandb_only(tiny_data_dir, tmp_path, offline_env):
    # As the OOM killer would, after epoch 2: two tracebacks, exit 1, no summary.json.
    process = Process(
        trainer_command(*train_args(tiny_data_dir, tmp_path / "runs", 5, "offline")),
        offline_env | {"WANDB_RUN_ID": "nocore"},
        tmp_path,
    )
    process.wait_for_epoch(2)
    core = wandb_core_under(process.popen.pid)
    assert core is not None, "no wandb-core process under the trainer"
    os.kill(core, signal.SIGKILL)
    code, stderr = process.finish()
    assert code == 0 and stderr == "", stderr[-3000:]  # no traceback, not even W&B's own warnings
    (said,) = [line.rstrip() for line in process.lines if line.startswith("W&B: ")]
    (offline_run,) = tmp_path.glob("wandb/offline-run-*-nocore")
    assert re.fullmatch(
        # the error is whichever the first call meets: the socket reset, W&B's mailbox closed, a
        # request abandoned (wandb_connect.wandb_process_gone)
        r"W&B: .* failed \(\w+: .*\): W&B loses this run after epoch [123]; the "
        r"training goes on; what W&B saved is uploaded with: "
        rf"wandb sync {re.escape(str(offline_run))}",
        said,
    ), said
    assert process.lines[-1].startswith("done: ")
    summary = json.loads((tmp_path / "runs" / "nocore" / "summary.json").read_text())
    assert summary["epochs_completed"] == 5


_FINISH_THEN_LOSE_WANDB_CORE = """import os, signal, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from cifarkit.core import wandb_connect
from conftest import wandb_core_under
run = wandb_connect.start_wandb_run(wandb_connect.run_init("offline", "p", "afterend"))
run.log({"val_accuracy": 1.0}, step=1)
wandb_connect.end_run(run, 0, {"status": "finished"})
core = wandb_core_under(os.getpid())
os.kill(core, signal.SIGKILL)  # after the run's end, before this process's: a local sweep's report
os.waitpid(core, 0)
print("exiting", flush=True)
"""


def test_wandb_core_killed_after_the_run_finished_leaves_the_exit_quiet(tmp_path, offline_env):
    # A local sweep's last run has finished and its report is being written when wandb-core dies:
    # W&B's own exit hook then printed a 30-line "Exception ignored in atexit callback" traceback
    # (ConnectionResetError) after a sweep that had done everything right.
    done = subprocess.run(
        [sys.executable, "-c", _FINISH_THEN_LOSE_WANDB_CORE, str(ROOT)],
        env=offline_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.splitlines()[-1] == "exiting", done
    assert done.stderr == "", done.stderr[-3000:]


class DeadWandbRun:
    """A wandb Run whose calls named in `failing` raise `error`, as when W&B's process is gone;
    `calls` records every call (log, finish, mark_preempting)."""

    settings = SimpleNamespace(sync_dir="wandb/offline-run-x")

    def __init__(self, error: type[Exception], failing: set[str]):
        self.error, self.failing, self.calls = error, failing, []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.failing:
            raise self.error("Connection lost")

    def log(self, *args, **kwargs) -> None:
        self._call("log")

    def finish(self, **kwargs) -> None:
        self._call("finish")

    def mark_preempting(self) -> None:
        self._call("mark_preempting")


@pytest.mark.parametrize(
    "gone", ["ConnectionResetError", "HandleAbandonedError", "MailboxClosedError"]
)
def test_each_way_a_call_meets_wandbs_process_gone_is_one_line_and_no_second_finish(gone, capsys):
    # The three errors seen when wandb-core is killed, by which call meets it first: W&B is asked
    # nothing more, not even to finish (a finish would meet the same closed connection).
    from wandb.sdk import mailbox

    from cifarkit.core import wandb_connect

    error = {
        "ConnectionResetError": ConnectionResetError,
        "HandleAbandonedError": mailbox.HandleAbandonedError,
        "MailboxClosedError": mailbox.MailboxClosedError,
    }[gone]
    dead = DeadWandbRun(error, failing={"log", "finish"})
    run = wandb_connect.GuardedRun(dead)
    run.log({"val_accuracy": 1.0}, step=1)
    run.log({"val_accuracy": 2.0}, step=2)
    run.finish(exit_code=0)
    assert dead.calls == ["log"] and run.lost == "gone"
    (line,) = capsys.readouterr().out.splitlines()
    assert (
        line.startswith(f"W&B: logging epoch 1 failed ({error.__name__}") and "wandb sync" in line
    )


def test_wandb_gone_when_a_stop_marks_the_run_preempting_says_the_training_stops(capsys):
    # The stop's own line says where the run is; W&B's line must not say "the training goes on".
    from cifarkit.core import wandb_connect

    run = wandb_connect.GuardedRun(DeadWandbRun(ConnectionResetError, failing={"mark_preempting"}))
    run.log({"val_accuracy": 1.0}, step=2)
    run.mark_preempting()
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("W&B: marking the run preempting failed (ConnectionResetError: ")
    assert "after epoch 2 and may not requeue it; the training stops here" in line, line
    assert "goes on" not in line


def test_wandb_core_killed_in_a_local_sweep_trial_leaves_no_trial_running(
    tiny_data_dir, tmp_path, monkeypatch, offline, capsys
):
    real_train_epoch = p2.train_epoch

    def kill_wandb_core_before_epoch_3(*args, **kwargs):  # this process's own wandb-core
        if args[4] == 3:
            os.kill(wandb_core_under(os.getpid()), signal.SIGKILL)
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(p2, "train_epoch", kill_wandb_core_before_epoch_3)
    sweep, runs = write_sweep(tmp_path / "nocore.json", epochs=4), tmp_path / "runs"
    argv = [
        *sweep_command(sweep, tiny_data_dir, runs, "--trials", "1")[2:],
        "--wandb-mode",
        "offline",
    ]
    assert local_sweep.main(argv) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and [line[:4] for line in lines(out)].count("W&B:") == 1, out
    assert states(runs, "nocore") == ["COMPLETE"]  # it was left RUNNING


def test_a_home_folder_wandb_cannot_write_costs_nothing(
    tiny_data_dir,
    tmp_path,
    offline_env,
    as_non_root,  # noqa: F811 (the fixture)
):
    # W&B stages artifacts under ~/.local/share/wandb, read-only on many clusters: after training,
    # 60 lines of PermissionError, exit 1, no `done:` line. W&B's folders now move under wandb/
    # (give_wandb_writable_folders): the artifact is staged there and nothing is lost. An upload
    # that fails anyway costs W&B only: test_fault_injection.py fails log_artifact.
    home = tmp_path / "readonly-home"
    home.mkdir()
    home.chmod(0o555)
    env = offline_env | {
        "HOME": str(home),
        "WANDB_RUN_ID": "rohome",
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
    }  # matplotlib's own cache
    command = trainer_command(*train_args(tiny_data_dir, tmp_path / "runs", 1, "offline"))
    try:
        result = subprocess.run(
            [*as_non_root, *command],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        home.chmod(0o755)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    assert [line for line in lines(result.stdout) if line.startswith("W&B: ")] == []
    staged = list((tmp_path / "wandb" / "data").rglob("*"))
    assert any(path.is_file() for path in staged), "the artifact staged under wandb/data"
    assert lines(result.stdout)[-1].startswith("done: ")
    assert (tmp_path / "runs" / "rohome" / "summary.json").is_file()


@pytest.mark.parametrize("mode", ["auto", "online", "offline", "disabled"])
def test_an_empty_wandb_mode_is_one_line_naming_it_before_any_work(
    mode, tiny_data_dir, tmp_path, monkeypatch, offline, capsys
):
    # `export WANDB_MODE=` in a job script: W&B refuses it whatever --wandb-mode says; it was a
    # 16-line traceback, and with auto a line that did not name WANDB_MODE.
    monkeypatch.setenv("WANDB_MODE", "")
    runs = tmp_path / "runs"
    sweep = write_sweep(tmp_path / "empty.json", epochs=1)
    for main, argv in (
        (p2.main, train_args(tiny_data_dir, runs, 1)),
        (local_sweep.main, sweep_command(sweep, tiny_data_dir, runs, "--trials", "1")[2:]),
    ):
        assert main([*argv, "--wandb-mode", mode]) == cli.EXIT_BAD_INPUT
        line = one_line(capsys.readouterr().err)
        assert line.startswith("error: WANDB_MODE='' is refused by W&B (mode: Input should"), line
        assert not runs.exists()  # before any work: no run folder, no study


# --------------------------------------------------------------------------------------------------
# A dependency installed broken


def test_a_half_installed_onnxruntime_is_one_line_naming_the_package_and_the_fix(
    tmp_path, offline_env
):
    # onnxruntime and onnxruntime-gpu installed over each other (ModelOpt's extra brings the
    # second): the module imports, but an uninstall of one took the other's files.
    fake = tmp_path / "site" / "onnxruntime"
    (fake / "capi").mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "1.23.0"\n')
    env = offline_env | {"PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "trt_export.py"), "--runs-dir", str(tmp_path / "runs")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == cli.EXIT_BAD_INPUT, result.stderr[-3000:]
    line = one_line(result.stderr)
    assert line.startswith(
        f"error: the onnxruntime package at {fake / '__init__.py'} has no InferenceSession"
    ), line
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in line


# --------------------------------------------------------------------------------------------------
# The one boundary every command's main ends in


def raised(error: BaseException, cause: BaseException | None = None) -> BaseException:
    """`error` as a raise leaves it (a traceback, a cause)."""
    try:
        raise error from cause
    except BaseException as e:  # noqa: BLE001 (any, to hand it to the boundary as main would)
        return e


def test_the_boundary_makes_each_kind_one_line_of_the_table(tmp_path, capsys):
    import optuna

    disk_full = OSError(28, "No space left on device", str(tmp_path / "summary.json"))
    cases = [
        (
            raised(cli.Interrupted(signal.SIGTERM)),
            128 + signal.SIGTERM,
            "interrupted by SIGTERM: run the same command again",
        ),
        (
            raised(settings.ConfigError("momentum=1.5 is not allowed")),
            cli.EXIT_BAD_INPUT,
            "error: momentum=1.5 is not allowed",
        ),
        (
            raised(disk_full),
            cli.EXIT_FAILED,
            f"error: {tmp_path / 'summary.json'}: No space left on device (ENOSPC); its file "
            "system "
            "is full",
        ),
        (
            raised(RuntimeError("unexpected pos 1495936"), disk_full),
            cli.EXIT_FAILED,  # torch zip
            f"error: {tmp_path / 'summary.json'}: No space left on device (ENOSPC)",
        ),
        (
            raised(optuna.exceptions.StorageInternalError("commit failed\n[SQL: ...]")),
            cli.EXIT_FAILED,
            "error: optuna failed: StorageInternalError: commit failed",
        ),
    ]
    for error, code, line in cases:
        assert cli.boundary(error) == code
        assert one_line(capsys.readouterr().err).startswith(line)
    # an outcome, not an error
    assert cli.boundary(raised(run_files.RunComplete("RUN is complete"))) == 0
    assert capsys.readouterr().out == "RUN is complete\n"


def test_an_error_of_this_projects_own_code_keeps_its_traceback():
    # A bug is not an outside failure: one line would hide where it is.
    try:
        p2.model_from_config({})  # raises KeyError in part_2_cifar.py
    except KeyError as e:
        bug = e
    with pytest.raises(KeyError):
        cli.boundary(bug)


def test_every_error_class_of_the_project_shares_one_base_with_an_exit_code_of_the_table():
    # Every module of the project imported; then every exception class it defines.
    import importlib
    import pkgutil

    import cifarkit

    modules = ["part_2_cifar", "local_sweep", "select_model", "trt_export", "synthetic_cifar100"]
    modules += [m.name for m in pkgutil.walk_packages(cifarkit.__path__, "cifarkit.")]
    for name in modules:
        importlib.import_module(name)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    ours = {
        cls
        for cls in subclasses(BaseException)
        if cls.__module__.split(".")[0] in {"cifarkit", *modules}
    }
    assert len(ours) >= 16, sorted(cls.__name__ for cls in ours)
    outside = sorted(cls.__name__ for cls in ours if not issubclass(cls, cli.CommandExit))
    assert outside == [], f"not a CommandExit: {outside}"
    # A stop is no Exception (no library's `except Exception` swallows it); an error is one.
    assert not issubclass(cli.Interrupted, Exception)
    assert issubclass(cli.CommandError, Exception)
    table = {cli.EXIT_DONE, cli.EXIT_FAILED, cli.EXIT_BAD_INPUT}
    assert {cls.exit_code for cls in ours if cls is not cli.Interrupted} <= table
