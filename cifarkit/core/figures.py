"""Figures: drawn in memory (matplotlib's Agg backend) and written whole (cli.write_atomic).

save_figure writes any figure: a run's curves.png, the sweep report's plots, select_model.py's
and trt_export.py's charts; plot_learning_curve draws a run's curves.png. Where the environment
sets CIFARKIT_NO_FIGURES=1 (figures_wanted) no command draws one.
"""

from __future__ import annotations

import atexit
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

from cifarkit.core.cli import FileFailed, write_atomic
from cifarkit.core.folders import unwritable, user_folder


def pyplot():
    """matplotlib.pyplot, drawing in memory (the Agg backend: no display needed), with a config
    folder it can write: the one way this project imports matplotlib.

    Where the folders matplotlib would use (MPLCONFIGDIR, else XDG_CONFIG_HOME/matplotlib and
    XDG_CACHE_HOME/matplotlib, else under HOME) cannot be written (a read-only HOME: containers, HPC
    nodes), it gets a temporary folder, removed at exit: what matplotlib 3 does itself, without its
    two lines of warning on the console. HOME unset is matplotlib's to resolve (the user's home
    from the password database).
    """
    if "matplotlib" not in sys.modules:  # it reads MPLCONFIGDIR once, at its import
        folders = [
            user_folder("MPLCONFIGDIR", "XDG_CONFIG_HOME", ".config", "matplotlib"),
            user_folder("MPLCONFIGDIR", "XDG_CACHE_HOME", ".cache", "matplotlib"),
        ]
        if any(folder is not None and unwritable(folder) for folder in folders):
            os.environ["MPLCONFIGDIR"] = tempfile.mkdtemp(prefix="matplotlib-")
            atexit.register(shutil.rmtree, os.environ["MPLCONFIGDIR"], ignore_errors=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: object, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure (drawn in memory, in the format of the path's suffix) and close it:
    a reader never sees half a PNG. FileFailed naming `path` when it cannot be written."""
    plt = pyplot()

    path = Path(path)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileFailed(e, "make the folder of", path) from None
    write_atomic(path, buffer.getvalue())


NO_FIGURES_VARIABLE = "CIFARKIT_NO_FIGURES"


def figures_wanted() -> bool:
    """False where the environment sets CIFARKIT_NO_FIGURES=1: no command draws a figure (a run's
    curves.png, the sweep report's plots, select_model.py's and trt_export.py's charts); the tables,
    CSV and JSON files beside them are written as always.

    For scripts that run many short commands and never look at their figures, such as the test
    suite: matplotlib's import and the drawing cost a 1-epoch run of the tiny model about 0.9 s of
    CPU, a fifth of it (cProfile, 2-core AMD EPYC), and a sweep's report about as much again."""
    return os.environ.get(NO_FIGURES_VARIABLE) != "1"


def plot_learning_curve(history: list[dict], path: Path, title: str) -> None:
    """Loss and top-1 accuracy per epoch, training and validation, side by side, saved to `path`
    (a run's curves.png). `history`: the trainer's per-epoch metrics."""
    plt = pyplot()

    epochs = [m["epoch"] for m in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        ax_loss.plot(epochs, [m[f"{split}_loss"] for m in history], label=split)
        ax_acc.plot(epochs, [m[f"{split}_accuracy"] for m in history], label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
