"""What a sweep hands the trainer: `null` is the default under `wandb agent` and local_sweep.py
alike; W&B's internal `--_wandb` arguments of a requeued run are ignored, so it resumes; a value the
trainer refuses inside a W&B sweep fails the W&B run with the reason in its summary."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST_CONFIG, ROOT, at_terminal_defaults, offline_wandb_run

import local_sweep
import part_2_cifar as trainer
from cifarkit.core import run_files, wandb_connect

SWEEP_ID, RUN_ID = "localsweep", "agentrun1"


def agent_launch(tmp_path: Path, data_dir: Path, env: dict, values: dict) -> tuple[list[str], dict]:
    """(command, environment) of one run as `wandb agent` 0.31 launches it
    (wandb_agent.Agent._command_run), W&B offline: `values` both as `--key=value` arguments made by
    wandb's own function and in the params file named by WANDB_SWEEP_PARAM_PATH; the default command
    `${env} ${interpreter} ${program} ${args}`."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args
    from wandb.sdk.lib import config_util

    param_path = tmp_path / "wandb" / f"sweep-{SWEEP_ID}" / f"config-{RUN_ID}.yaml"
    param_path.parent.mkdir(parents=True, exist_ok=True)
    config_util.save_config_file_from_dict(
        str(param_path), {k: {"value": v} for k, v in values.items()}
    )
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})["args"]
    fill = {
        "${env}": ["/usr/bin/env"],
        "${interpreter}": ["python"],
        "${program}": [str(ROOT / "part_2_cifar.py")],
        "${args}": ["--val-size=200", "--no-log-model", *args],
    }
    if not (tmp_path / "data").exists():
        # the default --data-dir, relative to where the agent runs
        (tmp_path / "data").symlink_to(data_dir)
    env = env | {
        "WANDB_MODE": "offline",
        "WANDB_SWEEP_ID": SWEEP_ID,
        "WANDB_RUN_ID": RUN_ID,
        "WANDB_SWEEP_PARAM_PATH": str(param_path),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    }
    return [part for chunk in create_sweep_command(None) for part in fill[chunk]], env


def run_as_the_agent(
    tmp_path: Path, data_dir: Path, env: dict, values: dict
) -> subprocess.CompletedProcess:
    command, env = agent_launch(tmp_path, data_dir, env, values)
    return subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


# --------------------------------------------------------------------------------------------------
# null


def test_null_under_wandb_agent_trains_with_the_default_and_records_it(
    tmp_path, tiny_data_dir, offline_env
):
    result = run_as_the_agent(
        tmp_path, tiny_data_dir, offline_env, FAST_CONFIG | {"weight_decay": None}
    )
    assert result.returncode == 0, result.stderr
    default = trainer.DEFAULTS["weight_decay"]
    assert f"null means the default: weight_decay={default}" in result.stdout
    summary = json.loads((tmp_path / "runs" / RUN_ID / "summary.json").read_text())
    assert summary["config"]["weight_decay"] == default
    _, _, wandb_summary, wandb_config = offline_wandb_run(tmp_path / "wandb", RUN_ID)
    # what the sweep drew: its search must see its own value
    assert wandb_config["weight_decay"] is None
    assert wandb_summary["defaults_used"] == {"weight_decay": default}  # what the run used


def test_null_under_local_sweep_trains_with_the_default_and_records_it(
    tmp_path, tiny_data_dir, one_thread, capsys
):
    sweep = tmp_path / "nulls.json"
    sweep.write_text(
        json.dumps(
            {
                "method": "random",
                "metric": {"name": "val_accuracy", "goal": "maximize"},
                "parameters": {key: {"value": value} for key, value in FAST_CONFIG.items()}
                | {"weight_decay": {"values": [None]}, "label_smoothing": {"value": None}},
            }
        )
    )
    runs = tmp_path / "runs"
    assert (
        local_sweep.main(
            [
                str(sweep),
                "--trials",
                "1",
                "--data-dir",
                str(tiny_data_dir),
                "--runs-dir",
                str(runs),
                "--val-size",
                "200",
                "--wandb-mode",
                "disabled",
                "--images-dir",
                str(tmp_path),
            ]
        )
        == 0
    )
    said = [
        x for x in capsys.readouterr().out.splitlines() if x.startswith("null means the default")
    ]
    assert said == [
        f"null means the default: weight_decay={trainer.DEFAULTS['weight_decay']}, "
        f"label_smoothing={trainer.DEFAULTS['label_smoothing']}"
    ], said  # once, as the trainer says it
    (row,) = csv.DictReader((runs / "nulls" / "trials.csv").open())
    summary = json.loads((runs / "nulls" / "trial-0000" / "summary.json").read_text())
    for key in ("weight_decay", "label_smoothing"):
        assert float(row[key]) == summary["config"][key] == trainer.DEFAULTS[key]


def test_the_command_line_word_none_is_null_and_other_bad_values_are_still_refused(capsys):
    args = trainer.parse_args(["--weight_decay=None", "--val_size=None", "--momentum", "None"])
    config = trainer.validate_config({key: getattr(args, key) for key in trainer.SETTINGS})
    assert {key: config[key] for key in ("weight_decay", "val_size", "momentum")} == {
        key: trainer.DEFAULTS[key] for key in ("weight_decay", "val_size", "momentum")
    }
    # only W&B's spelling
    assert trainer.main(["--weight_decay=none", "--wandb-mode", "disabled"]) == 2
    assert "weight_decay=none is not allowed" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------------
# A requeued run


WANDB_INTERNAL = {"cli_version": "0.31.0", "python_version": "3.11.7", "start_time": 1796015925.9}


def test_wandbs_internal_arguments_are_dropped_in_both_of_the_agents_forms():
    kept, internal = wandb_connect.without_wandb_internals(
        ["--epochs=3", f"--_wandb={WANDB_INTERNAL}", "--_step", "7", "--seed", "1", "--_flag"]
    )
    assert kept == ["--epochs=3", "--seed", "1"] and internal == ["--_wandb", "--_step", "--_flag"]


def test_a_requeued_run_relaunched_with_its_whole_config_as_arguments_resumes(
    tmp_path, tiny_data_dir, offline_env
):
    values = FAST_CONFIG | {"epochs": 8}
    command, env = agent_launch(tmp_path, tiny_data_dir, offline_env, values)
    first = subprocess.Popen(
        at_terminal_defaults(command),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (tmp_path / "runs" / RUN_ID / "last.pt").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
        time.sleep(0.02)
    # a preemption notice: the run is marked preempting, the sweep requeues it
    first.send_signal(signal.SIGUSR1)
    assert first.wait(timeout=240) == 128 + signal.SIGUSR1
    assert offline_wandb_run(tmp_path / "wandb", RUN_ID)[1]
    saved = run_files.load_checkpoint(tmp_path / "runs" / RUN_ID / "last.pt")
    assert saved["epoch"] < 8

    # The relaunch (wandb issues 4237, 4016, 9143): every key of the run's W&B config as an
    # argument, W&B's own `_wandb` among them, and `None` for a key the run never set.
    whole = {"_wandb": WANDB_INTERNAL} | saved["config"] | {"weight_decay": None}
    again = run_as_the_agent(tmp_path, tiny_data_dir, offline_env, whole)
    assert again.returncode == 0, again.stderr
    assert "ignored W&B's internal arguments --_wandb" in again.stdout
    assert f"resuming runs/{RUN_ID} after epoch {saved['epoch']}" in again.stdout
    # None is the default, the checkpoint's value
    assert " ignored: the resumed run keeps" not in again.stdout
    summary = json.loads((tmp_path / "runs" / RUN_ID / "summary.json").read_text())
    assert summary["status"] == "finished" and [m["epoch"] for m in summary["history"]] == list(
        range(1, 9)
    )


def test_outside_a_sweep_an_internal_argument_is_still_refused(monkeypatch, capsys):
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)  # outside a sweep; main() in this process
    with pytest.raises(SystemExit) as exit_info:  # argparse's exit
        trainer.main(["--_wandb={}", "--wandb-mode", "disabled"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --_wandb={}" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------------
# A refused value, seen where the sweep is watched


@pytest.mark.parametrize(
    "values, words",
    [
        ({"batch_size": 0}, "batch_size=0 is not allowed"),  # a value out of range
        # a parameter the trainer lacks (not lr_schedule's prefix)
        (
            {"lr": 0.01},
            "unrecognized arguments: --lr=0.01",
        ),
    ],
)
def test_a_value_refused_inside_a_wandb_sweep_fails_the_wandb_run_with_the_line(
    values, words, tmp_path, tiny_data_dir, offline_env
):
    result = run_as_the_agent(tmp_path, tiny_data_dir, offline_env, FAST_CONFIG | values)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert words in line
    code, _, summary, _ = offline_wandb_run(tmp_path / "wandb", RUN_ID)
    assert code == 2 and line == f"error: {summary['error']}"
    assert not (tmp_path / "runs").exists()  # nothing trained
