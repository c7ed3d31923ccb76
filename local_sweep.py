"""Run the W&B sweep in sweep_config.json without a W&B server: Optuna samples, prunes, schedules
and stores the trials, on one machine (a journal file) or on several that share a PostgreSQL
database (README, "Several machines").

    python local_sweep.py sweep_config.json --trials 30              # one GPU (or CPU), resumable
    python local_sweep.py sweep_config.json --trials 60 --workers 4  # 4 workers over the GPUs
    python local_sweep.py sweep_config.json --trials 200 --storage postgresql://user:pw@db/optuna
    python local_sweep.py sweep_config.json --report                 # table and plots of a study
    python local_sweep.py sweep_config.json --trials 30 --prior-runs runs/  # runs on disk first
    python local_sweep.py sweep_config.json --time-budget 8h --start-from good.yaml --sampler-seed 7

Each trial is one part_2_cifar.run_training in <runs-dir>/<study>/trial-NNNN. The library is the
sweep wing's, cifarkit/sweeps/: the sweep file's translation (space.py), the study's storage and its
turns (storage.py), its folders (folders.py), prior runs, starting points, the seeded sampler and
the time budget (warm_start.py), the journal file (journal.py), the report (report.py).
"""

from __future__ import annotations

# Run as a program, a stop signal while the imports below run (torch takes a second) is one line
# and exit 128 + n, as from main on (cli.StopWhileImporting)
if __name__ == "__main__":
    from cifarkit.core.cli import stop_while_importing

    stop_while_importing()

import argparse
import dataclasses
import io
import math
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, redirect_stderr
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import part_2_cifar as p2
from cifarkit.core import cli
from cifarkit.core.cifar_files import CifarSource, cifar100_source, load_cifar100
from cifarkit.core.folders import FolderInUse, unwritable
from cifarkit.core.machine import device_name, pick_device
from cifarkit.core.run_files import data_identity, describe_data, same_data
from cifarkit.core.settings import ConfigError
from cifarkit.core.wandb_connect import resolve_wandb_mode
from cifarkit.sweeps import report, space
from cifarkit.sweeps.folders import (
    DamagedMarker,
    TrialFolderTaken,
    own_trial_folder,
    resume_point,
    study_folder,
    trial_folder,
)
from cifarkit.sweeps.space import Sweep, SweepConfigError
from cifarkit.sweeps.storage import (
    DEFAULT_STORAGE_FILE,
    GRACE_SECONDS,
    HEARTBEAT_SECONDS,
    JOURNAL_TO_FIX,
    STORAGE_FAILED,
    Store,
    as_storage_error,
    ended_for_idling,
    open_storage,
    open_study,
    retry_later,
    session_lost,
    storage_failure,
    study_uid,
    tell_once,
)
from cifarkit.sweeps.warm_start import (
    TimeBudget,
    WarmStart,
    duration,
    is_prior,
    seeded_sampler,
    trial_outcome,
)

# --------------------------------------------------------------------------------------------------
# Settings

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts (prior runs aside)
# a process stops after this many failed trials in a row (out of memory, bad configs)
MAX_FAILURES_IN_A_ROW = 5
# sessions the database may end or drop in a row while this process asks for a trial
MAX_SESSIONS_LOST = 3


class TrialRefused(p2.StopEarly):
    """The storage refused or failed an update of a running trial: another process failed it
    meanwhile (its heartbeat came late: this machine stalled), the storage failed, or the journal is
    damaged. Raised from the epoch callback it ends the training after that epoch, as pruning does,
    with last.pt kept for the retry."""

    def __init__(self, number: int, error: BaseException):
        self.error, self.shown = error, False
        if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
            reason = (
                f"trial {number} was failed meanwhile by another process (its heartbeat was late: "
                "this process stalled or lost the storage); this attempt stops, its retry "
                "continues it"
            )
        elif isinstance(error, JOURNAL_TO_FIX):
            reason = str(error)
        else:
            reason = (
                f"trial {number}: {storage_failure(error)}; this attempt stops, its retry "
                "continues it"
            )
        super().__init__("refused by the storage", reason)


@contextmanager
def refusals(study: optuna.Study, number: int) -> Iterator[None]:
    """Inside: a storage error of trial `number`'s updates (report, set_user_attr, tell) raises
    TrialRefused. A failed call on a trial that another process has failed meanwhile says so: a
    machine that stalled inside a transaction wakes to a session the database ended
    (storage.session_settings), after the others failed its trial."""
    try:
        yield
    except (optuna.exceptions.UpdateFinishedTrialError, *JOURNAL_TO_FIX) as e:
        raise TrialRefused(number, e) from None
    except STORAGE_FAILED as e:
        raise TrialRefused(number, failed_meanwhile(study, number) or e) from None


def failed_meanwhile(study: optuna.Study, number: int) -> BaseException | None:
    """UpdateFinishedTrialError if trial `number` is failed in the storage (another process failed
    it), as a new session reads it; None if it runs, or the storage cannot say."""
    try:
        ended = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    except (*STORAGE_FAILED, *JOURNAL_TO_FIX):
        return None
    if any(t.number == number for t in ended):
        return optuna.exceptions.UpdateFinishedTrialError(f"trial {number} is failed")
    return None


def refusals_end_training(
    study: optuna.Study, number: int, on_epoch: Callable[[dict], None]
) -> tuple[Callable[[dict], None], list]:
    """`on_epoch` for run_training, and a list that holds the TrialRefused that ended the training,
    if one did (train() printed its line; the caller raises it again once the W&B run is
    finished)."""
    refused: list[TrialRefused] = []

    def guarded(metrics: dict) -> None:
        try:
            with refusals(study, number):
                on_epoch(metrics)
        except TrialRefused as e:
            e.shown = True  # train() prints "stopped after epoch N: <reason>"
            refused.append(e)
            raise

    return guarded, refused


def load_sweep(path: Path) -> Sweep:
    """The sweep file translated for part_2_cifar.py's settings and rules, with what its `command`
    passes every run and scheduler.optimizer and search_space loaded."""
    sweep = with_command(space.load_sweep(path, p2.SETTINGS))
    sweep = dataclasses.replace(sweep, optimizer=study_factory(sweep))  # before any study is made
    if "search_space" not in sweep.scheduler:
        return sweep
    # W&B's own loader and checks
    from wandb.sdk.sweeps.scheduler.optuna import (
        load_trial_constructor,
    )

    source, name = sweep.scheduler["source"], sweep.scheduler["search_space"]
    with user_code("scheduler.search_space", source, name):
        constructor = load_trial_constructor(source, name)
        # a throw-away trial, as W&B's loader makes
        params = constructor(optuna.create_study().ask())
        fixed = sorted(set(params) & set(space.NOT_SWEPT))
        # run_trial would override it with --val-size: say so rather than ignore the function's
        # value
        if fixed:
            raise SweepConfigError(
                space.not_swept_message(
                    f"scheduler.search_space {name!r} in {source} gives {fixed[0]!r}, which",
                    fixed[0],
                )
            )
        unknown = sorted(set(params) - set(p2.DEFAULTS))
        if unknown:  # `wandb agent` would pass --key=value, which part_2_cifar.py refuses
            raise SweepConfigError(
                f"scheduler.search_space {name!r} in {source} gives {unknown[0]!r}, which is not a "
                f"part_2_cifar.py setting (those are {', '.join(p2.DEFAULTS)})"
            )
    return dataclasses.replace(sweep, search_space=constructor)


# `wandb agent` fills a command's ${...} from these (wandb_agent.Agent._command_run);
# part_2_cifar.py reads the sampled values in the forms of ARGS_MACROS (as --key=value or --key
# value), and a run started by the default command's LAUNCHER is one local_sweep.py trains in its
# own process
ARGS_MACROS = ("${args}", "${args_no_equals}", "${args_no_boolean_flags}")
OTHER_MACROS = (
    "${args_no_hyphens}",
    "${args_json}",
    "${args_json_file}",
    "${args_dict}",
    "${args_append_hydra}",
    "${args_override_hydra}",
    "${env}",
    "${interpreter}",
    "${program}",
)
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
    program = next(
        (
            i
            for i, chunk in enumerate(chunks)
            if chunk == "${program}" or Path(chunk).name == "part_2_cifar.py"
        ),
        None,
    )
    if program is None:
        raise SweepConfigError(
            f"command {chunks}: it runs neither ${{program}} nor "
            "part_2_cifar.py, which is all local_sweep.py can run"
        )
    notes = list(sweep.notes)
    launcher = [chunk for chunk in chunks[:program] if chunk not in LAUNCHER]
    if launcher:
        notes.append(
            f"command: {' '.join(launcher)} is not used: local_sweep.py trains "
            "part_2_cifar.py in its own process"
        )
    options = []
    for chunk in chunks[program + 1 :]:
        if chunk in ARGS_MACROS:
            continue
        if chunk.startswith("${") and chunk.endswith("}"):
            known = chunk in OTHER_MACROS
            what = (
                "passes the values in a form part_2_cifar.py does not read"
                if known
                else "is not a macro `wandb agent` knows: it passes nothing"
            )
            raise SweepConfigError(f"command {chunk} {what}: use ${{args}}")
        options.append(chunk)
    given = trainer_options(options)
    if "resume" in given:
        raise SweepConfigError(
            f"command --resume {given['resume']}: every trial would continue "
            "that one run; remove it"
        )
    settings = {key: value for key, value in given.items() if key in p2.SETTINGS}
    try:
        settings = {key: p2.validate_config(settings)[key] for key in settings}
    except ConfigError as e:
        raise SweepConfigError(f"command: {e}") from None
    settings.pop("val_size", None)  # an option of local_sweep.py (Sweep.options), checked above
    swept = {param.name for param in sweep.params}
    for key in sorted(settings.keys() & swept):
        notes.append(
            f"command --{key}={settings[key]}: the swept {key} replaces it on every run, "
            "as under wandb agent (the sweep's values reach wandb.config)"
        )
    return dataclasses.replace(
        sweep,
        fixed={k: v for k, v in settings.items() if k not in swept},
        options={key: given[key] for key in SHARED_OPTIONS if key in given},
        notes=tuple(notes),
    )


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
        raise SweepConfigError(
            f"command {' '.join(options)}: part_2_cifar.py refuses it: {reason}"
        ) from None
    if parsed["unrecognized"]:
        raise SweepConfigError(
            f"command {' '.join(options)}: part_2_cifar.py would refuse every run: "
            f"{parsed['unrecognized']}"
        )
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
            lines.append(
                f"--{key.replace('_', '-')} {given} given here replaces the sweep file's {value}"
            )
    return lines


@contextmanager
def user_code(key: str, source: str, name: str) -> Iterator[None]:
    """Run the user's scheduler.optimizer or scheduler.search_space: whatever it raises becomes one
    line."""
    try:
        yield
    except SweepConfigError:
        raise
    # the user's code may raise anything; the user gets one line
    except Exception as e:  # noqa: BLE001
        raise SweepConfigError(f"{key} {name!r} in {source}: {cli.one_line(e)}") from None


def study_factory(
    sweep: Sweep,
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner] | None:
    """scheduler.optimizer: the sampler of the study the user's function makes (W&B's loader and its
    checks; the study's storage and name are this program's --storage and --study) and no pruner, or
    None if there is none."""
    if "optimizer" not in sweep.scheduler:
        return None
    from wandb.sdk.sweeps.scheduler.client import load_optimizer_config
    from wandb.sdk.sweeps.sweep_info import SweepInfo

    source, name = sweep.scheduler["source"], sweep.scheduler["optimizer"]
    info = SweepInfo(
        id="local",
        name=sweep.raw.get("name", ""),
        entity="",
        project="",
        config=sweep.raw,
        controller_run_name="",
    )
    with user_code("scheduler.optimizer", source, name):
        study, terminator = load_optimizer_config(source, name, optuna.Study, info)
    # the sweep ends at --trials N; a second rule would have to be shared by machines
    if terminator is not None:
        raise SweepConfigError(
            f"scheduler.optimizer {name!r} in {source} returns a terminator, which local_sweep.py "
            "does not run: return the study alone and bound the sweep with --trials"
        )
    directions = [d.name.lower() for d in study.directions]
    if directions != sweep.directions:
        raise SweepConfigError(
            f"scheduler.optimizer {name!r} in {source}: study directions {directions} do not match "
            f"the sweep's metric goals {sweep.directions}"
        )
    # Its pruner (create_study's default is a MedianPruner) is not asked: the objectives are summary
    # values, known when a run ends; under W&B's scheduler too, no history row carries them (README,
    # "Accuracy and cost at once").
    return study.sampler, optuna.pruners.NopPruner()


# --------------------------------------------------------------------------------------------------
# The study: its data, its size, its next trial (its storage: cifarkit/sweeps/storage.py)


def give_up_trial(study: optuna.Study, trial: optuna.Trial, why: str) -> None:
    """Fail a trial that cannot start (its folder taken), `why` in trials.csv; queue its retry."""
    trial.set_user_attr("failure", why)
    failed = tell_once(study, trial, None, TrialState.FAIL)
    if failed is not None:
        retry_later(study, failed)


def data_fingerprint(source: CifarSource, val_size: int) -> dict:
    """run_files.data_identity of the data the trials train on, without a device (for the
    launcher). ConfigError, as every worker's prepare_data would raise it, for a --val-size the
    data cannot split."""
    train_x, train_y, test_x, test_y = load_cifar100(source)
    p2.stratified_split(train_y, val_size)
    return data_identity(source.path, (train_x, train_y), (test_x, test_y), val_size, p2.SPLIT_SEED)


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
        raise ConfigError(
            f"study {study.study_name!r} trains on {describe_data(recorded)}, not on "
            f"{describe_data(identity)}: pass its --data-dir and --val-size, or another --study"
        )


def study_size(
    trials: int | None, sweep: Sweep, timed: bool = False
) -> tuple[float, float, str | None]:
    """(finished trials, runs) at which the study ends, and a line where the sweep file's bound and
    --trials differ: --trials counts finished trials, W&B's run_cap and a grid's points count runs
    (next_trial); the smaller ends the study. ConfigError if nothing ends it (`timed`: a
    --time-budget does)."""
    bounds = (
        [(sweep.run_cap, f"run_cap {sweep.run_cap} of the sweep file")] if sweep.run_cap else []
    )
    if sweep.method == "grid":
        points = space.grid_size(sweep)
        bounds.append((points, f"the grid ({points} points, each run once)"))
    if trials is None and not bounds and not timed:
        raise ConfigError(
            "--trials N (N >= 1) is required: the sweep file has neither run_cap nor method grid "
            "to end the study, and no --time-budget is given"
        )
    runs, by = min(bounds, default=(math.inf, ""))
    if trials is None:
        return math.inf, runs, None
    if runs < trials:
        return trials, runs, f"{by} ends the study after {runs} runs, before --trials {trials}"
    if bounds and trials < runs:
        return trials, runs, f"--trials {trials} ends the study first ({by}: {runs} runs)"
    return trials, runs, None


def next_trial(
    study: optuna.Study,
    store: Store,
    trials: float,
    target: float | None,
    claim: ExitStack,
    runs: float = math.inf,
) -> optuna.Trial | str:
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
        ran = finished + sum(
            t.state == TrialState.FAIL and t.number not in retried for t in trained
        )
        reached = (
            target is not None
            and states[TrialState.COMPLETE]
            and (
                study.best_value >= target
                if study.direction.name == "MAXIMIZE"
                else study.best_value <= target
            )
        )
        if finished >= trials or ran >= runs or reached:
            return "done"
        running = states[TrialState.RUNNING]
        if finished + running >= trials or ran + running >= runs:
            return "wait"
        trial = study.ask()  # a queued retry first, else a new config from the sampler
        claim.enter_context(store.keep_alive(study, trial))
        return trial


# --------------------------------------------------------------------------------------------------
# One trial


@dataclass
class Pruning:
    """A trial's side of early termination: each epoch's metric goes to the study, and after each
    epoch trained here the study's pruner (space.WandbHyperbandPruner: W&B's Hyperband) may stop the
    training."""

    trial: optuna.Trial
    metric: str  # the sweep's metric, as part_2_cifar.py logs it every epoch
    maximize: bool
    # False for method custom: its objectives are read from the run's summary at the end, as W&B's
    # Optuna scheduler reads them; a study of several objectives takes no intermediate values (nor
    # can one be pruned)
    prunable: bool = True
    best: float | None = None  # the trial's result: its best value so far

    def report(self, metrics: dict) -> None:
        """The raw value at this epoch, as W&B's history row holds it (strict false is the pruner's
        affair)."""
        self.trial.set_user_attr("epochs_completed", metrics["epoch"])
        if not self.prunable:
            return
        value = metrics[self.metric]
        self.best = (
            value
            if self.best is None
            else max(self.best, value)
            if self.maximize
            else min(self.best, value)
        )
        self.trial.report(value, metrics["epoch"])

    def replay(self, history: list[dict]) -> None:
        """A resumed trial's earlier epochs: they count at their bands for every trial, and were
        decided before the crash, so they are not decided again (the next epoch trained is, as W&B
        checks a resumed run's next row)."""
        for metrics in history:
            self.report(metrics)

    def on_epoch(self, metrics: dict) -> None:
        """part_2_cifar.train's callback after each epoch; raises StopEarly("pruned") when the
        pruner says stop."""
        self.report(metrics)
        if self.prunable and self.trial.should_prune():
            raise p2.StopEarly(
                "pruned",
                f"pruned after epoch {metrics['epoch']} by Hyperband: {self.metric} "
                f"{metrics[self.metric]:.4g}, best {self.best:.4g}",
            )


def run_trial(
    args: argparse.Namespace,
    sweep: Sweep,
    data: p2.DeviceData,
    study: optuna.Study,
    trial: optuna.Trial,
    check_interrupt: Callable[[], None],
) -> tuple[int, TrialState, float | list[float] | None]:
    """Train one sampled config, reporting the metric to the pruner every epoch; (exit code, state,
    value), the value a list of the objectives' values for method custom.

    Optuna's and the database's errors come out as they are; a storage error from the epoch callback
    ends the training cleanly first (run_training finishes the W&B run) and comes out as
    TrialRefused."""
    host = socket.gethostname()
    sampled = (
        sweep.search_space(trial)
        if sweep.search_space
        else {p.name: p.sample(trial) for p in sweep.params}
    )
    config = p2.with_defaults(dict(sweep.fixed) | sampled | {"val_size": args.val_size})
    run_dir = trial_folder(args.study_dir, trial.number)  # held by this process: own_trial_folder
    # A retry's history is a system attr of the frozen trial (Optuna's Trial has none)
    retried = RetryHeartbeatStaleTrialCallback.retry_history(
        study.get_trials(deepcopy=False)[trial.number]
    )
    resume = None
    if retried:
        dead = {"study": study.study_name, "uid": args.study_uid, "trial": retried[-1]}
        resume = resume_point(trial_folder(args.study_dir, retried[-1]), run_dir, dead)
    config = resume["config"] if resume else config
    start = (
        f", resuming after epoch {resume['epoch']}"
        if resume
        else ", from epoch 1"
        if retried
        else ""
    )
    print(
        f"{host}: trial {trial.number}"
        + (f" retries trial {retried[-1]}" if retried else "")
        + start,
        flush=True,
    )
    nulls = {
        key: config[key] for key, value in sampled.items() if value is None and key in p2.SETTINGS
    }
    # the trainer's line under `wandb agent` (run_training gets the config with the defaults filled
    # in)
    if nulls:
        print(
            f"null means the default: {', '.join(f'{k}={v}' for k, v in nulls.items())}", flush=True
        )
    for key, value in {
        "config": config,
        "run_dir": str(run_dir.resolve()),  # as any working directory reads it (trials.csv)
        "host": host,
        "failure": "",
        "resumed_after_epoch": resume["epoch"] if resume else 0,
        "device": device_name(data.train_labels.device),
    }.items():
        # a retry inherits the dead attempt's attrs: each is set again
        trial.set_user_attr(key, value)
    pruning = Pruning(
        trial,
        sweep.metric,
        sweep.direction == "maximize",
        prunable=not sweep.objectives and sweep.metric in space.HISTORY_METRICS,
    )
    pruning.replay((resume or {}).get("history", []))  # the epochs the dead attempt finished
    init = {
        "project": args.wandb_project,
        "mode": args.wandb_mode,
        "group": study.study_name,
        "job_type": "local_sweep",
        "name": f"{study.study_name}-trial-{trial.number}",
        "reinit": "finish_previous",
    }
    if sweep.entity:  # the sweep file's: where `wandb sync` puts the runs, as W&B puts a sweep's
        init["entity"] = sweep.entity
    guarded_on_epoch, refused = refusals_end_training(study, trial.number, pruning.on_epoch)
    code, summary = p2.run_training(
        config,
        lambda: data,
        run_dir,
        init,
        check_interrupt=check_interrupt,
        resume=resume,
        on_epoch=guarded_on_epoch,
        in_sweep=True,
        log_model=False,
        how_to_continue=f"trial {trial.number} is failed and queued for a retry: run "
        "the same command again to continue",
    )
    if refused:
        raise refused[0]
    trial.set_user_attr("test_accuracy", summary.get("test_accuracy"))
    status = summary["status"]
    if status == "diverged":
        trial.set_user_attr(
            "failure",
            f"diverged: non-finite training loss after epoch {summary['epochs_completed']}",
        )
    elif code != 0:
        trial.set_user_attr("failure", summary.get("error") or f"{status} (exit code {code})")
    return code, *trial_outcome(sweep, summary, code)


# --------------------------------------------------------------------------------------------------
# Workers


def work(
    args: argparse.Namespace,
    sweep: Sweep,
    data: p2.DeviceData,
    study: optuna.Study,
    store: Store,
    trials: float,
    runs: float = math.inf,
    budget: TimeBudget | None = None,
) -> int:
    """Run trials until the study has `trials` finished ones or `runs` runs (next_trial), or
    `budget` is spent; return an exit code. A stop signal (any of cli.STOP_SIGNALS the caller does
    not ignore) stops training between steps: the trial is failed and queued for a retry, and the
    worker exits 128 + signal."""
    failures = lost = 0  # trials failed in a row; sessions lost in a row while asking
    with cli.StopOnSignal() as stop:

        def check_interrupt() -> None:
            stop.check()
            if args.worker_of is not None and os.getppid() != args.worker_of:
                # the launcher was killed: stop as if the terminal hung up
                raise cli.Interrupted(signal.SIGHUP)

        while True:
            try:
                check_interrupt()
            except cli.Interrupted as e:
                print(
                    f"interrupted by {signal.Signals(e.signum).name} before a trial started: run "
                    "the same command "
                    "again to continue",
                    file=sys.stderr,
                    flush=True,
                )
                return cli.stopped_by(e.signum)
            if budget is not None and budget.spent(study):
                return cli.EXIT_DONE
            with ExitStack() as claim:
                try:
                    trial = next_trial(study, store, trials, sweep.target, claim, runs)
                    lost = 0
                except STORAGE_FAILED as e:
                    lost += 1
                    if not session_lost(e) or lost > MAX_SESSIONS_LOST:
                        raise
                    # Stalled inside the scheduling lock past the grace period (the database ended
                    # the lock's session and the others went on), or the session dropped: a trial
                    # asked meanwhile has no heartbeat or a stale one, and is failed and retried
                    # (fail_dead_trials). A database that is down fails the next attempt.
                    why = (
                        "this process stalled inside the study's lock for longer than the grace "
                        f"period ({args.grace_period} s): the database ended its session and the "
                        "others went on"
                        if ended_for_idling(e)
                        else f"the database dropped this process's session ({storage_failure(e)})"
                    )
                    print(f"{why}; asking again", flush=True)
                    continue
                if trial == "done":
                    return cli.EXIT_DONE
                if trial == "wait":
                    time.sleep(1 if store.lock_dir else store.storage.get_heartbeat_interval())
                    continue
                if budget is not None:  # a SIGKILL loses no more than the time since a trial began
                    budget.record(study, force=True)
                try:
                    own_trial_folder(args.study_dir, args.study_uid, study, trial, claim)
                # its retry gets another folder
                except (FolderInUse, TrialFolderTaken, DamagedMarker) as e:
                    give_up_trial(study, trial, str(e))
                    return cli.fail(e)
                try:
                    with refusals(study, trial.number):
                        code, state, value = run_trial(
                            args, sweep, data, study, trial, check_interrupt
                        )
                        frozen = tell_once(study, trial, value, state)
                        if frozen is None:  # tell found it failed
                            raise TrialRefused(
                                trial.number, optuna.exceptions.UpdateFinishedTrialError()
                            )
                except TrialRefused as e:
                    # Its last.pt stays for the retry: queued by whoever failed it, or by the
                    # dead-trial rule once this process lets go of it. A signal that came meanwhile
                    # ends the loop at its top.
                    if isinstance(e.error, JOURNAL_TO_FIX):  # the user's to fix: this process ends
                        return cli.fail(e.error)
                    if not e.shown:
                        print(e, flush=True)
                    continue
                except cli.FileFailed as e:  # a full disk, a folder gone: so would every next trial
                    give_up_for_a_retry(study, trial, str(e))
                    return cli.fail(e)
            if budget is not None:  # ... or since one ended
                budget.record(study, force=True)
            # Interrupted (run_training printed the line): queue it again, so that the same
            # command continues it.
            if code > 128:
                retry_later(study, frozen)
                return code
            failures = failures + 1 if state == TrialState.FAIL else 0
            if failures >= MAX_FAILURES_IN_A_ROW:
                return cli.fail(
                    f"{failures} trials in a row failed (last: "
                    f"{frozen.user_attrs.get('failure')}); "
                    "stopping",
                    cli.EXIT_FAILED,
                )


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
    """Start `workers` copies of this program as worker processes on the same study; wait; pass on
    stop signals (cli.passed_on). Exit code: 128 + the first stop signal received, else the workers'
    worst."""
    procs: list[subprocess.Popen] = []
    # main's: a signal that came while the study opened starts no worker
    with cli.StopOnSignal() as stop:
        if stop.signum is not None:
            print(
                f"interrupted by {signal.Signals(stop.signum).name} before the workers started: "
                "run the same "
                "command again",
                file=sys.stderr,
                flush=True,
            )
            return cli.stopped_by(stop.signum)
        for index, gpu in enumerate(cli.gpu_slots(workers)):
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                *argv,
                "--worker-of",
                str(os.getpid()),
            ]
            procs.append(subprocess.Popen(cmd, env=cli.worker_env(gpu, workers)))
            print(
                f"worker {index}: pid {procs[-1].pid}"
                + (f", CUDA_VISIBLE_DEVICES={gpu}" if gpu else ""),
                flush=True,
            )
        forwarded = False
        while any(proc.poll() is None for proc in procs):
            try:
                if stop.signum is not None and not forwarded:
                    for proc in procs:
                        if proc.poll() is None:
                            proc.send_signal(cli.passed_on(stop.signum))
                    forwarded = True
                time.sleep(0.2)
            # Ctrl-C twice: the workers got it too (one process group) and stop now.
            except KeyboardInterrupt:
                pass
    codes = [proc.returncode for proc in procs]
    if stop.signum is None:
        return max(codes, key=abs)
    # its own line, beside each worker's: a signal to the launcher alone (kill PID, a scheduler)
    # has nobody else to say it
    print(
        f"interrupted by {signal.Signals(stop.signum).name}: passed on to the workers, which "
        "stopped; run the same command again to continue",
        file=sys.stderr,
        flush=True,
    )
    return cli.stopped_by(stop.signum)


# --------------------------------------------------------------------------------------------------
# Command line and main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.OneLineErrorParser(__doc__, parents=(p2.shared_options(),))
    parser.add_argument(
        "sweep_config", type=Path, help="a W&B sweep file (JSON or YAML), e.g. sweep_config.json"
    )
    parser.add_argument(
        "--trials",
        type=cli.positive_int,
        help="finished (COMPLETE + PRUNED) trials the study trains, prior runs "
        "aside (required unless --report, --time-budget, or the sweep file "
        "has run_cap or method grid)",
    )
    parser.add_argument(
        "--study", help="study name (default: the sweep file's name, e.g. sweep_config)"
    )
    parser.add_argument(
        "--storage",
        help=f"journal file (default <runs-dir>/{DEFAULT_STORAGE_FILE}) for one machine, "
        "or postgresql://user:password@host/database to share the study between machines",
    )
    parser.add_argument(
        "--workers",
        type=cli.positive_int,
        default=1,
        help="worker processes here, spread over GPUs",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=cli.positive_int,
        default=HEARTBEAT_SECONDS,
        metavar="SECONDS",
        help=f"PostgreSQL: how often a running trial says it lives (default {HEARTBEAT_SECONDS})",
    )
    parser.add_argument(
        "--grace-period",
        type=cli.positive_int,
        default=GRACE_SECONDS,
        metavar="SECONDS",
        help="PostgreSQL: a trial silent this long is failed and retried (default "
        f"{GRACE_SECONDS})",
    )
    parser.add_argument(
        "--report", action="store_true", help="only print the table and draw the plots of the study"
    )
    parser.add_argument(
        "--images-dir",
        type=Path,
        default=Path("images"),
        help="where the plots go (default images)",
    )
    parser.add_argument(
        "--prior-runs",
        type=Path,
        action="append",
        default=[],
        metavar="FOLDER",
        help="a runs folder or a run folder: its runs on the same data and inside "
        "the sweep become finished trials first (repeatable; never added twice)",
    )
    parser.add_argument(
        "--start-from",
        type=Path,
        action="append",
        default=[],
        metavar="FILE_OR_RUN",
        help="configurations to train first: a JSON/YAML "
        "file (one or a list) or a run folder (repeatable)",
    )
    parser.add_argument(
        "--sampler-seed",
        type=int,
        metavar="N",
        help="seed the sampler: the same command on the same file draws the same trials",
    )
    parser.add_argument(
        "--time-budget",
        type=duration,
        metavar="TIME",
        help="start no new trial once the study has run this long (seconds, or "
        "90m, 1.5h, 2d), over resumed commands too; running trials finish",
    )
    parser.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # set by launch_workers
    return parser.parse_args(argv)  # --trials may come from the sweep file: study_size


def main(argv: list[str] | None = None) -> int:
    """The command. Exit codes (cli.EXIT_CODES): 0 the study is done (or the report written); 1 a
    failure at run time (a storage or download that fails, trials failing in a row, a full disk); 2
    a bad value or a file to fix (the sweep file, a damaged journal, the data set); 128+n stopped
    by signal n. Its one boundary is cli.boundary; a trial a failure leaves running is failed and
    retried by the dead-trial rule."""
    # from the first line, as in the trainer; work() and launch_workers() share its signal
    with cli.StopOnSignal():
        try:
            return run_sweep(sys.argv[1:] if argv is None else argv)
        except BaseException as e:  # Ctrl-C twice outside a trial (a trial ends itself): "stop now"
            return cli.boundary(
                as_storage_error(e), stopped="run the same command again to continue"
            )


def write_report(study: optuna.Study, sweep: Sweep, folder: Path, args: argparse.Namespace) -> int:
    """report.write_report, stopped at once by a stop signal, even inside Optuna or matplotlib
    (nothing in it is worth finishing: every file it writes is whole or not there); EXIT_DONE. A
    file it cannot write says that the study itself is whole in its storage."""
    with cli.InterruptOnSignal() as stop:
        stop.check()  # a signal that came before
        try:
            report.write_report(study, sweep, folder, args.images_dir)
        except cli.FileFailed as e:
            e.kept = (
                f"the study is whole in its storage: write the report again with "
                f"{args.sweep_config} --report"
            )
            raise
        stop.check()  # one a library swallowed after all
    return cli.EXIT_DONE


def run_sweep(argv: list[str]) -> int:
    """Everything main does, under its stop signals."""
    args = parse_args(argv)
    budget = TimeBudget(args.time_budget) if args.time_budget else None  # loading data counts too
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # heartbeat, retry, plots
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings(
        "ignore", message="Heartbeat of storage is supposed to be used with Study.optimize"
    )
    # Everything the sweep file and the options decide comes first: a refused file leaves nothing
    # behind
    sweep = load_sweep(args.sweep_config)
    said = [*sweep.notes, *sweep_options(args, sweep)]  # its command may set --runs-dir, ...
    for line in said if args.worker_of is None else []:  # the launcher says it, not each worker
        print(f"note: {line}", flush=True)
    for option, folder in (("--runs-dir", args.runs_dir), ("--images-dir", args.images_dir)):
        if why := unwritable(folder):
            raise ConfigError(
                f"{option} {folder} cannot be written: {why}; use a folder you can write to"
            )
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
        folder = study_folder(
            args.runs_dir, study.study_name, study.user_attrs.get("uid"), claim=False
        )
        return write_report(study, sweep, folder, args)
    if args.sampler_seed is not None:
        study.sampler = seeded_sampler(sweep, args.sampler_seed)
    device = pick_device(args.device)
    source = cifar100_source(args.data_dir)  # found (or fetched) once, before any worker starts
    args.study_uid = study_uid(study, store)  # trial folders are named and marked by it
    args.study_dir = study_folder(args.runs_dir, study.study_name, args.study_uid)
    if args.workers > 1 and args.worker_of is None:
        # What every worker would refuse for the whole command is refused here, once, before the
        # warm start writes anything into the study: a study of other data never gets its runs
        identity = data_fingerprint(source, args.val_size)
        check_study_data(study, store, identity)
        warm.apply(study, store, sweep, lambda: identity)
        code = launch_workers(argv, args.workers)
        if code == cli.EXIT_DONE:  # as one process: a report only of a study that is done
            return write_report(study, sweep, args.study_dir, args)
        return code
    data = p2.prepare_data(source, args.val_size, device)
    check_study_data(study, store, data.identity)  # its trials are ranked against each other
    if args.worker_of is None:  # a worker's launcher did it
        warm.apply(study, store, sweep, lambda: data.identity)
    if "data" not in study.user_attrs:
        study.set_user_attr(
            "data",
            f"{args.data_dir.resolve().name} ({data.train_labels.numel()} train / "
            f"{data.val_labels.numel()} val images)",
        )
    started = time.perf_counter()
    code = work(args, sweep, data, study, store, trials, runs, budget)
    if budget is not None:  # the time since the last trial began, an interrupted one's included
        budget.record(study, force=True)
    print(
        f"{socket.gethostname()} pid {os.getpid()} stopped after "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    if args.worker_of is None and code == 0:
        return write_report(study, sweep, args.study_dir, args)
    return code


if __name__ == "__main__":
    sys.exit(main())
