"""``gpunn train --plot``: the training curve as a PNG."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

from .parsing import UsageError


def require_matplotlib() -> None:
    """Refuse --plot, before any training, where matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            '--plot needs matplotlib, which is not installed: pip install "gpunn[plot]"'
        ) from None


def write_plot(path: str | os.PathLike[str], records: Sequence[dict[str, Any]],
               title: str = "") -> None:
    """A PNG of the training curve: loss and validation loss, and validation accuracy."""
    from matplotlib.figure import Figure  # lazily: only --plot needs matplotlib

    from ..files import atomic_write

    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["loss"] for r in records], marker=".", label="training loss")
    val = [(r["epoch"], r["val_loss"], r["val_accuracy"]) for r in records if "val_loss" in r]
    if val:
        ax_loss.plot([v[0] for v in val], [v[1] for v in val], marker=".",
                     label="validation loss")
        ax_acc.plot([v[0] for v in val], [v[2] for v in val], marker=".", color="tab:green",
                    label="validation accuracy")
        ax_acc.legend()
    else:
        ax_acc.text(0.5, 0.5, "no validation data", ha="center", va="center",
                    transform=ax_acc.transAxes)
    ax_loss.set(xlabel="epoch", ylabel="loss", yscale="log", title="loss")
    ax_loss.legend()
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="validation accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
