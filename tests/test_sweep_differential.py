"""A sweep file means to local_sweep.py what it means to W&B, checked against W&B's own engine.

CORPUS_SIZE sweep files are generated from a seed: every parameter kind W&B knows, nested
parameters, every method, with and without metric, early_terminate, run_cap and command, and the
mistakes users of W&B have made (wrong types, missing and extra keys, typos, YAML scalars that are
not text, bounds that overflow). W&B's engine decides each (.ci/wandb_sweep_decisions.py: one
process of the `sweeps` package in .venv-sweeps, which pins numpy<2), and local_sweep.load_sweep
decides each in this process, without training:

- W&B refuses (its schema check raises, or sweeps.next_run / stop_runs cannot propose a run):
  refused here, in one line. method custom is W&B's Optuna scheduler's (wandb's own
  build_optuna_optimizer, asked for a run here).
- W&B's schema reports a violation but its engine runs: refused here, or run with at least one
  note (never silently).
- W&B is clean: run here, unless the file is one of the deliberate differences (DELIBERATE, each
  listed in the README).

Where both run, the spaces are the same: every value drawn here lies in W&B's support, and for
random and bayes each parameter's draws and W&B's are alike by a two-sample test (chi-square for
few values, else Kolmogorov-Smirnov); a grid is the very list of points W&B's engine proposes.
With SWEEPS_PYTHON set (CI) the engine must be there: the test fails rather than skips.
"""

from __future__ import annotations

import copy
import datetime
import json
import math
import os
import random
import subprocess
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT

import local_sweep
import part_2_cifar as p2
from cifarkit.sweeps import space as sweep_space
from cifarkit.sweeps.space import SweepConfigError

SWEEPS_PYTHON = ROOT / os.environ.get("SWEEPS_PYTHON", ".venv-sweeps/bin/python")  # .ci/run sets it
CORPUS_SIZE, SEED = 360, 25
DRAWS = 600  # per distinct parameter spec, on each side
# A seeded test: a pass stays a pass. A real difference gives p << 1e-8 at 600 draws: q_uniform's
# half-weight ends drawn as whole ones gave p = 1.6e-9, e^x for x gave 0.
ALPHA = 1e-4
needs_engine = pytest.mark.skipif(
    not SWEEPS_PYTHON.exists() and "SWEEPS_PYTHON" not in os.environ,
    reason="W&B's sweep engine is not installed in .venv-sweeps: python3 -m venv .venv-sweeps && "
    ".venv-sweeps/bin/pip install sweeps (it pins numpy<2: not in .venv)",
)

# --------------------------------------------------------------------------------------------------
# The corpus

U, Q, LOG = "uniform", "q_uniform", "log_uniform_values"
# Per trainer setting, specs part_2_cifar.py accepts: together every parameter kind W&B knows
FORMS = {
    "learning_rate": [
        {"distribution": U, "min": 0.001, "max": 0.1},
        {"min": 0.001, "max": 0.1},
        {"distribution": LOG, "min": 0.0001, "max": 0.1},
        {"distribution": "log_uniform", "min": -9.2, "max": -2.3},
        {"distribution": "inv_log_uniform_values", "min": 0.001, "max": 0.1},
        {"distribution": "inv_log_uniform", "min": 2.3, "max": 6.9},
        {"distribution": "q_log_uniform_values", "min": 0.001, "max": 0.1, "q": 0.001},
        {"distribution": "log_normal", "mu": -4.6, "sigma": 0.5},
        {"values": [0.01, 0.03, 0.1]},
    ],
    "momentum": [
        {"distribution": U, "min": 0.8, "max": 0.99},
        {"distribution": "beta", "a": 8, "b": 2},
        {"distribution": "normal", "mu": 0.9, "sigma": 0.02},
        {"min": 0.5, "max": 0.9},
        {"distribution": Q, "min": 0.8, "max": 0.95, "q": 0.05},
    ],
    "batch_size": [
        {"values": [64, 128, 256]},
        {"distribution": "categorical", "values": [64, 128]},
        {"values": [64, 128, 256], "probabilities": [0.5, 0.3, 0.2]},
        {
            "distribution": "categorical_w_probabilities",
            "values": [64, 128],
            "probabilities": [0.25, 0.75],
        },
        {"distribution": Q, "min": 32, "max": 256, "q": 32},
        {"distribution": "q_log_uniform_values", "min": 16, "max": 512, "q": 16},
        {"value": 64},
        {"distribution": "constant", "value": 128},
    ],
    "num_filters_1": [
        {"min": 8, "max": 64},
        {"distribution": "int_uniform", "min": 16, "max": 24},
        {"distribution": "q_normal", "mu": 64, "sigma": 8, "q": 8},
        {"distribution": "q_log_normal", "mu": 4, "sigma": 0.3, "q": 4},
        {"distribution": "q_log_uniform", "min": 2.1, "max": 4.6, "q": 4},
    ],
    "num_filters_2": [
        {"values": [32, 64, 96]},
        {"distribution": Q, "min": 16, "max": 128},
        {"distribution": Q, "min": 16, "max": 64, "q": 16},
    ],
    "dropout_rate": [
        {"values": [0.0, 0.25, 0.5]},
        {"distribution": U, "min": 0.0, "max": 0.5},
        {"distribution": Q, "min": 0.0, "max": 0.5, "q": 0.125},
        {"distribution": "beta", "a": 2, "b": 5},
    ],
    "epochs": [
        {"distribution": Q, "min": 30, "max": 50, "q": 5},
        {"min": 1, "max": 3},
        {"distribution": Q, "min": 2, "max": 9},
        {"value": 2},
    ],
    "weight_decay": [
        {"distribution": LOG, "min": 0.0001, "max": 0.01},
        {"distribution": "q_log_uniform_values", "min": 0.0001, "max": 0.01, "q": 0.0001},
        {"distribution": "q_beta", "a": 2, "b": 2, "q": 0.05},
        {"distribution": U, "min": 0.0, "max": 0.001},
    ],
    "label_smoothing": [{"distribution": U, "min": 0.0, "max": 0.2}, {"values": [0.0, 0.1]}],
    "warmup_epochs": [{"distribution": Q, "min": 0, "max": 3, "q": 0.5}, {"values": [0, 1, 2]}],
    "lr_schedule": [{"values": ["cosine", "constant"]}, {"value": "cosine"}],
    "seed": [{"min": 0, "max": 99}, {"values": [0, 1, 2, 3]}],
}
EVERY_FORM = [(name, form) for name, forms in FORMS.items() for form in forms]
GRID_SETTINGS = (
    "batch_size",
    "num_filters_1",
    "num_filters_2",
    "dropout_rate",
    "epochs",
    "warmup_epochs",
    "lr_schedule",
    "learning_rate",
)
METRICS = [
    {"name": "val_accuracy", "goal": "maximize"},
    {"name": "val_loss"},
    {"name": "train_loss", "target": 0.5},
    {"name": "best_val_accuracy", "goal": "maximize"},
    {"name": "flops_per_image", "goal": "minimize"},
]
HYPERBAND = [
    {"type": "hyperband", "max_iter": 27, "s": 2},
    {"type": "hyperband", "min_iter": 2, "eta": 2},
    {"type": "hyperband", "min_iter": 3},
    {"type": "hyperband", "max_iter": 36, "s": 2, "eta": 3, "strict": False},
]
AGENT = ["${env}", "${interpreter}", "${program}"]  # the start of W&B's default command
COMMANDS = [
    [*AGENT, "${args}"],
    [*AGENT, "--val-size=200", "${args}"],
    ["${env}", "python", "${program}", "${args_no_equals}"],
    ["/usr/bin/env", "/opt/venv/bin/python", "${program}", "--epochs=3", "${args}"],
    [*AGENT, "--data-dir=/tmp/cifar", "--no-log-model", "${args}"],
]
OPTIONAL = [
    ("run_cap", 0.25, list(range(1, 21))),
    ("command", 0.25, COMMANDS),
    ("name", 0.4, ["cifar-lr", "sweep 1", "cifar/lr-sweep"]),
    ("description", 0.2, ["learning rate and width"]),
    ("project", 0.1, ["cifar"]),
]


def base_config(rng: random.Random, i: int) -> dict:
    """A sweep file as a user who read W&B's documentation writes it; the i-th has the i-th of
    EVERY_FORM where W&B's engine draws from every kind (random, bayes)."""
    method = rng.choice(["bayes", "bayes", "random", "random", "grid", "custom"])
    grid = method == "grid"
    names = rng.sample(GRID_SETTINGS if grid else list(FORMS), rng.randint(1, 3 if grid else 5))
    forms = {
        name: [
            f
            for f in FORMS[name]
            if not grid or sweep_space.parameter_kind(name, f) in sweep_space.GRID_KINDS
        ]
        for name in names
    }
    parameters = {name: copy.deepcopy(rng.choice(forms[name])) for name in names}
    config = {"method": method, "parameters": parameters}
    name, form = EVERY_FORM[i % len(EVERY_FORM)]
    if method in ("random", "bayes"):
        parameters[name] = copy.deepcopy(form)
    if rng.random() < 0.8:
        config["program"] = "part_2_cifar.py"
    if method == "custom":
        config["scheduler"] = {"engine": "optuna"}
        if rng.random() < 0.5:
            config["metrics"] = [
                {"name": "best_val_accuracy", "goal": "maximize"},
                {"name": "flops_per_image"},
            ]
        else:
            config["metric"] = rng.choice(METRICS[1:])
    elif rng.random() < (0.9 if method == "bayes" else 0.6):
        config["metric"] = copy.deepcopy(rng.choice(METRICS))
        if rng.random() < 0.35:
            config["early_terminate"] = copy.deepcopy(rng.choice(HYPERBAND))
    for key, share, values in OPTIONAL:
        if rng.random() < share:
            config[key] = copy.deepcopy(rng.choice(values))
    return config


# What users of W&B have written into a parameter: (which parameter, None for any; the specs, one
# drawn)
PARAMETER_MUTATIONS = {
    "categorical with value": ("batch_size", [{"distribution": "categorical", "value": 64}]),
    "constant with values": ("batch_size", [{"distribution": "constant", "values": [64]}]),
    "typo in a distribution": (
        None,
        [
            {"distribution": d, "min": 0.001, "max": 0.1}
            for d in ("log_uniform_value", "categoricl", "Uniform", "gaussian")
        ],
    ),
    "typo in a key": (
        None,
        [
            {"distribuion": U, "min": 0.001, "max": 0.1},
            {"valeus": [64, 128]},
            {"distribution": U, "minimum": 0.01, "max": 0.1},
        ],
    ),
    "min as text": ("learning_rate", [{"distribution": U, "min": "0.001", "max": 0.1}]),
    "1e-05 in JSON": ("weight_decay", [{"distribution": LOG, "min": 0.00001, "max": 0.01}]),
    "no max": ("learning_rate", [{"distribution": U, "min": 0.001}]),
    "extra key in a parameter": ("batch_size", [{"values": [64, 128], "default": 64}]),
    "values not a list": ("batch_size", [{"values": 64}]),
    "no values": ("batch_size", [{"values": []}]),
    "min not below max": ("learning_rate", [{"min": 0.1, "max": 0.01}, {"min": 3, "max": 3}]),
    "negative sigma": ("momentum", [{"distribution": "normal", "mu": 0.9, "sigma": -0.1}]),
    "zero sigma": ("momentum", [{"distribution": "normal", "mu": 0.9, "sigma": 0}]),
    "q not positive": ("epochs", [{"distribution": Q, "min": 30, "max": 50, "q": 0}]),
    "probabilities off": (
        "batch_size",
        [
            {"values": [64, 128], "probabilities": [0.5, 0.2]},
            {"values": [64, 128], "probabilities": [1.0]},
        ],
    ),
    "log_uniform with values for bounds": (
        None,
        [  # issue 25, case 1
            {"distribution": "log_uniform", "min": 0.0001, "max": 1000},
            {"distribution": "log_uniform", "min": 0.0001, "max": 0.1},
        ],
    ),
    "uniform overflow": ("weight_decay", [{"min": -1e308, "max": 1e308}]),
    "log_normal overflow": ("weight_decay", [{"distribution": "log_normal", "mu": 800}]),
    "q_log_uniform overflow": (
        "batch_size",
        [{"distribution": "q_log_uniform", "min": 0, "max": 800}],
    ),
    "nested parameters": ("optimizer", [{"parameters": {"lr": {"value": 0.1}}}]),
    "parameter not an object": ("batch_size", [64]),
    "parameter not a setting": ("lr", [{"values": [0.1]}]),
    "val_size swept": ("val_size", [{"values": [100, 200]}]),
}
# ... and into the rest of the file
TOP_MUTATIONS = {
    "eta overflow": {
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 1e300},
        "metric": {"name": "val_loss"},
    },
    "metric as text": {"metric": "val_accuracy"},
    "metric without name": {"metric": {"goal": "maximize"}},
    "goal typo": {"metric": {"name": "val_accuracy", "goal": "maximise"}},
    "extra key in metric": {"metric": {"name": "val_loss", "mode": "min"}},
    "metric the trainer never logs": {
        "metric": [{"name": n} for n in ("accuracy", "test_accuracy", "loss")]
    },
    "impute": {"metric": [{"name": "val_loss", "impute": i} for i in ("best", "worst", "median")]},
    "extra top-level key": {"sweep_id": "abc123"},
    "method typo": {"method": ["bayesian", "Grid", "hyperopt"]},
    "run_cap not a count": {"run_cap": [0, -1, "2", 2.5, True, 2.0]},
    "run_cap": {"run_cap": [1, 2, 3, 4]},
    "command": {
        "command": [
            "python part_2_cifar.py",
            [*AGENT, "--unknown-option=1", "${args}"],
            [*AGENT, "${args_json}"],
            [*AGENT, "${arg}"],
            ["python", "train.py", "${args}"],
            [*AGENT, "--resume=runs/x", "${args}"],
            [*AGENT, "--epochs=abc"],
            [*AGENT, "--device=gpu", "${args}"],
            [],
        ]
    },
    "name with a slash": {"name": "cifar/lr-sweep"},
    "no parameters": {"parameters": {}},
    "early_terminate broken": {
        "metric": {"name": "val_loss"},
        "early_terminate": [
            {"type": "hyperband", "max_iter": 27},
            {"type": "median"},
            {"type": "hyperband", "min_iter": 2, "eta": 1},
            {"type": "hyperband", "max_iter": 27, "s": 2.0},
            {"type": "hyperband", "min_iter": 2, "strict": "yes"},
        ],
    },
    "scheduler": {
        "scheduler": [
            {"engine": "ax"},
            {"engine": "optuna", "sampler": "tpe"},
            {"engine": "wandb"},
            {"engine": "optuna"},
        ]
    },
    "another program": {"program": "train.py"},
    "controller": {"controller": [{"type": "local"}, {"type": "remote"}, "local"]},
    "launch job": {"job": "entity/project/job:latest"},
    # YAML makes these a number, true/false or a date (the file is written as YAML)
    "YAML scalar in a text field": {
        "name": [2024, True],
        "project": [12],
        "entity": [3.5],
        "description": [datetime.date(2024, 6, 1), datetime.datetime(2024, 6, 1, 12)],
    },
}


def remove(*keys: str):
    return lambda config, rng: [config.pop(key, None) for key in keys]


def rename(rng: random.Random, config: dict) -> None:
    old, new = rng.choice(
        [
            ("metric", "metirc"),
            ("parameters", "paramters"),
            ("early_terminate", "early_terminat"),
            ("method", "methods"),
        ]
    )
    if old in config:
        config[new] = config.pop(old)


OTHER_MUTATIONS = {
    "no metric": remove("metric", "metrics"),
    "no method": remove("method"),
    "typo in a top-level key": lambda config, rng: rename(rng, config),
    "early_terminate without metric": lambda config, rng: (
        config.pop("metric", None),
        config.update(early_terminate=HYPERBAND[2]),
    ),
    "metrics of one": lambda config, rng: (
        config.pop("metric", None),
        config.update(metrics=[{"name": "best_val_accuracy"}]),
    ),
    "grid over a range": lambda config, rng: config.update(
        method="grid",
        parameters={"epochs": {"value": 2}, "learning_rate": {"min": 0.001, "max": 0.1}},
    ),
    "grid with duplicates": lambda config, rng: config.update(
        method="grid",
        parameters={"epochs": {"min": 1, "max": 3}, "batch_size": {"values": [64, 64.0, 128, 128]}},
    ),
    "custom with a normal": lambda config, rng: (
        config.update(method="custom", scheduler={"engine": "optuna"}, metric={"name": "val_loss"}),
        config.pop("early_terminate", None),
        set_parameter(config, "momentum", {"distribution": "normal", "mu": 0.9, "sigma": 0.02}),
    ),
}
MUTATIONS = sorted([*PARAMETER_MUTATIONS, *TOP_MUTATIONS, *OTHER_MUTATIONS])


def set_parameter(config: dict, name: str, spec: object) -> None:
    if not isinstance(config.get("parameters"), dict):
        config["parameters"] = {}
    config["parameters"][name] = spec


def mutate(config: dict, mutation: str, rng: random.Random) -> None:
    if mutation in PARAMETER_MUTATIONS:
        name, specs = PARAMETER_MUTATIONS[mutation]
        any_name = sorted(config.get("parameters") or {"learning_rate": None})
        set_parameter(config, name or rng.choice(any_name), copy.deepcopy(rng.choice(specs)))
    elif mutation in TOP_MUTATIONS:
        for key, value in TOP_MUTATIONS[mutation].items():  # a list: one of them
            config[key] = copy.deepcopy(rng.choice(value) if isinstance(value, list) else value)
    else:
        OTHER_MUTATIONS[mutation](config, rng)


def corpus(folder: Path) -> tuple[list[Path], Counter]:
    """CORPUS_SIZE generated sweep files in `folder` (JSON, or YAML where a value is not JSON), and
    how often each mutation was applied."""
    rng, files, used = random.Random(SEED), [], Counter()
    for i in range(CORPUS_SIZE):
        config = base_config(rng, i)
        for mutation in rng.sample(MUTATIONS, rng.choice([0, 0, 1, 1, 1, 2])):
            mutate(config, mutation, rng)
            used[mutation] += 1
        as_yaml = rng.random() < 0.2 or any(
            isinstance(value, (datetime.date, bool, int, float)) for value in config.values()
        )
        path = folder / f"sweep-{i:03d}.{'yaml' if as_yaml else 'json'}"
        text = yaml.safe_dump(config, sort_keys=False) if as_yaml else json.dumps(config, indent=1)
        path.write_text(text)
        files.append(path)
    return files, used


# --------------------------------------------------------------------------------------------------
# The two decisions


def wandb_decisions(folder: Path, files: list[Path]) -> dict:
    assert SWEEPS_PYTHON.exists(), f"SWEEPS_PYTHON={SWEEPS_PYTHON} does not exist"
    request = folder / "request.json"
    request.write_text(json.dumps({"files": [str(f) for f in files], "draws": DRAWS, "seed": SEED}))
    engine = ROOT / ".ci" / "wandb_sweep_decisions.py"
    result = subprocess.run(
        [str(SWEEPS_PYTHON), str(engine), str(request)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def wandb_custom_error(config: dict) -> str | None:
    """Why W&B's Optuna scheduler (method custom: wandb's own code) cannot propose a run, or
    None."""
    from wandb.sdk.sweeps.scheduler.optuna import build_optuna_optimizer
    from wandb.sdk.sweeps.sweep_info import SweepInfo

    info = SweepInfo(id="x", name="x", entity="", project="", config=config, controller_run_name="")
    try:
        optimizer = build_optuna_optimizer(info)
        optimizer.validate_sweep_objective()
        optimizer.metric_names()
        assert optimizer.ask_n_runs(1), "no run proposed"
    except Exception as e:  # noqa: BLE001 (whatever it raises, W&B's scheduler proposes no run)
        return f"{type(e).__name__}: {e}"
    return None


def wandb_verdict(decision: dict, config: object) -> str:
    """refuse, warn (W&B's schema reports violations, its engine runs) or clean."""
    if decision["schema_error"] or not isinstance(config, dict):
        return "refuse"
    custom = config.get("method") == "custom"
    error = wandb_custom_error(config) if custom else decision["engine_error"]
    return "refuse" if error else "warn" if decision["violations"] else "clean"


def trainer_refuses_a_value(decision: dict) -> bool:
    """W&B would propose a value part_2_cifar.py refuses (under W&B each such run fails; here the
    file is refused first)."""
    for name, support in decision["params"].items():
        for value in support.get("values") or [support["low"], support["high"]]:
            try:
                p2.validate_config({name: value})
            except (ValueError, TypeError):
                return True
    return False


def parameters(config: dict) -> dict:
    return config["parameters"] if isinstance(config.get("parameters"), dict) else {}


def command_the_trainer_cannot_run(config: dict) -> bool:
    command = [str(chunk) for chunk in config.get("command") or []]
    if not isinstance(config.get("command"), list) or not command:
        return False
    if not any(c == "${program}" or c.endswith("part_2_cifar.py") for c in command):
        return True
    after = command[command.index("${program}") + 1 :] if "${program}" in command else []
    return any(c.startswith("${") and c not in local_sweep.ARGS_MACROS for c in after) or any(
        c.split("=")[0] in ("--unknown-option", "--resume", "--epochs", "--device")
        and c not in ("--epochs=3",)
        for c in after
    )


def metric_not_written(config: dict) -> bool:
    metric = config.get("metric")
    written = sweep_space.HISTORY_METRICS + sweep_space.SUMMARY_METRICS
    return isinstance(metric, dict) and metric.get("name") not in written


def custom_val_accuracy(config: dict) -> bool:
    metrics = [config.get("metric"), *config.get("metrics", [])]
    return config.get("method") == "custom" and any(
        isinstance(m, dict) and m.get("name") == "val_accuracy" for m in metrics
    )


# What W&B accepts and this program refuses on purpose: the README's words for each, words of the
# refusal's line, and when a file is one
DELIBERATE = {
    "a parameter it lacks": (
        "is not a part_2_cifar.py setting",
        lambda c, d: any(n not in p2.DEFAULTS for n in parameters(c)),
    ),
    "`val_size`": ("cannot be swept", lambda c, d: "val_size" in parameters(c)),
    "nested `parameters`": (
        "nested parameters",
        lambda c, d: any(
            isinstance(spec, dict) and "parameters" in spec for spec in parameters(c).values()
        ),
    ),
    "a value the trainer refuses": (
        "part_2_cifar.py rejects",
        lambda c, d: trainer_refuses_a_value(d),
    ),
    "another `program`": (
        "can only run part_2_cifar.py",
        lambda c, d: Path(str(c.get("program", "part_2_cifar.py"))).name != "part_2_cifar.py",
    ),
    "a W&B Launch `job`": ("W&B Launch", lambda c, d: "job" in c or "image_uri" in c),
    "`metric` must be a number the trainer writes": (
        "part_2_cifar.py writes|test images",
        lambda c, d: metric_not_written(c),
    ),
    "an option the trainer would refuse is refused": (
        "command",
        lambda c, d: command_the_trainer_cannot_run(c),
    ),
    "`scheduler.engine: ax` is refused": (
        "scheduler.engine 'ax'",
        lambda c, d: isinstance(c.get("scheduler"), dict) and c["scheduler"].get("engine") == "ax",
    ),
    "method `custom` refuses `val_accuracy`": (
        "val_accuracy is {",
        lambda c, d: custom_val_accuracy(c),
    ),
}


def excused(config: object, decision: dict, line: str) -> bool:
    """The refusal `line` is one of DELIBERATE: the file is one, and the line says which."""
    return isinstance(config, dict) and any(
        holds(config, decision) and any(word in line for word in words.split("|"))
        for words, holds in DELIBERATE.values()
    )


def local_verdict(path: Path) -> tuple[str, str | list[str], sweep_space.Sweep | None]:
    """("refuse", the line, None) or ("run", the notes, the sweep) of local_sweep.py on one file."""
    try:
        sweep = local_sweep.load_sweep(path)
    except SweepConfigError as e:
        return "refuse", str(e), None
    return "run", list(sweep.notes), sweep


# --------------------------------------------------------------------------------------------------
# The spaces


def value_key(value: object) -> str:
    """A value as W&B's grid tells values apart (its YAML): 3.0 is 3."""
    return json.dumps(
        int(value) if isinstance(value, float) and value.is_integer() else value, default=str
    )


def local_draws(param: sweep_space.Param, n: int, seed: int) -> list:
    """n values of one parameter, drawn by Optuna's RandomSampler through the translation, as a
    trial draws them."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [param.sample(study.ask()) for _ in range(n)]


def outside(value: object, support: dict) -> bool:
    if "values" in support:
        return not any(value == v or (value != value and v != v) for v in support["values"])
    low, high, q = support["low"], support["high"], support.get("q")
    if q:
        low, high = (round(x / q) * q if math.isfinite(x) else x for x in (low, high))
        if abs(value / q - round(value / q)) > 1e-6:
            return True
    if support.get("int") and type(value) is not int:
        return True
    tolerance = 1e-9 * max(1.0, abs(value))
    return not low - tolerance <= value <= high + tolerance


def alike(theirs: list, ours: list) -> float:
    """p-value of the two samples coming from one distribution."""
    from scipy.stats import chi2_contingency, ks_2samp

    keys = sorted({value_key(v) for v in theirs + ours})
    if len(keys) == 1:
        return 1.0
    if len(keys) <= 50 or not all(isinstance(v, (int, float)) for v in theirs + ours):
        counts = [Counter(map(value_key, sample)) for sample in (theirs, ours)]
        return chi2_contingency([[c[k] for k in keys] for c in counts]).pvalue
    return ks_2samp(theirs, ours).pvalue


def grid_points(sweep: sweep_space.Sweep) -> list[tuple]:
    """The points local_sweep.py's grid sampler proposes, a trial each, as (name, value) tuples."""
    study = optuna.create_study(sampler=sweep_space.make_sampler(sweep))
    points = []
    for _ in range(sweep_space.grid_size(sweep)):
        trial = study.ask()
        points.append(tuple(sorted((p.name, value_key(p.sample(trial))) for p in sweep.params)))
    return sorted(points)


# --------------------------------------------------------------------------------------------------
# The tests


def test_the_readme_lists_each_deliberate_difference():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert [words for words in DELIBERATE if words not in readme] == []


@needs_engine
def test_every_generated_sweep_file_is_decided_and_searched_as_wandbs_engine_does(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    files, used = corpus(tmp_path)
    assert len(files) >= 300 and sorted(used) == MUTATIONS
    wandb = wandb_decisions(tmp_path, files)
    mismatches, spaces, grids = [], {}, []
    verdicts, kinds, methods = Counter(), Counter(), Counter()
    for path, decision in zip(files, wandb["files"], strict=True):
        config = yaml.safe_load(path.read_text())
        theirs = wandb_verdict(decision, config)
        ours, said, sweep = local_verdict(path)
        verdicts[theirs] += 1
        kinds.update(p["kind"] for p in decision["params"].values())
        methods[config.get("method") if isinstance(config, dict) else None] += 1
        why = decision["engine_error"] or decision["schema_error"]
        if ours == "refuse" and ("\n" in said or not said):
            mismatches.append(f"{path.name}: not one line: {said!r}")
        if theirs == "refuse" and ours != "refuse":
            mismatches.append(f"{path.name}: W&B refuses ({why}), local runs (notes {said})")
        elif theirs == "warn" and ours == "run" and not said:
            mismatches.append(f"{path.name}: W&B warns {decision['violations']}, local is silent")
        elif theirs == "clean" and ours == "refuse" and not excused(config, decision, said):
            mismatches.append(f"{path.name}: W&B runs it cleanly, local refuses: {said}")
        if theirs == "refuse" or ours == "refuse":
            continue
        if sweep.method in ("random", "bayes"):
            for param in sweep.params:
                if param.distribution is not None:
                    spec = config["parameters"][param.name]
                    key = json.dumps(spec, sort_keys=True, default=str)
                    spaces.setdefault(key, (param, decision["params"][param.name], path.name))
        elif sweep.method == "grid":
            grids.append((path.name, sweep, decision["grid"]))
    assert not mismatches, f"{len(mismatches)} of {len(files)} files decided unlike W&B:\n" + (
        "\n".join(mismatches)
    )
    # The corpus covers what it claims: each verdict often, every kind W&B draws, every method
    assert min(verdicts[verdict] for verdict in ("refuse", "warn", "clean")) > 30, verdicts
    assert set(kinds) >= {
        f"param_{kind}"
        for kind in (
            "categorical",
            "categorical_w_probabilities",
            "int_uniform",
            "uniform",
            "quniform",
            "loguniform",
            "loguniform_v2",
            "inv_loguniform",
            "inv_loguniform_v2",
            "qloguniform",
            "qloguniform_v2",
            "normal",
            "qnormal",
            "lognormal",
            "qlognormal",
            "beta",
            "qbeta",
            "single_value",
        )
    }, kinds
    assert set(methods) >= {"bayes", "random", "grid", "custom", None}

    assert len(spaces) > 40 and len(grids) > 10
    for seed, (key, (param, support, where)) in enumerate(sorted(spaces.items())):
        ours = local_draws(param, DRAWS, seed)
        stray = [v for v in ours if outside(v, support)]
        assert not stray, f"{where} {key}: drawn here outside W&B's support {support}: {stray[:5]}"
        p = alike(wandb["draws"][key], ours)
        assert p > ALPHA, f"{where} {param.name} {key}: W&B's draws and ours differ (p = {p:.2g})"
    for where, sweep, points in grids:
        theirs = sorted(
            tuple(sorted((k, value_key(v)) for k, v in point.items())) for point in points
        )
        assert grid_points(sweep) == theirs, f"{where}: not the points W&B's grid proposes"
