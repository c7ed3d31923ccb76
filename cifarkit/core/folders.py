"""Folders: one process at a time writes one (own_folder), and whether one can be written at all
(unwritable).

    <folder>/owner.lock  OWNER_LOCK: who holds a run, trial, selection or export folder

Every command that writes a folder holds it first: a run folder (the trainer), a trial folder
(local_sweep.py), the selection (select_model.py), an export (trt_export.py). A second process
is refused in one line naming the first (FolderInUse).
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from cifarkit.core.cli import EXIT_BAD_INPUT, CommandError

OWNER_LOCK = "owner.lock"
# In select_model.py's seeds folder (RUNS/selection): the folder is the selection's, not a study's
# (sweeps/folders.py: study.json) or a run's. Whose a folder is goes by what it holds, not its name.
SEEDS_MARKER = "seeds.json"
# In a local sweep's study folder (sweeps/folders.py): the study (name, uid) whose trials it holds
STUDY_MARKER = "study.json"


class FolderInUse(CommandError):
    """Another process holds the folder: two writers would replace each other's files."""

    exit_code = EXIT_BAD_INPUT


HOLDER_WAIT_SECONDS = 1.0  # a holder names itself just after it takes the lock: a reader waits this


@contextmanager
def own_folder(folder: Path, what: str) -> Iterator[Path]:
    """Hold `folder` (made if missing) for this process while inside.

    The hold is an exclusive flock on <folder>/owner.lock, which then names the holder: pid, host,
    since when, and the command. Another process holding it is FolderInUse, one line naming it;
    `what` names the folder there ("run folder", "trial folder", ...).
    The kernel drops an flock when its process ends, however it ends (SIGKILL, a crash): a dead
    holder never blocks the next process, and no stale lock needs removing. On NFS, Linux takes an
    flock as a lock on the whole file at the server: machines sharing a runs folder exclude each
    other. A folder this made and left with nothing in it but owner.lock (a run that never
    started: no W&B server in a sweep) is removed on the way out, with the folders made for it.
    """
    folder = Path(folder)
    made = []  # the folder and those above it that do not exist yet, deepest first
    for above in (folder, *folder.parents):
        if above.exists():
            break
        made.append(above)
    lock = locked(folder / OWNER_LOCK, what)
    try:
        lock.truncate(0)
        since = datetime.now().astimezone().isoformat(timespec="seconds")
        command = Path(sys.argv[0]).name
        lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {since} ({command})\n")
        lock.flush()
        yield folder
    finally:
        if made and [path.name for path in folder.iterdir()] == [OWNER_LOCK]:
            (folder / OWNER_LOCK).unlink()  # while held: a waiter then finds it gone (locked)
            for empty in made:
                try:
                    empty.rmdir()
                except OSError:  # another process's files are in it
                    break
        lock.close()


def locked(path: Path, what: str):
    """`path` opened and exclusively flock'ed, its folder made if missing; FolderInUse if held.

    A lock file removed by its holder (own_folder) after another opened it is not the one at
    `path` any more: locking it would exclude nobody, so the one at `path` is opened again.
    """
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = holder_of(f)
            f.close()
            raise FolderInUse(
                f"{what} {path.parent} is in use by {holder}: two processes would "
                "overwrite each other's files; wait for it to end, or use another folder"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


def holder_of(lock_file) -> str:
    """What the holder of an open owner.lock wrote of itself; waits HOLDER_WAIT_SECONDS for it."""
    deadline = time.monotonic() + HOLDER_WAIT_SECONDS
    while True:
        lock_file.seek(0)
        text = lock_file.read().strip()
        if text or time.monotonic() > deadline:
            return text or "another process (it has not written its name)"
        time.sleep(0.05)


def unwritable(folder: Path) -> str | None:
    """Why no file can be written in `folder`, or None if one can. A folder that does not exist yet
    is judged by the nearest one above it that does (nothing is created). A real file is tried and
    removed at once: permission bits tell nothing for root, ACLs or read-only mounts."""
    for existing in (Path(folder), *Path(folder).parents):
        try:
            if existing.exists():
                break
        except OSError as e:  # a folder above that cannot be searched
            return f"{existing} cannot be read ({e.strerror or e})"
    if not existing.is_dir():
        return f"{existing} is a file"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"{existing} is not writable ({e.strerror or e})"
    return None


def user_folder(variable: str, xdg_variable: str, under_home: str, name: str) -> Path | None:
    """Where a library keeps a folder of the user's (a cache, its data, its settings) by the XDG
    rule on Linux: $variable (the library's own, e.g. WANDB_CACHE_DIR), else $xdg_variable/name,
    else $HOME/under_home/name; None when neither that nor HOME is set (cron, some containers)."""
    if os.environ.get(variable):
        return Path(os.environ[variable])
    base = os.environ.get(xdg_variable) or (
        os.environ.get("HOME") and str(Path(os.environ["HOME"], under_home))
    )
    return Path(base, name) if base else None
