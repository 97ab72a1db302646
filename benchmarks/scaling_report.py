"""The report of a finished `hybrid sweep` on the built-in corpus: loss per width, power laws, exponents compared.

    python benchmarks/scaling_report.py --sweep runs/mup_scaling_q4 --out benchmarks/results/mup_scaling/mup_scaling.md

Reads ``results.csv`` of the sweep and writes a markdown table (beside it the rows it read,
``results.csv``, and the plot, ``scaling.png``): the final val loss per optimizer and width
(mean ± std over seeds) and whether it falls with width at every step; the power law
``val_loss - floor = a x^(-alpha)`` against parameters and against training compute, fitted
over every run and over the seed means (``hybrid.scaling.fit_power_law``: least squares in log
space, 95% intervals from the t distribution), with r^2 and a flag below 0.9; the same law above a
fitted offset, ``val_loss = L_inf + a x^(-alpha)`` (``offset_fit``: where the loss levels off
above the entropy floor, the budget, not the width, bounds it); and, for each pair
of optimizers, the difference of their exponents and of their constants (at the geometric mean
size) with Welch-style t-tests on the two regressions' standard errors: does an optimizer change
the exponent, or only the constant?
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import optimize, stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))

from footer import footer  # noqa: E402

from hybrid.corpus import ENTROPY_RATE  # noqa: E402
from hybrid.scaling import fit_power_law, plot_scaling  # noqa: E402
from hybrid.sweep import RESULTS, fit_rows  # noqa: E402
from hybrid.tables import read_table  # noqa: E402

R2_GOAL = 0.9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, required=True, help="a hybrid sweep folder")
    parser.add_argument("--out", type=Path, required=True, help="the markdown file to write")
    parser.add_argument("--title", default="Scaling: reducible loss against parameters and compute, per optimizer")
    parser.add_argument("--command", default="", help="the hybrid sweep command, quoted in the report")
    parser.add_argument("--notes", type=Path, help="a markdown file of what the tables show, put after them")
    args = parser.parse_args(argv)
    rows = read_table(args.sweep / RESULTS)
    if not rows:
        raise SystemExit(f"error: {args.sweep / RESULTS} has no finished runs; run the sweep first")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(args.sweep / RESULTS, args.out.parent / RESULTS)
    fits = fit_rows(rows)
    plot_scaling(rows, ENTROPY_RATE, fits, args.out.parent / "scaling.png")
    text = report(rows, fits, args)
    args.out.write_text(text)
    print(text)


def seed_means(rows: list[dict], optimizer: str) -> dict[int, list[float]]:
    """``{width: [final val loss per seed]}`` of one optimizer."""
    by_width: dict[int, list[float]] = {}
    for r in rows:
        if r["optimizer"] == optimizer:
            by_width.setdefault(int(r["width"]), []).append(float(r["val_loss"]))
    return dict(sorted(by_width.items()))


def mean_fit(rows: list[dict], optimizer: str, axis: str):
    """The power law over the seed means of each size (None with fewer than 3 sizes above the floor)."""
    sizes: dict[float, list[float]] = {}
    for r in rows:
        if r["optimizer"] == optimizer:
            sizes.setdefault(float(r[axis]), []).append(float(r["val_loss"]))
    x = [s for s, v in sorted(sizes.items()) if statistics.fmean(v) > ENTROPY_RATE]
    y = [statistics.fmean(sizes[s]) - ENTROPY_RATE for s in x]
    try:
        return fit_power_law(x, y)
    except ValueError:
        return None


def offset_fit(rows: list[dict], optimizer: str, axis: str = "params") -> tuple[float, float, float, float] | None:
    """``(L_inf, alpha, its standard error, r^2)`` of ``val_loss = L_inf + a x^(-alpha)`` over every
    run (nonlinear least squares, L_inf between the entropy floor and the lowest loss, x in units
    of the smallest size); None when it does not converge or has fewer than 4 runs."""
    pts = [r for r in rows if r["optimizer"] == optimizer]
    x = np.array([float(r[axis]) for r in pts])
    y = np.array([float(r["val_loss"]) for r in pts])
    if len(pts) < 4 or len(np.unique(x)) < 3:
        return None
    x = x / x.min()

    def law(size, floor, a, alpha):
        return floor + a * size ** (-alpha)

    try:
        (floor, a, alpha), cov = optimize.curve_fit(
            law, x, y, p0=(y.min() - 0.01, y.max() - y.min(), 0.5),
            bounds=([ENTROPY_RATE, 0.0, 0.0], [y.min(), np.inf, 10.0]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    r2 = 1 - float(np.sum((y - law(x, floor, a, alpha)) ** 2) / np.sum((y - y.mean()) ** 2))
    return float(floor), float(alpha), float(math.sqrt(cov[2, 2])) if np.isfinite(cov[2, 2]) else math.nan, r2


def regression(rows: list[dict], optimizer: str, axis: str):
    """``scipy.stats.linregress`` of log(val_loss - floor) on log(size) over every run, and the
    log sizes (for the constant at a common size)."""
    pts = [r for r in rows if r["optimizer"] == optimizer and r["val_loss"] > ENTROPY_RATE]
    lx = np.log([float(r[axis]) for r in pts])
    ly = np.log([float(r["val_loss"]) - ENTROPY_RATE for r in pts])
    return stats.linregress(lx, ly), lx


def compare(rows: list[dict], a: str, b: str, axis: str) -> tuple[float, float, float, float]:
    """(exponent of b - exponent of a, its two-sided p, log-constant of b - of a at the geometric
    mean size of both, its p): t-tests on the difference of two independent regressions."""
    (ra, xa), (rb, xb) = regression(rows, a, axis), regression(rows, b, axis)
    dof = len(xa) + len(xb) - 4
    slope = -(rb.slope - ra.slope)  # exponents are minus the slopes
    p_slope = 2 * stats.t.sf(abs(rb.slope - ra.slope) / math.hypot(ra.stderr, rb.stderr), dof)
    centre = float(np.mean(np.concatenate([xa, xb])))

    def at_centre(result, lx):  # the fitted log loss at ``centre`` and its standard error
        n = len(lx)
        s2 = result.stderr**2 * n * np.var(lx)  # residual variance: stderr^2 = s2 / sum((x - mean)^2)
        spread = result.stderr**2 * (centre - lx.mean()) ** 2
        return result.intercept + result.slope * centre, math.sqrt(s2 / n + spread)

    (ya, sa), (yb, sb) = at_centre(ra, xa), at_centre(rb, xb)
    p_constant = 2 * stats.t.sf(abs(yb - ya) / math.hypot(sa, sb), dof)
    return slope, p_slope, yb - ya, p_constant


def report(rows: list[dict], fits: dict, args) -> str:
    optimizers = sorted({r["optimizer"] for r in rows})
    widths = sorted({int(r["width"]) for r in rows})
    seeds = sorted({int(r["seed"]) for r in rows})
    lines = [f"# {args.title}", ""]
    if args.command:
        lines += [f"`{args.command}`", ""]
    lines += [f"{len(rows)} runs: widths {', '.join(map(str, widths))}, seeds {', '.join(map(str, seeds))}; "
              f"the built-in Markov corpus, entropy floor {ENTROPY_RATE:.3f} nats/char. Final val loss "
              "(nats/char), mean ± std over seeds; monotone: the seed mean falls at every width step.", "",
              "| optimizer | " + " | ".join(f"n_embd {w}" for w in widths) + " | monotone |",
              "|---|" + "---|" * len(widths) + "---|"]  # fmt: skip
    for name in optimizers:
        by_width = seed_means(rows, name)
        means = [statistics.fmean(by_width[w]) if w in by_width else math.nan for w in widths]
        cells = [(f"{m:.3f} ± {statistics.stdev(by_width[w]):.3f}" if len(by_width.get(w, [])) > 1 else f"{m:.3f}")
                 if w in by_width else "-" for w, m in zip(widths, means, strict=True)]  # fmt: skip
        monotone = all(b < a for a, b in zip(means, means[1:], strict=False))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'yes' if monotone else '**no**'} |")
    lines += ["", f"Power laws `val_loss - {ENTROPY_RATE:.3f} = a x^(-alpha)`, over every run and over the seed "
              f"means; r^2 below {R2_GOAL} is flagged.", "",
              "| optimizer | axis | alpha, every run [95% CI] | r^2 | alpha, seed means [95% CI] | r^2 | a (means) |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in optimizers:
        for axis in ("params", "compute_flops"):
            fit, means = fits.get((name, axis)), mean_fit(rows, name, axis)
            cells = []
            for f in (fit, means):
                if f is None:
                    cells += ["too few points", ""]
                    continue
                flag = "" if f.r2 >= R2_GOAL else " **< 0.9**"
                cells += [f"{f.exponent:.3f} [{f.exponent_ci[0]:.3f}, {f.exponent_ci[1]:.3f}]", f"{f.r2:.2f}{flag}"]
            lines.append(f"| {name} | {axis} | " + " | ".join(cells) + f" | {means.coefficient:.3g} |"
                         if means else f"| {name} | {axis} | " + " | ".join(cells) + " | |")  # fmt: skip
    lines += ["", "The same law above a fitted offset, `val_loss = L_inf + a params^(-alpha)` over every run "
              f"(L_inf between the floor {ENTROPY_RATE:.3f} and the lowest loss; ± one standard error):", "",
              "| optimizer | L_inf | alpha | r^2 |", "|---|---|---|---|"]  # fmt: skip
    for name in optimizers:
        fit = offset_fit(rows, name)
        lines.append(f"| {name} | {fit[0]:.3f} | {fit[1]:.2f} ± {fit[2]:.2f} | {fit[3]:.2f} |" if fit
                     else f"| {name} | did not converge | | |")  # fmt: skip
    lines += ["", "Exponent and constant compared (every run, against parameters): b − a of the exponent, "
              "and of log(val_loss − floor) at the geometric mean size, with two-sided t-test p-values.", "",
              "| a | b | alpha_b − alpha_a | p | log-constant b − a | p |", "|---|---|---|---|---|---|"]  # fmt: skip
    for a, b in combinations(optimizers, 2):
        d_slope, p_slope, d_const, p_const = compare(rows, a, b, "params")
        lines.append(f"| {a} | {b} | {d_slope:+.3f} | {p_slope:.2g} | {d_const:+.3f} | {p_const:.2g} |")
    notes = ["", args.notes.read_text().strip()] if args.notes else []
    return "\n".join([*lines, *notes, "", "![scaling](scaling.png)", "", footer(("torch", "scipy")), ""])


if __name__ == "__main__":
    main()
