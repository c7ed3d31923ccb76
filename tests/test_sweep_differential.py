"""A sweep file means to local_sweep.py what it means to W&B, checked against W&B's own engine on a corpus.

CORPUS_SIZE sweep files are generated from a seed: every parameter kind W&B knows, nested parameters, every
method, with and without metric, early_terminate, run_cap and command, and mutations that users of W&B have
written (wrong types, missing and extra keys, typos, YAML scalars that are not text, bounds that overflow).
W&B's engine decides each (.ci/wandb_sweep_decisions.py, one process of the `sweeps` package in .venv-sweeps:
it pins numpy<2) and local_sweep.load_sweep decides each in this process, without training:

- W&B refuses (its schema check raises, or sweeps.next_run / stop_runs cannot propose a run): refused here, in one
  line. method custom is W&B's Optuna scheduler's (wandb's build_optuna_optimizer, asked for a run here).
- W&B's schema reports a violation but its engine runs: refused here, or run with at least one note (never
  silently).
- W&B is clean: run here, unless the file is one of the deliberate differences (DELIBERATE, listed in the README).

Where both run, the spaces are the same: every value drawn here lies in W&B's support, and for random and bayes
each parameter's draws and W&B's are alike by a two-sample test (chi-square for few values, else
Kolmogorov-Smirnov); a grid is the very list of points W&B's engine proposes. With SWEEPS_PYTHON set (CI) the
engine must be there: the test fails rather than skips.
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
import sweep_space
from sweep_space import SweepConfigError

SWEEPS_PYTHON = ROOT / os.environ.get("SWEEPS_PYTHON", ".venv-sweeps/bin/python")  # .ci/run sets it
CORPUS_SIZE, SEED = 360, 25
DRAWS = 600  # per distinct parameter spec, on each side
ALPHA = 1e-4  # a seeded test: a pass stays a pass; a real difference (q_uniform's ends, e^x) gives p << 1e-10
needs_engine = pytest.mark.skipif(
    not SWEEPS_PYTHON.exists() and "SWEEPS_PYTHON" not in os.environ,
    reason="W&B's sweep engine is not installed in .venv-sweeps: python3 -m venv .venv-sweeps && "
           ".venv-sweeps/bin/pip install sweeps (it pins numpy<2: not in .venv)")

# ----------------------------------------------------------------------------------------------------------------------
# The corpus

# Per trainer setting, specs part_2_cifar.py accepts: together every parameter kind W&B knows
FORMS = {
    "learning_rate": [{"distribution": "uniform", "min": 0.001, "max": 0.1}, {"min": 0.001, "max": 0.1},
                      {"distribution": "log_uniform_values", "min": 0.0001, "max": 0.1},
                      {"distribution": "log_uniform", "min": -9.2, "max": -2.3},
                      {"distribution": "inv_log_uniform_values", "min": 0.001, "max": 0.1},
                      {"distribution": "inv_log_uniform", "min": 2.3, "max": 6.9},
                      {"distribution": "q_log_uniform_values", "min": 0.001, "max": 0.1, "q": 0.001},
                      {"distribution": "log_normal", "mu": -4.6, "sigma": 0.5}, {"values": [0.01, 0.03, 0.1]}],
    "momentum": [{"distribution": "uniform", "min": 0.8, "max": 0.99}, {"distribution": "beta", "a": 8, "b": 2},
                 {"distribution": "normal", "mu": 0.9, "sigma": 0.02}, {"min": 0.5, "max": 0.9},
                 {"distribution": "q_uniform", "min": 0.8, "max": 0.95, "q": 0.05}],
    "batch_size": [{"values": [64, 128, 256]}, {"distribution": "categorical", "values": [64, 128]},
                   {"values": [64, 128, 256], "probabilities": [0.5, 0.3, 0.2]},
                   {"distribution": "categorical_w_probabilities", "values": [64, 128], "probabilities": [0.25, 0.75]},
                   {"distribution": "q_uniform", "min": 32, "max": 256, "q": 32},
                   {"distribution": "q_log_uniform_values", "min": 16, "max": 512, "q": 16},
                   {"value": 64}, {"distribution": "constant", "value": 128}],
    "num_filters_1": [{"min": 8, "max": 64}, {"distribution": "int_uniform", "min": 16, "max": 24},
                      {"distribution": "q_normal", "mu": 64, "sigma": 8, "q": 8},
                      {"distribution": "q_log_normal", "mu": 4, "sigma": 0.3, "q": 4},
                      {"distribution": "q_log_uniform", "min": 2.1, "max": 4.6, "q": 4}],
    "num_filters_2": [{"values": [32, 64, 96]}, {"distribution": "q_uniform", "min": 16, "max": 128},
                      {"distribution": "q_uniform", "min": 16, "max": 64, "q": 16}],
    "dropout_rate": [{"values": [0.0, 0.25, 0.5]}, {"distribution": "uniform", "min": 0.0, "max": 0.5},
                     {"distribution": "q_uniform", "min": 0.0, "max": 0.5, "q": 0.125},
                     {"distribution": "beta", "a": 2, "b": 5}],
    "epochs": [{"distribution": "q_uniform", "min": 30, "max": 50, "q": 5}, {"min": 1, "max": 3},
               {"distribution": "q_uniform", "min": 2, "max": 9}, {"value": 2}],
    "weight_decay": [{"distribution": "log_uniform_values", "min": 0.0001, "max": 0.01},
                     {"distribution": "q_log_uniform_values", "min": 0.0001, "max": 0.01, "q": 0.0001},
                     {"distribution": "q_beta", "a": 2, "b": 2, "q": 0.05}, {"distribution": "uniform", "min": 0.0,
                                                                           "max": 0.001}],
    "label_smoothing": [{"distribution": "uniform", "min": 0.0, "max": 0.2}, {"values": [0.0, 0.1]}],
    "warmup_epochs": [{"distribution": "q_uniform", "min": 0, "max": 3, "q": 0.5}, {"values": [0, 1, 2]}],
    "lr_schedule": [{"values": ["cosine", "constant"]}, {"value": "cosine"}],
    "seed": [{"min": 0, "max": 99}, {"values": [0, 1, 2, 3]}],
}
GRID_SETTINGS = ("batch_size", "num_filters_1", "num_filters_2", "dropout_rate", "epochs", "warmup_epochs",
                 "lr_schedule", "learning_rate")
METRICS = [{"name": "val_accuracy", "goal": "maximize"}, {"name": "val_loss"}, {"name": "train_loss", "target": 0.5},
           {"name": "best_val_accuracy", "goal": "maximize"}, {"name": "flops_per_image", "goal": "minimize"}]
HYPERBAND = [{"type": "hyperband", "max_iter": 27, "s": 2}, {"type": "hyperband", "min_iter": 2, "eta": 2},
             {"type": "hyperband", "min_iter": 3}, {"type": "hyperband", "max_iter": 36, "s": 2, "eta": 3,
                                                    "strict": False}]
COMMANDS = [["${env}", "${interpreter}", "${program}", "${args}"],
            ["${env}", "${interpreter}", "${program}", "--val-size=200", "${args}"],
            ["${env}", "python", "${program}", "${args_no_equals}"],
            ["/usr/bin/env", "/opt/venv/bin/python", "${program}", "--epochs=3", "${args}"],
            ["${env}", "${interpreter}", "${program}", "--data-dir=/tmp/cifar", "--no-log-model", "${args}"]]


EVERY_FORM = [(name, form) for name, forms in FORMS.items() for form in forms]


def base_config(rng: random.Random, i: int) -> dict:
    """A sweep file as a user who read W&B's documentation writes it; the i-th has the i-th of EVERY_FORM."""
    method = rng.choice(["bayes", "bayes", "random", "random", "grid", "custom"])
    names = rng.sample(GRID_SETTINGS if method == "grid" else list(FORMS), rng.randint(1, 3 if method == "grid"
                                                                                      else 5))
    forms = {name: [f for f in FORMS[name] if method != "grid" or sweep_space.parameter_kind(name, f) in
                    sweep_space.GRID_KINDS] for name in names}
    config = {"method": method, "parameters": {name: copy.deepcopy(rng.choice(forms[name])) for name in names}}
    name, form = EVERY_FORM[i % len(EVERY_FORM)]
    if method not in ("grid", "custom"):  # where W&B's engine draws from every kind
        config["parameters"][name] = copy.deepcopy(form)
    if rng.random() < 0.8:
        config["program"] = "part_2_cifar.py"
    if method == "custom":
        config["scheduler"] = {"engine": "optuna"}
        if rng.random() < 0.5:
            config["metrics"] = [{"name": "best_val_accuracy", "goal": "maximize"}, {"name": "flops_per_image"}]
        else:
            config["metric"] = rng.choice(METRICS[1:])
    elif rng.random() < (0.9 if method == "bayes" else 0.6):
        config["metric"] = copy.deepcopy(rng.choice(METRICS))
        if rng.random() < 0.35:
            config["early_terminate"] = copy.deepcopy(rng.choice(HYPERBAND))
    for key, share, values in (("run_cap", 0.25, range(1, 21)), ("command", 0.25, COMMANDS),
                               ("name", 0.4, ["cifar-lr", "sweep 1", "cifar/lr-sweep"]),
                               ("description", 0.2, ["learning rate and width"]), ("project", 0.1, ["cifar"])):
        if rng.random() < share:
            config[key] = copy.deepcopy(rng.choice(values))
    return config


def some_param(config: dict, rng: random.Random) -> str:
    return rng.choice(sorted(config.get("parameters") or {"learning_rate": None}))


def set_param(config: dict, rng: random.Random, spec: dict, name: str | None = None) -> None:
    parameters = config.setdefault("parameters", {}) if isinstance(config.get("parameters"), dict) else {}
    config["parameters"] = parameters
    parameters[name or some_param(config, rng)] = spec


def rename_key(mapping: dict, old: str, new: str) -> None:
    if old in mapping:
        mapping[new] = mapping.pop(old)


def typo_in_spec(config: dict, rng: random.Random) -> None:
    name = some_param(config, rng)
    spec = config["parameters"].get(name) or {"distribution": "uniform", "min": 0.01, "max": 0.1}
    spec = dict(spec)
    for old, new in (("distribution", "distribuion"), ("values", "valeus"), ("min", "minimum")):
        if old in spec:
            rename_key(spec, old, new)
            break
    else:
        spec["distribuion"] = "uniform"
    config["parameters"][name] = spec


def yaml_scalar(config: dict, rng: random.Random) -> None:
    key, value = rng.choice([("name", 2024), ("description", datetime.date(2024, 6, 1)), ("name", True),
                             ("project", 12), ("entity", 3.5), ("description", datetime.datetime(2024, 6, 1, 12))])
    config[key] = value


def command_mutation(config: dict, rng: random.Random) -> None:
    config["command"] = rng.choice([
        "python part_2_cifar.py", ["${env}", "${interpreter}", "${program}", "--unknown-option=1", "${args}"],
        ["${env}", "${interpreter}", "${program}", "${args_json}"], ["${env}", "${interpreter}", "${program}",
                                                                     "${arg}"],
        ["python", "train.py", "${args}"], ["${env}", "${interpreter}", "${program}", "--resume=runs/x", "${args}"],
        ["${env}", "${interpreter}", "${program}", "--epochs=abc", "${args}"],
        ["${env}", "${interpreter}", "${program}", "--device=gpu", "${args}"], []])


MUTATIONS = {  # what users of W&B have written, each a change to a generated file
    "categorical with value": lambda c, r: set_param(c, r, {"distribution": "categorical", "value": 64}, "batch_size"),
    "constant with values": lambda c, r: set_param(c, r, {"distribution": "constant", "values": [64]}, "batch_size"),
    "typo in a parameter key": typo_in_spec,
    "typo in a distribution": lambda c, r: set_param(c, r, {"distribution": r.choice(
        ["log_uniform_value", "categoricl", "Uniform", "gaussian"]), "min": 0.001, "max": 0.1}),
    "min as text": lambda c, r: set_param(c, r, {"distribution": "uniform", "min": "0.001", "max": 0.1},
                                          "learning_rate"),
    "1e-05 in JSON": lambda c, r: set_param(c, r, {"distribution": "log_uniform_values", "min": 0.00001,
                                                   "max": 0.01}, "weight_decay"),
    "no max": lambda c, r: set_param(c, r, {"distribution": "uniform", "min": 0.001}, "learning_rate"),
    "extra key in a parameter": lambda c, r: set_param(c, r, {"values": [64, 128], "default": 64}, "batch_size"),
    "values not a list": lambda c, r: set_param(c, r, {"values": 64}, "batch_size"),
    "no values": lambda c, r: set_param(c, r, {"values": []}, "batch_size"),
    "min not below max": lambda c, r: set_param(c, r, r.choice([{"min": 0.1, "max": 0.01}, {"min": 3, "max": 3}]),
                                                "learning_rate"),
    "negative sigma": lambda c, r: set_param(c, r, {"distribution": "normal", "mu": 0.9, "sigma": -0.1}, "momentum"),
    "zero sigma": lambda c, r: set_param(c, r, {"distribution": "normal", "mu": 0.9, "sigma": 0}, "momentum"),
    "q not positive": lambda c, r: set_param(c, r, {"distribution": "q_uniform", "min": 30, "max": 50, "q": 0},
                                             "epochs"),
    "probabilities off": lambda c, r: set_param(c, r, r.choice([
        {"values": [64, 128], "probabilities": [0.5, 0.2]}, {"values": [64, 128], "probabilities": [1.0]}]),
        "batch_size"),
    "log_uniform with values for bounds": lambda c, r: set_param(c, r, r.choice([
        ("weight_decay", {"distribution": "log_uniform", "min": 0.0001, "max": 1000}),
        ("learning_rate", {"distribution": "log_uniform", "min": 0.0001, "max": 0.1})])[1]),
    "uniform overflow": lambda c, r: set_param(c, r, {"min": -1e308, "max": 1e308}, "weight_decay"),
    "log_normal overflow": lambda c, r: set_param(c, r, {"distribution": "log_normal", "mu": 800, "sigma": 1},
                                                  "weight_decay"),
    "q_log_uniform overflow": lambda c, r: set_param(c, r, {"distribution": "q_log_uniform", "min": 0, "max": 800},
                                                     "batch_size"),
    "eta overflow": lambda c, r: c.update(early_terminate={"type": "hyperband", "min_iter": 1, "eta": 1e300},
                                          metric={"name": "val_loss"}),
    "no metric": lambda c, r: (c.pop("metric", None), c.pop("metrics", None)),
    "metric as text": lambda c, r: c.update(metric="val_accuracy"),
    "metric without name": lambda c, r: c.update(metric={"goal": "maximize"}),
    "goal typo": lambda c, r: c.update(metric={"name": "val_accuracy", "goal": "maximise"}),
    "extra key in metric": lambda c, r: c.update(metric={"name": "val_loss", "mode": "min"}),
    "metric the trainer never logs": lambda c, r: c.update(metric={"name": r.choice(["accuracy", "test_accuracy",
                                                                                     "loss"])}),
    "impute": lambda c, r: c.update(metric={"name": "val_loss", "impute": r.choice(["best", "worst", "median"])}),
    "typo in a top-level key": lambda c, r: rename_key(c, *r.choice([("metric", "metirc"), ("parameters",
                                                                      "paramters"), ("early_terminate",
                                                                      "early_terminat"), ("method", "methods")])),
    "extra top-level key": lambda c, r: c.update(sweep_id="abc123"),
    "no method": lambda c, r: c.pop("method", None),
    "method typo": lambda c, r: c.update(method=r.choice(["bayesian", "Grid", "hyperopt"])),
    "run_cap not a count": lambda c, r: c.update(run_cap=r.choice([0, -1, "2", 2.5, True, 2.0])),
    "run_cap": lambda c, r: c.update(run_cap=r.randint(1, 4)),
    "command": command_mutation,
    "YAML scalar in a text field": yaml_scalar,
    "name with a slash": lambda c, r: c.update(name="cifar/lr-sweep"),
    "nested parameters": lambda c, r: set_param(c, r, {"parameters": {"lr": {"value": 0.1}}}, "optimizer"),
    "parameter not an object": lambda c, r: set_param(c, r, 64, "batch_size"),
    "parameter not a setting": lambda c, r: set_param(c, r, {"values": [0.1]}, "lr"),
    "val_size swept": lambda c, r: set_param(c, r, {"values": [100, 200]}, "val_size"),
    "grid over a range": lambda c, r: (c.update(method="grid"), set_param(c, r, {"min": 0.001, "max": 0.1},
                                                                         "learning_rate")),
    "grid with duplicates": lambda c, r: (c.update(method="grid"), set_param(c, r, {"values": [64, 64.0, 128]},
                                                                            "batch_size")),
    "no parameters": lambda c, r: c.update(parameters={}),
    "early_terminate broken": lambda c, r: c.update(metric={"name": "val_loss"}, early_terminate=r.choice([
        {"type": "hyperband", "max_iter": 27}, {"type": "median"}, {"type": "hyperband", "min_iter": 2, "eta": 1},
        {"type": "hyperband", "max_iter": 27, "s": 2.0}, {"type": "hyperband", "min_iter": 2, "strict": "yes"}])),
    "early_terminate without metric": lambda c, r: (c.pop("metric", None), c.update(
        early_terminate={"type": "hyperband", "min_iter": 2})),
    "scheduler": lambda c, r: c.update(scheduler=r.choice([{"engine": "ax"}, {"engine": "optuna", "sampler": "tpe"},
                                                           {"engine": "wandb"}, {"engine": "optuna"}])),
    "custom with a normal": lambda c, r: (c.update(method="custom", scheduler={"engine": "optuna"}, metric={
        "name": "val_loss"}), c.pop("early_terminate", None), set_param(c, r, {"distribution": "normal", "mu": 0.9,
                                                                              "sigma": 0.02}, "momentum")),
    "metrics of one": lambda c, r: (c.pop("metric", None), c.update(metrics=[{"name": "best_val_accuracy"}])),
    "another program": lambda c, r: c.update(program="train.py"),
    "controller": lambda c, r: c.update(controller=r.choice([{"type": "local"}, {"type": "remote"}, "local"])),
    "launch job": lambda c, r: c.update(job="entity/project/job:latest"),
}


def corpus(folder: Path) -> tuple[list[Path], Counter]:
    """CORPUS_SIZE generated sweep files in `folder` (JSON, or YAML where a value is not JSON), and how often each
    mutation was applied."""
    rng, files, used = random.Random(SEED), [], Counter()
    for i in range(CORPUS_SIZE):
        config = base_config(rng, i)
        for name in rng.sample(sorted(MUTATIONS), rng.choice([0, 0, 1, 1, 1, 2])):
            MUTATIONS[name](config, rng)
            used[name] += 1
        as_yaml = any(isinstance(v, (datetime.date, bool, int, float)) for v in config.values()) or rng.random() < .2
        path = folder / f"sweep-{i:03d}.{'yaml' if as_yaml else 'json'}"
        path.write_text(yaml.safe_dump(config, sort_keys=False) if as_yaml else json.dumps(config, indent=1))
        files.append(path)
    return files, used


# ----------------------------------------------------------------------------------------------------------------------
# The two decisions


def wandb_decisions(folder: Path, files: list[Path]) -> dict:
    assert SWEEPS_PYTHON.exists(), f"SWEEPS_PYTHON={SWEEPS_PYTHON} does not exist"
    request = folder / "request.json"
    request.write_text(json.dumps({"files": [str(f) for f in files], "draws": DRAWS, "seed": SEED}))
    result = subprocess.run([str(SWEEPS_PYTHON), str(ROOT / ".ci" / "wandb_sweep_decisions.py"), str(request)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def wandb_custom_error(config: dict) -> str | None:
    """Why W&B's Optuna scheduler (method custom, wandb's own code) cannot propose a run, or None."""
    from wandb.sdk.sweeps.scheduler.optuna import build_optuna_optimizer
    from wandb.sdk.sweeps.sweep_info import SweepInfo

    try:
        optimizer = build_optuna_optimizer(SweepInfo(id="x", name="x", entity="", project="", config=config,
                                                     controller_run_name=""))
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
    if config.get("method") == "custom" and "method" in config:
        error = wandb_custom_error(config)
    else:
        error = decision["engine_error"]
    return "refuse" if error else "warn" if decision["violations"] else "clean"


def supports_refused_by_trainer(decision: dict) -> bool:
    """W&B would propose values part_2_cifar.py refuses (every such run fails under W&B; refused here first)."""
    for name, support in decision["params"].items():
        values = support.get("values") or [support["low"], support["high"]]
        for value in values:
            try:
                p2.validate_config({name: value})
            except (ValueError, TypeError):
                return True
    return False


def params(config: dict) -> dict:
    return config.get("parameters") if isinstance(config.get("parameters"), dict) else {}


def command_the_trainer_cannot_run(config: dict) -> bool:
    command = config.get("command")
    return isinstance(command, list) and bool(command) and (
        not any(str(c) == "${program}" or str(c).endswith("part_2_cifar.py") for c in command)
        or any(str(c).startswith("${") and str(c) not in local_sweep.ARGS_MACROS + local_sweep.LAUNCHER
               for c in command[command.index("${program}") + 1:] if "${program}" in command)
        or any(str(c).split("=")[0] in ("--unknown-option", "--resume") or c in ("--epochs=abc", "--device=gpu")
               for c in command))


DELIBERATE = {  # what W&B accepts and this program refuses on purpose (README, "Without W&B")
    "a parameter that is not a part_2_cifar.py setting": lambda c, d: any(n not in p2.DEFAULTS for n in params(c)),
    "val_size swept": lambda c, d: "val_size" in params(c),
    "nested parameters": lambda c, d: any(isinstance(s, dict) and "parameters" in s for s in params(c).values()),
    "a value part_2_cifar.py refuses": lambda c, d: supports_refused_by_trainer(d),
    "another program": lambda c, d: Path(str(c.get("program", "part_2_cifar.py"))).name != "part_2_cifar.py",
    "a W&B Launch job": lambda c, d: "job" in c or "image_uri" in c,
    "a metric part_2_cifar.py does not write": lambda c, d: isinstance(c.get("metric"), dict) and c["metric"].get(
        "name") not in sweep_space.HISTORY_METRICS + sweep_space.SUMMARY_METRICS,
    "a command whose runs part_2_cifar.py refuses": lambda c, d: command_the_trainer_cannot_run(c),
    "scheduler engine ax": lambda c, d: isinstance(c.get("scheduler"), dict) and c["scheduler"].get("engine") == "ax",
    "the method custom metric val_accuracy (a {max: x} summary)": lambda c, d: c.get("method") == "custom" and any(
        isinstance(m, dict) and m.get("name") == "val_accuracy" for m in [c.get("metric"), *c.get("metrics", [])]),
}


def local_verdict(path: Path) -> tuple[str, str | list[str], sweep_space.Sweep | None]:
    """("refuse", the line, None) or ("run", the notes, the sweep) of local_sweep.py on one file."""
    try:
        sweep = local_sweep.load_sweep(path)
    except SweepConfigError as e:
        return "refuse", str(e), None
    return "run", list(sweep.notes), sweep


# ----------------------------------------------------------------------------------------------------------------------
# The spaces


def value_key(value: object) -> str:
    return json.dumps(int(value) if isinstance(value, float) and value.is_integer() else value, default=str)


def local_draws(param: sweep_space.Param, n: int, seed: int) -> list:
    """n values of one parameter, drawn by Optuna's RandomSampler through the translation, as a trial draws."""
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
    if len(keys) <= 50 or not all(isinstance(v, (int, float)) for v in theirs + ours):
        counts = [Counter(map(value_key, sample)) for sample in (theirs, ours)]
        if len(keys) == 1:
            return 1.0
        return chi2_contingency([[c[k] for k in keys] for c in counts]).pvalue
    return ks_2samp(theirs, ours).pvalue


def grid_points(sweep: sweep_space.Sweep) -> list[tuple]:
    """The points local_sweep.py's grid sampler proposes, one trial each, as sorted (name, value key) tuples."""
    study = optuna.create_study(sampler=sweep_space.make_sampler(sweep))
    points = []
    for _ in range(sweep_space.grid_size(sweep)):
        trial = study.ask()
        points.append(tuple(sorted((p.name, value_key(p.sample(trial))) for p in sweep.params)))
    return sorted(points)


# ----------------------------------------------------------------------------------------------------------------------
# The test


@needs_engine
def test_every_generated_sweep_file_is_decided_and_searched_as_wandbs_engine_does(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    files, used = corpus(tmp_path)
    assert len(files) >= 300 and set(used) == set(MUTATIONS), sorted(set(MUTATIONS) - set(used))
    wandb = wandb_decisions(tmp_path, files)
    mismatches, verdicts, kinds, methods = [], Counter(), Counter(), Counter()
    spaces, grids = {}, []
    for path, decision in zip(files, wandb["files"], strict=True):
        config = yaml.safe_load(path.read_text())
        theirs = wandb_verdict(decision, config)
        ours, said, sweep = local_verdict(path)
        verdicts[theirs, ours] += 1
        kinds.update(p["kind"] for p in decision["params"].values())
        methods[config.get("method") if isinstance(config, dict) else None] += 1
        excuse = [why for why, holds in DELIBERATE.items() if isinstance(config, dict) and holds(config, decision)]
        if ours == "refuse" and ("\n" in said or not said):
            mismatches.append(f"{path.name}: not one line: {said!r}")
        if theirs == "refuse" and ours != "refuse":
            mismatches.append(f"{path.name}: W&B refuses ({decision['engine_error'] or decision['schema_error']}), "
                              f"local runs (notes {said})")
        elif theirs == "warn" and ours == "run" and not said:
            mismatches.append(f"{path.name}: W&B warns {decision['violations']}, local runs silently")
        elif theirs == "clean" and ours == "refuse" and not excuse:
            mismatches.append(f"{path.name}: W&B runs it cleanly, local refuses: {said}")
        if theirs != "refuse" and ours == "run":
            if sweep.method in ("random", "bayes"):
                for param in sweep.params:
                    if param.distribution is not None:
                        key = json.dumps(config["parameters"][param.name], sort_keys=True, default=str)
                        spaces.setdefault(key, (param, decision["params"][param.name], path.name))
            elif sweep.method == "grid":
                grids.append((path.name, sweep, decision["grid"]))
    assert not mismatches, f"{len(mismatches)} of {len(files)} files decided unlike W&B:\n" + "\n".join(mismatches)
    # The corpus covers what it claims: each verdict often, every kind W&B draws from, every method
    assert min(sum(n for (w, _), n in verdicts.items() if w == verdict) for verdict in ("refuse", "warn", "clean")) > 30
    assert set(kinds) >= {f"param_{k}" for k in ("categorical", "categorical_w_probabilities", "int_uniform",
                                                   "uniform", "quniform", "loguniform", "loguniform_v2",
                                                   "inv_loguniform", "inv_loguniform_v2", "qloguniform",
                                                   "qloguniform_v2", "normal", "qnormal", "lognormal", "qlognormal",
                                                   "beta", "qbeta", "single_value")}, kinds
    assert set(methods) >= {"bayes", "random", "grid", "custom", None}

    for seed, (key, (param, support, where)) in enumerate(sorted(spaces.items(), key=lambda item: item[0])):
        ours = local_draws(param, DRAWS, seed)
        stray = [v for v in ours if outside(v, support)]
        assert not stray, f"{where} {param.name} {key}: drawn here outside W&B's support {support}: {stray[:5]}"
        p = alike(wandb["draws"][key], ours)
        assert p > ALPHA, f"{where} {param.name} {key}: W&B's draws and ours differ (p = {p:.2g})"
    assert len(spaces) > 40
    for where, sweep, points in grids:
        theirs = sorted(tuple(sorted((k, value_key(v)) for k, v in point.items())) for point in points)
        assert grid_points(sweep) == theirs, f"{where}: the grid differs from the points W&B's engine proposes"
    assert len(grids) > 10
