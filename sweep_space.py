"""W&B sweep file -> Optuna: the search space, sampler and pruner that local_sweep.py runs. Pure: no torch, no I/O
beyond reading the file. What is translated, and what is refused with one line (SweepConfigError), is in the README
("Without W&B"); tests/test_local_sweep.py draws from every distribution.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

from cli import EXIT_BAD_INPUT

METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")  # what part_2_cifar.py logs every epoch
# method custom: W&B's Optuna scheduler reads each objective from a finished run's summary, so an objective must be a
# flat number there. part_2_cifar.run_training writes these (val_accuracy is {"max": x} under define_metric; the test
# accuracy is never used to choose).
SUMMARY_OBJECTIVES = ("best_val_accuracy", "flops_per_image", "parameters")
# Settings a sweep cannot vary, and the option that sets them for every trial: the validation split is what trials
# are compared on, so it must be the same images for all of them (README: val_size is never swept)
NOT_SWEPT = {"val_size": "--val-size"}
SCHEDULER_KEYS = ("engine", "source", "optimizer", "search_space")  # W&B's schema allows no other key
QUANTILE_EPS = 1e-6  # the normal family is sampled as a quantile in [eps, 1 - eps]: +-4.75 sigma
LOG_UNIFORM = ("log_uniform", "q_log_uniform", "inv_log_uniform", "log_uniform_values", "q_log_uniform_values",
               "inv_log_uniform_values")  # 1/X is log-uniform exactly when X is
NATURAL_LOG_BOUNDS = {"log_uniform": math.exp, "q_log_uniform": math.exp,  # W&B v1: min and max are logs ...
                      "inv_log_uniform": lambda x: math.exp(-x)}  # ... and X = exp(-U(min, max))
NOT_IN_OPTUNA = {"beta": "Optuna has no beta distribution; use uniform or values",
                 "q_beta": "Optuna has no beta distribution; use uniform or values",
                 "categorical_w_probabilities": "Optuna weighs categories equally; drop probabilities"}


class SweepConfigError(ValueError):
    """The sweep file asks for something this program cannot honour; the message is one line for people."""

    exit_code = EXIT_BAD_INPUT


# ----------------------------------------------------------------------------------------------------------------------
# Parameters: W&B parameter specs -> Optuna distributions, plus the map from Optuna's draw to the config value


@dataclass(frozen=True)
class Param:
    """One swept key: a constant (no distribution), or Optuna's draw from `distribution`, mapped by `value`."""

    name: str
    distribution: BaseDistribution | None
    constant: Any = None
    normal: NormalDist | None = None  # the draw is a quantile, mapped through this normal (W&B's normal family)
    log: bool = False  # then exp (log_normal)
    q: float | None = None  # then rounded to a multiple of q, an int when q is (W&B's q_* kinds)

    @property
    def optuna_name(self) -> str:  # a quantile is not the value: it gets its own name in the trial's params
        return f"{self.name}_quantile" if self.normal else self.name

    def value(self, x: Any) -> Any:
        x = self.normal.inv_cdf(x) if self.normal else x
        x = math.exp(x) if self.log else x
        if self.q is None:
            return x
        return int(round(x / self.q) * self.q) if isinstance(self.q, int) else round(x / self.q) * self.q

    def sample(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if d is None:
            return self.constant
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.optuna_name, d.choices)
        suggest = trial.suggest_int if isinstance(d, IntDistribution) else trial.suggest_float
        return self.value(suggest(self.optuna_name, d.low, d.high, step=d.step, log=d.log))

    def extremes(self) -> list:
        """Every value a finite parameter can take, a range's two ends, nothing for the unbounded normal family."""
        d = self.distribution
        if d is None:
            return [self.constant]
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        return [] if self.normal else [self.value(d.low), self.value(d.high)]

    def grid(self) -> list:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return list(d.choices)
        return [d.low + i * d.step for i in range(round((d.high - d.low) / d.step) + 1)]


def _number(spec: dict, key: str, name: str, default: float | None = None) -> float:
    value = spec.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SweepConfigError(f"parameter {name!r}: {key!r} must be a number, got {value!r}")
    return value


def _one_of(what: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise SweepConfigError(f"{what} {value!r} is not supported: use one of {', '.join(allowed)}")
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
    """Optuna's version of one W&B parameter: the same support and, but for q_uniform's half-weight ends, the same
    prior. The normal family is drawn as a quantile and mapped as W&B's engine does; the trial's user attr "config"
    holds the value the run used."""
    if not isinstance(spec, dict):
        raise SweepConfigError(f"parameter {name!r}: expected an object like {{\"values\": [...]}}, got {spec!r}")
    kind = _distribution_name(name, spec)
    if kind in NOT_IN_OPTUNA:
        raise SweepConfigError(f"parameter {name!r}: distribution {kind} is not supported ({NOT_IN_OPTUNA[kind]})")
    q = _number(spec, "q", name, 1) if kind.startswith("q_") else None
    if q is not None and q <= 0:
        raise SweepConfigError(f"parameter {name!r}: q must be > 0, got {q!r}")
    if kind == "constant":
        return Param(name, None, constant=spec["value"])
    if kind == "categorical":
        values = spec["values"]
        if not isinstance(values, list) or not values or not all(
                v is None or isinstance(v, (bool, int, float, str)) for v in values):
            raise SweepConfigError(f"parameter {name!r}: values must be a non-empty list of numbers, strings, "
                                   "booleans or null (what Optuna's categorical distribution takes)")
        return Param(name, CategoricalDistribution(values))
    if kind in ("normal", "q_normal", "log_normal", "q_log_normal"):
        mu, sigma = _number(spec, "mu", name, 0.0), _number(spec, "sigma", name, 1.0)
        if sigma <= 0:
            raise SweepConfigError(f"parameter {name!r}: sigma must be > 0, got {sigma}")
        return Param(name, FloatDistribution(QUANTILE_EPS, 1 - QUANTILE_EPS), normal=NormalDist(mu, sigma),
                     log="log" in kind, q=q)
    if kind not in ("uniform", "int_uniform", "q_uniform", *LOG_UNIFORM):
        raise SweepConfigError(f"parameter {name!r}: unknown distribution {kind!r}")
    low, high = _number(spec, "min", name), _number(spec, "max", name)
    if low > high:
        raise SweepConfigError(f"parameter {name!r}: min {low} is above max {high}")
    if kind in LOG_UNIFORM:
        if kind.endswith("_values") and low <= 0:
            raise SweepConfigError(f"parameter {name!r}: {kind} needs min > 0, got {low}")
        low, high = sorted(map(NATURAL_LOG_BOUNDS.get(kind, float), (low, high)))
        return Param(name, FloatDistribution(low, high, log=True), q=q)
    if kind == "int_uniform":
        if not all(isinstance(spec[k], int) for k in ("min", "max")):
            raise SweepConfigError(f"parameter {name!r}: int_uniform needs integer min and max")
        return Param(name, IntDistribution(low, high))
    if kind == "q_uniform":  # the multiples of q that round(U(min, max) / q) * q can give
        low, high = round(low / q) * q, round(high / q) * q
        return Param(name, IntDistribution(low, high, step=q) if isinstance(q, int) else
                     FloatDistribution(low, high, step=q))
    return Param(name, FloatDistribution(low, high))


# ----------------------------------------------------------------------------------------------------------------------
# The sweep file


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
    # (summary key, goal) of each objective: `metrics` (or `metric`) of a method custom sweep, whose values are read
    # from the run's summary when it ends, as W&B's Optuna scheduler reads them; empty for bayes, random and grid
    objectives: tuple[tuple[str, str], ...] = ()
    scheduler: Mapping[str, str] = field(default_factory=dict)  # method custom: W&B's scheduler block
    search_space: Callable[[optuna.Trial], dict] | None = None  # scheduler.search_space, loaded by local_sweep.py

    @property
    def directions(self) -> list[str]:
        """One Optuna direction per objective."""
        return [goal for _, goal in self.objectives] or [self.direction]


def load_sweep(path: Path, defaults: Mapping[str, Any], validate: Callable[[dict], object]) -> Sweep:
    """Read and translate a W&B sweep file (JSON or YAML) for a trainer with these settings (`defaults`) and rules
    (`validate` raises ValueError); raise SweepConfigError for anything this program cannot honour."""
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
    if not isinstance(raw, dict):
        raise SweepConfigError(f"{path} is not a W&B sweep config: expected an object with a parameters section")
    method = _one_of("method", raw.get("method", "random"), ("bayes", "random", "grid", "custom"))
    scheduler = _scheduler(raw, method)
    if "search_space" in scheduler:
        if "parameters" in raw:  # W&B's scheduler would silently take the function and ignore the section
            raise SweepConfigError("scheduler.search_space defines the parameters: remove the parameters section")
    elif not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise SweepConfigError(f"{path} has no parameters: expected a W&B sweep config with a parameters section")
    program = raw.get("program")
    if program is not None and Path(program).name != "part_2_cifar.py":
        raise SweepConfigError(f"program {program!r}: local_sweep.py can only run part_2_cifar.py")
    objectives = _objectives(raw) if method == "custom" else ()
    if "metrics" in raw and method != "custom":
        raise SweepConfigError(f"metrics (several objectives) needs method custom with scheduler engine optuna, as "
                               f"in W&B; got method {method}")
    metric = raw.get("metric") or {}
    metric_name, goal = objectives[0] if objectives else (_one_of(what, value, allowed) for what, value, allowed in (
        ("metric", metric.get("name", "val_accuracy"), METRICS),  # what part_2_cifar.py logs
        ("metric goal", metric.get("goal", "minimize"), ("minimize", "maximize"))))  # W&B's default goal
    params = []
    for name, spec in raw.get("parameters", {}).items():
        if name in NOT_SWEPT:
            raise SweepConfigError(not_swept_message(f"parameter {name!r}", name))
        if name not in defaults:
            raise SweepConfigError(f"parameter {name!r} is not a part_2_cifar.py setting (those are "
                                   f"{', '.join(defaults)})")
        params.append(param := translate_parameter(name, spec))
        for value in param.extremes():  # the normal family's values are checked per trial
            try:
                validate({name: value})
            except ValueError as e:
                raise SweepConfigError(f"parameter {name!r} can take {value!r}, which part_2_cifar.py rejects: "
                                       f"{e}") from None
        if method == "grid" and isinstance(param.distribution, FloatDistribution) and param.distribution.step is None:
            raise SweepConfigError(f"parameter {name!r}: grid search needs discrete values (values, int_uniform or "
                                   "q_uniform), as in W&B")
    early = raw.get("early_terminate")
    if early is not None and scheduler:
        raise SweepConfigError("early_terminate cannot be used with scheduler (W&B's schema refuses it: the "
                               "scheduler's own study decides, and a study of several objectives cannot be pruned)")
    if early is not None:
        hyperband_bands(early)  # fail now, not when the first trial reports
    return Sweep(method, metric_name, goal, tuple(params), early, metric.get("target"), raw,
                 objectives=objectives, scheduler=scheduler)


def not_swept_message(where: str, name: str) -> str:
    """One line: `name` (a NOT_SWEPT key) found at `where` cannot be swept, and the option that sets it."""
    return (f"{where} cannot be swept: every trial is validated on the same held-out images, so that trials compare; "
            f"remove it and set it for all trials with {NOT_SWEPT[name]}")


def _scheduler(raw: dict, method: str) -> dict:
    """W&B's scheduler block, checked as W&B's schema checks it: engine optuna with method custom, engine wandb
    (the same search as without a scheduler) with the others; source names the file of optimizer / search_space."""
    scheduler = raw.get("scheduler")
    if scheduler is None:
        if method == "custom":
            raise SweepConfigError("method custom needs a scheduler: add \"scheduler\": {\"engine\": \"optuna\"}")
        return {}
    if not isinstance(scheduler, dict) or not all(isinstance(v, str) for v in scheduler.values()):
        raise SweepConfigError(f"scheduler {scheduler!r}: expected an object of strings like {{\"engine\": "
                               "\"optuna\"}")
    unknown = sorted(set(scheduler) - set(SCHEDULER_KEYS))
    if unknown:
        raise SweepConfigError(f"scheduler.{unknown[0]} is not a scheduler key: use {', '.join(SCHEDULER_KEYS)}")
    engine = _one_of("scheduler.engine", scheduler.get("engine"), ("optuna", "wandb"))  # ax: not here
    if (engine == "optuna") != (method == "custom"):
        raise SweepConfigError(f"scheduler.engine {engine} with method {method}: W&B runs engine optuna with method "
                               "custom, engine wandb with bayes, random or grid")
    if engine == "wandb" and set(scheduler) != {"engine"}:
        raise SweepConfigError(f"scheduler.{sorted(set(scheduler) - {'engine'})[0]} needs scheduler.engine optuna")
    for key in ("optimizer", "search_space"):
        if key in scheduler and not scheduler.get("source"):
            raise SweepConfigError(f"scheduler.{key} needs scheduler.source, the Python file that defines it")
    return scheduler


def _objectives(raw: dict) -> tuple[tuple[str, str], ...]:
    """(summary key, goal) of a method custom sweep's `metrics`, or of its one `metric`."""
    if "metric" in raw and "metrics" in raw:
        raise SweepConfigError("metric and metrics cannot both be set: metric for one objective, metrics for several")
    metrics = raw.get("metrics", [raw.get("metric") or {}])
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, dict) for m in metrics):
        raise SweepConfigError(f"metrics {metrics!r}: expected a list like [{{\"name\": \"best_val_accuracy\", "
                               "\"goal\": \"maximize\"}, ...]")
    objectives = []
    for metric in metrics:
        name = metric.get("name")
        if name == "val_accuracy":
            raise SweepConfigError("metric val_accuracy is {\"max\": x} in a run's W&B summary (define_metric), "
                                   "which W&B's Optuna scheduler cannot tell the study: use best_val_accuracy")
        if name not in SUMMARY_OBJECTIVES:
            raise SweepConfigError(f"metric {name!r} is not a number in every run's summary: method custom takes "
                                   f"{', '.join(SUMMARY_OBJECTIVES)}")
        if "target" in metric:  # W&B's Optuna scheduler does not read it: say so rather than ignore it
            raise SweepConfigError(f"metric {name} target: W&B's Optuna scheduler has no target; remove it and "
                                   "bound the sweep with --trials")
        goal = _one_of(f"metric {name} goal", metric.get("goal", "minimize"), ("minimize", "maximize"))
        objectives.append((name, goal))
    if len({name for name, _ in objectives}) < len(objectives):
        raise SweepConfigError(f"metrics name {[name for name, _ in objectives]}: each objective once")
    return tuple(objectives)


# ----------------------------------------------------------------------------------------------------------------------
# Sampler and pruner

HYPERBAND_KEYS = ("type", "min_iter", "max_iter", "s", "eta", "strict")  # W&B's schema, hyperband_stopping
MIN_ITER_BANDS = 100  # W&B's min_iter form computes this many bands


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def hyperband_bands(early: dict) -> tuple[list[int], float, bool]:
    """(bands in epochs, ascending; eta; strict) from a W&B early_terminate section, or SweepConfigError for what
    W&B's schema or engine refuses.

    As sweeps.hyperband_stopping.hyperband_stop_runs computes them: with max_iter (and s, which it then needs),
    int(max_iter / eta^k) for k = 1..s while that is >= 1; otherwise int(min_iter * eta^k) for k = 0..99. The
    division or multiplication is repeated, as there, so a fractional eta rounds the same way.
    """
    if not isinstance(early, dict) or early.get("type") != "hyperband":
        raise SweepConfigError(f"early_terminate {early!r} is not supported: only type hyperband exists")
    unknown = sorted(set(early) - set(HYPERBAND_KEYS))
    if unknown:
        raise SweepConfigError(f"early_terminate: unknown key {unknown[0]!r}; hyperband takes "
                               f"{', '.join(HYPERBAND_KEYS)}")
    eta, strict = early.get("eta", 3), early.get("strict", True)  # W&B's schema defaults
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta <= 1:
        raise SweepConfigError(f"early_terminate eta={eta!r}: use a number > 1 (each band keeps the best 1/eta)")
    if not isinstance(strict, bool):
        raise SweepConfigError(f"early_terminate strict={strict!r}: use true or false")
    bands = []
    if "max_iter" in early:
        max_iter, s = early["max_iter"], early.get("s")
        if not _is_int(max_iter):
            raise SweepConfigError(f"early_terminate max_iter={max_iter!r}: use an integer")
        if not _is_int(s) or s < 1:
            raise SweepConfigError(f"early_terminate s={s!r}: max_iter needs s, the number of bands, an integer >= 1")
        band = max_iter
        for _ in range(s):
            band /= eta
            if band < 1:
                break
            bands.append(int(band))
    elif "min_iter" in early:
        band = early["min_iter"]
        if not _is_int(band) or band < 1:
            raise SweepConfigError(f"early_terminate min_iter={band!r}: use an integer >= 1")
        for _ in range(MIN_ITER_BANDS):
            if not math.isfinite(band):  # a huge float eta: W&B's engine overflows here; no run gets that far
                break
            bands.append(int(band))
            band *= eta
    else:
        raise SweepConfigError("early_terminate hyperband needs min_iter, or max_iter and s")
    if not bands:
        raise SweepConfigError(f"early_terminate max_iter={early['max_iter']}, s={early['s']}, eta={eta} gives no "
                               "band >= 1 epoch: raise max_iter or lower eta")
    return sorted(bands), eta, strict


class WandbHyperbandPruner(optuna.pruners.BasePruner):
    """W&B's Hyperband early termination, decided for one trial as W&B's open-source sweep engine decides it for a
    run: `hyperband_stop_runs` in sweeps/hyperband_stopping.py (https://github.com/wandb/sweeps, sweeps 0.3.0; the
    paper is https://arxiv.org/abs/1603.06560). tests/test_hyperband.py checks it against that function.

    A trial's history is its reported values in step order, non-finite ones left out (W&B: the history rows that
    hold the metric, `filter_invalid`). At band b (an epoch from hyperband_bands) the threshold is the value ranked
    int(n / eta) from the best (rank 0) among the b-th values of the n trials that reached b, whatever their state.
    A trial is checked against the last band it has reached, with its value at that band (strict, W&B's default) or
    its best value so far (strict false), and pruned when that is worse than the threshold; a tie stays. Optuna asks
    after every epoch a trial reports, when W&B's controller would see the new row; thresholds move as other trials
    reach a band, so a trial can be pruned between bands, or after the last one, as under W&B.

    Every trial is read from the study's storage, so workers on several machines decide alike. A trial that failed
    and was queued for a retry (RetryHeartbeatStaleTrialCallback) is one W&B run resumed: once the retry has
    reported values, only the retry's count.
    """

    def __init__(self, bands: list[int], eta: float, strict: bool):
        self.bands, self.rank_fraction, self.strict = sorted(bands), 1.0 / eta, strict  # W&B's r = 1 / eta

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0  # then lower is better
        history = self._history(trial, sign)
        reached = [band for band in self.bands if band <= len(history)]
        if not reached:
            return False
        band = reached[-1]
        trials = study.get_trials(deepcopy=False)
        replaced = {n for t in trials if t.intermediate_values
                    for n in optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t)}
        histories = [self._history(t, sign) for t in trials if t.number not in replaced]
        at_band = sorted(h[band - 1] for h in histories if len(h) >= band)
        if not at_band:  # only when this trial was itself replaced by a retry; W&B's threshold is then infinite
            return False
        threshold = at_band[int(self.rank_fraction * len(at_band))]
        return (history[band - 1] if self.strict else min(history)) > threshold

    @staticmethod
    def _history(trial: FrozenTrial, sign: float) -> list[float]:
        return [sign * value for _, value in sorted(trial.intermediate_values.items()) if math.isfinite(value)]


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.early_terminate is None:
        return optuna.pruners.NopPruner()
    return WandbHyperbandPruner(*hyperband_bands(sweep.early_terminate))


def grid_size(sweep: Sweep) -> int:
    return math.prod(len(p.grid()) for p in sweep.params if p.distribution is not None)


def make_sampler(sweep: Sweep, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sweep's sampler; `seed` fixes its random draws (local_sweep.py seeds each draw)."""
    if sweep.method == "grid":
        return optuna.samplers.GridSampler({p.optuna_name: p.grid() for p in sweep.params
                                            if p.distribution is not None}, seed=seed)
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # bayes: multivariate TPE, chosen by measurement (README, "Without W&B": lower median regret than GPSampler on
    # this space, 6 ms a trial against 3 s). Its constant liar keeps parallel workers from proposing the same
    # config; one seed shared by K workers would make them propose the same configs
    # (local_sweep.py's --sampler-seed gives each draw a seed of its own).
    # custom (engine optuna): W&B's scheduler makes Optuna's default study, a TPE sampler; the same TPE here, with the
    # same two options. With several objectives it is Optuna's MOTPE: NSGA-II's first generation (50 trials) would
    # be random search for a whole sweep of tens of trials, and GPSampler lost to TPE on this space (above).
    return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
