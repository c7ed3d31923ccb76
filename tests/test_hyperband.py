"""local_sweep.py's Hyperband is W&B's: the same bands, the same thresholds, the same runs stopped.

The comparison runs W&B's own engine (`sweeps.hyperband_stop_runs`, .ci/wandb_hyperband.py) in the
environment `.venv-sweeps` (the `sweeps` package pins numpy<2, so it cannot share .venv);
SWEEPS_PYTHON names another interpreter. The other tests here need no W&B code.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

import local_sweep
import part_2_cifar as p2
from cifarkit.sweeps import space as sweep_space
from cifarkit.sweeps.space import SweepConfigError

ROOT = Path(__file__).resolve().parents[1]
SWEEPS_PYTHON = ROOT / os.environ.get("SWEEPS_PYTHON", ".venv-sweeps/bin/python")  # .ci/run sets it
METRIC = "val_accuracy"
# W&B-valid early_terminate sections: both forms, several s and eta (fractional too), strict or not
SETTINGS = [
    {
        "max_iter": 36,
        "s": 2,
        "eta": 3,
    },  # sweep_config.json's: bands 4 and 12, strict by W&B's default
    {"max_iter": 36, "s": 2, "eta": 3, "strict": False},
    {"max_iter": 27, "s": 3, "eta": 3, "strict": True},  # 1, 3, 9
    {"max_iter": 16, "s": 5, "eta": 2},  # 1, 2, 4, 8: the fifth band would be below 1
    {"max_iter": 30, "s": 2, "eta": 2.5, "strict": False},  # 4, 12
    {"min_iter": 1, "eta": 2},  # 1, 2, 4, 8, 16, ...
    {"min_iter": 2, "strict": False},  # 2, 6, 18, ... (eta 3 by default)
    {
        "min_iter": 3,
        "eta": 1.5,
        "strict": True,
    },  # 3, 4, 6, 10, 15, ...: repeated products, rounded down
    {"min_iter": 2, "max_iter": 12, "s": 1, "eta": 4},  # both given: W&B uses max_iter, band 3
]


# --------------------------------------------------------------------------------------------------
# A sweep replayed: curves fed to the local sweep's pruner, trial by trial and epoch by epoch


def curves(rng: random.Random, runs: int, ties: bool, goal: str) -> list[list[float]]:
    """Learning curves of 1..16 epochs: coarse random values (many ties, a few NaN or inf, which W&B
    drops), or curves that improve towards the goal with fixed ranks and noise, rounded (ties at the
    same epoch)."""
    out = []
    for i in range(runs):
        length = rng.randint(1, 16)
        if ties:
            out.append(
                [
                    rng.choice([math.nan, math.inf])
                    if rng.random() < 0.05
                    else float(rng.randint(0, 4))
                    for _ in range(length)
                ]
            )
        else:
            top, sign = 30 + 2 * (i % 10), 1 if goal == "maximize" else -1
            out.append(
                [
                    sign * round(top * (1 - math.exp(-e / 3)) + rng.gauss(0, 2))
                    for e in range(1, length + 1)
                ]
            )
    return out


def replay_sweep(
    early: dict,
    goal: str,
    runs: list[list[float]],
    workers: int,
    rng: random.Random,
    crash_rate: float,
) -> tuple[list[dict], list[list[str]]]:
    """Run `runs` as a sweep on `workers` workers that take turns at random, each trial reporting
    through local_sweep.Pruning, as run_trial does. A trial may crash after an epoch: it is failed
    and queued for a retry, which replays its epochs before it trains on (resume from last.pt).

    Returns the events (what W&B's controller would see: the run that logged a row, its value, the
    running runs) and, per event, the runs the local pruner would stop then (every running trial
    asked).
    """
    pruner = sweep_space.WandbHyperbandPruner(*sweep_space.hyperband_bands(early))
    study = optuna.create_study(direction=goal, pruner=pruner)
    # active: trial number -> (trial, Pruning, run)
    pending, active, run_of = (
        list(range(len(runs))),
        {},
        {},
    )
    epochs_done, events, local_stops = [0] * len(runs), [], []
    while pending or active or study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        while len(active) < workers and (
            pending or study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        ):
            trial = study.ask()  # a queued retry first, as in local_sweep.next_trial
            retried = RetryHeartbeatStaleTrialCallback.retry_history(
                study.get_trials(deepcopy=False)[trial.number]
            )
            run = run_of[retried[0]] if retried else pending.pop(0)
            run_of[trial.number] = run
            pruning = local_sweep.Pruning(trial, METRIC, goal == "maximize")
            pruning.replay(
                [{"epoch": e + 1, METRIC: runs[run][e]} for e in range(epochs_done[run])]
            )
            active[trial.number] = trial, pruning, run
        number = rng.choice(sorted(active))
        trial, pruning, run = active[number]
        epoch = epochs_done[run] = epochs_done[run] + 1
        value = runs[run][epoch - 1]
        try:
            pruning.on_epoch({"epoch": epoch, METRIC: value})
            pruned = False
        except p2.StopEarly:
            pruned = True
        frozen = {n: study.get_trials(deepcopy=False)[n] for n in active}
        local_stops.append(
            sorted(f"run-{active[n][2]}" for n in active if pruner.prune(study, frozen[n]))
        )
        events.append(
            {
                "run": f"run-{run}",
                "value": value,
                "running": sorted(f"run-{active[n][2]}" for n in active),
            }
        )
        assert pruned == (f"run-{run}" in local_stops[-1])  # should_prune is the pruner's answer
        if pruned or epoch == len(runs[run]):
            study.tell(trial, state=TrialState.PRUNED) if pruned else study.tell(
                trial, pruning.best
            )
            del active[number]
        elif rng.random() < crash_rate:
            RetryHeartbeatStaleTrialCallback()(study, study.tell(trial, state=TrialState.FAIL))
            del active[number]
    return events, local_stops


def wandb_decisions(tmp_path: Path, cases: list[dict]) -> list[dict]:
    assert SWEEPS_PYTHON.exists(), f"SWEEPS_PYTHON={SWEEPS_PYTHON} does not exist"
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    result = subprocess.run(
        [str(SWEEPS_PYTHON), str(ROOT / ".ci" / "wandb_hyperband.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


@pytest.mark.skipif(
    not SWEEPS_PYTHON.exists() and "SWEEPS_PYTHON" not in os.environ,
    reason="W&B's sweep engine is not installed in .venv-sweeps: python3 -m venv .venv-sweeps && "
    ".venv-sweeps/bin/pip install sweeps (it pins numpy<2: not in .venv)",
)
def test_the_local_sweep_stops_exactly_the_runs_wandbs_engine_stops(tmp_path):
    cases, local = [], []
    for seed, (early, goal) in enumerate(
        (early, goal) for early in SETTINGS for goal in ("maximize", "minimize")
    ):
        rng, early = random.Random(seed), {"type": "hyperband", **early}
        events, stops = replay_sweep(
            early,
            goal,
            curves(rng, 24, seed % 4 < 2, goal),
            workers=1 + seed % 3,
            rng=rng,
            crash_rate=0.04,
        )
        config = {
            "method": "random",
            "metric": {"name": METRIC, "goal": goal},
            "early_terminate": early,
            "parameters": {"learning_rate": {"values": [0.01]}},
        }
        cases.append({"config": config, "events": events})
        local.append({"bands": sweep_space.hyperband_bands(early)[0], "stops": stops})
    # the cases stay in tmp_path/cases.json for a failure's reader
    wandb = wandb_decisions(tmp_path, cases)
    for case, ours, theirs in zip(cases, local, wandb, strict=True):
        where = f"{case['config']['early_terminate']}, {case['config']['metric']['goal']}"
        assert ours["bands"] == theirs["bands"], where
        for n, (mine, wandbs) in enumerate(zip(ours["stops"], theirs["stops"], strict=True)):
            assert mine == wandbs, (
                f"{where}, event {n} {case['events'][n]}: we stop {mine}, W&B stops {wandbs}"
            )
    stopped = [bool(s) for case in local for s in case["stops"]]
    assert any(stopped) and not all(stopped)  # the curves make W&B stop some runs and keep others


# --------------------------------------------------------------------------------------------------
# The rule, by example (no W&B code needed)


def study_with(
    curves_done: list[list[float]], early: dict, direction: str = "maximize"
) -> optuna.Study:
    """A study holding finished trials with these curves (step = epoch), pruned by W&B's
    Hyperband."""
    study = optuna.create_study(
        direction=direction,
        pruner=sweep_space.WandbHyperbandPruner(*sweep_space.hyperband_bands(early)),
    )
    for curve in curves_done:
        study.add_trial(
            optuna.create_trial(
                value=max(curve), intermediate_values=dict(enumerate(curve, start=1))
            )
        )
    return study


def first_pruned_epoch(study: optuna.Study, curve: list[float]) -> int | None:
    pruning = local_sweep.Pruning(study.ask(), METRIC, study.direction.name == "MAXIMIZE")
    for epoch, value in enumerate(curve, start=1):
        try:
            pruning.on_epoch({"epoch": epoch, METRIC: value})
        except p2.StopEarly:
            return epoch
    return None


def test_every_trial_is_checked_at_every_band_against_all_that_reached_it():
    early = {
        "type": "hyperband",
        "max_iter": 36,
        "s": 2,
        "eta": 3,
    }  # bands 4 and 12: keep the best third
    others = [
        [10] * 12,
        [20] * 12,
        [30] * 4,
    ]  # the third stopped after epoch 4: it counts at band 4 only
    # The threshold is the value ranked int(n / 3) from the best, 0 first: 2nd of 4 at band 4, 2nd
    # of 3 at band 12
    # best at 4, last at 12
    assert first_pruned_epoch(study_with(others, early), [40] * 4 + [5] * 8) == 12
    assert first_pruned_epoch(study_with(others, early), [15] * 12) == 4  # 3rd of 4 at band 4
    # 2nd of 3 at 12: it stays
    assert first_pruned_epoch(study_with(others, early), [35] * 4 + [15] * 8) is None


def test_after_the_last_band_a_trial_is_still_held_to_it():
    """As under W&B: a trial past the last band is compared at that band again when others have
    reached it since."""
    early = {
        "type": "hyperband",
        "max_iter": 4,
        "s": 1,
        "eta": 2,
    }  # one band, at epoch 2: rank int(n / 2) stays
    study = study_with([[1, 1]], early)
    pruning = local_sweep.Pruning(study.ask(), METRIC, maximize=True)
    for epoch in (1, 2, 3):
        pruning.on_epoch({"epoch": epoch, METRIC: 5})  # best of 2 at the band
    for curve in ([9, 9], [8, 8], [7, 7]):
        study.add_trial(
            optuna.create_trial(
                value=max(curve), intermediate_values=dict(enumerate(curve, start=1))
            )
        )
    with pytest.raises(p2.StopEarly, match="pruned after epoch 4"):
        pruning.on_epoch({"epoch": 4, METRIC: 5})  # now 4th of 5 at epoch 2, below the 3rd


def test_strict_compares_the_value_at_the_band_and_not_strict_the_best_so_far():
    early = {"type": "hyperband", "max_iter": 9, "s": 1, "eta": 3}  # one band, at epoch 3
    others = [[5, 5, 5], [6, 6, 6]]
    assert first_pruned_epoch(study_with(others, early), [9, 1, 1]) == 3  # strict: 1 at the band
    # its best, 9
    assert first_pruned_epoch(study_with(others, early | {"strict": False}), [9, 1, 1]) is None
    assert first_pruned_epoch(study_with([[5, 5, 5], [4, 4, 4]], early, "minimize"), [6, 6, 6]) == 3


def test_a_tie_with_the_threshold_stays_and_nan_is_not_a_value():
    early = {
        "type": "hyperband",
        "max_iter": 4,
        "s": 1,
        "eta": 2,
    }  # band 2: of 3, the 2nd best is the threshold
    assert first_pruned_epoch(study_with([[3, 3], [3, 3]], early), [3, 3]) is None
    # 2 is its 2nd value
    assert first_pruned_epoch(study_with([[3, 3], [3, 3]], early), [3, math.nan, 2]) == 3


def test_a_retried_trial_counts_once():
    """A failed trial and its retry (which replays the same epochs) are one W&B run: the rank at the
    band is out of 2, not 3."""
    early = {
        "type": "hyperband",
        "max_iter": 4,
        "s": 1,
        "eta": 2,
    }  # band 2: the value ranked int(n / 2) stays
    study = study_with([], early)
    dead = study.ask()
    dead.report(5, 1), dead.report(5, 2)
    RetryHeartbeatStaleTrialCallback()(study, study.tell(dead, state=TrialState.FAIL))
    retry = study.ask()
    assert RetryHeartbeatStaleTrialCallback.retry_history(study.trials[retry.number]) == [
        dead.number
    ]
    local_sweep.Pruning(retry, METRIC, maximize=True).replay(
        [{"epoch": 1, METRIC: 5}, {"epoch": 2, METRIC: 5}]
    )
    # 2nd of 2 stays; counted twice, 5 would be the threshold
    assert first_pruned_epoch(study, [4, 4]) is None


def test_a_resumed_trial_replays_its_epochs_without_deciding_them_again():
    class Recorded(optuna.pruners.BasePruner):
        def __init__(self):
            self.asked_at = []

        def prune(self, study, trial):
            self.asked_at.append(trial.last_step)
            return False

    pruner = Recorded()
    trial = optuna.create_study(direction="maximize", pruner=pruner).ask()
    pruning = local_sweep.Pruning(trial, METRIC, maximize=True)
    pruning.replay([{"epoch": e, METRIC: v} for e, v in ((1, 3.0), (2, 7.0), (3, 5.0))])
    pruning.on_epoch({"epoch": 4, METRIC: 6.0})
    assert pruner.asked_at == [4]
    assert trial.study.trials[0].intermediate_values == {
        1: 3.0,
        2: 7.0,
        3: 5.0,
        4: 6.0,
    }  # raw values, not the best
    assert pruning.best == 7.0


# --------------------------------------------------------------------------------------------------
# Bands and refusals


@pytest.mark.parametrize(
    "early, bands",
    [
        ({"max_iter": 36, "s": 2, "eta": 3}, [4, 12]),
        ({"max_iter": 16, "s": 9, "eta": 2}, [1, 2, 4, 8]),
        ({"max_iter": 30, "s": 2, "eta": 2.5}, [4, 12]),
        ({"min_iter": 2, "max_iter": 12, "s": 1, "eta": 4}, [3]),
    ],
)
def test_bands_are_wandbs(early, bands):
    assert sweep_space.hyperband_bands({"type": "hyperband", **early})[0] == bands


def test_min_iter_bands_have_no_end():
    bands, eta, strict = sweep_space.hyperband_bands(
        {"type": "hyperband", "min_iter": 3, "eta": 1.5}
    )
    assert bands[:6] == [3, 4, 6, 10, 15, 22] and len(bands) == sweep_space.MIN_ITER_BANDS
    assert (eta, strict) == (1.5, True)


@pytest.mark.parametrize(
    "early, words",
    [
        ({"type": "median"}, "only type hyperband"),
        ({"type": "hyperband", "min_iter": 3, "stricct": False}, "unknown key 'stricct'"),
        ({"type": "hyperband", "max_iter": 27}, "s=None: max_iter needs s"),
        ({"type": "hyperband", "max_iter": 27, "s": 2.0}, "s=2.0"),
        ({"type": "hyperband", "max_iter": 2, "s": 2, "eta": 3}, "no band >= 1"),
        ({"type": "hyperband", "min_iter": 0}, "min_iter=0"),
        ({"type": "hyperband", "min_iter": 3, "eta": 1}, "eta=1: use a number > 1"),
        ({"type": "hyperband", "min_iter": 3, "strict": "yes"}, "strict='yes'"),
        ({"type": "hyperband", "eta": 3}, "needs min_iter, or max_iter and s"),
    ],
)
def test_what_wandb_refuses_is_refused_in_one_line(early, words):
    with pytest.raises(SweepConfigError, match=words) as caught:
        sweep_space.hyperband_bands(early)
    assert "\n" not in str(caught.value)
