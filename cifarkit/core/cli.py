"""The command-line kit every command imports: exit codes, the error model, the parser, stop
signals, worker processes.

part_2_cifar.py, local_sweep.py, select_model.py, trt_export.py, synthetic_cifar100.py all end the
same way. Their exit codes follow one table (EXIT_CODES, and the README's "Exit codes"). Every way
the project ends a command early is a CommandExit: one line (one_line makes it) and an exit code; an
error is a CommandError, a stop signal an Interrupted. Each command's main is its one boundary:
`boundary` turns whatever reaches it into that line and code (an OSError by its errno, naming the
file; a library's error by its library), after the command saved what it had in memory. Files are
written by write_atomic: a final name only ever holds a whole file.
Their parsers print one line for a bad option.
A stop signal is a graceful stop everywhere: saved, then exit 128 + n. Its exception, Interrupted,
is a BaseException as KeyboardInterrupt is, so no library's `except Exception` swallows it.
Output that goes away (`| head -1`, a terminal gone after logout) ends no work: it goes to
/dev/null. Only the standard library is imported here, so any module can import this one.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import re
import signal
import stat
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

# --------------------------------------------------------------------------------------------------
# Exit codes: one policy for every command

EXIT_DONE = 0  # the command did what was asked
# a failure at run time: the same command may work later (a network, a storage, a failed check)
EXIT_FAILED = 1
# bad input or a file the user must fix: an option, a value, a data set, a checkpoint
EXIT_BAD_INPUT = 2
SIGNAL_BASE = 128  # stopped by signal n: 128 + n, as a shell reports a process a signal ended
EXIT_CODES = {
    EXIT_DONE: "done",
    EXIT_FAILED: "a failure at run time",
    EXIT_BAD_INPUT: "bad input or a file the user must fix",
    f"{SIGNAL_BASE}+n": "stopped by signal n (saved first)",
}


class CommandExit(BaseException):
    """The one base of every way this project ends a command early: str(error) is the one line the
    command prints, `exit_code` its row of EXIT_CODES. Two branches: CommandError (an Exception:
    bad input, a failure at run time) and Interrupted (a stop signal, a BaseException only, as
    KeyboardInterrupt is, so that no library's `except Exception` swallows it). Each command's one
    boundary turns either into its line and code."""

    exit_code = EXIT_FAILED


class CommandError(CommandExit, Exception):
    """The base of every error this project raises for people: str(error) is the one line a command
    prints, and `exit_code` its row of EXIT_CODES (a subclass sets it). A library that catches
    Exception around a callback of ours (Optuna's objective) sees it as the error it is."""


def exit_code(error: BaseException) -> int:
    """The exit code an error ends a command with: its class's `exit_code`, else EXIT_FAILED.

    Each error class of the project says which row of EXIT_CODES it is (ConfigError: EXIT_BAD_INPUT,
    ...). An error of a library (a database that went away) is a failure at run time.
    """
    return getattr(error, "exit_code", EXIT_FAILED)


def fail(error: BaseException | str, code: int | None = None) -> int:
    """Print `error: <the line>` to stderr and return the exit code (`code`, else
    exit_code(error))."""
    print(f"error: {error}", file=sys.stderr, flush=True)
    return (
        code
        if code is not None
        else exit_code(error)
        if isinstance(error, BaseException)
        else EXIT_FAILED
    )


def stopped_by(signum: int) -> int:
    """The exit code of a command a stop signal ended: 128 + the signal's number."""
    return SIGNAL_BASE + signum


# --------------------------------------------------------------------------------------------------
# The error model: one line of any error, the kinds of outside failure, one boundary per command

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # PyTorch colours parts of its messages


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """The first line of an error's text (a library's message may run to pages), terminal escape
    codes removed, at most `limit` characters; the error's type name when it has no text. The one
    way a line is made of an error."""
    text = ANSI_ESCAPE.sub("", str(error)).strip()
    if not text:
        return type(error).__name__
    line = text.splitlines()[0].strip()
    return line if len(line) <= limit else line[: limit - 3] + "..."


# What to do about an OSError on a file, by errno, and its exit code: EXIT_BAD_INPUT for what the
# user must fix (as the check before any work, folders.unwritable, says), else EXIT_FAILED.
FIX_PERMISSIONS = "this user may not write or read it: fix its permissions, or use another folder"
FILE_ADVICE = {
    errno.ENOSPC: (
        "its file system is full: free space there (df -h), or use a folder on another one",
        EXIT_FAILED,
    ),
    errno.EDQUOT: (
        "the disk quota is used up: free some (quota -s), or use a folder on another file system",
        EXIT_FAILED,
    ),
    errno.EROFS: (
        "its file system is mounted read-only: use a folder on a writable one",
        EXIT_BAD_INPUT,
    ),
    errno.EACCES: (FIX_PERMISSIONS, EXIT_BAD_INPUT),
    errno.EPERM: (FIX_PERMISSIONS, EXIT_BAD_INPUT),
    errno.ENOENT: ("its folder vanished while the command ran (a cleaner, rm -rf?)", EXIT_FAILED),
    errno.EIO: ("an I/O error: check the disk or the network file system", EXIT_FAILED),
}


class FileFailed(CommandError):
    """An OSError on a file the command reads or writes (disk full, quota, read-only, permission,
    a folder that vanished, an I/O error): one line naming the file, what failed, what to do and
    what is kept. `kept` is said by whoever knows (the trainer: which epoch the files on disk
    hold); the exit code comes from FILE_ADVICE."""

    def __init__(
        self,
        error: OSError,
        action: str = "",
        path: os.PathLike | str | None = None,
        kept: str = "",
    ):
        super().__init__(error)
        self.error, self.action, self.kept = error, action, kept
        self.path = path if path is not None else error.filename
        self.exit_code = FILE_ADVICE.get(error.errno, ("", EXIT_FAILED))[1]

    def __str__(self) -> str:
        what = f"cannot {self.action} {self.path}" if self.action else f"{self.path or 'a file'}"
        code = errno.errorcode.get(self.error.errno, "")
        reason = f"{self.error.strerror or one_line(self.error)}" + (f" ({code})" if code else "")
        advice = FILE_ADVICE.get(self.error.errno, ("",))[0]
        return "; ".join(part for part in (f"{what}: {reason}", advice, self.kept) if part)


def write_atomic(path: os.PathLike | str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file beside it, flushed to disk, then renamed
    over it: a final name only ever holds a whole file, the old one until the new one is complete
    (a crash, a full disk, a stop). FileFailed naming `path`; no temporary file is left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # its own: processes may share a file
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise FileFailed(e, "write", path) from None
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder is gone or read-only: there is no temporary file to remove
            pass


def write_json_atomic(obj: object, path: os.PathLike | str) -> None:
    """`obj` as indented JSON, written by write_atomic."""
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


# What json.loads (and PyYAML's Python loader) raise for a file that is not what it should be:
# ValueError (not JSON, not UTF-8, an integer of more than 4300 digits) and RecursionError (lists
# nested deeper than Python's stack, `[[[[...` 100000 deep): both a damaged file, never a rerun.
DAMAGED_TEXT = (ValueError, RecursionError)


class NotARegularFile(CommandError):
    """A path where a file is read that holds something else: a named pipe (FIFO), a socket, a
    device or a folder. One line naming it; exit 2."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, path: os.PathLike | str, mode: int):
        kinds = {
            stat.S_IFIFO: "a named pipe (FIFO)",
            stat.S_IFSOCK: "a socket",
            stat.S_IFCHR: "a character device",
            stat.S_IFBLK: "a block device",
            stat.S_IFDIR: "a folder",
        }
        kind = kinds.get(stat.S_IFMT(mode), "not a file")
        super().__init__(f"{path} is {kind}, not a regular file: put the file itself there")
        self.path = path


def read_regular(path: os.PathLike | str) -> bytes:
    """The bytes of the regular file at `path` (symbolic links followed). NotARegularFile for a
    FIFO, a socket, a device or a folder: open() of a FIFO blocks until a writer comes, and a stop
    signal does not end that wait (Python retries the call after the handler). The kind is checked
    before the file is opened (a device is never opened) and again on what was opened, which is
    opened non-blocking in case it changed in between. OSError as the system raises it
    (FileNotFoundError, a permission, an I/O error): the caller names the file and what it is."""
    if not stat.S_ISREG(mode := os.stat(path).st_mode):
        raise NotARegularFile(path, mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(mode := os.fstat(fd).st_mode):
            raise NotARegularFile(path, mode)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def read_regular_text(path: os.PathLike | str, encoding: str = "utf-8") -> str:
    """read_regular's bytes as text (UnicodeDecodeError, a ValueError, if they are not)."""
    return read_regular(path).decode(encoding)


class BrokenInstall(CommandError):
    """A package that imports but lacks what it must have (two builds installed over each other):
    one line naming the package and the fix. Exit 2: the install is the user's to fix."""

    exit_code = EXIT_BAD_INPUT


def require(module: str, *names: str, fix: str) -> object:
    """The module `module`, checked to have each of `names`; else BrokenInstall naming where it
    was found and `fix`."""
    found = importlib.import_module(module)
    missing = [name for name in names if not hasattr(found, name)]
    if missing:
        where = (
            getattr(found, "__file__", None)
            or ", ".join(getattr(found, "__path__", []))
            or "an unknown place"
        )
        raise BrokenInstall(
            f"the {module} package at {where} has no {', '.join(missing)}: a broken install (two "
            f"builds over each other?); {fix}"
        )
    return found


PROJECT_DIR = Path(__file__).resolve().parents[2]  # the repository: its commands, and cifarkit/


def ours(filename: str) -> bool:
    """Whether a source file is this project's own: a command at the top or a module of cifarkit/
    (a virtual environment inside the repository is not)."""
    path = Path(filename).resolve()
    return path.parent == PROJECT_DIR or (PROJECT_DIR / "cifarkit") in path.parents


def library_of(error: BaseException) -> str | None:
    """The library whose error `error` is (torch, optuna, wandb, onnx, json, ...), or None for this
    project's own: an error class of a library names it; a built-in one (RuntimeError, ValueError)
    is the library's whose code raised it (the last frame of its traceback), and None when that is
    this project's code: a bug."""
    module = type(error).__module__.split(".")[0]
    if module != "builtins":
        origin = getattr(sys.modules.get(module), "__file__", None)
        return None if origin and ours(origin) else module
    frames = traceback.extract_tb(error.__traceback__)
    if not frames or ours(frames[-1].filename):
        return None
    parts = Path(frames[-1].filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts[:-1]:
            return parts[parts.index(marker) + 1].removesuffix(".py")
    return Path(frames[-1].filename).stem  # a module of Python's standard library


def in_chain(error: BaseException | None, matches: Callable[[BaseException], bool]):
    """The first error in `error`'s chain (itself, its cause, its context) that `matches`, or
    None."""
    seen = set()
    while error is not None and id(error) not in seen:
        if matches(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def os_error_in(error: BaseException) -> OSError | None:
    """The first OSError in an error's chain (itself, its cause, its context): a library that
    wraps a full disk in its own error (torch's zip writer: "unexpected pos") failed on a file."""
    return in_chain(error, lambda e: isinstance(e, OSError))


def stop_in(error: BaseException) -> BaseException | None:
    """The stop (Interrupted, KeyboardInterrupt) in an error's chain: a stop raised inside a C
    extension's import comes out as that library's ImportError caused by it (pybind11's
    "initialization failed": matplotlib's modules)."""
    return in_chain(error, lambda e: isinstance(e, (Interrupted, KeyboardInterrupt)))


def boundary(
    error: BaseException, stopped: str = "run the same command again", kept: str = ""
) -> int:
    """A command's one boundary: the line and exit code of whatever ended its main (call it from
    `except BaseException`), after the command saved what it had in memory.

    A stop (Interrupted; KeyboardInterrupt, Ctrl-C twice) is `interrupted by SIG...: <stopped>`,
    128 + n. A CommandError is its own line. An OSError, or a library error caused by one, is
    FileFailed's line (`kept`: what the command keeps, where the error does not say). Another
    library's error (W&B, Optuna, torch, ONNX) is one line naming the library, exit 1. SystemExit,
    and an error raised by this project's own code (a bug), go on with their traceback.
    """
    error = stop_in(error) or error
    if isinstance(error, (Interrupted, KeyboardInterrupt)):
        signum = error.signum if isinstance(error, Interrupted) else signal.SIGINT
        print(
            f"interrupted by {signal.Signals(signum).name}: {stopped}", file=sys.stderr, flush=True
        )
        return stopped_by(signum)
    if isinstance(error, FileFailed) and kept and not error.kept:
        error.kept = kept
    if isinstance(error, CommandError) and error.exit_code == EXIT_DONE:  # RunComplete: an outcome
        print(error, flush=True)
        return EXIT_DONE
    if isinstance(error, CommandError):
        return fail(error)
    if not isinstance(error, Exception):
        raise error
    cause = os_error_in(error)
    if cause is not None and (cause.filename is not None or cause.errno in FILE_ADVICE):
        return fail(FileFailed(cause, kept=kept))
    library = library_of(error)
    if library is None:
        raise error
    return fail(
        f"{library} failed: {type(error).__name__}: {one_line(error)}"
        + (f"; {kept}" if kept else "")
    )


# --------------------------------------------------------------------------------------------------
# Parsing


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser described by the first paragraph of a module docstring, with one-line
    errors."""

    def __init__(
        self,
        docstring: str,
        parents: tuple[argparse.ArgumentParser, ...] = (),
        allow_abbrev: bool = True,
    ):
        super().__init__(
            description=docstring.split("\n\n")[0],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=list(parents),
            allow_abbrev=allow_abbrev,
        )

    def error(
        self, message: str
    ) -> None:  # one line and exit 2, as argparse does, without the usage block
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """An argparse type: a count such as --workers or --trials."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: use an integer >= 1")
    return int(text)


def setting_value(text: str) -> str | None:
    """An argparse type for the settings: `None`, the way `wandb agent` writes a sweep's null, is
    None (the default)."""
    return None if text == "None" else text


def common_options(data_dir_help: str, val_size_help: str) -> argparse.ArgumentParser:
    """The options every command that trains shares (trainer, local sweep, model selection): a
    parent parser.

    The help of --data-dir and --val-size is their owners' (cifar_files.py, the trainer's settings).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help=data_dir_help)
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs"), help="run folders go here (default ./runs)"
    )
    parser.add_argument(
        "--val-size",
        "--val_size",
        dest="val_size",
        metavar="N",
        type=setting_value,
        help=val_size_help,
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--wandb-mode",
        choices=("auto", "online", "offline", "disabled"),
        default="auto",
        help="auto: WANDB_MODE if set, else online with W&B credentials, else offline",
    )
    parser.add_argument(
        "--wandb-project", default="cifar100-simplecnn", help="W&B project (ignored inside a sweep)"
    )
    return parser


# --------------------------------------------------------------------------------------------------
# Stop signals: a graceful stop, whoever sends it

# Every signal that asks a process to stop, and who sends it: SIGTERM (kill, a scheduler ending a
# job, `wandb agent` stopping a run), SIGINT (Ctrl-C), SIGHUP (a closed terminal or ssh session),
# SIGQUIT (Ctrl-\; `wandb agent --forward-signals` passes on SIGTERM, SIGHUP and SIGQUIT, its
# _TERMINATING_SIGNALS), SIGUSR1 and SIGUSR2 (the preemption notices of SLURM's --signal and Grid
# Engine's -notify), SIGXCPU (a CPU-time limit: RLIMIT_CPU, or a scheduler's cputime; SIGKILL
# follows at the hard limit). Not in it: SIGALRM, SIGVTALRM, SIGPROF (timers nobody uses to stop a
# job), SIGXFSZ (a write that failed: an error, not a request), SIGPIPE (Python ignores it).
STOP_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGXCPU")
    if hasattr(signal, name)
)


class Interrupted(CommandExit):
    """A stop signal arrived; last.pt holds the last finished epoch. A BaseException, as
    KeyboardInterrupt is: a library that catches Exception around its own work (torch's ONNX
    exporter, Optuna, matplotlib, W&B) lets it pass, so a stop inside a library call still stops.
    `exit_code` is 128 + n."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = stopped_by(signum)


def requeues(signum: int, in_sweep: bool) -> bool:
    """Whether a stop by `signum` marks the W&B run preempting, so that a W&B sweep requeues it: the
    one rule.

    Inside a W&B sweep, SIGTERM is the agent stopping the run for good (Hyperband, or a stop from
    the W&B page), which a requeue would undo. Every other stop signal, and any signal outside a
    sweep, cut the run short from outside (a preemption notice, a closed terminal, a limit, Ctrl-C):
    the run is marked preempting and may continue.
    """
    return not (in_sweep and signum == signal.SIGTERM)


def passed_on(signum: int) -> int:
    """The signal a launcher sends its child processes when it receives `signum`: the same one, but
    SIGINT becomes SIGTERM, because a terminal's Ctrl-C already reached the children (one process
    group) and a second SIGINT means "stop now"."""
    return signal.SIGTERM if signum == signal.SIGINT else signum


def leave_a_lost_terminal() -> None:
    """Point stdout and stderr at /dev/null where they are a terminal that hung up (an ssh session
    that dropped): every write there fails (EIO), and the stop that SIGHUP asks for must still save,
    finish the W&B run and exit."""
    import termios  # Unix only, like SIGHUP

    for fd in (1, 2):
        try:
            # EIO once the terminal is gone; ENOTTY for a file or pipe, which stay
            termios.tcgetattr(fd)
        except termios.error as e:
            if e.args[0] == errno.EIO:
                point_at_devnull(fd)


# the reader of a pipe exited (`| head`); the terminal is gone (logout)
LOST_OUTPUT = (
    errno.EPIPE,
    errno.EIO,
)


def point_at_devnull(fd: int) -> None:
    """Make file descriptor `fd` /dev/null: every later write there succeeds and goes nowhere."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


class OutputThatMayGoAway:
    """sys.stdout or sys.stderr, whose writes survive the reader going away without a SIGHUP.

    A pipe whose reader exited (`| head -1`: EPIPE, since Python ignores SIGPIPE) or a terminal left
    behind by a background job after logout (EIO) make every write raise, and a print would end a
    training midway. The first such failure points the stream's file descriptor at /dev/null (the
    dup2 of Python's "Note on SIGPIPE", so the interpreter's final flush succeeds as well and the
    exit code stays the command's); the work goes on unseen. Other errors (a full disk under `>
    file`) still raise. Everything but write/writelines/flush is the stream's.
    """

    def __init__(self, stream) -> None:
        self.stream = stream

    def _lost(self, error: OSError) -> None:
        if error.errno not in LOST_OUTPUT:
            raise error
        try:
            point_at_devnull(self.stream.fileno())
        # a stream with no file descriptor (io.StringIO): replace the stream itself
        except (
            OSError,
            ValueError,
        ):
            self.stream = open(os.devnull, "w")
        if error.errno == errno.EIO:
            # the other of stdout and stderr is most likely the same lost terminal
            leave_a_lost_terminal()

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except OSError as e:
            self._lost(e)
            return len(text)  # what the buffers still hold goes to /dev/null with the next flush

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as e:
            self._lost(e)
            self.stream.flush()

    # fileno, isatty, encoding, buffer, closed ...: the stream's own
    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def survive_lost_output() -> None:
    """Wrap sys.stdout and sys.stderr in OutputThatMayGoAway, once; StopOnSignal does it for every
    command."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, OutputThatMayGoAway):
            setattr(sys, name, OutputThatMayGoAway(stream))


class StopOnSignal:
    """While active, STOP_SIGNALS only raise a flag; `check()` turns it into Interrupted between
    steps.

    Raising from the handler itself could cut a checkpoint write or W&B's own code in half. main()
    keeps it active from its first line to its last, so a notice during start-up or the final upload
    never kills the process by the signal's default action. The first signal is the reason kept (a
    launcher may pass on what the terminal already sent). A second SIGINT (Ctrl-C twice) raises
    KeyboardInterrupt at once, e.g. in a download. A signal the caller ignores stays ignored:
    `nohup` ignores SIGHUP, and a non-interactive shell starts background jobs with SIGINT and
    SIGQUIT ignored; child processes inherit that. One inside another (a local sweep's main, then
    its worker loop) shares the signal with it, both ways. Entering it also makes stdout and stderr
    survive a reader that went away (survive_lost_output): every command starts here, and a lost
    output ends no work.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def __enter__(self) -> StopOnSignal:
        survive_lost_output()
        handlers = [getattr(signal.getsignal(sig), "__self__", None) for sig in STOP_SIGNALS]
        self.outer = next((h for h in handlers if isinstance(h, StopOnSignal)), None)
        if isinstance(self.outer, StopWhileImporting):
            self.outer.importing = False  # main has begun: from here on it only keeps a flag
        self.signum = self.signum or (self.outer.signum if self.outer else None)
        self.previous = {
            sig: signal.signal(sig, self._catch)
            for sig in STOP_SIGNALS
            if signal.getsignal(sig) is not signal.SIG_IGN
        }
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if self.outer is not None and self.outer.signum is None:
            self.outer.signum = self.signum

    def _catch(self, signum: int, frame: object) -> None:
        if signum == getattr(signal, "SIGHUP", None):
            leave_a_lost_terminal()
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum

    def check(self) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum)


class StopWhileImporting(StopOnSignal):
    """A command's stop signals from its first lines, when it runs as a program: a stop while it
    imports torch, Optuna or W&B (a second or more before main begins) ends it at once, with the
    one line `interrupted by SIG...: nothing was started` and exit 128 + n, as from main on.

    Nothing was started, so there is nothing to save: the process ends there (os._exit), because a
    raise would come out of whichever import runs, with its traceback. Each command calls
    `stop_while_importing()` under `if __name__ == "__main__":` above its imports, so a test that
    imports it keeps its own signals. Once main's StopOnSignal is entered it takes over, and this
    one, its outer, only keeps a flag. A signal the caller ignores stays ignored, as in
    StopOnSignal.
    """

    importing = True

    def _catch(self, signum: int, frame: object) -> None:
        if not self.importing:
            super()._catch(signum, frame)
            return
        if signum == getattr(signal, "SIGHUP", None):
            leave_a_lost_terminal()
        line = f"interrupted by {signal.Signals(signum).name}: nothing was started\n"
        try:
            os.write(2, line.encode())
        except OSError:  # stderr is closed or gone: the exit code still says it
            pass
        os._exit(stopped_by(signum))


def stop_while_importing() -> None:
    """Enter StopWhileImporting, for good (main's StopOnSignal takes over): the first thing a
    command run as a program does."""
    StopWhileImporting().__enter__()


class InterruptOnSignal(StopOnSignal):
    """STOP_SIGNALS raise Interrupted at once, at the next Python line: for a command with nothing
    to save midway.

    trt_export.py is one: each run writes all its files again from the checkpoint.
    """

    def __enter__(self) -> InterruptOnSignal:
        super().__enter__()
        # A stop raised where Python can only print it (a weakref or __del__ callback: "Exception
        # ignored in ...", with its traceback) is kept quiet: its flag is set; check() raises it.
        self.previous_hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        return self

    def __exit__(self, *exc_info: object) -> None:
        sys.unraisablehook = self.previous_hook
        super().__exit__(*exc_info)

    def _unraisable(self, unraisable: object) -> None:
        if not isinstance(getattr(unraisable, "exc_value", None), Interrupted):
            self.previous_hook(unraisable)

    def _catch(self, signum: int, frame: object) -> None:
        super()._catch(signum, frame)
        raise Interrupted(signum)


# --------------------------------------------------------------------------------------------------
# Worker processes: several trainings at once, spread over the GPUs


def gpu_slots(workers: int) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES for each worker: round-robin over the visible GPUs, several workers per
    GPU allowed."""
    import torch  # here, not at the top: this module stays free of heavy imports

    if not torch.cuda.is_available():
        return [None] * workers
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [i.strip() for i in visible.split(",") if i.strip()]
        if visible
        else [str(i) for i in range(torch.cuda.device_count())]
    )
    return [ids[i % len(ids)] for i in range(workers)]


def worker_env(gpu: str | None, workers: int) -> dict:
    """The environment of one of `workers` processes: its GPU (a gpu_slots entry), or on the CPU a
    share of the cores (oversubscribed torch threads spin: 30x slower)."""
    env = dict(os.environ)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    elif "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
    return env
