"""One clock for liveness: a heartbeat written by a PostgreSQL session in one time zone and judged
by a session in another (PGTZ, as two machines set up differently have) is judged right: a live
trial is not failed, and a dead one is failed and retried once its grace period has passed, also
when the dead writer's zone is ahead. Real sessions on a throw-away server (tests/conftest.py)."""

from __future__ import annotations

import time

import optuna
import sqlalchemy

from cifarkit.sweeps import storage as sweep_storage

GRACE = 2  # seconds: --grace-period
AHEAD, BEHIND = "Asia/Tokyo", "America/Los_Angeles"  # UTC+9, UTC-8 or -7: 16 or 17 hours apart


def session_zone(url: str) -> str:
    """The TimeZone a plain new session gets (libpq reads PGTZ when it connects)."""
    engine = sqlalchemy.create_engine(url)
    with engine.connect() as connection:
        zone = connection.execute(sqlalchemy.text("SHOW TimeZone")).scalar()
    engine.dispose()
    return zone


def store_in_zone(url: str, zone: str, runs, monkeypatch) -> sweep_storage.Store:
    """local_sweep's storage as a machine whose sessions are in `zone` opens it; connected now."""
    monkeypatch.setenv("PGTZ", zone)
    assert session_zone(url) == zone  # the sessions this machine would have without the fix
    store = sweep_storage.open_storage(url, runs, heartbeat_interval=1, grace_period=GRACE)
    with store.storage.engine.connect() as connection:  # pooled: every later call reuses it
        assert connection.execute(sqlalchemy.text("SHOW TimeZone")).scalar() == "UTC"
    return store


def running_trial(store: sweep_storage.Store, name: str) -> tuple[optuna.Study, int]:
    """A new study with one RUNNING trial whose heartbeat `store` has just written; (study, id)."""
    study = optuna.create_study(study_name=name, storage=store.storage)
    trial = study.ask()
    trial_id = store.storage.get_trial_id_from_study_id_trial_number(study._study_id, trial.number)
    store.storage.record_heartbeat(trial_id)
    return study, trial_id


def test_a_live_trial_is_not_failed_by_a_machine_whose_sessions_are_in_a_zone_ahead(
    postgres_url, tmp_path, monkeypatch, quiet_optuna
):
    study, _ = running_trial(store_in_zone(postgres_url, BEHIND, tmp_path, monkeypatch), "live")
    judge = store_in_zone(postgres_url, AHEAD, tmp_path, monkeypatch)
    seen = optuna.load_study(study_name="live", storage=judge.storage)
    with judge.scheduling(seen):
        assert judge.fail_dead_trials(seen) == []  # its heartbeat is a second old, not hours
    assert [t.state.name for t in seen.get_trials()] == ["RUNNING"]


def test_a_dead_trial_of_a_machine_in_a_zone_ahead_is_failed_and_retried_after_the_grace_period(
    postgres_url, tmp_path, monkeypatch, quiet_optuna
):
    study, _ = running_trial(store_in_zone(postgres_url, AHEAD, tmp_path, monkeypatch), "dead")
    judge = store_in_zone(postgres_url, "UTC", tmp_path, monkeypatch)
    seen = optuna.load_study(study_name="dead", storage=judge.storage)
    with judge.scheduling(seen):
        assert judge.fail_dead_trials(seen) == []  # not yet: within the grace period
    time.sleep(GRACE + 1)  # the writer is dead: no more heartbeats
    with judge.scheduling(seen):
        assert judge.fail_dead_trials(seen) == [0]  # not hours in the future
    assert [t.state.name for t in seen.get_trials()] == ["FAIL", "WAITING"]  # its retry queued
