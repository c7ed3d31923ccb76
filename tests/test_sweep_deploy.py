"""sweep_deploy.json: a multi-objective sweep in W&B 0.31's own format (method custom, scheduler
engine optuna, metrics), checked against W&B's own Optuna scheduler code
(wandb/sdk/sweeps/scheduler/optuna.py) and run locally."""

from __future__ import annotations

import csv
import json
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from test_local_sweep import load_study, sweep_args

import local_sweep
import part_2_cifar as p2
from cifarkit.core import cli, cost, run_files
from cifarkit.sweeps import space as sweep_space
from cifarkit.sweeps import storage as sweep_storage
from cifarkit.sweeps.space import SweepConfigError, translate_parameter

ROOT = Path(__file__).resolve().parents[1]
DEPLOY_FILE = ROOT / "sweep_deploy.json"
OBJECTIVES = [
    {"name": "best_val_accuracy", "goal": "maximize"},
    {"name": "flops_per_image", "goal": "minimize"},
]
# Sampled values stay as drawn but these, so each run takes a second or two on a CPU: the same code
# path.
FAST_OVERRIDES = {"epochs": 2, "batch_size": 64, "num_filters_1": 8, "num_filters_3": 16}

wandb_optuna = pytest.importorskip("wandb.sdk.sweeps.scheduler.optuna")


def deploy_file() -> dict:
    return json.loads(DEPLOY_FILE.read_text())


def test_the_deploy_sweep_searches_the_seed_space_for_two_objectives():
    deploy, seed = deploy_file(), json.loads((ROOT / "sweep_config.json").read_text())
    assert deploy["parameters"] == seed["parameters"] and deploy["program"] == seed["program"]
    assert deploy["method"] == "custom" and deploy["scheduler"] == {"engine": "optuna"}
    assert deploy["metrics"] == OBJECTIVES
    # W&B's schema refuses both beside these
    assert "early_terminate" not in deploy and "metric" not in deploy
    sweep = local_sweep.load_sweep(DEPLOY_FILE)
    assert sweep.directions == ["maximize", "minimize"]
    assert {name for name, _ in sweep.objectives} <= set(sweep_space.SUMMARY_METRICS)


def test_the_deploy_sweep_passes_wandbs_own_schema():
    pytest.importorskip(
        "sweeps",
        reason="W&B's sweep engine (`pip install sweeps`) pins numpy<2: CI checks this file "
        "with .ci/check_sweep_schema.py in an environment of its own",
    )
    from sweeps.config import schema_violations_from_proposed_config

    assert schema_violations_from_proposed_config(deploy_file()) == []


# --------------------------------------------------------------------------------------------------
# One translation: sweep_space.py against wandb's search_space_from_sweep_config


# every kind W&B's Optuna engine translates, with bounds on q's grid where q is involved
BOTH_SUPPORT = [
    {"value": 7},
    {"distribution": "constant", "value": "cosine"},
    {"values": [64, 128, 256]},
    {"distribution": "categorical", "values": [0.125, 0.25, 0.5]},
    {"distribution": "int_uniform", "min": 2, "max": 9},
    {"min": 2, "max": 9},
    {"distribution": "uniform", "min": 0.1, "max": 0.3},
    {"min": 0.1, "max": 0.3},
    {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.01},
    {"distribution": "q_uniform", "min": 30, "max": 50, "q": 5},
    {"distribution": "q_uniform", "min": 0.25, "max": 1.0, "q": 0.25},
]


def same_values(ours: sweep_space.Param, theirs: optuna.distributions.BaseDistribution) -> bool:
    """A constant is not drawn here, W&B draws it from a one-value categorical: the same value
    either way."""
    if ours.distribution is None:
        return theirs == optuna.distributions.CategoricalDistribution([ours.constant])
    return (
        ours.distribution == theirs
        and ours.ppf is None
        and ours.q in (None, getattr(theirs, "step", None))
    )


@pytest.mark.parametrize(
    "spec", BOTH_SUPPORT, ids=lambda spec: spec.get("distribution", "inferred")
)
def test_each_distribution_both_support_gives_optuna_what_wandbs_scheduler_gives(spec):
    ours = translate_parameter("x", spec, "custom")
    assert same_values(ours, wandb_optuna.sweep_parameter_to_distribution(spec))


@pytest.mark.parametrize("path", ["sweep_config.json", "sweep_deploy.json"])
def test_every_parameter_of_both_sweep_files_translates_as_wandb_translates_it(path):
    parameters = json.loads((ROOT / path).read_text())["parameters"]
    theirs = wandb_optuna.search_space_from_sweep_config(parameters)
    assert all(
        same_values(translate_parameter(name, spec, "custom"), theirs[name])
        for name, spec in parameters.items()
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"distribution": "normal", "mu": 0.5, "sigma": 0.1},
        {"distribution": "q_normal", "mu": 10, "sigma": 3, "q": 1},
        {"distribution": "log_normal", "mu": -5, "sigma": 1},
        {"distribution": "log_uniform", "min": -9.2, "max": -4.6},
        {"distribution": "q_log_uniform", "min": 0.7, "max": 5.3, "q": 2},
        {"distribution": "inv_log_uniform", "min": 4.6, "max": 9.2},
        {"distribution": "inv_log_uniform_values", "min": 0.0001, "max": 0.01},
    ],
    ids=lambda spec: spec["distribution"],
)
def test_what_wandbs_optuna_engine_refuses_is_refused_in_custom_and_drawn_in_the_others(spec):
    with pytest.raises(ValueError, match="no optuna equivalent"):
        wandb_optuna.sweep_parameter_to_distribution(spec)
    with pytest.raises(SweepConfigError, match="'x': W&B's Optuna scheduler .*no optuna"):
        translate_parameter("x", spec, "custom")
    for method in ("random", "bayes"):  # W&B's own engine draws it
        assert translate_parameter("x", spec, method).distribution is not None


def test_each_method_draws_as_the_wandb_engine_that_runs_it():
    """q_uniform with bounds off q's grid: W&B's Optuna scheduler (custom) steps from min, its
    sweeps engine rounds U(min, max) / q (random, bayes) and makes the grid
    numpy.arange(min, max, q) (grid)."""
    spec = {"distribution": "q_uniform", "min": 1, "max": 10, "q": 3}
    custom = translate_parameter("x", spec, "custom").distribution
    assert custom == optuna.distributions.IntDistribution(1, 10, step=3)
    drawn = translate_parameter("x", spec, "random")
    assert {drawn.value(x) for x in (1, 1.4, 1.6, 4.4, 4.6, 7.6, 10)} == {0, 3, 6, 9}  # U/q rounded
    assert translate_parameter("x", spec, "grid").grid() == [1, 4, 7]
    q_log = {
        "distribution": "q_log_uniform_values",
        "min": 1,
        "max": 1000,
        "q": 1,
    }  # integer log-uniform in both ...
    theirs = wandb_optuna.sweep_parameter_to_distribution(q_log)
    ours = translate_parameter("x", q_log, "bayes")
    # ... ints in log([0.5, 1000.5]) ...
    assert theirs == optuna.distributions.IntDistribution(1, 1000, log=True)
    # ... round
    assert (
        ours.distribution == optuna.distributions.FloatDistribution(1, 1000, log=True)
        and ours.q == 1
    )


# --------------------------------------------------------------------------------------------------
# W&B's own Optuna optimizer, fed the summaries this trainer writes


def wandb_records(path: Path) -> list:
    """The records of a .wandb file: a LevelDB-style log of 32 KiB blocks with 7-byte record
    headers, after a 7-byte ":W&B" file header; each record is wandb's protobuf Record (wandb 0.31
    has no reader of its own)."""
    from wandb.proto import wandb_internal_pb2

    data, block, position, records, pending = path.read_bytes(), 32768, 7, [], b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        if kind == 0 or position > len(data):  # zeros, or a record still being written
            break
        pending = chunk if kind in (1, 2) else pending + chunk  # full, first, middle, last
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
    return records


def wandb_summary(run_dir: Path, timeout: float = 60) -> dict:
    """The summary W&B's server holds for an offline run once synced: its summary records applied in
    order. Read once the run's exit record is in the file: wandb's own process may still be writing
    after run.finish()."""
    (path,) = run_dir.glob("*.wandb")
    deadline = time.monotonic() + timeout
    records = wandb_records(path)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.1)
        records = wandb_records(path)
    summary: dict = {}
    for record in records:
        for item in record.summary.update if record.WhichOneof("record_type") == "summary" else ():
            path_in_summary = [item.key] if item.key else list(item.nested_key)
            target = summary
            for part in path_in_summary[:-1]:
                target = target.setdefault(part, {})
            target[path_in_summary[-1]] = json.loads(item.value_json)
    return summary


def run_offline(
    config: dict, data_dir: Path, tmp_path: Path, on_epoch=None
) -> tuple[int, dict, dict]:
    """One training as a W&B run, offline: (exit code, summary.json, the run's W&B summary)."""
    run_id = f"r{len(list(tmp_path.glob('runs/*')))}"
    init = {"project": "deploy", "mode": "offline", "id": run_id, "reinit": "finish_previous"}
    code, summary = p2.run_training(
        p2.validate_config(config),
        lambda: p2.prepare_data(data_dir, 100, p2.torch.device("cpu")),
        tmp_path / "runs" / run_id,
        init,
        on_epoch=on_epoch,
        in_sweep=True,
        log_model=False,
    )
    (run_dir,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}")
    return code, summary, wandb_summary(run_dir)


def test_wandbs_optuna_optimizer_records_both_objectives_of_every_finished_run(
    offline, learnable_data_dir
):
    from wandb.sdk.sweeps.run_state import RunState
    from wandb.sdk.sweeps.scheduler.optimizer import RunWithMetrics
    from wandb.sdk.sweeps.sweep_info import SweepInfo

    def sweep_info(config: dict) -> SweepInfo:
        return SweepInfo(
            id="s", name="deploy", entity="e", project="p", config=config, controller_run_name="c"
        )

    # what `wandb sweep` + agents run
    optimizer = wandb_optuna.build_optuna_optimizer(sweep_info(deploy_file()))
    assert [d.name for d in optimizer.study.directions] == ["MAXIMIZE", "MINIMIZE"]
    finished = {}
    for suggestion in optimizer.ask_n_runs(2):
        config = suggestion.config.flat_dict() | FAST_OVERRIDES | {"val_size": 100}
        code, summary, server = run_offline(config, learnable_data_dir, offline)
        assert code == 0 and summary["status"] == "finished"
        optimizer.tell_run(
            suggestion.run_id, RunWithMetrics(suggestion.config, RunState.FINISHED, "w", server, [])
        )
        finished[int(suggestion.run_id)] = summary, server

    def stop_after_epoch_1(metrics: dict) -> None:
        # the agent's SIGTERM, say: the run ends killed, before any cost is measured
        raise cli.Interrupted(15)

    (stopped,) = optimizer.ask_n_runs(1)
    code, _, stopped_summary = run_offline(
        stopped.config.flat_dict() | FAST_OVERRIDES | {"val_size": 100},
        learnable_data_dir,
        offline,
        on_epoch=stop_after_epoch_1,
    )
    optimizer.tell_run(
        stopped.run_id, RunWithMetrics(stopped.config, RunState.KILLED, "w", stopped_summary, [])
    )

    trials = optimizer.study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL"] and code == 128 + 15
    for number, (summary, server) in finished.items():
        assert isinstance(server["best_val_accuracy"], float) and isinstance(
            server["flops_per_image"], int
        )
        assert trials[number].values == [summary["best_val_accuracy"], summary["flops_per_image"]]
        # the W&B summary and summary.json agree
        assert server["flops_per_image"] == summary["flops_per_image"]
        assert server["val_accuracy"] == {
            "max": summary["best_val_accuracy"]
        }  # not a number: hence best_val_accuracy
    stopped_config = p2.validate_config(stopped.config.flat_dict() | FAST_OVERRIDES)
    assert stopped_summary["flops_per_image"] == cost.flops_per_image(
        p2.model_from_config(stopped_config)
    )
    # measured at the end only: the cost above was written at the start
    assert "latency_ms" not in stopped_summary

    naive = deploy_file() | {
        "metrics": [{"name": "val_accuracy", "goal": "maximize"}, OBJECTIVES[1]]
    }
    other = wandb_optuna.build_optuna_optimizer(sweep_info(naive))
    (suggestion,) = other.ask_n_runs(1)
    # the scheduler's tell fails on it
    with pytest.raises(ValueError, match="could not be cast to float"):
        other.tell_run(
            suggestion.run_id,
            RunWithMetrics(suggestion.config, RunState.FINISHED, "w", finished[0][1], []),
        )
    # why local_sweep.py refuses it
    assert not other.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


# --------------------------------------------------------------------------------------------------
# The same format offline: local_sweep.py


def write_custom(path: Path, space: dict, **top) -> Path:
    """A method custom sweep of tiny models (flops_per_image differs with num_filters_2), W&B's keys
    as in the file; a key of `top` given None is left out."""
    sweep = {
        "program": "part_2_cifar.py",
        "method": "custom",
        "scheduler": {"engine": "optuna"},
        "metrics": OBJECTIVES,
        "parameters": TINY | space,
    } | top
    path.write_text(json.dumps({key: value for key, value in sweep.items() if value is not None}))
    return path


TINY = {
    "batch_size": {"value": 64},
    "num_filters_1": {"value": 8},
    "num_filters_2": {"values": [8, 16, 24]},
    "num_filters_3": {"value": 16},
    "learning_rate": {"min": 0.005, "max": 0.05},
    "epochs": {"value": 1},
}


def summaries(study: optuna.Study) -> dict[int, dict]:
    return {
        t.number: json.loads(Path(t.user_attrs["run_dir"], "summary.json").read_text())
        for t in study.trials
    }


def test_a_custom_sweep_with_one_metric_has_one_direction(tmp_path):
    sweep = local_sweep.load_sweep(
        write_custom(tmp_path / "one.json", {}, metrics=None, metric=OBJECTIVES[1])
    )
    assert sweep.objectives == (("flops_per_image", "minimize"),) and sweep.directions == [
        "minimize"
    ]


def test_a_multi_objective_sweep_finishes_exactly_n_trials_with_its_pareto_front(
    with_figures, offline, learnable_data_dir, capsys
):
    sweep, runs = write_custom(offline / "front.json", {}), offline / "runs"
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "5", "--wandb-mode", "disabled")
    assert local_sweep.main(args) == 0
    study = load_study(runs, "front")
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"] and len(study.trials) == 5
    assert isinstance(
        sweep_space.make_sampler(local_sweep.load_sweep(sweep)), optuna.samplers.TPESampler
    )
    for number, summary in summaries(
        study
    ).items():  # the objectives are the run's summary values, as in W&B
        assert study.trials[number].state.name == "COMPLETE"
        assert study.trials[number].values == [
            summary["best_val_accuracy"],
            summary["flops_per_image"],
        ]
    with open(runs / "front" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    front = {t.number for t in study.best_trials}  # Optuna's own front
    assert {int(r["number"]) for r in rows if r["pareto_front"] == "True"} == front
    # front first
    assert [r["pareto_front"] for r in rows] == sorted(
        (r["pareto_front"] for r in rows), reverse=True
    )
    assert (runs / "images" / "sweep_front_pareto.png").is_file()
    out = capsys.readouterr().out
    assert (
        f"Pareto front (best_val_accuracy maximize, flops_per_image minimize): {len(front)} of 5"
        in out
    )
    assert local_sweep.main(args) == 0
    assert len(load_study(runs, "front").trials) == 5  # the same command after the end does nothing


def test_sigkill_mid_trial_then_the_same_command_ends_with_exactly_n_trials_and_both_values(
    offline, learnable_data_dir, offline_env
):
    sweep, runs = write_custom(offline / "kill.json", {"epochs": {"value": 3}}), offline / "runs"
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "2", "--wandb-mode", "disabled")
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "local_sweep.py"), *args],
        cwd=offline,
        env=offline_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    in_trial_1, deadline = runs / "kill" / "trial-0001" / "last.pt", time.monotonic() + 240
    while not in_trial_1.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)  # mid-trial: epoch 1 of 3 is saved
    assert first.wait() == -signal.SIGKILL, first.stderr.read().decode()[-2000:]
    dead_history = run_files.load_checkpoint(in_trial_1, needs=("history",))["history"]

    assert local_sweep.main(args) == 0  # the same command continues the study
    study = load_study(runs, "kill")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    retry = study.trials[2]
    assert retry.system_attrs["failed_trial"] == 1 and retry.params == study.trials[1].params
    summary = json.loads(Path(retry.user_attrs["run_dir"], "summary.json").read_text())
    assert retry.values == [summary["best_val_accuracy"], summary["flops_per_image"]]
    # resumed
    assert summary["history"][: len(dead_history)] == dead_history and len(summary["history"]) == 3


@pytest.mark.parametrize(
    "change, words",
    [
        (
            {"early_terminate": {"type": "hyperband", "min_iter": 2}},
            "early_terminate cannot be used with scheduler",
        ),
        (
            {"metrics": [{"name": "val_accuracy", "goal": "maximize"}, OBJECTIVES[1]]},
            "use best_val_accuracy",
        ),
        (
            {"metrics": [{"name": "test_accuracy"}, OBJECTIVES[1]]},
            "test images are never chosen on",
        ),
        ({"metric": OBJECTIVES[0]}, "metric and metrics cannot both be set"),
        (
            {"method": "bayes", "scheduler": None},
            "metrics (several objectives) needs method custom",
        ),
        ({"scheduler": None}, "method custom needs a scheduler"),
        ({"scheduler": {"engine": "ax"}}, "scheduler.engine 'ax'"),
        (
            {"scheduler": {"engine": "optuna", "sampler": "nsga2"}},
            "scheduler.sampler is not a scheduler key",
        ),
        (
            {"scheduler": {"engine": "optuna", "optimizer": "make"}},
            "scheduler.optimizer needs scheduler.source",
        ),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_what_local_sweep_cannot_honour_in_a_custom_sweep_is_one_line_before_any_training(
    change, words, offline, learnable_data_dir, capsys
):
    sweep, runs = write_custom(offline / "bad.json", {}, **change), offline / "runs"
    assert local_sweep.main(sweep_args(sweep, learnable_data_dir, runs, "--trials", "2")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (runs / "bad").exists()


SOURCE = """
import optuna

def random_study(sweep):
    sampler = optuna.samplers.RandomSampler(seed=1)
    return optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)

def with_terminator(sweep):
    return random_study(sweep), lambda study: len(study.trials) > 3

def same_directions(sweep):
    return optuna.create_study(directions=["maximize", "maximize"])

def broken(sweep):
    raise RuntimeError("cannot reach the study database")

def filters(trial):
    return {"num_filters_2": trial.suggest_categorical("num_filters_2", [8, 24]),
            "learning_rate": 0.02, "epochs": 1, "batch_size": 64, "num_filters_1": 8,
            "num_filters_3": 16}

def unknown_key(trial):
    return {"filters": trial.suggest_int("filters", 1, 2)}

def val_size(trial):
    return {"val_size": trial.suggest_int("val_size", 100, 200), "epochs": 1}
"""


def scheduler(tmp_path: Path, **names: str) -> dict:
    source = tmp_path / "my_study.py"
    source.write_text(SOURCE)
    return {"engine": "optuna", "source": str(source), **names}


def test_scheduler_optimizer_gives_the_study_its_sampler_as_in_wandb(tmp_path):
    sweep = local_sweep.load_sweep(
        write_custom(
            tmp_path / "s.json", {}, scheduler=scheduler(tmp_path, optimizer="random_study")
        )
    )
    study = sweep_storage.open_study(
        sweep, "s", sweep_storage.open_storage(None, tmp_path / "runs")
    )
    # in this program's storage, under --study
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
    # not the factory's default MedianPruner: README
    assert isinstance(study.pruner, optuna.pruners.NopPruner)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]


def test_scheduler_search_space_defines_each_trials_config_as_in_wandb(offline, learnable_data_dir):
    sweep = write_custom(
        offline / "space.json",
        {},
        parameters=None,
        scheduler=scheduler(offline, search_space="filters"),
    )
    runs = offline / "runs"
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "3", "--wandb-mode", "disabled")
    assert local_sweep.main(args) == 0
    study = load_study(runs, "space")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    for t in study.trials:
        assert (
            set(t.params) == {"num_filters_2"} and t.user_attrs["config"]["learning_rate"] == 0.02
        )
        assert t.user_attrs["config"]["num_filters_2"] == t.params["num_filters_2"] in (8, 24)


@pytest.mark.parametrize(
    "names, words",
    [
        ({"optimizer": "with_terminator"}, "returns a terminator"),
        ({"optimizer": "same_directions"}, "do not match the sweep's metric goals"),
        ({"optimizer": "broken"}, "scheduler.optimizer 'broken'"),
        ({"optimizer": "absent"}, "has no attribute 'absent'"),
        ({"search_space": "unknown_key"}, "'filters', which is not a part_2_cifar.py setting"),
        ({"search_space": "val_size"}, "'val_size', which cannot be swept"),
    ],
    ids=lambda x: x if isinstance(x, str) else None,
)
def test_a_scheduler_function_local_sweep_cannot_run_is_one_line(
    names, words, offline, learnable_data_dir, capsys
):
    # the function defines them
    no_parameters = {"parameters": None} if "search_space" in names else {}
    sweep = write_custom(
        offline / "fn.json", {}, **no_parameters, scheduler=scheduler(offline, **names)
    )
    assert (
        local_sweep.main(sweep_args(sweep, learnable_data_dir, offline / "runs", "--trials", "2"))
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1 and words in err and f"scheduler.{next(iter(names))}" in err
    ), err
    assert not (offline / "runs").exists()  # refused before any study or journal record
