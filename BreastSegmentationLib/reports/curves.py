"""Loss-curve figures for training logs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot is imported)

from ..io.outputs import atomic_output_file  # noqa: E402


def plot_loss_curves(history: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Train and validation loss per epoch (left axis) and validation Dice (right axis), as a PNG."""
    epochs = [row["epoch"] for row in history]
    figure, loss_axis = plt.subplots(figsize=(6, 4), dpi=100)
    loss_axis.plot(epochs, [row["train_loss"] for row in history], label="train loss", color="tab:blue")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], label="validation loss", color="tab:orange")
    loss_axis.set_xlabel("epoch")
    loss_axis.set_ylabel("loss")
    dice_axis = loss_axis.twinx()
    dice_axis.plot(epochs, [row["val_dice"] for row in history], label="validation Dice", color="tab:green",
                   linestyle="--")
    dice_axis.set_ylabel("Dice")
    dice_axis.set_ylim(0, 1)
    handles = loss_axis.get_legend_handles_labels()[0] + dice_axis.get_legend_handles_labels()[0]
    loss_axis.legend(handles, [h.get_label() for h in handles], loc="center right")
    loss_axis.set_title(title)
    figure.tight_layout()
    with atomic_output_file(path) as temporary:
        figure.savefig(temporary)
    plt.close(figure)
    return Path(path)
