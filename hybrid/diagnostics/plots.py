"""Figures of ``hybrid.diagnostics``: spectra side by side, their statistics over training, loss slices.

    plot_spectra(curvature_spectra(model, batch))          # one step: a line per block
    plot_spectra(load_spectra(run_dir), damping=...)       # {step: spectra}: a colour per step
    plot_tracking(run_dir)                                 # damped condition proxy and effective dimension
    plot_slices(loss_slices(model, batch, optimizer))      # loss along -gradient and -natural gradient

Each returns a ``matplotlib.figure.Figure`` built with the object API (no pyplot state, no
display needed; a notebook shows it inline) and, given ``path``, saves it atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from hybrid.checkpoint import atomic_write
from hybrid.diagnostics.record import TABLE, load_spectra
from hybrid.diagnostics.slices import LossSlices
from hybrid.diagnostics.spectra import RTOL, Spectrum
from hybrid.errors import InputError
from hybrid.tables import read_table

KINDS = {
    "classical": "classical Fisher: K-FAC blocks A (x) G",
    "quantum": "quantum: Fubini-Study metric (QFI / 4)",
    "adamw": "reference: AdamW's second moment v_hat (diagonal)",
}


def plot_spectra(
    spectra: list[Spectrum] | dict[int, list[Spectrum]],
    path: str | Path | None = None,
    damping: float | dict[str, float] | None = None,
) -> Figure:
    """Eigenvalues against their rank, classical K-FAC blocks left, quantum metrics right, and
    AdamW's second-moment diagonal in a third panel when the spectra hold that block.

    The rank is divided by the block's size, so blocks of 24 and of 16,000 parameters share an
    axis; eigenvalues below ``RTOL`` times the largest (numerically zero) are left out, so a
    line that stops early shows a rank-deficient block. ``damping`` draws the damping each
    preconditioner adds: directions below it are hardly preconditioned.

    Args:
        spectra: one step's ``curvature_spectra`` (a colour per block) or ``{step: spectra}``
            (a colour per step, every block of a step in it).
        path: where to save the figure (PNG, or any format its suffix names).
        damping: one number or ``{"classical": kfac_damping, "quantum": qng_damping, "adamw": eps ** 2}``.
    """
    by_step = spectra if isinstance(spectra, dict) else {None: spectra}
    if not any(by_step.values()):
        raise InputError("no spectra to plot; compute them with curvature_spectra or track during training")
    kinds = [k for k in KINDS if k != "adamw" or any(s.kind == k for b in by_step.values() for s in b)]
    fig = Figure(figsize=(5.5 * len(kinds), 4.2))
    axes = dict(zip(kinds, fig.subplots(1, len(kinds)), strict=True))
    colours = mpl.colormaps["viridis"](np.linspace(0.0, 0.85, len(by_step)))
    for colour, (step, blocks) in zip(colours, by_step.items(), strict=True):
        for kind, ax in axes.items():
            for i, s in enumerate(b for b in blocks if b.kind == kind):
                lam = s.eigenvalues.double().numpy()  # (P,) descending
                x = (np.arange(lam.size) + 0.5) / lam.size  # fraction of the block's directions
                keep = lam > RTOL * lam[0] if lam.size and lam[0] > 0 else np.zeros(lam.size, bool)
                if step is None:
                    ax.plot(x[keep], lam[keep], lw=1.2, label=s.name)
                else:
                    ax.plot(x[keep], lam[keep], lw=1.0, color=colour, alpha=0.8, label=None if i else f"step {step}")
    for kind, ax in axes.items():
        level = damping.get(kind) if isinstance(damping, dict) else damping
        if level is not None:
            ax.axhline(level, color="gray", ls="--", lw=1, label=f"damping {level:g}")
        ax.set_yscale("log")
        ax.set(title=KINDS[kind], xlabel="eigenvalue rank / block size", ylabel="eigenvalue")
        ax.grid(alpha=0.3, which="both", lw=0.5)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2 if len(ax.lines) > 8 else 1)
        else:
            ax.text(0.5, 0.5, f"no {kind} block", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _saved(fig, path)


def plot_tracking(run_dir: str | Path, path: str | Path | None = None) -> Figure:
    """The damped condition proxy lambda_1 / (lambda_k + damping) and the effective dimension
    (as a fraction of the block's size) of every block against step, from
    ``run_dir/diagnostics.csv``: quantum blocks bold, classical thin, the adamw reference dashed.

    Raises:
        InputError: the run folder has no diagnostics (train with ``train.curvature_every``).
    """
    rows = read_table(Path(run_dir) / TABLE)
    if not rows:
        raise InputError(
            f"{run_dir} has no {TABLE}; train with --set train.curvature_every=N or call hybrid.diagnostics.track"
        )
    steps = np.array([r["step"] for r in rows])
    names = list(dict.fromkeys(k.rpartition("/")[0] for k in rows[0] if k.endswith("/damped_condition")))
    saved = load_spectra(run_dir)
    kinds = {s.name: s.kind for s in saved[max(saved)]} if saved else {}
    fig = Figure(figsize=(13, 4.2))
    cond_ax, dim_ax = fig.subplots(1, 2)
    classical = iter(mpl.colormaps["Blues"](np.linspace(0.35, 0.9, max(1, len(names)))))
    quantum = iter(mpl.colormaps["autumn"](np.linspace(0.0, 0.6, max(1, len(names)))))
    for name in names:
        is_quantum = kinds.get(name) == "quantum"
        style = {
            "color": next(quantum if is_quantum else classical), "lw": 2.2 if is_quantum else 1.0,
            "marker": "o" if is_quantum else None, "ms": 3, "label": f"{name} ({kinds.get(name, '?')})",
            "ls": "--" if kinds.get(name) == "adamw" else "-",
        }  # fmt: skip
        column = [r.get(f"{name}/damped_condition", math.nan) for r in rows]
        fraction = [r.get(f"{name}/effective_dim", math.nan) / r.get(f"{name}/size", math.nan) for r in rows]
        cond_ax.plot(steps, column, **style)
        dim_ax.plot(steps, fraction, **style)
    k = int(rows[0].get(f"{names[0]}/k", 0)) if names else 0
    cond_ax.set(yscale="log", xlabel="step", ylabel=f"lambda_1 / (lambda_{k} + damping)",
                title="damped condition proxy (top-k spread the update sees)")  # fmt: skip
    dim_ax.set(xlabel="step", ylabel="effective dimension / block size", title="directions resolved above damping")
    for ax in (cond_ax, dim_ax):
        ax.grid(alpha=0.3, lw=0.5)
    dim_ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # outside: lines fill the axes
    fig.tight_layout()
    return _saved(fig, path)


def plot_slices(slices: LossSlices, path: str | Path | None = None) -> Figure:
    """The loss against the distance moved along the unit gradient and natural-gradient directions."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(slices.alphas, slices.gradient, marker="o", ms=3, label="-gradient")
    ax.plot(slices.alphas, slices.natural, marker="s", ms=3, label="-natural gradient")
    ax.axvline(0.0, color="gray", lw=0.8)
    ax.set(xlabel="distance alpha along the unit direction", ylabel="loss",
           title=f"loss slices (cosine between directions {slices.cosine:.2f})")  # fmt: skip
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _saved(fig, path)


def _saved(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        suffix = Path(path).suffix.lstrip(".") or "png"
        atomic_write(path, lambda file: fig.savefig(file, format=suffix, dpi=120))
    return fig
