"""Confirm a sweep's winners with new seeds and choose the model to deploy on the accuracy/cost
front.

    python select_model.py runs --top 5 --seeds 3               # top 5 configs, 3 new seeds each
    python select_model.py runs --top 5 --seeds 3 --workers 4   # 4 trainings at once, over the GPUs
    python select_model.py runs/sweep_deploy --front --seeds 3  # a sweep's accuracy/FLOPs front
    python trt_export.py --checkpoint best --runs-dir runs      # exports what this chose

A sweep's best run is one seed's luck as much as its config: the maximum of many noisy trials is
biased upward (the winner's curse). This reads every finished run at any depth under RUNS_DIR
(single runs, `wandb agent` runs, local sweep trials: anything with a summary.json), takes the K
configs with the highest best_val_accuracy (--front: the configs on the front of best_val_accuracy
and flops_per_image), and trains each again with S seeds it has not used, as ordinary
part_2_cifar.py runs in RUNS_DIR/selection/ (one W&B group). Per config it reports the mean, sample
standard deviation and 95% confidence interval (Student's t) of best_val_accuracy over all its
seeds, the original run included; test accuracy (reported, never used to choose); the model's cost;
and whether it is on the Pareto front (higher mean val_accuracy, fewer FLOPs). Run the same command
after a crash or Ctrl-C: finished seeds are kept, an interrupted one resumes from its last epoch.
Writes RUNS_DIR/selection.json and images/selection_<name>.png.

Only runs of one data set are compared: those whose summary.json records --data-dir's images
(and --val-size's split, if given), which the new seeds train on. Runs of other data are left out
with one line; runs of those images in several validation splits are refused in one line (pass
--val-size). One selection runs in a RUNS_DIR at a time: a second is refused in one line naming
the first (folders.own_folder on RUNS_DIR/selection).
"""

from __future__ import annotations

# Run as a program, a stop signal while the imports below run (torch takes a second) is one line
# and exit 128 + n, as from main on (cli.StopWhileImporting)
if __name__ == "__main__":
    from cifarkit.core.cli import stop_while_importing

    stop_while_importing()

import argparse
import hashlib
import json
import math
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import part_2_cifar as p2
from cifarkit.core import cli, settings
from cifarkit.core.choice import best_seed, save_selection
from cifarkit.core.cifar_files import cifar100_source, load_cifar100
from cifarkit.core.cost import flops_per_image
from cifarkit.core.figures import figures_wanted, pyplot, save_figure
from cifarkit.core.folders import SEEDS_MARKER, STUDY_MARKER, own_folder, unwritable
from cifarkit.core.run_files import (
    ENDED,
    LAST_CHECKPOINT,
    SUMMARY_FILE,
    by_data_set,
    data_identity,
    data_label,
    distinct_runs,
    finite_number,
    of_one_data_set,
    read_summary,
    summaries_under,
    trained_on,
)
from cifarkit.core.wandb_connect import resolve_wandb_mode

SELECTION_DIR = "selection"  # under RUNS_DIR: the retrained seeds, one ordinary run folder each
# ... unless RUNS_DIR/selection is another's (a study named `selection`, a run with that id): then
# here, a name no study (space.safe_file_name) or run id starts with
SPARE_SELECTION_DIR = ".selection"
CONFIDENCE = 0.95


@dataclass
class Candidate:
    """One config (every setting but the seed) and the run folders that trained it."""

    config: dict
    runs: list[Path] = field(default_factory=list)
    seeds: set[int] = field(default_factory=set)  # the seeds its runs used, read once with them
    single_run_val_accuracy: float = -math.inf  # the best original run: what got it chosen
    flops_per_image: float | None = None  # from its runs' summaries (forward pass, one image)

    @property
    def key(self) -> str:
        return config_key(self.config)


def config_key(config: dict) -> str:
    """A short name for a config without its seed: the same hyperparameters give the same name."""
    text = json.dumps({k: v for k, v in sorted(config.items()) if k in p2.SETTINGS and k != "seed"})
    return hashlib.sha1(text.encode()).hexdigest()[:8]


# --------------------------------------------------------------------------------------------------
# Statistics


def mean_std_ci(
    values: list[float], confidence: float = CONFIDENCE
) -> tuple[float, float | None, list | None]:
    """Mean, sample standard deviation and the Student's t confidence interval of the mean (None for
    one value)."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None, None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return mean, std, [mean - half, mean + half]


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """(accuracy, cost) points -> True where no other point is as accurate and as cheap, and better
    in one."""
    return [
        not any(a2 >= a and c2 <= c and (a2 > a or c2 < c) for a2, c2 in points) for a, c in points
    ]


# --------------------------------------------------------------------------------------------------
# Finding the candidates and planning the seeds


def find_candidates(runs_dir: Path, data: dict | None) -> list[Candidate]:
    """Every config with a finished run under runs_dir trained on `data`: candidates_of."""
    return candidates_of(finished_runs(runs_dir), data, runs_dir)


def owner_of(folder: Path) -> str | None:
    """Whose `folder` is when it is not the selection's: `a study's` (its STUDY_MARKER), `a run's`
    (a summary or checkpoint of its own), else None."""
    if (folder / SEEDS_MARKER).exists():
        return None
    if (folder / STUDY_MARKER).exists():
        return "a study's"
    if any((folder / name).exists() for name in (SUMMARY_FILE, LAST_CHECKPOINT)):
        return "a run's"
    return None


def is_seeds_folder(folder: Path) -> bool:
    """Whether `folder` holds a selection's seeds: its SEEDS_MARKER, or (written before the marker
    was) named `selection` and nobody else's."""
    return (folder / SEEDS_MARKER).is_file() or (
        folder.name == SELECTION_DIR and folder.is_dir() and owner_of(folder) is None
    )


def seeds_folder(runs_dir: Path) -> Path:
    """Where the selection of `runs_dir` keeps its seeds: RUNS_DIR/selection, else (a study or a
    run has it) RUNS_DIR/.selection. By what the folder holds, not its name: a study named
    `selection` keeps its trials, which are candidates as any others."""
    usual = runs_dir / SELECTION_DIR
    return usual if owner_of(usual) is None else runs_dir / SPARE_SELECTION_DIR


def finished_runs(runs_dir: Path) -> list[tuple[Path, dict, dict]]:
    """(folder, summary, its config checked) of each finished run under runs_dir but a selection's
    seeds (is_seeds_folder), one per run (run_files.distinct_runs: a copied folder is the same
    run)."""
    ended = [
        (run_dir, summary)
        for run_dir, summary in summaries_under(runs_dir)  # a damaged summary: a note there
        # a seed of a selection (here, or of a runs folder below) is not a candidate of its own
        if not any(is_seeds_folder(above) for above in run_dir.parents if runs_dir in above.parents)
        and summary is not None
        and summary.get("status") in ENDED
        and finite_number(summary.get("best_val_accuracy"))
        and "config" in summary
    ]
    finished = []
    for run_dir, summary in distinct_runs(ended):  # a copied run folder is one seed, not two
        path = run_dir / SUMMARY_FILE
        try:  # a summary written by hand, or by an older version with other settings
            if not isinstance(summary["config"], dict):
                raise settings.ConfigError(
                    f"a config that is a {type(summary['config']).__name__}, not a dict"
                )
            finished.append((run_dir, summary, p2.validate_config(summary["config"])))
        except settings.ConfigError as e:
            print(f"note: {path} has {e}: that run is not considered", flush=True)
    return finished


def candidates_of(
    finished: list[tuple[Path, dict, dict]], data: dict | None, runs_dir: Path
) -> list[Candidate]:
    """The configs of the finished runs trained on `data`, best single run first.

    `data`: a data identity (run_files.of_one_data_set: runs of other data are left out with one
    line; None: the one data set all share). CheckpointError, one line, if those runs span several
    data sets or validation splits.
    """
    by_key: dict[str, Candidate] = {}
    one_data_set = of_one_data_set(
        [(run_dir, summary) for run_dir, summary, _ in finished],
        data,
        runs_dir,
        "pass --val-size N to compare the runs of one split",
    )
    kept = {run_dir for run_dir, _ in one_data_set}
    for run_dir, summary, config in finished:
        if run_dir not in kept:
            continue
        candidate = by_key.setdefault(config_key(config), Candidate(config))
        candidate.runs.append(run_dir)
        candidate.seeds.add(config["seed"])
        candidate.single_run_val_accuracy = max(
            candidate.single_run_val_accuracy, summary["best_val_accuracy"]
        )
        candidate.flops_per_image = candidate.flops_per_image or summary.get("flops_per_image")
    return sorted(by_key.values(), key=lambda c: -c.single_run_val_accuracy)


def on_front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other beats on both best single-run best_val_accuracy and flops_per_image:
    the front of a sweep_deploy.json study (its objectives are these summary values; trials.csv's
    pareto_front), of any runs."""
    costs = [
        c.flops_per_image or flops_per_image(p2.model_from_config(c.config)) for c in candidates
    ]
    front = pareto_front(
        [(c.single_run_val_accuracy, cost) for c, cost in zip(candidates, costs, strict=True)]
    )
    return [c for c, keep in zip(candidates, front, strict=True) if keep]


def planned_runs(candidate: Candidate, seeds: int) -> list[tuple[str, dict]]:
    """(run id, config) of the new seeds: the lowest seeds no run of this config has used, so reruns
    plan the same."""
    used = candidate.seeds  # as read when the runs were found: a summary read again may fail
    new_seeds = [s for s in range(len(used) + seeds) if s not in used][:seeds]
    return [(f"{candidate.key}-seed{s}", candidate.config | {"seed": s}) for s in new_seeds]


# --------------------------------------------------------------------------------------------------
# Training the seeds: ordinary trainer processes, several at once, spread over the GPUs


def trainer_command(config: dict, args: argparse.Namespace, selection_dir: Path) -> list[str]:
    trainer = Path(p2.__file__).resolve()
    hyper = [f"--{key}={value}" for key, value in config.items() if key in p2.SETTINGS]
    return [
        sys.executable,
        str(trainer),
        *hyper,
        "--data-dir",
        str(args.data_dir),
        "--runs-dir",
        str(selection_dir),
        "--device",
        args.device,
        "--wandb-mode",
        args.wandb_mode,
        "--wandb-project",
        args.wandb_project,
    ]


def train_seeds(
    todo: list[tuple[str, dict]],
    args: argparse.Namespace,
    selection_dir: Path,
    group: str,
    stop: cli.StopOnSignal,
) -> int:
    """Run the trainings, at most args.workers at a time; each writes its output to
    <run>/output.log. Once `stop` has a signal, none starts and the running ones get it
    (cli.passed_on): each saves its last epoch. Exit code: 128 + the signal, else 2 if a trainer
    exited 2 (a bad value, a checkpoint the user must fix), else 1 if a training failed, else 0. A
    training that cannot be started (its folder or log cannot be written) starts no more, and once
    the running ones have ended is cli.FileFailed."""
    slots, running, failures, forwarded = cli.gpu_slots(args.workers), {}, set(), False
    pending, not_started = list(todo), None
    # after a signal, what has not started waits for a rerun
    while running or (pending and stop.signum is None):
        try:
            for slot in [
                s
                for s in range(args.workers)
                if s not in running and pending and stop.signum is None
            ]:
                run_id, config = pending.pop(0)
                run_dir = selection_dir / run_id
                env = cli.worker_env(slots[slot], args.workers) | {
                    "WANDB_RUN_ID": run_id,
                    "WANDB_RUN_GROUP": group,
                    "WANDB_JOB_TYPE": "selection",
                }
                try:
                    run_dir.mkdir(parents=True, exist_ok=True)
                    with open(run_dir / "output.log", "a") as log:
                        command = trainer_command(config, args, selection_dir)
                        process = subprocess.Popen(
                            command, env=env, stdout=log, stderr=subprocess.STDOUT
                        )
                except OSError as e:  # a full disk, a folder gone: no more start; running ones end
                    not_started = cli.FileFailed(e, "start the training in", run_dir)
                    pending.clear()
                    break
                running[slot] = (run_id, process)
                print(
                    f"[{len(todo) - len(pending)}/{len(todo)}] training {run_id} (pid "
                    f"{process.pid})",
                    flush=True,
                )
            if stop.signum is not None and not forwarded:
                for _, process in running.values():
                    process.send_signal(cli.passed_on(stop.signum))
                forwarded = True
            for slot, (run_id, process) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[slot]
                summary = read_summary(selection_dir / run_id)
                if process.returncode == 0 and summary:
                    # None: it diverged before any epoch finished
                    best = summary.get("best_val_accuracy")
                    print(
                        f"  {run_id}: "
                        + (
                            f"best val_accuracy {best:.2f}%"
                            if finite_number(best)
                            else f"{summary.get('status')}, no epoch finished"
                        ),
                        flush=True,
                    )
                elif stop.signum is None:
                    failures.add(process.returncode)
                    last = (
                        (selection_dir / run_id / "output.log")
                        .read_text()
                        .strip()
                        .splitlines()[-1:]
                    )
                    print(
                        f"  {run_id} failed (exit {process.returncode}): {' '.join(last)}",
                        file=sys.stderr,
                    )
            time.sleep(0.2)
        # Ctrl-C twice: the trainers got it too (one process group) and stop now; wait for them
        # (each saves nothing more and ends at once), so none is left running unseen.
        except KeyboardInterrupt:
            pass
    if stop.signum is not None:
        print(
            f"interrupted by {signal.Signals(stop.signum).name}: run the same command to continue",
            file=sys.stderr,
        )
        return cli.stopped_by(stop.signum)
    if not_started is not None:
        raise not_started
    # a file or value the user must fix (a checkpoint) is said first
    if cli.EXIT_BAD_INPUT in failures:
        return cli.EXIT_BAD_INPUT
    return cli.EXIT_FAILED if failures else cli.EXIT_DONE


# --------------------------------------------------------------------------------------------------
# Report


def config_report(candidate: Candidate, runs_dir: Path) -> dict:
    """The numbers of one config over all its finished seeds; a seed that diverged before any epoch
    finished (no best_val_accuracy) counts as 0, as the trainer reports it to a sweep: a config that
    diverges is not chosen."""
    summaries = [s for s in map(read_summary, candidate.runs) if s and s.get("status") in ENDED]
    mean, std, ci = mean_std_ci([s["best_val_accuracy"] or 0.0 for s in summaries])
    tests = [s["test_accuracy"] for s in summaries if s.get("test_accuracy") is not None]
    flops = next((s["flops_per_image"] for s in summaries if "flops_per_image" in s), None)
    if flops is None:  # a run written before cost was recorded
        flops = flops_per_image(p2.model_from_config(candidate.config))
    latency = next((s["latency_ms"] for s in summaries if "latency_ms" in s), None)
    return {
        "key": candidate.key,
        "config": candidate.config,
        "runs": [str(run.relative_to(runs_dir)) for run in candidate.runs],
        "seeds": len(summaries),
        "single_run_val_accuracy": candidate.single_run_val_accuracy,
        "val_accuracy_mean": mean,
        "val_accuracy_std": std,
        "val_accuracy_ci95": ci,
        "test_accuracy_mean": sum(tests) / len(tests) if tests else None,
        "flops_per_image": flops,
        "latency_ms": latency,
    }


def print_table(reports: list[dict]) -> None:
    print(
        f"{'config':8}  {'lr':>7} {'bs':>4} {'filters':>11} {'drop':>5} {'ep':>3}  {'seeds':>5}  "
        f"{'single':>6}  {'mean':>6} {'std':>5}  {'95% interval':>15}  {'test':>6}  {'MFLOP':>6}  "
        "front"
    )
    for r in reports:
        c = r["config"]
        ci = (
            f"{r['val_accuracy_ci95'][0]:.2f}-{r['val_accuracy_ci95'][1]:.2f}"
            if r["val_accuracy_ci95"]
            else "-"
        )
        std = f"{r['val_accuracy_std']:.2f}" if r["val_accuracy_std"] is not None else "-"
        test = f"{r['test_accuracy_mean']:.2f}" if r["test_accuracy_mean"] is not None else "-"
        filters = f"{c['num_filters_1']}/{c['num_filters_2']}/{c['num_filters_3']}"
        print(
            f"{r['key']:8}  {c['learning_rate']:7.4f} {c['batch_size']:4d} {filters:>11} "
            f"{c['dropout_rate']:5.3f} {c['epochs']:3d}  {r['seeds']:5d}  "
            f"{r['single_run_val_accuracy']:6.2f}  {r['val_accuracy_mean']:6.2f} {std:>5}  "
            f"{ci:>15}  {test:>6}  {r['flops_per_image'] / 1e6:6.1f}  {'*' if r['pareto'] else ''}"
        )


def plot_front(reports: list[dict], path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in reports:
        x, mean = r["flops_per_image"] / 1e6, r["val_accuracy_mean"]
        low, high = r["val_accuracy_ci95"] or [mean, mean]
        color = "C3" if r["pareto"] else "C0"
        ax.errorbar(x, mean, yerr=[[mean - low], [high - mean]], fmt="o", capsize=3, color=color)
        ax.plot(x, r["single_run_val_accuracy"], "x", color="0.4")
        ax.annotate(
            f"{r['key']} ({r['seeds']} seeds)",
            (x, mean),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    front = sorted(
        (r["flops_per_image"] / 1e6, r["val_accuracy_mean"]) for r in reports if r["pareto"]
    )
    ax.step(
        *zip(*front, strict=True),
        where="post",
        color="C3",
        alpha=0.5,
        marker="o",
        label="Pareto front (mean)",
    )
    ax.plot([], [], "x", color="0.4", label="best single run (what the sweep reported)")
    ax.set(
        xlabel="forward MFLOP per image",
        ylabel="best val_accuracy (%): mean, 95% interval",
        title=title,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def rank(reports: list[dict]) -> list[dict]:
    """Mark the Pareto front and sort by mean val_accuracy, a tie going to the cheaper config: the
    first is chosen."""
    front = pareto_front([(r["val_accuracy_mean"], r["flops_per_image"]) for r in reports])
    ranked = [r | {"pareto": on_front} for r, on_front in zip(reports, front, strict=True)]
    return sorted(ranked, key=lambda r: (-r["val_accuracy_mean"], r["flops_per_image"]))


def write_selection(
    candidates: list[Candidate], runs_dir: Path, images_dir: Path, data: dict
) -> dict:
    """selection.json (the ranked config reports, the best seed, `data`: the data set of every
    run), the table and the plot."""
    reports = rank([config_report(c, runs_dir) for c in candidates])
    best = best_seed(reports[0], runs_dir)
    selection = {
        "configs": reports,
        "best": str(best.relative_to(runs_dir)) if best else None,
        "confidence": CONFIDENCE,
        "data": data,
    }
    path = save_selection(selection, runs_dir)
    print_table(reports)
    name = runs_dir.resolve().name
    if figures_wanted():
        plot_front(
            reports,
            images_dir / f"selection_{name}.png",
            f"{name}: the top {len(reports)} configs retrained with new seeds",
        )
    print(
        f"chosen: {reports[0]['key']} (mean {reports[0]['val_accuracy_mean']:.2f}%); its best seed "
        f"{best}; wrote {path}",
        flush=True,
    )
    return selection


# --------------------------------------------------------------------------------------------------
# Command line and main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.OneLineErrorParser(__doc__, parents=(p2.shared_options(),))
    parser.add_argument(
        "runs", type=Path, metavar="RUNS_DIR", help="finished runs at any depth under this folder"
    )
    parser.add_argument(
        "--top",
        type=cli.positive_int,
        help="configs to confirm, the most accurate first (default 5; "
        "with --front, all of the front)",
    )
    parser.add_argument(
        "--front",
        action="store_true",
        help="the candidates are the configs on the accuracy/FLOPs "
        "front of the runs (a multi-objective sweep's Pareto front), not the most accurate",
    )
    parser.add_argument(
        "--seeds", type=cli.positive_int, default=3, help="new seeds per config (default 3)"
    )
    parser.add_argument(
        "--workers",
        type=cli.positive_int,
        default=1,
        help="trainings at once, spread over the GPUs",
    )
    parser.add_argument(
        "--images-dir",
        type=Path,
        default=Path("images"),
        help="where the plot goes (default images)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """The command; its one boundary, cli.boundary, makes whatever ends it one line and a code."""
    # From the first line, as in the trainer: a stop signal is one line and 128 + n.
    # `owned` holds the selection folder until the end.
    with cli.StopOnSignal() as stop, ExitStack() as owned:
        try:
            return run_selection(parse_args(argv), stop, owned)
        except BaseException as e:  # Ctrl-C twice while the selection is written, a full disk, ...
            return cli.boundary(
                e,
                stopped="run the same command to continue",
                kept="finished seeds are kept: the same command trains none of them again",
            )


def data_of(source_dir: Path, val_size: int | None) -> dict:
    """The data identity (run_files.data_identity) of the CIFAR-100 in `source_dir`.

    `val_size` None: any split.
    """
    train_x, train_y, test_x, test_y = load_cifar100(source_dir)
    return data_identity(source_dir, (train_x, train_y), (test_x, test_y), val_size, p2.SPLIT_SEED)


def run_selection(args: argparse.Namespace, stop: cli.StopOnSignal, owned: ExitStack) -> int:
    """Everything main does once the arguments are read; `stop` holds a stop signal received
    meanwhile, `owned` the hold on RUNS_DIR/selection until the end."""
    val_size = (
        None
        if args.val_size is None
        else p2.validate_config({"val_size": args.val_size})["val_size"]
    )
    resolve_wandb_mode(args.wandb_mode)  # refuse a bad mode before any training
    if not args.runs.is_dir():
        return cli.fail(f"{args.runs} is not a folder of runs", cli.EXIT_BAD_INPUT)
    for option, folder in (("RUNS_DIR", args.runs), ("--images-dir", args.images_dir)):
        if why := unwritable(folder):
            return cli.fail(
                f"{option} {folder} cannot be written: {why}; use a folder you can write to",
                cli.EXIT_BAD_INPUT,
            )
    finished, selection_dir = finished_runs(args.runs), seeds_folder(args.runs)
    if not finished:
        return cli.fail(
            f"no finished run (a summary.json with best_val_accuracy) under {args.runs}",
            cli.EXIT_BAD_INPUT,
        )
    # The data is found (or fetched) once, here, not by several trainers at once: the trainers are
    # given where it is
    args.data_dir = cifar100_source(args.data_dir).path
    owned.enter_context(own_folder(selection_dir, "selection folder"))
    if not (selection_dir / SEEDS_MARKER).exists():  # whose it is: a study never takes it
        cli.write_json_atomic(
            {"owner": "select_model.py", "runs": str(args.runs)}, selection_dir / SEEDS_MARKER
        )
    data = data_of(args.data_dir, val_size)  # the runs compared: those of the new seeds' data
    candidates = candidates_of(finished, data, args.runs)
    if not candidates:
        return cli.fail(
            f"no finished run under {args.runs} was trained on {data_label(data)}: "
            "pass the --data-dir (and --val-size) of the runs to compare",
            cli.EXIT_BAD_INPUT,
        )
    if args.front:
        candidates = on_front(candidates)
        print(
            f"{len(candidates)} configs on the front of best_val_accuracy and flops_per_image",
            flush=True,
        )
    candidates = candidates[: args.top or (None if args.front else 5)]
    planned = {c.key: planned_runs(c, args.seeds) for c in candidates}
    for candidate in candidates:
        candidate.runs += [selection_dir / run_id for run_id, _ in planned[candidate.key]]
    seeds = [(run_id, config) for runs in planned.values() for run_id, config in runs]
    summaries = {run_id: read_summary(selection_dir / run_id) for run_id, _ in seeds}
    other = [
        (selection_dir / run_id, summary)
        for run_id, summary in summaries.items()
        if summary is not None and not trained_on(summary, data)
    ]
    if other:  # seeds of an earlier selection on other data: averaging them in is refused
        return cli.fail(
            f"{selection_dir} holds {len(other)} seeds trained on other data "
            f"({by_data_set(other)}), not on {data_label(data)}: move {selection_dir} "
            "aside, or pass the --data-dir they used",
            cli.EXIT_BAD_INPUT,
        )
    todo = [
        (run_id, config)
        for run_id, config in seeds
        if (summaries[run_id] or {}).get("status") not in ENDED
    ]
    print(
        f"{len(candidates)} configs x {args.seeds} new seeds: {len(todo)} trainings to run, "
        f"{len(seeds) - len(todo)} already finished",
        flush=True,
    )
    code = train_seeds(todo, args, selection_dir, f"selection-{args.runs.resolve().name}", stop)
    if code < 128:
        write_selection(candidates, args.runs, args.images_dir, data)
    if stop.signum is not None and code < 128:  # arrived while the report was written: it is whole
        print(
            f"{signal.Signals(stop.signum).name} arrived after the selection was written: it is "
            "complete",
            flush=True,
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
