"""Model selection: the winners of a sweep retrained with new seeds, their statistics, the
accuracy/cost front."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import FAST_CONFIG, ROOT, copy_of, figures_drawn, process_env, quick_benchmark

import part_2_cifar as trainer
import select_model
from cifarkit.core import choice
from cifarkit.core.folders import SEEDS_MARKER
from cifarkit.sweeps import folders as sweep_folders

CPU = torch.device("cpu")


def select_command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "select_model.py"), *args]


# ------------------------------------------------------------------------------------------ numbers


def test_mean_std_and_interval_of_a_fixed_list_match_students_t():
    mean, std, ci = select_model.mean_std_ci([60.0, 62.0, 61.0, 63.0])
    assert mean == pytest.approx(61.5)
    # sample standard deviation: squares 2.25+0.25+0.25+2.25 over 3
    assert std == pytest.approx((5 / 3) ** 0.5)
    # t(0.975, 3 degrees of freedom) from any t table, times std / sqrt(4)
    half = 3.182446 * (5 / 3) ** 0.5 / 2
    assert ci == pytest.approx([61.5 - half, 61.5 + half], abs=1e-5)


def test_a_single_value_has_a_mean_but_no_spread():
    assert select_model.mean_std_ci([57.0]) == (57.0, None, None)


def test_the_front_keeps_each_config_nothing_beats_on_both_accuracy_and_cost():
    points = [(60.0, 80.0), (59.5, 20.0), (58.0, 30.0), (60.0, 90.0), (55.0, 5.0)]
    assert select_model.pareto_front(points) == [True, True, False, False, True]


def test_the_chosen_config_has_the_best_mean_and_a_tie_goes_to_the_cheaper_one():
    reports = [
        {"key": "big", "val_accuracy_mean": 61.0, "flops_per_image": 80e6},
        {"key": "small", "val_accuracy_mean": 61.0, "flops_per_image": 20e6},
        {"key": "lucky", "val_accuracy_mean": 59.0, "flops_per_image": 90e6},
    ]
    ranked = select_model.rank(reports)
    assert [r["key"] for r in ranked] == ["small", "big", "lucky"]
    assert [r["pareto"] for r in ranked] == [True, False, False]


# ----------------------------------------------------------------------------------------- the flow


def train_original(data_dir: Path, run_dir: Path, **overrides) -> dict:
    config = trainer.validate_config({**FAST_CONFIG, "val_size": 100, **overrides})
    return trainer.train(config, trainer.prepare_data(data_dir, 100, CPU), run_dir)


@pytest.fixture(scope="module")
def finished_runs(learnable_data_dir, tmp_path_factory) -> Path:
    """Three finished runs at different depths (a single run, two sweep trials) and one pruned
    trial."""
    runs = tmp_path_factory.mktemp("finished") / "runs"
    train_original(learnable_data_dir, runs / "single", epochs=3)
    train_original(learnable_data_dir, runs / "study" / "trial-0000", epochs=2, num_filters_3=16)
    train_original(learnable_data_dir, runs / "study" / "trial-0001", epochs=1, learning_rate=1e-4)
    pruned = runs / "study" / "trial-0002"
    pruned.mkdir(parents=True)
    (pruned / "summary.json").write_text(
        json.dumps({"status": "pruned", "best_val_accuracy": 99.0, "config": {}})
    )
    return runs


@pytest.fixture()
def two_sweeps_worth(finished_runs, tmp_path) -> Path:
    """A copy of finished_runs of the test's own."""
    return Path(shutil.copytree(finished_runs, tmp_path / "runs"))


def test_candidates_are_finished_runs_at_any_depth_best_first(two_sweeps_worth):
    found = select_model.find_candidates(two_sweeps_worth, None)
    names = [[run.name for run in c.runs] for c in found]
    assert sorted(sum(names, [])) == [
        "single",
        "trial-0000",
        "trial-0001",
    ]  # the pruned trial is not a result
    assert [c.single_run_val_accuracy for c in found] == sorted(
        (c.single_run_val_accuracy for c in found), reverse=True
    )


def test_new_seeds_avoid_every_seed_the_config_already_used(two_sweeps_worth):
    (candidate, *_) = select_model.find_candidates(two_sweeps_worth, None)
    planned = select_model.planned_runs(candidate, 3)
    assert [config["seed"] for _, config in planned] == [1, 2, 3]  # the original used seed 0
    assert all(config | {"seed": 0} == candidate.config for _, config in planned)


def wait_for(path_glob: str, root: Path, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not list(root.glob(path_glob)):
        assert process.poll() is None and time.monotonic() < deadline, "the file never appeared"
        time.sleep(0.05)


TINY_SWEEP = {
    "program": "part_2_cifar.py",
    "method": "random",
    "metric": {"name": "val_accuracy", "goal": "maximize"},
    "parameters": {
        "num_filters_1": {"value": 8},
        "num_filters_2": {"values": [8, 16]},
        "num_filters_3": {"values": [16, 32]},
        "batch_size": {"value": 64},
        "learning_rate": {"min": 0.01, "max": 0.05},
        "epochs": {"value": 2},
    },
}


@pytest.fixture(scope="module")
def swept_then_selected(learnable_data_dir, tmp_path_factory) -> SimpleNamespace:
    """The README's flow up to the choice: a local sweep of TINY_SWEEP, 3 trials (in this process),
    then `select_model.py --top 2 --seeds 1` as a process, W&B offline, killed with its trainer as
    the first new seed's summary appears, and the same command again to its end. Built once for the
    two tests below (next to each other, so that one test worker runs both), which read it or copy
    it: (work folder, runs, the seed finished before the kill, its summary's bytes then, the second
    command's CompletedProcess)."""
    import local_sweep

    work = tmp_path_factory.mktemp("swept_then_selected")
    sweep, runs = work / "tiny.json", work / "runs"
    sweep.write_text(json.dumps(TINY_SWEEP))
    assert (
        local_sweep.main(
            [
                str(sweep),
                "--trials",
                "3",
                "--data-dir",
                str(learnable_data_dir),
                "--runs-dir",
                str(runs),
                "--val-size",
                "100",
                "--images-dir",
                str(work / "images"),
                "--wandb-mode",
                "disabled",
            ]
        )
        == 0
    )

    with figures_drawn():  # the selection's plot, which a test below looks at
        env = process_env(work)
    args = [
        str(runs),
        "--top",
        "2",
        "--seeds",
        "1",
        "--data-dir",
        str(learnable_data_dir),
        "--wandb-mode",
        "offline",
        "--images-dir",
        str(work / "images"),
    ]
    process = subprocess.Popen(
        select_command(*args),
        env=env,
        cwd=work,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for("selection/*/summary.json", runs, process)
    # the launcher and its trainer, as a machine's death would
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    (finished,) = [p.parent for p in runs.glob("selection/*/summary.json")]
    before = (finished / "summary.json").read_bytes()
    again = subprocess.run(
        select_command(*args), env=env, cwd=work, capture_output=True, text=True, timeout=300
    )
    return SimpleNamespace(work=work, runs=runs, finished=finished, before=before, again=again)


def test_a_killed_selection_resumes_without_retraining_finished_seeds(swept_then_selected):
    runs, work, finished, again = (
        swept_then_selected.runs,
        swept_then_selected.work,
        swept_then_selected.finished,
        swept_then_selected.again,
    )
    assert again.returncode == 0, again.stderr
    assert "1 trainings to run, 1 already finished" in again.stdout
    assert (
        finished / "summary.json"
    ).read_bytes() == swept_then_selected.before  # never trained twice
    selection = json.loads((runs / "selection.json").read_text())
    assert [c["seeds"] for c in selection["configs"]] == [
        2,
        2,
    ]  # the original plus one new seed each
    for config in selection["configs"]:
        for key in (
            "config",
            "runs",
            "val_accuracy_mean",
            "val_accuracy_std",
            "val_accuracy_ci95",
            "single_run_val_accuracy",
            "test_accuracy_mean",
            "flops_per_image",
            "latency_ms",
            "pareto",
        ):
            assert config[key] is not None, key
        low, high = config["val_accuracy_ci95"]
        assert low <= config["val_accuracy_mean"] <= high
    best = selection["configs"][0]
    assert selection["best"] in best["runs"] and (runs / selection["best"] / "best.pt").is_file()
    assert (work / "images" / "selection_runs.png").is_file()
    for run_id in (
        Path(run).name
        for c in selection["configs"]
        for run in c["runs"]
        if run.startswith("selection")
    ):
        # each seed is a W&B run
        assert list((work / "wandb").glob(f"offline-run-*-{run_id}")), run_id
    # The seed trained by the second command ended cleanly: its W&B run is in the selection's group.
    # (The first was killed as its summary appeared, maybe before wandb wrote its buffer: its run
    # folder is what counts.)
    (second,) = [p for p in runs.glob("selection/*") if p.is_dir() and p != finished]
    assert any(
        b"selection-runs" in f.read_bytes()
        for f in (work / "wandb").glob(f"*-{second.name}/*.wandb")
    )


def test_a_sweep_then_selection_then_export_of_what_was_chosen(
    swept_then_selected, learnable_data_dir, tmp_path, capsys
):
    import trt_export

    # the selection ended
    assert swept_then_selected.again.returncode == 0, swept_then_selected.again.stderr
    runs = copy_of(swept_then_selected.runs, tmp_path / "runs")  # the exports write beside the runs
    assert len(list(runs.glob("tiny/trial-*/summary.json"))) == 3
    selection = json.loads((runs / "selection.json").read_text())
    export = [
        "--runs-dir",
        str(runs),
        "--data-dir",
        str(learnable_data_dir),
        "--batch-sizes",
        "1,4",
        "--accuracy-images",
        "20",
        *quick_benchmark(),
        "--plot",
        str(tmp_path / "images" / "export.png"),
        "--precision",
        "fp32",
    ]  # which checkpoint is chosen is the point: one ONNX export, not two
    capsys.readouterr()
    assert trt_export.main(["--checkpoint", "best", "--out", str(tmp_path / "best"), *export]) == 0
    assert (
        f"exporting checkpoint {runs / selection['best'] / 'best.pt'} " in capsys.readouterr().out
    )

    cheapest_front = min(
        (c for c in selection["configs"] if c["pareto"]), key=lambda c: c["flops_per_image"]
    )
    seed = choice.best_seed(cheapest_front, runs)
    assert (
        trt_export.main(
            ["--checkpoint", "best", "--within", "100", "--out", str(tmp_path / "cheap"), *export]
        )
        == 0
    )
    assert f"exporting checkpoint {runs / seed / 'best.pt'} " in capsys.readouterr().out


def test_no_finished_run_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    # in this process; as one: test_exit_codes.py
    assert select_model.main([str(tmp_path / "runs")]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: no finished run")
    assert len(stderr.strip().splitlines()) == 1


def test_a_multi_objective_sweeps_front_is_confirmed_then_exported_within_points(
    learnable_data_dir, tmp_path, monkeypatch, capsys
):
    """sweep_deploy.json's form offline, then `select_model.py --front` and `trt_export.py
    --within`: the README's deploy path, on tiny models whose flops_per_image differ."""
    import csv

    import local_sweep
    import trt_export

    monkeypatch.setenv("WANDB_MODE", "disabled")
    sweep = tmp_path / "deploy.json"
    sweep.write_text(
        json.dumps(
            {
                "program": "part_2_cifar.py",
                "method": "custom",
                "scheduler": {"engine": "optuna"},
                "metrics": [
                    {"name": "best_val_accuracy", "goal": "maximize"},
                    {"name": "flops_per_image", "goal": "minimize"},
                ],
                "parameters": {
                    "num_filters_1": {"value": 8},
                    "num_filters_2": {"values": [4, 8, 16]},
                    "num_filters_3": {"values": [16, 32]},
                    "batch_size": {"value": 64},
                    "learning_rate": {"min": 0.01, "max": 0.05},
                    "epochs": {"value": 2},
                },
            }
        )
    )
    runs = tmp_path / "runs"
    assert (
        local_sweep.main(
            [
                str(sweep),
                "--trials",
                "4",
                "--data-dir",
                str(learnable_data_dir),
                "--runs-dir",
                str(runs),
                "--val-size",
                "100",
                "--images-dir",
                str(tmp_path / "images"),
            ]
        )
        == 0
    )
    with open(runs / "deploy" / "trials.csv") as f:
        front = [
            json.loads(Path(row["run_dir"], "summary.json").read_text())["config"]
            for row in csv.DictReader(f)
            if row["pareto_front"] == "True"
        ]

    monkeypatch.chdir(tmp_path)
    assert (
        select_model.main(
            [
                str(runs / "deploy"),
                "--front",
                "--seeds",
                "1",
                "--data-dir",
                str(learnable_data_dir),
                "--images-dir",
                str(tmp_path / "images"),
            ]
        )
        == 0
    )
    selection = json.loads((runs / "deploy" / "selection.json").read_text())
    assert sorted(c["key"] for c in selection["configs"]) == sorted(
        {select_model.config_key(c) for c in front}
    )
    assert all(c["seeds"] >= 2 for c in selection["configs"])  # each confirmed with a new seed

    cheapest = min(
        (c for c in selection["configs"] if c["pareto"]), key=lambda c: c["flops_per_image"]
    )
    capsys.readouterr()
    # the checkpoint chosen is the point: one ONNX export
    assert (
        trt_export.main(
            [
                "--checkpoint",
                "best",
                "--within",
                "100",
                "--runs-dir",
                str(runs),
                "--data-dir",
                str(learnable_data_dir),
                "--batch-sizes",
                "1,4",
                "--accuracy-images",
                "20",
                *quick_benchmark(),
                "--out",
                str(tmp_path / "cheap"),
                "--plot",
                str(tmp_path / "images" / "export.png"),
                "--precision",
                "fp32",
            ]
        )
        == 0
    )
    # the cheapest of the confirmed front, its best seed
    seed = choice.best_seed(cheapest, runs / "deploy")
    assert f"exporting checkpoint {runs / 'deploy' / seed / 'best.pt'} " in capsys.readouterr().out


# --------------------------------------------------------------------------------- whose folder
#
# RUNS/selection is where select_model.py keeps its seeds (SEEDS_MARKER says so), but a study named
# `selection` (sweep file selection.json, --study selection) or a run with that id has the same
# folder name: whose a folder is goes by what it holds.


@pytest.mark.parametrize("other", ["study", "run"])
def test_a_study_or_run_named_selection_is_a_candidate_and_keeps_its_folder(
    other, finished_runs, learnable_data_dir, tmp_path
):
    runs = tmp_path / "runs"
    if other == "study":  # its trial, in the folder the study marked as its own
        trial_dir = sweep_folders.study_folder(runs, "selection", "uid1") / "trial-0001"
    else:  # a run with WANDB_RUN_ID=selection
        trial_dir = runs / "selection"
    shutil.copytree(finished_runs / "study" / "trial-0001", trial_dir)  # one epoch
    before = sorted(p.name for p in (runs / "selection").iterdir())
    code = select_model.main(
        [str(runs), "--seeds", "1", "--data-dir", str(learnable_data_dir), "--val-size", "100"]
        + ["--wandb-mode", "disabled", "--images-dir", str(tmp_path / "images")]
    )
    assert code == 0
    (chosen,) = json.loads((runs / "selection.json").read_text())["configs"]
    (seed,) = (runs / ".selection").glob("*-seed1")  # the seeds went beside it, in their own
    # the only candidate: found, not excluded, with its new seed
    assert chosen["runs"] == [str(trial_dir.relative_to(runs)), f".selection/{seed.name}"]
    assert json.loads((seed / "summary.json").read_text())["status"] == "finished"
    assert (runs / ".selection" / SEEDS_MARKER).is_file()
    assert sorted(p.name for p in (runs / "selection").iterdir()) == before  # untouched


def test_a_study_named_selection_never_takes_the_selections_seeds_folder(two_sweeps_worth):
    seeds = two_sweeps_worth / "selection"
    seeds.mkdir()
    (seeds / SEEDS_MARKER).write_text('{"owner": "select_model.py"}\n')
    assert select_model.seeds_folder(two_sweeps_worth) == seeds  # its own, by its marker
    study_dir = sweep_folders.study_folder(two_sweeps_worth, "selection", "uid1")
    assert study_dir == two_sweeps_worth / "selection-uid1"
    assert sorted(p.name for p in seeds.iterdir()) == [SEEDS_MARKER]
    # the report finds it again
    assert sweep_folders.study_folder(two_sweeps_worth, "selection", "uid1", claim=False) == (
        study_dir
    )


def test_seeds_of_a_selection_before_its_marker_are_still_no_candidates(two_sweeps_worth):
    # RUNS/selection written by an earlier version: seed folders, no marker
    shutil.copytree(two_sweeps_worth / "single", two_sweeps_worth / "selection" / "abc-seed1")
    names = [
        run.name for c in select_model.find_candidates(two_sweeps_worth, None) for run in c.runs
    ]
    assert "abc-seed1" not in names and "single" in names
    assert select_model.seeds_folder(two_sweeps_worth) == two_sweeps_worth / "selection"
