"""sweep_config.json: W&B's schema, the trainer's settings, and a run launched exactly as `wandb
agent` launches it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

import local_sweep
import part_2_cifar as p2
from cifarkit.sweeps import space as sweep_space

ROOT = Path(__file__).resolve().parents[1]
SWEEP_FILE = ROOT / "sweep_config.json"
# Sampled values stay as drawn; only these change, after sampling, so the run takes seconds on a
# CPU: same code path.
FAST_OVERRIDES = {"epochs": 2, "num_filters_1": 8, "num_filters_2": 16, "num_filters_3": 16}


def sweep_file() -> dict:
    return json.loads(SWEEP_FILE.read_text())


def test_every_swept_key_is_a_trainer_setting():
    assert set(sweep_file()["parameters"]) <= set(p2.DEFAULTS)


def test_sweep_is_the_seed_bayes_search_with_hyperband():
    sweep = sweep_file()
    assert sweep["program"] == "part_2_cifar.py" and sweep["method"] == "bayes"
    assert sweep["metric"] == {"name": "val_accuracy", "goal": "maximize"}
    params = sweep["parameters"]
    assert params["learning_rate"] == {"distribution": "uniform", "min": 0.0001, "max": 0.01}
    assert params["momentum"] == {"distribution": "uniform", "min": 0.8, "max": 0.99}
    assert params["epochs"] == {"distribution": "q_uniform", "min": 30, "max": 50, "q": 5}
    assert params["dropout_rate"]["values"] == [0.125, 0.25, 0.5]
    # W&B stops runs at epochs max_iter / eta^k, k = 1..s: 4 and 12, both inside the first 40% of
    # the shortest (30-epoch) cosine schedule, where every budget still trains near its peak
    # learning rate.
    assert sweep_space.hyperband_bands(sweep["early_terminate"]) == ([4, 12], 3, True)


def test_sweep_config_passes_wandbs_own_schema():
    sweeps = pytest.importorskip(
        "sweeps",
        reason="W&B's sweep engine (`pip install sweeps`) pins numpy<2, so it is not in the "
        "product's "
        "environment; run this test in a separate one to check the schema",
    )
    from sweeps.config import schema_violations_from_proposed_config

    assert schema_violations_from_proposed_config(sweep_file()) == []
    assert sweeps.SweepConfig(sweep_file())["early_terminate"]["type"] == "hyperband"


def sample_config(seed: int) -> dict:
    """One config drawn from sweep_config.json (through local_sweep's translation, tested in
    test_local_sweep.py)."""
    sweep = local_sweep.load_sweep(SWEEP_FILE)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed)).ask()
    return {p.name: p.sample(trial) for p in sweep.params}


def run_like_the_agent(
    tmp_path: Path, data_dir: Path, env: dict, cli: dict | None, param_file: dict
) -> Path:
    """What `wandb agent` does for one run (wandb_agent.Agent._command_run in wandb 0.31), with W&B
    offline.

    The values go both ways the agent sends them: `--key=value` arguments built by wandb's own
    function, and a params file named by WANDB_SWEEP_PARAM_PATH that wandb.init reads. The sweep
    file has no `command`, so the default one runs, `${env} ${interpreter} ${program} ${args}`, with
    `${interpreter}` the word `python` (found on PATH: this environment's bin goes first, as the
    README tells users to arrange). --val-size=100 stands for the fixed options a sweep passes
    through its `command`.
    """
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args
    from wandb.sdk.lib import config_util

    run_id, sweep_id = "agentrun1", "localsweep"
    param_path = tmp_path / "wandb" / f"sweep-{sweep_id}" / f"config-{run_id}.yaml"
    param_path.parent.mkdir(parents=True)
    config_util.save_config_file_from_dict(
        str(param_path), {k: {"value": v} for k, v in param_file.items()}
    )
    args = create_sweep_command_args({"args": {k: {"value": v} for k, v in (cli or {}).items()}})[
        "args"
    ]
    fill = {
        "${env}": ["/usr/bin/env"],
        "${interpreter}": ["python"],
        "${program}": [str(ROOT / "part_2_cifar.py")],
        "${args}": ["--val-size=100", *args],
    }
    command = [part for chunk in create_sweep_command(None) for part in fill[chunk]]
    # the program's default --data-dir, relative to where the agent runs
    (tmp_path / "data").symlink_to(data_dir)
    env = env | {
        "WANDB_MODE": "offline",
        "WANDB_SWEEP_ID": sweep_id,
        "WANDB_RUN_ID": run_id,
        "WANDB_SWEEP_PARAM_PATH": str(param_path),
        "OMP_NUM_THREADS": "1",  # shared CPU: 1 thread is faster
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    }
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}")), (
        "no offline W&B run with the agent's run id"
    )
    return tmp_path / "runs" / run_id / "summary.json"


def test_agent_command_line_and_params_file_give_the_run_the_sampled_config(
    tmp_path, tiny_data_dir, offline_env
):
    sample = sample_config(seed=3) | FAST_OVERRIDES
    summary = json.loads(
        run_like_the_agent(tmp_path, tiny_data_dir, offline_env, sample, sample).read_text()
    )
    assert {key: summary["config"][key] for key in sample} == sample
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    assert all(isinstance(row["val_accuracy"], float) for row in summary["history"])


def test_params_file_alone_sets_the_config(tmp_path, tiny_data_dir, offline_env):
    """Agents that pass no arguments (a `command` without ${args}) still configure the run through
    the file."""
    sample = sample_config(seed=4) | FAST_OVERRIDES
    summary = json.loads(
        run_like_the_agent(tmp_path, tiny_data_dir, offline_env, None, sample).read_text()
    )
    assert {key: summary["config"][key] for key in sample} == sample
    assert len(summary["history"]) == 2
