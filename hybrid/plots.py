"""The run folder's metrics table and its loss-curve figure."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from matplotlib.figure import Figure

from hybrid.checkpoint import atomic_write


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as dicts of floats (empty cells become NaN)."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as file:
        return [
            {k: float(v) if v not in ("", None) else math.nan for k, v in row.items()} for row in csv.DictReader(file)
        ]


def write_metrics(path: str | Path, rows: list[dict[str, float]]) -> None:
    """Atomically write ``rows``; the header is the union of their keys, in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))

    def write(file):
        text = [",".join(columns)]
        text += [",".join(_cell(row.get(k)) for k in columns) for row in rows]
        file.write(("\n".join(text) + "\n").encode())

    atomic_write(path, write)


def append_metrics(path: str | Path, row: dict[str, float]) -> None:
    """Add one row to ``metrics.csv`` (rewrites the small file so new columns get a header)."""
    write_metrics(path, [*read_metrics(path), row])


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def plot_loss_curve(metrics_path: str | Path, png_path: str | Path, floor: float | None = None) -> Figure:
    """Train and validation loss against step, with the entropy floor when known.

    Saves a PNG and returns the figure (a notebook displays it). Uses matplotlib's object API,
    so it needs no display and leaves pyplot's global state alone.
    """
    rows = read_metrics(metrics_path)
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
