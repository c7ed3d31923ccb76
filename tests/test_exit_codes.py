"""One exit-code policy (cli.EXIT_CODES) for every command, each run as a real process on each class
of input: 0 done, 1 a failure at run time, 2 bad input or a file the user must fix, 128 + n stopped
by signal n."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST_CONFIG, ROOT, at_terminal_defaults, cli_args

import part_2_cifar as p2
from cifarkit.core import cli

# the discard port: nothing listens, so a connection is refused at once
CLOSED_PORT = "http://127.0.0.1:9"


def command(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / name), *args]


def run(cmd: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    return result


def stopped(cmd: list[str], env: dict, cwd: Path, marker: str) -> int:
    """Start `cmd` (stop signals at a terminal's defaults), send SIGTERM once its stdout has a line
    matching `marker`; its exit code."""
    process = subprocess.Popen(
        at_terminal_defaults(cmd),
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while not any(re.search(marker, line) for line in list(lines)):
        assert process.poll() is None, (
            f"ended early ({process.returncode}): {process.stderr.read()[-2000:]}"
        )
        assert time.monotonic() < deadline, f"no {marker!r} line: {lines[-5:]}"
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert "Traceback" not in stderr, stderr[-3000:]
    return process.returncode


@pytest.fixture()
def inputs(tiny_data_dir, tmp_path) -> dict:
    """Paths for every case: good data, a file where a folder belongs, an empty folder, a broken
    checkpoint."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a data set")
    (tmp_path / "broken_run").mkdir()
    (tmp_path / "broken_run" / "last.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "sweep.json").write_text(
        json.dumps(
            {
                "program": "part_2_cifar.py",
                "method": "random",
                "metric": {"name": "val_accuracy", "goal": "maximize"},
                "parameters": {
                    "epochs": {"value": 30},
                    **{k: {"value": v} for k, v in FAST_CONFIG.items() if k != "epochs"},
                },
            }
        )
    )
    (tmp_path / "broken_sweep.json").write_text("{not json")
    return {"data": str(tiny_data_dir), "tmp": tmp_path}


TRAINER, SWEEP, SELECT, EXPORT = (
    "part_2_cifar.py",
    "local_sweep.py",
    "select_model.py",
    "trt_export.py",
)

# (command, arguments, the code it must exit with); {data} and {tmp} are filled in from `inputs`
CASES = [
    (TRAINER, ["--no-such-option"], cli.EXIT_BAD_INPUT),
    (TRAINER, ["--learning_rate=-1", "--data-dir", "{data}"], cli.EXIT_BAD_INPUT),
    (TRAINER, ["--data-dir", "{tmp}/a_file"], cli.EXIT_BAD_INPUT),
    (TRAINER, ["--resume", "{tmp}/broken_run", "--data-dir", "{data}"], cli.EXIT_BAD_INPUT),
    (TRAINER, ["--data-dir", "{tmp}/empty"], cli.EXIT_FAILED),  # the download fails: no network
    (SWEEP, ["{tmp}/sweep.json"], cli.EXIT_BAD_INPUT),  # no --trials
    (SWEEP, ["{tmp}/broken_sweep.json", "--trials", "1"], cli.EXIT_BAD_INPUT),
    (
        SWEEP,
        ["{tmp}/sweep.json", "--trials", "1", "--data-dir", "{tmp}/a_file"],
        cli.EXIT_BAD_INPUT,
    ),
    (
        SWEEP,
        ["{tmp}/sweep.json", "--trials", "1", "--storage", "postgresql://127.0.0.1:9/none"],
        cli.EXIT_FAILED,
    ),
    (SWEEP, ["{tmp}/sweep.json", "--trials", "1", "--data-dir", "{tmp}/empty"], cli.EXIT_FAILED),
    (SELECT, ["{tmp}/empty", "--top", "0"], cli.EXIT_BAD_INPUT),
    (SELECT, ["{tmp}/empty"], cli.EXIT_BAD_INPUT),  # no finished run to select from
    (SELECT, ["{tmp}/missing"], cli.EXIT_BAD_INPUT),
    (EXPORT, ["--precision", "fp64"], cli.EXIT_BAD_INPUT),
    (EXPORT, ["--checkpoint", "{tmp}/broken_run/last.pt"], cli.EXIT_BAD_INPUT),
    (EXPORT, ["--runs-dir", "{tmp}/empty"], cli.EXIT_BAD_INPUT),  # no run to export yet
]


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    CASES,
    ids=[f"{name.split('.')[0]}-{'-'.join(args)[:40]}" for name, args, _ in CASES],
)
def test_each_command_exits_by_the_one_policy(name, args, expected, inputs, offline_env):
    env = offline_env | {"https_proxy": CLOSED_PORT, "HTTPS_PROXY": CLOSED_PORT}
    filled = [arg.format(**inputs) for arg in args]
    result = run(
        command(
            name, *filled, *(["--runs-dir", str(inputs["tmp"] / "runs")] if name == SWEEP else [])
        ),
        env,
        inputs["tmp"],
    )
    assert result.returncode == expected, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.strip(), "a failure says why"


def test_a_good_run_exits_0_and_a_stop_signal_128_plus_n_for_every_command(inputs, offline_env):
    tmp, data, term = inputs["tmp"], inputs["data"], cli.stopped_by(signal.SIGTERM)
    env = offline_env | {"WANDB_MODE": "disabled"}
    train = ["--data-dir", data, "--val-size", "100", *cli_args({**FAST_CONFIG, "epochs": 1})]
    assert (
        run(
            command(TRAINER, *train, "--runs-dir", str(tmp / "runs"), "--wandb-mode", "disabled"),
            env,
            tmp,
        ).returncode
        == cli.EXIT_DONE
    )
    long = ["--data-dir", data, "--val-size", "100", "--wandb-mode", "disabled"]
    assert (
        stopped(
            command(
                TRAINER,
                *long,
                *cli_args({**FAST_CONFIG, "epochs": 30}),
                "--runs-dir",
                str(tmp / "r2"),
            ),
            env,
            tmp,
            r"^epoch +1/",
        )
        == term
    )
    assert (
        stopped(
            command(
                SWEEP,
                str(tmp / "sweep.json"),
                "--trials",
                "1",
                "--runs-dir",
                str(tmp / "r3"),
                *long,
            ),
            env,
            tmp,
            r"^epoch +1/",
        )
        == term
    )
    assert (
        stopped(
            command(SELECT, str(tmp / "runs"), "--top", "1", "--seeds", "1", *long),
            env,
            tmp,
            r"training \S+-seed",
        )
        == term
    )
    config = p2.validate_config({**p2.DEFAULTS, **FAST_CONFIG, "val_size": 100})
    torch.save(
        {"model": p2.model_from_config(config).state_dict(), "config": config}, tmp / "model.pt"
    )
    export = [
        "--checkpoint",
        str(tmp / "model.pt"),
        "--data-dir",
        data,
        "--device",
        "cpu",
        "--out",
        str(tmp / "export"),
        "--plot",
        str(tmp / "plot.png"),
        "--batch-sizes",
        "1",
        "--warmup-seconds",
        "0",
        "--precision",
        "fp32",
    ]  # one ONNX export before the benchmark the signal lands in
    assert (
        stopped(command(EXPORT, *export, "--min-seconds", "120"), env, tmp, r"^benchmark:") == term
    )
