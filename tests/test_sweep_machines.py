"""Several machines on one study in a real PostgreSQL: exactly N trials, a killed machine's trial
retried by another.

Each "machine" is a local_sweep.py launcher with its own hostname (a UTS namespace, as `unshare
--uts` makes) and its own process group, started with the same command a user types on each machine
(README, "Several machines").
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import conftest
import optuna
import pytest
import sqlalchemy
from conftest import at_terminal_defaults, process_env, write_sweep_file

import local_sweep
from cifarkit.core import run_files

ROOT = Path(__file__).resolve().parents[1]
# seconds: --heartbeat-interval and --grace-period; a beat may come 2 s late on a busy CPU
HEARTBEAT, GRACE = (
    1,
    3,
)
# of a trial in the kill test: last.pt after epoch 1, then 5 epochs (about 1 s) to kill it mid-trial
EPOCHS = 6
SET_HOSTNAME = (
    "import os, socket, sys; socket.sethostname(sys.argv[1]); os.execv(sys.argv[2], sys.argv[2:])"
)


@pytest.fixture(scope="module")
def own_hostname() -> list[str]:
    """The command prefix that gives a process its own hostname: unshare --uts (as root, else in a
    user namespace)."""
    for prefix in (["unshare", "--uts"], ["unshare", "--user", "--map-root-user", "--uts"]):
        try:
            done = subprocess.run(
                [*prefix, sys.executable, "-c", "import socket; socket.sethostname('probe')"],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return prefix
    pytest.skip("cannot give a process its own hostname here (unshare --uts is not permitted)")


def write_sweep(path: Path, epochs: int) -> Path:
    fixed = {"epochs": epochs, "batch_size": 64, "num_filters_1": 8, "num_filters_2": 16}
    parameters = {key: {"value": value} for key, value in (fixed | {"num_filters_3": 16}).items()}
    return write_sweep_file(path, {"learning_rate": {"min": 0.01, "max": 0.05}} | parameters)


class Machine:
    """One launcher on its own "machine": a hostname, a process group, its own output files."""

    def __init__(self, name: str, prefix: list[str], args: list[str], env: dict, log_dir: Path):
        self.name, self.log = name, log_dir / f"{name}.log"
        self.command = [
            *prefix,
            sys.executable,
            "-c",
            SET_HOSTNAME,
            name,
            sys.executable,
            str(ROOT / "local_sweep.py"),
            *args,
        ]
        self.env, self.cwd = env, log_dir

    def start(self) -> Machine:
        """Started as from a terminal (no stop signal ignored), in a session of its own, so its own
        process group."""
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                at_terminal_defaults(self.command),
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"{self.name} did not finish in {timeout} s: {self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text()


def sweep_args(
    sweep: Path, data_dir: Path, runs_dir: Path, url: str, trials: int, *more: str
) -> list[str]:
    beats = ["--heartbeat-interval", str(HEARTBEAT), "--grace-period", str(GRACE)]
    return conftest.sweep_args(
        sweep, data_dir, runs_dir, "--trials", str(trials), "--storage", url, *beats, *more
    )


def load(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def last_heartbeat(url: str, trial: optuna.trial.FrozenTrial) -> datetime:
    """The last heartbeat `trial` wrote: the database server's clock, in UTC (local_sweep's
    sessions keep UTC), without a zone as Optuna stores it; kept after the trial failed."""
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                sqlalchemy.text("SELECT heartbeat FROM trial_heartbeats WHERE trial_id = :id"),
                {"id": trial._trial_id},
            ).scalar_one()
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def two_machines_ran(
    tmp_path_factory, postgres_server, learnable_data_dir, own_hostname
) -> SimpleNamespace:
    """Two machines ran one study to its end: sweep_deploy.json's form (method custom, engine
    optuna, two metrics), N = 3 trials of an epoch in a database of its own. Built once for the two
    tests below, which change nothing in the study (next to each other, so that one test worker runs
    both). (args, url, study name)."""
    tmp_path = tmp_path_factory.mktemp("two_machines")
    # The session's server is this worker's own; postgres_url names the others db_*.
    url = conftest.create_database(postgres_server, "two_machines")
    sweep = tmp_path / "front.json"
    sweep.write_text(
        json.dumps(
            {
                "program": "part_2_cifar.py",
                "method": "custom",
                "scheduler": {"engine": "optuna"},
                "metrics": [
                    {"name": "best_val_accuracy", "goal": "maximize"},
                    {"name": "flops_per_image", "goal": "minimize"},
                ],
                "parameters": {
                    "learning_rate": {"min": 0.01, "max": 0.05},
                    "epochs": {"value": 1},
                    "batch_size": {"value": 64},
                    "num_filters_1": {"value": 8},
                    "num_filters_2": {"values": [8, 16]},
                    "num_filters_3": {"value": 16},
                },
            }
        )
    )
    # N = 3, odd: both machines ask for the last trial at once.
    args = sweep_args(sweep, learnable_data_dir, tmp_path / "shared-runs", url, 3)
    env = process_env(tmp_path)
    machines = [
        Machine(name, own_hostname, args, env, tmp_path).start()
        for name in ("machine-a", "machine-b")
    ]
    for machine in machines:
        assert machine.wait() == 0, machine.output()[-3000:]
    return SimpleNamespace(args=args, url=url, study="front")


def test_two_machines_finish_exactly_n_trials_and_the_same_command_after_the_end_does_nothing(
    two_machines_ran,
):
    args, url = two_machines_ran.args, two_machines_ran.url
    trials = load(url, two_machines_ran.study)
    assert [t.state.name for t in trials] == [
        "COMPLETE"
    ] * 3  # not one more, and no FAIL for a lost race
    assert {t.user_attrs["host"] for t in trials} == {"machine-a", "machine-b"}
    assert all(Path(t.user_attrs["run_dir"], "summary.json").is_file() for t in trials)
    started = time.monotonic()
    # the same command after the end, in this process (no hostname needed)
    assert local_sweep.main(args) == 0
    assert len(load(url, two_machines_ran.study)) == 3
    assert time.monotonic() - started < 60  # it sees 3 finished and stops: no training


def test_two_machines_run_a_multi_objective_study_to_exactly_n_trials(two_machines_ran):
    """sweep_deploy.json's form (method custom, engine optuna, two metrics): one direction per
    objective in the database, both values of every trial read from its run's summary."""
    study = optuna.load_study(study_name=two_machines_ran.study, storage=two_machines_ran.url)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert {t.user_attrs["host"] for t in study.trials} == {"machine-a", "machine-b"}
    for t in study.trials:
        summary = json.loads(Path(t.user_attrs["run_dir"], "summary.json").read_text())
        assert t.values == [summary["best_val_accuracy"], summary["flops_per_image"]]
    assert study.best_trials  # Optuna's front, which the report writes to trials.csv


@pytest.mark.parametrize("shared", [True, False], ids=["shared-run-folders", "own-run-folders"])
def test_a_killed_machines_trial_is_failed_after_the_grace_period_and_retried_by_the_survivor(
    tmp_path, postgres_url, learnable_data_dir, offline_env, own_hostname, shared
):
    sweep = write_sweep(tmp_path / "kill.json", epochs=EPOCHS)
    runs = {
        name: tmp_path / ("shared-runs" if shared else f"{name}-runs")
        for name in ("machine-a", "machine-b")
    }
    machines = {
        name: Machine(
            name,
            own_hostname,
            sweep_args(sweep, learnable_data_dir, runs[name], postgres_url, 2),
            offline_env,
            tmp_path,
        ).start()
        for name in ("machine-a", "machine-b")
    }
    assert _wait_for_study(postgres_url), machines["machine-a"].output()[-3000:]
    study = optuna.load_study(study_name="kill", storage=postgres_url)
    victim = _freeze_a_machine_mid_trial(study, machines)
    assert victim is not None, machines["machine-a"].output()[-3000:]
    dead, survivor = sorted(machines.values(), key=lambda m: m.name != victim.user_attrs["host"])
    os.killpg(dead.proc.pid, signal.SIGKILL)  # the whole machine: its process group
    killed_at = datetime.now()
    assert dead.wait() == -signal.SIGKILL
    saved = run_files.load_checkpoint(
        Path(victim.user_attrs["run_dir"], "last.pt"), needs=("epoch", "history")
    )

    assert survivor.wait() == 0, survivor.output()[-3000:]
    trials = load(postgres_url, "kill")
    states = [t.state.name for t in trials]
    # nothing lost, nothing extra
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1, states
    assert trials[victim.number].state.name == "FAIL"
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state.name == "COMPLETE" and retry.user_attrs["host"] == survivor.name
    assert retry.params == victim.params
    waited = (retry.datetime_start - killed_at).total_seconds()
    # failed once its heartbeat was older than the grace period, not before (the kill may come up
    # to a beat after the last one, later on a busy CPU: measured from the last beat), and soon
    # after
    started = retry.datetime_start.astimezone(timezone.utc).replace(tzinfo=None)  # as stored
    silent = (started - last_heartbeat(postgres_url, victim)).total_seconds()
    assert GRACE <= silent and waited < GRACE + 30, (silent, waited)
    history = json.loads(Path(retry.user_attrs["run_dir"], "summary.json").read_text())["history"]
    assert [m["epoch"] for m in history] == list(range(1, EPOCHS + 1))
    # the survivor reads the dead machine's last.pt: the epochs it saved are not run again
    if shared:
        assert retry.user_attrs["resumed_after_epoch"] == saved["epoch"] >= 1
        assert history[: saved["epoch"]] == saved["history"]
    else:  # the dead machine's run folder is out of reach: the retry starts over
        assert retry.user_attrs["resumed_after_epoch"] == 0
        assert not (runs[survivor.name] / "kill" / f"trial-{victim.number:04d}").exists()
    print(
        f"killed {dead.name}'s trial {victim.number} after epoch {saved['epoch']} saved; retried "
        f"as trial {retry.number} on {survivor.name} {waited:.1f} s later"
    )


def _freeze_a_machine_mid_trial(study, machines: dict, timeout: float = 180):
    """The first trial seen running with at least one epoch saved, its machine stopped (SIGSTOP to
    its process group) while the trial is still RUNNING in the study; None after `timeout`.

    Stopped first, then asked again: a trial seen running may end before a kill lands (its last
    epochs take well under a second, and a busy CPU can hold this loop up that long); a stopped
    machine cannot end it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if "host" not in t.user_attrs or not Path(t.user_attrs["run_dir"], "last.pt").is_file():
                continue
            machine = machines[t.user_attrs["host"]]
            os.killpg(machine.proc.pid, signal.SIGSTOP)
            (now,) = [u for u in study.get_trials(deepcopy=False) if u.number == t.number]
            if now.state == optuna.trial.TrialState.RUNNING:
                return t
            os.killpg(machine.proc.pid, signal.SIGCONT)  # it ended meanwhile: look again
        time.sleep(0.2)  # a trial lasts EPOCHS epochs; each look reads every trial of the study
    return None


def _wait_for_study(url: str, timeout: float = 120) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if optuna.study.get_all_study_names(storage=url):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize(
    "url, words",
    [
        # a driver that is not installed
        (
            "postgresql+pg8000://postgres@127.0.0.1:1/optuna",
            "pip install 'pg8000'",
        ),
        (
            "postgresql://postgres@127.0.0.1:1/optuna",
            "cannot open storage postgresql://postgres@127.0.0.1:1/optuna",
        ),
        ("mysql://root@127.0.0.1/optuna", "use postgresql://"),
    ],
)
def test_a_storage_that_cannot_open_is_one_line(tmp_path, url, words, learnable_data_dir, capsys):
    sweep = write_sweep(tmp_path / "s.json", epochs=1)
    assert local_sweep.main(sweep_args(sweep, learnable_data_dir, tmp_path / "runs", url, 1)) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


WRITE_AT_ONCE = """
import sys, time
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from cifarkit.core.cli import write_json_atomic
from cifarkit.core.figures import save_figure
start, folder = float(sys.argv[1]), __import__("pathlib").Path(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
for i in range(40):
    fig, ax = plt.subplots(figsize=(1, 1))
    save_figure(fig, folder / "sweep_front_pareto.png", dpi=20)
    write_json_atomic({"i": i}, folder / "selection.json")
"""


def test_machines_that_write_the_same_report_file_at_once_both_succeed(tmp_path, offline_env):
    """Each machine writes the study's report when it ends, to the shared folder: never over
    another's temporary."""
    start = time.time() + 3  # both import matplotlib first, then write in the same instant
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITE_AT_ONCE, str(start), str(tmp_path)],
            env=offline_env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "selection.json",
        "sweep_front_pareto.png",
    ]


# --------------------------------------------------------------------------------------------------
# A machine that stalls, and random faults on a whole sweep


def _wait_for(condition, timeout: float, every: float = 0.05):
    """condition()'s first truthy value within `timeout` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    return None


def test_a_machine_that_stalls_past_the_grace_period_gives_its_trial_up_with_one_line_when_it_wakes(
    tmp_path, postgres_url, learnable_data_dir, offline_env, own_hostname
):
    sweep, runs = write_sweep(tmp_path / "stall.json", epochs=8), tmp_path / "shared-runs"
    args = sweep_args(sweep, learnable_data_dir, runs, postgres_url, 1)
    a = Machine("machine-a", own_hostname, args, offline_env, tmp_path).start()
    b = Machine("machine-b", own_hostname, args, offline_env, tmp_path)
    try:
        assert _wait_for_study(postgres_url), a.output()[-3000:]
        study = optuna.load_study(study_name="stall", storage=postgres_url)

        def after_epoch_2():
            return [
                t
                for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if t.user_attrs.get("epochs_completed", 0) >= 2
            ]

        assert _wait_for(after_epoch_2, 180), a.output()[-3000:]
        # the whole machine stalls (a VM paused, a swap storm) after epoch 2
        os.killpg(a.proc.pid, signal.SIGSTOP)
        b.start()

        def retry_running():
            return [
                t
                for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                if t.system_attrs.get("failed_trial") == 0
                and t.user_attrs.get("host") == "machine-b"
            ]

        assert _wait_for(retry_running, 180, every=0.2), b.output()[
            -3000:
        ]  # failed after the grace, retried by B
    finally:
        # A wakes up and reports its next epoch for a trial no longer its own
        os.killpg(a.proc.pid, signal.SIGCONT)
    assert a.wait() == 0, a.output()[-3000:]  # it waits for B's retry, then the study is done
    assert b.wait() == 0, b.output()[-3000:]
    out = a.output()
    assert "Traceback" not in out and "Traceback" not in b.output(), out[-3000:]
    assert out.count("trial 0 was failed meanwhile by another process") == 1, out[-3000:]
    trials = load(postgres_url, "stall")
    assert [t.state.name for t in trials] == [
        "FAIL",
        "COMPLETE",
    ]  # A asked for nothing more: N = 1 was reached
    assert (
        trials[1].user_attrs["host"] == "machine-b"
        and trials[1].user_attrs["resumed_after_epoch"] >= 1
    )
    assert Path(
        trials[0].user_attrs["run_dir"], "last.pt"
    ).is_file()  # A's attempt kept its checkpoints
    assert (runs / "stall" / "trials.csv").is_file()


def test_a_storage_outage_mid_trial_is_one_line_exit_1_and_the_same_command_continues_after_it(
    tmp_path, postgres_server, postgres_url, learnable_data_dir, offline_env, capsys
):
    import sqlalchemy

    sweep, runs = write_sweep(tmp_path / "outage.json", epochs=8), tmp_path / "runs"
    args = sweep_args(sweep, learnable_data_dir, runs, postgres_url, 2)
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "local_sweep.py"), *args],
        env=offline_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    database = postgres_url.rsplit("/", 1)[1]
    admin = sqlalchemy.create_engine(f"{postgres_server}/postgres", isolation_level="AUTOCOMMIT")
    try:
        assert _wait_for_study(postgres_url)
        study = optuna.load_study(study_name="outage", storage=postgres_url)
        assert _wait_for(
            lambda: [t for t in study.get_trials() if t.user_attrs.get("epochs_completed", 0) >= 1],
            180,
        )
        # the database goes away mid-trial: nobody can connect, every connection is cut
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false"))
            c.execute(
                sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"
                ),
                {"d": database},
            )
        out, _ = first.communicate(timeout=180)
    finally:
        first.kill()
        with admin.connect() as c:
            c.execute(sqlalchemy.text(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true"))
        admin.dispose()
    assert first.returncode == 1, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the study's storage failed" in errors[0], out[-3000:]
    assert "run the same command again" in errors[0]
    saved = run_files.load_checkpoint(runs / "outage" / "trial-0000" / "last.pt", needs=("epoch",))[
        "epoch"
    ]

    # once the database answers: the lost attempt is failed after the grace
    assert local_sweep.main(args) == 0
    trials = load(postgres_url, "outage")
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"], [
        t.state.name for t in trials
    ]
    # The retry of trial 0 is trial 1 or 2: the same command may ask for a new trial before the lost
    # one is stale.
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].user_attrs["resumed_after_epoch"] == saved, [
        t.system_attrs for t in trials
    ]
    assert "Traceback" not in "".join(capsys.readouterr())


# what clusters, terminals and users do to a sweep's processes
FAULTS = (
    "SIGKILL",
    "SIGSTOP",
    "SIGHUP",
    "SIGTERM",
)
FAULT_SEEDS = [
    int(s) for s in os.environ.get("SWEEP_FAULT_SEEDS", "1").split(",")
]  # e.g. SWEEP_FAULT_SEEDS=1,2,3,4,5
FAULT_TRIALS, FAULT_COUNT = 4, 4  # N, and faults per run: each lands on a launcher that is running
DOCUMENTED_EXITS = {0} | {
    128 + signal.Signals[name] for name in FAULTS if name != "SIGSTOP"
}  # README, exit codes


@pytest.mark.parametrize("seed", FAULT_SEEDS)
def test_random_faults_on_two_launchers_end_with_exactly_n_finished_trials(
    seed, tmp_path, postgres_url, learnable_data_dir, offline_env, own_hostname
):
    """Two launchers; FAULT_COUNT faults drawn with `seed`, each at a random moment (1 to 4 s after
    the last, from the first trial's start) on a random launcher that is running and not already
    stopping. A launcher that ends other than by finishing is started again, as a cluster requeues a
    job; a stopped one is continued after the grace period. The study must end as if nothing
    happened."""
    rng = random.Random(seed)
    sweep = write_sweep(tmp_path / "faults.json", epochs=4)
    args = sweep_args(
        sweep, learnable_data_dir, tmp_path / "shared-runs", postgres_url, FAULT_TRIALS
    )
    machines = [
        Machine(name, own_hostname, args, offline_env, tmp_path).start()
        for name in ("machine-a", "machine-b")
    ]
    plan = [(rng.uniform(1, 4), rng.choice(FAULTS), rng.random()) for _ in range(FAULT_COUNT)]
    ends: list[
        tuple[str, list[str], int]
    ] = []  # (machine, the faults it got, its exit code as a shell shows it)
    got: dict[str, list[str]] = {m.name: [] for m in machines}
    study_was_done: dict[
        str, bool
    ] = {}  # machine -> whether N trials were finished when its stop signal was sent
    stopped_until: dict[str, float] = {}
    started, done = time.monotonic(), set()
    study = (
        optuna.load_study(study_name="faults", storage=postgres_url)
        if _wait_for_study(postgres_url)
        else None
    )
    assert study and _wait_for(
        lambda: study.get_trials(states=(optuna.trial.TrialState.RUNNING,)), 90, every=0.1
    )
    # the clock starts with the first trial: faults land mid-sweep
    next_fault = time.monotonic() + plan[0][0]
    try:
        while len(done) < len(machines):
            assert time.monotonic() - started < 110, (
                f"not done in 110 s; faults left {plan}; ends {ends}"
            )
            now = time.monotonic()
            for m in machines:
                if m.name in stopped_until and now >= stopped_until[m.name]:
                    os.killpg(m.proc.pid, signal.SIGCONT)
                    del stopped_until[m.name]
                code = m.proc.poll()
                if code is None or m.name in done:
                    continue
                code = 128 - code if code < 0 else code
                stops = [
                    f for f in got[m.name] if f != "SIGSTOP"
                ]  # at most one: a stopping one gets no more
                # 128 + the signal; 0 only if it was sent as the process was ending after the last
                # trial
                assert code == (128 + signal.Signals[stops[0]] if stops else 0) or (
                    code == 0 and study_was_done.get(m.name)
                ), (m.name, got[m.name], code, ends)
                ends.append((m.name, got[m.name], code))
                got[m.name] = []
                study_was_done.pop(m.name, None)
                if code == 0:
                    done.add(m.name)
                else:
                    m.start()  # requeued
            running = [
                m
                for m in machines
                if m.proc.poll() is None
                and m.name not in stopped_until
                and m.name not in study_was_done
            ]
            if plan and now >= next_fault and running:
                _, fault, pick = plan.pop(0)
                target = running[int(pick * len(running))]
                # paused past the grace period: its trial is failed and retried elsewhere
                if fault == "SIGSTOP":
                    stopped_until[target.name] = now + GRACE + 2
                else:
                    study_was_done[target.name] = FAULT_TRIALS <= sum(
                        t.state in local_sweep.FINISHED for t in study.get_trials(deepcopy=False)
                    )
                os.killpg(target.proc.pid, signal.Signals[fault])
                got[target.name].append(fault)
                next_fault = now + (plan[0][0] if plan else 0)
            time.sleep(0.05)
    finally:
        for m in machines:
            if m.proc.poll() is None:
                os.killpg(m.proc.pid, signal.SIGCONT)
                os.killpg(m.proc.pid, signal.SIGKILL)
    outputs = "".join(m.output() for m in machines)
    assert "Traceback" not in outputs, outputs[-5000:]
    assert not plan, f"faults not delivered: {plan}"  # every fault landed on a running launcher
    assert {code for _, _, code in ends} <= DOCUMENTED_EXITS, ends
    trials = load(postgres_url, "faults")
    states = [t.state.name for t in trials]
    assert (
        sum(s in ("COMPLETE", "PRUNED") for s in states) == FAULT_TRIALS and "RUNNING" not in states
    ), states
    print(
        f"seed {seed}: {len(ends)} process ends {ends}; trials {states}; "
        f"{time.monotonic() - started:.0f} s"
    )
