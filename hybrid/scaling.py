"""Power laws of loss against size: least squares in log space, with confidence intervals.

The built-in corpus has a known entropy floor, so the fitted quantity is the reducible
loss, the part above the floor:

    val_loss - floor = a * x^(-alpha)       x: parameters, or training compute in FLOPs
    log(val_loss - floor) = log(a) - alpha * log(x)     (ordinary least squares)

Confidence intervals come from the t distribution with n - 2 degrees of freedom on the
slope and intercept of that regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure
from scipy import stats


@dataclass(frozen=True)
class PowerLaw:
    """y = coefficient * x^(-exponent), fitted on ``n`` points."""

    coefficient: float
    exponent: float
    exponent_ci: tuple[float, float]  # confidence interval of the exponent
    coefficient_ci: tuple[float, float]
    r2: float  # of the log-log regression
    n: int

    def __call__(self, x):
        return self.coefficient * np.asarray(x, dtype=float) ** (-self.exponent)


def fit_power_law(x, y, confidence: float = 0.95) -> PowerLaw:
    """Fit ``y = a * x^(-alpha)`` to positive data by least squares on logarithms.

    Args:
        x, y: (n,) positive values, n >= 3 with at least two distinct x.
        confidence: level of the two-sided intervals.

    Raises:
        ValueError: fewer than three points, one distinct x, or a non-positive value.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or len(np.unique(x)) < 2:
        raise ValueError(f"a power-law fit needs at least 3 points and 2 distinct sizes, got {len(x)} points")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a power-law fit needs positive sizes and losses above the floor")
    lx, ly = np.log(x), np.log(y)
    result = stats.linregress(lx, ly)
    t = stats.t.ppf(0.5 + confidence / 2, df=len(x) - 2)
    slope_ci = (result.slope - t * result.stderr, result.slope + t * result.stderr)
    intercept_ci = (result.intercept - t * result.intercept_stderr, result.intercept + t * result.intercept_stderr)
    return PowerLaw(
        coefficient=float(np.exp(result.intercept)),
        exponent=float(-result.slope),
        exponent_ci=(float(-slope_ci[1]), float(-slope_ci[0])),
        coefficient_ci=(float(np.exp(intercept_ci[0])), float(np.exp(intercept_ci[1]))),
        r2=float(result.rvalue**2),
        n=len(x),
    )


def plot_scaling(rows: list[dict], floor: float, fits: dict[tuple[str, str], PowerLaw], png_path=None) -> Figure:
    """Reducible loss against parameters and against compute, one colour per optimizer,
    with the fitted power laws. Saves a PNG when ``png_path`` is given."""
    fig = Figure(figsize=(10, 4))
    axes = fig.subplots(1, 2)
    optimizers = sorted({r["optimizer"] for r in rows})
    colors = {name: f"C{i}" for i, name in enumerate(optimizers)}
    for ax, axis, label in zip(
        axes, ("params", "compute_flops"), ("parameters", "training compute (FLOPs)"), strict=True
    ):
        for name in optimizers:
            pts = [r for r in rows if r["optimizer"] == name]
            x = np.array([r[axis] for r in pts], dtype=float)
            ax.scatter(x, [r["val_loss"] - floor for r in pts], color=colors[name], s=18)
            fit = fits.get((name, axis))
            if fit is not None:
                grid = np.geomspace(x.min(), x.max(), 50)
                lo, hi = fit.exponent_ci
                ax.plot(
                    grid, fit(grid), color=colors[name], label=f"{name}: alpha={fit.exponent:.2f} [{lo:.2f}, {hi:.2f}]"
                )
            else:
                ax.plot([], [], color=colors[name], label=f"{name}: too few points to fit")
        ax.set(xscale="log", yscale="log", xlabel=label, ylabel="validation loss - entropy floor (nats/char)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    if png_path is not None:
        fig.savefig(png_path, dpi=120)
    return fig
