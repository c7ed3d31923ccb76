"""A sweep file means to local_sweep.py what it means to W&B: the sweep files users of W&B reported
problems with (wandb issues 642, 507, 7648, 3398, 1935, 1954, 8549, 2357; optuna 6073), replayed as
a user would run them.

Refused files: one line naming the key and what W&B expects, exit 2, and nothing written. Files W&B
runs: the same search, with a one-line note where W&B's schema warns.
tests/test_sweep_differential.py holds the same rules to W&B's own engine on generated files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
from test_local_sweep import TINY, load_study, sweep_args

import local_sweep
from cifarkit.sweeps import space as sweep_space
from cifarkit.sweeps import storage as sweep_storage

BASE = {
    "program": "part_2_cifar.py",
    "method": "random",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
}
FAST = TINY | {"epochs": {"value": 1}, "learning_rate": {"value": 0.05}}  # learns, well under 1 s
DEFAULT_COMMAND = ["${env}", "${interpreter}", "${program}"]


def write(path: Path, config: dict | str) -> Path:
    """The sweep file as given: a dict as JSON, a str as the very text (YAML)."""
    path.write_text(config if isinstance(config, str) else json.dumps(config))
    return path


def notes(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("note: ")]


def run(sweep: Path, data_dir: Path, runs: Path, *more: str) -> int:
    return local_sweep.main(sweep_args(sweep, data_dir, runs, "--wandb-mode", "disabled", *more))


def with_parameters(**parameters: dict) -> dict:
    return BASE | {"parameters": FAST | parameters}


# --------------------------------------------------------------------------------------------------
# Refused: one line naming the key and what W&B expects, before any study or journal record


@pytest.mark.parametrize(
    "config, words",
    [
        # 1. log_uniform with values for bounds: W&B reads them as natural logs; e^1000 overflows
        # (it was a traceback)
        (
            with_parameters(
                weight_decay={"distribution": "log_uniform", "min": 0.0001, "max": 1000}
            ),
            [
                "'weight_decay'",
                "natural-log exponents",
                "e^1000 overflows",
                "use log_uniform_values",
            ],
        ),
        # 2. bayes without metric: W&B's engine refuses it (here it minimized val_accuracy, and
        # Hyperband pruned the trials that learned)
        (
            {"method": "bayes", "parameters": FAST | {"dropout_rate": {"values": [0.0, 0.25]}}},
            ["method bayes needs a metric section", "Bayesian search requires"],
        ),
        # 3. specs missing their key (each was a KeyError traceback)
        (
            with_parameters(batch_size={"distribution": "categorical", "value": 64}),
            [
                "'batch_size' (categorical)",
                "needs values",
                "no key 'value' (did you mean 'values'?)",
            ],
        ),
        (
            with_parameters(batch_size={"distribution": "constant", "values": [64]}),
            ["'batch_size' (constant)", "needs value", "no key 'values' (did you mean 'value'?)"],
        ),
        # siblings: a number `wandb sweep` reads as text, a typo, keys W&B gives a meaning, wrong
        (
            '{"method": "random", "parameters": {"learning_rate": {"min": 1e-05, "max": 0.1}}}',
            ["'learning_rate' (uniform)", "min must be a number, got '1e-05'", "YAML 1.1"],
        ),
        (
            with_parameters() | {"metirc": {"name": "val_loss"}},
            ["'metirc'", "did you mean 'metric'?"],
        ),
        (with_parameters() | {"run_cap": 0}, ["run_cap 0", "an integer > 0"]),
        (
            with_parameters()
            | {"metric": None, "early_terminate": {"type": "hyperband", "min_iter": 1}},
            ["metric None", "W&B expects an object"],
        ),
        (
            with_parameters() | {"command": [*DEFAULT_COMMAND, "--val-size=abc", "${args}"]},
            ["command", "val_size=abc is not allowed"],
        ),
        (
            with_parameters() | {"command": [*DEFAULT_COMMAND, "--lr=0.1", "${args}"]},
            ["command --lr=0.1", "unrecognized arguments: --lr=0.1"],
        ),
        (
            with_parameters() | {"command": [*DEFAULT_COMMAND, "${args_json}"]},
            ["command ${args_json}", "use ${args}"],
        ),
    ],
    ids=[
        "log_uniform-overflow",
        "bayes-without-metric",
        "categorical-with-value",
        "constant-with-values",
        "1e-05-in-json",
        "top-level-typo",
        "run_cap-0",
        "metric-null",
        "command-bad-value",
        "command-unknown-option",
        "command-args-json",
    ],
)
def test_a_malformed_sweep_file_is_one_line_exit_2_and_leaves_nothing_behind(
    config, words, tmp_path, capsys
):
    sweep, runs = write(tmp_path / "bad.json", config), tmp_path / "runs"
    assert run(sweep, tmp_path / "no-data", runs, "--trials", "2") == 2
    out, err = capsys.readouterr()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert all(word in err for word in words), err
    assert not runs.exists()  # no journal, no lock folder, no study


def test_a_study_an_older_translation_drew_otherwise_is_one_line_not_a_traceback(tmp_path, capsys):
    """Before, q_uniform was drawn from Optuna's stepped IntDistribution; W&B's engine (and now this
    one) rounds a uniform draw: Optuna cannot mix the two in one study."""
    epochs = {"distribution": "q_uniform", "min": 1, "max": 3, "q": 1}
    sweep, runs = write(tmp_path / "old.json", with_parameters(epochs=epochs)), tmp_path / "runs"
    study = optuna.create_study(
        study_name="old",
        direction="maximize",
        storage=sweep_storage.open_storage(None, runs).storage,
    )
    study.set_user_attr("sweep_config", local_sweep.load_sweep(sweep).raw)
    study.add_trial(
        optuna.trial.create_trial(
            params={"epochs": 2},
            distributions={"epochs": optuna.distributions.IntDistribution(1, 3)},
            value=50.0,
        )
    )
    assert run(sweep, tmp_path / "no-data", runs, "--trials", "2") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "study 'old' drew epochs from IntDistribution" in err, err
    assert "continue the sweep under another --study" in err


def test_a_random_sweep_without_metric_runs_and_says_it_optimizes_nothing(tmp_path):
    sweep = write(tmp_path / "r.json", {"method": "random", "parameters": FAST})
    sweep = local_sweep.load_sweep(sweep)
    assert (sweep.metric, sweep.direction) == ("val_accuracy", "maximize")  # the report's ranking
    assert sweep.notes == (
        "no metric: random search optimizes nothing, as under W&B; the report "
        "ranks trials by val_accuracy, highest first",
    )


# --------------------------------------------------------------------------------------------------
# Run as W&B runs them


def test_log_uniform_with_small_bounds_trains_at_e_to_the_bounds_and_says_so(
    offline, learnable_data_dir, capsys
):
    """W&B's engine draws e^U(0.0001, 0.1), about 1.0 to 1.1, and its schema warns; so does the
    local sweep."""
    exponents = {"distribution": "log_uniform", "min": 0.0001, "max": 0.1}
    sweep = write(offline / "exp.json", with_parameters(learning_rate=exponents))
    runs = offline / "runs"
    assert run(sweep, learnable_data_dir, runs, "--trials", "1") == 0
    assert notes(capsys.readouterr().out) == [
        "note: parameter 'learning_rate': log_uniform reads min and max as natural-log exponents, "
        'as W&B does (its schema: "Use log_uniform_values to specify limit values"): values '
        "1.0001..1.1052"
    ]
    (trial,) = load_study(runs, "exp").trials
    assert math.exp(0.0001) <= trial.user_attrs["config"]["learning_rate"] <= math.exp(0.1)


@pytest.mark.parametrize("where", ["name", "--study"])
def test_a_study_name_with_a_slash_keeps_its_name_and_gets_safe_file_names(
    with_figures, where, offline, learnable_data_dir, capsys
):
    name = "cifar/lr-sweep"
    config = with_parameters() | ({"name": name} if where == "name" else {})
    sweep, runs = write(offline / "s.json", config), offline / "runs"
    more = ["--study", name] if where == "--study" else []
    assert run(sweep, learnable_data_dir, runs, "--trials", "1", *more) == 0
    assert run(sweep, learnable_data_dir, runs, "--trials", "1", *more) == 0  # done: nothing to do
    folder = sweep_space.safe_file_name(name)
    assert folder.startswith("cifar_lr-sweep-") and "/" not in folder
    (trial,) = load_study(runs, name).trials  # the study keeps its name
    assert trial.state.name == "COMPLETE"
    assert Path(trial.user_attrs["run_dir"]).parent == runs / folder
    assert (runs / folder / "trials.csv").is_file()
    assert (runs / "images" / f"sweep_{folder}_history.png").is_file()
    assert "Traceback" not in capsys.readouterr().err


def test_yaml_numbers_and_dates_in_text_fields_are_text(offline, learnable_data_dir, capsys):
    """`name: 2024` and `description: 2024-06-01` are a number and a date to YAML: W&B's schema
    warns, and they are the text written."""
    text = "\n".join(
        [
            "name: 2024",
            "description: 2024-06-01",
            "program: part_2_cifar.py",
            "method: random",
            "metric: {name: val_accuracy, goal: maximize}",
            f"parameters: {json.dumps(FAST)}",
        ]
    )
    sweep, runs = write(offline / "dated.yaml", text), offline / "runs"
    assert run(sweep, learnable_data_dir, runs, "--trials", "1") == 0
    assert notes(capsys.readouterr().out) == [
        "note: name: YAML made 2024 a number; it is the text '2024' here (W&B's schema expects a "
        "string)",
        "note: description: YAML made 2024-06-01 a date; it is the text '2024-06-01' here (W&B's "
        "schema expects a string)",
    ]
    study = load_study(runs, "2024")
    assert [t.state.name for t in study.trials] == ["COMPLETE"]  # none left RUNNING
    assert study.user_attrs["sweep_config"]["description"] == "2024-06-01"
    assert run(sweep, learnable_data_dir, runs, "--trials", "1") == 0  # the same file's config


def test_run_cap_caps_the_study_and_the_smaller_bound_wins(offline, learnable_data_dir, capsys):
    """run_cap 2 with --trials 3 runs 2 (it ran 3); the metric is best_val_accuracy, a number only
    the W&B summary holds, in a bayes sweep: each trial's value is that number."""
    config = with_parameters(dropout_rate={"values": [0, 0.1]}) | {
        "method": "bayes",
        "run_cap": 2,
        "metric": {"name": "best_val_accuracy", "goal": "maximize"},
    }
    sweep, runs = write(offline / "cap.json", config), offline / "runs"
    assert run(sweep, learnable_data_dir, runs, "--trials", "3") == 0
    said = "run_cap 2 of the sweep file ends the study after 2 runs, before --trials 3"
    assert said in capsys.readouterr().out
    trials = load_study(runs, "cap").trials
    assert len(trials) == 2
    for trial in trials:
        summary = json.loads(Path(trial.user_attrs["run_dir"], "summary.json").read_text())
        assert trial.value == summary["best_val_accuracy"]
        # what a sweep's metric may name: the trainer's history rows and summary numbers
        assert set(summary["history"][0]) == set(sweep_space.HISTORY_METRICS)
        assert all(isinstance(summary[key], (int, float)) for key in sweep_space.SUMMARY_METRICS)
    assert run(sweep, learnable_data_dir, runs) == 0  # without --trials: run_cap ends it, done
    assert len(load_study(runs, "cap").trials) == 2


def test_the_commands_fixed_options_reach_the_trainer_as_under_wandb_agent(
    offline, learnable_data_dir, capsys
):
    """--val-size=200 and --epochs=2 written in the sweep's command: every run validates on 200
    images for 2 epochs (they were dropped without a word); a setting also swept is the swept
    one's, as W&B's values reach wandb.config, said in a line."""
    command = [*DEFAULT_COMMAND, "--val-size=200", "--epochs=2", "--batch_size=32", "${args}"]
    parameters = {key: spec for key, spec in FAST.items() if key != "epochs"}
    sweep = write(offline / "cmd.json", BASE | {"command": command, "parameters": parameters})
    runs = offline / "runs"
    assert (
        local_sweep.main(
            [
                str(sweep),
                "--data-dir",
                str(learnable_data_dir),
                "--runs-dir",
                str(runs),
                "--trials",
                "1",
                "--images-dir",
                str(runs / "images"),
                "--wandb-mode",
                "disabled",
            ]
        )
        == 0
    )
    assert notes(capsys.readouterr().out) == [
        "note: command --batch_size=32: the swept batch_size replaces it on every run, as under "
        "wandb agent (the sweep's values reach wandb.config)"
    ]
    (trial,) = load_study(runs, "cmd").trials
    summary = json.loads(Path(trial.user_attrs["run_dir"], "summary.json").read_text())
    assert summary["config"]["val_size"] == 200 and summary["config"]["epochs"] == 2
    assert summary["config"]["batch_size"] == 64 and len(summary["history"]) == 2


def test_a_grid_point_that_fails_for_good_runs_once_and_the_grid_ends_when_each_point_ran(
    offline, learnable_data_dir, capfd
):
    """optuna 6073: a learning rate that diverges fails its grid point; the other points run once
    each, the failed one is not run again, and asking for more trials than points is said in a
    line, as W&B's grid ends."""
    config = with_parameters(learning_rate={"values": [1e6, 0.04, 0.05]}) | {"method": "grid"}
    sweep, runs = write(offline / "grid.json", config), offline / "runs"
    assert run(sweep, learnable_data_dir, runs, "--trials", "10") == 0
    out, err = capfd.readouterr()
    said = "the grid (3 points, each run once) ends the study after 3 runs, before --trials 10"
    assert said in out
    assert out.count("stopping (diverged)") == 1 and "Traceback" not in err
    assert "re-evaluating" not in out + err  # Optuna's GridSampler, asked past the grid's end
    trials = load_study(runs, "grid").trials
    assert sorted(t.user_attrs["config"]["learning_rate"] for t in trials) == [0.04, 0.05, 1e6]
    assert [t.state.name for t in trials if t.user_attrs["config"]["learning_rate"] == 1e6] == [
        "FAIL"
    ]
    assert run(sweep, learnable_data_dir, runs, "--trials", "10") == 0  # done: nothing runs again
    assert len(load_study(runs, "grid").trials) == 3
    assert isinstance(
        sweep_space.make_sampler(local_sweep.load_sweep(sweep)), optuna.samplers.GridSampler
    )
