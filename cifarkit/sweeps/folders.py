"""Where a study's trials live on disk: the study's folder under --runs-dir (its own, even beside
another study of the same name) and a folder per trial, each marked as whose it is; a retry
continues in a copy of the dead attempt's folder.

    <runs-dir>/<study>/study.json               STUDY_MARKER: the study (name, uid) it holds
    <runs-dir>/<study>/trial-NNNN/trial.json    TRIAL_MARKER: which study's trial the folder is
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import ExitStack
from pathlib import Path

import optuna

from cifarkit.core import cli
from cifarkit.core.cli import write_json_atomic
from cifarkit.core.folders import OWNER_LOCK, SEEDS_MARKER, STUDY_MARKER, own_folder
from cifarkit.core.run_files import LAST_CHECKPOINT, RESUME_KEYS, CheckpointError, load_checkpoint
from cifarkit.sweeps import space

TRIAL_MARKER = "trial.json"  # in a trial's folder: which study's trial it is (own_trial_folder)


class TrialFolderTaken(cli.CommandError):
    """A trial folder that TRIAL_MARKER says is another study's or trial's; the line names both."""

    exit_code = cli.EXIT_BAD_INPUT


class DamagedMarker(cli.CommandError):
    """A STUDY_MARKER or TRIAL_MARKER that is there but cannot be read: whose the folder is cannot
    be told, so it is not taken; the line names the file."""

    exit_code = cli.EXIT_BAD_INPUT


def read_marker(path: Path) -> dict | None:
    """A STUDY_MARKER or TRIAL_MARKER as a dict; None if there is none. DamagedMarker if one is
    there but is not a JSON object in UTF-8 (a folder in its place, cut, another encoding): taken
    as "none", it would hand the folder to whichever study came next."""
    try:
        found = json.loads(cli.read_regular_text(path))
        why = "not a JSON object"
    except FileNotFoundError:
        return None
    # UnicodeDecodeError is a ValueError; a FIFO in its place is NotARegularFile
    except (OSError, cli.NotARegularFile, *cli.DAMAGED_TEXT) as e:
        found, why = None, getattr(e, "strerror", None) or cli.one_line(e)
    if not isinstance(found, dict):
        raise DamagedMarker(
            f"{path} cannot be read ({why}): it says which study the folder holds; restore it, or "
            "move the folder aside"
        )
    return found


def study_folder(runs_dir: Path, name: str, uid: str | None, claim: bool = True) -> Path:
    """The folder of the study's trial folders and trials.csv: <runs-dir>/<study>, or
    <runs-dir>/<study>-<uid> when that one holds another study of the same name (its own journal
    or database, one shared --runs-dir); <study> as space.safe_file_name makes it.

    Its STUDY_MARKER says whose it is: written once, exclusively (a hard link fails if the name
    exists, on NFS too), by the first study that `claim`s it; a folder without one (an older
    version's) goes to the first. A folder select_model.py keeps its seeds in (SEEDS_MARKER: a study
    named `selection`) is never a study's.
    """
    base = space.safe_file_name(name)
    for folder in (runs_dir / base, runs_dir / f"{base}-{uid}"):
        if (folder / SEEDS_MARKER).exists():
            continue
        marker = folder / STUDY_MARKER
        if claim and read_marker(marker) is None:
            folder.mkdir(parents=True, exist_ok=True)
            mine = folder / f"{STUDY_MARKER}.{os.getpid()}.tmp"
            try:
                mine.write_text(json.dumps({"study": name, "uid": uid}) + "\n")
                os.link(mine, marker)
            except FileExistsError:  # another study (or this one, elsewhere) claimed it first
                pass
            finally:
                mine.unlink(missing_ok=True)
        owner = read_marker(marker)
        if owner is None or owner.get("uid") == uid:
            break
    return folder  # the second is this study's alone: no other has its uid


def own_trial_folder(
    study_dir: Path, uid: str, study: optuna.Study, trial: optuna.Trial, claim: ExitStack
) -> None:
    """Hold the trial's folder in study_dir for this process (`claim` lets go of it), marked as
    this trial's of the study `uid` names.

    FolderInUse if another process holds it; TrialFolderTaken if its TRIAL_MARKER names another
    study's or trial's.
    """
    run_dir = trial_folder(study_dir, trial.number)
    claim.enter_context(own_folder(run_dir, "trial folder"))
    mine = {"study": study.study_name, "uid": uid, "trial": trial.number}
    found = read_marker(run_dir / TRIAL_MARKER)
    if found not in (None, mine):
        raise TrialFolderTaken(
            f"trial folder {run_dir} holds trial {found.get('trial')} of study "
            f"{found.get('study')!r} ({found.get('uid')}), not trial {trial.number} of "
            f"{study.study_name!r} ({uid}): move it aside"
        )
    write_json_atomic(mine, run_dir / TRIAL_MARKER)


def trial_folder(study_dir: Path, number: int) -> Path:
    return study_dir / f"trial-{number:04d}"


def resume_point(previous: Path, run_dir: Path, expected: dict) -> dict | None:
    """For a retry, the dead attempt's folder copied into this trial's, and its last.pt, if this
    machine can read it and the folder is that attempt's: its TRIAL_MARKER, where it has one (older
    versions wrote none), is `expected` (the study's name and uid, the dead trial's number). Its
    owner.lock and marker are not copied."""
    if not (previous / LAST_CHECKPOINT).is_file():
        return None
    try:
        found = read_marker(previous / TRIAL_MARKER)
    except DamagedMarker as e:
        print(f"cannot resume: {e}; starting over", flush=True)
        return None
    if found not in (None, expected):
        print(
            f"cannot resume: {previous} holds trial {found.get('trial')} of study "
            f"{found.get('study')!r} ({found.get('uid')}), not trial {expected['trial']} of this "
            "study; starting over",
            flush=True,
        )
        return None
    shutil.copytree(
        previous,
        run_dir,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(OWNER_LOCK, TRIAL_MARKER),
    )
    try:
        return load_checkpoint(run_dir / LAST_CHECKPOINT, needs=RESUME_KEYS)
    except CheckpointError as e:
        print(f"cannot resume ({e}); starting over", flush=True)
        return None
