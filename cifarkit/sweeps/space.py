"""W&B sweep file -> Optuna: the search space, sampler and pruner that local_sweep.py runs. Pure: no
torch, no I/O beyond reading the file.

A sweep file means here what it means to W&B: it is read as `wandb sweep` reads it (YAML), checked
against W&B's sweep schema and engine (the `sweeps` package, sweeps 0.3.0: schema.json,
fill_parameter, next_run), and each parameter is drawn as that engine draws it (method custom: as
W&B's Optuna scheduler translates it). What W&B refuses is refused with one line (SweepConfigError);
what W&B's schema only warns about is refused too, or read as W&B reads it with a one-line note
(Sweep.notes). tests/test_sweep_differential.py holds this to W&B's own engine on generated sweep
files; the README ("Without W&B") lists where this program differs on purpose."""

from __future__ import annotations

import bisect
import datetime
import difflib
import io
import json
import math
import re
import zlib
from collections.abc import Callable, Mapping
from contextlib import redirect_stderr
from dataclasses import dataclass, field, replace
from itertools import accumulate
from pathlib import Path
from statistics import NormalDist
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial

from cifarkit.core.cli import (
    EXIT_BAD_INPUT,
    CommandError,
    NotARegularFile,
    one_line,
    read_regular_text,
)
from cifarkit.core.settings import Settings

# What part_2_cifar.py writes to W&B. A sweep's metric may name any of these numbers, as W&B's may:
# every epoch's history row (part_2_cifar.train's metrics), and the numbers only its summary holds
# (run_training). The test accuracy is never chosen on (it would no longer measure anything), so a
# sweep may not name it.
HISTORY_METRICS = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "learning_rate",
    "epoch_seconds",
    "train_images_per_second",
)
SUMMARY_METRICS = (
    "best_val_accuracy",
    "best_epoch",
    "total_seconds",
    "parameters",
    "flops_per_image",
)
NEVER_CHOSEN_ON = ("test_accuracy", "test_loss")
# Settings a sweep cannot vary, and the option that sets them for every trial: the validation split
# is what trials are compared on, so it must be the same images for all of them (README: val_size is
# never swept)
NOT_SWEPT = {"val_size": "--val-size"}
# A distribution Optuna lacks is drawn as a quantile in [eps, 1 - eps] (normal: +-4.75 sigma)
QUANTILE_EPS = 1e-6
QUANTILE = FloatDistribution(QUANTILE_EPS, 1 - QUANTILE_EPS)

# W&B's sweep schema (sweeps 0.3.0, schema.json): the top-level keys, and those that hold text
TOP_LEVEL_KEYS = (
    "apiVersion",
    "kind",
    "controller",
    "description",
    "program",
    "job",
    "image_uri",
    "entity",
    "project",
    "method",
    "command",
    "name",
    "run_cap",
    "metric",
    "metrics",
    "scheduler",
    "early_terminate",
    "parameters",
)
TEXT_KEYS = (
    "apiVersion",
    "description",
    "program",
    "job",
    "image_uri",
    "entity",
    "project",
    "name",
)
METHODS = ("bayes", "random", "grid", "custom")
METRIC_KEYS = ("name", "goal", "target", "impute", "impute_while_running")
IMPUTE = ("latest", "best", "worst")
# W&B's schema allows no other key
SCHEDULER_KEYS = (
    "engine",
    "source",
    "optimizer",
    "search_space",
)
PARAMETER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")  # W&B's schema: names of parameters
GRID_KINDS = ("constant", "categorical", "int_uniform", "q_uniform")  # sweeps.grid_search_next_runs
DEPRECATED = {
    "log_uniform": "log_uniform_values",
    "inv_log_uniform": "inv_log_uniform_values",
    "q_log_uniform": "q_log_uniform_values",
}  # W&B v1 kinds: min and max are natural logs


class SweepConfigError(CommandError, ValueError):
    """The sweep file asks for something this program cannot honour; the message is one line for
    people."""

    exit_code = EXIT_BAD_INPUT


# --------------------------------------------------------------------------------------------------
# W&B's parameter kinds, as its engine tells them apart


def _is_number(value: Any) -> bool:  # JSON schema's "number": bool is not one
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:  # W&B's "integer" with its format check: an int, not 2.0, not True
    return isinstance(value, int) and not isinstance(value, bool)


NUMBER = ("a number", _is_number)
NON_NEGATIVE = ("a number >= 0", lambda v: _is_number(v) and v >= 0)
POSITIVE = ("a number > 0", lambda v: _is_number(v) and v > 0)
INTEGER = ("an integer", _is_int)
LIST = ("a non-empty list", lambda v: isinstance(v, list) and len(v) > 0)
WEIGHTS = (
    "a non-empty list of numbers >= 0",
    lambda v: LIST[1](v) and all(NON_NEGATIVE[1](p) for p in v),
)
ANYTHING = ("anything", lambda v: True)
# Each kind: (required keys, the keys it takes and what each must be), in the order W&B's engine
# tries them (schema.json definitions.parameter.anyOf; fill_parameter keeps the first kind the spec
# fits). A kind whose `distribution` W&B can infer has it optional.
KINDS: dict[str, tuple[tuple[str, ...], dict[str, tuple[str, Callable[[Any], bool]]]]] = {
    "q_beta": (("distribution",), {"a": NON_NEGATIVE, "b": NON_NEGATIVE, "q": POSITIVE}),
    "beta": (("distribution",), {"a": NON_NEGATIVE, "b": NON_NEGATIVE}),
    "categorical": (("values",), {"values": LIST}),
    "categorical_w_probabilities": (
        ("values", "probabilities"),
        {"values": LIST, "probabilities": WEIGHTS},
    ),
    "int_uniform": (("min", "max"), {"min": INTEGER, "max": INTEGER}),
    "uniform": (("min", "max"), {"min": NUMBER, "max": NUMBER}),
    "log_normal": (("distribution",), {"mu": NUMBER, "sigma": NON_NEGATIVE}),
    "log_uniform": (("distribution", "min", "max"), {"min": NUMBER, "max": NUMBER}),
    "inv_log_uniform": (("distribution", "min", "max"), {"min": NUMBER, "max": NUMBER}),
    "normal": (("distribution",), {"mu": NUMBER, "sigma": NON_NEGATIVE}),
    "q_log_normal": (("distribution",), {"q": POSITIVE, "mu": NUMBER, "sigma": NON_NEGATIVE}),
    "q_log_uniform": (
        ("distribution", "min", "max"),
        {"min": NUMBER, "max": NUMBER, "q": POSITIVE},
    ),
    "q_normal": (("distribution",), {"q": POSITIVE, "mu": NUMBER, "sigma": NON_NEGATIVE}),
    "q_uniform": (("distribution", "min", "max"), {"min": NUMBER, "max": NUMBER, "q": POSITIVE}),
    "constant": (("value",), {"value": ANYTHING}),
    "inv_log_uniform_values": (("distribution", "min", "max"), {"min": POSITIVE, "max": NUMBER}),
    "log_uniform_values": (("distribution", "min", "max"), {"min": POSITIVE, "max": NUMBER}),
    "q_log_uniform_values": (
        ("distribution", "min", "max"),
        {"min": POSITIVE, "max": NUMBER, "q": POSITIVE},
    ),
}
# W&B's defaults for what a kind leaves out (schema.json "default"); q's is a float: 1.0 gives
# floats, as in W&B
WANDB_DEFAULTS = {"mu": 0.0, "sigma": 1.0, "q": 1.0, "a": 1.0, "b": 1.0}


def _fits(kind: str, spec: dict) -> bool:
    required, takes = KINDS[kind]
    if not set(required) <= set(spec) or not set(spec) <= {"distribution", *takes}:
        return False
    if "distribution" in spec and spec["distribution"] != kind:
        return False
    if (
        kind == "uniform"
        and "distribution" not in spec
        and not any(isinstance(spec[k], float) for k in ("min", "max"))
    ):
        return False  # W&B infers uniform from a float bound; two integers are int_uniform
    return all(check(spec[key]) for key, (_, check) in takes.items() if key in spec)


def _intended(spec: dict) -> str | None:
    """The kind a spec that fits none meant: its `distribution`, else what its keys suggest."""
    kind = spec.get("distribution")
    if isinstance(kind, str) and kind in KINDS:
        return kind
    if "distribution" in spec:
        return None
    return (
        "constant"
        if "value" in spec
        else "categorical"
        if "values" in spec
        else "uniform"
        if ("min" in spec or "max" in spec)
        else None
    )


def _yaml_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return (
            " (`wandb sweep` reads the file as YAML 1.1, which reads a number without a decimal "
            "point before its exponent as text: write 0.00001 or 1.0e-5)"
        )
    return ""


def _why_not(name: str, spec: dict) -> str:
    """One line: why the spec fits none of W&B's kinds, and what the kind it meant takes."""
    where = f"parameter {name!r}"
    kind = _intended(spec)
    if kind is None:
        given = spec.get("distribution")
        if "distribution" in spec:
            close = difflib.get_close_matches(str(given), KINDS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else f": use one of {', '.join(KINDS)}"
            return f"{where}: distribution {given!r} is not a W&B distribution{hint}"
        return (
            f"{where}: W&B cannot tell its distribution from the keys {sorted(spec)}: give "
            "value, values, or min and max (and distribution)"
        )
    required, takes = KINDS[kind]
    problems = [
        f"needs {key} ({takes[key][0]})" for key in required if key not in spec and key in takes
    ]
    if "distribution" in required and "distribution" not in spec:
        problems.append(f'needs "distribution": "{kind}"')
    for key in sorted(map(str, set(spec) - {"distribution", *takes})):
        close = difflib.get_close_matches(key, takes, n=1)
        problems.append(f"has no key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    for key, (what, check) in takes.items():
        if key in spec and not check(spec[key]):
            problems.append(f"{key} must be {what}, got {spec[key]!r}{_yaml_hint(spec[key])}")
    if kind == "uniform" and not problems:
        problems.append("min and max are integers, which W&B reads as int_uniform")
    return f"{where} ({kind}): {'; '.join(problems)}; W&B's {kind} takes {', '.join(takes)}"


def parameter_kind(name: str, spec: Any) -> str:
    """W&B's kind of a parameter spec ("nested" for a section of parameters), or SweepConfigError
    where W&B's engine could not use it (its schema matches no kind, or min is not below max)."""
    if not isinstance(spec, dict):
        raise SweepConfigError(
            f'parameter {name!r}: expected an object like {{"values": [...]}}, got {spec!r}'
        )
    if set(spec) == {"parameters"}:
        return "nested"
    kind = next((kind for kind in KINDS if _fits(kind, spec)), None)
    if kind is None:
        raise SweepConfigError(_why_not(name, spec))
    if "min" in spec and "max" in spec and spec["min"] >= spec["max"]:
        raise SweepConfigError(
            f"parameter {name!r}: min {spec['min']} is not less than max {spec['max']}, which W&B "
            "refuses"
        )
    if kind == "categorical_w_probabilities":
        values, weights = spec["values"], spec["probabilities"]
        sums_to_1 = math.isclose(sum(weights), 1.0, rel_tol=1e-5, abs_tol=1e-8)  # numpy.isclose's
        if len(values) != len(weights) or not sums_to_1:
            raise SweepConfigError(
                f"parameter {name!r}: probabilities {weights} must be one per value "
                f"({len(values)}) and sum to 1, as W&B's schema requires"
            )
    return kind


# --------------------------------------------------------------------------------------------------
# Parameters: W&B parameter specs -> Optuna distributions, plus the map from Optuna's draw to the
# config value


@dataclass(frozen=True)
class Param:
    """One swept key: a constant (no distribution), or Optuna's draw from `distribution`, mapped by
    `value`."""

    name: str
    distribution: BaseDistribution | None
    constant: Any = None
    # The draw is a quantile in QUANTILE, mapped as W&B's engine maps it (HyperParameter.ppf): the
    # kinds Optuna has no distribution for (normal family, beta, weighted categories)
    ppf: Callable[[float], Any] | None = field(default=None, compare=False)
    q: float | None = None  # then rounded to a multiple of q, an int when q is (W&B's q_* kinds)
    # What the trainer's rules are checked on before any trial: every value of a finite support, the
    # ends of a bounded one; nothing for the unbounded normal family (checked per trial, as each W&B
    # run checks its own)
    ends: tuple = ()

    @property
    def optuna_name(
        self,
    ) -> str:  # a quantile is not the value: it gets its own name in the trial's params
        return f"{self.name}_quantile" if self.ppf else self.name

    def value(self, x: Any) -> Any:
        """The config value of Optuna's draw `x`."""
        return self.rounded(self.ppf(x) if self.ppf else x)

    def rounded(self, x: Any) -> Any:
        """W&B's q rounding: round(x / q) * q, an int when q is."""
        if self.q is None:
            return x
        return (
            int(round(x / self.q) * self.q)
            if isinstance(self.q, int)
            else round(x / self.q) * self.q
        )

    def sample(self, trial: optuna.Trial) -> Any:
        d = self.distribution
        if d is None:
            return self.constant
        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(self.optuna_name, d.choices)
        suggest = trial.suggest_int if isinstance(d, IntDistribution) else trial.suggest_float
        return self.value(suggest(self.optuna_name, d.low, d.high, step=d.step, log=d.log))

    def grid(self) -> list:
        """The values of a grid search's parameter (method grid: every non-constant one is
        categorical)."""
        return list(self.distribution.choices)


def _scalars(name: str, values: list) -> list:
    if not all(v is None or isinstance(v, (bool, int, float, str)) for v in values):
        raise SweepConfigError(
            f"parameter {name!r}: values must be numbers, text, booleans or null (what Optuna's "
            f"categorical distribution stores), got {values!r}"
        )
    return values


def _grid_key(value: Any) -> str:
    """W&B's grid tells values apart by their YAML (grid_search.yaml_hash): 3.0 is 3, True is not
    1."""
    as_yaml = int(value) if isinstance(value, float) and value.is_integer() else value
    return json.dumps(as_yaml, default=str)


def _finite(name: str, kind: str, values: list) -> None:
    """SweepConfigError unless each value a parameter takes at these quantiles is a finite number:
    W&B's engine would draw inf or NaN, which no run's config can hold."""
    if not all(_is_number(v) and math.isfinite(v) for v in values):
        raise SweepConfigError(
            f"parameter {name!r}: {kind} gives {values} at its ends and middle: "
            "not finite numbers (an overflow); narrow the range"
        )


def _grid_param(name: str, spec: dict, kind: str) -> Param:
    """method grid, as sweeps.grid_search_next_runs makes its grid: the distinct values (last of
    equal ones), int_uniform's integers min..max, q_uniform's numpy.arange(min, max, q) (max not
    included)."""
    if kind not in GRID_KINDS:
        raise SweepConfigError(
            f"parameter {name!r}: grid search needs values, value, int_uniform or q_uniform (W&B's "
            f"engine refuses {kind} in a grid)"
        )
    if kind == "constant":
        return Param(name, None, constant=spec["value"], ends=(spec["value"],))
    if kind == "categorical":
        values = list({_grid_key(v): v for v in _scalars(name, spec["values"])}.values())
    elif kind == "int_uniform":
        values = list(range(spec["min"], spec["max"] + 1))
    else:
        import numpy as np  # the very function W&B's grid calls: its float steps are not Python's

        values = np.arange(spec["min"], spec["max"], spec.get("q", WANDB_DEFAULTS["q"])).tolist()
    return Param(name, CategoricalDistribution(values), ends=tuple(values))


def _custom_param(name: str, spec: dict, notes: list[str]) -> Param:
    """method custom: W&B's Optuna scheduler's own translation (search_space_from_sweep_config,
    wandb 0.31)."""
    from wandb.sdk.sweeps.scheduler.optuna import sweep_parameter_to_distribution

    if "value" in spec:  # W&B draws it from a one-value categorical: the same value
        return Param(name, None, constant=spec["value"], ends=(spec["value"],))
    warned = io.StringIO()
    try:
        with redirect_stderr(warned):  # wandb.termwarn: each warning becomes a note, in W&B's words
            d = sweep_parameter_to_distribution(spec)
    except (ValueError, TypeError, KeyError) as e:
        raise SweepConfigError(
            f"parameter {name!r}: W&B's Optuna scheduler (method custom) cannot take it: "
            f"{one_line(e)}"
        ) from None
    notes += [
        f"parameter {name!r}, W&B's Optuna scheduler (method custom): "
        f"{line.split('WARNING', 1)[-1].strip()}"
        for line in warned.getvalue().splitlines()
        if line.strip()
    ]
    if "probabilities" in spec:
        notes.append(
            f"parameter {name!r}: W&B's Optuna scheduler (method custom) draws its values "
            "equally likely: probabilities are not used"
        )
    if isinstance(d, CategoricalDistribution):
        _scalars(name, list(d.choices))
        return Param(name, d, ends=tuple(d.choices))
    return Param(name, d, ends=(d.low, d.high))


def translate_parameter(
    name: str, spec: Any, method: str = "random", notes: list[str] | None = None
) -> Param:
    """Optuna's version of one W&B parameter, drawn as W&B's engine draws it for `method` (random
    and bayes: HyperParameter.ppf of a uniform draw; grid: sweeps' grid; custom: W&B's Optuna
    scheduler). The trial's user attr "config" holds the value each run used. `notes` gets a line
    for each W&B warning that is honoured."""
    notes = [] if notes is None else notes
    kind = parameter_kind(name, spec)
    if kind == "nested":
        raise SweepConfigError(
            f"parameter {name!r}: nested parameters are not supported; part_2_cifar.py takes "
            "flat keys"
        )
    if method == "grid":
        return _grid_param(name, spec, kind)
    if method == "custom":
        return _custom_param(name, spec, notes)
    if method == "bayes" and kind == "categorical_w_probabilities":  # its cdf[float]: IndexError
        raise SweepConfigError(
            f"parameter {name!r}: W&B's Bayesian search cannot draw values with "
            "probabilities (its engine fails on them): drop probabilities, or use method random"
        )
    spec = WANDB_DEFAULTS | spec  # the keys a kind takes; the others are not read
    q = spec["q"] if kind.startswith("q_") else None
    if kind == "constant":
        return Param(name, None, constant=spec["value"], ends=(spec["value"],))
    if kind == "categorical":
        values = _scalars(name, spec["values"])
        return Param(name, CategoricalDistribution(values), ends=tuple(values))
    if kind == "categorical_w_probabilities":  # W&B: the first value whose cumulative share > u
        values, cdf = spec["values"], list(accumulate(spec["probabilities"]))
        return Param(
            name,
            QUANTILE,
            ends=tuple(values),
            ppf=lambda u: values[min(bisect.bisect_right(cdf, u), len(values) - 1)],
        )
    if kind == "int_uniform":
        low, high = spec["min"], spec["max"]
        return Param(name, IntDistribution(low, high), ends=(low, high))
    if kind in ("normal", "q_normal", "log_normal", "q_log_normal", "beta", "q_beta"):
        return _quantile_param(name, kind, spec, q)
    low, high = spec["min"], spec["max"]
    try:
        if kind in ("log_uniform", "q_log_uniform"):  # X = exp(U(min, max))
            low, high = math.exp(low), math.exp(high)
        elif kind == "inv_log_uniform":  # X = exp(-U(min, max)): log X is uniform too
            low, high = math.exp(-high), math.exp(-low)
    except OverflowError:
        raise SweepConfigError(
            f"parameter {name!r}: {kind} reads min and max as natural-log exponents: "
            f"e^{max(abs(spec['min']), abs(spec['max']))} overflows; for values between "
            f"{spec['min']} and {spec['max']} use {DEPRECATED[kind]}"
        ) from None
    _finite(name, kind, [low, high, high - low])
    if kind in DEPRECATED:  # W&B's schema warns, its engine draws: the same here, said in one line
        notes.append(
            f"parameter {name!r}: {kind} reads min and max as natural-log exponents, as "
            f'W&B does (its schema: "Use {DEPRECATED[kind]} to specify limit values"): '
            f"values {low:.5g}..{high:.5g}"
        )
    if kind in ("uniform", "q_uniform"):  # q_uniform: round(U(min, max) / q) * q: ends weigh half
        param = Param(name, FloatDistribution(low, high), q=q)
    elif low <= 0:  # e^min underflowed
        raise SweepConfigError(
            f"parameter {name!r}: {kind} with min {spec['min']} and max {spec['max']} gives values "
            f"down to {low}, which Optuna's log scale cannot hold: narrow the range"
        )
    else:  # the log-uniform family: 1/X is log-uniform exactly when X is
        param = Param(name, FloatDistribution(low, high, log=True), q=q)
    return replace(param, ends=(param.value(low), param.value(high)))


def _quantile_param(name: str, kind: str, spec: dict, q: float | None) -> Param:
    """The normal family and beta: Optuna draws a quantile, mapped through W&B's distribution."""
    if "beta" in kind:
        from scipy.stats import beta  # W&B's own (scipy.stats.beta.ppf)

        dist = beta(spec["a"], spec["b"])
        ppf = lambda u: float(dist.ppf(u))  # noqa: E731
    else:  # W&B's scipy.stats.norm and lognorm (log: exp of a normal draw)
        normal, log = NormalDist(spec["mu"], spec["sigma"]), "log" in kind

        def ppf(u: float) -> float:
            if spec["sigma"] == 0:  # W&B's scipy gives NaN
                return math.nan
            x = normal.inv_cdf(u)
            return math.exp(x) if log else x

    param = Param(name, QUANTILE, ppf=ppf, q=q)
    try:
        values = [param.ppf(u) for u in (QUANTILE_EPS, 0.5, 1 - QUANTILE_EPS)]
    except OverflowError:
        values = [math.inf]
    _finite(name, kind, values)
    if "beta" not in kind:  # the normal family has no ends: each trial's value is checked
        return param
    return replace(param, ends=(param.rounded(values[0]), param.rounded(values[-1])))


# --------------------------------------------------------------------------------------------------
# The sweep file


@dataclass(frozen=True)
class Sweep:
    """What local_sweep.py takes from the sweep file."""

    method: str
    metric: str  # a trial's value (no metric section: val_accuracy, for the report's ranking)
    direction: str  # "maximize" or "minimize"
    params: tuple[Param, ...]
    early_terminate: dict | None
    target: float | None
    raw: dict  # the file as W&B reads it, as JSON; stored with the study: a changed file is noticed
    # (summary key, goal) of each objective: `metrics` (or `metric`) of a method custom sweep, whose
    # values are read from the run's summary when it ends, as W&B's Optuna scheduler reads them;
    # empty for bayes, random and grid
    objectives: tuple[tuple[str, str], ...] = ()
    # method custom: W&B's scheduler block
    scheduler: Mapping[str, str] = field(default_factory=dict)
    # scheduler.search_space, loaded by local_sweep.py
    search_space: Callable[[optuna.Trial], dict] | None = None
    # scheduler.optimizer: the (sampler, pruner) of the study the user's function makes, loaded by
    # local_sweep.py
    optimizer: tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner] | None = None
    name: str | None = None  # the sweep's name (text, whatever YAML made of it)
    run_cap: int | None = None  # W&B's run_cap: the most runs (trials, not counting retries)
    command: tuple[str, ...] | None = None  # `command` as `wandb agent` reads it; None: the default
    entity: str | None = None
    project: str | None = None
    # One line each: W&B's warnings honoured, and where this program reads a key its own way
    notes: tuple[str, ...] = ()
    # What the `command` passes part_2_cifar.py on every run (local_sweep.py parses it with the
    # trainer's parser): settings, and the options local_sweep.py shares with the trainer (val_size,
    # data_dir, ...)
    fixed: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    # The trainer's settings it was translated for (part_2_cifar.SETTINGS): their defaults and
    # checks
    settings: Settings = field(default_factory=Settings)

    @property
    def directions(self) -> list[str]:
        """One Optuna direction per objective."""
        return [goal for _, goal in self.objectives] or [self.direction]


def read_sweep_file(path: Path) -> tuple[Any, Callable[[], Any]]:
    """(The file as `wandb sweep` reads it: yaml.safe_load, so a JSON file is read as YAML 1.1 too;
    a function that reads it again with every scalar as the text written: YAML's BaseLoader).
    libyaml's loaders where PyYAML has them: the same YAML, parsed in C."""
    import yaml  # wandb depends on PyYAML; `wandb sweep` reads its file with yaml.safe_load

    try:
        text = read_regular_text(path)
    except NotARegularFile as e:
        raise SweepConfigError(f"sweep file {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SweepConfigError(
            f"cannot read sweep file {path}: {getattr(e, 'strerror', None) or e}"
        ) from None
    try:
        raw = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (yaml.YAMLError, RecursionError) as e:  # Recursion: PyYAML's Python loader, deep lists
        raise SweepConfigError(
            f"{path} is not valid YAML (nor JSON): {' '.join(str(e).split())}"
        ) from None
    return raw, lambda: yaml.load(text, Loader=getattr(yaml, "CBaseLoader", yaml.BaseLoader))


def _one_of(what: str, value: Any, allowed: tuple) -> Any:
    if not isinstance(value, str) or value not in allowed:
        close = difflib.get_close_matches(str(value), allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise SweepConfigError(
            f"{what} {value!r} is not one W&B takes{hint}: use one of {', '.join(allowed)}"
        )
    return value


def _unknown_keys(where: str, given: Mapping, known: tuple) -> None:
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise SweepConfigError(
                f"{where}{key!r} is not a key W&B's sweep schema knows ({hint}W&B's: "
                f"{', '.join(known)})"
            )


def _text(where: str, value: Any, written: Any, notes: list[str]) -> str:
    """A text field as text, whatever YAML made of it: the characters written (`written`, YAML's
    BaseLoader), with a note, as W&B's schema warns of a non-string; SweepConfigError for a list, a
    mapping or nothing."""
    if isinstance(value, str):
        return value
    if not isinstance(value, (bool, int, float, datetime.date)):
        raise SweepConfigError(f"{where}: W&B expects text, got {value!r}")
    text = written if isinstance(written, str) else str(value)
    made = (
        "a date"
        if isinstance(value, datetime.date)
        else "true/false"
        if isinstance(value, bool)
        else "a number"
    )
    notes.append(
        f"{where}: YAML made {text} {made}; it is the text {text!r} here (W&B's schema "
        "expects a string)"
    )
    return text


def load_sweep(path: Path, settings: Settings) -> Sweep:
    """Read and translate a W&B sweep file (YAML, JSON being YAML) for a trainer with these
    settings (part_2_cifar.SETTINGS: their defaults, and their checks, which raise ValueError);
    raise SweepConfigError for anything W&B or this program refuses."""
    raw, read_as_text = read_sweep_file(path)
    if not isinstance(raw, dict) or not raw:
        raise SweepConfigError(
            f"{path} is not a W&B sweep config: expected a mapping with method and parameters"
        )
    _unknown_keys("", raw, TOP_LEVEL_KEYS)
    notes: list[str] = []
    raw = dict(raw)
    not_text = [key for key in raw if key in TEXT_KEYS and not isinstance(raw[key], str)]
    metric = raw.get("metric")
    written = (
        read_as_text()
        if not_text or isinstance(metric, dict) and not isinstance(metric.get("name", ""), str)
        else {}
    )
    written = written if isinstance(written, dict) else {}
    for key in not_text:
        raw[key] = _text(key, raw[key], written.get(key), notes)
    _check_controller(raw)
    if "method" not in raw:
        raise SweepConfigError(f"{path} has no method: W&B needs one of {', '.join(METHODS)}")
    method = _one_of("method", raw["method"], METHODS)
    for key in ("job", "image_uri"):
        if key in raw:
            raise SweepConfigError(
                f"{key} {raw[key]!r}: a W&B Launch sweep, which needs the W&B "
                "server; local_sweep.py runs part_2_cifar.py (program)"
            )
    program = raw.get("program")
    if program is not None and Path(program).name != "part_2_cifar.py":
        raise SweepConfigError(f"program {program!r}: local_sweep.py can only run part_2_cifar.py")
    scheduler = _scheduler(raw, method)
    if "search_space" in scheduler:
        # W&B's scheduler would silently take the function and ignore the section
        if "parameters" in raw:
            raise SweepConfigError(
                "scheduler.search_space defines the parameters: remove the parameters section"
            )
    elif not isinstance(raw.get("parameters"), dict) or not raw["parameters"]:
        raise SweepConfigError(
            f"{path} has no parameters: W&B needs a parameters section with at least one "
            f"parameter, got {raw.get('parameters')!r}"
        )
    metric_name, goal, target, objectives = _metric(raw, method, written.get("metric"), notes)
    params = []
    for name, spec in (raw.get("parameters") or {}).items():
        if not isinstance(name, str) or not PARAMETER_NAME.fullmatch(name):
            raise SweepConfigError(
                f"parameter name {name!r}: W&B's schema takes a letter or _ and "
                "then letters, digits, _, . or -"
            )
        param = translate_parameter(name, spec, method, notes)
        if name in NOT_SWEPT:
            raise SweepConfigError(not_swept_message(f"parameter {name!r}", name))
        if name not in settings:
            raise SweepConfigError(
                f"parameter {name!r} is not a part_2_cifar.py setting (those are "
                f"{', '.join(settings)})"
            )
        for value in param.ends:
            try:
                settings.validate({name: value})
            except ValueError as e:
                raise SweepConfigError(
                    f"parameter {name!r} can take {value!r}, which part_2_cifar.py rejects: {e}"
                ) from None
        params.append(param)
    if method == "bayes" and all(param.distribution is None for param in params):
        raise SweepConfigError(
            'method bayes needs a parameter that varies (W&B: "Need at least one searchable '
            'parameter for bayes search"): every parameter is a '
            "constant"
        )
    early = raw.get("early_terminate")
    if early is not None and scheduler:
        raise SweepConfigError(
            "early_terminate cannot be used with scheduler (W&B's schema refuses it: the "
            "scheduler's own study decides, and a study of several objectives cannot be pruned)"
        )
    if "early_terminate" in raw:
        hyperband_bands(early)  # fail now, not when the first trial reports
        if "metric" not in raw:
            raise SweepConfigError(
                "early_terminate needs a metric section to compare runs on "
                '(W&B: "early terminate requires \\"metric\\" section")'
            )
        if metric_name not in HISTORY_METRICS:
            notes.append(
                f"early_terminate: metric {metric_name} is in no history row, which W&B's "
                "Hyperband compares runs on: it stops no run, here as under W&B"
            )
    return Sweep(
        method,
        metric_name,
        goal,
        tuple(params),
        early,
        target,
        json.loads(json.dumps(raw, default=str)),
        objectives=objectives,
        scheduler=scheduler,
        name=raw.get("name"),
        run_cap=_run_cap(raw),
        command=_command(raw),
        entity=raw.get("entity"),
        project=raw.get("project"),
        notes=tuple(notes),
        settings=settings,
    )


def _check_controller(raw: dict) -> None:
    if "kind" in raw and raw["kind"] != "sweep":
        raise SweepConfigError(f"kind {raw['kind']!r}: W&B's only kind is sweep")
    controller = raw.get("controller", {"type": "cloud"})
    if not isinstance(controller, dict) or controller.get("type") not in ("local", "cloud"):
        raise SweepConfigError(
            f'controller {controller!r}: W&B expects {{"type": "local"}} or '
            '{"type": "cloud"} (local_sweep.py is its own controller either '
            "way)"
        )


def _run_cap(raw: dict) -> int | None:
    """run_cap as an int: W&B's schema takes an integer > 0 (2.0 is one to JSON schema, True is
    not)."""
    if "run_cap" not in raw:
        return None
    cap = raw["run_cap"]
    if not _is_number(cap) or cap != int(cap) or cap <= 0:
        raise SweepConfigError(
            f"run_cap {cap!r}: W&B expects an integer > 0, the most runs the sweep makes"
        )
    return int(cap)


def _command(raw: dict) -> tuple[str, ...] | None:
    """The command list as `wandb agent` reads it: each item as text (str(c)); an empty list is the
    default."""
    if "command" not in raw:
        return None
    command = raw["command"]
    if not isinstance(command, list):
        raise SweepConfigError(
            f'command {command!r}: W&B expects a list like ["${{env}}", '
            '"${interpreter}", "${program}", "${args}"]'
        )
    return tuple(str(chunk) for chunk in command) or None


def not_swept_message(where: str, name: str) -> str:
    """One line: `name` (a NOT_SWEPT key) found at `where` cannot be swept, and the option that sets
    it."""
    return (
        f"{where} cannot be swept: every trial is validated on the same held-out images, so that "
        f"trials compare; remove it and set it for all trials with {NOT_SWEPT[name]}"
    )


def _metric_object(
    where: str, metric: Any, written: Any, notes: list[str]
) -> tuple[str, str, float | None]:
    """(name, goal, target) of a W&B metric object, checked as W&B's schema checks it; goal defaults
    to minimize."""
    if not isinstance(metric, dict):
        raise SweepConfigError(
            f'{where} {metric!r}: W&B expects an object like {{"name": '
            '"val_accuracy", "goal": "maximize"}'
        )
    _unknown_keys(f"{where}.", metric, METRIC_KEYS)
    if "name" not in metric:
        raise SweepConfigError(f"{where} has no name: W&B needs the name of the number to optimize")
    written = written.get("name") if isinstance(written, dict) else None
    name = _text(f"{where}.name", metric["name"], written, notes)
    goal = _one_of(
        f"{where}.goal",
        metric.get("goal", "minimize"),  # W&B's default goal
        ("minimize", "maximize"),
    )
    target = metric.get("target")
    if target is not None and not _is_number(target) or "target" in metric and target is None:
        raise SweepConfigError(f"{where}.target {target!r}: W&B expects a number")
    if "impute" in metric:
        _one_of(f"{where}.impute", metric["impute"], IMPUTE)
        notes.append(
            f"{where}.impute {metric['impute']}: W&B's Bayesian search imputes a failed "
            "run's value; Optuna's TPE leaves failed trials out instead"
        )
    if metric.get("impute_while_running", "false") != "false":
        _one_of(f"{where}.impute_while_running", metric["impute_while_running"], (*IMPUTE, "false"))
        notes.append(
            f"{where}.impute_while_running {metric['impute_while_running']}: Optuna's TPE "
            "keeps running trials apart by its constant liar instead"
        )
    if name in NEVER_CHOSEN_ON:
        raise SweepConfigError(
            f"{where} {name}: the test images are never chosen on (they would "
            "no longer measure the chosen model); use best_val_accuracy or val_loss"
        )
    return name, goal, target


def _metric(
    raw: dict, method: str, written: Any, notes: list[str]
) -> tuple[str, str, float | None, tuple]:
    """(metric name, goal, target, objectives) of the sweep: W&B's metric (or method custom's
    metrics)."""
    if "metrics" in raw and method != "custom":
        raise SweepConfigError(
            "metrics (several objectives) needs method custom with scheduler "
            f"engine optuna, as in W&B; got method {method}"
        )
    if method == "custom":
        objectives = _objectives(raw, written, notes)
        return objectives[0][0], objectives[0][1], None, objectives
    if "metric" not in raw:
        if method == "bayes":
            raise SweepConfigError(
                "method bayes needs a metric section, the number to optimize "
                '(W&B: "Bayesian search requires \\"metric\\" section")'
            )
        notes.append(
            f"no metric: {method} search optimizes nothing, as under W&B; the report "
            "ranks trials by val_accuracy, highest first"
        )
        return "val_accuracy", "maximize", None, ()
    name, goal, target = _metric_object("metric", raw["metric"], written, notes)
    if name not in HISTORY_METRICS + SUMMARY_METRICS:
        raise SweepConfigError(
            f"metric {name!r} is not a number part_2_cifar.py writes to W&B: use one of "
            f"{', '.join(HISTORY_METRICS + SUMMARY_METRICS)}"
        )
    return name, goal, target, ()


def _scheduler(raw: dict, method: str) -> dict:
    """W&B's scheduler block, checked as W&B's schema checks it: engine optuna with method custom,
    engine wandb (the same search as without a scheduler) with the others; source names the file of
    optimizer / search_space."""
    scheduler = raw.get("scheduler")
    if scheduler is None:
        if method == "custom":
            raise SweepConfigError(
                'method custom needs a scheduler: add "scheduler": {"engine": "optuna"}'
            )
        return {}
    if not isinstance(scheduler, dict) or not all(isinstance(v, str) for v in scheduler.values()):
        raise SweepConfigError(
            f'scheduler {scheduler!r}: expected an object of strings like {{"engine": "optuna"}}'
        )
    unknown = sorted(map(str, set(scheduler) - set(SCHEDULER_KEYS)))
    if unknown:
        raise SweepConfigError(
            f"scheduler.{unknown[0]} is not a scheduler key: use {', '.join(SCHEDULER_KEYS)}"
        )
    if raw.get("controller", {}).get("type") == "local":
        raise SweepConfigError(
            "controller type local cannot be used with scheduler (W&B's schema refuses it)"
        )
    if scheduler.get("engine") == "ax":
        raise SweepConfigError(
            "scheduler.engine 'ax': W&B's Ax scheduler does not run here; use engine optuna"
        )
    engine = _one_of("scheduler.engine", scheduler.get("engine"), ("optuna", "wandb"))
    if (engine == "optuna") != (method == "custom"):
        raise SweepConfigError(
            f"scheduler.engine {engine} with method {method}: W&B runs engine optuna with method "
            "custom, engine wandb with bayes, random or grid"
        )
    if engine == "wandb" and set(scheduler) != {"engine"}:
        raise SweepConfigError(
            f"scheduler.{sorted(set(scheduler) - {'engine'})[0]} needs scheduler.engine optuna"
        )
    for key in ("optimizer", "search_space"):
        if key in scheduler and not scheduler.get("source"):
            raise SweepConfigError(
                f"scheduler.{key} needs scheduler.source, the Python file that defines it"
            )
    return scheduler


def _objectives(raw: dict, written: Any, notes: list[str]) -> tuple[tuple[str, str], ...]:
    """(summary key, goal) of a method custom sweep's `metrics`, or of its one `metric`, as W&B's
    Optuna scheduler reads them: each run's summary value when it ends."""
    if "metric" in raw and "metrics" in raw:
        raise SweepConfigError(
            "metric and metrics cannot both be set: metric for one objective, metrics for several"
        )
    if "metric" not in raw and "metrics" not in raw:
        raise SweepConfigError(
            "method custom needs metric (or metrics): W&B's Optuna scheduler reads each objective "
            "from a run's summary"
        )
    metrics = raw.get("metrics", [raw.get("metric")])
    if not isinstance(metrics, list) or len(metrics) < ("metrics" in raw) + 1:
        raise SweepConfigError(
            f"metrics {metrics!r}: W&B expects a list of at least two objects "
            'like {"name": "best_val_accuracy", "goal": "maximize"} '
            "(one: use metric)"
        )
    allowed = tuple(m for m in HISTORY_METRICS + SUMMARY_METRICS if m != "val_accuracy")
    objectives = []
    for i, metric in enumerate(metrics):
        where = f"metrics[{i}]" if "metrics" in raw else "metric"
        name, goal, target = _metric_object(where, metric, written, notes)
        if name == "val_accuracy":
            raise SweepConfigError(
                'metric val_accuracy is {"max": x} in a run\'s W&B summary (define_metric), '
                "which W&B's Optuna scheduler cannot tell the study: use best_val_accuracy"
            )
        if name not in allowed:
            raise SweepConfigError(
                f"metric {name!r} is not a number in every run's summary: method custom takes "
                f"{', '.join(allowed)}"
            )
        if target is not None:  # W&B's Optuna scheduler does not read it: said here
            notes.append(
                f"{where}.target {target}: W&B's Optuna scheduler (method custom) has no "
                "target, so it does not end the sweep; --trials or run_cap does"
            )
        objectives.append((name, goal))
    if len({name for name, _ in objectives}) < len(objectives):
        raise SweepConfigError(
            f"metrics name {[name for name, _ in objectives]}: each objective once"
        )
    return tuple(objectives)


def safe_file_name(name: str) -> str:
    """The file and folder name of a study's files (its run folders, lock files, report): `name`
    itself when it is one of letters, digits, _, - and . not starting with a dot; else those
    characters with the rest as _, and the CRC-32 of `name` in hex, so that two names never share
    files. The study keeps its own name."""
    if re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}", name):
        return name
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80].lstrip(".") or "study"
    return f"{readable}-{zlib.crc32(name.encode()):08x}"


# --------------------------------------------------------------------------------------------------
# Sampler and pruner

# W&B's schema, hyperband_stopping
HYPERBAND_KEYS = (
    "type",
    "min_iter",
    "max_iter",
    "s",
    "eta",
    "strict",
)
MIN_ITER_BANDS = 100  # W&B's min_iter form computes this many bands


def hyperband_bands(early: dict) -> tuple[list[int], float, bool]:
    """(bands in epochs, ascending; eta; strict) from a W&B early_terminate section, or
    SweepConfigError for what W&B's schema or engine refuses.

    As sweeps.hyperband_stopping.hyperband_stop_runs computes them: with max_iter (and s, which it
    then needs), int(max_iter / eta^k) for k = 1..s while that is >= 1; otherwise int(min_iter *
    eta^k) for k = 0..99. The division or multiplication is repeated, as there, so a fractional eta
    rounds the same way.
    """
    if not isinstance(early, dict) or early.get("type") != "hyperband":
        raise SweepConfigError(
            f"early_terminate {early!r} is not supported: only type hyperband exists"
        )
    unknown = sorted(set(early) - set(HYPERBAND_KEYS))
    if unknown:
        raise SweepConfigError(
            f"early_terminate: unknown key {unknown[0]!r}; hyperband takes "
            f"{', '.join(HYPERBAND_KEYS)}"
        )
    eta, strict = early.get("eta", 3), early.get("strict", True)  # W&B's schema defaults
    if (
        isinstance(eta, bool)
        or not isinstance(eta, (int, float))
        or not math.isfinite(eta)
        or eta <= 1
    ):
        raise SweepConfigError(
            f"early_terminate eta={eta!r}: use a number > 1 (each band keeps the best 1/eta)"
        )
    if not isinstance(strict, bool):
        raise SweepConfigError(f"early_terminate strict={strict!r}: use true or false")
    bands = []
    if "max_iter" in early:
        max_iter, s = early["max_iter"], early.get("s")
        if not _is_int(max_iter):
            raise SweepConfigError(f"early_terminate max_iter={max_iter!r}: use an integer")
        if not _is_int(s) or s < 1:
            raise SweepConfigError(
                f"early_terminate s={s!r}: max_iter needs s, the number of bands, an integer >= 1"
            )
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
            if not math.isfinite(band):  # W&B's int(band) raises: its engine cannot stop any run
                raise SweepConfigError(
                    f"early_terminate min_iter={early['min_iter']}, eta={eta}: W&B computes "
                    f"{MIN_ITER_BANDS} bands min_iter * eta^k, which overflow: use a smaller eta"
                )
            bands.append(int(band))
            band *= eta
    else:
        raise SweepConfigError("early_terminate hyperband needs min_iter, or max_iter and s")
    if not bands:
        raise SweepConfigError(
            f"early_terminate max_iter={early['max_iter']}, s={early['s']}, eta={eta} gives no "
            "band >= 1 epoch: raise max_iter or lower eta"
        )
    return sorted(bands), eta, strict


class WandbHyperbandPruner(optuna.pruners.BasePruner):
    """W&B's Hyperband early termination, decided for one trial as W&B's open-source sweep engine
    decides it for a run: `hyperband_stop_runs` in sweeps/hyperband_stopping.py
    (https://github.com/wandb/sweeps, sweeps 0.3.0; the paper is https://arxiv.org/abs/1603.06560).
    tests/test_hyperband.py checks it against that function.

    A trial's history is its reported values in step order, non-finite ones left out (W&B: the
    history rows that hold the metric, `filter_invalid`). At band b (an epoch from hyperband_bands)
    the threshold is the value ranked int(n / eta) from the best (rank 0) among the b-th values of
    the n trials that reached b, whatever their state.
    A trial is checked against the last band it has reached, with its value at that band (strict,
    W&B's default) or its best value so far (strict false), and pruned when that is worse than the
    threshold; a tie stays. Optuna asks after every epoch a trial reports, when W&B's controller
    would see the new row; thresholds move as other trials reach a band, so a trial can be pruned
    between bands, or after the last one, as under W&B.

    Every trial is read from the study's storage, so workers on several machines decide alike. A
    trial that failed and was queued for a retry (RetryHeartbeatStaleTrialCallback) is one W&B run
    resumed: once the retry has reported values, only the retry's count.
    """

    def __init__(self, bands: list[int], eta: float, strict: bool):
        # W&B's r = 1 / eta
        self.bands, self.rank_fraction, self.strict = (
            sorted(bands),
            1.0 / eta,
            strict,
        )

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        # then lower is better
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        history = self._history(trial, sign)
        reached = [band for band in self.bands if band <= len(history)]
        if not reached:
            return False
        band = reached[-1]
        trials = study.get_trials(deepcopy=False)
        replaced = {
            n
            for t in trials
            if t.intermediate_values
            for n in optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t)
        }
        histories = [self._history(t, sign) for t in trials if t.number not in replaced]
        at_band = sorted(h[band - 1] for h in histories if len(h) >= band)
        # only when this trial was itself replaced by a retry; W&B's threshold is then infinite
        if not at_band:
            return False
        threshold = at_band[int(self.rank_fraction * len(at_band))]
        return (history[band - 1] if self.strict else min(history)) > threshold

    @staticmethod
    def _history(trial: FrozenTrial, sign: float) -> list[float]:
        return [
            sign * value
            for _, value in sorted(trial.intermediate_values.items())
            if math.isfinite(value)
        ]


def make_pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.early_terminate is None:
        return optuna.pruners.NopPruner()
    return WandbHyperbandPruner(*hyperband_bands(sweep.early_terminate))


def grid_size(sweep: Sweep) -> int:
    return math.prod(len(p.grid()) for p in sweep.params if p.distribution is not None)


def make_sampler(sweep: Sweep, seed: int | None = None) -> optuna.samplers.BaseSampler:
    """The sweep's sampler; `seed` fixes the random draws of bayes and random (local_sweep.py seeds
    each draw). A grid's order is fixed without it (GridSampler shuffles with seed 0) and takes
    none: a grid study continued under another seed would give its trial numbers other points."""
    if sweep.method == "grid":
        return optuna.samplers.GridSampler(
            {p.optuna_name: p.grid() for p in sweep.params if p.distribution is not None}
        )
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # bayes: multivariate TPE, chosen by measurement (README, "Without W&B": lower median regret
    # than GPSampler on this space, 6 ms a trial against 3 s). Its constant liar keeps parallel
    # workers from proposing the same config; one seed shared by K workers would make them propose
    # the same configs (local_sweep.py's --sampler-seed gives each draw a seed of its own).
    # custom (engine optuna): W&B's scheduler makes Optuna's default study, a TPE sampler; the same
    # TPE here, with the same two options. With several objectives it is Optuna's MOTPE: NSGA-II's
    # first generation (50 trials) would be random search for a whole sweep of tens of trials, and
    # GPSampler lost to TPE on this space (above).
    return optuna.samplers.TPESampler(multivariate=True, constant_liar=True, seed=seed)
