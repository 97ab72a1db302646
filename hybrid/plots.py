"""Figures of a run folder."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from hybrid.tables import read_table


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, floor: float | None = None) -> Figure:
    """Train and validation loss against step, with the entropy floor when known.

    Saves a PNG and returns the figure (a notebook displays it). Uses matplotlib's object API,
    so it needs no display and leaves pyplot's global state alone.
    """
    rows = read_table(metrics_path)
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["train_loss"] for r in rows], marker="o", ms=3, label="train")
    ax.plot(steps, [r["val_loss"] for r in rows], marker="o", ms=3, label="validation")
    if floor is not None:
        ax.axhline(floor, color="gray", ls="--", label=f"entropy floor {floor:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / character)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    return fig
