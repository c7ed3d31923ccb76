"""The study's storage, and how the processes on it take turns and tell a dead one: a journal
file for one machine (file locks beside it), or a PostgreSQL database for several (its advisory
lock and Optuna's heartbeats, in UTC; a session stalled inside a transaction is ended after the
grace period). Opening the study checks that it was made from the same
sweep file. Used by local_sweep.py.
"""

from __future__ import annotations

import fcntl
import secrets
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from cifarkit.core import cli
from cifarkit.sweeps import journal, space
from cifarkit.sweeps.journal import DamagedJournal, JournalReadOnly
from cifarkit.sweeps.space import Sweep, SweepConfigError

# under --runs-dir: Optuna's journal file, for one machine
DEFAULT_STORAGE_FILE = "optuna-journal.log"
# PostgreSQL: a running trial writes a heartbeat this often; a waiting process looks this often
HEARTBEAT_SECONDS = 60
# PostgreSQL: a trial whose heartbeat is this old is failed and retried by whoever looks
GRACE_SECONDS = 300
# a trial whose process died is retried at most this often (a config that kills machines stops)
MAX_RETRIES = 2
DRIVERS = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
}  # module -> package
# PostgreSQL advisory lock key while Optuna creates its tables (a study's lock: crc32 of its name)
SCHEMA_LOCK = -1
# seconds a session holding it may sit idle: longer than creating the tables takes on a slow
# database, shorter than a start held up for good
SCHEMA_LOCK_IDLE_S = 60
# PostgreSQL's SQLSTATE for a session it ended for sitting idle in a transaction past the limit
IDLE_IN_TRANSACTION_TIMEOUT = "25P03"


class StorageError(cli.CommandError, RuntimeError):
    """The storage cannot be opened (missing driver, unreachable server); the message is one line
    for people."""

    exit_code = cli.EXIT_FAILED


# What the study's storage raises when it fails an operation: the database gone or refusing
# (RDBStorage wraps SQLAlchemy's errors in StorageInternalError; the scheduling lock's own
# connection raises them bare), a journal file that cannot be read or written. A damaged journal, or
# one this user may not write, is the user's to fix: exit 2, not 1 (JOURNAL_TO_FIX).
STORAGE_FAILED = (
    optuna.exceptions.StorageInternalError,
    sqlalchemy.exc.SQLAlchemyError,
    journal.JournalFailed,
)
JOURNAL_TO_FIX = (DamagedJournal, JournalReadOnly)


def storage_failure(e: BaseException) -> str:
    """One line for a STORAGE_FAILED error: the database's own words (StorageInternalError hides
    them)."""
    cause = (
        e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ else e
    )
    return f"the study's storage failed: {cli.one_line(getattr(cause, 'orig', None) or cause)}"


def as_storage_error(e: BaseException) -> BaseException:
    """A failure of the study's storage (STORAGE_FAILED) as the StorageError of its one line: the
    database's own words, which Optuna's StorageInternalError hides; any other error as it is."""
    if isinstance(e, STORAGE_FAILED):
        return StorageError(f"{storage_failure(e)}; run the same command again once it answers")
    return e


@dataclass
class Store:
    """Optuna's storage, and how processes on it take turns and tell a dead one: file locks beside a
    journal file (one machine), or PostgreSQL's advisory lock and heartbeats (several machines)."""

    storage: optuna.storages.BaseStorage
    lock_dir: Path | None  # beside the journal file; None: PostgreSQL

    @contextmanager
    def scheduling(self, study: optuna.Study) -> Iterator[None]:
        """Held while a process fails dead trials, counts and asks: two cannot both take the N-th
        trial."""
        # released with the transaction, or by the server when the connection drops
        if self.lock_dir is None:
            with self.storage.engine.begin() as connection:
                connection.execute(
                    sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                    {"key": zlib.crc32(study.study_name.encode())},
                )
                yield
        else:
            lock = self.lock_dir / f"{space.safe_file_name(study.study_name)}.lock"
            with open(lock, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # the kernel releases it when the process dies
                yield

    def trial_lock(self, study: optuna.Study, number: int) -> Path:
        return self.lock_dir / f"{space.safe_file_name(study.study_name)}.trial-{number}.lock"

    @contextmanager
    def keep_alive(self, study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
        """While the trial runs: an exclusive lock on its lock file (journal), or its heartbeat
        (PostgreSQL)."""
        if self.lock_dir is not None:
            with open(self.trial_lock(study, trial.number), "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield
            return
        storage, stop = self.storage, threading.Event()
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), trial.number
        )
        # the first beat, inside the scheduling lock: never a trial without one
        storage.record_heartbeat(trial_id)

        def beat() -> None:
            failing = False
            while not stop.wait(storage.get_heartbeat_interval()):
                try:
                    storage.record_heartbeat(trial_id)
                    failing = False
                except (
                    Exception
                ) as e:  # a database hiccup: the next beat may get through before the grace period
                    if not failing:  # one line for a run of failed beats
                        print(
                            f"trial {trial.number}: heartbeat not written: {storage_failure(e)}",
                            flush=True,
                        )
                    failing = True

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def fail_dead_trials(self, study: optuna.Study) -> list[int]:
        """Fail the running trials whose process is gone and queue a retry of each (inside
        `scheduling`)."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if self.lock_dir is None:
            orphans = self.without_heartbeat(running)
            for trial in orphans:
                failed = tell_once(study, trial.number, None, TrialState.FAIL)
                if failed is not None:
                    retry_later(study, failed)
            # with the storage's RetryHeartbeatStaleTrialCallback
            optuna.storages.fail_stale_trials(study)
            was_running = {t.number for t in running}
            failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            return [t.number for t in failed if t.number in was_running]
        dead = []
        for number in [t.number for t in running]:
            with open(self.trial_lock(study, number), "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process holds the lock: alive
            failed = tell_once(study, number, None, TrialState.FAIL)
            if failed is not None:
                retry_later(study, failed)
                dead.append(number)
        return dead

    def without_heartbeat(
        self, running: list[optuna.trial.FrozenTrial]
    ) -> list[optuna.trial.FrozenTrial]:
        """The running trials with no heartbeat in the database (PostgreSQL; inside `scheduling`).

        A process asks for its trial and writes the first beat inside the scheduling lock
        (next_trial), but study.ask commits on a session of its own: a process killed, or stalled
        past the grace period (the server then ends its lock's session: session_settings), between
        the two leaves a running trial without a heartbeat. Optuna fails only trials with a stale
        heartbeat; seen under the lock, such a trial's process has lost the lock for good."""
        if not running:
            return []
        ids = [t._trial_id for t in running]
        with self.storage.engine.connect() as connection:
            beating = set(
                connection.execute(
                    sqlalchemy.text(
                        "SELECT trial_id FROM trial_heartbeats WHERE trial_id = ANY(:ids)"
                    ),
                    {"ids": ids},
                ).scalars()
            )
        return [t for t in running if t._trial_id not in beating]


def ended_for_idling(error: BaseException | None) -> bool:
    """True if PostgreSQL ended the session because it sat idle inside a transaction past the
    limit session_settings gives it (SQLSTATE 25P03): this process stalled that long."""
    return cli.in_chain(error, lambda e: sqlstate(e) == IDLE_IN_TRANSACTION_TIMEOUT) is not None


def session_lost(error: BaseException | None) -> bool:
    """True if the database ended or dropped the session `error` came from: ended_for_idling, or
    a connection SQLAlchemy found closed (the server restarted, or closed it before its message
    was read)."""
    dropped = cli.in_chain(error, lambda e: getattr(e, "connection_invalidated", False))
    return ended_for_idling(error) or dropped is not None


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a driver's error, or of the one SQLAlchemy wraps (`orig`)."""
    return getattr(error, "sqlstate", None) or getattr(
        getattr(error, "orig", None), "sqlstate", None
    )


def tell_once(
    study: optuna.Study, trial: optuna.Trial | int, value: float | None, state: TrialState
) -> optuna.trial.FrozenTrial | None:
    """study.tell; None if another process ended the trial first (it failed it as dead and queued
    its retry)."""
    try:
        return study.tell(trial, value, state=state)
    # found finished / finished meanwhile
    except (
        ValueError,
        optuna.exceptions.UpdateFinishedTrialError,
    ):
        return None
    except RuntimeError:
        # GridSampler calls study.stop() from tell once the grid is spent, which outside
        # study.optimize raises after the state was stored (optuna issues 4121, 5141); next_trial's
        # count decides when the study is done
        number = trial if isinstance(trial, int) else trial.number
        stored = study.get_trials(deepcopy=False)[number]
        if stored.state == state:
            return stored
        if stored.state.is_finished():
            return None
        raise


def retry_later(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, failed)


def open_storage(
    storage: str | None,
    runs_dir: Path,
    heartbeat_interval: int = HEARTBEAT_SECONDS,
    grace_period: int = GRACE_SECONDS,
) -> Store:
    """A journal file (default <runs-dir>/optuna-journal.log) for one machine, or postgresql://...
    for several."""
    if storage is None or "://" not in storage:
        path = Path(storage) if storage else Path(runs_dir) / DEFAULT_STORAGE_FILE
        lock_dir = path.with_name(path.name + ".locks")
        lock_dir.mkdir(parents=True, exist_ok=True)
        # a damaged last line: refused now, before anything is appended after it
        journal.check(path)
        return Store(journal.SafeJournalStorage(journal.SafeJournalFile(str(path))), lock_dir)
    url = sqlalchemy.engine.make_url(storage)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() != "postgresql":
        raise StorageError(
            f"storage {shown}: use postgresql://... (several machines) or a journal file (one "
            "machine)"
        )
    try:
        engine = sqlalchemy.create_engine(url)  # imports the driver
        # machines creating the tables at once would collide in the catalog
        with engine.begin() as connection:
            # held while Optuna checks or creates its tables (a second or so): a machine stalled
            # here holds the others' start no longer than SCHEMA_LOCK_IDLE_S
            connection.execute(
                sqlalchemy.text(
                    f"SET LOCAL idle_in_transaction_session_timeout = {SCHEMA_LOCK_IDLE_S * 1000}"
                )
            )
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK}
            )
            # pool_pre_ping: a pooled connection the server dropped (a restart, an idle timeout) is
            # replaced before use instead of failing the trial's next update (Optuna turns it on
            # only for MySQL)
            rdb = optuna.storages.RDBStorage(
                storage,
                engine_kwargs={"pool_pre_ping": True},
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRIES
                ),
            )
        engine.dispose()
        session_settings(rdb.engine, grace_period)
    except ImportError as e:
        module = e.name or url.get_driver_name()
        raise StorageError(
            f"storage {shown} needs the driver {module!r}, which is not installed: pip install "
            f"'{DRIVERS.get(module, module)}'"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = cli.one_line(getattr(e, "orig", None) or e)
        raise StorageError(f"cannot open storage {shown}: {reason}") from None
    return Store(rdb, None)


def session_settings(engine: sqlalchemy.engine.Engine, grace_period: int) -> None:
    """Make every session of `engine`, from its next connection on, keep time in UTC and end itself
    once it has been idle inside a transaction for `grace_period` seconds.

    UTC: Optuna's RDBStorage writes a trial's heartbeat as the writer session's now() into a column
    without a time zone (`timestamp`): PostgreSQL stores the wall-clock time of that session's
    TimeZone. It judges it against the reader session's now() with the zone dropped
    (_get_stale_trial_ids). Sessions in other zones (PGTZ, a role's or database's setting, the
    server's default, a daylight-saving change) then see a live trial hours old and fail it, or a
    dead one hours ahead and never retry it. In UTC both are the database server's one clock, in
    one time base. Set after connecting: a PGTZ in the environment overrides a connect option
    (libpq sends it later in the startup packet).

    The idle limit (PostgreSQL's idle_in_transaction_session_timeout): a machine that stalls (a
    paused VM, a swap storm) inside a transaction keeps its locks for as long as it sleeps. An
    update of its trial (a reported epoch) holds a lock on the trial's row; failing that trial
    takes the row for update; the scheduling lock is a transaction's. Every other machine then
    waits on the sleeping one, for hours on a paused VM. After the grace period the stalled machine
    is dead to the others (its heartbeat says so); the server now ends its session too, and the
    locks go with it. When it wakes, its call on that session fails as a dropped connection does.
    Our own transactions last milliseconds; the scheduling lock's, while a process fails dead trials
    and asks for one (a sampler's seconds at most).

    The pool is emptied, so no session escapes.
    """
    idle_ms = int(grace_period * 1000)

    @sqlalchemy.event.listens_for(engine, "connect")
    def set_session(connection: object, record: object) -> None:
        autocommit = connection.autocommit
        connection.autocommit = True  # a SET in a transaction the pool rolls back is undone
        cursor = connection.cursor()
        cursor.execute("SET TIME ZONE 'UTC'")
        cursor.execute(f"SET idle_in_transaction_session_timeout = {idle_ms}")
        cursor.close()
        connection.autocommit = autocommit

    engine.dispose()  # the connections Optuna opened to create its tables: made again, set


def open_study(sweep: Sweep, name: str, store: Store, create: bool = True) -> optuna.Study:
    """Create the study, or load it and check it was made from the same sweep file."""
    sampler, pruner = sweep.optimizer or (space.make_sampler(sweep), space.make_pruner(sweep))
    if not create:
        try:
            return optuna.load_study(
                study_name=name, storage=store.storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            raise SweepConfigError(
                f"no study {name!r} in this storage: check --study, --storage, --runs-dir"
            ) from None
    study = optuna.create_study(
        study_name=name,
        storage=store.storage,
        directions=sweep.directions,
        sampler=sampler,
        pruner=pruner,
        load_if_exists=True,
    )
    # Optuna's table and plots then name them
    if len(sweep.objectives) > 1 and study.metric_names is None:
        study.set_metric_names([name for name, _ in sweep.objectives])
    stored = study.user_attrs.get("sweep_config")
    if stored is None:
        study.set_user_attr("sweep_config", sweep.raw)
    elif stored != sweep.raw:
        raise SweepConfigError(
            f"study {name!r} was created from a different sweep config; use another --study or "
            "the original file"
        )
    drawn = {key: d for t in study.get_trials(deepcopy=False) for key, d in t.distributions.items()}
    for param in sweep.params:  # an older local_sweep.py may have drawn a parameter otherwise
        before = drawn.get(param.optuna_name)
        try:
            if before is not None and param.distribution is not None:
                optuna.distributions.check_distribution_compatibility(before, param.distribution)
        except ValueError:
            raise SweepConfigError(
                f"study {name!r} drew {param.name} from {before}, this local_sweep.py from "
                f"{param.distribution} (as W&B's engine "
                "draws it): continue the sweep under another --study"
            ) from None
    return study


def study_uid(study: optuna.Study, store: Store) -> str:
    """A random id of the study, stored in it: the same for every process on it, another for a
    study of the same name in another storage. The first process to ask makes it, under the
    scheduling lock."""
    uid = study.user_attrs.get("uid")
    if uid is None:
        with store.scheduling(study):
            uid = study.user_attrs.get("uid")
            if uid is None:
                uid = secrets.token_hex(4)
                study.set_user_attr("uid", uid)
    return uid
