"""Figures: drawn in memory (matplotlib's Agg backend) and written whole (cli.write_atomic).

save_figure writes any figure: a run's curves.png, the sweep report's plots, select_model.py's
and trt_export.py's charts. plot_learning_curve draws a run's curves.png.
"""

from __future__ import annotations

import io
from pathlib import Path

from cifarkit.core.cli import FileFailed, write_atomic


def save_figure(fig: object, path: Path, dpi: int = 100) -> None:
    """Save a matplotlib figure (drawn in memory, in the format of the path's suffix) and close it:
    a reader never sees half a PNG. FileFailed naming `path` when it cannot be written."""
    import matplotlib.pyplot as plt

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


def plot_learning_curve(history: list[dict], path: Path, title: str) -> None:
    """Loss and top-1 accuracy per epoch, training and validation, side by side, saved to `path`
    (a run's curves.png). `history`: the trainer's per-epoch metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
