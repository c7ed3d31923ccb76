"""W&B sweep file -> Optuna: the search space, sampler and pruner that local_sweep.py runs. Pure: no torch, no I/O
beyond reading the file, so it can be checked anywhere (tests/test_local_sweep.py draws from every distribution).

Translation: method bayes -> multivariate TPE (measured against GPSampler, see make_sampler), random/grid ->
RandomSampler/GridSampler, metric.goal -> direction, early_terminate hyperband -> HyperbandPruner fed the metric
after every epoch. Every W&B distribution Optuna can honour is translated; the others (beta, q_beta,
categorical_w_probabilities, nested parameters) raise SweepConfigError, a one-line message for people.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial

METRICS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")  # what part_2_cifar.py logs every epoch
QUANTILE_EPS = 1e-6  # normal-type parameters are sampled as a quantile in [eps, 1 - eps]: +-4.75 sigma
# method bayes -> multivariate TPE, chosen by measurement: 12 seeds x 30 trials on a noisy synthetic stand-in for
# val_accuracy over this sweep's space (2 floats, 5 categoricals, stepped epochs; the best learning rate depends on
# batch_size), optuna 5.0, 2-core CPU. Median regret after 30 trials: TPE 1.81 points (IQR 1.41-2.32), GPSampler
# 2.51 (1.71-3.04), random 3.09; TPE took 6 ms a trial, GP 3 s and needs scipy. TPE's constant_liar also keeps
# parallel workers from proposing the same config; GPSampler has no such option in Optuna 5.


class SweepConfigError(ValueError):
    """The sweep file asks for something this program cannot honour; the message is one line for people."""


# ----------------------------------------------------------------------------------------------------------------------
# Parameters: W&B parameter specs -> Optuna distributions, plus the map from Optuna's value to the config value.


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


def _check_bounds(param: Param, validate: Callable[[dict], object]) -> None:
    """Every value a bounded parameter can take must pass the trainer's rules; say which one does not."""
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
            validate({param.name: value})
        except ValueError as e:
            raise SweepConfigError(f"parameter {param.name!r} can take {value!r}, which part_2_cifar.py rejects: "
                                   f"{e}") from None


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
    longest_epochs: int  # the most epochs a trial can run: Hyperband's max_resource
    target: float | None
    raw: dict  # the file as read, stored with the study so a changed file is noticed


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
    if metric_name not in METRICS:
        raise SweepConfigError(f"metric {metric_name!r} is not one part_2_cifar.py logs: use one of "
                               f"{', '.join(METRICS)}")
    goal = metric.get("goal", "minimize")  # W&B's default
    if goal not in ("minimize", "maximize"):
        raise SweepConfigError(f"metric goal {goal!r} is not allowed: use minimize or maximize")
    params = []
    for name, spec in raw["parameters"].items():
        if name not in defaults:
            raise SweepConfigError(f"parameter {name!r} is not a part_2_cifar.py setting (those are "
                                   f"{', '.join(defaults)})")
        param = translate_parameter(name, spec)
        _check_bounds(param, validate)
        params.append(param)
    if method == "grid":
        continuous = [p.name for p in params if isinstance(p.distribution, FloatDistribution)
                      and (p.distribution.step is None or p.to_value is not _identity)]
        if continuous:
            raise SweepConfigError(f"parameter {continuous[0]!r}: grid search needs discrete values (values, "
                                   "int_uniform or q_uniform), as in W&B")
    longest = _longest_epochs(next((p for p in params if p.name == "epochs"), None), defaults["epochs"])
    early = raw.get("early_terminate")
    if early is not None:
        hyperband_settings(early, longest)  # fail now, not when the first trial reports
    return Sweep(method, metric_name, goal, tuple(params), early, longest, metric.get("target"), raw)


def _longest_epochs(epochs: Param | None, default: int) -> int:
    if epochs is None:
        return default
    if epochs.distribution is None:
        return int(epochs.constant)
    if isinstance(epochs.distribution, CategoricalDistribution):
        return int(max(epochs.distribution.choices))
    if epochs.optuna_name.endswith("_quantile"):
        return 0  # unbounded: refused below if hyperband needs it
    return int(epochs.to_value(epochs.distribution.high))




# ----------------------------------------------------------------------------------------------------------------------
# Sampler and pruner


def hyperband_settings(early: dict, longest_epochs: int) -> tuple[int, int, int, int | None]:
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
    if longest_epochs < 1:
        raise SweepConfigError("early_terminate with an unbounded epochs distribution: give epochs bounds")
    longest = longest_epochs
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
    min_resource, max_resource, eta, last_band = hyperband_settings(sweep.early_terminate, sweep.longest_epochs)
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
    # Why TPE and not GPSampler: see the measurement at the top. No seed: K workers with one seed would
    # propose the same configs.
    return optuna.samplers.TPESampler(multivariate=True, constant_liar=True)
