"""Which checkpoint to export, the one answer for every command (choose_checkpoint): what
select_model.py chose (selection.json, written and read here), else the single run with the
highest best_val_accuracy under a runs folder, among the runs of one data set.

    <runs>/selection.json  SELECTION_FILE: what select_model.py chose among the runs under <runs>
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from cifarkit.core.cli import DAMAGED_TEXT, NotARegularFile, read_regular_text, write_json_atomic
from cifarkit.core.run_files import (
    BEST_CHECKPOINT,
    CheckpointError,
    data_label,
    distinct_runs,
    finite_number,
    load_summary,
    of_one_data_set,
    read_summary,
    summaries_under,
    trained_on,
)

SELECTION_FILE = "selection.json"


def exportable(runs: Iterable[tuple[Path, dict | None]]) -> list[tuple[Path, dict]]:
    """The (run folder, summary) pairs with a finite best_val_accuracy and a best.pt to export."""
    return [
        (run_dir, summary)
        for run_dir, summary in runs
        if finite_number((summary or {}).get("best_val_accuracy"))
        and (run_dir / BEST_CHECKPOINT).is_file()
    ]


def best_run(runs: Iterable[tuple[Path, dict | None]]) -> tuple[Path, float] | None:
    """Of (run folder, summary) pairs, the run with the highest best_val_accuracy that has a best.pt
    to export.

    Returns (its folder, that accuracy), the first of a tie; None if no run has both.
    """
    scored = [(summary["best_val_accuracy"], run_dir) for run_dir, summary in exportable(runs)]
    if not scored:
        return None
    accuracy, run_dir = max(scored, key=lambda s: s[0])
    return run_dir, accuracy


def save_selection(selection: dict, runs_dir: Path) -> Path:
    """Write select_model.py's choice to <runs_dir>/selection.json; return its path.

    `selection`: {"configs": [config reports, the chosen first], "best": its best seed's folder,
    relative}.
    """
    path = Path(runs_dir) / SELECTION_FILE
    write_json_atomic(selection, path)
    return path


def find_selection(runs_dir: Path) -> Path | None:
    """RUNS_DIR/selection.json, else the one selection.json at any depth below; None if there is
    none."""
    if (runs_dir / SELECTION_FILE).is_file():
        return runs_dir / SELECTION_FILE
    found = sorted(runs_dir.rglob(SELECTION_FILE))
    if len(found) > 1:
        raise CheckpointError(
            f"{len(found)} selection.json files under {runs_dir} ({', '.join(map(str, found))}): "
            "pass --runs-dir the folder of the one to export"
        )
    return found[0] if found else None


def read_selection(path: Path) -> dict:
    """select_model.py's selection.json, checked for what choosing a checkpoint reads;
    CheckpointError if not."""
    try:
        selection = json.loads(read_regular_text(path))
    except (OSError, NotARegularFile, *DAMAGED_TEXT) as e:
        raise CheckpointError(
            f"{path} is unreadable ({type(e).__name__}): rerun select_model.py, "
            "or pass --checkpoint PATH"
        ) from None
    not_selection = f"{path} is not a select_model.py selection"
    # best null: no seed of the chosen config has a best.pt (select_model.py writes that)
    if not (
        isinstance(selection, dict)
        and isinstance(selection.get("configs"), list)
        and selection["configs"]
        and (isinstance(selection.get("best"), str) or selection.get("best", "") is None)
    ):
        raise CheckpointError(
            f'{not_selection}: it needs {{"configs": [...], "best": "<run folder>"}}'
        )
    for i, config in enumerate(selection["configs"]):
        if not (
            isinstance(config, dict)
            and finite_number(config.get("val_accuracy_mean"))
            and 0 <= config["val_accuracy_mean"] <= 100
            and finite_number(config.get("flops_per_image"))
            and config["flops_per_image"] > 0
            and isinstance(config.get("pareto"), bool)
            and isinstance(config.get("runs"), list)
            and config["runs"]
            and all(isinstance(run, str) for run in config["runs"])
        ):
            raise CheckpointError(
                f"{not_selection}: configs[{i}] needs val_accuracy_mean in [0, 100], "
                "flops_per_image > 0, pareto true/false and a list of run folders in runs"
            )
    return selection


def best_seed(config: dict, root: Path) -> Path | None:
    """The folder of a selection config's seed with the highest best_val_accuracy and a best.pt to
    export.

    Its `runs` are relative to root, or absolute; ties: the first. None if no seed has both.
    """
    found = best_run((root / run, read_summary(root / run)) for run in config["runs"])
    return found[0] if found else None


def cheapest_within(configs: list[dict], points: float) -> dict:
    """The config on the Pareto front with the lowest flops_per_image whose val_accuracy_mean is
    within `points` of the best mean (ties: the higher mean). The best config is on the front, so
    there is always one."""
    best_mean = max(config["val_accuracy_mean"] for config in configs)
    near = [c for c in configs if c["pareto"] and c["val_accuracy_mean"] >= best_mean - points]
    if not near:
        raise CheckpointError(
            f"no config on the Pareto front is within {points} points of the best mean "
            f"{best_mean:.2f}: the selection marks none of its best configs pareto"
        )
    return min(near, key=lambda c: (c["flops_per_image"], -c["val_accuracy_mean"]))


def choose_checkpoint(
    spec: str, runs_dir: Path, within: float | None = None, data: Callable[[], dict] | None = None
) -> Path:
    """`best`, a run folder or a checkpoint file -> the checkpoint file; for `best`, print how it
    was chosen.

    `best` takes what select_model.py chose (selection.json under `runs_dir`: its `best`, or with
    `within`, the cheapest config on the front within that many points of the best mean, at its best
    seed); without a selection, the single run with the highest best_val_accuracy at any depth under
    `runs_dir`. `data()` gives the data identity of the images the export is checked on: the single
    run is chosen among the runs of those, and a selection's choice must be one (None: no check). It
    is called only once there is a run to check: `python trt_export.py` before any training loads no
    data. Raises CheckpointError, one line, when there is nothing to choose, when the runs span
    several data sets, or when the selection chose a run of other images.
    """
    if spec != "best":
        path = Path(spec)
        return path / BEST_CHECKPOINT if path.is_dir() else path
    selection_path = find_selection(runs_dir)
    if selection_path is None:
        if within is not None:
            raise CheckpointError(
                f"--within needs a selection.json under {runs_dir}: run select_model.py {runs_dir} "
                "first"
            )
        return best_single_run(runs_dir, data) / BEST_CHECKPOINT
    selection, root = read_selection(selection_path), selection_path.parent
    if within is None:
        if selection["best"] is None:
            raise CheckpointError(
                f"{selection_path} chose no run: no seed of its best config has a best.pt (each "
                "diverged before any epoch finished); pass --within POINTS, or --checkpoint PATH"
            )
        check_chosen_data(root / selection["best"], data, selection_path)
        print(f"chosen by select_model.py ({selection_path}): {selection['best']}", flush=True)
        return root / selection["best"] / BEST_CHECKPOINT
    config = cheapest_within(selection["configs"], within)
    best_mean = max(c["val_accuracy_mean"] for c in selection["configs"])
    seed_dir = best_seed(config, root)
    if seed_dir is None:
        raise CheckpointError(
            f"none of the runs of the chosen config ({', '.join(config['runs'])}) under {root} has "
            "a summary.json with best_val_accuracy and a best.pt"
        )
    check_chosen_data(seed_dir, data, selection_path)
    print(
        f"--within {within:g} ({selection_path}): the cheapest config on the front within "
        f"{within:g} points of the best mean val_accuracy {best_mean:.2f} has "
        f"{config['val_accuracy_mean']:.2f} at "
        f"{config['flops_per_image']:,.0f} FLOPs per image; its best seed is {seed_dir}",
        flush=True,
    )
    return seed_dir / BEST_CHECKPOINT


def check_chosen_data(run_dir: Path, data: Callable[[], dict] | None, selection_path: Path) -> None:
    """CheckpointError if the run select_model.py chose was trained on other images than `data()`'s.

    None: no check. A chosen run with no best.pt is not checked: loading it says so.
    """
    if data is None or not (run_dir / BEST_CHECKPOINT).is_file():
        return
    summary, data = load_summary(run_dir), data()  # the run chosen: a damaged summary refused
    if trained_on(summary, data):
        return
    recorded = data_label((summary or {}).get("data"))
    raise CheckpointError(
        f"{selection_path} chose {run_dir}, trained on {recorded}, not on {data_label(data)}: pass "
        "--data-dir the data it was chosen on, or run select_model.py with this --data-dir"
    )


def best_single_run(runs_dir: Path, data: Callable[[], dict] | None = None) -> Path:
    """The run folder under `runs_dir` with the highest best_val_accuracy and a best.pt, said in one
    line, among the runs of the data `data()` names (of_one_data_set; None: of the one data set).

    A summary.json that cannot be read or is damaged is a note, and a copied run folder counts
    once (run_files.distinct_runs). CheckpointError when no run qualifies, or the runs span several
    data sets.
    """
    runs = summaries_under(runs_dir)  # a damaged summary is a note there, its run left out
    candidates, reference = distinct_runs(exportable(runs)), None
    if candidates:
        reference = data() if data else None
        candidates = of_one_data_set(
            candidates,
            reference,
            runs_dir,
            "pass --data-dir the data to choose for, a --runs-dir of one "
            "data set, or --checkpoint PATH",
        )
    found = best_run(candidates)
    if found is None:
        on = f" trained on {data_label(reference)}" if reference else ""
        raise CheckpointError(
            f"no run in {runs_dir}{on} has a summary.json with best_val_accuracy "
            "and a best.pt: train one with part_2_cifar.py, or pass --checkpoint PATH"
        )
    print(
        f"note: no selection.json under {runs_dir}: taking the single run with the highest "
        f"best_val_accuracy ({found[1]:.2f}), not confirmed by select_model.py with new seeds",
        flush=True,
    )
    return found[0]
