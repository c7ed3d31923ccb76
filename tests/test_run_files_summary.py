"""What the commands read from a run folder is checked where it is read: one reader of summary.json
(run_files.load_summary) that checks types and ranges, so a damaged summary is a note and its run
left out (prior runs, selection candidates, the best run to export) or one line and exit 2 (a run
named explicitly), never a traceback; a copied run folder is the same run, counted once; a
checkpoint is scored only on the data it was trained on. The runs are real: the session's
finished_run, copied and damaged as a disk, a hand or another tool would."""

from __future__ import annotations

import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import FINISHED_RUN

import local_sweep
import part_2_cifar
import select_model
import trt_export
from cifarkit.core import choice, run_files
from cifarkit.sweeps import space, warm_start
from cifarkit.sweeps.folders import DamagedMarker, read_marker

HUGE = 10**400  # JSON reads it as an int no float holds: math.isfinite raises OverflowError


def damaged(summary: dict, change) -> dict:
    """A deep copy of `summary` with `change` (a function of the copy) applied."""
    copy = json.loads(json.dumps(summary))
    change(copy)
    return copy


def set_key(key, value):
    return lambda s: s.__setitem__(key, value)


def set_row(i, key, value):
    return lambda s: s["history"][i].__setitem__(key, value)


# (what is damaged, how, what the line must name)
DAMAGES = [
    ("a history row null", lambda s: s["history"].append(None), "history[1] is null"),
    ("a history row an int", lambda s: s["history"].__setitem__(0, 7), "history[0] is 7"),
    ("history not a list", set_key("history", "epochs"), 'history is "epochs"'),
    ("an epoch's accuracy huge", set_row(0, "val_accuracy", HUGE), "history[0].val_accuracy"),
    ("an epoch's loss text", set_row(0, "train_loss", "low"), "history[0].train_loss"),
    ("an epoch number 0", set_row(0, "epoch", 0), "history[0].epoch is 0"),
    ("total_seconds past datetime", set_key("total_seconds", 1e20), "total_seconds is 1e+20"),
    ("best accuracy huge", set_key("best_val_accuracy", HUGE), "best_val_accuracy is <an integer"),
    ("best accuracy NaN", set_key("best_val_accuracy", float("nan")), "best_val_accuracy is NaN"),
    ("best accuracy over 100", set_key("best_val_accuracy", 250.0), "best_val_accuracy is 250.0"),
    ("test accuracy text", set_key("test_accuracy", "high"), 'test_accuracy is "high"'),
    ("epochs a fraction", set_key("epochs_completed", 1.5), "epochs_completed is 1.5"),
    ("status a number", set_key("status", 3), "status is 3"),
    ("config a list", set_key("config", [1]), "config is [1]"),
    ("flops 0", set_key("flops_per_image", 0), "flops_per_image is 0"),
    ("a latency negative", set_key("latency_ms", {"1": -2.0}), "latency_ms is"),
    ("data a string", set_key("data", "cifar"), 'data is "cifar"'),
    ("a split seed a list", lambda s: s["data"].__setitem__("split_seed", [0]), "data.split_seed"),
    ("a digest a number", lambda s: s["data"].__setitem__("test_sha256", 5), "data.test_sha256"),
]


@pytest.fixture(scope="module")
def good_summary(_finished_run_once) -> dict:
    return json.loads((_finished_run_once / run_files.SUMMARY_FILE).read_text())


@pytest.mark.parametrize("what, change, named", DAMAGES, ids=[d[0] for d in DAMAGES])
def test_a_damaged_summary_is_refused_in_one_line_naming_the_file_and_the_value(
    what, change, named, good_summary, tmp_path, capsys
):
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / run_files.SUMMARY_FILE
    path.write_text(json.dumps(damaged(good_summary, change)))
    with pytest.raises(run_files.SummaryError) as refused:
        run_files.load_summary(path.parent)
    line = str(refused.value)
    assert line.startswith(f"{path} is damaged: {named}") and "\n" not in line
    assert len(line) < len(str(path)) + 160  # a 400-digit number is named by its size
    assert refused.value.exit_code == 2
    assert run_files.read_summary(path.parent) is None  # the lenient reader: nothing to use
    assert run_files.summaries_under(tmp_path) == [(path.parent, None)]
    assert capsys.readouterr().out == f"note: {line}; that run is left out\n"


@pytest.mark.parametrize(
    "text, named",
    [
        ("[1, 2]", "is damaged: it is [1, 2], not a JSON object"),
        ('{"status": "fini', "is not valid JSON"),
        ('{"best_val_accuracy": ' + "9" * 5000 + "}", "is not valid JSON"),  # past int's 4300
    ],
)
def test_a_summary_that_is_no_json_object_is_refused_in_one_line(text, named, tmp_path):
    (tmp_path / run_files.SUMMARY_FILE).write_text(text)
    with pytest.raises(run_files.SummaryError) as refused:
        run_files.load_summary(tmp_path)
    assert str(refused.value).startswith(f"{tmp_path / 'summary.json'} {named}")


def test_the_trainers_summary_and_an_older_versions_shorter_one_are_read(good_summary, tmp_path):
    (tmp_path / run_files.SUMMARY_FILE).write_text(json.dumps(good_summary))
    assert run_files.load_summary(tmp_path) == good_summary
    older = {"status": "finished", "config": {}, "best_val_accuracy": 50, "data": {}}
    (tmp_path / run_files.SUMMARY_FILE).write_text(json.dumps(older))
    assert run_files.load_summary(tmp_path) == older


def test_a_number_no_float_holds_is_not_finite_nor_a_setting(finished_run):
    assert not run_files.finite_number(HUGE) and run_files.finite_number(10**300)
    checkpoint = {"config": {"batch_size": HUGE}}
    with pytest.raises(run_files.CheckpointError) as refused:
        run_files.checkpoint_config(checkpoint, Path("x.pt"), part_2_cifar.SETTINGS)
    assert str(refused.value).startswith("x.pt: its config has batch_size=<an integer of about 401")


def damage(run_dir: Path, change) -> Path:
    path = run_dir / run_files.SUMMARY_FILE
    path.write_text(json.dumps(damaged(json.loads(path.read_text()), change)))
    return path


# --------------------------------------------------------------------------------------------------
# Each command meets damaged summaries: notes and the rest goes on, or one line and exit 2


def test_prior_runs_with_damaged_summaries_are_skipped_each_in_one_line(
    finished_run, tiny_data_dir, tmp_path, capsys
):
    reached = json.loads((finished_run / run_files.SUMMARY_FILE).read_text())["best_val_accuracy"]
    sweep = {
        "program": "part_2_cifar.py",
        "method": "random",
        # the good prior run reaches the target: the sweep ends before any training
        "metric": {"name": "val_accuracy", "goal": "maximize", "target": reached},
        "parameters": {k: {"value": v} for k, v in FINISHED_RUN.items() if k != "val_size"},
    }
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    damages = [d for d in DAMAGES if d[0] in ("a history row null", "a history row an int")]
    damages += [d for d in DAMAGES if "total_seconds" in d[0] or "epoch's accuracy" in d[0]]
    for what, change, _ in damages:
        damage(shutil.copytree(finished_run, tmp_path / "runs" / what), change)
    args = [str(tmp_path / "sweep.json"), "--data-dir", str(tiny_data_dir), "--val-size", "200"]
    args += ["--runs-dir", str(tmp_path / "sweep"), "--wandb-mode", "disabled", "--trials", "1"]
    args += ["--prior-runs", str(tmp_path / "runs"), "--images-dir", str(tmp_path / "images")]
    assert local_sweep.main(args) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    for what, _, named in damages:
        note = f"note: {tmp_path / 'runs' / what / 'summary.json'} is damaged: {named}"
        assert note in out.out
    assert "prior runs: 1 added (1 COMPLETE)" in out.out


def test_select_model_leaves_out_a_damaged_summary_and_counts_a_copied_run_once(
    finished_run, tiny_data_dir, tmp_path, capsys
):
    runs = finished_run.parent
    shutil.copytree(finished_run, runs / "finished.bak")  # a backup: the same run, not a seed
    damage(shutil.copytree(finished_run, runs / "hurt"), set_key("best_val_accuracy", HUGE))
    args = [str(runs), "--data-dir", str(tiny_data_dir), "--val-size", "200", "--top", "1"]
    args += ["--seeds", "1", "--wandb-mode", "disabled", "--images-dir", str(tmp_path / "img")]
    assert select_model.main(args) == 0
    out = capsys.readouterr().out
    assert f"note: {runs / 'hurt' / 'summary.json'} is damaged: best_val_accuracy is <an" in out
    assert (
        f"note: {runs / 'finished.bak'} holds the same run as {finished_run} (the same config, "
        "seed and data: a copy?); it is counted once"
    ) in out
    (report,) = json.loads((runs / choice.SELECTION_FILE).read_text())["configs"]
    assert report["runs"][0] == "finished" and len(report["runs"]) == report["seeds"] == 2
    assert report["runs"][1].startswith("selection/")


def test_a_copy_is_the_same_run_and_another_seed_is_not(finished_run, capsys):
    summary = run_files.load_summary(finished_run)
    other_seed = summary | {"config": summary["config"] | {"seed": 1}}
    runs = [(Path("a"), summary), (Path("a.bak"), dict(summary)), (Path("b"), other_seed)]
    assert run_files.distinct_runs(runs) == [runs[0], runs[2]]
    assert capsys.readouterr().out.startswith("note: a.bak holds the same run as a ")
    assert run_files.run_identity(summary) != run_files.run_identity(other_seed)


def export_args(*more: str) -> list[str]:
    return ["--device", "cpu", "--batch-sizes", "1", "--min-seconds", "0", *more]


def test_the_best_run_to_export_skips_a_damaged_summary_in_one_line(
    finished_run, tiny_data_dir, tmp_path, capsys
):
    damage(finished_run, lambda s: s["history"].__setitem__(0, None))
    args = export_args("--runs-dir", str(finished_run.parent), "--data-dir", str(tiny_data_dir))
    assert trt_export.main([*args, "--plot", str(tmp_path / "b.png")]) == 2
    out = capsys.readouterr()
    assert out.out == (
        f"note: {finished_run / 'summary.json'} is damaged: history[0] is null, not a dict; "
        "that run is left out\n"
    )
    assert out.err.startswith(f"error: no run in {finished_run.parent} has a summary.json")


def test_a_run_chosen_by_name_with_a_damaged_summary_is_refused_in_one_line(
    finished_run, tiny_data_dir, tmp_path, capsys
):
    runs = finished_run.parent
    selection = {
        "configs": [{"val_accuracy_mean": 5.0, "flops_per_image": 1e6}],
        "best": "finished",
    }
    selection["configs"][0] |= {"pareto": True, "runs": ["finished"]}
    (runs / choice.SELECTION_FILE).write_text(json.dumps(selection))
    path = damage(finished_run, set_key("total_seconds", -1))
    args = export_args("--runs-dir", str(runs), "--data-dir", str(tiny_data_dir))
    assert trt_export.main([*args, "--plot", str(tmp_path / "b.png")]) == 2
    assert capsys.readouterr().err == (
        f"error: {path} is damaged: total_seconds is -1, not seconds in [0, 1e+09]\n"
    )


@pytest.mark.parametrize(
    "field, value",
    [("val_accuracy_mean", HUGE), ("val_accuracy_mean", 101.0), ("flops_per_image", -1)],
)
def test_a_selection_with_a_number_out_of_range_is_one_line(field, value, tmp_path):
    config = {"val_accuracy_mean": 5.0, "flops_per_image": 1e6, "pareto": True, "runs": ["r"]}
    path = tmp_path / choice.SELECTION_FILE
    path.write_text(json.dumps({"configs": [config | {field: value}], "best": "r"}))
    with pytest.raises(run_files.CheckpointError, match=f"^{path} is not a select_model.py"):
        choice.read_selection(path)


def test_a_selection_that_chose_no_run_says_so_and_within_still_reads_it(tmp_path):
    config = {"val_accuracy_mean": 0.0, "flops_per_image": 1e6, "pareto": True, "runs": ["r"]}
    path = tmp_path / choice.SELECTION_FILE
    path.write_text(json.dumps({"configs": [config], "best": None}))  # every seed diverged
    with pytest.raises(run_files.CheckpointError, match="chose no run: no seed of its best"):
        choice.choose_checkpoint("best", tmp_path)
    with pytest.raises(run_files.CheckpointError, match="none of the runs of the chosen config"):
        choice.choose_checkpoint("best", tmp_path, within=1.0)  # read: the config has no seed


# --------------------------------------------------------------------------------------------------
# A checkpoint is scored on the data it was trained on


def test_a_checkpoint_is_not_scored_on_other_data_than_it_learned_from(
    finished_run, tiny_data_dir, learnable_data_dir, tmp_path, capsys
):
    out = tmp_path / "export"
    args = export_args("--checkpoint", str(finished_run), "--data-dir", str(learnable_data_dir))
    assert trt_export.main([*args, "--out", str(out), "--plot", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {finished_run / 'best.pt'} was trained on other data: ")
    assert f"other data: {tiny_data_dir}" in err and f", not {learnable_data_dir} (train " in err
    assert err.endswith("; pass --data-dir the data it was trained on\n") and err.count("\n") == 1
    assert not out.exists()  # nothing exported, no benchmark.json


def test_a_checkpoint_with_a_damaged_data_record_is_refused(finished_run, tiny_data_dir, capsys):
    best = finished_run / run_files.BEST_CHECKPOINT
    checkpoint = torch.load(best, weights_only=True)
    torch.save(checkpoint | {"data": {**checkpoint["data"], "train_sha256": [1]}}, best)
    args = export_args("--checkpoint", str(best), "--data-dir", str(tiny_data_dir))
    assert trt_export.main(args) == 2
    assert capsys.readouterr().err == (
        f"error: {best} is damaged: its data.train_sha256 is [1], not text\n"
    )


def test_resuming_a_run_whose_summary_is_damaged_writes_it_anew(
    finished_run, tiny_data_dir, tmp_path, capsys
):
    path = damage(finished_run, lambda s: s["history"].__setitem__(0, 7))
    args = ["--data-dir", str(tiny_data_dir), "--runs-dir", str(tmp_path / "runs")]
    args += ["--wandb-mode", "disabled", "--resume", str(finished_run)]
    assert part_2_cifar.main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"note: {path} is damaged: history[0] is 7, not a dict; the resumed run")
    assert run_files.load_summary(finished_run)["history"][0]["epoch"] == 1  # whole again


# --------------------------------------------------------------------------------------------------
# What no reader may do: block on a FIFO, overflow the stack on deep JSON

DEEP_JSON = '{"config": ' + "[" * 100_000 + "]" * 100_000 + "}"  # RecursionError in json.loads


@contextmanager
def no_longer_than(seconds: int):
    """Fail the test (TimeoutError) if the block takes longer: open() of a FIFO blocks forever."""

    def timed_out(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("kind", ["a FIFO", "deep JSON"])
def test_the_walk_over_a_runs_folder_leaves_out_a_summary_that_is_a_fifo_or_deep_json(
    kind, finished_run, tiny_data_dir, tmp_path, capsys
):
    (bad := finished_run.parent / "bad").mkdir()
    if kind == "a FIFO":
        os.mkfifo(bad / "summary.json")
    else:
        (bad / "summary.json").write_text(DEEP_JSON)
    # select_model.py, trt_export.py --runs-dir and --prior-runs all walk with it
    with no_longer_than(60):
        assert run_files.summaries_under(finished_run.parent)[0] == (bad, None)
    assert capsys.readouterr().out.startswith(f"note: {bad / 'summary.json'} ")


@pytest.mark.parametrize("kind", ["a FIFO", "deep JSON"])
def test_every_json_file_the_commands_read_refuses_a_fifo_and_deep_json_in_one_line(kind, tmp_path):
    path = tmp_path / "file.json"
    if kind == "a FIFO":
        os.mkfifo(path)
    else:
        path.write_text(DEEP_JSON)
    readers = [
        (choice.read_selection, run_files.CheckpointError),
        (read_marker, DamagedMarker),
        (warm_start.read_configs, warm_start.WarmStartError),
        (space.read_sweep_file, space.SweepConfigError),
        (run_files.load_checkpoint, run_files.CheckpointError),
    ]
    for reader, error in readers:
        with no_longer_than(10), pytest.raises(error) as refused:
            reader(path)
        assert str(path) in str(refused.value) and "\n" not in str(refused.value)
        assert refused.value.exit_code == 2


def test_a_sweep_file_that_is_a_fifo_is_one_line_and_exit_2(tiny_data_dir, tmp_path, capsys):
    os.mkfifo(tmp_path / "sweep.json")
    args = [str(tmp_path / "sweep.json"), "--data-dir", str(tiny_data_dir), "--trials", "1"]
    args += ["--runs-dir", str(tmp_path / "runs"), "--wandb-mode", "disabled"]
    with no_longer_than(60):
        assert local_sweep.main(args) == 2
    assert capsys.readouterr().err == (
        f"error: sweep file {tmp_path / 'sweep.json'} is a named pipe (FIFO), not a regular file: "
        "put the file itself there\n"
    )
