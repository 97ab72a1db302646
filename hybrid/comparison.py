"""Comparing optimizers' final runs: time to a target loss, the Welch test, a bootstrap interval.

A *run* is the rows of one ``metrics.csv`` (dicts with ``step``, ``val_loss``, ``seconds``); an
optimizer's finals are a list of runs, one per seed, all with the same evaluation steps.

    target = mean_final(adamw_runs)                        # tuned AdamW's mean final val loss
    hit = time_to_target(muon_runs, target)                # (step, seconds) of the seed-mean curve, or None
    low, high = bootstrap_ratio(muon_runs, adamw_runs, "step")   # 95% interval of hit / AdamW's

The time to a target is read off the seed-mean validation curve (the first evaluation where the
mean over seeds is at or below the target), so tuned AdamW reaches its own mean final loss at
its last evaluation by construction; a ratio below 1 means fewer steps (or seconds) than AdamW.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
from scipy.stats import ttest_ind

BOOTSTRAP_RESAMPLES = 2000
TOLERANCE = 1e-9  # nats: the mean of the same numbers in another order


def mean_final(runs: list[list[dict]]) -> float:
    """The mean over seeds of the last row's ``val_loss``; nan without runs."""
    return statistics.fmean(run[-1]["val_loss"] for run in runs) if runs else math.nan


def upper_mean(losses: list[float]) -> float:
    """The mean plus one standard error of ``losses`` (the mean alone for one value; inf if any
    is not finite): a config that is good on average but fails on some seeds pays for its spread."""
    if not all(map(math.isfinite, losses)):
        return math.inf
    mean = statistics.fmean(losses)
    return mean + statistics.stdev(losses) / math.sqrt(len(losses)) if len(losses) > 1 else mean


def time_to_target(runs: list[list[dict]], target: float) -> tuple[int, float] | None:
    """(step, seconds) of the first evaluation whose val loss, averaged over the seeds, is at or
    below ``target``; seconds is the mean over seeds of the wall clock at that step. None if never.

    Only the steps every run evaluated count (a run that stopped early shortens the curve).
    """
    if not runs:
        return None
    common = set.intersection(*({int(r["step"]) for r in run} for run in runs))
    by_step = [{int(r["step"]): r for r in run} for run in runs]
    for step in sorted(common):
        rows = [run[step] for run in by_step]
        if statistics.fmean(r["val_loss"] for r in rows) <= target + TOLERANCE:
            return step, statistics.fmean(r["seconds"] for r in rows)
    return None


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test that ``a`` and ``b`` have the same mean; nan with
    fewer than 2 values in either, or with a non-finite value (a diverged seed)."""
    if len(a) < 2 or len(b) < 2 or not all(map(math.isfinite, [*a, *b])):
        return math.nan
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def bootstrap_ratio(
    runs: list[list[dict]], reference: list[list[dict]], column: str,
    resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """95% percentile interval of ``time(runs) / time(reference)`` to the reference's mean final
    val loss, resampling the seeds of both with replacement (the target moves with each resample
    of the reference, as the statistic is defined).

    Args:
        column: ``"step"`` or ``"seconds"``.

    Returns:
        (low, high); ``inf`` where more than 2.5% (97.5%) of the resampled ``runs`` miss the target.
    """
    index = 0 if column == "step" else 1
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(resamples):
        ours = [runs[i] for i in rng.integers(len(runs), size=len(runs))]
        theirs = [reference[i] for i in rng.integers(len(reference), size=len(reference))]
        target = mean_final(theirs)
        hit, ref = time_to_target(ours, target), time_to_target(theirs, target)
        if hit is None:
            ratios.append(math.inf)
        elif ref[index] > 0:  # ref: its last evaluation at the latest; 0 only if it starts at its target
            ratios.append(hit[index] / ref[index])
    if not ratios:
        return math.nan, math.nan
    low, high = np.quantile(np.array(ratios), [0.025, 0.975], method="inverted_cdf")
    return float(low), float(high)


def bracket_position(value: float, low: float, high: float, log: bool) -> float:
    """Where ``value`` lies in ``[low, high]``, 0 at ``low`` and 1 at ``high`` (in log space for
    log-scaled keys); outside [0, 1] for a value outside the range."""
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    return (value - low) / (high - low)
