"""local_sweep.py when the study's storage refuses or fails an update, and when its journal file is
cut or damaged.

The storage cases: a grid sweep that reaches its end (Optuna's GridSampler calls study.stop() from
tell, which raises outside study.optimize), and a trial failed meanwhile by another process at each
of the three updates a trial makes (set_user_attr, report, tell). The journal cases use real files
in the states a dead writer leaves them and run the commands as a user does; the machine-level cases
(a stalled machine, a storage outage, random faults) are in test_sweep_machines.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from conftest import sweep_args, write_sweep_file
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

import local_sweep
import part_2_cifar as p2
from cifarkit.core import machine
from cifarkit.sweeps import journal as sweep_journal
from cifarkit.sweeps import storage as sweep_storage

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "batch_size": {"value": 64},
    "num_filters_1": {"value": 8},
    "num_filters_2": {"value": 16},
    "num_filters_3": {"value": 16},
}  # a CPU epoch on the learnable data takes well under a second


def write_sweep(path: Path, parameters: dict, method: str = "random") -> Path:
    return write_sweep_file(path, TINY | parameters, method)


def stock_study(path: Path, name: str) -> optuna.Study:
    """The study as plain Optuna reads the journal (its own backend, none of local_sweep's
    checks)."""
    return optuna.load_study(
        study_name=name, storage=optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    )


def assert_no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


# --------------------------------------------------------------------------------------------------
# The storage refuses an update


def test_a_grid_sweep_that_reaches_its_end_exits_0_and_writes_its_report(
    tmp_path, learnable_data_dir, one_thread, capsys
):
    sweep = write_sweep(
        tmp_path / "grid.json",
        {"dropout_rate": {"values": [0.0, 0.5]}, "epochs": {"value": 1}},
        method="grid",
    )
    runs = tmp_path / "runs"
    args = sweep_args(sweep, learnable_data_dir, runs, "--trials", "2")
    # GridSampler's study.stop() at the last tell raised RuntimeError here
    assert local_sweep.main(args) == 0
    trials = stock_study(runs / sweep_storage.DEFAULT_STORAGE_FILE, "grid").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert sorted(t.user_attrs["config"]["dropout_rate"] for t in trials) == [
        0.0,
        0.5,
    ]  # each grid point once
    assert len((runs / "grid" / "trials.csv").read_text().splitlines()) == 3
    assert local_sweep.main(args) == 0  # the same command again: done, nothing more
    assert len(stock_study(runs / sweep_storage.DEFAULT_STORAGE_FILE, "grid").trials) == 2
    out = capsys.readouterr()
    assert_no_traceback(out.out + out.err)


@pytest.mark.parametrize("moment", ["set_user_attr", "report", "tell"])
def test_a_trial_failed_meanwhile_by_another_process_is_one_line_and_its_retry_finishes_the_study(
    tmp_path, learnable_data_dir, one_thread, monkeypatch, capsys, moment
):
    sweep = write_sweep(
        tmp_path / "taken.json",
        {"learning_rate": {"min": 0.01, "max": 0.05}, "epochs": {"value": 2}},
    )
    runs = tmp_path / "runs"
    journal = runs / sweep_storage.DEFAULT_STORAGE_FILE

    def fail_trial_0_elsewhere() -> None:
        """What a process that found trial 0's heartbeat late does: fail it and queue its retry."""
        other = stock_study(journal, "taken")
        if other.trials[0].state == TrialState.RUNNING:
            sweep_storage.retry_later(other, other.tell(0, state=TrialState.FAIL))

    real_device_name, real_run_training = machine.device_name, p2.run_training

    def device_name(device) -> str:  # read just before the trial's first set_user_attr
        fail_trial_0_elsewhere()
        return real_device_name(device)

    def run_training(*args, **kwargs):
        if moment == "report":  # its first report, after epoch 1, is refused
            fail_trial_0_elsewhere()
        result = real_run_training(*args, **kwargs)
        if moment == "tell":
            fail_trial_0_elsewhere()
        return result

    if moment == "set_user_attr":
        # local_sweep imports it from machine
        monkeypatch.setattr(local_sweep, "device_name", device_name)
    monkeypatch.setattr(p2, "run_training", run_training)
    assert local_sweep.main(sweep_args(sweep, learnable_data_dir, runs, "--trials", "1")) == 0
    out = capsys.readouterr()
    assert_no_traceback(out.out + out.err)
    assert (out.out + out.err).count("trial 0 was failed meanwhile by another process") == 1, (
        out.out
    )
    failed, retry = stock_study(journal, "taken").trials
    assert failed.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == failed.params
    # it had trained: its checkpoints are kept, and the retry went on from them
    if moment != "set_user_attr":
        assert (runs / "taken" / "trial-0000" / "last.pt").is_file()
        assert retry.user_attrs["resumed_after_epoch"] == (1 if moment == "report" else 2)


# --------------------------------------------------------------------------------------------------
# A cut or damaged journal


def run_sweep_process(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "local_sweep.py"), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cut_last_record(journal: Path, keep: int = 40) -> bytes:
    """Leave the last record as a writer that died mid-append does: its first `keep` bytes, no
    newline."""
    data = journal.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[: start + keep])
    return data[start : start + keep]


def test_a_cut_last_record_is_set_aside_and_the_same_command_continues_the_study(
    finished_journal, tmp_path, offline_env, capsys
):
    args, journal = finished_journal
    # trial 0's tell COMPLETE: as far as anyone can read, trial 0 never ended
    cut = cut_last_record(journal)
    before = journal.read_bytes()
    # reading skips the cut record, as Optuna does
    assert local_sweep.main([*args, "--report"]) == 0
    assert journal.read_bytes() == before  # and changes nothing
    assert "cut short" not in capsys.readouterr().err
    done = run_sweep_process([*args, "--trials", "2"], offline_env, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_no_traceback(done.stdout + done.stderr)
    aside = journal.with_name(f"{journal.name}.cut-at-{len(before) - len(cut)}")
    (line,) = [x for x in done.stderr.splitlines() if "cut short" in x]
    assert str(journal) in line and str(aside) in line
    assert aside.read_bytes() == cut + b"\n"  # nothing the user had is lost
    # the whole records before it untouched
    assert journal.read_bytes().startswith(before[: -len(cut)])
    states = [
        t.state.name for t in stock_study(journal, "cut").trials
    ]  # plain Optuna reads every line
    # its process was gone: failed, retried
    assert states.count("COMPLETE") == 2 and states[0] == "FAIL", states


def glued_in_the_middle(journal: Path) -> None:
    """Optuna 5.0 appending after a cut record (optuna issue 5138): glued onto it, then a record
    after that."""
    cut_last_record(journal)
    for value in (1, 2):
        JournalFileBackend(str(journal)).append_logs(
            [{"op_code": 2, "worker_id": "other", "study_id": 0, "user_attr": {"note": value}}]
        )


def glued_at_the_end(journal: Path) -> None:
    """The same with one record after the cut: Optuna's reader skips the last line, so this one
    reads, but a record appended after it would make the study unreadable."""
    cut_last_record(journal)
    JournalFileBackend(str(journal)).append_logs(
        [{"op_code": 2, "worker_id": "other", "study_id": 0, "user_attr": {"note": 1}}]
    )


def cut_then_newline(journal: Path) -> None:
    """A cut record closed with a bare newline (a hand repair), then a record after it."""
    cut_last_record(journal)
    with open(journal, "ab") as f:
        f.write(b"\n")
    JournalFileBackend(str(journal)).append_logs(
        [{"op_code": 2, "worker_id": "other", "study_id": 0, "user_attr": {"note": 1}}]
    )


def a_line_in_the_middle(text: bytes) -> Callable[[Path], None]:
    """A line that is not an Optuna record (JSON or not), then a whole record after it, as a stray
    write leaves."""

    def damage(journal: Path) -> None:
        with open(journal, "ab") as f:
            f.write(text + b"\n")
        JournalFileBackend(str(journal)).append_logs(
            [{"op_code": 2, "worker_id": "other", "study_id": 0, "user_attr": {"note": 1}}]
        )

    damage.__name__ = f"line_{text[:24]!r}"
    return damage


NOT_RECORDS = [
    (b"{}", "JSON but not an Optuna record"),
    (b"null", "JSON but not an Optuna record"),
    (b"42", "JSON but not an Optuna record"),
    (b'{"op_code":99,"worker_id":"x"}', "JSON but not an Optuna record"),
    (b'{"op_code":"2","worker_id":"x","study_id":0}', "JSON but not an Optuna record"),
    # a known op_code, a field missing
    (
        b'{"op_code":2,"worker_id":"x"}',
        "Optuna cannot apply it",
    ),
    (b"garbage", "not JSON"),
    (b"", "empty"),
    (b"\0\0\0\0", "not JSON"),
]


@pytest.mark.parametrize(
    "damage, safe",
    [
        (glued_in_the_middle, "delete those"),
        (glued_at_the_end, "delete those"),
        (cut_then_newline, "a record cut short"),
        *[(a_line_in_the_middle(text), what) for text, what in NOT_RECORDS],
    ],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_a_damaged_journal_is_one_line_exit_2_and_its_advice_recovers_the_study(
    finished_journal, capsys, damage, safe
):
    # The commands in this process (main()): the journal's bytes are the point; a real process reads
    # a cut journal in test_a_cut_last_record_..., a read-only one in test_a_read_only_journal_...
    args, journal = finished_journal
    damage(journal)
    capsys.readouterr()
    damaged = journal.read_bytes()
    damaged_line = (
        damaged.splitlines().index(next(x for x in damaged.splitlines() if not is_record(x))) + 1
    )
    code = local_sweep.main([*args, "--trials", "2"])  # the command that would append
    done = capsys.readouterr()
    assert code == 2, done.err[-3000:]
    assert_no_traceback(done.out + done.err)
    (line,) = done.err.strip().splitlines()
    assert f"journal {journal} line {damaged_line} is damaged" in line and safe in line, line
    assert journal.read_bytes() == damaged  # nothing changed, nothing appended after the damage
    # the same line: Optuna would read only up to the damage
    assert local_sweep.main([*args, "--report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == line, err
    assert journal.read_bytes() == damaged
    # it names only what the line is
    if damage not in (
        glued_in_the_middle,
        glued_at_the_end,
        cut_then_newline,
    ):
        assert "cut short" not in line and "delete that line" in line, line
    fix = line.split("keeping a copy of the file: ", 1)[1]
    # the advice, as the user would run it
    subprocess.run(["bash", "-c", fix], check=True, timeout=60)
    assert journal.with_name(journal.name + ".bak").read_bytes() == damaged  # sed kept a copy
    assert local_sweep.main([*args, "--trials", "2"]) == 0
    study = stock_study(journal, "cut")
    assert sum(t.state in local_sweep.FINISHED for t in study.trials) == 2
    if damage in (glued_in_the_middle, glued_at_the_end):  # the glued records are whole again
        assert "note" in study.user_attrs


def is_record(line: bytes) -> bool:
    """Whether a line is what Optuna writes: an object with a known op_code, a worker_id, and the
    ids it acts on."""
    try:
        log = json.loads(line)
    except ValueError:
        return False
    return (
        isinstance(log, dict)
        and type(log.get("op_code")) is int
        and 0 <= log["op_code"] <= 10
        and isinstance(log.get("worker_id"), str)
        and len(log) > 2
    )


def test_the_advice_quotes_a_journal_path_with_spaces(tmp_path):
    journal = tmp_path / "my runs" / "study journal.log"
    journal.parent.mkdir()
    journal.write_bytes(
        b'{"op_code":0,"worker_id":"w","a":1}\n'
        b'{"op_code":2,"b"{"op_code":2,"worker_id":"w","c":3}\n'
        b'{"op_code":2,"worker_id":"w","d":4}\n'
    )
    fix = sweep_journal.damage_message(journal).split("keeping a copy of the file: ", 1)[1]
    assert shlex.split(fix)[-1] == str(journal)
    subprocess.run(["bash", "-c", fix], check=True, timeout=60)
    assert journal.read_bytes().splitlines() == [
        b'{"op_code":0,"worker_id":"w","a":1}',
        b'{"op_code":2,"worker_id":"w","c":3}',
        b'{"op_code":2,"worker_id":"w","d":4}',
    ]


def without_root_override() -> list[str]:
    """The command prefix under which file modes bind (root's CAP_DAC_OVERRIDE dropped), as for any
    other user."""
    return (
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
        if os.geteuid() == 0
        else []
    )


def test_a_read_only_journal_is_one_line_exit_2_and_its_report_still_works(
    finished_journal, tmp_path, offline_env
):
    args, journal = finished_journal
    journal.chmod(0o444)
    before = journal.read_bytes()
    command = [*without_root_override(), sys.executable, str(ROOT / "local_sweep.py")]
    done = subprocess.run(
        [*command, *args, "--trials", "2"],
        env=offline_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert_no_traceback(done.stdout + done.stderr)
    (line,) = done.stderr.strip().splitlines()
    assert f"journal {journal} cannot be written" in line and "chmod u+w" in line, line
    assert journal.read_bytes() == before
    report = subprocess.run(
        [*command, *args, "--report"],
        env=offline_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr[
        -3000:
    ]  # reading needs no write, nor Optuna's lock
    assert "1 COMPLETE" in report.stdout, report.stdout
    assert journal.read_bytes() == before


def test_a_report_piped_into_a_reader_that_exits_is_still_written_and_exits_0(
    with_figures, finished_journal, tmp_path, offline_env
):
    # `local_sweep.py FILE --report | head -0`: the reader is gone before the first line; the CSV
    # and the plots are still written, and the process ends 0 without a traceback
    # (cli.OutputThatMayGoAway).
    args, _ = finished_journal
    for old in (*tmp_path.glob("runs/*/trials.csv"), *tmp_path.glob("runs/images/*")):
        old.unlink()
    read_end, write_end = os.pipe()
    os.close(read_end)
    report = subprocess.run(
        [sys.executable, str(ROOT / "local_sweep.py"), *args, "--report"],
        env=offline_env,
        cwd=tmp_path,
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
    )
    os.close(write_end)
    assert report.returncode == 0, report.stderr[-3000:]
    assert_no_traceback(report.stderr)
    assert "Exception ignored" not in report.stderr, report.stderr
    assert list(tmp_path.glob("runs/*/trials.csv")) and list(tmp_path.glob("runs/images/*.png"))


def test_with_cifarkit_no_figures_a_report_writes_its_table_and_csv_and_no_plot(
    finished_journal, tmp_path, monkeypatch, offline, capsys
):
    # the suite's own setting (conftest): the report is whole but for its figures
    monkeypatch.setenv("CIFARKIT_NO_FIGURES", "1")
    args, _ = finished_journal
    for old in (*tmp_path.glob("runs/*/trials.csv"), *tmp_path.glob("runs/images/*")):
        old.unlink()
    assert local_sweep.main([*args, "--report"]) == 0
    out = capsys.readouterr().out
    assert "no plots: CIFARKIT_NO_FIGURES=1" in out and "1 COMPLETE" in out, out
    (csv,) = tmp_path.glob("runs/*/trials.csv")
    assert len(csv.read_text().splitlines()) == 2  # the header and the one trial
    assert not list(tmp_path.glob("runs/images/*"))


# --------------------------------------------------------------------------------------------------
# A file the sweep reads that is there but cannot be read: one line naming it, exit 2, nothing taken


def unreadable(path: Path, damage: str) -> None:
    """Make `path` a file no reader takes: Latin-1 text where UTF-8 JSON belongs, or a folder
    (this user is root: a chmod 000 file is read all the same)."""
    path.unlink(missing_ok=True)
    if damage == "folder":
        path.mkdir()
    else:
        path.write_bytes(b'{"study": "caf\xe9"}\n')


@pytest.mark.parametrize("damage", ["latin-1", "folder"])
@pytest.mark.parametrize("marker", ["study", "trial"])
def test_a_folder_marker_that_cannot_be_read_is_one_line_and_its_folder_is_not_taken(
    marker, damage, finished_journal, capsys
):
    args, journal = finished_journal
    study_dir = journal.parent / "cut"
    next_trial = study_dir / "trial-0001"  # the folder the next trial would train in
    next_trial.mkdir()
    path = study_dir / "study.json" if marker == "study" else next_trial / "trial.json"
    unreadable(path, damage)
    code = local_sweep.main([*args, "--trials", "2"])
    out, err = capsys.readouterr()
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert f"{path} cannot be read" in line and "move the folder aside" in line, line
    assert not (next_trial / "summary.json").exists() and "epoch 1" not in out
    trials = stock_study(journal, "cut").trials
    assert [t.state for t in trials][:1] == [TrialState.COMPLETE]
    assert all(t.state != TrialState.RUNNING for t in trials)  # a claimed trial was given up


def test_a_folder_where_the_journal_belongs_is_one_line_exit_2(tmp_path, capsys):
    sweep = write_sweep(tmp_path / "s.json", {"learning_rate": {"value": 0.01}})
    journal = tmp_path / "runs" / sweep_storage.DEFAULT_STORAGE_FILE
    journal.mkdir(parents=True)
    code = local_sweep.main(
        sweep_args(sweep, tmp_path / "no-data", tmp_path / "runs", "--trials", "1")
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and f"journal {journal} is not a file" in line, line
