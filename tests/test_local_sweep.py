"""local_sweep.py: W&B distributions in Optuna, a sweep that finishes, resumes after SIGKILL,
prunes, and refuses."""

from __future__ import annotations

import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import conftest
import optuna
import pytest
import yaml

import local_sweep
import part_2_cifar as p2
from cifarkit.core import cli, run_files
from cifarkit.sweeps import space as sweep_space
from cifarkit.sweeps import storage as sweep_storage
from cifarkit.sweeps.space import SweepConfigError, translate_parameter

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "batch_size": {"value": 64},
    "num_filters_1": {"value": 8},
    "num_filters_2": {"value": 16},
    "num_filters_3": {"value": 16},
}  # a CPU epoch on the learnable data takes well under a second


def draw(spec: dict, n: int = 1000) -> list:
    """n values of a W&B parameter spec, sampled by Optuna's RandomSampler through the
    translation."""
    param = translate_parameter("x", spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    return [param.sample(study.ask()) for _ in range(n)]


def share_below(values: list, threshold: float) -> float:
    return sum(v < threshold for v in values) / len(values)


# --------------------------------------------------------------------------------------------------
# Each W&B distribution, translated


def test_constant_and_categorical():
    assert set(draw({"value": 7}, 20)) == {7}
    assert set(draw({"distribution": "constant", "value": "cosine"}, 20)) == {"cosine"}
    values = draw({"values": [64, 128, 256]}, 900)
    assert set(values) == {64, 128, 256} and all(
        250 < values.count(v) < 350 for v in (64, 128, 256)
    )


def test_int_uniform_given_or_inferred_from_integer_bounds():
    for spec in ({"distribution": "int_uniform", "min": 2, "max": 5}, {"min": 2, "max": 5}):
        values = draw(spec, 400)
        assert set(values) == {2, 3, 4, 5} and all(type(v) is int for v in values)


def test_uniform_given_or_inferred_from_float_bounds():
    for spec in ({"distribution": "uniform", "min": 0.1, "max": 0.3}, {"min": 0.1, "max": 0.3}):
        values = draw(spec)
        assert all(0.1 <= v <= 0.3 for v in values)
        assert abs(statistics.mean(values) - 0.2) < 0.01 and 0.45 < share_below(values, 0.2) < 0.55


def test_q_uniform_gives_the_multiples_of_q_w_and_b_rounds_to():
    epochs = draw({"distribution": "q_uniform", "min": 30, "max": 50, "q": 5}, 500)
    # int q: ints, as in W&B
    assert set(epochs) == {30, 35, 40, 45, 50} and all(type(v) is int for v in epochs)
    quarters = draw({"distribution": "q_uniform", "min": 0.1, "max": 0.9, "q": 0.25}, 500)
    assert {round(v, 9) for v in quarters} == {
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
    }  # round(0.1 / 0.25) * 0.25 = 0


@pytest.mark.parametrize(
    "spec",
    [
        {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        {
            "distribution": "log_uniform",
            "min": math.log(1e-4),
            "max": math.log(1e-2),
        },  # bounds are natural logs
        {
            "distribution": "inv_log_uniform_values",
            "min": 1e-4,
            "max": 1e-2,
        },  # 1/X log-uniform <=> X log-uniform
        {
            "distribution": "inv_log_uniform",
            "min": math.log(1e2),
            "max": math.log(1e4),
        },  # X = exp(-U(min, max))
    ],
    ids=lambda spec: spec["distribution"],
)
def test_log_uniform_family_is_uniform_in_log_space(spec):
    values = draw(spec)
    assert all(1e-4 * (1 - 1e-9) <= v <= 1e-2 * (1 + 1e-9) for v in values)
    # the geometric midpoint; a linear uniform would give 0.09
    assert 0.45 < share_below(values, 1e-3) < 0.55
    assert 0.2 < share_below(values, 10**-3.5) < 0.3


def test_q_log_uniform_quantizes_a_log_uniform_draw():
    values = draw({"distribution": "q_log_uniform_values", "min": 1, "max": 1000, "q": 1})
    assert all(type(v) is int and 1 <= v <= 1000 for v in values)
    assert 0.45 < share_below(values, 32) < 0.55  # sqrt(1000) = 31.6
    evens = draw(
        {"distribution": "q_log_uniform", "min": math.log(2), "max": math.log(200), "q": 2}, 300
    )
    assert all(v % 2 == 0 and 2 <= v <= 200 for v in evens)


def test_normal_family_has_the_right_moments():
    normal = draw({"distribution": "normal", "mu": 5, "sigma": 2}, 2000)
    assert abs(statistics.mean(normal) - 5) < 0.15 and abs(statistics.stdev(normal) - 2) < 0.15
    q_normal = draw({"distribution": "q_normal", "mu": 10, "sigma": 3, "q": 1}, 1000)
    assert all(type(v) is int for v in q_normal) and abs(statistics.mean(q_normal) - 10) < 0.3
    logs = [math.log(v) for v in draw({"distribution": "log_normal", "mu": 0, "sigma": 0.5}, 2000)]
    assert abs(statistics.mean(logs)) < 0.05 and abs(statistics.stdev(logs) - 0.5) < 0.05
    halves = draw({"distribution": "q_log_normal", "mu": 1, "sigma": 0.5, "q": 0.5}, 500)
    assert all(v >= 0 and v / 0.5 == round(v / 0.5) for v in halves)


def test_beta_and_weighted_categories_are_drawn_as_wandbs_engine_draws_them():
    """Optuna has neither: a quantile is drawn and mapped through W&B's own distribution (scipy's
    beta, the cumulative probabilities); tests/test_sweep_differential.py compares the draws with
    W&B's."""
    values = draw({"distribution": "beta", "a": 2, "b": 5}, 2000)
    assert all(0 <= v <= 1 for v in values) and abs(statistics.mean(values) - 2 / 7) < 0.01
    tenths = draw({"distribution": "q_beta", "a": 2, "b": 5, "q": 0.1}, 500)
    assert {round(v, 9) for v in tenths} <= {round(0.1 * i, 9) for i in range(11)}
    weighted = draw({"values": [64, 128, 256], "probabilities": [0.6, 0.3, 0.1]}, 2000)
    assert abs(weighted.count(64) / 2000 - 0.6) < 0.04
    assert abs(weighted.count(256) / 2000 - 0.1) < 0.03


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"parameters": {"inner": {"value": 1}}}, "nested"),
        ({"distribution": "zipf", "min": 1, "max": 9}, "zipf"),
        ({"distribution": "uniform", "min": 0.5, "max": 0.1}, "min 0.5 is not less than max 0.1"),
        ({"min": 1, "max": 1}, "min 1 is not less than max 1"),  # W&B refuses an empty range too
        ({"distribution": "normal", "mu": 0, "sigma": 0}, "not finite"),  # W&B's engine draws NaN
        ({"values": [[1, 2], [3]]}, "values must be numbers, text, booleans or null"),
    ],
)
def test_what_wandb_or_optuna_cannot_honour_is_refused_naming_the_parameter(spec, words):
    with pytest.raises(SweepConfigError, match=f"'x'.*{words}"):
        translate_parameter("x", spec)


def write_sweep(path: Path, parameters: dict, **top) -> Path:
    """A sweep file in YAML, as `wandb sweep` reads every sweep file (json.dumps writes 1e-05, which
    YAML 1.1 reads as text)."""
    path = path.with_suffix(".yaml")
    path.write_text(
        yaml.safe_dump(
            {
                "program": "part_2_cifar.py",
                "method": "bayes",
                "metric": {"name": "val_accuracy", "goal": "maximize"},
                "parameters": TINY | parameters,
            }
            | top
        )
    )
    return path


@pytest.mark.parametrize(
    "spec",
    [{"values": [100, 200]}, {"value": 100}, {"values": [None]}],
    ids=["values", "value", "null"],
)
def test_val_size_in_a_sweep_file_is_refused_naming_the_option(spec, tmp_path, capsys):
    sweep = write_sweep(tmp_path / "v.json", {"val_size": spec})
    args = [
        str(sweep),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--images-dir",
        str(tmp_path / "images"),
        "--data-dir",
        str(tmp_path / "no-data"),
        "--trials",
        "1",
        "--wandb-mode",
        "disabled",
    ]
    assert local_sweep.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and "'val_size' cannot be swept" in err and "--val-size" in err
    ), err
    assert not (
        tmp_path / "runs" / sweep_storage.DEFAULT_STORAGE_FILE
    ).exists()  # refused before any study or trial


def test_methods_goal_and_hyperband_map_to_optuna(tmp_path):
    sweep = local_sweep.load_sweep(ROOT / "sweep_config.json")
    sampler = sweep_space.make_sampler(sweep)
    assert (
        isinstance(sampler, optuna.samplers.TPESampler)
        and sampler._multivariate
        and sweep.direction == "maximize"
    )
    # W&B's rule, checked against W&B's engine in test_hyperband.py
    pruner = sweep_space.make_pruner(sweep)
    assert (
        isinstance(pruner, sweep_space.WandbHyperbandPruner)
        and pruner.bands == [4, 12]
        and pruner.strict
    )
    grid = local_sweep.load_sweep(
        write_sweep(
            tmp_path / "g.json",
            {"dropout_rate": {"values": [0.0, 0.5]}, "epochs": {"min": 1, "max": 3}},
            method="grid",
        )
    )
    assert (
        isinstance(sweep_space.make_sampler(grid), optuna.samplers.GridSampler)
        and sweep_space.grid_size(grid) == 6
    )
    rand = local_sweep.load_sweep(
        write_sweep(tmp_path / "r.json", {}, method="random", metric={"name": "val_loss"})
    )
    assert isinstance(sweep_space.make_sampler(rand), optuna.samplers.RandomSampler)
    assert rand.direction == "minimize"  # W&B's default goal


# --------------------------------------------------------------------------------------------------
# Sweeps that train


def sweep_args(sweep: Path, data_dir: Path, runs_dir: Path, *more: str) -> list[str]:
    return conftest.sweep_args(sweep, data_dir, runs_dir, *more, wandb_mode=None)


def load_study(runs_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=sweep_storage.open_storage(None, runs_dir).storage
    )


def test_three_trial_sweep_finishes_and_writes_its_report(
    with_figures, offline, learnable_data_dir, capsys
):
    sweep = write_sweep(
        offline / "three.json",
        {
            "learning_rate": {"distribution": "log_uniform_values", "min": 0.003, "max": 0.1},
            "dropout_rate": {"values": [0.0, 0.25]},
            "epochs": {"value": 1},
        },
    )
    runs = offline / "runs"
    assert local_sweep.main(sweep_args(sweep, learnable_data_dir, runs, "--trials", "3")) == 0
    study = load_study(runs, "three")
    assert sum(t.state in local_sweep.FINISHED for t in study.trials) == 3 == len(study.trials)
    for t in study.trials:
        assert (
            json.loads(Path(t.user_attrs["run_dir"], "summary.json").read_text())["config"][
                "val_size"
            ]
            == 100
        )
    rows = (runs / "three" / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("number,state,value")
    assert {p.name for p in (runs / "images").iterdir()} >= {
        "sweep_three_history.png",
        "sweep_three_parallel.png",
    }
    out = capsys.readouterr().out
    # 3 trials are too few to rank 2 parameters honestly
    assert "skipped the importance plot" in out
    assert len(list(offline.glob("wandb/offline-run-*"))) == 3  # one W&B run per trial


def test_sigkill_mid_trial_then_the_same_command_ends_with_exactly_n_trials(
    offline, learnable_data_dir, offline_env
):
    sweep = write_sweep(
        offline / "kill.json",
        {"learning_rate": {"min": 0.01, "max": 0.05}, "epochs": {"value": 3}},
        method="random",
    )
    runs = offline / "runs"
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "2", "--wandb-mode", "disabled")
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "local_sweep.py"), *args],
        cwd=offline,
        env=offline_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    in_trial_1 = runs / "kill" / "trial-0001" / "last.pt"
    deadline = time.monotonic() + 240
    while not in_trial_1.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # mid-trial: epoch 1 of 3 is saved
    assert first.wait() == -signal.SIGKILL, first.stderr.read().decode()[-2000:]
    trial_0 = (runs / "kill" / "trial-0000" / "summary.json").read_text()
    dead_history = run_files.load_checkpoint(in_trial_1, needs=("history",))["history"]
    assert load_study(runs, "kill").trials[1].state == optuna.trial.TrialState.RUNNING

    # the same command; in this process, as the kernel freed the dead one's locks
    assert local_sweep.main(args) == 0
    trials = load_study(runs, "kill").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert (
        runs / "kill" / "trial-0000" / "summary.json"
    ).read_text() == trial_0  # finished trial untouched
    retry = trials[2]  # queued first on restart, resumed from the dead attempt's last.pt
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == trials[1].params
    history = json.loads(Path(retry.user_attrs["run_dir"], "summary.json").read_text())["history"]
    assert [m["epoch"] for m in history] == [1, 2, 3]
    # epochs the dead attempt finished were not run again
    assert history[: len(dead_history)] == dead_history
    assert retry.intermediate_values == {
        m["epoch"]: m["val_accuracy"] for m in history
    }  # the pruner sees them all


def test_a_poor_trial_is_pruned_at_the_hyperband_band(offline, learnable_data_dir):
    sweep = write_sweep(
        offline / "prune.json",
        {"learning_rate": {"min": 0.00001, "max": 0.1}, "epochs": {"value": 3}},
        method="random",
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 3},
    )
    runs = offline / "runs"
    study = optuna.create_study(
        study_name="prune",
        storage=sweep_storage.open_storage(None, runs).storage,
        direction="maximize",
    )
    study.enqueue_trial({"learning_rate": 0.05})  # learns: far above chance by epoch 2
    # barely moves: below the first trial at the band
    study.enqueue_trial({"learning_rate": 0.00001})
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "2", "--wandb-mode", "disabled")
    assert local_sweep.main(args) == 0
    good, poor = load_study(runs, "prune").trials
    assert good.state.name == "COMPLETE" and good.user_attrs["epochs_completed"] == 3
    assert poor.state.name == "PRUNED" and poor.user_attrs["epochs_completed"] == 2
    assert (
        json.loads(Path(poor.user_attrs["run_dir"], "summary.json").read_text())["status"]
        == "pruned"
    )


def test_unsupported_distribution_fails_before_any_training(offline, learnable_data_dir, capsys):
    nested = {"dropout_rate": {"parameters": {"rate": {"value": 0.1}}}}
    sweep = write_sweep(offline / "bad.json", nested)
    runs = offline / "runs"
    assert local_sweep.main(sweep_args(sweep, learnable_data_dir, runs, "--trials", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "dropout_rate" in err and "nested" in err
    assert not runs.exists()


def test_a_range_the_trainer_rejects_fails_before_any_training(offline, learnable_data_dir, capsys):
    sweep = write_sweep(offline / "mom.json", {"momentum": {"min": 0.8, "max": 1.0}})
    assert (
        local_sweep.main(sweep_args(sweep, learnable_data_dir, offline / "runs", "--trials", "2"))
        == 2
    )
    assert "momentum" in capsys.readouterr().err


def test_workers_go_round_robin_over_the_visible_gpus_or_share_the_cpu_cores(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert cli.gpu_slots(3) == [
        "2",
        "5",
        "2",
    ]  # several workers per GPU: one small trial does not fill it
    assert cli.worker_env("5", 3)["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert cli.gpu_slots(4) == [None] * 4
    assert cli.worker_env(None, 4)["OMP_NUM_THREADS"] == "2"  # oversubscribed torch threads spin


def test_diverged_and_out_of_memory_trials_are_recorded_and_the_sweep_goes_on(
    offline, learnable_data_dir, monkeypatch
):
    import torch

    sweep = write_sweep(
        offline / "fail.json",
        {"learning_rate": {"values": [1e6, 0.04, 0.05]}, "epochs": {"value": 1}},
        method="random",
    )
    runs = offline / "runs"
    study = optuna.create_study(
        study_name="fail",
        storage=sweep_storage.open_storage(None, runs).storage,
        direction="maximize",
    )
    for learning_rate in (1e6, 0.04, 0.05):
        study.enqueue_trial({"learning_rate": learning_rate})
    real_train = p2.train

    def out_of_memory_at_004(
        config: dict, *args, **kwargs
    ) -> dict:  # fault injection: no CPU runs out of memory
        if config["learning_rate"] == 0.04:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_train(config, *args, **kwargs)

    monkeypatch.setattr(p2, "train", out_of_memory_at_004)
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "1", "--wandb-mode", "disabled")
    assert local_sweep.main(args) == 0
    diverged, oom, fine = load_study(runs, "fail").trials
    assert diverged.state.name == "FAIL" and diverged.user_attrs["failure"].startswith("diverged")
    assert oom.state.name == "FAIL" and oom.user_attrs["failure"].startswith(
        "out of memory on cpu with batch_size=64"
    )
    assert fine.state.name == "COMPLETE"
