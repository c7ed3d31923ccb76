"""Faults end clearly and lose nothing: bad values, bad files, divergence, out of memory, signals,
crashes mid-write."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_CONFIG, at_terminal_defaults, trainer_args, trainer_command

import part_2_cifar as trainer
from cifarkit.core import cifar_files, cli, run_files, settings
from synthetic_cifar100 import write_synthetic_cifar100


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


class FakeRun:
    """Stands in for a wandb Run inside main(): records what the trainer tells W&B."""

    def __init__(self, config: dict, run_id: str):
        self.config, self.summary, self.logged, self.steps, self.metrics = (
            dict(config),
            {},
            [],
            [],
            {},
        )
        self.id, self.exit_code, self.preempting = run_id, None, False

    def define_metric(self, name, **kwargs):
        self.metrics[name] = kwargs

    def log(self, metrics, step=None):
        self.logged.append(dict(metrics))
        self.steps.append(step)

    def mark_preempting(self):
        self.preempting = True

    def finish(self, exit_code=0):
        self.exit_code = exit_code


@pytest.fixture()
def fake_wandb(monkeypatch):
    """Patch wandb.init so main() talks to a FakeRun; `overrides` play the part of a sweep's
    values."""
    import wandb

    holder = {"overrides": {}}

    def init(config, id=None, **kwargs):  # as in W&B: the id given, else the agent's WANDB_RUN_ID
        holder["run"] = FakeRun({**config, **holder["overrides"]}, id or os.environ["WANDB_RUN_ID"])
        return holder["run"]

    monkeypatch.setattr(wandb, "init", init)
    return holder


def fast_args(data_dir: Path, runs_dir: Path, wandb_mode: str = "disabled", **overrides) -> list:
    """The trainer's arguments for FAST_CONFIG and `overrides`; W&B off unless the case is W&B's."""
    return trainer_args(data_dir, runs_dir, wandb_mode=wandb_mode, log_model=False, **overrides)


# --------------------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    "option, key",
    [
        ("--learning_rate=0", "learning_rate"),
        ("--learning_rate=fast", "learning_rate"),
        ("--momentum=1", "momentum"),
        ("--batch_size=0", "batch_size"),
        ("--batch_size=2.5", "batch_size"),
        ("--num_filters_2=0", "num_filters_2"),
        ("--dropout_rate=1.0", "dropout_rate"),
        ("--epochs=0", "epochs"),
        ("--lr_schedule=step", "lr_schedule"),
        ("--label_smoothing=-0.1", "label_smoothing"),
        ("--val-size=0", "val_size"),
        ("--learning_rate=nan", "learning_rate"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key_and_exit_2(option, key, capsys):
    assert trainer.main([option, "--wandb-mode", "disabled"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"error: {key}=") and "use " in line


def test_a_bad_value_in_a_real_process_exits_2_before_any_work(tmp_path, offline_env):
    result = subprocess.run(
        trainer_command("--momentum=1.5", "--runs-dir", str(tmp_path / "runs")),
        env=offline_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "momentum=1.5" in one_line_error(result.stderr) and "[0, 1)" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "wandb").exists()


def test_an_unknown_option_exits_2_with_one_line(capsys):
    with pytest.raises(
        SystemExit
    ) as exit_info:  # argparse's exit, in this process; as one: test_exit_codes.py
        trainer.main(["--learning-rate=0.1"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --learning-rate=0.1" in one_line_error(capsys.readouterr().err)


def test_a_bad_sweep_value_handed_over_by_the_agent_fails_the_run_in_one_line(
    tmp_path, offline_env, tiny_data_dir
):
    # The agent hands values to wandb.init through a params file; they override the command line.
    params = tmp_path / "params.yaml"
    params.write_text("batch_size:\n  value: 0\n")
    env = {**offline_env, "WANDB_SWEEP_ID": "sweep123", "WANDB_SWEEP_PARAM_PATH": str(params)}
    args = fast_args(tiny_data_dir, tmp_path / "runs", wandb_mode="offline")  # W&B reads params
    result = subprocess.run(
        trainer_command(*args), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 2
    assert "batch_size=0" in one_line_error(result.stderr)
    assert not list((tmp_path / "runs").glob("*/last.pt"))


def test_a_bad_sweep_value_marks_the_wandb_run_failed_with_the_line(
    fake_wandb, tiny_data_dir, tmp_path, capsys
):
    fake_wandb["overrides"] = {"dropout_rate": 1.5}
    assert trainer.main(fast_args(tiny_data_dir, tmp_path / "runs")) == 2
    run = fake_wandb["run"]
    assert run.exit_code == 2 and "dropout_rate=1.5" in run.summary["error"]
    assert run.summary["error"] in capsys.readouterr().err


def test_integral_floats_from_q_uniform_are_accepted_as_integers():
    assert trainer.validate_config({"epochs": 35.0, "batch_size": "128.0"})["epochs"] == 35
    with pytest.raises(settings.ConfigError, match="epochs=35.5"):
        trainer.validate_config({"epochs": 35.5})


# -----------------------------------------------------------------------------------------
# divergence, out of memory


def test_a_diverging_run_stops_logs_diverged_and_exits_0(fake_wandb, tiny_data_dir, tmp_path):
    args = fast_args(
        tiny_data_dir, tmp_path / "runs", learning_rate=1e12, epochs=3, warmup_epochs=0
    )
    assert trainer.main(args) == 0
    run = fake_wandb["run"]
    summary = json.loads((tmp_path / "runs" / run.id / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["epochs_completed"] < 3
    # W&B's optimizer gets 0 for a run with no finished epoch (summary.json says None: there was no
    # best epoch)
    assert run.summary["diverged"] is True and run.summary["val_accuracy"] == (
        summary["best_val_accuracy"] or 0.0
    )
    assert run.exit_code == 0


def test_out_of_memory_is_one_line_with_the_config_and_a_failed_run(
    fake_wandb, monkeypatch, tiny_data_dir, tmp_path, capsys
):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(trainer, "train_epoch", out_of_memory)
    assert trainer.main(fast_args(tiny_data_dir, tmp_path / "runs", batch_size=512)) == 1
    line = one_line_error(capsys.readouterr().err)
    assert "out of memory" in line and "batch_size=512" in line and "8/16/32" in line
    assert (
        fake_wandb["run"].exit_code == 1 and "batch_size=512" in fake_wandb["run"].summary["error"]
    )


# ------------------------------------------------------------------------------------- interruption


@pytest.mark.parametrize("sweep", [False, True])
@pytest.mark.parametrize("signum", cli.STOP_SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_keeps_the_last_epoch_and_marks_preemption_unless_the_agent_stopped_it(
    signum, sweep, fake_wandb, monkeypatch, tiny_data_dir, tmp_path, terminal_signal_defaults
):
    # A sweep agent stops a run early (Hyperband) with SIGTERM: that must not get it requeued. Every
    # other stop (a preemption notice, a closed terminal, a CPU-time limit, Ctrl-C) requeues it,
    # sweep or not.
    requeued = not (sweep and signum == signal.SIGTERM)
    real_train_epoch = trainer.train_epoch

    def train_epoch_then_signal(*args, **kwargs):
        if args[4] == 2:  # epoch 2 is under way when the signal lands
            signal.raise_signal(signum)
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_epoch", train_epoch_then_signal)
    if sweep:
        monkeypatch.setenv("WANDB_SWEEP_ID", "sweep123")
        monkeypatch.setenv("WANDB_RUN_ID", "agentrun")
    handler_before = signal.getsignal(signum)
    assert trainer.main(fast_args(tiny_data_dir, tmp_path / "runs", epochs=3)) == 128 + signum
    run = fake_wandb["run"]
    assert run.preempting is requeued and run.exit_code == 128 + signum
    assert run_files.load_checkpoint(tmp_path / "runs" / run.id / "last.pt")["epoch"] == 1
    assert signal.getsignal(signum) is handler_before  # the caller's handler is back


def test_any_exception_first_saves_the_last_finished_epoch(tiny_data_dir, tmp_path):
    # Checkpoints are written at most once a minute; an exception must not lose the epochs since the
    # last write.
    config = trainer.validate_config({**FAST_CONFIG, "epochs": 5, "val_size": 200})
    data = trainer.prepare_data(tiny_data_dir, 200, torch.device("cpu"))

    def crash_after_epoch_3(metrics):
        if metrics["epoch"] == 3:
            raise RuntimeError("injected crash")

    with pytest.raises(RuntimeError, match="injected"):
        trainer.train(
            config, data, tmp_path / "run", on_epoch=crash_after_epoch_3, checkpoint_seconds=3600.0
        )
    last = run_files.load_checkpoint(
        tmp_path / "run" / "last.pt", needs=("model", "optimizer", "epoch", "history")
    )
    assert last["epoch"] == 3 and [m["epoch"] for m in last["history"]] == [1, 2, 3]
    best = run_files.load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == max(last["history"], key=lambda m: m["val_accuracy"])["epoch"]


def start_and_interrupt(
    args: list[str], env: dict, cwd: Path, last_pt_glob: str, signum: int
) -> tuple[int, str]:
    """Start the trainer, send `signum` as soon as the first epoch's last.pt exists; return (exit
    code, stderr)."""
    process = subprocess.Popen(
        at_terminal_defaults(trainer_command(*args)),
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while (
        not list(cwd.glob(last_pt_glob)) and process.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def comparable(summary: dict) -> dict:
    """A summary without wall-clock figures: what a deterministic CPU run must reproduce exactly."""
    timing = {"epoch_seconds", "train_images_per_second"}
    return {
        "history": [{k: v for k, v in m.items() if k not in timing} for m in summary["history"]],
        **{
            k: summary[k]
            for k in ("best_val_accuracy", "best_epoch", "test_accuracy", "test_loss", "config")
        },
    }


def test_sigterm_then_relaunch_with_the_same_run_id_ends_like_an_uninterrupted_run(
    tiny_data_dir, tmp_path, offline_env, monkeypatch, capsys
):
    # The stopped run is a real process; the uninterrupted reference and the relaunch (the same
    # command, as the agent starts it) run in this process: what they read and write, not their
    # process, is checked.
    args = fast_args(tiny_data_dir, tmp_path / "runs", epochs=4)
    monkeypatch.setenv("WANDB_RUN_ID", "straight")
    assert trainer.main(args) == 0, capsys.readouterr().err

    env = {
        **offline_env,
        "WANDB_RUN_ID": "preempted",
    }  # what an agent sets when it relaunches a preempted run
    code, stderr = start_and_interrupt(
        args, env, tmp_path, "runs/preempted/last.pt", signal.SIGTERM
    )
    assert code == 128 + signal.SIGTERM, stderr
    assert "--resume" in stderr and "Traceback" not in stderr
    interrupted_at = run_files.load_checkpoint(tmp_path / "runs" / "preempted" / "last.pt")["epoch"]
    assert 1 <= interrupted_at < 4

    monkeypatch.setenv("WANDB_RUN_ID", "preempted")
    capsys.readouterr()
    assert trainer.main(args) == 0, capsys.readouterr().err
    assert f"preempted after epoch {interrupted_at}" in capsys.readouterr().out
    expected = json.loads((tmp_path / "runs" / "straight" / "summary.json").read_text())
    got = json.loads((tmp_path / "runs" / "preempted" / "summary.json").read_text())
    assert comparable(got) == comparable(expected)


def test_sigint_then_resume_option_finishes_the_run(tiny_data_dir, tmp_path, offline_env, capsys):
    args = fast_args(tiny_data_dir, tmp_path / "runs", epochs=3)
    code, stderr = start_and_interrupt(args, offline_env, tmp_path, "runs/*/last.pt", signal.SIGINT)
    assert code == 128 + signal.SIGINT, stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    # in this process
    assert trainer.main([*args, "--resume", str(run_dir)]) == 0, capsys.readouterr().err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and [m["epoch"] for m in summary["history"]] == [1, 2, 3]


def test_a_preemption_notice_during_start_up_requeues_the_run_instead_of_killing_it(
    tiny_data_dir, tmp_path, offline_env
):
    # SIGUSR1 as soon as wandb.init has made the run, while data loads and before any epoch: the
    # default action would kill the process (exit -10, never marked preempting, the trial lost).
    env = {**offline_env, "WANDB_RUN_ID": "early", "WANDB_SWEEP_ID": "sweep123"}
    args = fast_args(tiny_data_dir, tmp_path / "runs", wandb_mode="offline", epochs=3)  # W&B starts
    process = subprocess.Popen(
        at_terminal_defaults(trainer_command(*args)),
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("wandb/offline-run-*-early")) and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    process.send_signal(signal.SIGUSR1)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGUSR1, stderr
    assert "interrupted by SIGUSR1: no epoch had finished" in one_line_error(stderr)
    assert "epoch   1/3" not in stdout and not (tmp_path / "runs" / "early" / "last.pt").exists()


def test_a_notice_before_the_first_epoch_marks_the_run_preempting(
    fake_wandb, monkeypatch, tiny_data_dir, tmp_path, terminal_signal_defaults
):
    real_prepare_data = trainer.prepare_data

    def prepare_data_then_signal(*args, **kwargs):
        signal.raise_signal(signal.SIGUSR1)  # arrives while the data loads
        return real_prepare_data(*args, **kwargs)

    monkeypatch.setattr(trainer, "prepare_data", prepare_data_then_signal)
    assert trainer.main(fast_args(tiny_data_dir, tmp_path / "runs")) == 128 + signal.SIGUSR1
    run = fake_wandb["run"]
    assert run.preempting and run.exit_code == 128 + signal.SIGUSR1 and run.logged == []


def test_epochs_are_logged_at_their_own_step_so_a_relaunch_cannot_collide(
    fake_wandb, tiny_data_dir, tmp_path
):
    assert trainer.main(fast_args(tiny_data_dir, tmp_path / "runs", epochs=2)) == 0
    run = fake_wandb["run"]
    assert run.steps == [1, 2] and [m["epoch"] for m in run.logged] == [1, 2]
    assert run.metrics["val_accuracy"] == {"summary": "max"}


# ------------------------------------------------------------------------------------------- resume


def test_resume_names_each_differing_command_line_value_and_keeps_the_checkpoints(
    finished_run, tiny_data_dir, tmp_path, capsys
):
    run_dir = finished_run  # FINISHED_RUN: epochs=1, learning_rate=0.01
    again = fast_args(tiny_data_dir, tmp_path / "runs", epochs=5, learning_rate=0.5) + [
        "--resume",
        str(run_dir),
    ]
    assert trainer.main(again) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if "ignored" in line]
    assert len(notes) == 2, out
    assert notes[0].startswith(
        "--learning_rate=0.5 ignored: the resumed run keeps learning_rate=0.01"
    )
    assert notes[1].startswith("--epochs=5 ignored: the resumed run keeps epochs=1")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["epochs"] == 1 and summary["config"]["learning_rate"] == 0.01


@pytest.mark.parametrize("missing", ["history", "optimizer"])
def test_a_checkpoint_missing_a_key_resume_needs_is_one_line_and_exit_2(missing, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "old"
    run_dir.mkdir(parents=True)
    model = trainer.SimpleCNN(8, 16, 32)
    checkpoint = {
        "model": model.state_dict(),
        "optimizer": {},
        "config": trainer.DEFAULTS,
        "epoch": 1,
        "history": [],
        "best_val_accuracy": 1.0,
        "best_epoch": 1,
        "seconds": 1.0,
    }
    del checkpoint[missing]
    torch.save(checkpoint, run_dir / "last.pt")
    assert trainer.main(["--resume", str(run_dir), "--wandb-mode", "disabled"]) == 2
    assert one_line_error(capsys.readouterr().err).endswith(
        f"last.pt is not a part_2_cifar checkpoint: it lacks {missing}"
    )


# ---------------------------------------------------------------------------------------- bad files


@pytest.fixture()
def data_copy(tmp_path) -> Path:
    write_synthetic_cifar100(tmp_path / "data", train_per_class=2, test_per_class=1)
    return tmp_path / "data"


def test_a_truncated_data_pickle_is_named(data_copy):
    train = data_copy / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:5000])
    with pytest.raises(
        cifar_files.DataError, match=r"cifar-100-python/train is truncated or corrupt"
    ):
        cifar_files.load_cifar100(data_copy, download=False)


def test_a_meta_file_with_the_wrong_number_of_classes_is_named(data_copy):
    meta = data_copy / "cifar-100-python" / "meta"
    meta.write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in range(10)]}))
    with pytest.raises(
        cifar_files.DataError, match=r"meta lists 10 fine label names, expected 100"
    ):
        cifar_files.load_cifar100(data_copy, download=False)


def test_arrays_of_the_wrong_shape_are_named(data_copy):
    test = data_copy / "cifar-100-python" / "test"
    test.write_bytes(
        pickle.dumps({"data": np.zeros((4, 1024), np.uint8), "fine_labels": [0, 1, 2, 3]})
    )
    with pytest.raises(
        cifar_files.DataError, match=r"cifar-100-python/test: data has shape \(4, 1024\)"
    ):
        cifar_files.load_cifar100(data_copy, download=False)


def test_a_corrupt_data_file_ends_the_process_with_one_line(data_copy, tmp_path, offline_env):
    (data_copy / "cifar-100-python" / "train").write_bytes(b"\x80\x04not a pickle at all")
    result = subprocess.run(
        trainer_command(*fast_args(data_copy, tmp_path / "runs")),
        env=offline_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2  # a file the user must fix
    assert "cifar-100-python/train is truncated or corrupt" in one_line_error(result.stderr)


@pytest.fixture()
def good_checkpoint(tmp_path) -> Path:
    model = trainer.SimpleCNN(8, 16, 32)
    path = tmp_path / "best.pt"
    run_files.save_atomic(
        {"model": model.state_dict(), "config": {**trainer.DEFAULTS}, "epoch": 1}, path
    )
    return path


class Payload:
    """A class pickled into a checkpoint: with weights_only=True loading it must be refused, not
    executed."""


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
            "truncated or corrupt",
        ),
        (lambda p: p.write_bytes(b"PK\x03\x04 garbage" * 100), "truncated or corrupt"),
        (
            lambda p: torch.save({"state": torch.zeros(3)}, p),
            "not a part_2_cifar checkpoint: it lacks model, config",
        ),
        (
            lambda p: torch.save({"model": {}, "config": Payload()}, p),
            "holds test_reliability.Payload, which a checkpoint",
        ),
        (lambda p: p.unlink(), "does not exist"),
    ],
)
def test_a_damaged_or_foreign_checkpoint_is_refused_clearly(good_checkpoint, damage, message):
    assert run_files.load_checkpoint(good_checkpoint)["epoch"] == 1
    damage(good_checkpoint)
    with pytest.raises(run_files.CheckpointError, match=message):
        run_files.load_checkpoint(good_checkpoint)


def test_resuming_from_a_truncated_last_checkpoint_exits_2_with_one_line(tmp_path, capsys):
    run_dir = tmp_path / "runs" / "broken"
    run_dir.mkdir(parents=True)
    (run_dir / "last.pt").write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert trainer.main(["--resume", str(run_dir), "--wandb-mode", "disabled"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "cannot resume" in line and "last.pt" in line


# ------------------------------------------------------------------------------------ atomic writes


class FailsWhenPickled:
    def __reduce__(self):
        raise OSError("disk full (injected)")


def test_a_crash_while_writing_a_checkpoint_keeps_the_previous_file(good_checkpoint):
    before = good_checkpoint.read_bytes()
    with pytest.raises(OSError, match="injected"):
        run_files.save_atomic(
            {"model": torch.zeros(1000), "config": FailsWhenPickled()}, good_checkpoint
        )
    assert good_checkpoint.read_bytes() == before
    assert [p.name for p in good_checkpoint.parent.iterdir()] == [
        "best.pt"
    ]  # no temporary left behind


def test_a_crash_while_writing_the_summary_keeps_the_previous_file(tmp_path):
    path = tmp_path / "summary.json"
    cli.write_json_atomic({"best_val_accuracy": 12.5}, path)
    with pytest.raises(TypeError):
        cli.write_json_atomic({"best_val_accuracy": object()}, path)
    assert json.loads(path.read_text()) == {"best_val_accuracy": 12.5}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
