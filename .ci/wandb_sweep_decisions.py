"""What W&B's own sweep engine (the `sweeps` package) makes of sweep files:
tests/test_sweep_differential.py compares local_sweep.py's decision on each file with this one.

    .venv-sweeps/bin/python .ci/wandb_sweep_decisions.py request.json > decisions.json

request.json: {"files": [paths], "draws": n, "seed": s}. Each file is read as `wandb sweep` reads it
(wandb.sdk.launch.sweeps.utils.load_sweep_config: yaml.safe_load). Prints {"files": [one object per
file], "draws": {spec: values}}, a file's object holding:

- "violations": what W&B's schema reports (`wandb sweep` prints them as warnings and stores the
  sweep), or "schema_error": the check itself raised (W&B refuses the file);
- "engine_error": why W&B's engine cannot propose a run, or null: `sweeps.next_run` raised; with
  early_terminate, `sweeps.stop_runs` raised on a run that logged the metric once; or a value some
  parameter can take is not a finite number (an overflow to inf, or NaN: no run config holds it).
  method custom is W&B's Optuna scheduler's affair, not this engine's: its engine_error says so;
- "params": per top-level parameter, its W&B kind and support: "values" (what it can take), or
  "low" and "high" (the ends, before rounding to q), "q" and "int" (the values are ints);
- "grid" (method grid): every run the engine proposes until it proposes none, as {name: value}.

"draws" holds, for random and bayes, n values of each parameter from W&B's own sampler
(HyperParameter.ppf of a uniform draw, as HyperParameter.sample), keyed by the parameter's spec as
json.dumps(spec, sort_keys=True, default=str).

`sweeps` pins numpy<2, so this runs in an environment of its own.
"""

import json
import math
import sys
import warnings

# pydantic v2 warns about the package's v1-style settings, numpy of the overflows this looks for
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import yaml  # noqa: E402
from sweeps import next_run, next_runs, stop_runs  # noqa: E402
from sweeps.config import schema_violations_from_proposed_config  # noqa: E402
from sweeps.params import HyperParameter, HyperParameterSet  # noqa: E402
from sweeps.run import RunState, SweepRun  # noqa: E402

GRID_LIMIT = 2000  # proposals asked of a grid before giving up on its end
QUANTILES = (1e-6, 0.5, 1 - 1e-6)  # where a parameter's values are checked for overflow (+-4.75 sd)
DISCRETE = (HyperParameter.CONSTANT, HyperParameter.CATEGORICAL, HyperParameter.CATEGORICAL_PROB)


def unrounded(param: HyperParameter) -> HyperParameter:
    """The same parameter with a float q, so that ppf gives floats (an int q casts inf to a huge
    negative int)."""
    if "q" not in param.config:
        return param
    return HyperParameter(param.name, dict(param.config, q=float(param.config["q"])))


def overflow(param: HyperParameter) -> str | None:
    if param.type in DISCRETE:
        return None
    values = [float(unrounded(param).ppf(q)) for q in QUANTILES]
    if all(math.isfinite(v) for v in values):
        return None
    return f"parameter {param.name} can take {values}: not finite"


def support(param: HyperParameter) -> dict:
    if param.type == HyperParameter.CONSTANT:
        return {"values": [param.config["value"]]}
    if param.type in DISCRETE:
        return {"values": param.config["values"]}
    if param.type == HyperParameter.INT_UNIFORM:
        return {"low": param.config["min"], "high": param.config["max"], "q": 1, "int": True}
    ends = unrounded(param).ppf(np.array([0.0, 1.0])).tolist()
    q = param.config.get("q")
    return {"low": ends[0], "high": ends[1], "q": q, "int": isinstance(q, int)}


def draws(param: HyperParameter, uniform: np.ndarray) -> list:
    """W&B's values at these quantiles, as HyperParameter.sample draws one (its vectorised
    categorical with probabilities is not the scalar one: each is drawn alone there)."""
    if param.type in (HyperParameter.CONSTANT, HyperParameter.CATEGORICAL_PROB):
        return [param.ppf(float(u)) for u in uniform]
    values = param.ppf(uniform)
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def grid(config: dict) -> list[dict]:
    """Every run of the grid, as the engine proposes them one after the other (next_runs: each
    proposal counts as a run when it picks the next), until it proposes none."""
    runs = next_runs(config, [], n=GRID_LIMIT)
    return [
        {name: spec["value"] for name, spec in run.config.items()}
        for run in runs
        if run is not None
    ]


def engine_error(config: dict) -> str | None:
    if config.get("method") == "custom":
        return "method custom: W&B's Optuna scheduler proposes the runs, not this engine"
    try:
        run = next_run(config, [])
        if "early_terminate" in config:
            metric = config["metric"]["name"] if isinstance(config.get("metric"), dict) else None
            stop_runs(
                config,
                [
                    SweepRun(
                        name="a", state=RunState.running, config=run.config, history=[{metric: 1.0}]
                    )
                ],
            )
        params = HyperParameterSet.from_config(config["parameters"])
    except Exception as e:  # noqa: BLE001 (whatever the engine raises, it proposes no run)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return next((why for why in map(overflow, params) if why), None)


def decide(path: str, n: int, rng: np.random.Generator, seen: dict) -> dict:
    with open(path) as f:
        config = yaml.safe_load(f)
    out = {
        "file": path,
        "violations": None,
        "schema_error": None,
        "engine_error": None,
        "params": {},
    }
    try:
        out["violations"] = schema_violations_from_proposed_config(config)
    except Exception as e:  # noqa: BLE001
        out["schema_error"] = f"{type(e).__name__}: {e}"
    if not isinstance(config, dict) or not config:
        out["engine_error"] = "not a sweep config (an empty file, or not a mapping)"
        return out
    out["engine_error"] = engine_error(config)
    custom = config.get("method") == "custom"  # its parameters' supports are wanted too
    if out["engine_error"] and not custom:
        return out
    parameters = config.get("parameters")
    for name, spec in parameters.items() if isinstance(parameters, dict) else ():
        try:
            param = HyperParameter(name, spec)
            out["params"][name] = {"kind": param.type, **support(param)}
        except Exception:  # noqa: BLE001 (nested parameters, or what this engine cannot read)
            continue
        key = json.dumps(spec, sort_keys=True, default=str)
        if config["method"] in ("random", "bayes") and key not in seen:
            seen[key] = draws(param, rng.uniform(size=n))
    if config["method"] == "grid":
        out["grid"] = grid(config)
    return out


def main() -> int:
    with open(sys.argv[1]) as f:
        request = json.load(f)
    rng, seen = np.random.default_rng(request["seed"]), {}
    decisions = [decide(path, request["draws"], rng, seen) for path in request["files"]]
    json.dump({"files": decisions, "draws": seen}, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
