"""One data set per choice: select_model.py, trt_export.py --checkpoint best and a local sweep's
study compare only runs trained on the same images and validation split (the data identity every
summary.json records); runs of other data are left out with one line, a choice across data sets is
refused with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import FAST_CONFIG

import local_sweep
import part_2_cifar as trainer
import select_model
import trt_export
from cifarkit.core import choice, cli, run_files
from synthetic_cifar100 import write_synthetic_cifar100

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def real_images(tmp_path_factory) -> Path:
    """Stands for CIFAR-100 beside the synthetic stand-in: the same layout, other images."""
    root = tmp_path_factory.mktemp("real")
    write_synthetic_cifar100(root, train_per_class=10, test_per_class=3, seed=11)
    return root


@pytest.fixture(scope="module")
def mixed_runs(tiny_data_dir, real_images, tmp_path_factory) -> Path:
    """runs/ holding one finished run on the synthetic data and one on the real images, trained by
    the trainer's own train() (1 epoch): the synthetic one scored higher, hand-set to 100 vs 83."""
    runs = tmp_path_factory.mktemp("mixed") / "runs"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, data_dir, accuracy in (
            ("synthetic", tiny_data_dir, 100.0),
            ("real", real_images, 83.0),
        ):
            config = trainer.validate_config(
                {
                    **FAST_CONFIG,
                    "epochs": 1,
                    "val_size": 200,
                    "num_filters_3": 16 if name == "real" else 32,
                }
            )
            trainer.train(config, trainer.prepare_data(data_dir, 200, CPU), runs / name)
            summary = run_files.read_summary(runs / name)
            cli.write_json_atomic(
                summary | {"best_val_accuracy": accuracy}, runs / name / run_files.SUMMARY_FILE
            )
    finally:
        torch.set_num_threads(threads)
    return runs


def own_copy(runs: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(runs, tmp_path / "runs"))


def identity(data_dir: Path, val_size: int | None = None) -> dict:
    return select_model.data_of(data_dir, val_size)


def test_selection_compares_the_runs_of_data_dirs_data_and_names_those_left_out(
    mixed_runs, real_images, capsys
):
    (candidate,) = select_model.find_candidates(mixed_runs, identity(real_images))
    assert [run.name for run in candidate.runs] == ["real"]
    assert candidate.single_run_val_accuracy == 83.0  # not (100 + 83) / 2, nor the synthetic 100
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith(
        f"note: 1 of 2 runs under {mixed_runs} were trained on other data than "
        f"{real_images.resolve()} (train "
    )
    assert line.endswith(
        "and are left out: 1 on "
        + run_files.data_label(run_files.read_summary(mixed_runs / "synthetic")["data"])
    )


def test_selection_without_a_reference_refuses_to_pool_two_data_sets(mixed_runs):
    with pytest.raises(
        run_files.CheckpointError,
        match=r"trained on several data sets \(1 on .*, "
        r"1 on .*\): val_accuracy on other images",
    ):
        select_model.find_candidates(mixed_runs, None)


def test_selection_refuses_runs_of_one_images_in_two_splits_and_names_them(
    mixed_runs, real_images, tmp_path, capsys
):
    runs = own_copy(mixed_runs, tmp_path)
    summary = run_files.read_summary(runs / "real")
    other_split = runs / "real-val100"
    shutil.copytree(runs / "real", other_split)
    cli.write_json_atomic(
        summary
        | {
            "data": summary["data"] | {"val_size": 100},
            "config": summary["config"] | {"val_size": 100},
        },
        other_split / run_files.SUMMARY_FILE,
    )
    args = [
        str(runs),
        "--data-dir",
        str(real_images),
        "--wandb-mode",
        "disabled",
        "--images-dir",
        str(tmp_path / "images"),
    ]
    assert select_model.main(args) == 2  # before any seed is trained
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "were trained on several data sets (1 on" in line and "val_size 100)" in line
    assert "val_size 200)" in line
    assert line.endswith("pass --val-size N to compare the runs of one split")
    assert not list((runs / "selection").glob("*-seed*"))


def test_selection_refuses_seeds_an_earlier_selection_trained_on_other_data(
    mixed_runs, real_images, tmp_path, capsys
):
    runs = own_copy(mixed_runs, tmp_path)
    shutil.rmtree(runs / "synthetic")
    (candidate,) = select_model.find_candidates(runs, identity(real_images))
    ((run_id, _),) = select_model.planned_runs(candidate, 1)
    seed = runs / "selection" / run_id
    seed.mkdir(parents=True)  # a seed `select_model.py --data-dir SYNTHETIC` trained
    synthetic = run_files.read_summary(mixed_runs / "synthetic")
    (seed / run_files.SUMMARY_FILE).write_text(json.dumps(synthetic))
    assert (
        select_model.main(
            [
                str(runs),
                "--seeds",
                "1",
                "--data-dir",
                str(real_images),
                "--wandb-mode",
                "disabled",
                "--images-dir",
                str(tmp_path / "img"),
            ]
        )
        == 2
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    selection = runs / "selection"
    assert line.startswith(f"error: {selection} holds 1 seeds trained on other data (1 on ")
    assert not (runs / choice.SELECTION_FILE).exists()


def test_export_best_takes_the_best_run_of_data_dirs_data(
    mixed_runs, tiny_data_dir, real_images, capsys
):
    chosen = choice.choose_checkpoint("best", mixed_runs, data=lambda: identity(real_images))
    assert chosen == mixed_runs / "real" / run_files.BEST_CHECKPOINT  # not the synthetic 100%
    out = capsys.readouterr().out
    assert "note: 1 of 2 runs under" in out and "and are left out: 1 on" in out
    chosen = choice.choose_checkpoint("best", mixed_runs, data=lambda: identity(tiny_data_dir))
    assert chosen == mixed_runs / "synthetic" / run_files.BEST_CHECKPOINT


def test_export_best_with_no_run_of_data_dirs_data_is_one_line_and_exit_2(
    mixed_runs, real_images, tmp_path, capsys
):
    runs = own_copy(mixed_runs, tmp_path)
    shutil.rmtree(runs / "real")
    assert (
        trt_export.main(
            [
                "--checkpoint",
                "best",
                "--runs-dir",
                str(runs),
                "--data-dir",
                str(real_images),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: no run in {runs} trained on {real_images.resolve()} (train ")
    assert not (runs / "synthetic" / "export").exists()


def test_export_refuses_a_selection_made_on_other_data(
    mixed_runs, tiny_data_dir, real_images, tmp_path
):
    runs = own_copy(mixed_runs, tmp_path)
    report = {
        "runs": ["synthetic"],
        "val_accuracy_mean": 100.0,
        "flops_per_image": 1.0,
        "pareto": True,
    }
    (runs / choice.SELECTION_FILE).write_text(
        json.dumps({"configs": [report], "best": "synthetic"})
    )
    for within in (None, 1.0):
        with pytest.raises(
            run_files.CheckpointError,
            match=r"chose .*synthetic, trained on .*, not on .*: pass --data-dir",
        ):
            choice.choose_checkpoint("best", runs, within, data=lambda: identity(real_images))
    chosen = choice.choose_checkpoint("best", runs, data=lambda: identity(tiny_data_dir))
    assert chosen == runs / "synthetic" / run_files.BEST_CHECKPOINT


def test_a_sweep_process_with_other_data_is_refused_by_the_study(
    tiny_data_dir, real_images, tmp_path, offline, capsys
):
    sweep = tmp_path / "one.json"
    sweep.write_text(
        json.dumps(
            {
                "program": "part_2_cifar.py",
                "method": "random",
                "metric": {"name": "val_accuracy", "goal": "maximize"},
                "parameters": {
                    "learning_rate": {"min": 0.001, "max": 0.05},
                    "epochs": {"value": 1},
                    "batch_size": {"value": 64},
                    "num_filters_1": {"value": 8},
                    "num_filters_2": {"value": 8},
                    "num_filters_3": {"value": 16},
                },
            }
        )
    )
    args = [
        str(sweep),
        "--runs-dir",
        str(tmp_path / "runs"),
        "--val-size",
        "200",
        "--wandb-mode",
        "disabled",
        "--images-dir",
        str(tmp_path / "images"),
    ]
    assert local_sweep.main([*args, "--trials", "1", "--data-dir", str(tiny_data_dir)]) == 0
    capsys.readouterr()
    assert local_sweep.main([*args, "--trials", "2", "--data-dir", str(real_images)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: study 'one' trains on {tiny_data_dir.resolve()}")
    assert f"not on {real_images.resolve()}" in line
    assert "pass its --data-dir and --val-size" in line
