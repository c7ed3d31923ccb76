"""Divergence and checkpoints: non-finite values end a run as diverged and are never kept; a
checkpoint records the data it trained on and a resume on other data is refused; checkpoints of
PyTorch's wrappers and of other tools load or are refused in one line, exit 2, from the trainer,
trt_export.py and select_model.py alike.

The commands run in this process (their main(), which a process exits with): what is checked here
is what they do with a checkpoint. Each command as a real process, and its exit codes, is
tests/test_exit_codes.py's; model selection runs as a process, and starts each of its trainings as
one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST_CONFIG, ROOT
from test_reliability import fast_args, one_line_error

import part_2_cifar as trainer
import select_model
import trt_export
from cifarkit.core import choice, folders, run_files
from synthetic_cifar100 import write_synthetic_cifar100

CPU = torch.device("cpu")
SMALL = {
    "num_filters_1": 8,
    "num_filters_2": 16,
    "num_filters_3": 32,
    "val_size": 200,
}  # fits the tiny data


class Ran:
    """A command's exit code and what it printed, as a process's would be read."""

    def __init__(self, command, args: list[str], capsys) -> None:
        capsys.readouterr()
        self.returncode = command.main(args)
        self.stdout, self.stderr = capsys.readouterr()


def train(args: list[str], capsys) -> Ran:
    """part_2_cifar.py with `args`, in this process."""
    return Ran(trainer, args, capsys)


def export(checkpoint: Path, data_dir: Path, capsys) -> Ran:
    """trt_export.py on `checkpoint`, in this process; the checkpoint is refused before any export
    work starts."""
    return Ran(
        trt_export,
        ["--checkpoint", str(checkpoint), "--data-dir", str(data_dir), "--device", "cpu"],
        capsys,
    )


def all_finite(checkpoint: dict) -> bool:
    return all(
        torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point()
    )


def sparse(weights: dict) -> dict:
    return {name: t.to_sparse() if t.dim() == 2 else t for name, t in weights.items()}


def on_meta(weights: dict) -> dict:
    return {name: t.to("meta") for name, t in weights.items()}


def small_checkpoint(path: Path, **extra) -> dict:
    """A best.pt of an untrained small SimpleCNN, written as the trainer writes it."""
    torch.manual_seed(0)
    model = trainer.model_from_config({**trainer.DEFAULTS, **SMALL})
    checkpoint = {
        "model": model.state_dict(),
        "config": {**trainer.DEFAULTS, **SMALL},
        "epoch": 1,
        "val_accuracy": 1.0,
        **extra,
    }
    run_files.save_atomic(checkpoint, path)
    return checkpoint


@pytest.fixture(scope="module")
def other_data_dir(tmp_path_factory) -> Path:
    """The tiny layout again with other images: the same shapes and sizes, different data."""
    root = tmp_path_factory.mktemp("other_cifar")
    write_synthetic_cifar100(root, train_per_class=10, test_per_class=3, seed=7)
    return root


# --------------------------------------------------------------------------------------------------
# Non-finite is diverged


# NaN in training / in validation
@pytest.mark.parametrize("learning_rate, batch_size", [(1e6, 64), (1e3, 256)])
def test_a_run_diverging_in_its_first_epoch_keeps_nothing_and_says_no_epoch_finished(
    learning_rate, batch_size, tiny_data_dir, tmp_path, capsys
):
    args = fast_args(
        tiny_data_dir,
        tmp_path / "runs",
        learning_rate=learning_rate,
        batch_size=batch_size,
        warmup_epochs=0,
        epochs=3,
    )
    result = train(args, capsys)
    assert result.returncode == 0, result.stderr
    assert "stopping (diverged)" in result.stdout
    done = result.stdout.strip().splitlines()[-1]
    assert (
        done.startswith("done: diverged before any epoch finished")
        and "nan" not in done
        and "0.00%" not in done
    )
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (
        summary["status"] == "diverged"
        and summary["epochs_completed"] == 0
        and summary["history"] == []
    )
    assert summary["best_val_accuracy"] is None and "test_accuracy" not in summary
    assert not (run_dir / "best.pt").exists() and not (run_dir / "last.pt").exists()


def poison_nan_weight(model: torch.nn.Module) -> None:
    model.conv1.weight.data[0, 0, 0, 0] = float("nan")  # NaN logits, NaN validation loss


def poison_running_variance(model: torch.nn.Module) -> None:
    # x / sqrt(inf) = 0: validation stays finite, the weights do not
    model.bn3.running_var[0] = float("inf")


@pytest.mark.parametrize("poison", [poison_nan_weight, poison_running_variance])
def test_an_epoch_that_ends_with_non_finite_weights_is_not_kept(
    poison, monkeypatch, tiny_data_dir, tmp_path
):
    real_train_epoch = trainer.train_epoch

    # epoch 2's training ends with a non-finite value in the model
    def train_epoch(model, *args, **kwargs):
        metrics = real_train_epoch(model, *args, **kwargs)
        if args[3] == 2:
            with torch.no_grad():
                poison(model)
        return metrics

    monkeypatch.setattr(trainer, "train_epoch", train_epoch)
    config = trainer.validate_config({**FAST_CONFIG, "epochs": 3, "val_size": 200})
    summary = trainer.train(config, trainer.prepare_data(tiny_data_dir, 200, CPU), tmp_path / "run")
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 1
    assert [m["epoch"] for m in summary["history"]] == [1] and np.isfinite(summary["test_accuracy"])
    best = run_files.load_checkpoint(tmp_path / "run" / "best.pt")
    last = run_files.load_checkpoint(tmp_path / "run" / "last.pt", needs=run_files.RESUME_KEYS)
    assert best["epoch"] == last["epoch"] == 1 and all_finite(best) and all_finite(last)


def test_validation_counts_the_non_finite_logits_a_finite_loss_hides(tiny_data_dir):
    data = trainer.prepare_data(tiny_data_dir, 200, CPU)
    model = trainer.model_from_config({**trainer.DEFAULTS, **SMALL})
    # a class no validation image of the first 100 has: its -inf logit leaves every loss finite
    absent = 99
    keep = data.val_labels != absent
    with torch.no_grad():
        model.fc3.bias[absent] = -float("inf")
    val = trainer.evaluate(model, data.val_images[keep], data.val_labels[keep], None)
    assert np.isfinite(val["loss"]) and val["nonfinite_logits"] == int(keep.sum())
    assert (
        trainer.divergence(1.0, val, model)
        == f"{int(keep.sum())} validation logits are NaN or infinite"
    )


def test_export_refuses_a_checkpoint_with_non_finite_weights_in_one_line(
    tiny_data_dir, tmp_path, capsys
):
    checkpoint = small_checkpoint(tmp_path / "best.pt")
    checkpoint["model"]["fc2.bias"][3] = float("inf")
    torch.save(checkpoint, tmp_path / "best.pt")
    result = export(tmp_path / "best.pt", tiny_data_dir, capsys)
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert (
        "best.pt holds non-finite weights (NaN or inf in fc2.bias)" in line and "diverged" in line
    )
    assert not (tmp_path / "export").exists()


# --------------------------------------------------------------------------------------------------
# A checkpoint knows its data


def test_checkpoints_and_summary_record_the_data_they_trained_on(
    finished_run, tiny_data_dir, other_data_dir, tmp_path
):
    data = trainer.prepare_data(tiny_data_dir, 200, CPU)  # what finished_run trained on
    recorded = [
        run_files.load_checkpoint(finished_run / name)["data"] for name in ("best.pt", "last.pt")
    ]
    recorded.append(json.loads((finished_run / "summary.json").read_text())["data"])
    assert recorded[0] == recorded[1] == recorded[2] == data.identity
    assert data.identity["source"] == str(data.source.path) and data.identity["val_size"] == 200
    assert data.identity["train_images"] == 1000 and data.identity["test_images"] == 300
    shutil.copytree(tiny_data_dir, tmp_path / "copy")
    same = trainer.prepare_data(tmp_path / "copy", 200, CPU).identity
    assert run_files.same_data(data.identity, same) and same["source"] != data.identity["source"]
    assert not run_files.same_data(
        data.identity, trainer.prepare_data(other_data_dir, 200, CPU).identity
    )
    assert not run_files.same_data(
        data.identity, trainer.prepare_data(tiny_data_dir, 300, CPU).identity
    )


def test_resume_on_other_data_is_refused_naming_both(
    crashed_run, tiny_data_dir, other_data_dir, tmp_path, capsys
):
    run_dir = crashed_run
    before = (run_dir / "last.pt").read_bytes()
    args = fast_args(other_data_dir, tmp_path / "runs") + ["--resume", str(run_dir)]
    result = train(args, capsys)
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "last.pt was trained on other data" in line
    assert str(tiny_data_dir.resolve()) in line and str(other_data_dir.resolve()) in line
    assert (run_dir / "last.pt").read_bytes() == before and not (run_dir / "summary.json").exists()


def test_resume_on_a_copy_of_the_same_data_continues(crashed_run, tiny_data_dir, tmp_path, capsys):
    run_dir = crashed_run
    shutil.copytree(tiny_data_dir, tmp_path / "moved")
    result = train(
        [*fast_args(tmp_path / "moved", tmp_path / "runs"), "--resume", str(run_dir)], capsys
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and [m["epoch"] for m in summary["history"]] == [1, 2]


def test_resume_from_last_pt_without_best_pt_is_refused_before_any_work_and_goes_on_once_copied(
    crashed_run, tiny_data_dir, tmp_path, capsys
):
    crashed = crashed_run
    moved = tmp_path / "other-machine" / "crashed"  # the user copied last.pt alone
    moved.mkdir(parents=True)
    shutil.copy2(crashed / "last.pt", moved / "last.pt")
    args = [*fast_args(tiny_data_dir, tmp_path / "other-machine"), "--resume", str(moved)]
    result = train(args, capsys)
    assert result.returncode == 2
    assert one_line_error(result.stderr) == (
        f"error: cannot resume: {moved} has last.pt but no best.pt (epoch 1's "
        "weights, the best so far): copy the whole run folder"
    )
    written = sorted(p.name for p in moved.iterdir())
    assert written == ["last.pt", folders.OWNER_LOCK]  # nothing trained, only the hold taken
    shutil.copy2(crashed / "best.pt", moved / "best.pt")
    again = train(args, capsys)
    assert again.returncode == 0, again.stderr
    assert json.loads((moved / "summary.json").read_text())["status"] == "finished"


def test_resuming_a_finished_run_changes_nothing_it_wrote(
    finished_run, tiny_data_dir, other_data_dir, tmp_path, capsys
):
    run_dir = finished_run

    def files() -> dict:  # but owner.lock, which names each process that held the folder
        return {
            p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in run_dir.iterdir()
            if p.name != folders.OWNER_LOCK
        }

    written = files()
    for data_dir in (other_data_dir, tiny_data_dir):
        again = train(
            [*fast_args(data_dir, tmp_path / "runs", epochs=1), "--resume", str(run_dir)], capsys
        )
        assert again.returncode == 0, again.stderr
        assert f"{run_dir} is complete (finished after epoch 1): nothing to resume" in again.stdout
        assert files() == written


def test_a_last_pt_from_before_data_was_recorded_resumes_with_a_note(
    crashed_run, tiny_data_dir, tmp_path, capsys
):
    run_dir = crashed_run
    old = torch.load(run_dir / "last.pt", weights_only=True)
    del old["data"]
    torch.save(old, run_dir / "last.pt")
    result = train([*fast_args(tiny_data_dir, tmp_path / "runs"), "--resume", str(run_dir)], capsys)
    assert result.returncode == 0, result.stderr
    assert f"note: {run_dir / 'last.pt'} does not record its data" in result.stdout
    assert run_files.load_checkpoint(run_dir / "last.pt")["data"][
        "train_sha256"
    ]  # recorded from now on


# --------------------------------------------------------------------------------------------------
# Foreign checkpoints


def wrapped(name: str, model: torch.nn.Module) -> torch.nn.Module:
    if name == "DataParallel":
        # on a machine without GPUs it only wraps: names get "module."
        return torch.nn.DataParallel(model)
    if name == "torch.compile":
        # compiles at the first call; the names get "_orig_mod." already
        return torch.compile(model)
    if name == "AveragedModel":
        return torch.optim.swa_utils.AveragedModel(model)  # "module." and an n_averaged counter
    return torch.nn.DataParallel(torch.compile(model))


@pytest.mark.parametrize(
    "wrapper", ["DataParallel", "torch.compile", "AveragedModel", "DataParallel of compile"]
)
def test_a_checkpoint_saved_from_pytorchs_wrappers_loads_to_the_same_model(wrapper, tmp_path):
    torch.manual_seed(0)
    model = trainer.model_from_config({**trainer.DEFAULTS, **SMALL}).eval()
    state = wrapped(wrapper, model).state_dict()
    # the wrapper did rename the parameters
    assert not any(key.startswith("conv1.") for key in state)
    torch.save({"model": state, "config": {**trainer.DEFAULTS, **SMALL}}, tmp_path / "best.pt")
    loaded, _ = trt_export.load_model(tmp_path / "best.pt")
    x = torch.randn(4, 3, 32, 32)
    with torch.inference_mode():
        assert torch.equal(loaded(x), model(x))


def test_resume_from_a_last_pt_of_a_data_parallel_model_continues(
    crashed_run, tiny_data_dir, tmp_path, capsys
):
    run_dir = crashed_run
    last = torch.load(run_dir / "last.pt", weights_only=True)
    last["model"] = {f"module.{key}": value for key, value in last["model"].items()}
    torch.save(last, run_dir / "last.pt")
    result = train([*fast_args(tiny_data_dir, tmp_path / "runs"), "--resume", str(run_dir)], capsys)
    assert result.returncode == 0, result.stderr
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"


def other_models_weights(checkpoint: dict) -> dict:
    """Names another model would use for the same tensors (torchvision style), one of them
    reshaped."""
    weights = {
        key.replace("conv1.", "features.0."): value for key, value in checkpoint["model"].items()
    }
    weights["fc3.weight"] = torch.zeros(10, 256)
    return weights


def test_a_checkpoint_of_another_model_names_the_first_missing_and_unexpected_keys_and_shapes(
    tmp_path,
):
    checkpoint = small_checkpoint(tmp_path / "best.pt")
    torch.save({**checkpoint, "model": other_models_weights(checkpoint)}, tmp_path / "best.pt")
    with pytest.raises(run_files.CheckpointError) as refused:
        trt_export.load_model(tmp_path / "best.pt")
    line = str(refused.value)
    assert "\n" not in line and line.startswith(
        f"{tmp_path / 'best.pt'} does not fit the SimpleCNN"
    )
    assert "missing conv1.weight [8, 3, 3, 3] (and 1 more)" in line
    assert "unexpected features.0.weight [8, 3, 3, 3] (and 1 more)" in line
    assert "fc3.weight is [10, 256] in the file, [100, 256] in the model" in line


@pytest.mark.parametrize("tool", ["trainer --resume", "trt_export.py"])
@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda c: {**c, "model": other_models_weights(c)}, "missing conv1.weight [8, 3, 3, 3]"),
        (lambda c: {**c, "config": [1, 2]}, "its config is a list, not a dict of settings"),
        (
            lambda c: {**c, "config": {**c["config"], "batch_size": 0}},
            "its config has batch_size=0 is not allowed",
        ),
        (lambda c: {**c, "model": [1, 2]}, "its 'model' is not a state dict"),
        # a state dict torch cannot use: names that are not text, tensors without plain data
        (lambda c: {**c, "model": dict(enumerate(c["model"].values()))}, "not a state dict (text"),
        (lambda c: {**c, "model": sparse(c["model"])}, "model.fc3.weight is a sparse_coo tensor"),
        (lambda c: {**c, "model": on_meta(c["model"])}, "is a meta tensor, not a dense one"),
        # a config that would allocate terabytes: refused by the settings' bounds
        (
            lambda c: {**c, "config": {**c["config"], "num_filters_1": 2**40}},
            "num_filters_1=1099511627776 is not allowed: use a value in [1, 4096]",
        ),
        (lambda c: {**c, "history": np.zeros(3)}, "numpy.ndarray, which a checkpoint may not hold"),
        # the run's state beside the weights, damaged in type or range: checked as a summary's is
        (lambda c: {**c, "epoch": "x"}, 'is damaged: its epoch is "x", not a whole number >= 0'),
        (lambda c: {**c, "seconds": 1e20}, "is damaged: its seconds is 1e+20, not seconds in"),
        (lambda c: {**c, "best_val_accuracy": 10**400}, "its best_val_accuracy is <an integer of"),
        (lambda c: {**c, "history": [None]}, "is damaged: its history[0] is null, not a dict"),
    ],
)
def test_every_foreign_checkpoint_is_one_line_and_exit_2(
    tool, damage, expected, tiny_data_dir, tmp_path, capsys
):
    run_dir = tmp_path / "runs" / "foreign"
    run_dir.mkdir(parents=True)
    checkpoint = small_checkpoint(
        run_dir / "best.pt",
        optimizer={},
        history=[],
        best_val_accuracy=1.0,
        best_epoch=1,
        seconds=1.0,
    )
    torch.save(
        damage(checkpoint), run_dir / ("last.pt" if tool == "trainer --resume" else "best.pt")
    )
    result = (
        train([*fast_args(tiny_data_dir, tmp_path / "runs"), "--resume", str(run_dir)], capsys)
        if tool == "trainer --resume"
        else export(run_dir / "best.pt", tiny_data_dir, capsys)
    )
    assert result.returncode == 2, result.stdout + result.stderr
    line = one_line_error(result.stderr)
    assert expected in line and "\x1b" not in line and "two options" not in line


def test_a_config_missing_keys_is_filled_from_todays_defaults_with_a_line(tmp_path, capsys):
    checkpoint = small_checkpoint(tmp_path / "best.pt")
    for key in ("lr_schedule", "val_size"):
        del checkpoint["config"][key]
    torch.save(checkpoint, tmp_path / "best.pt")
    _, loaded = trt_export.load_model(tmp_path / "best.pt")
    assert loaded["config"]["val_size"] == trainer.DEFAULTS["val_size"]
    note = capsys.readouterr().out.strip()
    assert note == (
        f"note: {tmp_path / 'best.pt'} has no lr_schedule, val_size in its config: using today's "
        f"default lr_schedule=cosine, val_size={trainer.DEFAULTS['val_size']}"
    )


def test_resume_with_a_config_missing_a_key_uses_the_default_and_says_so(
    crashed_run, tiny_data_dir, tmp_path, capsys
):
    run_dir = crashed_run
    last = torch.load(run_dir / "last.pt", weights_only=True)
    del last["config"]["label_smoothing"]
    torch.save(last, run_dir / "last.pt")
    result = train([*fast_args(tiny_data_dir, tmp_path / "runs"), "--resume", str(run_dir)], capsys)
    assert result.returncode == 0, result.stderr
    assert (
        "has no label_smoothing in its config: using today's default label_smoothing=0.1"
        in result.stdout
    )


def test_a_resume_refused_inside_the_run_exits_2_like_one_refused_before_it(
    crashed_run, tiny_data_dir, tmp_path, capsys
):
    run_dir = crashed_run
    last = torch.load(run_dir / "last.pt", weights_only=True)
    last["model"]["fc1.weight"][0, 0] = float("nan")  # an older version kept a diverged epoch
    torch.save(last, run_dir / "last.pt")
    result = train([*fast_args(tiny_data_dir, tmp_path / "runs"), "--resume", str(run_dir)], capsys)
    assert result.returncode == 2
    assert "last.pt holds non-finite weights (NaN or inf in fc1.weight)" in one_line_error(
        result.stderr
    )


def test_select_model_skips_a_summary_whose_config_it_cannot_use(tmp_path, capsys):
    for name, config in (
        ("good", {**trainer.DEFAULTS, **SMALL}),
        ("bad", {"batch_size": 0}),
        ("odd", [1]),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(
            json.dumps({"status": "finished", "config": config, "best_val_accuracy": 10.0})
        )
    (candidate,) = select_model.find_candidates(tmp_path, None)
    assert candidate.runs == [tmp_path / "good"]
    out = capsys.readouterr().out
    assert f"note: {tmp_path / 'bad' / 'summary.json'} has batch_size=0 is not allowed" in out
    assert f"{tmp_path / 'odd' / 'summary.json'}" in out


# --------------------------------------------------------------------------------------------------
# A checkpoint weights_only refuses


def test_numpy_numbers_in_a_checkpoint_load_as_python_numbers(tmp_path):
    small_checkpoint(
        tmp_path / "best.pt",
        val_accuracy=np.float64(12.5),
        epoch=np.int64(3),
        extra=[np.float32(0.25), np.bool_(True), np.array(7, dtype=">i4")[()]],
    )
    _, loaded = trt_export.load_model(tmp_path / "best.pt")
    assert loaded["val_accuracy"] == 12.5 and type(loaded["val_accuracy"]) is float
    assert loaded["epoch"] == 3 and type(loaded["epoch"]) is int
    assert loaded["extra"] == [0.25, True, 7] and [type(v) for v in loaded["extra"]] == [
        float,
        bool,
        int,
    ]


@pytest.mark.parametrize(
    "value, named",
    [
        (np.str_("best"), "a numpy scalar of dtype 'U4'"),
        (np.datetime64("2026-01-01"), "a numpy scalar of dtype 'M8'"),
        (np.zeros(3), "numpy.ndarray"),
        (Path("runs"), "pathlib"),
    ],
)
def test_any_other_type_is_refused_in_one_plain_line_naming_it(value, named, tmp_path):
    small_checkpoint(tmp_path / "best.pt", val_accuracy=value)
    with pytest.raises(run_files.CheckpointError) as refused:
        run_files.load_checkpoint(tmp_path / "best.pt")
    line = str(refused.value)
    assert line.startswith(f"{tmp_path / 'best.pt'} holds ") and named in line
    assert "\n" not in line and "\x1b" not in line and "two options" not in line


def test_every_row_of_the_readme_fault_table_has_its_three_columns():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## When things go wrong", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert len(rows) > 10 and rows[0] == "| fault | what you see | what is kept |"
    for row in rows:
        cells = row.replace("\\|", "").split("|")[1:-1]
        assert len(cells) == 3 and row.endswith("|"), row


def test_select_model_exits_2_when_a_seed_it_resumes_has_a_refused_checkpoint(
    finished_run, tiny_data_dir, tmp_path, offline_env
):
    runs = finished_run.parent
    (candidate,) = select_model.find_candidates(runs, None)
    ((run_id, _),) = select_model.planned_runs(candidate, 1)
    # that seed's interrupted run, with a last.pt saved elsewhere
    (runs / "selection" / run_id).mkdir(parents=True)
    last = torch.load(finished_run / "last.pt", weights_only=True)
    torch.save({**last, "history": np.zeros(3)}, runs / "selection" / run_id / "last.pt")
    command = [
        sys.executable,
        str(ROOT / "select_model.py"),
        str(runs),
        "--top",
        "1",
        "--seeds",
        "1",
        "--data-dir",
        str(tiny_data_dir),
        "--wandb-mode",
        "offline",
        "--images-dir",
        str(tmp_path / "images"),
    ]
    result = subprocess.run(
        command, env=offline_env, cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    (failed,) = [line for line in result.stderr.splitlines() if " failed " in line]
    assert (
        f"{run_id} failed (exit 2): error: cannot resume: " in failed
        and "numpy.ndarray, which" in failed
    )


def test_a_seed_that_diverged_before_any_epoch_counts_as_0_in_the_selection(tmp_path):
    config = trainer.validate_config({**trainer.DEFAULTS, **SMALL})
    for name, status, best in (("seed0", "finished", 40.0), ("seed1", "diverged", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(
            json.dumps(
                {
                    "status": status,
                    "config": config,
                    "best_val_accuracy": best,
                    "flops_per_image": 1000,
                }
            )
        )
    candidate = select_model.Candidate(config, [tmp_path / "seed0", tmp_path / "seed1"], 40.0)
    report = select_model.config_report(candidate, tmp_path)
    assert report["seeds"] == 2 and report["val_accuracy_mean"] == 20.0
    assert choice.best_seed(report, tmp_path) is None  # neither has a best.pt to export


# A copy cut short (a full disk, an interrupted transfer): torch's zip reader fails below ~64 KiB
# with OSError(EINVAL) when it reads the path itself; every length is the file's fault, exit 2
@pytest.mark.parametrize("tool", ["trainer --resume", "trt_export.py"])
def test_a_checkpoint_cut_at_any_length_is_truncated_or_corrupt_and_exit_2(
    tool, crashed_run, tiny_data_dir, tmp_path, capsys
):
    name = "last.pt" if tool == "trainer --resume" else "best.pt"
    whole = (crashed_run / name).read_bytes()
    assert len(whole) > 64 * 1024  # the cuts below span both of the zip reader's ways to fail
    (crashed_run / "best.pt").write_bytes(whole)  # a resume reads no best.pt before last.pt
    for length in (10, 1024, 30_000, len(whole) // 2):
        (crashed_run / name).write_bytes(whole[:length])
        result = (
            train(
                [*fast_args(tiny_data_dir, tmp_path / "runs"), "--resume", str(crashed_run)],
                capsys,
            )
            if tool == "trainer --resume"
            else export(crashed_run / name, tiny_data_dir, capsys)
        )
        assert result.returncode == 2, (length, result.stderr)
        assert f"{crashed_run / name} is truncated or corrupt (" in one_line_error(result.stderr)
