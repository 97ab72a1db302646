"""Tests for hybrid/diagnostics.py against direct computation (float64)."""

import pytest
import torch

from hybrid.diagnostics import Spectrum, kronecker_spectrum, metric_spectrum


def random_psd(n, rank=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank or n, generator=g, dtype=torch.float64)
    return x @ x.T / (rank or n)


@pytest.mark.parametrize("shape", [(3, 4), (5, 2), (1, 6)])
def test_kronecker_spectrum_equals_the_explicit_product(shape):
    A, G = random_psd(shape[0], seed=1), random_psd(shape[1], seed=2)
    explicit = torch.sort(torch.linalg.eigvalsh(torch.kron(A, G)), descending=True).values
    torch.testing.assert_close(kronecker_spectrum(A, G), explicit.clamp_min(0), atol=1e-12, rtol=0)


def test_summary_statistics_by_hand():
    s = Spectrum("block", "quantum", torch.tensor([4.0, 1.0, 1e-14, 0.0], dtype=torch.float64))
    summary = s.summary(damping=1.0)
    assert summary["max"] == 4.0 and summary["rank"] == 2 and summary["condition"] == 4.0
    assert summary["effective_dim"] == pytest.approx(4 / 5 + 1 / 2, abs=1e-12)
    assert summary["participation"] == pytest.approx(25 / 17)


def test_metric_spectrum_of_a_rank_deficient_metric():
    metric = random_psd(6, rank=2, seed=3)
    spectrum = metric_spectrum(metric)
    assert spectrum.shape == (6,) and torch.all(spectrum[:-1] >= spectrum[1:])
    assert Spectrum("m", "quantum", spectrum).summary(1e-3)["rank"] == 2
