"""The report of a local sweep (local_sweep.py, at the end and with --report): the top trials on the
console, every trial in <study folder>/trials.csv (Optuna's trials_dataframe; folders.study_folder),
and Optuna's plots in <images-dir>, each titled with its data and the machines that ran it. A study
of several objectives (method custom, `metrics`) gets its Pareto front instead: a pareto_front
column in trials.csv, the front first, and Optuna's plot_pareto_front.
"""

from __future__ import annotations

import socket
import textwrap
import warnings
from collections import Counter
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState

from cifarkit.core.cli import FileFailed, one_line, write_atomic
from cifarkit.core.figures import NO_FIGURES_VARIABLE, figures_wanted, pyplot, save_figure
from cifarkit.sweeps.space import Sweep

TOP_TRIALS = 10  # rows of the console table
# fANOVA on fewer completed trials ranks noise; the plot is skipped, with a line
MIN_TRIALS_FOR_IMPORTANCE = 10
# A trial's user attr "origin", set by local_sweep.py: a run folder on disk that became a finished
# trial (--prior-runs), or a configuration the user queued first (--start-from); else the sampler's
PRIOR_RUN, START_POINT, SAMPLED = "prior run", "start point", "sampler"
ENDED_UNSEEN = (
    "its process stopped or stalled past the grace period (killed, crashed, paused, its machine or "
    "the storage lost); a retry runs it again"
)


def trials_table(study: optuna.Study, swept: list[str]):
    """One row per trial, best first (completed by value, then pruned), then the rest by number (a
    DataFrame)."""
    df = study.trials_dataframe(
        attrs=("number", "state", "value", "duration", "user_attrs", "system_attrs")
    )
    if df.empty:
        return df
    df.columns = [c.removeprefix("user_attrs_") for c in df.columns]
    configs = (
        [c if isinstance(c, dict) else {} for c in df.pop("config")]
        if "config" in df
        else [{}] * len(df)
    )
    for (
        key
    ) in swept:  # the value each run used (Optuna's params hold a normal parameter's quantile)
        df[key] = [c.get(key) for c in configs]
    # a study whose trials all run has no duration at all: an object column of None, which has no
    # .dt
    df["seconds"] = pd.to_timedelta(df.pop("duration")).dt.total_seconds().round(1)
    history = df.get("system_attrs_retry_history", df["number"])
    df["retry_of"] = [h[-1] if isinstance(h, list) else None for h in history]
    origins = df.get("origin", [None] * len(df))
    df["origin"] = [o if isinstance(o, str) else SAMPLED for o in origins]
    df = df.drop(columns=[c for c in df.columns if c.startswith("system_attrs_")])
    notes = df.get("failure", [None] * len(df))
    df["failure"] = [
        n if isinstance(n, str) and n else ENDED_UNSEEN if state == "FAIL" else ""
        for n, state in zip(notes, df["state"], strict=True)
    ]
    rank = df["state"].map({"COMPLETE": 0, "PRUNED": 1}).fillna(2)
    values = ["value"] if "value" in df else [c for c in df.columns if c.startswith("values_")]
    # Optuna's own front: completed trials no other completed trial beats on all values
    if len(study.directions) > 1:
        front = {t.number for t in study.best_trials}
        df["pareto_front"] = df["number"].isin(front)
        # the front first, then the other completed trials
        rank = rank - df["pareto_front"].astype(int)
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    df = df.assign(_rank=rank, _key=sign * df[values[0]].fillna(0)).sort_values(
        ["_rank", "_key", "number"]
    )
    first = [
        c
        for c in (
            "number",
            "state",
            *values,
            "origin",
            "pareto_front",
            "epochs_completed",
            "test_accuracy",
            *swept,
            "seconds",
            "host",
            "retry_of",
            "resumed_after_epoch",
            "failure",
        )
        if c in df
    ]
    return df[first + [c for c in df.columns if c not in first and not c.startswith("_")]]


def states_line(counts: Counter) -> str:
    """'3 COMPLETE, 1 PRUNED' from counts of state names, in Optuna's order of states."""
    return ", ".join(f"{counts[s.name]} {s.name}" for s in TrialState if counts[s.name])


def write_report(study: optuna.Study, sweep: Sweep, study_dir: Path, images_dir: Path) -> None:
    """Console table of the top trials, all trials as <study_dir>/trials.csv, and the plots, each
    titled with its data and machines. The plots are named after study_dir
    (folders.study_folder): two studies of one name do not share them; none where the environment
    sets CIFARKIT_NO_FIGURES=1 (figures.figures_wanted)."""
    trials = study.get_trials(deepcopy=False)
    prior = Counter(t.state.name for t in trials if t.user_attrs.get("origin") == PRIOR_RUN)
    trained = Counter(t.state.name for t in trials) - prior
    from_prior = f"; from prior runs: {states_line(prior)}" if prior else ""
    print(
        f"\nstudy {study.study_name}: {states_line(trained) or 'no trial'} trained (--trials "
        f"counts COMPLETE + PRUNED){from_prior}"
    )
    table = trials_table(
        study,
        list(sweep.raw.get("parameters") or {})
        or sorted(
            {k for t in trials for k in t.user_attrs.get("config", {}) if k in sweep.settings}
            - {"val_size"}
        ),
    )
    console = table.drop(columns=["run_dir", "device"], errors="ignore")  # in the CSV
    print(
        console.head(TOP_TRIALS).to_string(index=False, na_rep="")
        if len(table)
        else "no trials yet"
    )
    csv_path = study_dir / "trials.csv"
    try:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileFailed(e, "make the folder of", csv_path) from None
    write_atomic(csv_path, table.to_csv(index=False).encode())  # machines write it in turn
    print(f"wrote {csv_path}")
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        print("no completed trial yet: no plots")
        return
    # optuna.visualization.matplotlib's plot_<name>; its history, importance and parallel plots
    # take one objective
    plots = {
        "history": "optimization_history",
        "importance": "param_importances",
        "parallel": "parallel_coordinate",
    }
    if len(study.directions) > 1:
        plots = {"pareto": "pareto_front"}
        front = table[table["pareto_front"]]
        goals = zip(study.metric_names or [], study.directions, strict=False)
        print(
            f"Pareto front ({', '.join(f'{n} {d.name.lower()}' for n, d in goals)}): {len(front)} "
            f"of {len(complete)} completed trials: {', '.join(map(str, front['number']))} "
            "(trials.csv: pareto_front)"
        )
    if not figures_wanted():
        print(f"no plots: {NO_FIGURES_VARIABLE}=1")
        return
    pyplot()  # Agg, a config folder it can write
    from optuna.visualization import matplotlib as oplt

    machines = sorted(
        {
            f"{t.user_attrs.get('host', socket.gethostname())} ({t.user_attrs.get('device', '?')})"
            for t in complete
        }
    )
    title = (
        f"study {study.study_name}, {len(complete)} completed trials; data: "
        f"{study.user_attrs.get('data', '?')}; on {', '.join(machines)}"
    )
    for kind, name in plots.items():
        if kind == "importance" and len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
            print(
                f"skipped the importance plot: {len(complete)} completed, it needs "
                f"{MIN_TRIALS_FOR_IMPORTANCE}"
            )
            continue
        try:
            # experimental-API notes; axes of parameters with one value
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(oplt, f"plot_{name}")(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            print(f"skipped the {kind} plot: {one_line(e)}")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        # the Pareto plot's axes are narrower than the title
        fig.suptitle(textwrap.fill(title, 100), fontsize=8)
        fig.tight_layout()
        path = images_dir / f"sweep_{study_dir.name}_{kind}.png"
        save_figure(fig, path)
        print(f"wrote {path}")
