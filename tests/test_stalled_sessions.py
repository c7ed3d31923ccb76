"""A machine that stalls inside a transaction (a paused VM, a swap storm, SIGSTOP) does not hold the
others up past the grace period: PostgreSQL ends its session, and its locks go with it
(storage.session_settings). When it wakes, its failed call on a trial that another process failed
meanwhile says so. Real sessions on a throw-away server (tests/conftest.py)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

import local_sweep
from cifarkit.sweeps import storage as sweep_storage

GRACE = 2  # seconds: --grace-period


def open_store(url: str, folder: Path) -> sweep_storage.Store:
    """The study's storage as a machine of this file opens it: a beat a second, GRACE s of grace."""
    return sweep_storage.open_storage(url, folder, heartbeat_interval=1, grace_period=GRACE)


def test_a_machine_stalled_in_a_transaction_holds_the_others_up_for_the_grace_period_only(
    postgres_url, tmp_path, quiet_optuna
):
    stalled = open_store(postgres_url, tmp_path)
    study = optuna.create_study(study_name="stall", storage=stalled.storage)
    trial = study.ask()
    trial_id = stalled.storage.get_trial_id_from_study_id_trial_number(
        study._study_id, trial.number
    )
    stalled.storage.record_heartbeat(trial_id)
    # Mid-report, then asleep: a reported epoch inserts a row that refers to the trial's, which
    # holds a key-share lock on the trial's row until the commit that never comes.
    session = stalled.storage.engine.connect()
    session.begin()
    session.execute(
        sqlalchemy.text("SELECT 1 FROM trials WHERE trial_id = :id FOR KEY SHARE"), {"id": trial_id}
    )

    judge = open_store(postgres_url, tmp_path)
    seen = optuna.load_study(study_name="stall", storage=judge.storage)
    time.sleep(GRACE + 0.5)  # no heartbeat since: the trial is dead to the others
    failed: list = []

    def fail_dead_trials() -> None:
        with judge.scheduling(seen):
            failed.append(judge.fail_dead_trials(seen))  # takes the trial's row for update

    started = time.monotonic()
    other = threading.Thread(target=fail_dead_trials, daemon=True)
    other.start()
    other.join(timeout=GRACE + 30)
    try:
        assert not other.is_alive(), "failing the trial waited on the stalled session's lock"
    finally:
        if other.is_alive():
            session.rollback()  # lets the other go (without the fix), so that nothing hangs
    assert failed == [[0]] and time.monotonic() - started < GRACE + 10
    assert seen.get_trials()[0].state.name == "FAIL"
    # the stalled machine wakes: the server ended its session
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="idle-in-transaction"):
        session.execute(sqlalchemy.text("SELECT 1"))
    session.close()


def test_a_storage_error_on_a_trial_failed_meanwhile_says_it_was_failed_meanwhile(tmp_path):
    storage = sweep_storage.open_storage(None, tmp_path).storage
    study = optuna.create_study(study_name="woke", storage=storage)
    running, failed = study.ask(), study.ask()
    study.tell(failed, state=optuna.trial.TrialState.FAIL)  # by another process, meanwhile
    lost = optuna.exceptions.StorageInternalError("server closed the connection unexpectedly")
    with pytest.raises(local_sweep.TrialRefused) as refused:
        with local_sweep.refusals(study, failed.number):
            raise lost
    assert f"trial {failed.number} was failed meanwhile by another process" in str(refused.value)
    with pytest.raises(local_sweep.TrialRefused) as refused:  # still its own: the storage's words
        with local_sweep.refusals(study, running.number):
            raise lost
    assert "server closed the connection unexpectedly" in str(refused.value)
    assert "failed meanwhile" not in str(refused.value)


def test_a_running_trial_left_without_a_heartbeat_is_failed_and_retried_not_kept_for_good(
    postgres_url, tmp_path, quiet_optuna
):
    # A process asked for its trial (study.ask commits on its own session) and was killed, or
    # stalled past the grace period, before its first beat: Optuna fails only trials with a beat.
    store = open_store(postgres_url, tmp_path)
    study = optuna.create_study(study_name="orphan", storage=store.storage)
    study.ask()  # the orphan: no heartbeat
    live = study.ask()
    store.storage.record_heartbeat(
        store.storage.get_trial_id_from_study_id_trial_number(study._study_id, live.number)
    )
    with store.scheduling(study):
        assert store.fail_dead_trials(study) == [0]
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "RUNNING", "WAITING"]


def test_a_process_stalled_inside_the_scheduling_lock_learns_its_session_was_ended(
    postgres_url, tmp_path, quiet_optuna
):
    store = sweep_storage.open_storage(postgres_url, tmp_path, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(study_name="held", storage=store.storage)
    with pytest.raises(sqlalchemy.exc.DBAPIError) as ended:
        with store.scheduling(study):
            time.sleep(2.5)  # stalled: the lock's session idle in its transaction
    assert sweep_storage.ended_for_idling(ended.value)  # local_sweep.work asks again
    assert sweep_storage.session_lost(ended.value)
    other = sweep_storage.open_storage(postgres_url, tmp_path, grace_period=1)
    started = time.monotonic()
    with other.scheduling(study):  # the lock went with the session
        assert time.monotonic() - started < 1
    assert not sweep_storage.ended_for_idling(RuntimeError("another failure"))
    assert not sweep_storage.session_lost(RuntimeError("another failure"))


def test_a_machine_stalled_while_the_tables_are_made_holds_the_others_start_for_a_bound(
    postgres_url, tmp_path, monkeypatch, quiet_optuna
):
    real = optuna.storages.RDBStorage

    def stalled(*args, **kwargs):
        time.sleep(2.5)  # the table lock's session idle in its transaction meanwhile
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_storage, "SCHEMA_LOCK_IDLE_S", 1)
    monkeypatch.setattr(optuna.storages, "RDBStorage", stalled)
    with pytest.raises(sweep_storage.StorageError, match="idle-in-transaction"):
        sweep_storage.open_storage(postgres_url, tmp_path, grace_period=GRACE)
