"""W&B connection policy: online only with credentials wandb itself would use, never a login prompt, bounded waits,
and an offline fallback that never costs a training. Used by part_2_cifar.run_training and the sweep commands.

Behaviour of wandb 0.31 this relies on, read in its source: wandb/sdk/lib/wbauth/authenticate.py (the credential
lookup wandb.init runs), wandb/sdk/wandb_settings.py (init_timeout 90 s, finish_timeout 0 = forever by default).
README "W&B without a network (HPC clusters)" says what a user sees.
"""

from __future__ import annotations

import os

from cli import EXIT_BAD_INPUT, EXIT_FAILED


class WandbSettingsError(ValueError):
    """W&B's settings or credentials cannot be used; the message is one line for people."""

    exit_code = EXIT_BAD_INPUT


# W&B's own defaults wait 90 s for wandb.init and forever for run.finish. A server that answers at all answers within
# seconds, and training never needs it: what is not uploaded stays in the run's wandb folder for `wandb sync`. So on
# a node without a route wandb.init gives up after 30 s, and run.finish waits at most 120 s for uploads. A value set
# the wandb way (WANDB_INIT_TIMEOUT, WANDB_FINISH_TIMEOUT, a settings file) wins over these.
WANDB_TIMEOUTS_S = {"init_timeout": 30.0, "finish_timeout": 120.0}


class WandbUnavailable(RuntimeError):
    """Inside a sweep, the W&B server gave no run: this run stops before training. The message is one line."""

    exit_code = EXIT_FAILED


def _one_line(error: BaseException, limit: int = 240) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def wandb_settings():
    """What wandb.init starts from: WANDB_* variables, settings files (`wandb login --host`), wandb's defaults."""
    from wandb.sdk import wandb_setup

    try:
        return wandb_setup.singleton().settings
    except ValueError as e:  # pydantic's ValidationError, e.g. WANDB_INIT_TIMEOUT=soon
        raise WandbSettingsError(f"W&B settings are not valid: {_one_line(e)}") from None


def wandb_credentials_found(server: str) -> bool:
    """True when wandb.init would find credentials for `server` without a prompt; never touches the network.

    This is wandb's own lookup, the one wandb.init runs (wandb 0.31: wandb/sdk/lib/wbauth/authenticate.py):
    WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, the key `wandb login` wrote to ~/.netrc (or $NETRC) under the server's
    host, an api_key in a settings file. A hand-written netrc parse drifts from it: 0.31 logs in to
    api.forge.coreweave.com, not api.wandb.ai.
    """
    from wandb.errors import AuthenticationError
    from wandb.sdk.lib import wbauth

    try:
        found = wbauth.authenticate_session(host=server, source="part_2_cifar", prompt=False, update_session=False)
    except (AuthenticationError, ValueError) as e:
        raise WandbSettingsError(f"W&B credentials for {server} are not usable: {_one_line(e)}") from None
    return found is not None


def resolve_wandb_mode(requested: str) -> str:
    """--wandb-mode wins, then WANDB_MODE, then online with credentials, else offline: never a login prompt."""
    mode = requested if requested != "auto" else os.environ.get("WANDB_MODE", "auto")
    mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    if mode not in ("auto", "online", "offline", "disabled"):
        raise WandbSettingsError(f"W&B mode {mode!r} is not allowed: use auto, online, offline or disabled")
    if mode in ("offline", "disabled"):
        return mode
    settings = wandb_settings()
    if wandb_credentials_found(settings.base_url):
        return "online"
    if mode == "online":
        raise WandbSettingsError(f"--wandb-mode=online needs W&B credentials for {settings.base_url}: run "
                                 "`wandb login`, set WANDB_API_KEY, or use --wandb-mode offline")
    print(f"W&B: no credentials for {settings.base_url}, logging offline to {settings.wandb_dir}; "
          f"upload later with: wandb sync {settings.wandb_dir}/offline-run-*", flush=True)
    return "offline"


def start_wandb_run(init: dict, in_sweep: bool):
    """wandb.init(**init) with bounded waits. An online run whose server gives no run goes offline, with one line.

    Inside a sweep (`wandb agent` set WANDB_SWEEP_ID) it raises WandbUnavailable instead. Sweeps have no offline mode:
    the server picks each next config, and Hyperband stops runs, from the metrics runs upload while they train. An
    offline sweep run would train unseen; a non-zero exit is a failed run to the agent, which stops itself after
    repeated failures (wandb_agent.py) instead of spending the sweep's budget blind.
    """
    import wandb

    settings = wandb_settings()
    timeouts = {key: getattr(settings, key) if key in settings.model_fields_set else default
                for key, default in WANDB_TIMEOUTS_S.items()}
    try:
        return wandb.init(**init, settings=wandb.Settings(**timeouts))
    except (wandb.errors.Error, TimeoutError) as e:  # CommError after init_timeout; TimeoutError past wandb's grace
        if init.get("mode") != "online":
            raise
        reason = (f"{settings.base_url} gave no run within {timeouts['init_timeout']:g} s "
                  f"({type(e).__name__}: {_one_line(e)})")
    if in_sweep:
        raise WandbUnavailable(f"W&B: {reason}; a sweep run cannot log offline, so this run of sweep "
                               f"{os.environ.get('WANDB_SWEEP_ID', '(unknown)')} stops before training")
    wandb.teardown()  # the failed attempt still holds the run id in wandb's service: "run ID is in use" otherwise
    run = wandb.init(**(init | {"mode": "offline"}), settings=wandb.Settings(**timeouts))
    print(f"W&B: {reason}: logging offline to {run.settings.sync_dir}; upload later with: "
          f"wandb sync {run.settings.sync_dir}", flush=True)
    return run
