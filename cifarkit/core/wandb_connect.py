"""W&B connection policy: online only with credentials wandb itself would use, never a login prompt,
bounded waits, and an offline fallback that never costs a training. Used by
part_2_cifar.run_training and the sweep commands.
A setting W&B refuses (WANDB_MODE= empty, WANDB_INIT_TIMEOUT=soon) is one line naming the
variable, before any work. Once a run has started, W&B failing (its wandb-core process killed, a
folder it cannot write, an upload that raises) costs W&B only: GuardedRun says in one line what W&B
lost and how to sync what it has, and the training goes on.

Also here, `wandb agent`'s protocol as the trainer meets it: in_wandb_sweep, the arguments a
(requeued) sweep run gets (parse_agent_args), a sweep's null (defaults_used), a value refused
inside a sweep shown where the sweep is watched (fail_sweep_run), and the end of a run
(log_summary, upload_model, end_run).

Behaviour of wandb 0.31 this relies on, read in its source: wandb/sdk/lib/wbauth/authenticate.py
(the credential lookup wandb.init runs), wandb/sdk/wandb_settings.py (init_timeout 90 s,
finish_timeout 0 = forever by default).
README "W&B without a network (HPC clusters)" says what a user sees.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import sys
from pathlib import Path

from cifarkit.core.cli import EXIT_BAD_INPUT, EXIT_FAILED, CommandError, fail, one_line
from cifarkit.core.folders import unwritable, user_folder


class WandbSettingsError(CommandError, ValueError):
    """W&B's settings or credentials cannot be used; the message is one line for people."""

    exit_code = EXIT_BAD_INPUT


# W&B's own defaults wait 90 s for wandb.init and forever for run.finish. A server that answers at
# all answers within seconds, and training never needs it: what is not uploaded stays in the run's
# wandb folder for `wandb sync`. So on a node without a route wandb.init gives up after 30 s, and
# run.finish waits at most 120 s for uploads. A value set the wandb way (WANDB_INIT_TIMEOUT,
# WANDB_FINISH_TIMEOUT, a settings file) wins over these.
WANDB_TIMEOUTS_S = {"init_timeout": 30.0, "finish_timeout": 120.0}
# What a training's W&B summary gets at its end (log_summary): what a sweep reads
SUMMARY_KEYS = (
    "best_val_accuracy",
    "best_epoch",
    "total_seconds",
    "status",
    "parameters",
    "flops_per_image",
    "latency_ms",
    "test_accuracy",
    "test_loss",
)


class WandbUnavailable(CommandError, RuntimeError):
    """Inside a sweep, the W&B server gave no run: this run stops before training. The message is
    one line."""

    exit_code = EXIT_FAILED


def wandb_settings():
    """What wandb.init starts from: WANDB_* variables, settings files (`wandb login --host`),
    wandb's defaults. WandbSettingsError naming the variable for a value W&B refuses (wandb.init
    would raise on it, in every mode)."""
    from wandb.sdk import wandb_setup

    try:
        return wandb_setup.singleton().settings
    except ValueError as e:  # pydantic's ValidationError: WANDB_INIT_TIMEOUT=soon, WANDB_MODE=
        let_go_of_wandb()  # W&B keeps the settings it could not load: the next call reads them anew
        errors = e.errors() if hasattr(e, "errors") else []
        field = str(errors[0]["loc"][0]) if errors and errors[0].get("loc") else ""
        names = [
            name
            for name in os.environ
            if name.startswith("WANDB_") and field in (name[6:].lower(), "x_" + name[7:].lower())
        ]
        if not names:
            raise WandbSettingsError(f"W&B settings are not valid: {one_line(e)}") from None
        raise WandbSettingsError(
            f"{names[0]}={os.environ[names[0]]!r} is refused by W&B ({field}: "
            f"{errors[0].get('msg')}), whatever --wandb-mode says: unset "
            "it, or set a value W&B accepts"
        ) from None


def wandb_credentials_found(server: str) -> bool:
    """True when wandb.init would find credentials for `server` without a prompt; never touches the
    network.

    This is wandb's own lookup, the one wandb.init runs (wandb 0.31:
    wandb/sdk/lib/wbauth/authenticate.py): WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, the key `wandb
    login` wrote to ~/.netrc (or $NETRC) under the server's host, an api_key in a settings file. A
    hand-written netrc parse drifts from it: 0.31 logs in to api.forge.coreweave.com, not
    api.wandb.ai.
    """
    from wandb.errors import AuthenticationError
    from wandb.sdk.lib import wbauth

    try:
        found = wbauth.authenticate_session(
            host=server, source="part_2_cifar", prompt=False, update_session=False
        )
    except (AuthenticationError, ValueError) as e:
        raise WandbSettingsError(
            f"W&B credentials for {server} are not usable: {one_line(e)}"
        ) from None
    return found is not None


def resolve_wandb_mode(requested: str) -> str:
    """--wandb-mode wins, then WANDB_MODE, then online with credentials, else offline: never a login
    prompt. W&B's settings are checked first, in every mode (wandb_settings): a value W&B refuses
    fails here, before any work."""
    settings = wandb_settings()
    mode = requested if requested != "auto" else os.environ.get("WANDB_MODE", "auto")
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in ("auto", "online", "offline", "disabled"):
        raise WandbSettingsError(
            f"W&B mode {mode!r} is not allowed: use auto, online, offline or disabled"
        )
    if mode in ("offline", "disabled"):
        return mode
    if wandb_credentials_found(settings.base_url):
        return "online"
    if mode == "online":
        raise WandbSettingsError(
            f"--wandb-mode=online needs W&B credentials for {settings.base_url}: run "
            "`wandb login`, set WANDB_API_KEY, or use --wandb-mode offline"
        )
    print(
        f"W&B: no credentials for {settings.base_url}, logging offline to {settings.wandb_dir}; "
        f"upload later with: wandb sync {settings.wandb_dir}/offline-run-*",
        flush=True,
    )
    return "offline"


# The folders W&B writes outside its run folder: (its variable, the XDG variable and the folder
# under HOME it uses without it, the folder under <WANDB_DIR or .>/wandb/ given it instead)
WANDB_USER_FOLDERS = (
    # wandb-core's debug log (in wandb/logs; "failed to get logger path" on the console without
    # it), the artifact cache. The variable and XDG_CACHE_HOME are used as they are.
    ("WANDB_CACHE_DIR", "XDG_CACHE_HOME", ".cache", "", "cache"),
    # the staging of artifacts (--log-model's best.pt): "Unable to write staging files"
    ("WANDB_DATA_DIR", "XDG_DATA_HOME", ".local/share", "wandb", "data"),
)


def give_wandb_writable_folders() -> None:
    """Point WANDB_CACHE_DIR and WANDB_DATA_DIR at <WANDB_DIR or .>/wandb/cache and .../data where
    the folder W&B would use cannot be written (a read-only HOME: containers, HPC nodes) or there is
    none (HOME unset: cron, some batch systems).

    Without them wandb-core 0.31 logs ~18 lines of its own to the console around every run
    ("ERROR main: failed to get logger path ... read-only file system"), and a model artifact cannot
    be staged. The folders given are inside the git-ignored wandb/ folder W&B writes to anyway. A
    folder that can be written is kept, the user's variable included.
    """
    base = Path(os.environ.get("WANDB_DIR") or ".") / "wandb"
    for variable, xdg_variable, under_home, name, ours in WANDB_USER_FOLDERS:
        folder = user_folder(variable, xdg_variable, under_home, name)
        if folder is None or unwritable(folder):
            os.environ[variable] = str((base / ours).resolve())


def start_wandb_run(init: dict, in_sweep: bool | None = None) -> GuardedRun:
    """wandb.init(**init) with bounded waits, as a GuardedRun. An online run whose server gives no
    run goes offline, with one line; a run W&B cannot start at all (a folder it cannot write)
    trains without W&B, with one line.

    Inside a sweep (`in_sweep`; None: whether `wandb agent` set WANDB_SWEEP_ID) it raises
    WandbUnavailable instead. Sweeps have no offline mode: the server picks each next config, and
    Hyperband stops runs, from the metrics runs upload while they train. An offline sweep run
    would train unseen; a non-zero exit is a failed run to the agent, which stops itself after
    repeated failures (wandb_agent.py) instead of spending the sweep's budget blind.
    """
    import wandb

    in_sweep = in_wandb_sweep() if in_sweep is None else in_sweep
    give_wandb_writable_folders()
    settings = wandb_settings()
    timeouts = {
        key: getattr(settings, key) if key in settings.model_fields_set else default
        for key, default in WANDB_TIMEOUTS_S.items()
    }
    try:
        return GuardedRun(wandb.init(**init, settings=wandb.Settings(**timeouts)))
    except (
        wandb.errors.Error,
        TimeoutError,
    ) as e:  # CommError after init_timeout; TimeoutError past wandb's grace
        if init.get("mode") != "online":
            return without_wandb(init, e, in_sweep)
        reason = (
            f"{settings.base_url} gave no run within {timeouts['init_timeout']:g} s "
            f"({type(e).__name__}: {one_line(e)})"
        )
    except Exception as e:  # noqa: BLE001 (W&B's own failure, its process or files: not training's)
        return without_wandb(init, e, in_sweep)
    if in_sweep:
        raise WandbUnavailable(
            f"W&B: {reason}; a sweep run cannot log offline, so this run of sweep "
            f"{os.environ.get('WANDB_SWEEP_ID', '(unknown)')} stops before training"
        )
    let_go_of_wandb()  # the failed attempt holds the run id in wandb's service: "run ID is in use"
    try:
        run = wandb.init(**(init | {"mode": "offline"}), settings=wandb.Settings(**timeouts))
    except Exception as e:  # noqa: BLE001 (as above)
        return without_wandb(init, e, in_sweep)
    print(
        f"W&B: {reason}: logging offline to {run.settings.sync_dir}; upload later with: "
        f"wandb sync {run.settings.sync_dir}",
        flush=True,
    )
    return GuardedRun(run)


def without_wandb(init: dict, error: BaseException, in_sweep: bool) -> GuardedRun:
    """A disabled run standing in for one W&B could not start, said in one line; WandbUnavailable
    inside a W&B sweep, which cannot train unseen."""
    import wandb

    reason = f"W&B could not start a run ({type(error).__name__}: {one_line(error)})"
    if in_sweep:
        sweep = os.environ.get("WANDB_SWEEP_ID", "(unknown)")
        raise WandbUnavailable(
            f"{reason}; a sweep run cannot train unseen, so this run of sweep {sweep} stops before "
            "training"
        )
    let_go_of_wandb()
    print(f"W&B: {reason}: training without W&B; the run folder has everything", flush=True)
    return GuardedRun(wandb.init(**(init | {"mode": "disabled"})))


def let_go_of_wandb() -> None:
    """wandb.teardown(), whatever state W&B is in: after its process died the teardown fails the
    same way, and it also unregisters W&B's exit hook, which would print that failure at exit."""
    import wandb

    try:
        wandb.teardown()
    except Exception:  # noqa: BLE001 (W&B is gone or broken: nothing more is asked of it)
        pass


def let_go_of_finished_wandb() -> None:
    """At exit, let go of W&B (let_go_of_wandb) once no run is left to finish.

    W&B's own exit hook tears its process down too, and it prints a traceback ("Exception ignored
    in atexit callback ... ConnectionResetError") when that process died after the last run had
    finished: a local sweep's report, written after its last trial, leaves it seconds to die in.
    GuardedRun registers this after W&B's hook, so it runs first (atexit: last in, first out), and
    W&B's teardown unregisters W&B's hook (wandb 0.31: service_connection.py,
    _start_and_connect_service). A run still open is left to W&B's hook, which finishes it with the
    process's exit code."""
    import wandb

    if wandb.run is None:
        let_go_of_wandb()


class GuardedRun:
    """A wandb Run whose failures cost W&B only, never the training: the first call that raises
    (wandb-core killed, a staging folder W&B cannot write, an upload that fails) prints one line
    saying what W&B lost and how to sync what it has; W&B is not asked again but to finish, and if
    that fails too, it is let go quietly. What training reads (`id`, `config`, `settings`) is the
    run's own."""

    def __init__(self, run) -> None:
        self.run = run
        self.lost = ""  # "failed": a call failed, W&B is asked no more; "gone": its process is gone
        self.epoch = 0  # the last epoch W&B has (what `log` got)
        self.summary = GuardedSummary(self)
        without_import_telemetry()
        # asyncio runs only W&B's connection here; with W&B's process gone it warns of each write to
        # the closed socket ("socket.send() raised exception."), even before a call fails: the one
        # line of the failure says it for people.
        logging.getLogger("asyncio").setLevel(logging.ERROR)
        atexit.unregister(let_go_of_finished_wandb)  # after W&B's exit hook of this run's process
        atexit.register(let_go_of_finished_wandb)

    def __getattr__(self, name: str):  # id, config, settings, name ...: read from the run
        return getattr(self.run, name)

    def attempt(self, what: str, call, *args, loses: str = "", **kwargs):
        """call(*args, **kwargs), or None once W&B has failed; `what` names it and `loses` what W&B
        then lacks (default: every later epoch) in the one line of a failure."""
        if self.lost:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (a failure of W&B is W&B's; a stop is no Exception)
            self.lost = "gone" if wandb_process_gone(e) else "failed"
            self.stop_console_copy()
            loses = loses or f"W&B loses this run{self.after_epoch()}; the training goes on"
            sync = getattr(self.run.settings, "sync_dir", None)  # W&B may not have flushed it all
            print(
                f"W&B: {what} failed ({type(e).__name__}: {one_line(e)}): {loses}"
                + (f"; what W&B saved is uploaded with: wandb sync {sync}" if sync else ""),
                flush=True,
            )
            return None

    def after_epoch(self) -> str:
        """' after epoch N' for the last epoch W&B has, or '' before the first."""
        return f" after epoch {self.epoch}" if self.epoch else ""

    def stop_console_copy(self) -> None:
        """Stop W&B copying what the training prints: with its process gone, each printed line would
        be sent to a closed socket. W&B's own finish stops the copy the same way (wandb 0.31:
        Run._console_stop, a private method, so only where it exists)."""
        stop = getattr(self.run, "_console_stop", None)
        try:
            if callable(stop):
                stop()
        except Exception:  # noqa: BLE001 (W&B is failing already: its console copy is not needed)
            pass

    def log(self, metrics: dict, step: int) -> None:
        self.attempt(f"logging epoch {step}", self.run.log, metrics, step=step)
        if not self.lost:
            self.epoch = step

    def define_metric(self, *args, **kwargs) -> None:
        self.attempt("define_metric", self.run.define_metric, *args, **kwargs)

    def mark_preempting(self) -> None:
        """Tell W&B the run stops to be requeued (a stop signal in a sweep: cli.requeues); called as
        the training stops, so a failure's line says so, not that the training goes on."""
        loses = f"W&B loses this run{self.after_epoch()} and may not requeue it"
        loses += "; the training stops here"
        self.attempt("marking the run preempting", self.run.mark_preempting, loses=loses)

    def finish(self, exit_code: int) -> None:
        """Finish the run with `exit_code` (bounded: finish_timeout), after a failure too: W&B may
        still be there to record the end. If it is not, let go of W&B quietly."""
        if not self.lost:
            self.attempt(
                "finishing the run",
                self.run.finish,
                exit_code=exit_code,
                loses="W&B may lack the run's end (the run folder has everything)",
            )
            if not self.lost:
                return
        elif self.lost == "failed":  # its process may still be there to record the end
            try:
                self.run.finish(exit_code=exit_code)
                return
            except Exception:  # noqa: BLE001 (said already: W&B failed before)
                pass
        let_go_of_wandb()


def wandb_process_gone(error: Exception) -> bool:
    """Whether `error` says W&B's process is gone, whichever way the call met it: the socket to it
    reset or closed, or W&B's own mailbox closed with the connection (wandb 0.31:
    wandb/sdk/mailbox/mailbox.py, Mailbox.close), so a request waiting for an answer is abandoned
    and a new one refused."""
    if isinstance(error, ConnectionError):
        return True
    try:
        from wandb.sdk.mailbox import HandleAbandonedError, MailboxClosedError
    except ImportError:  # another wandb version: only the socket's errors say it
        return False
    return isinstance(error, (HandleAbandonedError, MailboxClosedError))


def without_import_telemetry() -> None:
    """Remove W&B's import hooks. W&B reports which libraries a run imports (torchvision, sklearn,
    ...) from a hook that talks to its process at their first import, anywhere in the training
    (wandb 0.31: wandb_run._register_telemetry_import_hooks); with that process gone, the import
    would raise in code that is not W&B's. W&B's own teardown removes them the same way; without
    them W&B only lacks that list."""
    try:
        from wandb.sdk.lib import import_hooks

        import_hooks.unregister_all_post_import_hooks()
    except (ImportError, AttributeError):  # another wandb version: nothing of the kind to remove
        pass


class GuardedSummary:
    """run.summary through GuardedRun.attempt: `[key] = value`, `update`, and `get` (its default
    once W&B has failed)."""

    def __init__(self, guarded: GuardedRun) -> None:
        self.guarded = guarded

    def __setitem__(self, key: str, value: object) -> None:
        summary = self.guarded.run.summary
        self.guarded.attempt(f"the summary's {key}", summary.__setitem__, key, value)

    def update(self, values: dict) -> None:
        self.guarded.attempt("the summary", self.guarded.run.summary.update, values)

    def get(self, key: str, default: object = None) -> object:
        summary = self.guarded.run.summary
        found = self.guarded.attempt(f"reading the summary's {key}", summary.get, key, default)
        return default if found is None else found


# --------------------------------------------------------------------------------------------------
# `wandb agent`'s protocol: what it hands the run it launches, and what it reads back


def in_wandb_sweep() -> bool:
    """Whether this process is a run `wandb agent` launched: it sets WANDB_SWEEP_ID."""
    return bool(os.environ.get("WANDB_SWEEP_ID"))


def run_init(mode: str, project: str, run_id: str) -> dict:
    """wandb.init's keywords (but config) for one training: resumable under its id, in `project`;
    inside a W&B sweep the agent chooses project and id (wandb.init ignores them there)."""
    init = {"mode": mode, "resume": "allow"}
    if not in_wandb_sweep():
        init.update(project=project, id=run_id)
    return init


def without_wandb_internals(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without W&B's internal `--_key=value` or `--_key value` arguments, their names). A
    requeued sweep run comes back with its whole W&B config as arguments, `--_wandb={...}` included
    (wandb issues 4237, 9143)."""
    kept, internal, skip_value = [], [], False
    for arg in argv:
        if skip_value and not arg.startswith("--"):
            skip_value = False
            continue
        skip_value = arg.startswith("--_") and "=" not in arg
        if arg.startswith("--_"):
            internal.append(arg.split("=", 1)[0])
        else:
            kept.append(arg)
    return kept, internal


def parse_agent_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser`'s options in the arguments of a run `wandb agent` launched (`argv`, None:
    sys.argv's): W&B's internal `--_...` arguments are ignored (one line), and `unrecognized` names
    any other unknown one (else None), for the run to fail with it where the sweep is watched."""
    argv, internal = without_wandb_internals(sys.argv[1:] if argv is None else list(argv))
    if internal:
        print(f"ignored W&B's internal arguments {', '.join(sorted(set(internal)))}", flush=True)
    args, unknown = parser.parse_known_args(argv)
    args.unrecognized = f"unrecognized arguments: {' '.join(unknown)}" if unknown else None
    return args


def defaults_used(run: GuardedRun, config: dict) -> None:
    """A W&B sweep's null means the default: the run's config keeps what the sweep drew (None), its
    summary's defaults_used what the run used (in `config`, the defaults filled in), said in one
    line."""
    nulls = {
        key: value
        for key, value in config.items()
        if key in run.config and run.config[key] is None and value is not None
    }
    if nulls:
        run.summary["defaults_used"] = nulls
        print(
            f"null means the default: {', '.join(f'{k}={v}' for k, v in nulls.items())}", flush=True
        )


def fail_sweep_run(line: str, config: dict, mode: str) -> int:
    """Inside a W&B sweep, a value the trainer refuses must show where the sweep is watched: start
    the agent's run only to finish it as failed with the line in its summary (and printed). Exit
    code 2."""
    try:
        run = start_wandb_run({"mode": mode, "resume": "allow", "config": config}, in_sweep=True)
    except WandbUnavailable:  # no server to show it on: the line here is all there is
        return fail(line, EXIT_BAD_INPUT)
    return end_run(run, EXIT_BAD_INPUT, {"status": "failed", "error": line})[0]


def end_run(run: GuardedRun, code: int, summary: dict, show: bool = True) -> tuple[int, dict]:
    """Print a failure's line (`show`), record it in the W&B summary, finish the run with `code`;
    (code, summary)."""
    if "error" in summary:
        if show:
            print(f"error: {summary['error']}", file=sys.stderr, flush=True)
        run.summary["error"] = summary["error"]
    run.finish(exit_code=code)  # bounded: start_wandb_run set finish_timeout
    return code, summary


def log_summary(run: GuardedRun, summary: dict) -> None:
    """The run's end in its W&B summary: the keys of SUMMARY_KEYS it has; a diverged run is marked,
    with val_accuracy 0 if no epoch finished: the sweep's optimizer learns the region is bad."""
    run.summary.update({key: summary[key] for key in SUMMARY_KEYS if summary.get(key) is not None})
    if summary["status"] == "diverged":
        run.summary.update({"diverged": True, "val_accuracy": summary["best_val_accuracy"] or 0.0})


def upload_model(run: GuardedRun, path: Path, summary: dict) -> None:
    """`path`, the best epoch's checkpoint of the run whose summary is `summary`, as the run's model
    artifact, aliases best and latest (W&B stages a copy first); a failure costs W&B only, said in
    one line."""
    import wandb

    metadata = {
        "config": summary["config"],
        "val_accuracy": summary["best_val_accuracy"],
        "epoch": summary["best_epoch"],
    }

    def log_artifact() -> None:
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
        artifact.add_file(str(path))
        run.run.log_artifact(artifact, aliases=["best", "latest"])

    run.attempt(
        "uploading best.pt as a model artifact",
        log_artifact,
        loses=f"W&B has the run but not its model artifact (the model is {path})",
    )
