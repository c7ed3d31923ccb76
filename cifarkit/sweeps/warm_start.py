"""Never paying twice for a training: runs already on disk become finished trials (--prior-runs),
configurations to train first (--start-from), a sampler that draws the same trials from the same
seed (--sampler-seed), and a study's wall time over all its processes (--time-budget). Also what a
run tells the study (trial_outcome), for trials and prior runs alike. README, "Runs already
trained, starting points, seeds, a time budget".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import optuna
from optuna.trial import TrialState

from cifarkit.core import cli
from cifarkit.core.run_files import (
    SUMMARY_FILE,
    describe_data,
    finite_number,
    read_summary,
    same_data,
    summaries_under,
)
from cifarkit.sweeps import report, space
from cifarkit.sweeps.folders import TRIAL_MARKER, DamagedMarker, read_marker
from cifarkit.sweeps.space import Sweep
from cifarkit.sweeps.storage import Store

ENDED_RUNS = ("finished", "diverged", "pruned")  # a run folder with this status holds a result
TIME_SPENT = "time_spent:"  # study user attrs: [start, end], Unix seconds, of each budgeted process
# a waiting process looks each second and writes its time this often; a trial's start and end
# are written at once (work() forces them), so a SIGKILL loses at most this much more while waiting
TIME_WRITE_SECONDS = 30


class WarmStartError(cli.CommandError):
    """--prior-runs, --start-from or --sampler-seed asks for what this sweep cannot take."""

    exit_code = cli.EXIT_BAD_INPUT


def is_prior(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial made from a run folder on disk: it cost this study nothing, --trials ignores it."""
    return trial.user_attrs.get("origin") == report.PRIOR_RUN


def per_epoch(sweep: Sweep) -> bool:
    """The sweep's value is read from every epoch's history row (and Hyperband may prune on it), not
    from the summary at the end (method custom's objectives, a summary metric)."""
    return not sweep.objectives and sweep.metric in space.HISTORY_METRICS


def trial_outcome(
    sweep: Sweep, summary: dict, code: int = cli.EXIT_DONE
) -> tuple[TrialState, float | list | None]:
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


def summary_value(summary: dict, name: str) -> object:
    """The number `name` as the run's W&B summary holds it: a history metric's last value, else the
    summary's."""
    if name in space.HISTORY_METRICS:
        return (summary.get("history") or [{}])[-1].get(name)
    return summary.get(name)


def draw_of(param: space.Param, value: object, default: object) -> object:
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


def quantile_of(param: space.Param, value: object, grid: int = 2000) -> float:
    """The quantile Optuna draws for a kind Optuna has no distribution for (Param.ppf: the normal
    family, beta, values with probabilities) that gives `value`: by bisection, as ppf rises with
    the quantile; else (values with probabilities in no numeric order) the first of `grid` evenly
    spaced quantiles that gives it. ValueError if none does."""
    first, last = space.QUANTILE.low, space.QUANTILE.high
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
        if key not in sweep.settings:
            raise ValueError(f"{key!r} is not a part_2_cifar.py setting")
        param = swept.get(key)
        if param is None or param.distribution is None:
            constant = param is not None and param.constant is not None
            default = sweep.settings[key].default
            trained = param.constant if constant else sweep.fixed.get(key, default)
            if value != trained:
                raise ValueError(f"{key}={value}, but the sweep's trials train {key}={trained}")
            continue
        try:
            params[param.optuna_name] = draw_of(param, value, sweep.settings[key].default)
        except ValueError as e:
            raise ValueError(
                f"{key}={value} is {e}: the sweep's {key} is "
                f"{json.dumps(sweep.raw['parameters'][key])}"
            ) from None
    return params


def prior_trial(
    sweep: Sweep, run_dir: Path, summary: dict, identity: dict, **attrs: str
) -> optuna.trial.FrozenTrial:
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
    # one added since: it trained the default
    config = sweep.settings.with_defaults(summary["config"])
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
        state=state,
        values=values,
        params=params,
        distributions=distributions,
        intermediate_values=curve,
        user_attrs={
            "origin": report.PRIOR_RUN,
            "config": config,
            "epochs_completed": epochs,
            "test_accuracy": summary.get("test_accuracy"),
            "run_dir": str(run_dir),
            "device": summary.get("device", ""),
            "failure": f"diverged after epoch {epochs}" if status == "diverged" else "",
            **attrs,
        },
    )
    with contextlib.suppress(OSError, KeyError, TypeError, ValueError):  # else now, and 0 s
        trial.datetime_complete = datetime.fromtimestamp((run_dir / SUMMARY_FILE).stat().st_mtime)
        trial.datetime_start = trial.datetime_complete - timedelta(seconds=summary["total_seconds"])
    return trial


def summary_key(summary: dict) -> str:
    """What tells one run from another, however its folder is named or copied: a hash."""
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]


def own_trial(run_dir: Path, uid: str | None) -> bool:
    """Whether `run_dir` is a trial folder of the study `uid` names: its TRIAL_MARKER says so,
    wherever the folder is now and whatever the working directory (a path would not: the study's
    trials record theirs as the command gave it, and folders move). DamagedMarker if it has one
    that cannot be read."""
    marker = read_marker(run_dir / TRIAL_MARKER)
    return uid is not None and marker is not None and marker.get("uid") == uid


def add_prior_runs(study: optuna.Study, sweep: Sweep, folders: list[Path], identity: dict) -> None:
    """Each run under `folders` (runs folders or run folders) that belongs becomes a finished
    trial of the study; each other one is one line with the reason. A run the study has is not
    added again, whatever its path: one of its own trials (own_trial; an older version's trial
    folder, with no marker, by its summary's hash) or a run added before (its summary's hash)."""
    trials = study.get_trials(deepcopy=False)
    uid = study.user_attrs.get("uid")
    known = {t.user_attrs.get("prior_run") for t in trials if is_prior(t)}
    own = [
        read_summary(Path(t.user_attrs["run_dir"]))
        for t in trials
        if not is_prior(t) and "run_dir" in t.user_attrs
    ]
    own_keys = {summary_key(summary) for summary in own if summary is not None}
    added, already, skipped = Counter(), 0, 0
    for folder in folders:
        runs = summaries_under(folder)
        if not runs:
            print(f"--prior-runs {folder}: no run folder (a summary.json) under it", flush=True)
        for run_dir, summary in runs:
            key = summary_key(summary) if summary is not None else None
            try:
                if key in own_keys or own_trial(run_dir, uid):  # this study's own trial
                    continue
            except DamagedMarker as e:
                print(f"prior run {run_dir} skipped: {e}", flush=True)
                skipped += 1
                continue
            if key in known:
                already += 1
                continue
            if summary is None:  # damaged or unreadable: summaries_under said so in one line
                skipped += 1
                continue
            try:
                trial = prior_trial(sweep, run_dir, summary, identity, prior_run=key)
            except ValueError as e:
                print(f"prior run {run_dir} skipped: {e}", flush=True)
                skipped += 1
                continue
            study.add_trial(trial)
            known.add(key)
            added[trial.state.name] += 1
    states = f" ({report.states_line(added)})" if added else ""
    print(
        f"prior runs: {sum(added.values())} added{states}, {already} already in the study, "
        f"{skipped} skipped",
        flush=True,
    )


def read_configs(path: Path) -> list:
    """The configurations a --start-from file holds: JSON or YAML, one mapping or a list of them."""
    try:
        text = cli.read_regular_text(path)
    except cli.NotARegularFile as e:
        raise WarmStartError(f"--start-from {e}") from None
    except OSError as e:
        raise WarmStartError(f"--start-from {path}: cannot read it: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise WarmStartError(
            f"--start-from {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
            f"{e.start}): save it as UTF-8 JSON or YAML"
        ) from None
    try:  # JSON first: YAML 1.1 would read a number such as 1e-05 as text
        configs = json.loads(text)
    except RecursionError:
        raise WarmStartError(
            f"--start-from {path} is not valid JSON: nested deeper than Python's stack"
        ) from None
    except json.JSONDecodeError:
        import yaml

        try:
            configs = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as e:
            raise WarmStartError(
                f"--start-from {path} is not valid JSON or YAML: {str(e).splitlines()[0]}"
            ) from None
    configs = configs if isinstance(configs, list) else [configs]
    if not configs or not all(isinstance(c, dict) and c for c in configs):
        raise WarmStartError(
            f"--start-from {path}: expected a configuration such as "
            '{"learning_rate": 0.005}, or a list of them'
        )
    return configs


def start_points(path: Path, sweep: Sweep) -> list[dict]:
    """Optuna's params of each configuration --start-from PATH names: a run folder (every setting
    of its summary.json's config) or a file (read_configs; the keys each names, the sampler draws
    the rest). WarmStartError naming the file and the reason for one no trial of the sweep
    trains."""
    if path.is_dir():
        summary = read_summary(path)
        if summary is None and (path / SUMMARY_FILE).exists():
            raise WarmStartError(
                f"--start-from {path}: its {SUMMARY_FILE} cannot be read as a JSON object "
                "(damaged, not UTF-8, or not a file); give another run folder or a JSON/YAML file"
            )
        if summary is None or not isinstance(summary.get("config"), dict):
            raise WarmStartError(
                f"--start-from {path}: a run folder needs its summary.json (a run that ended)"
            )
        # its whole config but val_size, which --val-size sets for every trial
        configs = [sweep.settings.with_defaults(summary["config"])]
    else:
        configs = read_configs(path)
    points = []
    for number, config in enumerate(configs, 1):
        where = f"--start-from {path}" + (f", configuration {number}" if len(configs) > 1 else "")
        fixed = [key for key in config if key in space.NOT_SWEPT]
        if fixed and not path.is_dir():  # space_point would skip it: refused, not ignored
            raise WarmStartError(space.not_swept_message(f"{where}: {fixed[0]!r}", fixed[0]))
        try:
            # YAML's "0.005" a number; a bad value one line
            parsed = sweep.settings.validate(config)
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
        given = [
            option
            for option, value in (
                ("--prior-runs", args.prior_runs),
                ("--start-from", args.start_from),
            )
            if value
        ]
        if given and sweep.method == "grid":
            raise WarmStartError(
                f"{given[0]} with method grid: a grid sweep trains every point of "
                "its grid in its own order; use method bayes or random"
            )
        if given and sweep.search_space is not None:
            raise WarmStartError(
                f"{given[0]}: scheduler.search_space defines the parameters in "
                "code, where a config cannot be matched; use a parameters section"
            )
        if args.sampler_seed is not None and "optimizer" in sweep.scheduler:
            raise WarmStartError(
                "--sampler-seed: scheduler.optimizer makes its own sampler; seed it there"
            )
        for folder in args.prior_runs:
            if not folder.is_dir():
                raise WarmStartError(
                    f"--prior-runs {folder}: no such folder; give a runs folder or a run folder"
                )
        return cls(
            args.prior_runs,
            [(path, params) for path in args.start_from for params in start_points(path, sweep)],
        )

    def apply(
        self, study: optuna.Study, store: Store, sweep: Sweep, identity: Callable[[], dict]
    ) -> None:
        """Prior runs become finished trials, then the starting points are queued, under the
        scheduling lock: a second process (another machine's, the same command again) finds them
        and adds nothing. `identity()` is the data's run_files.data_identity, asked for only if
        needed."""
        if not self.prior_runs and not self.points:
            return
        fingerprint = identity() if self.prior_runs else {}
        with store.scheduling(study):
            if self.prior_runs:
                add_prior_runs(study, sweep, self.prior_runs, fingerprint)
            for path, params in self.points:
                count = len(study.get_trials(deepcopy=False))
                # Not twice: a rerun finds it queued or trained; a prior run of it is known already
                study.enqueue_trial(
                    params, user_attrs={"origin": report.START_POINT}, skip_if_exists=True
                )
                queued = len(study.get_trials(deepcopy=False)) > count
                said = f"trial {count}, before the sampler's" if queued else "already in the study"
                print(f"start point from {path}: {said}", flush=True)


class SeededSampler(optuna.samplers.BaseSampler):
    """The sweep's sampler made anew for each trial, seeded with (--sampler-seed, how many trials
    the sampler drew before it): the same study gives the same draw, in one command or over resumed
    ones. A queued trial (a starting point, a retry) or a prior run has its params and takes no
    draw, so a retry does not shift the draws after it."""

    def __init__(self, sweep: Sweep, seed: int):
        self.sweep, self.seed = sweep, seed
        self.current = space.make_sampler(sweep, seed)

    @staticmethod
    def drew(trial: optuna.trial.FrozenTrial) -> bool:
        return not ({"fixed_params", "failed_trial"} & set(trial.system_attrs) or is_prior(trial))

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        before = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number]
        draws = sum(map(self.drew, before))
        digest = hashlib.sha256(f"{self.seed}/{draws}".encode()).digest()
        self.current = space.make_sampler(self.sweep, int.from_bytes(digest[:4], "little"))
        self.current.before_trial(study, trial)

    def infer_relative_search_space(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial
    ) -> dict:
        return self.current.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: optuna.trial.FrozenTrial, search_space: dict
    ) -> dict:
        return self.current.sample_relative(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        param_name: str,
        distribution: optuna.distributions.BaseDistribution,
    ):
        return self.current.sample_independent(study, trial, param_name, distribution)

    def after_trial(
        self,
        study: optuna.Study,
        trial: optuna.trial.FrozenTrial,
        state: TrialState,
        values: list[float] | None,
    ) -> None:
        self.current.after_trial(study, trial, state, values)


def seeded_sampler(sweep: Sweep, seed: int) -> optuna.samplers.BaseSampler:
    """--sampler-seed's sampler: bayes and random draw per trial (SeededSampler); a grid's order is
    fixed without a seed (space.make_sampler)."""
    if sweep.method == "grid":
        return space.make_sampler(sweep)
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
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use seconds, or a number with s, m, h or d (90m, 1.5h)"
        )
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
            print(
                f"time budget {self.seconds:g} s spent ({seconds:.1f} s of wall time on study "
                f"{study.study_name}): no new trial starts; a running one trains to its end",
                flush=True,
            )
            self.said = True
        return True
