"""Run the W&B sweep in sweep_config.json without a W&B server: Optuna samples, prunes and stores the trials.

    python local_sweep.py sweep_config.json --trials 30                  # one GPU (or CPU), resumable
    python local_sweep.py sweep_config.json --trials 60 --workers 4      # 4 worker processes, spread over the GPUs
    python local_sweep.py sweep_config.json --trials 200 --study big --storage postgresql://user:pw@host/optuna
    python local_sweep.py sweep_config.json --report                     # table and plots of an existing study

Each trial is part_2_cifar.train() on a config drawn from the sweep's parameters, in its own run folder
<runs-dir>/<study>/trial-NNNN, logged as a W&B run (offline unless logged in) in the group <study>, so
`wandb sync wandb/offline-run-*` shows the whole sweep in W&B. `--trials N` is the number of finished trials
(COMPLETE or PRUNED) the study should reach: run the same command again after Ctrl-C, SIGTERM, SIGKILL or a
crash and it continues; a trial whose worker died is marked FAIL and retried from its last finished epoch.

Translation of the sweep file: method bayes -> multivariate TPE (measured against GPSampler, see make_sampler),
random/grid -> RandomSampler/GridSampler, metric.goal -> direction, early_terminate hyperband -> HyperbandPruner
fed the metric after every epoch. Every W&B distribution Optuna can honour is translated; the others (beta,
q_beta, categorical_w_probabilities, nested parameters) stop the program before any training, exit code 2.

Sections, in order: settings, search space, study and storage, one trial, workers, report, command line and main.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import NormalDist
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

import part_2_cifar as p2

# ----------------------------------------------------------------------------------------------------------------------
# Settings

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what --trials counts
TRAINER_METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")  # per-epoch metrics train() reports
DEFAULT_STORAGE_FILE = "optuna-journal.log"  # under --runs-dir: Optuna's journal file, safe for several processes
HEARTBEAT_SECONDS = 60  # database storages only: a running trial writes a heartbeat this often ...
GRACE_SECONDS = 300  # ... and is failed (and retried) by any worker once its heartbeat is this old
MAX_RETRIES = 2  # a trial whose worker died is retried at most this often (a config that kills workers stops)
MAX_FAILURES_IN_A_ROW = 5  # a worker stops after this many failed trials in a row (OOM, invalid sampled configs)
QUANTILE_EPS = 1e-6  # normal-type parameters are sampled as a quantile in [eps, 1 - eps]: +-4.75 sigma
TOP_TRIALS = 10  # rows of the console table
MIN_TRIALS_FOR_IMPORTANCE = 10  # fANOVA on fewer completed trials ranks noise; the plot is skipped, with a line
# method bayes -> multivariate TPE, chosen by measurement: 12 seeds x 30 trials on a noisy synthetic stand-in for
# val_accuracy over this sweep's space (2 floats, 5 categoricals, stepped epochs; the best learning rate depends on
# batch_size), optuna 5.0, 2-core CPU. Median regret after 30 trials: TPE 1.81 points (IQR 1.41-2.32), GPSampler
# 2.51 (1.71-3.04), random 3.09; TPE took 6 ms a trial, GP 3 s and needs scipy. TPE's constant_liar also keeps
# parallel workers from proposing the same config; GPSampler has no such option in Optuna 5.


class SweepConfigError(ValueError):
    """The sweep file asks for something this program cannot honour; the message is one line for people."""


class TrialFailed(RuntimeError):
    """A trial that cannot give a result (out of memory, invalid sampled config); the sweep goes on."""


# ----------------------------------------------------------------------------------------------------------------------
# Search space: W&B parameter specs -> Optuna distributions, plus the map from Optuna's value to the config value.


def _identity(x: Any) -> Any:
    return x


def _quantize(q: float) -> Callable[[float], float | int]:
    """round(x / q) * q, an int when q is an int: what W&B's q_* distributions return."""
    return lambda x: int(round(x / q) * q) if isinstance(q, int) else round(x / q) * q


def _compose(*fs: Callable) -> Callable:
    def composed(x: Any) -> Any:
        for f in fs:
            x = f(x)
        return x

    return composed


@dataclass(frozen=True)
class Param:
    """One swept key: `distribution` is None for a constant; Optuna samples `optuna_name`, `to_value` maps it."""

    name: str
    distribution: BaseDistribution | None
    to_value: Callable[[Any], Any] = _identity
    constant: Any = None
    optuna_name: str = ""

    def sample(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if d is None:
            return self.constant
        if isinstance(d, CategoricalDistribution):
            return self.to_value(trial.suggest_categorical(self.optuna_name, d.choices))
        if isinstance(d, IntDistribution):
            return self.to_value(trial.suggest_int(self.optuna_name, d.low, d.high, step=d.step, log=d.log))
        return self.to_value(trial.suggest_float(self.optuna_name, d.low, d.high, step=d.step, log=d.log))


def _number(spec: dict, key: str, name: str, default: float | None = None) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SweepConfigError(f"parameter {name!r}: {key!r} must be a number, got {value!r}")
    return value


def _distribution_name(name: str, spec: dict) -> str:
    """The distribution W&B infers when `distribution` is absent (the order of the anyOf in its schema)."""
    if "parameters" in spec:
        raise SweepConfigError(f"parameter {name!r}: nested parameters are not supported; part_2_cifar.py takes "
                               "flat keys")
    if "distribution" in spec:
        return spec["distribution"]
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical_w_probabilities" if "probabilities" in spec else "categorical"
    if all(isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in ("min", "max")):
        return "int_uniform"
    if "min" in spec and "max" in spec:
        return "uniform"
    raise SweepConfigError(f"parameter {name!r}: give value, values, or min and max (got keys {sorted(spec)})")


def translate_parameter(name: str, spec: dict) -> Param:
    """Optuna's version of one W&B parameter, with the same support and (but for q_uniform's ends) the same prior.

    W&B's q_uniform rounds a uniform draw to a multiple of q, so its two ends get half weight; Optuna's stepped
    distributions weigh all points equally. q_log_uniform* and the normal family are sampled continuously and
    mapped (quantized, or through the normal quantile function, as W&B's own engine does), so Optuna's param
    is the continuous draw and the trial's config (user attr "config") holds the value the run used.
    """
    if not isinstance(spec, dict):
        raise SweepConfigError(f"parameter {name!r}: expected an object like {{\"values\": [...]}}, got {spec!r}")
    kind = _distribution_name(name, spec)
    q = spec.get("q", 1)
    if kind in ("q_uniform", "q_log_uniform", "q_log_uniform_values", "q_normal", "q_log_normal"):
        _number(spec, "q", name, 1)
        if q <= 0:
            raise SweepConfigError(f"parameter {name!r}: q must be > 0, got {q!r}")
    if kind in ("uniform", "int_uniform", "q_uniform", "log_uniform", "log_uniform_values", "inv_log_uniform",
                "inv_log_uniform_values", "q_log_uniform", "q_log_uniform_values"):
        low, high = _number(spec, "min", name), _number(spec, "max", name)
        if low > high:
            raise SweepConfigError(f"parameter {name!r}: min {low} is above max {high}")
        if kind.endswith("_values") and low <= 0:
            raise SweepConfigError(f"parameter {name!r}: {kind} needs min > 0, got {low}")

    if kind == "constant":
        return Param(name, None, constant=spec["value"])
    if kind == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise SweepConfigError(f"parameter {name!r}: values must be a non-empty list")
        if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise SweepConfigError(f"parameter {name!r}: Optuna's categorical values must be numbers, strings, "
                                   "booleans or null")
        return Param(name, CategoricalDistribution(values), optuna_name=name)
    if kind == "int_uniform":
        if not all(isinstance(spec[k], int) for k in ("min", "max")):
            raise SweepConfigError(f"parameter {name!r}: int_uniform needs integer min and max")
        return Param(name, IntDistribution(low, high), optuna_name=name)
    if kind == "uniform":
        return Param(name, FloatDistribution(low, high), optuna_name=name)
    if kind == "q_uniform":  # the multiples of q that round(U(min, max) / q) * q can give
        lo, hi = round(low / q) * q, round(high / q) * q
        if isinstance(q, int):
            return Param(name, IntDistribution(int(lo), int(hi), step=q), optuna_name=name)
        return Param(name, FloatDistribution(lo, hi, step=q), optuna_name=name)
    if kind == "log_uniform":  # W&B v1: min and max are natural logs of the bounds
        return Param(name, FloatDistribution(math.exp(low), math.exp(high), log=True), optuna_name=name)
    if kind in ("log_uniform_values", "inv_log_uniform_values"):  # 1/X is log-uniform exactly when X is
        return Param(name, FloatDistribution(low, high, log=True), optuna_name=name)
    if kind == "inv_log_uniform":  # W&B v1: X = exp(-U(min, max)), log-uniform on [e^-max, e^-min]
        return Param(name, FloatDistribution(math.exp(-high), math.exp(-low), log=True), optuna_name=name)
    if kind == "q_log_uniform":
        return Param(name, FloatDistribution(math.exp(low), math.exp(high), log=True), _quantize(q), optuna_name=name)
    if kind == "q_log_uniform_values":
        return Param(name, FloatDistribution(low, high, log=True), _quantize(q), optuna_name=name)
    if kind in ("normal", "q_normal", "log_normal", "q_log_normal"):
        mu, sigma = _number(spec, "mu", name, 0.0), _number(spec, "sigma", name, 1.0)
        if sigma <= 0:
            raise SweepConfigError(f"parameter {name!r}: sigma must be > 0, got {sigma}")
        steps: list[Callable] = [NormalDist(mu, sigma).inv_cdf]
        if kind.endswith("log_normal"):
            steps.append(math.exp)
        if kind.startswith("q_"):
            steps.append(_quantize(q))
        return Param(name, FloatDistribution(QUANTILE_EPS, 1 - QUANTILE_EPS), _compose(*steps),
                     optuna_name=f"{name}_quantile")
    if kind in ("beta", "q_beta"):
        raise SweepConfigError(f"parameter {name!r}: distribution {kind} is not supported (Optuna has no beta "
                               "distribution); use uniform or values")
    if kind == "categorical_w_probabilities":
        raise SweepConfigError(f"parameter {name!r}: categorical values with probabilities are not supported "
                               "(Optuna weighs categories equally); drop probabilities")
    raise SweepConfigError(f"parameter {name!r}: unknown distribution {kind!r}")


def _check_bounds(param: Param) -> None:
    """Every value a bounded parameter can take must pass part_2_cifar's rules; say which one does not."""
    d = param.distribution
    if param.optuna_name.endswith("_quantile"):
        return  # unbounded: checked per trial
    if d is None:
        candidates = [param.constant]
    elif isinstance(d, CategoricalDistribution):
        candidates = list(d.choices)
    else:
        candidates = [param.to_value(d.low), param.to_value(d.high)]
    for value in candidates:
        try:
            p2.validate_config({param.name: value})
        except p2.ConfigError as e:
            raise SweepConfigError(f"parameter {param.name!r} can take {value!r}, which part_2_cifar.py rejects: "
                                   f"{e}") from None


@dataclass(frozen=True)
class Sweep:
    """What local_sweep.py takes from the sweep file."""

    method: str
    metric: str
    direction: str  # "maximize" or "minimize"
    params: tuple[Param, ...]
    early_terminate: dict | None
    target: float | None
    raw: dict  # the file as read, stored with the study so a changed file is noticed


def load_sweep(path: Path) -> Sweep:
    """Read and translate a W&B sweep file (JSON or YAML); raise SweepConfigError for anything not honourable."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise SweepConfigError(f"cannot read sweep file {path}: {e.strerror}") from None
    try:  # JSON first: PyYAML (YAML 1.1) would read a JSON number like 1e-05 as a string
        raw = json.loads(text)
    except json.JSONDecodeError:
        import yaml  # wandb depends on PyYAML; `wandb sweep` reads YAML too

        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SweepConfigError(f"{path} is not valid JSON or YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise SweepConfigError(f"{path} has no parameters: expected a W&B sweep config with a parameters section")
    program = raw.get("program")
    if program is not None and Path(program).name != "part_2_cifar.py":
        raise SweepConfigError(f"program {program!r}: local_sweep.py can only run part_2_cifar.py")
    method = raw.get("method", "random")
    if method not in ("bayes", "random", "grid"):
        raise SweepConfigError(f"method {method!r} is not supported: use bayes, random or grid")
    metric = raw.get("metric") or {}
    metric_name = metric.get("name", "val_accuracy")
    if metric_name not in TRAINER_METRICS:
        raise SweepConfigError(f"metric {metric_name!r} is not one part_2_cifar.py logs: use one of "
                               f"{', '.join(TRAINER_METRICS)}")
    goal = metric.get("goal", "minimize")  # W&B's default
    if goal not in ("minimize", "maximize"):
        raise SweepConfigError(f"metric goal {goal!r} is not allowed: use minimize or maximize")
    params = []
    for name, spec in raw["parameters"].items():
        if name not in p2.DEFAULTS:
            raise SweepConfigError(f"parameter {name!r} is not a part_2_cifar.py setting (those are "
                                   f"{', '.join(p2.DEFAULTS)})")
        param = translate_parameter(name, spec)
        _check_bounds(param)
        params.append(param)
    if method == "grid":
        continuous = [p.name for p in params if isinstance(p.distribution, FloatDistribution)
                      and (p.distribution.step is None or p.to_value is not _identity)]
        if continuous:
            raise SweepConfigError(f"parameter {continuous[0]!r}: grid search needs discrete values (values, "
                                   "int_uniform or q_uniform), as in W&B")
    early = raw.get("early_terminate")
    if early is not None:
        _hyperband_settings(early, tuple(params))  # fail now, not when the first trial reports
    target = metric.get("target")
    return Sweep(method, metric_name, goal, tuple(params), early, target, raw)


# ----------------------------------------------------------------------------------------------------------------------
# Study and storage


def _hyperband_settings(early: dict, params: tuple[Param, ...]) -> tuple[int, int, int, int | None]:
    """(min_resource, max_resource, reduction_factor, last band or None) from W&B's hyperband settings.

    W&B: with min_iter, bands at min_iter * eta^k without end; with max_iter and s, bands at max_iter / eta^k for
    k = 1..s, so no run is stopped after max_iter / eta. Optuna's HyperbandPruner has rungs without end, so the
    second form also gets a last band after which nothing is pruned.
    """
    if not isinstance(early, dict) or early.get("type") != "hyperband":
        raise SweepConfigError(f"early_terminate {early!r} is not supported: only type hyperband exists")
    eta = early.get("eta", 3)
    if not isinstance(eta, int) or eta < 2:
        raise SweepConfigError(f"early_terminate eta={eta!r}: Optuna's Hyperband needs an integer >= 2")
    epochs = next((p for p in params if p.name == "epochs"), None)
    if epochs is None:
        longest = p2.DEFAULTS["epochs"]
    elif epochs.distribution is None:
        longest = int(epochs.constant)
    elif isinstance(epochs.distribution, CategoricalDistribution):
        longest = int(max(epochs.distribution.choices))
    elif epochs.optuna_name.endswith("_quantile"):
        raise SweepConfigError("early_terminate with an unbounded epochs distribution: give epochs bounds")
    else:
        longest = int(epochs.to_value(epochs.distribution.high))
    if "min_iter" in early:
        min_iter = early["min_iter"]
        if not isinstance(min_iter, int) or min_iter < 1:
            raise SweepConfigError(f"early_terminate min_iter={min_iter!r}: use an integer >= 1")
        return min_iter, max(min_iter, longest), eta, None
    if "max_iter" in early and "s" in early:
        max_iter, s = early["max_iter"], early["s"]
        bands = [int(max_iter / eta**k) for k in range(1, int(s) + 1) if max_iter / eta**k >= 1]
        if not bands:
            raise SweepConfigError(f"early_terminate max_iter={max_iter}, s={s}, eta={eta} gives no band >= 1")
        return min(bands), max(max_iter, min(bands)), eta, max(bands)
    raise SweepConfigError("early_terminate hyperband needs min_iter, or max_iter and s")


class PruneUpTo(optuna.pruners.BasePruner):
    """Ask `inner` only up to `last_step`; after it, never prune (W&B's last hyperband band)."""

    def __init__(self, inner: optuna.pruners.BasePruner, last_step: int):
        self.inner, self.last_step = inner, last_step

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return trial.last_step is not None and trial.last_step <= self.last_step and self.inner.prune(study, trial)


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.early_terminate is None:
        return optuna.pruners.NopPruner()
    min_resource, max_resource, eta, last_band = _hyperband_settings(sweep.early_terminate, sweep.params)
    pruner = optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max_resource,
                                            reduction_factor=eta)
    return pruner if last_band is None else PruneUpTo(pruner, last_band)


def grid_size(sweep: Sweep) -> int:
    return math.prod(len(_grid_values(p)) for p in sweep.params if p.distribution is not None)


def _grid_values(param: Param) -> list:
    d = param.distribution
    if isinstance(d, CategoricalDistribution):
        return list(d.choices)
    n = round((d.high - d.low) / d.step)
    return [d.low + i * d.step for i in range(n + 1)]


def make_sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    if sweep.method == "grid":
        return optuna.samplers.GridSampler({p.optuna_name: _grid_values(p) for p in sweep.params
                                            if p.distribution is not None})
    if sweep.method == "random":
        return optuna.samplers.RandomSampler()
    # Why TPE and not GPSampler: see the measurement under Settings. No seed: K workers with one seed would
    # propose the same configs.
    return optuna.samplers.TPESampler(multivariate=True, constant_liar=True)


def open_storage(storage: str | None, runs_dir: Path) -> optuna.storages.BaseStorage:
    """A journal file under runs_dir by default; a database URL (sqlite:///, postgresql://) gets heartbeats.

    Journal files have no heartbeat in Optuna 5; workers on one machine instead check each other's process ids
    (see fail_dead_trials). Databases serve several machines, where only a heartbeat tells a dead worker.
    """
    if storage is None or "://" not in storage:
        path = Path(storage) if storage else Path(runs_dir) / DEFAULT_STORAGE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.storages.RDBStorage(
        storage, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))


def open_study(sweep: Sweep, name: str, storage: optuna.storages.BaseStorage, create: bool = True) -> optuna.Study:
    """Create the study, or load it and check it was made from the same sweep file."""
    if create:
        study = optuna.create_study(study_name=name, storage=storage, direction=sweep.direction,
                                    sampler=make_sampler(sweep), pruner=make_pruner(sweep), load_if_exists=True)
        stored = study.user_attrs.get("sweep_config")
        if stored is None:
            study.set_user_attr("sweep_config", sweep.raw)
        elif stored != sweep.raw:
            raise SweepConfigError(f"study {name!r} was created from a different sweep config; use another --study "
                                   "or the original file")
        return study
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(sweep),
                                 pruner=make_pruner(sweep))
    except KeyError:
        raise SweepConfigError(f"no study {name!r} in this storage: check --study, --storage and --runs-dir") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials of workers on this machine whose process is gone; queue a retry of each.

    Only this machine's trials: another machine's process ids mean nothing here (databases: heartbeats do that).
    A reused pid only delays the failure until the heartbeat or a later run notices, never fails a live trial.
    A worker claims its trial (user attr "worker", with the trial's start time) first thing; a trial left
    unclaimed for GRACE_SECONDS lost its worker between Optuna's ask and the claim.
    """
    host, failed, now = socket.gethostname(), [], datetime.now()
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("started") != str(trial.datetime_start):  # not claimed yet (a retry has its dead one's)
            if (now - trial.datetime_start).total_seconds() < GRACE_SECONDS:
                continue  # a worker is between asking for the trial and claiming it
            reason = "its worker died before claiming it"
        elif worker["host"] != host or _alive(worker["pid"]):
            continue
        else:
            reason = f"worker pid {worker['pid']} died"
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "failure", reason)
            if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first and queued the retry
        retry(study, study._storage.get_trial(trial._trial_id))
        failed.append(trial.number)
    if failed:
        print(f"trials {failed} were left running by dead workers: marked FAIL, queued for a retry", flush=True)
    return failed


def counts(study: optuna.Study) -> dict[TrialState, int]:
    found = {state: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        found[trial.state] += 1
    return found


# ----------------------------------------------------------------------------------------------------------------------
# One trial


@dataclass
class WorkerContext:
    """What every trial of one worker shares: the data on the device (loaded once) and the options."""

    sweep: Sweep
    study_name: str
    trials: int
    data: p2.DeviceData
    runs_dir: Path
    val_size: int
    wandb_mode: str
    wandb_project: str
    parent_pid: int | None  # set in worker subprocesses: stop when the launcher is gone


def trial_dir(ctx: WorkerContext, number: int) -> Path:
    return ctx.runs_dir / ctx.study_name / f"trial-{number:04d}"


def _surplus(study: optuna.Study, trial: optuna.Trial, n: int) -> bool:
    """True if finished trials plus running ones numbered below this one already make n: this one is extra.

    Workers check the count before asking for a trial, but two can ask at once; the lower number goes on.
    """
    earlier = 0
    for t in study.get_trials(deepcopy=False):
        earlier += t.state in FINISHED or (t.state == TrialState.RUNNING and t.number < trial.number)
    return earlier >= n


def _resume_from(ctx: WorkerContext, trial: optuna.Trial, run_dir: Path) -> dict | None:
    """For a retried trial, copy the dead attempt's run folder and return its last.pt, so no epoch runs twice."""
    frozen = trial.study._storage.get_trial(trial._trial_id)  # Optuna 5's Trial has no system_attrs
    history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    if not history:
        return None
    previous = trial_dir(ctx, history[-1])
    if not (previous / "last.pt").is_file():
        return None
    shutil.copytree(previous, run_dir, dirs_exist_ok=True)
    try:
        checkpoint = p2.load_checkpoint(run_dir / "last.pt", needs=("model", "optimizer", "config", "epoch"))
    except p2.CheckpointError as e:
        print(f"trial {trial.number}: cannot resume ({e}); starting over", flush=True)
        return None
    print(f"trial {trial.number} retries trial {history[-1]}: resuming after epoch {checkpoint['epoch']}", flush=True)
    return checkpoint


def run_trial(ctx: WorkerContext, trial: optuna.Trial, check_interrupt: Callable[[], None]) -> float:
    """Objective: train one config, report the metric every epoch, return its best value over the epochs."""
    import torch
    import wandb

    study = trial.study
    claim = {"host": socket.gethostname(), "pid": os.getpid(), "started": str(trial.datetime_start)}
    trial.set_user_attr("worker", claim)  # see fail_dead_trials
    trial.set_user_attr("failure", "")  # a retry inherits the user attrs of the attempt that died
    if _surplus(study, trial, ctx.trials):
        trial.set_user_attr("failure", "surplus: the study already had enough finished or running trials")
        raise TrialFailed("surplus trial")
    sampled = {p.name: p.sample(trial) for p in ctx.sweep.params}
    try:
        config = p2.validate_config(p2.DEFAULTS | sampled | {"val_size": ctx.val_size})
    except p2.ConfigError as e:
        trial.set_user_attr("failure", f"invalid sampled config: {e}")
        raise TrialFailed(str(e)) from None
    run_dir = trial_dir(ctx, trial.number)
    resume = _resume_from(ctx, trial, run_dir)
    if resume is not None:
        config = resume["config"]
    trial.set_user_attr("config", config)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("device", p2.device_name(ctx.data.train_labels.device))
    maximize = ctx.sweep.direction == "maximize"
    best = -math.inf if maximize else math.inf
    strict = (ctx.sweep.early_terminate or {}).get("strict", True) is True  # W&B's schema default is true
    history: list[dict] = list(resume["history"]) if resume else []

    def report(metrics: dict) -> None:
        """W&B's hyperband compares the value at a band (strict, its default), or with strict false the best so far."""
        nonlocal best
        value = metrics[ctx.sweep.metric]
        best = max(best, value) if maximize else min(best, value)
        trial.report(value if strict else best, metrics["epoch"])

    for metrics in history:  # a resumed trial: the pruner sees the epochs the dead attempt finished
        report(metrics)
    run = wandb.init(project=ctx.wandb_project, group=ctx.study_name, job_type="local_sweep",
                     name=f"{ctx.study_name}-trial-{trial.number}", config=config, mode=ctx.wandb_mode,
                     reinit="finish_previous")
    run.define_metric("val_accuracy", summary="max")

    def on_epoch(metrics: dict) -> None:
        history.append(metrics)
        run.log(metrics)
        report(metrics)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {metrics['epoch']}: {ctx.sweep.metric} {best:.4g}")

    try:
        summary = p2.train(config, ctx.data, run_dir, on_epoch=on_epoch, resume=resume, check_interrupt=check_interrupt)
    except optuna.TrialPruned:
        epoch = history[-1]["epoch"]
        trial.set_user_attr("status", "pruned")
        trial.set_user_attr("epochs_completed", epoch)
        partial = {"status": "pruned", "config": config, "epochs_completed": epoch, "history": history}
        p2.write_json_atomic(partial, run_dir / "summary.json")
        p2.plot_learning_curve(history, run_dir / "curves.png", title=f"{run_dir.name} pruned after epoch {epoch}")
        run.summary.update({"status": "pruned", "best_val_accuracy": max(m["val_accuracy"] for m in history)})
        run.finish()
        raise
    except torch.OutOfMemoryError:
        message = p2.out_of_memory_message(config, ctx.data.train_labels.device)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        trial.set_user_attr("failure", message)
        run.summary["error"] = message
        run.finish(exit_code=1)
        raise TrialFailed(message) from None
    except BaseException as e:  # Ctrl-C, SIGTERM (p2.Interrupted) or a bug: the trial becomes FAIL
        interrupted = isinstance(e, p2.Interrupted)
        trial.set_user_attr("failure", f"interrupted by {e}" if interrupted else repr(e))
        run.finish(exit_code=128 + e.signum if interrupted else 1)
        raise
    trial.set_user_attr("status", summary["status"])
    trial.set_user_attr("epochs_completed", summary["epochs_completed"])
    for key in ("test_accuracy", "total_seconds"):
        if summary.get(key) is not None:
            trial.set_user_attr(key, summary[key])
    run.summary.update({key: summary[key] for key in ("best_val_accuracy", "best_epoch", "status", "test_accuracy")
                        if summary.get(key) is not None})
    run.finish()
    if summary["status"] == "diverged":
        trial.set_user_attr("failure", f"diverged: non-finite training loss in epoch {summary['epochs_completed'] + 1}")
        if not history:
            raise TrialFailed("diverged before the first epoch ended")
    return best


# ----------------------------------------------------------------------------------------------------------------------
# Workers


def work(ctx: WorkerContext, study: optuna.Study) -> int:
    """Run trials until the study has ctx.trials finished ones; return an exit code.

    SIGTERM and SIGINT stop training between steps (part_2_cifar.StopOnSignal); the trial becomes FAIL and is
    queued for a retry, which resumes from its last.pt when the same command runs again.
    """
    failures = 0
    current: list[int] = []  # the trial id this worker runs, for a retry when it is interrupted

    with p2.StopOnSignal() as stop:

        def check_interrupt() -> None:
            stop.check()
            if ctx.parent_pid is not None and os.getppid() != ctx.parent_pid:
                raise p2.Interrupted(signal.SIGHUP)  # the launcher was killed: stop as if the terminal hung up

        def objective(trial: optuna.Trial) -> float:
            current[:] = [trial._trial_id]
            return run_trial(ctx, trial, check_interrupt)

        try:
            while True:
                check_interrupt()
                fail_dead_trials(study)
                found = counts(study)
                done = found[TrialState.COMPLETE] + found[TrialState.PRUNED]
                if done + found[TrialState.RUNNING] >= ctx.trials:
                    return 0
                if ctx.sweep.target is not None and done and _reached(study, ctx.sweep.target):
                    print(f"target {ctx.sweep.metric} {ctx.sweep.target} reached; stopping", flush=True)
                    return 0
                current.clear()
                study.optimize(objective, n_trials=1, catch=(TrialFailed,))
                last = study._storage.get_trial(current[0]) if current else None
                if last is not None and last.user_attrs.get("failure", "").startswith("surplus"):
                    return 0
                failures = failures + 1 if last is not None and last.state == TrialState.FAIL else 0
                if failures >= MAX_FAILURES_IN_A_ROW:
                    print(f"error: {failures} trials in a row failed (last: {last.user_attrs.get('failure')}); "
                          "stopping", file=sys.stderr, flush=True)
                    return 1
        except p2.Interrupted as e:
            trial = study._storage.get_trial(current[0]) if current else None
            if trial is not None and trial.state == TrialState.FAIL:
                optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES)(study, trial)
                print(f"interrupted by {e}: trial {trial.number} failed and is queued for a retry; run the same "
                      "command again to continue", file=sys.stderr, flush=True)
            return 128 + e.signum


def _reached(study: optuna.Study, target: float) -> bool:
    best = study.best_value
    return best >= target if study.direction == optuna.study.StudyDirection.MAXIMIZE else best <= target


def gpu_slots(workers: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker: round-robin over the visible GPUs, several workers per GPU allowed."""
    import torch

    if not torch.cuda.is_available():
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [i.strip() for i in visible.split(",") if i.strip()] if visible else [
        str(i) for i in range(torch.cuda.device_count())]
    return [ids[i % len(ids)] for i in range(workers)]


def launch_workers(argv: list[str], workers: int) -> int:
    """Start `workers` copies of this program as worker processes on the same study; wait; forward signals."""
    procs = []
    for index, gpu in enumerate(gpu_slots(workers)):
        env = dict(os.environ)
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        elif "OMP_NUM_THREADS" not in env:  # CPU workers: share the cores; oversubscribed torch threads spin (30x)
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker-of", str(os.getpid())]
        procs.append(subprocess.Popen(cmd, env=env))
        print(f"worker {index}: pid {procs[-1].pid}" + (f", CUDA_VISIBLE_DEVICES={gpu}" if gpu else ""), flush=True)

    def forward(signum: int, frame: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        codes = [proc.wait() for proc in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max(codes, key=abs)


# ----------------------------------------------------------------------------------------------------------------------
# Report


def trial_rows(study: optuna.Study) -> list[dict]:
    """One row per trial, best first (finished ones by value), then the others by number."""
    sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
    rows = []
    for t in study.get_trials(deepcopy=False):
        config = t.user_attrs.get("config") or {}
        row = {"trial": t.number, "state": t.state.name, "value": t.value,
               "epochs_completed": t.user_attrs.get("epochs_completed"),
               "test_accuracy": t.user_attrs.get("test_accuracy"),
               "seconds": round(t.duration.total_seconds(), 1) if t.duration else None}
        row |= {key: config.get(key) for key in study.user_attrs.get("sweep_config", {}).get("parameters", {})}
        notes = [t.user_attrs.get("failure") or ("no reason recorded" if t.state == TrialState.FAIL else "")]
        if "failed_trial" in t.system_attrs:
            notes.append(f"retry of trial {t.system_attrs['retry_history'][-1]}")
        row["note"] = "; ".join(note for note in notes if note)
        rows.append(row)
    order = {"COMPLETE": 0, "PRUNED": 1}  # a pruned trial's value is from the epoch it stopped at
    return sorted(rows, key=lambda r: (order.get(r["state"], 2), sign * (r["value"] or 0), r["trial"]))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def print_table(rows: list[dict], limit: int) -> None:
    if not rows:
        print("no trials yet")
        return
    columns = [c for c in rows[0] if c != "note"] + ["note"]
    cells = [[_format(r[c]) for c in columns] for r in rows[:limit]]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")


def plot_progress(study: optuna.Study, metric: str, title: str, path: Path) -> None:
    """Best value so far against trial number and against wall time since the study's first trial started."""
    import matplotlib.pyplot as plt

    done = sorted((t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))),
                  key=lambda t: t.datetime_complete)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    start = min(t.datetime_start for t in study.get_trials(deepcopy=False) if t.datetime_start)
    fig, (by_number, by_time) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((by_number, lambda t: t.number, "trial number"),
                           (by_time, lambda t: (t.datetime_complete - start).total_seconds() / 60,
                            "wall time since the first trial started (min)")):
        ordered = sorted(done, key=key)
        xs, values = [key(t) for t in ordered], [t.value for t in ordered]
        running = [max(values[:i + 1]) if maximize else min(values[:i + 1]) for i in range(len(values))]
        ax.scatter(xs, values, s=12, alpha=0.5, label="completed trial")
        ax.step(xs, running, where="post", color="C1", label="best so far")
        ax.set(xlabel=label, ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    _save(fig, path)


def write_report(study: optuna.Study, sweep: Sweep, runs_dir: Path, images_dir: Path) -> None:
    """Console table of the top trials, all trials as CSV, and the plots, each titled with its data and machine."""
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as oplt

    rows = trial_rows(study)
    found = counts(study)
    print(f"\nstudy {study.study_name}: " + ", ".join(f"{n} {s.name}" for s, n in found.items() if n)
          + " (--trials counts COMPLETE + PRUNED)")
    print_table(rows, TOP_TRIALS)
    csv_path = runs_dir / study.study_name / "trials.csv"
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {csv_path}")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        print("no completed trial yet: no plots")
        return
    devices = sorted({t.user_attrs["device"] for t in complete if "device" in t.user_attrs})
    title = (f"study {study.study_name}, {len(complete)} completed trials; data: {study.user_attrs.get('data', '?')}; "
             f"on {socket.gethostname()}: {', '.join(devices) or 'unknown device'}")
    images_dir.mkdir(parents=True, exist_ok=True)
    stem = images_dir / f"sweep_{study.study_name}"
    plot_progress(study, sweep.metric, title, Path(f"{stem}_progress.png"))
    for kind, plot in (("importance", oplt.plot_param_importances), ("parallel", oplt.plot_parallel_coordinate)):
        if kind == "importance" and len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
            print(f"skipped the importance plot: {len(complete)} completed trials, it needs "
                  f"{MIN_TRIALS_FOR_IMPORTANCE}")
            continue
        try:
            with warnings.catch_warnings():  # matplotlib warns about axes of parameters with one value
                warnings.simplefilter("ignore", UserWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            print(f"skipped the {kind} plot: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.suptitle(title, fontsize=8)
        _save(fig, Path(f"{stem}_{kind}.png"))


# ----------------------------------------------------------------------------------------------------------------------
# Command line and main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = p2.OneLineErrorParser(__doc__)
    parser.add_argument("sweep_config", type=Path, help="a W&B sweep file (JSON or YAML), e.g. sweep_config.json")
    parser.add_argument("--trials", type=int, help="finished (COMPLETE + PRUNED) trials the study should reach")
    parser.add_argument("--study", help="study name (default: the sweep file's name, e.g. sweep_config)")
    parser.add_argument("--storage", help=f"journal file or database URL (default <runs-dir>/{DEFAULT_STORAGE_FILE});"
                        " postgresql://... lets several machines share one study")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine, spread over GPUs")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="holds cifar-100-python/ (default ./data)")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="trial folders and the default storage")
    parser.add_argument("--val-size", type=int, default=5000, help="training images held out for validation")
    parser.add_argument("--report", action="store_true", help="only print the table and draw the plots of the study")
    parser.add_argument("--images-dir", type=Path, default=Path("images"), help="where the plots go (default images)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--wandb-mode", choices=("auto", "online", "offline", "disabled"), default="auto",
                        help="auto: WANDB_MODE if set, else online with an API key, else offline")
    parser.add_argument("--wandb-project", default="cifar100-simplecnn", help="W&B project of the trial runs")
    parser.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)  # set by launch_workers
    args = parser.parse_args(argv)
    if not args.report and (args.trials is None or args.trials < 1):
        parser.error("--trials N (N >= 1) is required unless --report is given")
    if args.workers < 1:
        parser.error(f"--workers={args.workers} is not allowed: use an integer >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, retry, plots
    try:
        sweep = load_sweep(args.sweep_config)
        study_name = args.study or sweep.raw.get("name") or args.sweep_config.stem
        storage = open_storage(args.storage, args.runs_dir)
        study = open_study(sweep, study_name, storage, create=not args.report)
        if args.report:
            write_report(study, sweep, args.runs_dir, args.images_dir)
            return 0
        trials = args.trials
        if sweep.method == "grid" and trials > grid_size(sweep):
            print(f"the grid has {grid_size(sweep)} points: running {grid_size(sweep)} trials, not {trials}")
            trials = grid_size(sweep)
        device = p2.pick_device(args.device)
        mode = p2.resolve_wandb_mode(args.wandb_mode)
        if args.workers > 1 and args.worker_of is None:
            code = launch_workers(argv, args.workers)
            write_report(study, sweep, args.runs_dir, args.images_dir)
            return code
    except (SweepConfigError, p2.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        data = p2.prepare_data(args.data_dir, args.val_size, device)
    except (p2.DataError, p2.ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, p2.ConfigError) else 1
    if "data" not in study.user_attrs:
        study.set_user_attr("data", f"{args.data_dir.resolve().name} ({data.train_labels.numel()} train / "
                                    f"{data.val_labels.numel()} val images)")
    ctx = WorkerContext(sweep, study_name, trials, data, args.runs_dir, args.val_size, mode, args.wandb_project,
                        args.worker_of)
    started = time.perf_counter()
    code = work(ctx, study)
    print(f"worker {os.getpid()} stopped after {time.perf_counter() - started:.0f} s", flush=True)
    if args.worker_of is None and code == 0:
        write_report(study, sweep, args.runs_dir, args.images_dir)
    return code


if __name__ == "__main__":
    sys.exit(main())
