"""One owner per folder: a run, trial, selection or export folder is written by one process at a
time (folders.own_folder), a SIGKILLed holder never blocks the next, and two local sweeps with
their own journals never share a trial folder under one --runs-dir."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import conftest
import optuna
import pytest
import torch
from conftest import FAST_CONFIG, ROOT, trainer_args, trainer_command, write_sweep_file

import local_sweep
import part_2_cifar as trainer
import select_model
import trt_export
from cifarkit.core import folders, run_files
from cifarkit.sweeps import folders as sweep_folders
from cifarkit.sweeps import storage as sweep_storage

CPU = torch.device("cpu")
EPOCHS = 3  # of the run two processes want; its holder is stopped as soon as it holds it
SINCE = r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"  # ISO 8601 with the holder's offset


def fast_args(data_dir: Path, runs_dir: Path) -> list[str]:
    return trainer_args(data_dir, runs_dir, epochs=EPOCHS)


def wait_until(condition, process: subprocess.Popen, seconds: float = 240) -> None:
    """Poll `condition` until true, `process` alive all the while."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert process.poll() is None, f"ended early ({process.returncode})"
        assert time.monotonic() < deadline, f"waited {seconds} s"
        time.sleep(0.02)


def holds(folder: Path, pid: int) -> bool:
    lock = folder / folders.OWNER_LOCK
    return lock.is_file() and lock.read_text().startswith(f"pid {pid} ")


def refusal(capsys, folder: Path, what: str, pid: int, command: str) -> str:
    """The one line a refused command printed, checked to name the folder and its holder."""
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        f"error: {what} {folder} is in use by pid {pid} on {socket.gethostname()} "
    ), line
    assert re.search(f"{SINCE} \\({re.escape(command)}\\)", line), line
    return line


# --------------------------------------------------------------------------------------------------
# The trainer's run folder: real processes, real signals


def test_a_run_folder_has_one_trainer_and_a_sigkilled_one_never_blocks_the_next(
    tiny_data_dir, tmp_path, offline_env, offline, monkeypatch, capsys
):
    runs = tmp_path / "runs"
    run_dir = runs / "copied-job"
    config = trainer.validate_config({**FAST_CONFIG, "epochs": EPOCHS, "val_size": 200})

    def crash(metrics: dict) -> None:
        raise RuntimeError("crash after epoch 1 (injected)")

    with pytest.raises(RuntimeError, match="injected"):  # a preempted run: last.pt after epoch 1
        data = trainer.prepare_data(tiny_data_dir, 200, CPU)
        trainer.train(config, data, run_dir, on_epoch=crash)

    resume = [*fast_args(tiny_data_dir, runs), "--resume", str(run_dir)]
    first = subprocess.Popen(
        trainer_command(*resume),
        env=offline_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: holds(run_dir, first.pid), first)
        os.kill(first.pid, signal.SIGSTOP)  # alive and holding, whatever it was doing

        # The same --resume RUN started twice: refused before reading last.pt, nothing written
        before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
        assert trainer.main(resume) == 2
        refusal(capsys, run_dir, "run folder", first.pid, "part_2_cifar.py")
        # A copied job script: the same WANDB_RUN_ID, the run folder <runs>/<id>
        monkeypatch.setenv("WANDB_RUN_ID", run_dir.name)
        assert trainer.main(fast_args(tiny_data_dir, runs)) == 2
        refusal(capsys, run_dir, "run folder", first.pid, "part_2_cifar.py")
        assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
    finally:
        first.kill()  # SIGKILL, stopped or not: the kernel drops its lock
        first.wait()
    monkeypatch.delenv("WANDB_RUN_ID")

    assert trainer.main(resume) == 0  # the next one is not blocked by the dead holder
    out = capsys.readouterr().out
    assert f"resuming {run_dir} after epoch 1" in out and "done: best val_accuracy" in out
    summary = run_files.read_summary(run_dir)
    assert summary["status"] == "finished" and summary["epochs_completed"] == EPOCHS


# --------------------------------------------------------------------------------------------------
# A selection folder and an export folder: refused the same way, before any data is loaded


def test_a_held_selection_folder_refuses_a_second_selection(tiny_data_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "one").mkdir(parents=True)
    config = trainer.validate_config({**FAST_CONFIG, "val_size": 200})
    (runs / "one" / "summary.json").write_text(
        json.dumps({"status": "finished", "best_val_accuracy": 50.0, "config": config})
    )
    with folders.own_folder(runs / "selection", "selection folder"):  # another open file: refused
        assert (
            select_model.main(
                [
                    str(runs),
                    "--data-dir",
                    str(tiny_data_dir),
                    "--wandb-mode",
                    "disabled",
                    "--images-dir",
                    str(tmp_path / "images"),
                ]
            )
            == 2
        )
        assert sorted(p.name for p in (runs / "selection").iterdir()) == [folders.OWNER_LOCK]
    refusal(capsys, runs / "selection", "selection folder", os.getpid(), Path(sys.argv[0]).name)
    assert not (runs / "selection").exists()  # made by the holder, left empty: removed by it


def test_a_held_export_folder_refuses_a_second_export(tiny_data_dir, tmp_path, capsys):
    config = trainer.validate_config({**FAST_CONFIG, "val_size": 200})
    weights = trainer.model_from_config(config).state_dict()
    run_files.save_atomic({"model": weights, "config": config, "epoch": 1}, tmp_path / "best.pt")
    out = tmp_path / "export"
    with folders.own_folder(out, "export folder"):
        assert (
            trt_export.main(
                [
                    "--checkpoint",
                    str(tmp_path / "best.pt"),
                    "--out",
                    str(out),
                    "--data-dir",
                    str(tiny_data_dir),
                    "--device",
                    "cpu",
                    "--plot",
                    str(tmp_path / "plot.png"),
                ]
            )
            == 2
        )
        assert sorted(p.name for p in out.iterdir()) == [folders.OWNER_LOCK]
    refusal(capsys, out, "export folder", os.getpid(), Path(sys.argv[0]).name)


# --------------------------------------------------------------------------------------------------
# Trial folders: held while the trial runs, and each study's own


def write_sweep(path: Path, epochs: int = 1) -> Path:
    fixed = {"epochs": epochs, "batch_size": 64, "num_filters_1": 8, "num_filters_2": 8}
    parameters = {key: {"value": value} for key, value in (fixed | {"num_filters_3": 16}).items()}
    return write_sweep_file(path, {"learning_rate": {"min": 0.001, "max": 0.05}} | parameters)


def sweep_args(sweep: Path, data_dir: Path, runs: Path, *more: str) -> list[str]:
    return conftest.sweep_args(sweep, data_dir, runs, *more, val_size=200)


def test_a_held_trial_folder_fails_its_trial_with_the_holder_and_the_retry_runs_once_free(
    tiny_data_dir, tmp_path, offline, capsys
):
    runs, sweep = tmp_path / "runs", write_sweep(tmp_path / "held.json")
    trial_0 = runs / "held" / "trial-0000"
    with folders.own_folder(trial_0, "trial folder"):  # e.g. the trainer --resume'd by hand on it
        assert local_sweep.main(sweep_args(sweep, tiny_data_dir, runs, "--trials", "1")) == 2
    refusal(capsys, trial_0, "trial folder", os.getpid(), Path(sys.argv[0]).name)
    storage = sweep_storage.open_storage(None, runs).storage
    study = optuna.load_study(study_name="held", storage=storage)
    failed, retry = study.get_trials()
    assert failed.state.name == "FAIL" and "is in use by pid" in failed.user_attrs["failure"]
    assert retry.state.name == "WAITING"  # queued: the same command runs it

    assert local_sweep.main(sweep_args(sweep, tiny_data_dir, runs, "--trials", "1")) == 0
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "COMPLETE"]  # the queued retry, in its own folder
    assert run_files.read_summary(runs / "held" / "trial-0001")["status"] == "finished"
    marker = json.loads((runs / "held" / "trial-0001" / sweep_folders.TRIAL_MARKER).read_text())
    assert marker == {"study": "held", "uid": study.user_attrs["uid"], "trial": 1}


def test_two_studies_with_their_own_journals_in_one_runs_folder_never_share_a_trial_folder(
    tiny_data_dir, tmp_path, offline_env, offline
):
    """The README's one shared --runs-dir, two journals, one sweep file (so one study name),
    started together: a real process and this one. Each trial's summary is its own config's, and
    each study's trials.csv lists its own trials."""
    runs, sweep = tmp_path / "shared-runs", write_sweep(tmp_path / "cifar.json")
    args = {
        name: sweep_args(
            sweep, tiny_data_dir, runs, "--trials", "1", "--storage", str(tmp_path / name)
        )
        for name in ("a.log", "b.log")
    }
    other = subprocess.Popen(
        [sys.executable, str(ROOT / "local_sweep.py"), *args["a.log"]],
        env=offline_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert local_sweep.main(args["b.log"]) == 0
    output = other.communicate(timeout=300)[0]
    assert other.returncode == 0, output
    folders = set()
    for name in ("a.log", "b.log"):
        study = optuna.load_study(
            study_name="cifar",
            storage=sweep_storage.open_storage(str(tmp_path / name), runs).storage,
        )
        assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]
        for t in study.get_trials():
            run_dir = Path(t.user_attrs["run_dir"])
            folders.add(run_dir)
            assert run_files.read_summary(run_dir)["config"] == t.user_attrs["config"]  # its own
            marker = json.loads((run_dir / sweep_folders.TRIAL_MARKER).read_text())
            assert marker == {"study": "cifar", "uid": study.user_attrs["uid"], "trial": t.number}
        study_dir = run_dir.parent
        rows = (study_dir / "trials.csv").read_text().splitlines()[1:]
        assert len(rows) == 1 and str(run_dir) in rows[0]
    assert len(folders) == 2  # each study's trial 0, in two folders
    uids = {
        json.loads((d / sweep_folders.STUDY_MARKER).read_text())["uid"]
        for d in runs.iterdir()
        if (d / sweep_folders.STUDY_MARKER).is_file()
    }
    assert len(uids) == 2 and {d.parent for d in folders} <= {runs / "cifar", *runs.glob("cifar-*")}


def test_a_study_folder_is_claimed_once_and_a_namesake_gets_its_own(tmp_path):
    runs = tmp_path / "runs"
    assert sweep_folders.study_folder(runs, "s", "aaaa1111") == runs / "s"
    assert sweep_folders.study_folder(runs, "s", "bbbb2222") == runs / "s-bbbb2222"
    assert sweep_folders.study_folder(runs, "s", "aaaa1111") == runs / "s"  # the same on every call
    assert sweep_folders.study_folder(runs, "t", None, claim=False) == runs / "t"  # a report: none
    assert not (runs / "t").exists()


def test_a_retry_resumes_only_from_the_folder_of_the_trial_it_retries(tmp_path, capsys):
    config = trainer.validate_config({**FAST_CONFIG, "val_size": 200})
    model, optimizer = trainer.new_model_and_optimizer(config, CPU)
    previous, mine = tmp_path / "s" / "trial-0003", tmp_path / "s" / "trial-0007"
    previous.mkdir(parents=True)
    run_files.save_atomic(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": config,
            "epoch": 1,
            "history": [],
            "best_val_accuracy": 1.0,
            "best_epoch": 1,
            "seconds": 1.0,
        },
        previous / run_files.LAST_CHECKPOINT,
    )
    dead = {"study": "s", "uid": "aaaa1111", "trial": 3}
    (previous / sweep_folders.TRIAL_MARKER).write_text(json.dumps({**dead, "uid": "bbbb2222"}))
    assert sweep_folders.resume_point(previous, mine, dead) is None  # another study's trial 3
    assert "cannot resume: " in capsys.readouterr().out and not mine.exists()
    (previous / sweep_folders.TRIAL_MARKER).write_text(json.dumps(dead))
    assert sweep_folders.resume_point(previous, mine, dead)["epoch"] == 1
    assert sorted(p.name for p in mine.iterdir()) == [run_files.LAST_CHECKPOINT]  # no marker copied


def test_a_folder_made_for_a_run_that_never_started_is_removed_on_release(tmp_path):
    made = tmp_path / "runs" / "never-started"
    with folders.own_folder(made, "run folder"):
        assert (made / folders.OWNER_LOCK).read_text().startswith(f"pid {os.getpid()} ")
    assert not (tmp_path / "runs").exists()  # nothing written: the folders made for it are gone
    kept = tmp_path / "kept"
    with folders.own_folder(kept, "run folder"):
        (kept / "summary.json").write_text("{}")
    assert sorted(p.name for p in kept.iterdir()) == [folders.OWNER_LOCK, "summary.json"]
