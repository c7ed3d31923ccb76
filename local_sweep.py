"""Run the W&B sweep in sweep_config.json without a W&B server: Optuna samples, prunes, schedules and stores the
trials, on one machine (a journal file) or on several that share a PostgreSQL database (README, "Several machines").

    python local_sweep.py sweep_config.json --trials 30                  # one GPU (or CPU), resumable
    python local_sweep.py sweep_config.json --trials 60 --workers 4      # 4 worker processes, spread over the GPUs
    python local_sweep.py sweep_config.json --trials 200 --storage postgresql://user:pw@db-host/optuna  # each machine
    python local_sweep.py sweep_config.json --report                     # table and plots of an existing study
    python local_sweep.py sweep_config.json --trials 30 --prior-runs runs/  # runs on disk first
    python local_sweep.py sweep_config.json --time-budget 8h --start-from good.yaml --sampler-seed 7

Each trial is one part_2_cifar.run_training in <runs-dir>/<study>/trial-NNNN; the sweep file's translation is
sweep_space.py, the report sweep_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import cli
import part_2_cifar as p2
import sweep_journal
import sweep_report
import sweep_space
from cifar_files import CifarSource, cifar100_source, load_cifar100
from cli import write_json_atomic
from folders import OWNER_LOCK, FolderInUse, own_folder, unwritable
from machine import device_name, pick_device
from run_files import (
    LAST_CHECKPOINT,
    RESUME_KEYS,
    SUMMARY_FILE,
    CheckpointError,
    data_identity,
    describe_data,
    finite_number,
    load_checkpoint,
    read_summary,
    same_data,
    summaries_under,
)
from settings import ConfigError
from sweep_journal import DamagedJournal, JournalReadOnly
from sweep_space import Sweep, SweepConfigError
from wandb_connect import resolve_wandb_mode

# ----------------------------------------------------------------------------------------------------------------------
# Settings

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts (prior runs aside)
DEFAULT_STORAGE_FILE = "optuna-journal.log"  # under --runs-dir: Optuna's journal file, for one machine
HEARTBEAT_SECONDS = 60  # PostgreSQL: a running trial writes a heartbeat this often; a waiting process looks this often
GRACE_SECONDS = 300  # PostgreSQL: a trial whose heartbeat is this old is failed and retried by whoever looks
MAX_RETRIES = 2  # a trial whose process died is retried at most this often (a config that kills machines stops)
MAX_FAILURES_IN_A_ROW = 5  # a process stops after this many failed trials in a row (out of memory, bad configs)
DRIVERS = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary", "pg8000": "pg8000"}  # module -> package
SCHEMA_LOCK = -1  # PostgreSQL advisory lock key while Optuna creates its tables (a study's lock: crc32 of its name)
STUDY_MARKER = "study.json"  # in a study's folder under --runs-dir: whose trials it holds
TRIAL_MARKER = "trial.json"  # in a trial's folder: which study's trial it is (own_trial_folder)


class StorageError(cli.CommandError, RuntimeError):
    """The storage cannot be opened (missing driver, unreachable server); the message is one line for people."""

    exit_code = cli.EXIT_FAILED


# What the study's storage raises when it fails an operation: the database gone or refusing (RDBStorage wraps
# SQLAlchemy's errors in StorageInternalError; the scheduling lock's own connection raises them bare), a journal
# file that cannot be read or written. A damaged journal, or one this user may not write, is the user's to fix:
# exit 2, not 1 (JOURNAL_TO_FIX).
STORAGE_FAILED = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, sweep_journal.JournalFailed)
JOURNAL_TO_FIX = (DamagedJournal, JournalReadOnly)


def storage_failure(e: BaseException) -> str:
    """One line for a STORAGE_FAILED error: the database's own words (StorageInternalError hides them)."""
    cause = e.__cause__ if isinstance(e, optuna.exceptions.StorageInternalError) and e.__cause__ else e
    return f"the study's storage failed: {cli.one_line(getattr(cause, 'orig', None) or cause)}"


class TrialFolderTaken(cli.CommandError):
    """A trial folder that TRIAL_MARKER says is another study's or trial's; the line names both."""

    exit_code = cli.EXIT_BAD_INPUT


class TrialRefused(p2.StopEarly):
    """The storage refused or failed an update of a running trial: another process failed it meanwhile (its
    heartbeat came late: this machine stalled), the storage failed, or the journal is damaged. Raised from the
    epoch callback it ends the training after that epoch, as pruning does, with last.pt kept for the retry."""

    def __init__(self, number: int, error: BaseException):
        self.error, self.shown = error, False
        if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
            reason = (f"trial {number} was failed meanwhile by another process (its heartbeat was late: this process "
                      "stalled or lost the storage); this attempt stops, its retry continues it")
        elif isinstance(error, JOURNAL_TO_FIX):
            reason = str(error)
        else:
            reason = f"trial {number}: {storage_failure(error)}; this attempt stops, its retry continues it"
        super().__init__("refused by the storage", reason)


@contextmanager
def refusals(number: int) -> Iterator[None]:
    """Inside: a storage error of trial `number`'s updates (report, set_user_attr, tell) raises TrialRefused."""
    try:
        yield
    except (optuna.exceptions.UpdateFinishedTrialError, *JOURNAL_TO_FIX, *STORAGE_FAILED) as e:
        raise TrialRefused(number, e) from None


def refusals_end_training(number: int, on_epoch: Callable[[dict], None]) -> tuple[Callable[[dict], None], list]:
    """`on_epoch` for run_training, and a list that holds the TrialRefused that ended the training, if one did
    (train() printed its line; the caller raises it again once the W&B run is finished)."""
    refused: list[TrialRefused] = []

    def guarded(metrics: dict) -> None:
        try:
            with refusals(number):
                on_epoch(metrics)
        except TrialRefused as e:
            e.shown = True  # train() prints "stopped after epoch N: <reason>"
            refused.append(e)
            raise

    return guarded, refused


def load_sweep(path: Path) -> Sweep:
    """The sweep file translated for part_2_cifar.py's settings and rules, with what its `command`
    passes every run and scheduler.optimizer and search_space loaded."""
    sweep = with_command(sweep_space.load_sweep(path, p2.DEFAULTS, p2.validate_config))
    sweep = dataclasses.replace(sweep, optimizer=study_factory(sweep))  # before any study is made
    if "search_space" not in sweep.scheduler:
        return sweep
    from wandb.sdk.sweeps.scheduler.optuna import load_trial_constructor  # W&B's own loader and checks

    source, name = sweep.scheduler["source"], sweep.scheduler["search_space"]
    with user_code("scheduler.search_space", source, name):
        constructor = load_trial_constructor(source, name)
        params = constructor(optuna.create_study().ask())  # a throw-away trial, as W&B's loader makes
        fixed = sorted(set(params) & set(sweep_space.NOT_SWEPT))
        if fixed:  # run_trial would override it with --val-size: say so rather than ignore the function's value
            raise SweepConfigError(sweep_space.not_swept_message(f"scheduler.search_space {name!r} in {source} gives "
                                                                 f"{fixed[0]!r}, which", fixed[0]))
        unknown = sorted(set(params) - set(p2.DEFAULTS))
        if unknown:  # `wandb agent` would pass --key=value, which part_2_cifar.py refuses
            raise SweepConfigError(f"scheduler.search_space {name!r} in {source} gives {unknown[0]!r}, which is not a "
                                   f"part_2_cifar.py setting (those are {', '.join(p2.DEFAULTS)})")
    return dataclasses.replace(sweep, search_space=constructor)


# `wandb agent` fills a command's ${...} from these (wandb_agent.Agent._command_run);
# part_2_cifar.py reads the sampled values in the forms of ARGS_MACROS (as --key=value or --key
# value), and a run started by the default command's LAUNCHER is one local_sweep.py trains in its
# own process
ARGS_MACROS = ("${args}", "${args_no_equals}", "${args_no_boolean_flags}")
OTHER_MACROS = ("${args_no_hyphens}", "${args_json}", "${args_json_file}", "${args_dict}",
                "${args_append_hydra}", "${args_override_hydra}", "${env}", "${interpreter}",
                "${program}")
LAUNCHER = ("${env}", "${interpreter}")
# cli.common_options: the options local_sweep.py shares with part_2_cifar.py
SHARED_OPTIONS = ("val_size", "data_dir", "runs_dir", "device", "wandb_mode", "wandb_project")


def with_command(sweep: Sweep) -> Sweep:
    """The sweep with what its `command` passes part_2_cifar.py on every run, as `wandb agent`
    builds the command line: the options written after ${program} (${envvar:NAME} filled in as the
    agent fills it), parsed by the trainer's own parser. Settings go to every trial (a swept one
    wins, as W&B's values reach wandb.config); the options local_sweep.py shares with the trainer
    become its own (Sweep.options). SweepConfigError for a command whose runs part_2_cifar.py would
    refuse or cannot be part_2_cifar.py at all."""
    if sweep.command is None:
        return sweep
    from wandb.sdk.launch.sweeps.utils import create_sweep_command

    chunks = create_sweep_command(list(sweep.command))
    program = next((i for i, chunk in enumerate(chunks) if chunk == "${program}"
                    or Path(chunk).name == "part_2_cifar.py"), None)
    if program is None:
        raise SweepConfigError(f"command {chunks}: it runs neither ${{program}} nor "
                               "part_2_cifar.py, which is all local_sweep.py can run")
    notes = list(sweep.notes)
    launcher = [chunk for chunk in chunks[:program] if chunk not in LAUNCHER]
    if launcher:
        notes.append(f"command: {' '.join(launcher)} is not used: local_sweep.py trains "
                     "part_2_cifar.py in its own process")
    options = []
    for chunk in chunks[program + 1:]:
        if chunk in ARGS_MACROS:
            continue
        if chunk.startswith("${") and chunk.endswith("}"):
            known = chunk in OTHER_MACROS
            what = ("passes the values in a form part_2_cifar.py does not read" if known
                    else "is not a macro `wandb agent` knows: it passes nothing")
            raise SweepConfigError(f"command {chunk} {what}: use ${{args}}")
        options.append(chunk)
    given = trainer_options(options)
    if "resume" in given:
        raise SweepConfigError(f"command --resume {given['resume']}: every trial would continue "
                               "that one run; remove it")
    settings = {key: value for key, value in given.items() if key in p2.SETTINGS}
    try:
        settings = {key: p2.validate_config(settings)[key] for key in settings}
    except ConfigError as e:
        raise SweepConfigError(f"command: {e}") from None
    settings.pop("val_size", None)  # an option of local_sweep.py (Sweep.options), checked above
    swept = {param.name for param in sweep.params}
    for key in sorted(settings.keys() & swept):
        notes.append(f"command --{key}={settings[key]}: the swept {key} replaces it on every run, "
                     "as under wandb agent (the sweep's values reach wandb.config)")
    return dataclasses.replace(sweep, fixed={k: v for k, v in settings.items() if k not in swept},
                               options={key: given[key] for key in SHARED_OPTIONS if key in given},
                               notes=tuple(notes))


def trainer_options(options: list[str]) -> dict:
    """{dest: value} of the options part_2_cifar.py's parser reads in `options` (those that differ
    from its defaults), or SweepConfigError with the parser's own words where every run would fail
    on them."""
    said = io.StringIO()
    try:
        with redirect_stderr(said):
            parsed = vars(p2.parse_args(options, in_sweep=True))
    except SystemExit:  # the parser's one-line error, as every run would print it
        reason = said.getvalue().strip().split("error: ", 1)[-1].removesuffix(" (see --help)")
        raise SweepConfigError(f"command {' '.join(options)}: part_2_cifar.py refuses "
                               f"it: {reason}") from None
    if parsed["unrecognized"]:
        raise SweepConfigError(f"command {' '.join(options)}: part_2_cifar.py would refuse every "
                               f"run: {parsed['unrecognized']}")
    defaults = vars(p2.parse_args([], in_sweep=True))
    return {key: value for key, value in parsed.items() if value != defaults[key]}


def sweep_options(args: argparse.Namespace, sweep: Sweep) -> list[str]:
    """Set local_sweep.py's options from the sweep file as W&B would use it: its command's options,
    and its project (where W&B puts the sweep's runs); an option given on the command line here
    wins, said in a line."""
    defaults = vars(p2.shared_options().parse_args([]))
    lines = []
    project = {"wandb_project": sweep.project} if sweep.project else {}  # W&B's: over the command's
    for key, value in (sweep.options | project).items():
        given = getattr(args, key)
        if given is None or given == defaults[key]:
            setattr(args, key, value)
        elif str(given) != str(value):
            lines.append(f"--{key.replace('_', '-')} {given} given here replaces the sweep file's "
                         f"{value}")
    return lines


@contextmanager
def user_code(key: str, source: str, name: str) -> Iterator[None]:
    """Run the user's scheduler.optimizer or scheduler.search_space: whatever it raises becomes one line."""
    try:
        yield
    except SweepConfigError:
        raise
    except Exception as e:  # noqa: BLE001 (the user's code may raise anything; the user gets one line)
        raise SweepConfigError(f"{key} {name!r} in {source}: {cli.one_line(e)}") from None


def study_factory(sweep: Sweep) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner] | None:
    """scheduler.optimizer: the sampler of the study the user's function makes (W&B's loader and its checks; the
    study's storage and name are this program's --storage and --study) and no pruner, or None if there is none."""
    if "optimizer" not in sweep.scheduler:
        return None
    from wandb.sdk.sweeps.scheduler.client import load_optimizer_config
    from wandb.sdk.sweeps.sweep_info import SweepInfo

    source, name = sweep.scheduler["source"], sweep.scheduler["optimizer"]
    info = SweepInfo(id="local", name=sweep.raw.get("name", ""), entity="", project="", config=sweep.raw,
                     controller_run_name="")
    with user_code("scheduler.optimizer", source, name):
        study, terminator = load_optimizer_config(source, name, optuna.Study, info)
    if terminator is not None:  # the sweep ends at --trials N; a second rule would have to be shared by machines
        raise SweepConfigError(f"scheduler.optimizer {name!r} in {source} returns a terminator, which local_sweep.py "
                               "does not run: return the study alone and bound the sweep with --trials")
    directions = [d.name.lower() for d in study.directions]
    if directions != sweep.directions:
        raise SweepConfigError(f"scheduler.optimizer {name!r} in {source}: study directions {directions} do not match "
                               f"the sweep's metric goals {sweep.directions}")
    # Its pruner (create_study's default is a MedianPruner) is not asked: the objectives are summary values, known
    # when a run ends; under W&B's scheduler too, no history row carries them (README, "Accuracy and cost at once").
    return study.sampler, optuna.pruners.NopPruner()


# ----------------------------------------------------------------------------------------------------------------------
# Storage and scheduling


@dataclass
class Store:
    """Optuna's storage, and how processes on it take turns and tell a dead one: file locks beside a journal file
    (one machine), or PostgreSQL's advisory lock and heartbeats (several machines)."""

    storage: optuna.storages.BaseStorage
    lock_dir: Path | None  # beside the journal file; None: PostgreSQL

    @contextmanager
    def scheduling(self, study: optuna.Study) -> Iterator[None]:
        """Held while a process fails dead trials, counts and asks: two cannot both take the N-th trial."""
        if self.lock_dir is None:  # released with the transaction, or by the server when the connection drops
            with self.storage.engine.begin() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": zlib.crc32(study.study_name.encode())})
                yield
        else:
            lock = self.lock_dir / f"{sweep_space.safe_file_name(study.study_name)}.lock"
            with open(lock, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)  # the kernel releases it when the process dies
                yield

    def trial_lock(self, study: optuna.Study, number: int) -> Path:
        return self.lock_dir / f"{sweep_space.safe_file_name(study.study_name)}.trial-{number}.lock"

    @contextmanager
    def keep_alive(self, study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
        """While the trial runs: an exclusive lock on its lock file (journal), or its heartbeat (PostgreSQL)."""
        if self.lock_dir is not None:
            with open(self.trial_lock(study, trial.number), "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                yield
            return
        storage, stop = self.storage, threading.Event()
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name),
                                                                   trial.number)
        storage.record_heartbeat(trial_id)  # the first beat, inside the scheduling lock: never a trial without one

        def beat() -> None:
            failing = False
            while not stop.wait(storage.get_heartbeat_interval()):
                try:
                    storage.record_heartbeat(trial_id)
                    failing = False
                except Exception as e:  # a database hiccup: the next beat may get through before the grace period
                    if not failing:  # one line for a run of failed beats
                        print(f"trial {trial.number}: heartbeat not written: {storage_failure(e)}", flush=True)
                    failing = True

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def fail_dead_trials(self, study: optuna.Study) -> list[int]:
        """Fail the running trials whose process is gone and queue a retry of each (inside `scheduling`)."""
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if self.lock_dir is None:
            optuna.storages.fail_stale_trials(study)  # with the storage's RetryHeartbeatStaleTrialCallback
            failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            return [t.number for t in failed if t.number in running]
        dead = []
        for number in running:
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


def tell_once(study: optuna.Study, trial: optuna.Trial | int, value: float | None,
              state: TrialState) -> optuna.trial.FrozenTrial | None:
    """study.tell; None if another process ended the trial first (it failed it as dead and queued its retry)."""
    try:
        return study.tell(trial, value, state=state)
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError):  # found finished / finished meanwhile
        return None
    except RuntimeError:
        # GridSampler calls study.stop() from tell once the grid is spent, which outside study.optimize raises
        # after the state was stored (optuna issues 4121, 5141); next_trial's count decides when the study is done
        number = trial if isinstance(trial, int) else trial.number
        stored = study.get_trials(deepcopy=False)[number]
        if stored.state == state:
            return stored
        if stored.state.is_finished():
            return None
        raise


def retry_later(study: optuna.Study, failed: optuna.trial.FrozenTrial) -> None:
    RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, failed)


def open_storage(storage: str | None, runs_dir: Path, heartbeat_interval: int = HEARTBEAT_SECONDS,
                 grace_period: int = GRACE_SECONDS) -> Store:
    """A journal file (default <runs-dir>/optuna-journal.log) for one machine, or postgresql://... for several."""
    if storage is None or "://" not in storage:
        path = Path(storage) if storage else Path(runs_dir) / DEFAULT_STORAGE_FILE
        lock_dir = path.with_name(path.name + ".locks")
        lock_dir.mkdir(parents=True, exist_ok=True)
        sweep_journal.check(path)  # a damaged last line: refused now, before anything is appended after it
        return Store(sweep_journal.SafeJournalStorage(sweep_journal.SafeJournalFile(str(path))), lock_dir)
    url = sqlalchemy.engine.make_url(storage)
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() != "postgresql":
        raise StorageError(f"storage {shown}: use postgresql://... (several machines) or a journal file (one machine)")
    try:
        engine = sqlalchemy.create_engine(url)  # imports the driver
        with engine.begin() as connection:  # machines creating the tables at once would collide in the catalog
            connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK})
            # pool_pre_ping: a pooled connection the server dropped (a restart, an idle timeout) is replaced before
            # use instead of failing the trial's next update (Optuna turns it on only for MySQL)
            rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"pool_pre_ping": True},
                                             heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                             heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                                 max_retry=MAX_RETRIES))
        engine.dispose()
        sessions_in_utc(rdb.engine)
    except ImportError as e:
        module = e.name or url.get_driver_name()
        raise StorageError(f"storage {shown} needs the driver {module!r}, which is not installed: pip install "
                           f"'{DRIVERS.get(module, module)}'") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = cli.one_line(getattr(e, "orig", None) or e)
        raise StorageError(f"cannot open storage {shown}: {reason}") from None
    return Store(rdb, None)


def sessions_in_utc(engine: sqlalchemy.engine.Engine) -> None:
    """Make every session of `engine` keep time in UTC, from its next connection on.

    Optuna's RDBStorage writes a trial's heartbeat as the writer session's now() into a column
    without a time zone (`timestamp`): PostgreSQL stores the wall-clock time of that session's
    TimeZone. It judges it against the reader session's now() with the zone dropped
    (_get_stale_trial_ids). Sessions in other zones (PGTZ, a role's or database's setting, the
    server's default, a daylight-saving change) then see a live trial hours old and fail it, or a
    dead one hours ahead and never retry it. In UTC both are the database server's one clock, in
    one time base. Set after connecting: a PGTZ in the environment overrides a connect option
    (libpq sends it later in the startup packet). The pool is emptied, so no session escapes.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def set_utc(connection: object, record: object) -> None:
        autocommit = connection.autocommit
        connection.autocommit = True  # a SET in a transaction the pool rolls back is undone
        cursor = connection.cursor()
        cursor.execute("SET TIME ZONE 'UTC'")
        cursor.close()
        connection.autocommit = autocommit

    engine.dispose()  # the connections Optuna opened to create its tables: made again, in UTC


def open_study(sweep: Sweep, name: str, store: Store, create: bool = True) -> optuna.Study:
    """Create the study, or load it and check it was made from the same sweep file."""
    sampler, pruner = sweep.optimizer or (sweep_space.make_sampler(sweep),
                                          sweep_space.make_pruner(sweep))
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=store.storage, sampler=sampler, pruner=pruner)
        except KeyError:
            raise SweepConfigError(f"no study {name!r} in this storage: check --study, --storage, --runs-dir") from None
    study = optuna.create_study(study_name=name, storage=store.storage, directions=sweep.directions, sampler=sampler,
                                pruner=pruner, load_if_exists=True)
    if len(sweep.objectives) > 1 and study.metric_names is None:  # Optuna's table and plots then name them
        study.set_metric_names([name for name, _ in sweep.objectives])
    stored = study.user_attrs.get("sweep_config")
    if stored is None:
        study.set_user_attr("sweep_config", sweep.raw)
    elif stored != sweep.raw:
        raise SweepConfigError(f"study {name!r} was created from a different sweep config; use another --study or "
                               "the original file")
    drawn = {key: d for t in study.get_trials(deepcopy=False) for key, d in t.distributions.items()}
    for param in sweep.params:  # an older local_sweep.py may have drawn a parameter otherwise
        before = drawn.get(param.optuna_name)
        try:
            if before is not None and param.distribution is not None:
                optuna.distributions.check_distribution_compatibility(before, param.distribution)
        except ValueError:
            raise SweepConfigError(f"study {name!r} drew {param.name} from {before}, this "
                                   f"local_sweep.py from {param.distribution} (as W&B's engine "
                                   "draws it): continue the sweep under another --study") from None
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


def read_marker(path: Path) -> dict | None:
    """A STUDY_MARKER or TRIAL_MARKER as a dict; None if there is none, or not one."""
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def study_folder(runs_dir: Path, name: str, uid: str | None, claim: bool = True) -> Path:
    """The folder of the study's trial folders and trials.csv: <runs-dir>/<study>, or
    <runs-dir>/<study>-<uid> when that one holds another study of the same name (its own journal
    or database, one shared --runs-dir); <study> as sweep_space.safe_file_name makes it.

    Its STUDY_MARKER says whose it is: written once, exclusively (a hard link fails if the name
    exists, on NFS too), by the first study that `claim`s it; a folder without one (an older
    version's) goes to the first.
    """
    base = sweep_space.safe_file_name(name)
    for folder in (runs_dir / base, runs_dir / f"{base}-{uid}"):
        marker = folder / STUDY_MARKER
        if claim and read_marker(marker) is None:
            folder.mkdir(parents=True, exist_ok=True)
            mine = folder / f"{STUDY_MARKER}.{os.getpid()}.tmp"
            try:
                mine.write_text(json.dumps({"study": name, "uid": uid}) + "\n")
                os.link(mine, marker)
            except FileExistsError:  # another study (or this one, elsewhere) claimed it first
                pass
            finally:
                mine.unlink(missing_ok=True)
        owner = read_marker(marker)
        if owner is None or owner.get("uid") == uid:
            break
    return folder  # the second is this study's alone: no other has its uid


def own_trial_folder(args: argparse.Namespace, study: optuna.Study, trial: optuna.Trial,
                     claim: ExitStack) -> None:
    """Hold the trial's folder for this process (`claim` lets go of it), marked as this trial's.

    FolderInUse if another process holds it; TrialFolderTaken if its TRIAL_MARKER names another
    study's or trial's.
    """
    run_dir = trial_folder(args, trial.number)
    claim.enter_context(own_folder(run_dir, "trial folder"))
    mine = {"study": study.study_name, "uid": args.study_uid, "trial": trial.number}
    found = read_marker(run_dir / TRIAL_MARKER)
    if found not in (None, mine):
        raise TrialFolderTaken(f"trial folder {run_dir} holds trial {found.get('trial')} of study "
                               f"{found.get('study')!r} ({found.get('uid')}), not trial "
                               f"{trial.number} of {study.study_name!r} ({args.study_uid}): move "
                               "it aside")
    write_json_atomic(mine, run_dir / TRIAL_MARKER)


def trial_folder(args: argparse.Namespace, number: int) -> Path:
    return args.study_dir / f"trial-{number:04d}"


def give_up_trial(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    """Fail a trial that cannot start (its folder taken), `why` in trials.csv; queue its retry."""
    trial.set_user_attr("failure", why)
    failed = tell_once(study, trial, None, TrialState.FAIL)
    if failed is not None:
        retry_later(study, failed)


def check_study_data(study: optuna.Study, store: Store, identity: dict) -> None:
    """Record the data the study trains on (its first process does), or check that this process
    has the same: trials on other images or another split would be ranked against each other.
    ConfigError naming both."""
    with store.scheduling(study):
        recorded = study.user_attrs.get("data_identity")
        if recorded is None:
            study.set_user_attr("data_identity", identity)
            return
    if not same_data(recorded, identity):
        raise ConfigError(f"study {study.study_name!r} trains on {describe_data(recorded)}, "
                             f"not on {describe_data(identity)}: pass its --data-dir and "
                             "--val-size, or another --study")


def study_size(trials: int | None, sweep: Sweep,
               timed: bool = False) -> tuple[float, float, str | None]:
    """(finished trials, runs) at which the study ends, and a line where the sweep file's bound and
    --trials differ: --trials counts finished trials, W&B's run_cap and a grid's points count runs
    (next_trial); the smaller ends the study. ConfigError if nothing ends it (`timed`: a
    --time-budget does)."""
    bounds = [(sweep.run_cap, f"run_cap {sweep.run_cap} of the sweep "
                              "file")] if sweep.run_cap else []
    if sweep.method == "grid":
        points = sweep_space.grid_size(sweep)
        bounds.append((points, f"the grid ({points} points, each run once)"))
    if trials is None and not bounds and not timed:
        raise ConfigError("--trials N (N >= 1) is required: the sweep file has neither run_cap "
                             "nor method grid to end the study, and no --time-budget is given")
    runs, by = min(bounds, default=(math.inf, ""))
    if trials is None:
        return math.inf, runs, None
    if runs < trials:
        return trials, runs, f"{by} ends the study after {runs} runs, before --trials {trials}"
    if bounds and trials < runs:
        return trials, runs, f"--trials {trials} ends the study first ({by}: {runs} runs)"
    return trials, runs, None


def next_trial(study: optuna.Study, store: Store, trials: float, target: float | None,
               claim: ExitStack, runs: float = math.inf) -> optuna.Trial | str:
    """A new trial kept alive by `claim`, or "done" (`trials` finished, `runs` run, or the target
    reached), or "wait" (the rest run). A run is a trial that finished or failed for good (a retried
    one counts once), as W&B counts the runs of its run_cap and its grid: a grid point that fails is
    not run again."""
    with store.scheduling(study):
        dead = store.fail_dead_trials(study)
        if dead:
            print(f"trials {dead} lost their process: failed, and queued for a retry", flush=True)
        everyone = study.get_trials(deepcopy=False)
        states = Counter(t.state for t in everyone)
        trained = [t for t in everyone if not is_prior(t)]  # prior runs cost nothing: not counted
        finished = sum(t.state in FINISHED for t in trained)
        retried = {n for t in everyone for n in RetryHeartbeatStaleTrialCallback.retry_history(t)}
        ran = finished + sum(t.state == TrialState.FAIL and t.number not in retried
                             for t in trained)
        reached = target is not None and states[TrialState.COMPLETE] and (
            study.best_value >= target if study.direction.name == "MAXIMIZE"
            else study.best_value <= target)
        if finished >= trials or ran >= runs or reached:
            return "done"
        running = states[TrialState.RUNNING]
        if finished + running >= trials or ran + running >= runs:
            return "wait"
        trial = study.ask()  # a queued retry first, else a new config from the sampler
        claim.enter_context(store.keep_alive(study, trial))
        return trial


# ----------------------------------------------------------------------------------------------------------------------
# One trial


def resume_point(previous: Path, run_dir: Path, expected: dict) -> dict | None:
    """For a retry, the dead attempt's folder copied into this trial's, and its last.pt, if this
    machine can read it and the folder is that attempt's: its TRIAL_MARKER, where it has one (older
    versions wrote none), is `expected` (the study's name and uid, the dead trial's number). Its
    owner.lock and marker are not copied."""
    if not (previous / LAST_CHECKPOINT).is_file():
        return None
    found = read_marker(previous / TRIAL_MARKER)
    if found not in (None, expected):
        print(f"cannot resume: {previous} holds trial {found.get('trial')} of study "
              f"{found.get('study')!r} ({found.get('uid')}), not trial {expected['trial']} of this "
              "study; starting over", flush=True)
        return None
    shutil.copytree(previous, run_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(OWNER_LOCK, TRIAL_MARKER))
    try:
        return load_checkpoint(run_dir / LAST_CHECKPOINT, needs=RESUME_KEYS)
    except CheckpointError as e:
        print(f"cannot resume ({e}); starting over", flush=True)
        return None


@dataclass
class Pruning:
    """A trial's side of early termination: each epoch's metric goes to the study, and after each epoch trained here
    the study's pruner (sweep_space.WandbHyperbandPruner: W&B's Hyperband) may stop the training."""

    trial: optuna.Trial
    metric: str  # the sweep's metric, as part_2_cifar.py logs it every epoch
    maximize: bool
    # False for method custom: its objectives are read from the run's summary at the end, as W&B's Optuna scheduler
    # reads them; a study of several objectives takes no intermediate values (nor can one be pruned)
    prunable: bool = True
    best: float | None = None  # the trial's result: its best value so far

    def report(self, metrics: dict) -> None:
        """The raw value at this epoch, as W&B's history row holds it (strict false is the pruner's affair)."""
        self.trial.set_user_attr("epochs_completed", metrics["epoch"])
        if not self.prunable:
            return
        value = metrics[self.metric]
        self.best = value if self.best is None else max(self.best, value) if self.maximize else min(self.best, value)
        self.trial.report(value, metrics["epoch"])

    def replay(self, history: list[dict]) -> None:
        """A resumed trial's earlier epochs: they count at their bands for every trial, and were decided before the
        crash, so they are not decided again (the next epoch trained is, as W&B checks a resumed run's next row)."""
        for metrics in history:
            self.report(metrics)

    def on_epoch(self, metrics: dict) -> None:
        """part_2_cifar.train's callback after each epoch; raises StopEarly("pruned") when the pruner says stop."""
        self.report(metrics)
        if self.prunable and self.trial.should_prune():
            raise p2.StopEarly("pruned", f"pruned after epoch {metrics['epoch']} by Hyperband: {self.metric} "
                                         f"{metrics[self.metric]:.4g}, best {self.best:.4g}")


def run_trial(args: argparse.Namespace, sweep: Sweep, data: p2.DeviceData, study: optuna.Study, trial: optuna.Trial,
              check_interrupt: Callable[[], None]) -> tuple[int, TrialState, float | list[float] | None]:
    """Train one sampled config, reporting the metric to the pruner every epoch; (exit code, state, value), the
    value a list of the objectives' values for method custom.

    Optuna's and the database's errors come out as they are; a storage error from the epoch callback ends the
    training cleanly first (run_training finishes the W&B run) and comes out as TrialRefused."""
    host = socket.gethostname()
    sampled = sweep.search_space(trial) if sweep.search_space else {p.name: p.sample(trial) for p in sweep.params}
    config = p2.with_defaults(dict(sweep.fixed) | sampled | {"val_size": args.val_size})
    run_dir = trial_folder(args, trial.number)  # held by this process: own_trial_folder
    # A retry's history is a system attr of the frozen trial (Optuna's Trial has none)
    retried = RetryHeartbeatStaleTrialCallback.retry_history(study.get_trials(deepcopy=False)[trial.number])
    resume = None
    if retried:
        dead = {"study": study.study_name, "uid": args.study_uid, "trial": retried[-1]}
        resume = resume_point(trial_folder(args, retried[-1]), run_dir, dead)
    config = resume["config"] if resume else config
    start = f", resuming after epoch {resume['epoch']}" if resume else ", from epoch 1" if retried else ""
    print(f"{host}: trial {trial.number}" + (f" retries trial {retried[-1]}" if retried else "") + start, flush=True)
    nulls = {key: config[key] for key, value in sampled.items() if value is None and key in p2.SETTINGS}
    if nulls:  # the trainer's line under `wandb agent` (run_training gets the config with the defaults filled in)
        print(f"null means the default: {', '.join(f'{k}={v}' for k, v in nulls.items())}", flush=True)
    for key, value in {"config": config, "run_dir": str(run_dir), "host": host, "failure": "",
                       "resumed_after_epoch": resume["epoch"] if resume else 0,
                       "device": device_name(data.train_labels.device)}.items():
        trial.set_user_attr(key, value)  # a retry inherits the dead attempt's attrs: each is set again
    pruning = Pruning(trial, sweep.metric, sweep.direction == "maximize",
                      prunable=not sweep.objectives and sweep.metric in sweep_space.HISTORY_METRICS)
    pruning.replay((resume or {}).get("history", []))  # the epochs the dead attempt finished
    init = {"project": args.wandb_project, "mode": args.wandb_mode, "group": study.study_name,
            "job_type": "local_sweep", "name": f"{study.study_name}-trial-{trial.number}", "reinit": "finish_previous"}
    if sweep.entity:  # the sweep file's: where `wandb sync` puts the runs, as W&B puts a sweep's
        init["entity"] = sweep.entity
    guarded_on_epoch, refused = refusals_end_training(trial.number, pruning.on_epoch)
    code, summary = p2.run_training(config, lambda: data, run_dir, init, check_interrupt=check_interrupt,
                                    resume=resume, on_epoch=guarded_on_epoch, in_sweep=True, log_model=False,
                                    how_to_continue=f"trial {trial.number} is failed and queued for a retry: run "
                                                    "the same command again to continue")
    if refused:
        raise refused[0]
    trial.set_user_attr("test_accuracy", summary.get("test_accuracy"))
    status = summary["status"]
    if status == "diverged":
        trial.set_user_attr("failure", f"diverged: non-finite training loss after epoch {summary['epochs_completed']}")
    elif code != 0:
        trial.set_user_attr("failure", summary.get("error") or f"{status} (exit code {code})")
    return code, *trial_outcome(sweep, summary, code)


def summary_value(summary: dict, name: str) -> object:
    """The number `name` as the run's W&B summary holds it: a history metric's last value, else the
    summary's."""
    if name in sweep_space.HISTORY_METRICS:
        return (summary.get("history") or [{}])[-1].get(name)
    return summary.get(name)


# ----------------------------------------------------------------------------------------------------------------------
# Workers


def work(args: argparse.Namespace, sweep: Sweep, data: p2.DeviceData, study: optuna.Study, store: Store,
         trials: float, runs: float = math.inf, budget: TimeBudget | None = None) -> int:
    """Run trials until the study has `trials` finished ones or `runs` runs (next_trial), or
    `budget` is spent; return an exit code. A stop signal (any of cli.STOP_SIGNALS the caller does
    not ignore) stops training between steps: the trial is failed and queued for a retry, and the
    worker exits 128 + signal."""
    failures = 0
    with cli.StopOnSignal() as stop:

        def check_interrupt() -> None:
            stop.check()
            if args.worker_of is not None and os.getppid() != args.worker_of:
                raise cli.Interrupted(signal.SIGHUP)  # the launcher was killed: stop as if the terminal hung up

        while True:
            try:
                check_interrupt()
            except cli.Interrupted as e:
                print(f"interrupted by {signal.Signals(e.signum).name} before a trial started: run the same command "
                      "again to continue", file=sys.stderr, flush=True)
                return cli.stopped_by(e.signum)
            if budget is not None and budget.spent(study):
                return cli.EXIT_DONE
            with ExitStack() as claim:
                trial = next_trial(study, store, trials, sweep.target, claim, runs)
                if trial == "done":
                    return cli.EXIT_DONE
                if trial == "wait":
                    time.sleep(1 if store.lock_dir else store.storage.get_heartbeat_interval())
                    continue
                try:
                    own_trial_folder(args, study, trial, claim)
                except (FolderInUse, TrialFolderTaken) as e:  # its retry gets another folder
                    give_up_trial(study, trial, str(e))
                    return cli.fail(e)
                try:
                    with refusals(trial.number):
                        code, state, value = run_trial(args, sweep, data, study, trial, check_interrupt)
                        frozen = tell_once(study, trial, value, state)
                        if frozen is None:  # tell found it failed
                            raise TrialRefused(trial.number, optuna.exceptions.UpdateFinishedTrialError())
                except TrialRefused as e:
                    # Its last.pt stays for the retry: queued by whoever failed it, or by the dead-trial rule once
                    # this process lets go of it. A signal that came meanwhile ends the loop at its top.
                    if isinstance(e.error, JOURNAL_TO_FIX):  # the user's to fix: this process ends
                        return cli.fail(e.error)
                    if not e.shown:
                        print(e, flush=True)
                    continue
                except cli.FileFailed as e:  # a full disk, a folder gone: so would every next trial
                    give_up_for_a_retry(study, trial, str(e))
                    return cli.fail(e)
            if code > 128:  # interrupted (run_training printed the line): queue it again, so the same command
                retry_later(study, frozen)  # continues it
                return code
            failures = failures + 1 if state == TrialState.FAIL else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                return cli.fail(f"{failures} trials in a row failed (last: {frozen.user_attrs.get('failure')}); "
                                "stopping", cli.EXIT_FAILED)


def give_up_for_a_retry(study: optuna.Study, trial: optuna.Trial, failure: str) -> None:
    """Fail `trial` with `failure` and queue its retry, which continues from its last.pt. If the
    storage fails too (a journal on the same full disk), the dead-trial rule does it once this
    process has let go of the trial."""
    try:
        trial.set_user_attr("failure", failure)
        frozen = tell_once(study, trial, None, TrialState.FAIL)
        if frozen is not None:
            retry_later(study, frozen)
    except (*STORAGE_FAILED, *JOURNAL_TO_FIX):
        pass


def launch_workers(argv: list[str], workers: int) -> int:
    """Start `workers` copies of this program as worker processes on the same study; wait; pass on stop signals
    (cli.passed_on). Exit code: 128 + the first stop signal received, else the workers' worst."""
    procs: list[subprocess.Popen] = []
    with cli.StopOnSignal() as stop:  # main's: a signal that came while the study opened starts no worker
        if stop.signum is not None:
            print(f"interrupted by {signal.Signals(stop.signum).name} before the workers started: run the same "
                  "command again", file=sys.stderr, flush=True)
            return cli.stopped_by(stop.signum)
        for index, gpu in enumerate(cli.gpu_slots(workers)):
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker-of", str(os.getpid())]
            procs.append(subprocess.Popen(cmd, env=cli.worker_env(gpu, workers)))
            print(f"worker {index}: pid {procs[-1].pid}" + (f", CUDA_VISIBLE_DEVICES={gpu}" if gpu else ""),
                  flush=True)
        forwarded = False
        while any(proc.poll() is None for proc in procs):
            try:
                if stop.signum is not None and not forwarded:
                    for proc in procs:
                        if proc.poll() is None:
                            proc.send_signal(cli.passed_on(stop.signum))
                    forwarded = True
                time.sleep(0.2)
            except KeyboardInterrupt:  # Ctrl-C twice: the workers got it too (one process group) and stop now
                pass
    codes = [proc.returncode for proc in procs]
    return cli.stopped_by(stop.signum) if stop.signum is not None else max(codes, key=abs)


# --------------------------------------------------------------------------------------------------
# Never paying twice for a training: prior runs, starting points, a seeded sampler, a time budget
# (README, "Runs already trained, starting points, seeds, a time budget")

ENDED_RUNS = ("finished", "diverged", "pruned")  # a run folder with this status holds a result
TIME_SPENT = "time_spent:"  # study user attrs: [start, end], Unix seconds, of each budgeted process
TIME_WRITE_SECONDS = 30  # a waiting process looks each second, and writes its time this often


class WarmStartError(cli.CommandError):
    """--prior-runs, --start-from or --sampler-seed asks for what this sweep cannot take."""

    exit_code = cli.EXIT_BAD_INPUT


def is_prior(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial made from a run folder on disk: it cost this study nothing, --trials ignores it."""
    return trial.user_attrs.get("origin") == sweep_report.PRIOR_RUN


def per_epoch(sweep: Sweep) -> bool:
    """The sweep's value is read from every epoch's history row (and Hyperband may prune on it), not
    from the summary at the end (method custom's objectives, a summary metric)."""
    return not sweep.objectives and sweep.metric in sweep_space.HISTORY_METRICS


def trial_outcome(sweep: Sweep, summary: dict,
                  code: int = cli.EXIT_DONE) -> tuple[TrialState, float | list | None]:
    """What a run tells the study, from its summary and exit code: PRUNED if Hyperband stopped it;
    else COMPLETE with W&B's value of a run (SweepRun.metric_extremum: the best of the metric over
    its history rows, or its summary's number; method custom: each objective's summary value); FAIL
    if there is none (diverged before any epoch, failed) or `code` is not 0."""
    if summary.get("status") == "pruned":
        return TrialState.PRUNED, None
    if sweep.objectives:  # every objective a number, or the run taught the search nothing
        values = [summary_value(summary, name) for name, _ in sweep.objectives]
        if code != 0 or not all(finite_number(v) for v in values):
            return TrialState.FAIL, None
        return TrialState.COMPLETE, values
    if per_epoch(sweep):
        rows = [m[sweep.metric] for m in summary.get("history") or [] if sweep.metric in m]
        value = (max if sweep.direction == "maximize" else min)(rows, default=None)
    else:
        value = summary_value(summary, sweep.metric)
    if code != 0 or not finite_number(value):
        return TrialState.FAIL, None
    return TrialState.COMPLETE, value


def draw_of(param: sweep_space.Param, value: object, default: object) -> object:
    """Optuna's draw that makes `param` give `value` (the inverse of Param.value; a `null` choice
    gives the trainer's `default`); ValueError with the reason if no draw does."""
    d = param.distribution
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        if value in d.choices:
            return value
        if None in d.choices and value == default:
            return None
        raise ValueError("not one of its values")
    if param.ppf is not None:
        return quantile_of(param, value)
    if not finite_number(value):
        raise ValueError("not a number")
    x = float(value)
    inside = d.low <= x <= d.high
    if d.step is not None:
        x = d.low + round((x - d.low) / d.step) * d.step
    x = min(max(x, d.low), d.high)  # a q_ kind's rounding can give a value just past a bound
    x = int(round(x)) if isinstance(d, optuna.distributions.IntDistribution) else x
    if not same_value(param.value(x), value):
        raise ValueError("not on its steps" if inside else "outside its range")
    return x


def same_value(a: object, b: object) -> bool:
    if finite_number(a) and finite_number(b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def quantile_of(param: sweep_space.Param, value: object, grid: int = 2000) -> float:
    """The quantile Optuna draws for a kind Optuna has no distribution for (Param.ppf: the normal
    family, beta, values with probabilities) that gives `value`: by bisection, as ppf rises with
    the quantile; else (values with probabilities in no numeric order) the first of `grid` evenly
    spaced quantiles that gives it. ValueError if none does."""
    first, last = sweep_space.QUANTILE.low, sweep_space.QUANTILE.high
    if finite_number(value) and all(finite_number(param.ppf(u)) for u in (first, last)):
        low, high = first, last
        for _ in range(64):  # to the float resolution of the quantile
            middle = (low + high) / 2
            drawn = param.ppf(middle)
            if not finite_number(drawn):  # values with probabilities, some not numbers
                break
            low, high = (middle, high) if drawn < value else (low, middle)
        else:
            if same_value(param.value(high), value):
                return high
    quantiles = (first + i * (last - first) / grid for i in range(grid + 1))
    found = next((u for u in quantiles if same_value(param.value(u), value)), None)
    if found is None:
        raise ValueError("a value its distribution does not give")
    return found


def space_point(sweep: Sweep, config: dict) -> dict:
    """Optuna's params of the trial of `sweep` that trains `config`, one per swept key it names (a
    run's whole config, or the keys a starting point names). ValueError with the reason if no trial
    trains it: a swept value its parameter cannot take, another setting than every trial trains (the
    sweep's constant, its command's value, else the trainer's default), a key the trainer does not
    have. val_size is --val-size's and is checked with the data."""
    swept = {p.name: p for p in sweep.params}
    params = {}
    for key, value in config.items():
        if key == "val_size":
            continue
        if key not in p2.SETTINGS:
            raise ValueError(f"{key!r} is not a part_2_cifar.py setting")
        param = swept.get(key)
        if param is None or param.distribution is None:
            constant = param is not None and param.constant is not None
            trained = param.constant if constant else sweep.fixed.get(key, p2.DEFAULTS[key])
            if value != trained:
                raise ValueError(f"{key}={value}, but the sweep's trials train {key}={trained}")
            continue
        try:
            params[param.optuna_name] = draw_of(param, value, p2.DEFAULTS[key])
        except ValueError as e:
            raise ValueError(f"{key}={value} is {e}: the sweep's {key} is "
                             f"{json.dumps(sweep.raw['parameters'][key])}") from None
    return params


def prior_trial(sweep: Sweep, run_dir: Path, summary: dict, identity: dict,
                **attrs: str) -> optuna.trial.FrozenTrial:
    """The finished trial the run in `run_dir` (its `summary`) makes in a study of `sweep` on the
    data `identity`: the state and value it would have had as a trial (trial_outcome; a pruned
    one's value its last, as Optuna's tell gives it), its metric at every epoch as intermediate
    values for the pruner, its training time as duration, `attrs` as more user attrs. ValueError
    with the reason if the run does not belong: not ended, other data, a config outside the sweep,
    no metric value."""
    status = summary.get("status")
    if status not in ENDED_RUNS:
        raise ValueError(f"its status is {status!r}, not a result ({', '.join(ENDED_RUNS)})")
    recorded = summary.get("data")
    if not isinstance(recorded, dict) or not recorded:
        raise ValueError("its summary.json does not record its data (an older version wrote it)")
    if not same_data(recorded, identity):
        raise ValueError(f"trained on other data: {describe_data(recorded)}")
    if not isinstance(summary.get("config"), dict):
        raise ValueError("its summary.json has no config")
    config = p2.with_defaults(summary["config"])  # a setting added since: it trained the default
    params = space_point(sweep, config)
    history = summary.get("history") if isinstance(summary.get("history"), list) else []
    if per_epoch(sweep) and not all(finite_number(m.get(sweep.metric)) for m in history):
        raise ValueError(f"its history has no {sweep.metric} at every epoch")
    read = [] if per_epoch(sweep) else [name for name, _ in sweep.objectives] or [sweep.metric]
    if status == "finished" and not all(finite_number(summary_value(summary, n)) for n in read):
        raise ValueError(f"its summary has no number for each of {', '.join(read)}")
    state, value = trial_outcome(sweep, summary)
    epochs = summary.get("epochs_completed")
    curve = {e: m[sweep.metric] for e, m in enumerate(history, 1)} if per_epoch(sweep) else {}
    if state == TrialState.PRUNED and curve:
        value = curve[max(curve)]
    values = value if isinstance(value, list) else None if value is None else [value]
    distributions = {p.optuna_name: p.distribution for p in sweep.params if p.optuna_name in params}
    trial = optuna.trial.create_trial(
        state=state, values=values, params=params, distributions=distributions,
        intermediate_values=curve,
        user_attrs={"origin": sweep_report.PRIOR_RUN, "config": config, "epochs_completed": epochs,
                    "test_accuracy": summary.get("test_accuracy"), "run_dir": str(run_dir),
                    "device": summary.get("device", ""),
                    "failure": f"diverged after epoch {epochs}" if status == "diverged" else "",
                    **attrs})
    with contextlib.suppress(OSError, KeyError, TypeError, ValueError):  # else now, and 0 s
        trial.datetime_complete = datetime.fromtimestamp((run_dir / SUMMARY_FILE).stat().st_mtime)
        trial.datetime_start = trial.datetime_complete - timedelta(seconds=summary["total_seconds"])
    return trial


def summary_key(summary: dict) -> str:
    """What tells one run from another, however its folder is named or copied: a hash."""
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]


def add_prior_runs(study: optuna.Study, sweep: Sweep, folders: list[Path], identity: dict) -> None:
    """Each run under `folders` (runs folders or run folders) that belongs becomes a finished
    trial of the study; each other one is one line with the reason. A run the study has (added
    before, or the folder of one of its own trials, wherever found) is not added again."""
    trials = study.get_trials(deepcopy=False)
    known = {t.user_attrs.get("prior_run") for t in trials if is_prior(t)}
    own = [read_summary(Path(t.user_attrs["run_dir"])) for t in trials
           if not is_prior(t) and "run_dir" in t.user_attrs]
    own_keys = {summary_key(summary) for summary in own if summary is not None}
    added, already, skipped = Counter(), 0, 0
    for folder in folders:
        runs = summaries_under(folder)
        if not runs:
            print(f"--prior-runs {folder}: no run folder (a summary.json) under it", flush=True)
        for run_dir, summary in runs:
            key = summary_key(summary) if summary is not None else None
            if key in own_keys:  # this study's own trial
                continue
            if key in known:
                already += 1
                continue
            try:
                if summary is None:
                    raise ValueError("its summary.json cannot be read")
                trial = prior_trial(sweep, run_dir, summary, identity, prior_run=key)
            except ValueError as e:
                print(f"prior run {run_dir} skipped: {e}", flush=True)
                skipped += 1
                continue
            study.add_trial(trial)
            known.add(key)
            added[trial.state.name] += 1
    states = f" ({sweep_report.states_line(added)})" if added else ""
    print(f"prior runs: {sum(added.values())} added{states}, {already} already in the study, "
          f"{skipped} skipped", flush=True)


def read_configs(path: Path) -> list:
    """The configurations a --start-from file holds: JSON or YAML, one mapping or a list of them."""
    try:
        text = path.read_text()
    except OSError as e:
        raise WarmStartError(f"--start-from {path}: cannot read it: {e.strerror}") from None
    try:  # JSON first: YAML 1.1 would read a number such as 1e-05 as text
        configs = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            configs = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise WarmStartError(f"--start-from {path} is not valid JSON or YAML: "
                                 f"{str(e).splitlines()[0]}") from None
    configs = configs if isinstance(configs, list) else [configs]
    if not configs or not all(isinstance(c, dict) and c for c in configs):
        raise WarmStartError(f"--start-from {path}: expected a configuration such as "
                             "{\"learning_rate\": 0.005}, or a list of them")
    return configs


def start_points(path: Path, sweep: Sweep) -> list[dict]:
    """Optuna's params of each configuration --start-from PATH names: a run folder (every setting
    of its summary.json's config) or a file (read_configs; the keys each names, the sampler draws
    the rest). WarmStartError naming the file and the reason for one no trial of the sweep
    trains."""
    if path.is_dir():
        summary = read_summary(path)
        if summary is None or not isinstance(summary.get("config"), dict):
            raise WarmStartError(f"--start-from {path}: a run folder needs its summary.json (a run "
                                 "that ended)")
        configs = [p2.with_defaults(summary["config"])]
    else:
        configs = read_configs(path)
    points = []
    for number, config in enumerate(configs, 1):
        where = f"--start-from {path}" + (f", configuration {number}" if len(configs) > 1 else "")
        try:
            parsed = p2.validate_config(config)  # YAML's "0.005" a number; a bad value one line
            params = space_point(sweep, {key: parsed[key] for key in config})
        except ValueError as e:  # ConfigError is one
            raise WarmStartError(f"{where}: {e}") from None
        if not params:
            varied = ", ".join(p.name for p in sweep.params if p.distribution is not None)
            raise WarmStartError(f"{where}: names no setting this sweep varies ({varied})")
        points.append(params)
    return points


@dataclass
class WarmStart:
    """What the study starts from: --prior-runs (finished trials) and --start-from (the first
    trials it trains)."""

    prior_runs: list[Path]
    points: list[tuple[Path, dict]]  # (the --start-from path, Optuna params), in the order given

    @classmethod
    def from_args(cls, args: argparse.Namespace, sweep: Sweep) -> WarmStart:
        """The options checked against the sweep, the starting points read; before data loads."""
        given = [option for option, value in (("--prior-runs", args.prior_runs),
                                              ("--start-from", args.start_from)) if value]
        if given and sweep.method == "grid":
            raise WarmStartError(f"{given[0]} with method grid: a grid sweep trains every point of "
                                 "its grid in its own order; use method bayes or random")
        if given and sweep.search_space is not None:
            raise WarmStartError(f"{given[0]}: scheduler.search_space defines the parameters in "
                                 "code, where a config cannot be matched; use a parameters section")
        if args.sampler_seed is not None and "optimizer" in sweep.scheduler:
            raise WarmStartError("--sampler-seed: scheduler.optimizer makes its own sampler; "
                                 "seed it there")
        for folder in args.prior_runs:
            if not folder.is_dir():
                raise WarmStartError(f"--prior-runs {folder}: no such folder; give a runs folder "
                                     "or a run folder")
        return cls(args.prior_runs, [(path, params) for path in args.start_from
                                     for params in start_points(path, sweep)])

    def apply(self, study: optuna.Study, store: Store, sweep: Sweep,
              identity: Callable[[], dict]) -> None:
        """Prior runs become finished trials, then the starting points are queued, under the
        scheduling lock: a second process (another machine's, the same command again) finds them
        and adds nothing. `identity()` is the data's run_files.data_identity, asked for only if needed."""
        if not self.prior_runs and not self.points:
            return
        fingerprint = identity() if self.prior_runs else {}
        with store.scheduling(study):
            if self.prior_runs:
                add_prior_runs(study, sweep, self.prior_runs, fingerprint)
            for path, params in self.points:
                count = len(study.get_trials(deepcopy=False))
                # Not twice: a rerun finds it queued or trained; a prior run of it is known already
                study.enqueue_trial(params, user_attrs={"origin": sweep_report.START_POINT},
                                    skip_if_exists=True)
                queued = len(study.get_trials(deepcopy=False)) > count
                said = f"trial {count}, before the sampler's" if queued else "already in the study"
                print(f"start point from {path}: {said}", flush=True)


def data_fingerprint(source: CifarSource, val_size: int) -> dict:
    """run_files.data_identity of the data the trials train on, without a device (for the launcher)."""
    train_x, train_y, test_x, test_y = load_cifar100(source)
    return data_identity(source.path, (train_x, train_y), (test_x, test_y), val_size, p2.SPLIT_SEED)


class SeededSampler(optuna.samplers.BaseSampler):
    """The sweep's sampler made anew for each trial, seeded with (--sampler-seed, how many trials
    the sampler drew before it): the same study gives the same draw, in one command or over resumed
    ones. A queued trial (a starting point, a retry) or a prior run has its params and takes no
    draw, so a retry does not shift the draws after it."""

    def __init__(self, sweep: Sweep, seed: int):
        self.sweep, self.seed = sweep, seed
        self.current = sweep_space.make_sampler(sweep, seed)

    @staticmethod
    def drew(trial: optuna.trial.FrozenTrial) -> bool:
        return not ({"fixed_params", "failed_trial"} & set(trial.system_attrs) or is_prior(trial))

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        draws = sum(map(self.drew, before))
        digest = hashlib.sha256(f"{self.seed}/{draws}".encode()).digest()
        self.current = sweep_space.make_sampler(self.sweep, int.from_bytes(digest[:4], "little"))
        self.current.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study,
                                    trial: optuna.trial.FrozenTrial) -> dict:
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                        search_space: dict) -> dict:
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                           param_name: str, distribution: optuna.distributions.BaseDistribution):
        return self.current.sample_independent(study, trial, param_name, distribution)

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: TrialState,
                    values: list[float] | None) -> None:
        self.current.after_trial(study, trial, state, values)


def seeded_sampler(sweep: Sweep, seed: int) -> optuna.samplers.BaseSampler:
    """--sampler-seed's sampler: bayes and random draw per trial (SeededSampler); a grid's order is
    fixed without a seed (sweep_space.make_sampler)."""
    if sweep.method == "grid":
        return sweep_space.make_sampler(sweep)
    return SeededSampler(sweep, seed)


def duration(text: str) -> float:
    """An argparse type: seconds from '5400', '90m', '1.5h', '2d' (s, m, h, d)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration: use seconds, or a number "
                                         "with s, m, h or d (90m, 1.5h)")
    return seconds


def wall_seconds(intervals: list) -> float:
    """The time [start, end] intervals cover, overlaps counted once (seconds)."""
    total, covered_to = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > covered_to:
            total += end - max(start, covered_to)
            covered_to = end
    return total


@dataclass
class TimeBudget:
    """--time-budget: the study's wall time, over every process that worked on it with a budget
    (this one from its start; earlier commands, other workers and machines as they recorded theirs
    in the study), overlaps counted once. Once spent no new trial starts; running ones finish."""

    seconds: float
    started: float = field(default_factory=time.time)  # Unix time: machines' intervals compare
    written: float = -math.inf  # time.monotonic() of this process's last write
    said: bool = False

    @property
    def key(self) -> str:  # this process's user attr in the study
        return f"{TIME_SPENT}{socket.gethostname()}:{os.getpid()}:{self.started:.3f}"

    def record(self, study: optuna.Study, force: bool = False) -> float:
        """Write this process's interval into the study (at most every TIME_WRITE_SECONDS unless
        `force`); the study's wall time so far (seconds)."""
        mine = [self.started, time.time()]
        if force or time.monotonic() - self.written >= TIME_WRITE_SECONDS:
            study.set_user_attr(self.key, mine)
            self.written = time.monotonic()
        spans = {k: v for k, v in study.user_attrs.items() if k.startswith(TIME_SPENT)}
        return wall_seconds(list((spans | {self.key: mine}).values()))

    def spent(self, study: optuna.Study) -> bool:
        """True once the budget is spent, said in one line (once)."""
        seconds = self.record(study)
        if seconds < self.seconds:
            return False
        if not self.said:
            print(f"time budget {self.seconds:g} s spent ({seconds:.1f} s of wall time on study "
                  f"{study.study_name}): no new trial starts; a running one trains to its end",
                  flush=True)
            self.said = True
        return True


# ----------------------------------------------------------------------------------------------------------------------
# Command line and main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.OneLineErrorParser(__doc__, parents=(p2.shared_options(),))
    parser.add_argument("sweep_config", type=Path, help="a W&B sweep file (JSON or YAML), e.g. sweep_config.json")
    parser.add_argument("--trials", type=cli.positive_int,
                        help="finished (COMPLETE + PRUNED) trials the study trains, prior runs "
                             "aside (required unless --report, --time-budget, or the sweep file "
                             "has run_cap or method grid)")
    parser.add_argument("--study", help="study name (default: the sweep file's name, e.g. sweep_config)")
    parser.add_argument("--storage", help=f"journal file (default <runs-dir>/{DEFAULT_STORAGE_FILE}) for one machine, "
                        "or postgresql://user:password@host/database to share the study between machines")
    parser.add_argument("--workers", type=cli.positive_int, default=1, help="worker processes here, spread over GPUs")
    parser.add_argument("--heartbeat-interval", type=cli.positive_int, default=HEARTBEAT_SECONDS, metavar="SECONDS",
                        help=f"PostgreSQL: how often a running trial says it lives (default {HEARTBEAT_SECONDS})")
    parser.add_argument("--grace-period", type=cli.positive_int, default=GRACE_SECONDS, metavar="SECONDS",
                        help=f"PostgreSQL: a trial silent this long is failed and retried (default {GRACE_SECONDS})")
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plots of the study")
    parser.add_argument("--images-dir", type=Path, default=Path("images"), help="where the plots go (default images)")
    parser.add_argument("--prior-runs", type=Path, action="append", default=[], metavar="FOLDER",
                        help="a runs folder or a run folder: its runs on the same data and inside "
                        "the sweep become finished trials first (repeatable; never added twice)")
    parser.add_argument("--start-from", type=Path, action="append", default=[],
                        metavar="FILE_OR_RUN", help="configurations to train first: a JSON/YAML "
                        "file (one or a list) or a run folder (repeatable)")
    parser.add_argument("--sampler-seed", type=int, metavar="N",
                        help="seed the sampler: the same command on the same file draws the same "
                        "trials")
    parser.add_argument("--time-budget", type=duration, metavar="TIME",
                        help="start no new trial once the study has run this long (seconds, or "
                        "90m, 1.5h, 2d), over resumed commands too; running trials finish")
    parser.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # set by launch_workers
    return parser.parse_args(argv)  # --trials may come from the sweep file: study_size


def main(argv: list[str] | None = None) -> int:
    """The command. Exit codes (cli.EXIT_CODES): 0 the study is done (or the report written); 1 a
    failure at run time (a storage or download that fails, trials failing in a row, a full disk); 2
    a bad value or a file to fix (the sweep file, a damaged journal, the data set); 128+n stopped
    by signal n. Its one boundary is cli.boundary; a trial a failure leaves running is failed and
    retried by the dead-trial rule."""
    with cli.StopOnSignal():  # from the first line, as in the trainer; work() and launch_workers() share its signal
        try:
            return run_sweep(sys.argv[1:] if argv is None else argv)
        except BaseException as e:  # Ctrl-C twice outside a trial (a trial ends itself): "stop now"
            return cli.boundary(as_storage_error(e),
                                stopped="run the same command again to continue")


def as_storage_error(e: BaseException) -> BaseException:
    """A failure of the study's storage (STORAGE_FAILED) as the StorageError of its one line: the
    database's own words, which Optuna's StorageInternalError hides; any other error as it is."""
    if isinstance(e, STORAGE_FAILED):
        return StorageError(f"{storage_failure(e)}; run the same command again once it answers")
    return e


def write_report(study: optuna.Study, sweep: Sweep, folder: Path, args: argparse.Namespace) -> int:
    """sweep_report.write_report, stopped at once by a stop signal, even inside Optuna or matplotlib
    (nothing in it is worth finishing: every file it writes is whole or not there); EXIT_DONE. A
    file it cannot write says that the study itself is whole in its storage."""
    with cli.InterruptOnSignal() as stop:
        stop.check()  # a signal that came before
        try:
            sweep_report.write_report(study, sweep, folder, args.images_dir)
        except cli.FileFailed as e:
            e.kept = (f"the study is whole in its storage: write the report again with "
                      f"{args.sweep_config} --report")
            raise
        stop.check()  # one a library swallowed after all
    return cli.EXIT_DONE


def run_sweep(argv: list[str]) -> int:
    """Everything main does, under its stop signals."""
    args = parse_args(argv)
    budget = TimeBudget(args.time_budget) if args.time_budget else None  # loading data counts too
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry, plots
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
    # Everything the sweep file and the options decide comes first: a refused file leaves nothing
    # behind
    sweep = load_sweep(args.sweep_config)
    said = [*sweep.notes, *sweep_options(args, sweep)]  # its command may set --runs-dir, ...
    for line in said if args.worker_of is None else []:  # the launcher says it, not each worker
        print(f"note: {line}", flush=True)
    for option, folder in (("--runs-dir", args.runs_dir), ("--images-dir", args.images_dir)):
        if why := unwritable(folder):
            raise ConfigError(f"{option} {folder} cannot be written: {why}; use a folder you "
                                 "can write to")
    warm = WarmStart.from_args(args, sweep)
    if not args.report:
        trials, runs, line = study_size(args.trials, sweep, timed=budget is not None)
        if line and args.worker_of is None:
            print(line, flush=True)
        args.val_size = p2.validate_config({"val_size": args.val_size})["val_size"]
        args.wandb_mode = resolve_wandb_mode(args.wandb_mode)  # once, for every trial's run
    store = open_storage(args.storage, args.runs_dir, args.heartbeat_interval, args.grace_period)
    name = args.study or sweep.name or args.sweep_config.stem
    study = open_study(sweep, name, store, create=not args.report)
    if args.report:  # it only reads: a read-only journal works, an older version's has no uid
        folder = study_folder(args.runs_dir, study.study_name, study.user_attrs.get("uid"),
                              claim=False)
        return write_report(study, sweep, folder, args)
    if args.sampler_seed is not None:
        study.sampler = seeded_sampler(sweep, args.sampler_seed)
    device = pick_device(args.device)
    source = cifar100_source(args.data_dir)  # found (or fetched) once, before any worker starts
    args.study_uid = study_uid(study, store)  # trial folders are named and marked by it
    args.study_dir = study_folder(args.runs_dir, study.study_name, args.study_uid)
    if args.workers > 1 and args.worker_of is None:
        warm.apply(study, store, sweep, lambda: data_fingerprint(source, args.val_size))
        code = launch_workers(argv, args.workers)
        if code < cli.SIGNAL_BASE:  # the workers ended on their own, not stopped: the report
            write_report(study, sweep, args.study_dir, args)
        return code
    data = p2.prepare_data(source, args.val_size, device)
    check_study_data(study, store, data.identity)  # its trials are ranked against each other
    if args.worker_of is None:  # a worker's launcher did it
        warm.apply(study, store, sweep, lambda: data.identity)
    if "data" not in study.user_attrs:
        study.set_user_attr("data", f"{args.data_dir.resolve().name} ({data.train_labels.numel()} train / "
                                    f"{data.val_labels.numel()} val images)")
    started = time.perf_counter()
    code = work(args, sweep, data, study, store, trials, runs, budget)
    if budget is not None:  # the time since the last trial began, an interrupted one's included
        budget.record(study, force=True)
    print(f"{socket.gethostname()} pid {os.getpid()} stopped after {time.perf_counter() - started:.0f} s", flush=True)
    if args.worker_of is None and code == 0:
        return write_report(study, sweep, args.study_dir, args)
    return code


if __name__ == "__main__":
    sys.exit(main())
