"""Tests for hybrid/scaling.py: power-law fits and their confidence intervals."""

import numpy as np
import pytest

from hybrid.scaling import fit_power_law


def test_exact_power_law_is_recovered():
    x = np.array([1e3, 3e3, 1e4, 3e4, 1e5])
    fit = fit_power_law(x, 7.0 * x**-0.35)
    assert fit.exponent == pytest.approx(0.35, abs=1e-12)
    assert fit.coefficient == pytest.approx(7.0, rel=1e-10)
    assert fit.r2 == pytest.approx(1.0) and fit.n == 5
    np.testing.assert_allclose(fit(x), 7.0 * x**-0.35)


def test_confidence_intervals_cover_the_truth_at_their_level():
    """With log-normal noise the model is exactly OLS in log space: 95% intervals cover ~95%."""
    rng = np.random.default_rng(0)
    x = np.geomspace(1e3, 1e6, 8)
    covered = []
    for _ in range(400):
        y = 3.0 * x**-0.2 * np.exp(rng.normal(0, 0.05, x.size))
        lo, hi = fit_power_law(x, y).exponent_ci
        covered.append(lo <= 0.2 <= hi)
    assert 0.92 <= np.mean(covered) <= 0.98


@pytest.mark.parametrize(
    "x, y, message",
    [
        ([1, 2], [1, 2], "at least 3 points"),
        ([5, 5, 5], [1, 2, 3], "2 distinct sizes"),
        ([1, 2, 3], [1, -1, 2], "positive"),
    ],  # fmt: skip
)
def test_bad_inputs(x, y, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(x, y)
