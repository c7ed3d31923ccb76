"""local_sweep.py never pays twice for a training: runs already on disk become finished trials
(--prior-runs), configurations the user names are trained first (--start-from), a seeded sampler
draws the same trials again (--sampler-seed), and a time budget ends a sweep over resumed commands
(--time-budget). The runs on disk are real: the trainer and a local sweep on tiny data."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from conftest import copy_of, process_env, sweep_args
from optuna.trial import TrialState

import local_sweep
import part_2_cifar as p2
from cifarkit.core.cifar_files import cifar100_source
from cifarkit.sweeps import report as sweep_report
from cifarkit.sweeps import space as sweep_space
from cifarkit.sweeps import storage as sweep_storage
from cifarkit.sweeps import warm_start

ROOT = Path(__file__).resolve().parents[1]
TINY = {"batch_size": 64, "num_filters_1": 8, "num_filters_2": 16, "num_filters_3": 16}
# 0.05 learns, 0.0001 does not (Hyperband prunes it at epoch 1), 1e6 diverges in its first epoch
# (numbers JSON writes without an exponent: W&B reads the file as YAML 1.1, where 1e-05 is text)
WARM_SWEEP = {
    "program": "part_2_cifar.py",
    "method": "bayes",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "parameters": {key: {"value": value} for key, value in TINY.items()}
    | {"learning_rate": {"values": [0.0001, 0.05, 1000000.0]}, "epochs": {"values": [1, 2]}},
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 3},
}


def write_json(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


def train(data_dir: Path, runs_dir: Path, **config) -> Path:
    """One part_2_cifar.py run, as the README's command makes it; its run folder."""
    before = set(runs_dir.glob("*")) if runs_dir.exists() else set()
    args = [
        "--data-dir",
        str(data_dir),
        "--runs-dir",
        str(runs_dir),
        "--val-size",
        "100",
        "--wandb-mode",
        "disabled",
        *(f"--{k}={v}" for k, v in (TINY | config).items()),
    ]
    assert p2.main(args) == 0
    (run_dir,) = set(runs_dir.glob("*")) - before
    return run_dir


def load_study(runs_dir: Path, name: str) -> optuna.Study:
    storage = sweep_storage.open_storage(None, runs_dir).storage
    return optuna.load_study(study_name=name, storage=storage)


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def disk(tmp_path_factory, learnable_data_dir, tiny_data_dir) -> dict:
    """What a user has on disk before the sweep: a previous local sweep's runs folder (one trial
    complete, one pruned) and part_2_cifar.py runs: one inside the sweep, one diverged,
    and three that do not belong (a value the sweep cannot take, a setting it does not vary, other
    data). Paths by name, and the sweep file."""
    root = tmp_path_factory.mktemp("disk")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep = write_json(root / "warm.json", WARM_SWEEP)
        previous = root / "previous-runs"
        points = write_json(
            root / "points.json",
            [{"learning_rate": 0.05, "epochs": 2}, {"learning_rate": 0.0001, "epochs": 2}],
        )
        assert (
            local_sweep.main(
                sweep_args(
                    sweep,
                    learnable_data_dir,
                    previous,
                    "--trials",
                    "2",
                    "--start-from",
                    str(points),
                )
            )
            == 0
        )
        runs = root / "runs"
        disk = {
            "sweep": sweep,
            "previous": previous,
            "runs": runs,
            "good": train(learnable_data_dir, runs, learning_rate=0.05, epochs=1),
            "diverged": train(learnable_data_dir, runs, learning_rate=1e6, epochs=1),
            "outside": train(learnable_data_dir, runs, learning_rate=0.01, epochs=1),
            "weight_decay": train(
                learnable_data_dir, runs, learning_rate=0.05, epochs=1, weight_decay=0.001
            ),
            "other_data": train(tiny_data_dir, runs, learning_rate=0.05, epochs=1),
        }
    finally:
        torch.set_num_threads(threads)
    return disk


# --------------------------------------------------------------------------------------------------
# Prior runs


def test_prior_runs_become_finished_trials_before_any_sampling_and_never_twice(
    disk, learnable_data_dir, tmp_path, one_thread, capsys
):
    runs = tmp_path / "runs"
    args = sweep_args(
        disk["sweep"],
        learnable_data_dir,
        runs,
        "--trials",
        "1",
        "--prior-runs",
        str(disk["previous"]),
        "--prior-runs",
        str(disk["runs"]),
    )
    assert local_sweep.main(args) == 0
    out = capsys.readouterr().out
    for name, reason in (
        ("outside", "learning_rate=0.01 is not one of its values"),
        ("weight_decay", "weight_decay=0.001, but the sweep's trials train weight_decay=0.0005"),
        ("other_data", "trained on other data"),
    ):
        assert f"prior run {disk[name]} skipped: {reason}" in out, out
    assert (
        "prior runs: 4 added (2 COMPLETE, 1 PRUNED, 1 FAIL), 0 already in the study, 3 skipped"
    ) in out

    trials = load_study(runs, "warm").trials
    prior = [t for t in trials if t.user_attrs.get("origin") == sweep_report.PRIOR_RUN]
    assert [t.number for t in prior] == [0, 1, 2, 3]  # first, before the sampler drew anything
    by_folder = {Path(t.user_attrs["run_dir"]).resolve(): t for t in prior}
    previous = load_study(disk["previous"], "warm").trials
    for t in previous:
        mine = by_folder[Path(t.user_attrs["run_dir"]).resolve()]  # the previous sweep's, as it was
        assert (mine.state, mine.value, mine.params) == (t.state, t.value, t.params)
        assert mine.intermediate_values == t.intermediate_values  # the pruner sees every epoch
    assert [t.state.name for t in previous] == ["COMPLETE", "PRUNED"]
    good = by_folder[disk["good"].resolve()]
    history = summary(disk["good"])["history"]
    assert good.state == TrialState.COMPLETE
    assert good.value == max(m["val_accuracy"] for m in history)
    assert good.params == {"learning_rate": 0.05, "epochs": 1}
    assert good.intermediate_values == {m["epoch"]: m["val_accuracy"] for m in history}
    diverged = by_folder[disk["diverged"].resolve()]
    assert diverged.state == TrialState.FAIL
    assert diverged.user_attrs["failure"].startswith("diverged")

    trained = [t for t in trials if t.number > 3]  # --trials counts what this study trains
    assert sum(t.state in local_sweep.FINISHED for t in trained) == 1
    assert all(t.user_attrs.get("origin") is None for t in trained)
    csv = (runs / "warm" / "trials.csv").read_text().splitlines()
    origin = csv[0].split(",").index("origin")
    origins = sorted(row.split(",")[origin] for row in csv[1:])
    assert origins == ["prior run"] * 4 + ["sampler"] * len(trained)

    # The same command again, this study's own runs folder named too: nothing added, nothing trained
    assert local_sweep.main([*args, "--prior-runs", str(runs)]) == 0
    assert "prior runs: 0 added, 4 already in the study, 3 skipped" in capsys.readouterr().out
    assert len(load_study(runs, "warm").trials) == len(trials)


def test_a_prior_run_at_the_metric_target_ends_the_sweep_before_any_training(
    disk, learnable_data_dir, tmp_path, capsys
):
    reached = summary(disk["good"])["best_val_accuracy"]
    sweep = write_json(
        tmp_path / "warm.json",
        WARM_SWEEP | {"metric": {"name": "val_accuracy", "goal": "maximize", "target": reached}},
    )
    runs = tmp_path / "runs"
    assert (
        local_sweep.main(
            sweep_args(
                sweep, learnable_data_dir, runs, "--trials", "3", "--prior-runs", str(disk["good"])
            )
        )
        == 0
    )
    assert "prior runs: 1 added (1 COMPLETE)" in capsys.readouterr().out
    assert [t.user_attrs["origin"] for t in load_study(runs, "warm").trials] == ["prior run"]


def test_prior_runs_of_a_two_objective_sweep_take_their_values_from_the_summary(
    disk, learnable_data_dir, tmp_path, capsys
):
    deploy = {
        "program": "part_2_cifar.py",
        "method": "custom",
        "scheduler": {"engine": "optuna"},
        "parameters": WARM_SWEEP["parameters"],
        "metrics": [
            {"name": "best_val_accuracy", "goal": "maximize"},
            {"name": "flops_per_image", "goal": "minimize"},
        ],
    }
    sweep = local_sweep.load_sweep(write_json(tmp_path / "deploy.json", deploy))
    study = optuna.create_study(directions=sweep.directions)
    identity = local_sweep.data_fingerprint(cifar100_source(learnable_data_dir), 100)
    warm_start.add_prior_runs(study, sweep, [disk["runs"]], identity)
    out = capsys.readouterr().out
    assert "prior runs: 2 added (1 COMPLETE, 1 FAIL), 0 already in the study, 3 skipped" in out
    (complete,) = [t for t in study.trials if t.state == TrialState.COMPLETE]
    recorded = summary(disk["good"])
    assert complete.values == [recorded["best_val_accuracy"], recorded["flops_per_image"]]
    assert complete.intermediate_values == {}  # a study of several objectives takes none


@pytest.mark.parametrize(
    "spec",
    [
        {"values": [64, 128, None]},
        {"value": 7},
        {"min": 2, "max": 9},
        {"min": 0.1, "max": 0.3},
        {"distribution": "q_uniform", "min": 30, "max": 50, "q": 5},
        {"distribution": "q_uniform", "min": 0.1, "max": 0.9, "q": 0.25},
        {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
        {"distribution": "log_uniform", "min": math.log(1e-4), "max": math.log(1e-2)},
        {"distribution": "inv_log_uniform_values", "min": 1e-4, "max": 1e-2},
        {"distribution": "q_log_uniform_values", "min": 1, "max": 1000, "q": 1},
        {"distribution": "normal", "mu": 5, "sigma": 2},
        {"distribution": "q_normal", "mu": 10, "sigma": 3, "q": 1},
        {"distribution": "log_normal", "mu": 0, "sigma": 0.5},
        {"distribution": "q_log_normal", "mu": 1, "sigma": 0.5, "q": 0.5},
        {"distribution": "beta", "a": 2, "b": 5},
        {"distribution": "q_beta", "a": 2, "b": 5, "q": 0.1},
        {"values": [0.5, "x", 0.1], "probabilities": [0.2, 0.5, 0.3]},  # in no numeric order
    ],
    ids=lambda spec: spec.get("distribution", "-".join(spec)),
)
def test_every_value_a_parameter_gives_maps_back_to_a_draw_that_gives_it(spec):
    param = sweep_space.translate_parameter("batch_size", spec)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        value = param.sample(trial)
        if param.distribution is None:
            continue
        draw = warm_start.draw_of(param, 256 if value is None else value, default=256)
        if value is None:  # a null choice: the run trained the default
            assert draw is None
        else:
            assert warm_start.same_value(param.value(draw), value)  # numbers to 1e-9
        assert param.distribution._contains(param.distribution.to_internal_repr(draw))


def test_a_default_trainer_run_is_a_point_of_the_readme_sweep_and_its_neighbours_are_not():
    sweep = local_sweep.load_sweep(ROOT / "sweep_config.json")
    assert warm_start.space_point(sweep, p2.DEFAULTS)["learning_rate"] == 0.01  # its top, included
    for change, reason in (
        ({"epochs": 32}, "epochs=32 is not on its steps"),
        ({"learning_rate": 0.02}, "learning_rate=0.02 is outside its range"),
        ({"seed": 1}, "seed=1, but the sweep's trials train seed=0"),
    ):
        with pytest.raises(ValueError, match=reason):
            warm_start.space_point(sweep, p2.DEFAULTS | change)


@pytest.mark.parametrize(
    "option, change, words",
    [
        ("--prior-runs", {"method": "grid"}, "--prior-runs with method grid"),
        ("--start-from", {"method": "grid"}, "--start-from with method grid"),
        ("--prior-runs", {}, "no such folder"),
    ],
)
def test_what_a_sweep_cannot_start_from_is_one_line_and_exit_2_before_any_study(
    option, change, words, tmp_path, capsys
):
    sweep = write_json(tmp_path / "s.json", WARM_SWEEP | change)
    given = tmp_path / ("points.json" if option == "--start-from" else "missing")
    if option == "--start-from":
        write_json(given, {"learning_rate": 0.05})
    code = local_sweep.main(
        sweep_args(
            sweep, tmp_path / "no-data", tmp_path / "runs", "--trials", "1", option, str(given)
        )
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and words in err, err
    assert not (tmp_path / "runs" / sweep_storage.DEFAULT_STORAGE_FILE).exists()


# --------------------------------------------------------------------------------------------------
# Starting points


def test_starting_points_are_the_first_trials_in_the_order_given_and_never_queued_twice(
    disk, learnable_data_dir, tmp_path, one_thread, capsys
):
    points = tmp_path / "points.yaml"
    points.write_text("- {learning_rate: 0.0001}\n- {learning_rate: 0.05, epochs: 1}\n")  # YAML
    runs = tmp_path / "runs"
    args = sweep_args(
        disk["sweep"],
        learnable_data_dir,
        runs,
        "--trials",
        "2",
        "--start-from",
        str(disk["good"]),
        "--start-from",
        str(points),
    )
    assert local_sweep.main(args) == 0
    out = capsys.readouterr().out
    assert f"start point from {disk['good']}: trial 0, before the sampler's" in out
    assert f"start point from {points}: trial 1, before the sampler's" in out
    assert f"start point from {points}: already in the study" in out  # the run folder's config
    first, second = load_study(runs, "warm").trials
    assert first.params == {"learning_rate": 0.05, "epochs": 1}
    assert first.state == TrialState.COMPLETE
    assert second.params["learning_rate"] == 0.0001  # its epochs the sampler's draw
    assert {t.user_attrs["origin"] for t in (first, second)} == {sweep_report.START_POINT}
    assert "start point" in (runs / "warm" / "trials.csv").read_text()

    assert local_sweep.main(args) == 0  # the same command again: nothing queued, nothing trained
    assert capsys.readouterr().out.count("already in the study") == 3
    assert len(load_study(runs, "warm").trials) == 2


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"learning_rate": 0.01}', "learning_rate=0.01 is not one of its values"),
        (
            '[{"epochs": 1}, {"learning_rate": 0.05, "weight_decay": 0.001}]',
            "configuration 2: weight_decay=0.001, but the sweep's trials train weight_decay=0.0005",
        ),
        ('{"learning_rate": "fast"}', "learning_rate=fast is not allowed"),
        ('{"lr": 0.05}', "'lr' is not a part_2_cifar.py setting"),
        ("[]", "expected a configuration"),
    ],
)
def test_a_starting_point_no_trial_trains_is_one_line_naming_the_file(
    text, words, tmp_path, capsys
):
    points = tmp_path / "points.json"
    points.write_text(text)
    sweep = write_json(tmp_path / "warm.json", WARM_SWEEP)
    code = local_sweep.main(
        sweep_args(
            sweep,
            tmp_path / "no-data",
            tmp_path / "runs",
            "--trials",
            "1",
            "--start-from",
            str(points),
        )
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"--start-from {points}" in err and words in err, err


def damaged(path: Path, damage: str) -> Path:
    """`path` made into a file no reader takes: `latin-1` text, `empty`, or a `folder`."""
    if damage == "folder":
        path.mkdir(parents=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"learning_rate: 0.05  # caf\xe9\n" if damage == "latin-1" else b"")
    return path


@pytest.mark.parametrize(
    "given, damage, words",
    [
        ("points.yaml", "latin-1", "is not UTF-8 text (byte 0xe9 at offset 26)"),
        ("points.yaml", "empty", "expected a configuration"),
        ("run", "folder", "a run folder needs its summary.json"),
        ("run/summary.json", "latin-1", "its summary.json cannot be read as a JSON object"),
        ("run/summary.json", "folder", "its summary.json cannot be read as a JSON object"),
    ],
)
def test_a_start_point_file_that_cannot_be_read_is_one_line_naming_it(
    given, damage, words, tmp_path, capsys
):
    damaged(tmp_path / given, damage)
    points = tmp_path / given.split("/")[0]
    sweep = write_json(tmp_path / "warm.json", WARM_SWEEP)
    args = sweep_args(sweep, tmp_path / "no-data", tmp_path / "runs", "--trials", "1")
    assert local_sweep.main([*args, "--start-from", str(points)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--start-from {points}" in err and words in err, err


def test_a_start_point_that_names_a_setting_the_command_fixes_is_refused_not_ignored(
    tmp_path, capsys
):
    points = tmp_path / "points.yaml"
    points.write_text("learning_rate: 0.05\nval_size: 50\n")  # --val-size 100 trains every trial
    sweep = write_json(tmp_path / "warm.json", WARM_SWEEP)
    args = sweep_args(sweep, tmp_path / "no-data", tmp_path / "runs", "--trials", "1")
    assert local_sweep.main([*args, "--start-from", str(points)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"--start-from {points}: 'val_size' cannot be swept" in err and "--val-size" in err


# --------------------------------------------------------------------------------------------------
# Reproducible sweeps

SEEDED_SWEEP = {
    "program": "part_2_cifar.py",
    "method": "bayes",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "parameters": {key: {"value": value} for key, value in TINY.items()}
    | {
        "learning_rate": {"distribution": "log_uniform_values", "min": 0.01, "max": 0.1},
        "dropout_rate": {"values": [0.0, 0.25, 0.5]},
        "epochs": {"value": 1},
    },
}


def drawn(runs_dir: Path) -> list[dict]:
    """The configs the sampler drew, in order (a retry repeats its trial's and is left out)."""
    trials = load_study(runs_dir, "seeded").trials
    return [t.params for t in trials if "failed_trial" not in t.system_attrs]


def test_the_same_seed_draws_the_same_trials_in_one_command_or_over_an_interrupted_one(
    learnable_data_dir, tmp_path, one_thread, monkeypatch, terminal_signal_defaults
):
    sweep = write_json(tmp_path / "seeded.json", SEEDED_SWEEP)

    def sweep_of(runs: str, trials: int, seed: int = 11) -> int:
        return local_sweep.main(
            sweep_args(
                sweep,
                learnable_data_dir,
                tmp_path / runs,
                "--trials",
                str(trials),
                "--sampler-seed",
                str(seed),
            )
        )

    assert sweep_of("a", 3) == 0
    assert len(drawn(tmp_path / "a")) == 3

    # The same command in another folder, stopped by a real SIGTERM in trial 1 (its trial is failed
    # and queued for a retry), then run again: the same draws, though trial numbers moved by one
    real_train_epoch, epochs = p2.train_epoch, []

    def sigterm_in_the_second_epoch(*args, **kwargs):
        epochs.append(1)
        if len(epochs) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # seen before the epoch's first step
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(p2, "train_epoch", sigterm_in_the_second_epoch)
    assert sweep_of("b", 3) == 128 + signal.SIGTERM
    monkeypatch.setattr(p2, "train_epoch", real_train_epoch)
    assert sweep_of("b", 3) == 0
    trials = load_study(tmp_path / "b", "seeded").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert drawn(tmp_path / "b") == drawn(tmp_path / "a")

    # The first draw again, on its own; another seed draws another
    seeded = local_sweep.load_sweep(sweep)
    for seed, same in ((11, True), (12, False)):
        trial = optuna.create_study(sampler=warm_start.seeded_sampler(seeded, seed)).ask()
        for param in seeded.params:
            param.sample(trial)
        assert (trial.params == drawn(tmp_path / "a")[0]) == same


# --------------------------------------------------------------------------------------------------
# A time budget


def test_a_time_budget_starts_no_trial_once_spent_and_holds_over_the_same_command_again(
    learnable_data_dir, tmp_path, one_thread, capsys
):
    sweep = write_json(tmp_path / "seeded.json", SEEDED_SWEEP)
    runs = tmp_path / "runs"
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "50", "--time-budget", "2s")
    assert local_sweep.main(args) == 0
    out = capsys.readouterr().out
    assert "time budget 2 s spent" in out and (runs / "seeded" / "trials.csv").is_file()
    study = load_study(runs, "seeded")
    ((start, end),) = [
        v for k, v in study.user_attrs.items() if k.startswith(warm_start.TIME_SPENT)
    ]
    assert end - start >= 2
    first = study.trials
    assert len(first) < 50 and all(t.state == TrialState.COMPLETE for t in first)  # none cut short
    # the check comes just before Optuna stamps the trial's start: a second covers that gap
    assert all(t.datetime_start.timestamp() < start + 2 + 1 for t in first)

    assert local_sweep.main(args) == 0  # the budget is the study's: spent already
    assert "time budget 2 s spent" in capsys.readouterr().out
    study = load_study(runs, "seeded")
    assert len(study.trials) == len(first)
    assert (
        warm_start.wall_seconds(
            [v for k, v in study.user_attrs.items() if k.startswith(warm_start.TIME_SPENT)]
        )
        > end - start
    )

    more = sweep_args(
        sweep, learnable_data_dir, runs, "--trials", str(len(first) + 1), "--time-budget", "1h"
    )
    assert local_sweep.main(more) == 0  # a larger budget: the study goes on, counted by --trials
    assert len(load_study(runs, "seeded").trials) == len(first) + 1


def test_a_sigkilled_sweep_has_recorded_its_time_up_to_the_start_of_its_last_trial(
    learnable_data_dir, tmp_path
):
    sweep = write_json(tmp_path / "seeded.json", SEEDED_SWEEP)
    runs, log = tmp_path / "runs", tmp_path / "out.log"
    command = [sys.executable, str(ROOT / "local_sweep.py")]
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "9", "--time-budget", "1h")
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*command, *args], stdout=out, stderr=subprocess.STDOUT, env=process_env(tmp_path)
        )
    try:  # the line of trial 1 is printed after its start is recorded: kill it there
        deadline = time.monotonic() + 240
        while not re.search(r"^\S+: trial 1\b", log.read_text(), re.MULTILINE):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait(timeout=60)
    study = load_study(runs, "seeded")
    ((start, end),) = [
        v for k, v in study.user_attrs.items() if k.startswith(warm_start.TIME_SPENT)
    ]
    first, second = study.trials[:2]
    assert start <= first.datetime_start.timestamp()
    # The record was written at trial 0's end and trial 1's start, not TIME_WRITE_SECONDS later
    assert end >= second.datetime_start.timestamp() >= first.datetime_complete.timestamp()


@pytest.mark.parametrize(
    "text, seconds", [("90", 90), ("90s", 90), ("45m", 2700), ("1.5h", 5400), ("2d", 172800)]
)
def test_a_time_budget_reads_seconds_minutes_hours_or_days(text, seconds):
    assert warm_start.duration(text) == seconds


def test_overlapping_processes_count_their_shared_wall_time_once():
    assert warm_start.wall_seconds([[0, 10], [5, 12], [20, 21]]) == 13


# --------------------------------------------------------------------------------------------------
# What belongs: one data set per study, its own trials known wherever they are


def with_data(args: list[str], data_dir: Path, val_size: int) -> list[str]:
    """local_sweep.py `args` with another --data-dir and --val-size."""
    args = list(args)
    args[args.index("--data-dir") + 1] = str(data_dir)
    args[args.index("--val-size") + 1] = str(val_size)
    return args


@pytest.mark.parametrize(
    "data, val_size, words",
    [
        ("tiny", 200, "trains on"),  # the study is on the learnable data, val_size 100
        ("learnable", 600, "--val-size=600 is not allowed"),  # all 600 images held out
    ],
)
def test_a_launcher_refuses_what_its_workers_would_before_any_warm_start_write(
    data,
    val_size,
    words,
    finished_journal,
    finished_run,
    tiny_data_dir,
    learnable_data_dir,
    tmp_path,
    capfd,
):
    args, journal = finished_journal
    (journal.parent / "cut" / "trials.csv").unlink()
    points = write_json(tmp_path / "points.json", {"learning_rate": 0.02})
    data_dir = tiny_data_dir if data == "tiny" else learnable_data_dir
    code = local_sweep.main(
        [
            *with_data(args, data_dir, val_size),
            "--trials",
            "2",
            "--workers",
            "2",
            "--prior-runs",
            str(finished_run),  # trained on tiny_data_dir, val_size 200
            "--start-from",
            str(points),
        ]
    )
    out, err = capfd.readouterr()  # the workers' lines too, were any started
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert "worker 0" not in out and "prior runs" not in out, out
    (trial,) = load_study(journal.parent, "cut").trials  # the study as it was: nothing added
    assert trial.user_attrs.get("origin") is None
    assert not (journal.parent / "cut" / "trials.csv").exists()  # a refused command: no report


def test_a_study_knows_its_own_trials_after_its_runs_folder_moved_or_from_another_cwd(
    finished_journal, tmp_path, monkeypatch, capsys
):
    args, journal = finished_journal
    runs = journal.parent

    def again(runs_dir: Path) -> list[str]:
        moved = [str(runs_dir) if a == str(runs) else a for a in args]
        moved[moved.index("--images-dir") + 1] = str(runs_dir / "images")
        return [*moved, "--trials", "1", "--prior-runs", str(runs_dir)]

    # The runs folder moved, its journal with it: the trial records the old path
    runs.rename(tmp_path / "moved")
    assert local_sweep.main(again(tmp_path / "moved")) == 0
    assert "prior runs: 0 added, 0 already in the study, 0 skipped" in capsys.readouterr().out
    assert len(load_study(tmp_path / "moved", "cut").trials) == 1

    # As an older version wrote it, the trial's folder relative to the working directory of the
    # command that trained it; the same study from another working directory, absolute paths
    (tmp_path / "moved").rename(runs)
    text = journal.read_text()
    journal.write_text(text.replace(f'"{runs}{os.sep}', f'"{runs.name}{os.sep}'))
    assert f'"{runs.name}{os.sep}cut{os.sep}trial-0000"' in journal.read_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert local_sweep.main(again(runs)) == 0
    assert "prior runs: 0 added, 0 already in the study, 0 skipped" in capsys.readouterr().out
    assert len(load_study(runs, "cut").trials) == 1


def test_a_run_reached_by_several_paths_or_copied_is_added_once(
    finished_journal, learnable_data_dir, tmp_path, capsys
):
    args, journal = finished_journal
    trial_dir = journal.parent / "cut" / "trial-0000"
    copy = tmp_path / "copy" / "run"
    copy.parent.mkdir()
    copy_of(trial_dir, copy)
    sweep = local_sweep.load_sweep(Path(args[0]))
    study = optuna.create_study(directions=sweep.directions)  # another study: they are prior runs
    identity = local_sweep.data_fingerprint(cifar100_source(learnable_data_dir), 100)
    folders = [journal.parent, trial_dir, copy.parent]
    warm_start.add_prior_runs(study, sweep, folders, identity)
    assert "prior runs: 1 added (1 COMPLETE), 2 already in the study, 0 skipped" in (
        capsys.readouterr().out
    )
    warm_start.add_prior_runs(study, sweep, folders, identity)
    assert "prior runs: 0 added, 3 already in the study, 0 skipped" in capsys.readouterr().out
    assert len(study.trials) == 1


def test_a_run_whose_trial_marker_cannot_be_read_is_skipped_in_one_line(
    finished_journal, learnable_data_dir, tmp_path, capsys
):
    args, journal = finished_journal
    copy = copy_of(journal.parent / "cut" / "trial-0000", tmp_path / "copy" / "run")
    (copy / "trial.json").write_bytes(b'{"study": "caf\xe9"}\n')  # whose trial it is: unknown
    sweep = local_sweep.load_sweep(Path(args[0]))
    study = optuna.create_study(directions=sweep.directions)
    identity = local_sweep.data_fingerprint(cifar100_source(learnable_data_dir), 100)
    warm_start.add_prior_runs(study, sweep, [copy], identity)
    out = capsys.readouterr().out
    assert f"prior run {copy} skipped: {copy / 'trial.json'} cannot be read" in out, out
    assert "prior runs: 0 added, 0 already in the study, 1 skipped" in out and not study.trials
