"""W&B's own Hyperband decisions on replayed learning curves: `hyperband_stop_runs` from the
`sweeps` package (W&B's open-source sweep engine). tests/test_hyperband.py compares them with
local_sweep.py's pruner.

    .venv-sweeps/bin/python .ci/wandb_hyperband.py cases.json > decisions.json

cases.json: a list of cases, each {"config": a W&B sweep config, "events": [...]}. An event {"run":
name, "value": v, "running": [names]} appends the row {metric: v} to that run's history (a run is
created by its first event), then asks W&B which runs to stop, the runs named in "running" being the
running ones and the others finished. Prints a list with, per case, {"bands": W&B's bands, "stops":
one sorted list of run names per event}. Exit 2 if a config breaks W&B's schema. `sweeps` pins
numpy<2, so this runs in an environment of its own.
"""

import json
import sys
import warnings

warnings.filterwarnings("ignore")  # pydantic v2 warns about the package's v1-style settings

from sweeps.config import schema_violations_from_proposed_config  # noqa: E402
from sweeps.hyperband_stopping import hyperband_stop_runs  # noqa: E402
from sweeps.run import RunState, SweepRun  # noqa: E402


def decide(case: dict) -> dict:
    config, runs, stops = case["config"], {}, []
    metric = config["metric"]["name"]
    for event in case["events"]:
        run = runs.setdefault(event["run"], SweepRun(name=event["run"], history=[]))
        run.history.append({metric: event["value"]})
        for name, each in runs.items():
            each.state = RunState.running if name in event["running"] else RunState.finished
        stops.append(sorted(run.name for run in hyperband_stop_runs(list(runs.values()), config)))
    # W&B leaves its bands in the run's info
    probe = SweepRun(name="probe", state=RunState.running, history=[])
    hyperband_stop_runs([probe], config)
    return {"bands": probe.early_terminate_info["bands"], "stops": stops}


def main() -> int:
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    for case in cases:
        violations = schema_violations_from_proposed_config(case["config"])
        if violations:
            print(
                f"{case['config']['early_terminate']} breaks W&B's sweep schema: {violations[0]}",
                file=sys.stderr,
            )
            return 2
    json.dump([decide(case) for case in cases], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
