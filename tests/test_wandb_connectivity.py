"""W&B without a network: credentials found the way wandb finds them, and a server that cannot be
reached.

Real processes throughout: the real `wandb login` CLI stores the key, the real trainer runs, and "no
network" is a loopback port that refuses connections, so wandb retries until its init_timeout as it
does on a node without a route. Nothing here speaks W&B's protocol. A server that drops packets
instead behaves the same for the run; wandb 0.31 then also spends up to ~10 s per telemetry probe at
exit (README, "W&B without a network"), too slow for a test.
"""

from __future__ import annotations

import os
import pty
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST_CONFIG, cli_args, process_env, trainer_command

KEY = "k" * 40  # wandb 0.31 checks a key's form only (40+ characters) until it talks to the server
# the trainer's own default is 30 s; WANDB_INIT_TIMEOUT is wandb's own variable
INIT_TIMEOUT_S = "2"
# the old trainer waited ~100 s in wandb.init and then died; now: init timeout + startup + 1 epoch
BOUND_S = 60


@pytest.fixture()
def unreachable_server():
    """The URL of a loopback port that is bound but never listens: every connection is refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}"


def wandb_login(env: dict, *options: str) -> None:
    """`wandb login --no-verify [options] KEY`: stores the key exactly as a user's `wandb login`
    does, offline."""
    subprocess.run(
        [sys.executable, "-m", "wandb", "login", "--no-verify", *options, KEY],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def train(
    env: dict, cwd: Path, data_dir: Path, *more: str
) -> tuple[subprocess.CompletedProcess, float]:
    """One short epoch as a real process with a terminal on stdin (what would make wandb prompt);
    and its seconds."""
    args = cli_args({**FAST_CONFIG, "epochs": 1}) + [
        "--data-dir",
        str(data_dir),
        "--val-size",
        "200",
        *more,
    ]
    controller, terminal = pty.openpty()
    started = time.monotonic()
    try:
        result = subprocess.run(
            trainer_command(*args),
            env=env,
            cwd=cwd,
            stdin=terminal,
            text=True,
            capture_output=True,
            timeout=BOUND_S + 60,
        )
    finally:
        os.close(controller)
        os.close(terminal)
    return result, time.monotonic() - started


def our_lines(output: str) -> list[str]:
    """The trainer's W&B lines, not wandb's own (those start with 'wandb:')."""
    return [line for line in output.splitlines() if line.startswith(("W&B:", "error:"))]


def trained_offline(result: subprocess.CompletedProcess, cwd: Path) -> tuple[str, Path]:
    """Exit 0, no traceback, the run folder, its offline W&B run; returns the one W&B line and that
    W&B run."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    (line,) = our_lines(result.stdout + result.stderr)
    (run_dir,) = (cwd / "runs").iterdir()
    assert (run_dir / "summary.json").is_file() and (run_dir / "best.pt").is_file()
    # WANDB_DIR is cwd (offline_env)
    (offline_run,) = cwd.glob(f"wandb/offline-run-*-{run_dir.name}")
    assert list(offline_run.glob("*.wandb"))
    return line, offline_run


def fell_back_offline(
    result: subprocess.CompletedProcess, seconds: float, cwd: Path, server: str
) -> None:
    """Trained offline in bounded time, with one line naming the server that gave no run and the
    folder to sync."""
    line, offline_run = trained_offline(result, cwd)
    assert line.startswith(f"W&B: {server} gave no run within {INIT_TIMEOUT_S} s")
    assert line.endswith(
        f"logging offline to {offline_run}; upload later with: wandb sync {offline_run}"
    )
    assert seconds < BOUND_S


# ----------------------------------------------------------------------------------------------
# finding credentials


def test_a_key_from_wandb_login_for_the_default_server_means_online(offline_env, tmp_path):
    # wandb 0.31 stores it under api.forge.coreweave.com; the trainer once looked for api.wandb.ai
    # and went offline.
    wandb_login(offline_env)
    code = "from cifarkit.core import wandb_connect as p; print(p.resolve_wandb_mode('auto'))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=offline_env,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert result.stdout.strip() == "online", result.stdout + result.stderr


def test_online_on_request_without_credentials_is_one_line_naming_the_server(
    offline_env, tmp_path, tiny_data_dir, unreachable_server
):
    env = {**offline_env, "WANDB_BASE_URL": unreachable_server}
    result, _ = train(env, tmp_path, tiny_data_dir, "--wandb-mode", "online")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert our_lines(result.stderr) == [line for line in result.stderr.splitlines() if line.strip()]
    (line,) = our_lines(result.stderr)
    assert unreachable_server in line and "wandb login" in line


def test_a_malformed_wandb_setting_is_one_line(offline_env, tmp_path, tiny_data_dir):
    result, _ = train({**offline_env, "WANDB_INIT_TIMEOUT": "soon"}, tmp_path, tiny_data_dir)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert "init_timeout" in line and "soon" in line


# ---------------------------------------------------------------------------------------------- no
# route to W&B


def test_no_credentials_goes_offline_at_once(
    offline_env, tmp_path, tiny_data_dir, unreachable_server
):
    # An online attempt would wait the whole init timeout: 10 minutes here. Offline is decided
    # before wandb.init.
    env = {**offline_env, "WANDB_BASE_URL": unreachable_server, "WANDB_INIT_TIMEOUT": "600"}
    result, seconds = train(env, tmp_path, tiny_data_dir)
    line, _ = trained_offline(result, tmp_path)
    assert line == (
        f"W&B: no credentials for {unreachable_server}, logging offline to {tmp_path / 'wandb'}; "
        f"upload later with: wandb sync {tmp_path / 'wandb'}/offline-run-*"
    )
    assert seconds < BOUND_S


def test_wandb_login_and_no_network_trains_offline_with_one_line(
    offline_env, tmp_path, tiny_data_dir, unreachable_server
):
    # As a user: `wandb login --host` stores the key in ~/.netrc and the server in wandb's settings
    # file; nothing in the environment names either. wandb talks as it does for a user (not
    # silenced).
    env = {k: v for k, v in offline_env.items() if k != "WANDB_SILENT"} | {
        "WANDB_INIT_TIMEOUT": INIT_TIMEOUT_S
    }
    wandb_login(env, "--host", unreachable_server)
    result, seconds = train(env, tmp_path, tiny_data_dir)
    fell_back_offline(result, seconds, tmp_path, unreachable_server)


def test_api_key_in_the_environment_and_no_network_trains_offline_with_one_line(
    offline_env, tmp_path, tiny_data_dir, unreachable_server
):
    env = offline_env | {
        "WANDB_API_KEY": KEY,
        "WANDB_BASE_URL": unreachable_server,
        "WANDB_INIT_TIMEOUT": INIT_TIMEOUT_S,
    }
    result, seconds = train(env, tmp_path, tiny_data_dir)
    fell_back_offline(result, seconds, tmp_path, unreachable_server)


def test_inside_a_sweep_no_network_exits_1_with_one_line_before_training(
    offline_env, tmp_path, tiny_data_dir, unreachable_server
):
    # What `wandb agent` hands its run (wandb_agent.py): the ids and a params file written by
    # wandb's own helper.
    from wandb.sdk.lib import config_util

    params = tmp_path / "wandb" / "sweep-abc123" / "config-run12345.yaml"
    params.parent.mkdir(parents=True)
    config_util.save_config_file_from_dict(str(params), {"learning_rate": {"value": 0.02}})
    env = offline_env | {
        "WANDB_API_KEY": KEY,
        "WANDB_BASE_URL": unreachable_server,
        "WANDB_INIT_TIMEOUT": INIT_TIMEOUT_S,
        "WANDB_SWEEP_ID": "abc123",
        "WANDB_RUN_ID": "run12345",
        "WANDB_SWEEP_PARAM_PATH": str(params),
    }
    result, seconds = train(env, tmp_path, tiny_data_dir)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr, (
        result.stderr
    )
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        line.startswith(f"error: W&B: {unreachable_server} gave no run") and "sweep abc123" in line
    )
    assert not (tmp_path / "runs").exists() and not list(tmp_path.glob("wandb/offline-run-*"))
    assert seconds < BOUND_S


def test_a_local_sweep_trial_with_no_network_falls_back_to_offline_and_trains(
    offline_env, tmp_path, tiny_data_dir, unreachable_server
):
    # Optuna, not W&B, keeps a local sweep's books: its trials need no server, so they fall back
    # like a single run.
    sweep = tmp_path / "one.json"
    sweep.write_text(
        '{"method": "random", "metric": {"name": "val_accuracy", "goal": "maximize"}, '
        '"parameters": {"num_filters_1": {"value": 8}, "num_filters_2": {"value": 16}, '
        '"num_filters_3": {"value": 32}, "batch_size": {"value": 64}, "epochs": {"value": 1}}}'
    )
    env = offline_env | {
        "WANDB_API_KEY": KEY,
        "WANDB_BASE_URL": unreachable_server,
        "WANDB_INIT_TIMEOUT": INIT_TIMEOUT_S,
    }
    result = subprocess.run(
        [
            sys.executable,
            str(Path(trainer_command()[1]).with_name("local_sweep.py")),
            str(sweep),
            "--trials",
            "1",
            "--data-dir",
            str(tiny_data_dir),
            "--val-size",
            "200",
            "--images-dir",
            str(tmp_path / "images"),
        ],
        env=env,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=BOUND_S + 60,
    )
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr, (
        result.stderr
    )
    (line,) = our_lines(result.stdout + result.stderr)
    assert line.startswith(f"W&B: {unreachable_server} gave no run") and "wandb sync" in line
    assert (tmp_path / "runs" / "one" / "trial-0000" / "summary.json").is_file()
    assert list(tmp_path.glob("wandb/offline-run-*/*.wandb"))


# ----------------------------------------------------------------------------------------------
# bounded waits


@pytest.mark.parametrize(
    "environment, expected",
    [
        ({}, "30.0 120.0"),
        ({"WANDB_INIT_TIMEOUT": "5", "WANDB_FINISH_TIMEOUT": "7"}, "5.0 7.0"),
    ],
)
def test_a_run_waits_a_bounded_time_for_init_and_finish_unless_wandb_is_told_otherwise(
    offline_env, tmp_path, environment, expected
):
    # run.finish would wait for uploads forever by default; a connection lost mid-run cannot be
    # staged honestly here (no W&B server to lose), so this checks that the bound reaches the run
    # wandb makes.
    code = (
        "from cifarkit.core import wandb_connect as p; run = p.start_wandb_run({'mode': "
        "'offline'}, in_sweep=False); print(run.settings.init_timeout, "
        "run.settings.finish_timeout); run.finish()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=offline_env | environment,
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert result.stdout.strip() == expected, result.stderr


@pytest.fixture()
def read_only_home(tmp_path):
    """A HOME folder on a read-only file system (a container's, an HPC node's): a tmpfs mounted
    read-only, since root writes through permission bits. Skips where mounting is not allowed."""
    home = tmp_path / "read-only-home"
    home.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(home)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.strip() or 'mount failed'}): a read-only "
            "file system needs root with CAP_SYS_ADMIN"
        )
    yield home
    subprocess.run(["umount", "-l", str(home)], capture_output=True)


@pytest.mark.parametrize("home", ["unset", "read-only"])
def test_without_a_writable_home_wandb_and_matplotlib_keep_off_the_console(
    home, tiny_data_dir, tmp_path, request, with_figures
):
    # HOME unset (cron, some batch systems) or read-only (containers, HPC nodes): wandb-core 0.31
    # found no folder for its log and wrote ~18 lines of its own ("2026/12/03 08:44:13 ERROR main:
    # failed to get logger path") around a clean offline run, W&B could not stage the model
    # artifact, matplotlib warned in two lines. Now W&B's folders are under its own wandb/ folder.
    env = process_env(tmp_path)
    for name in ("HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "MPLCONFIGDIR"):
        env.pop(name, None)
    for name in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_SILENT"):
        env.pop(name, None)
    if home == "read-only":
        env["HOME"] = str(request.getfixturevalue("read_only_home"))
    args = ["--data-dir", str(tiny_data_dir), "--runs-dir", str(tmp_path / "runs")]
    args += ["--val-size", "200", "--wandb-mode", "offline", *cli_args(FAST_CONFIG | {"epochs": 1})]
    result = subprocess.run(
        trainer_command(*args), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert not re.findall(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d .*$", console, re.MULTILINE)
    assert "atplotlib" not in console and "artifact" not in console, console
    assert result.stdout.splitlines()[-1].startswith("done: ")
    assert list((tmp_path / "runs").glob("*/curves.png"))  # matplotlib drew, quietly
    assert list((tmp_path / "wandb" / "cache" / "wandb" / "logs").glob("core-debug-*.log"))
