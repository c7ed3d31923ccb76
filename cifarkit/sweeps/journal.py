"""Optuna's journal file, the study store of a local sweep on one machine (local_sweep.py), safe
against a cut or damaged record.

Optuna's JournalFileBackend appends one JSON record per line, under a lock file. A writer that dies
mid-append (a machine that lost power, a client cut off from NFS) leaves a last line with no
newline: Optuna's reader skips it, but the next append is glued onto it, and once a line Optuna
cannot parse has another after it, every read of the study fails (optuna issue 5138). Here:

- before appending, under Optuna's lock, a cut last record is moved to `<journal>.cut-at-<byte>`
  beside the journal and the journal truncated to its last whole record, with one line saying so.
  Every reader had skipped that record, so the study stays as every process saw it, and the cut
  bytes are kept;
- a damaged line (a terminated line that is not one record, e.g. a cut record with the next glued
  onto it) is never dropped or repaired: DamagedJournal says which line, what is safe to delete
  and the command that does it.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.storages.journal._storage import JournalOperation

from cifarkit.core.cli import EXIT_BAD_INPUT, EXIT_FAILED, CommandError, FileFailed

# how every record Optuna writes begins (json.dumps of {"op_code": ..., ...})
RECORD_START = b'{"op_code":'
TAIL_CHUNK = 1 << 16  # bytes read at a time when looking back from the end for the last line


class DamagedJournal(CommandError):
    """A journal line Optuna cannot read; the message is one line: the file, the line, how to
    recover."""

    exit_code = EXIT_BAD_INPUT  # a file the user must fix


class JournalReadOnly(CommandError):
    """The journal file exists but this process may not write it (its mode, its owner, a read-only
    mount); the message is one line saying what to do."""

    # a file the user must fix: the same command fails the same way until then
    exit_code = EXIT_BAD_INPUT


class JournalFailed(CommandError):
    """The journal file cannot be read or written (a full disk, a lost NFS mount); the message is
    one line, the FileFailed line of the OSError."""

    exit_code = EXIT_FAILED


def _line_start(f, end: int) -> int:
    """The offset just after the last newline before byte `end` of the open binary file `f` (0 if
    none)."""
    pos = end
    while pos > 0:
        step = min(TAIL_CHUNK, pos)
        pos -= step
        f.seek(pos)
        found = f.read(step).rfind(b"\n")
        if found >= 0:
            return pos + found + 1
    return 0


OP_CODES = frozenset(op.value for op in JournalOperation)


def _is_record(line: bytes) -> bool:
    """Whether a line reads as an Optuna record: a JSON object with a known op_code and a worker_id
    (Optuna's replay indexes both before anything else, and fails with a traceback on anything
    less)."""
    try:
        return _is_log(json.loads(line))
    except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
        return False


def _is_log(log: Any) -> bool:
    return (
        isinstance(log, dict)
        and type(log.get("op_code")) is int
        and log["op_code"] in OP_CODES
        and isinstance(log.get("worker_id"), str)
    )


def _what_it_is(line: bytes) -> str:
    """What a line that is not a record is, in words (the line without its newline)."""
    if not line.strip():
        return "it is empty (not written by Optuna)"
    if line.startswith(RECORD_START[:2]) and b"\0" not in line:
        try:
            json.loads(line)
        except ValueError:  # the start of a record: where Optuna's writer died
            return "it is a record cut short (its writer died mid-append; never applied)"
    try:
        json.loads(line)
    except ValueError:
        return "it is not JSON (not written by Optuna; never applied)"
    return "it is JSON but not an Optuna record (no known op_code and worker_id; never applied)"


def whole_record_at(line: bytes) -> int | None:
    """Where a whole record begins inside a damaged line (a cut record with the next one glued on),
    or None.

    The glued record is the shortest tail of the line that starts like a record and parses as one: a
    nested {"op_code": ...} inside it does not parse alone (the closing braces after it are
    unmatched).
    """
    start = line.rfind(RECORD_START)
    while start > 0:
        if _is_record(line[start:]):
            return start
        start = line.rfind(RECORD_START, 0, start)
    return None


def damaged_line(path: Path) -> tuple[int, bytes] | None:
    """The first line (1-based number, bytes without its newline) that ends in a newline but is not
    a record."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if line.endswith(b"\n") and not _is_record(line):
                return number, line.rstrip(b"\r\n")
    return None


def damage_message(path: Path, number: int | None = None, why: str = "") -> str:
    """One line: which line of the journal is damaged and how to recover, keeping a copy (sed
    -i.bak).

    `number` (1-based) names the line when the caller knows it (a record Optuna failed to apply,
    `why` in words); else the first line that is not a record."""
    found = damaged_line(path) if number is None else _line(path, number)
    if found is None:  # changed since Optuna read it
        return f"journal {path} could not be read; run the command again"
    number, line = found
    quoted = shlex.quote(str(path))
    start = whole_record_at(line)
    if start:
        what = (
            f"its first {start} bytes are a record cut short (its writer died mid-append; never "
            "applied) with a whole record glued after them"
        )
        fix = f"LC_ALL=C sed -i.bak '{number}s/^.\\{{{start}\\}}//' {quoted}"
        safe = f"delete those {start} bytes"
    else:
        what = why or _what_it_is(line)
        fix = f"sed -i.bak '{number}d' {quoted}"
        safe = "delete that line"
    return (
        f"journal {path} line {number} is damaged: {what}; Optuna cannot read the study past it. "
        f"It is safe to {safe}, keeping a copy of the file: {fix}"
    )


def _line(path: Path, number: int) -> tuple[int, bytes] | None:
    """(number, line `number` of the file without its newline), or None if the file is shorter."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if n == number:
                return number, line.rstrip(b"\r\n")
    return None


def set_aside_cut_record(path: Path) -> None:
    """Before an append, under the journal's lock: a last record with no newline (its writer died
    mid-append) goes to <journal>.cut-at-<byte> and the journal is truncated to its last whole
    record; a damaged last line raises DamagedJournal, since a record appended after it would make
    the whole study unreadable."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) != b"\n":
            start = _line_start(f, size)
            f.seek(start)
            cut = f.read()
            aside = path.with_name(f"{path.name}.cut-at-{start}")
            with open(aside, "ab") as kept:  # append: the same offset cut twice keeps both
                kept.write(cut + b"\n")
                kept.flush()
                os.fsync(kept.fileno())
            f.truncate(start)
            f.flush()
            os.fsync(f.fileno())
            print(
                f"journal {path}: its last record ({len(cut)} bytes) was cut short when its writer "
                "died "
                f"mid-append; every reader had skipped it; moved it to {aside}",
                file=sys.stderr,
                flush=True,
            )
            size = start
        if size and not _is_record(_last_line(f, size)):
            raise DamagedJournal(damage_message(path))


def _last_line(f, size: int) -> bytes:
    """The last line of a file that ends with a newline (size > 0), without its newline."""
    start = _line_start(f, size - 1)
    f.seek(start)
    return f.read(size - start).rstrip(b"\r\n")


def check(path: Path) -> None:
    """Before opening: DamagedJournal if the last whole line is damaged (Optuna would skip it, and
    the next append would bury it in the middle). A cut last record is left for the first append to
    set aside."""
    if path.exists() and not path.is_file():  # Optuna would fail on it at each read: no retry helps
        raise DamagedJournal(
            f"journal {path} is not a file (a folder or a device in its place): move it aside, or "
            "give --storage a journal file"
        )
    if not path.is_file():
        return
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            # past the last newline: a cut record after it is not checked here
            end = _line_start(f, size)
            if end and not _is_record(_last_line(f, end)):
                raise DamagedJournal(damage_message(path))
    except OSError as e:
        raise JournalFailed(FileFailed(e, "read the journal", path)) from None


class SafeJournalFile(JournalFileBackend):
    """Optuna's JournalFileBackend that never appends after a cut record and names a damaged
    line."""

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        try:
            yield from super().read_logs(log_number_from)
        # json.JSONDecodeError, or Optuna's "Invalid log format." for a cut line mid-file
        except ValueError:
            raise DamagedJournal(damage_message(Path(self._file_path))) from None
        except OSError as e:
            raise JournalFailed(FileFailed(e, "read the journal", self._file_path)) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Optuna's append (one line per record, fsync'd, under its lock file), after setting aside
        a cut record."""
        path = Path(self._file_path)
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self._lock.acquire()
        try:
            set_aside_cut_record(path)
            with open(path, "ab") as f:
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
        except PermissionError:
            raise JournalReadOnly(read_only_message(path)) from None
        except OSError as e:
            if e.errno == errno.EROFS:
                raise JournalReadOnly(read_only_message(path)) from None
            raise JournalFailed(FileFailed(e, "write the journal", path)) from None
        finally:
            self._lock.release()


def read_only_message(path: Path) -> str:
    """One line for a journal this process may not write, and what to do."""
    return (
        f"journal {path} cannot be written by this user (its mode, owner or a read-only mount): "
        "make it "
        f"writable (chmod u+w {shlex.quote(str(path))}), or give --storage a journal file you can "
        "write; --report only reads it"
    )


class SafeJournalStorage(JournalStorage):
    """Optuna's JournalStorage on a SafeJournalFile: a record another process wrote that Optuna
    cannot apply (a line of JSON that is not an Optuna record, an op_code without its fields) is
    DamagedJournal naming its line, not Optuna's KeyError, TypeError or AssertionError."""

    def _sync_with_backend(self) -> None:
        replay = self._replay_result
        logs = self._backend.read_logs(replay.log_number_read)
        current: list[Any] = [None]

        def watched() -> Iterator[Any]:
            for log in logs:
                current[0] = log
                yield log

        try:
            replay.apply_logs(watched())
        except (DamagedJournal, JournalFailed, JournalReadOnly):
            raise
        except Exception as e:
            log = current[0]
            # Optuna raises on purpose only for a record this process wrote (a finished trial, a
            # study that exists)
            if _is_log(log) and log["worker_id"] == replay.worker_id:
                raise
            # log_number_read was counted before the record was applied: it is the record's 1-based
            # line number
            why = (
                ""
                if not _is_log(log)
                else (
                    f"Optuna cannot apply it ({type(e).__name__} {e}: a field is missing "
                    "or wrong; never applied)"
                )
            )
            raise DamagedJournal(
                damage_message(Path(self._backend._file_path), replay.log_number_read, why)
            ) from None
