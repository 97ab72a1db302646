"""Tests for hybrid/kfac_blocks.py: factors by hand, damped products against dense Kronecker solves,
decompositions that fail soft."""

import math

import pytest
import torch

from hybrid.optim.kfac_blocks import (
    batch_factors,
    decompose,
    eigen_precondition,
    factored_damping,
    inverse_precondition,
)


def spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    return m @ m.T / (2 * d)


def test_batch_factors_by_hand():
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)  # (B=1, T=2, d_in=2)
    g = torch.tensor([[[0.5], [-1.0]]], dtype=torch.float64)  # (1, 2, d_out=1), of a mean over M = 2 terms
    A, G = batch_factors([x], [g], "expand", bias=True)
    rows = torch.tensor([[1.0, 2.0, 1.0], [3.0, 4.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(A, rows.T @ rows / 2)
    torch.testing.assert_close(G, torch.tensor([[((2 * 0.5) ** 2 + (2 * -1.0) ** 2) / 2]], dtype=torch.float64))
    A, G = batch_factors([x], [g], "reduce", bias=False)
    torch.testing.assert_close(A, torch.tensor([[4.0, 6.0], [6.0, 9.0]], dtype=torch.float64))  # mean_t x = (2, 3)
    torch.testing.assert_close(G, torch.tensor([[(2 * (0.5 - 1.0)) ** 2 / 2]], dtype=torch.float64))


def test_gradient_accumulation_pools_the_rows():
    """Two micro-batches, each loss a mean over its own 3 rows, give the factors of one batch of 6."""
    x = torch.randn(6, 3, dtype=torch.float64)
    per_term = torch.randn(6, 2, dtype=torch.float64)  # d l_i / d output_i
    pooled = batch_factors([x[:3], x[3:]], [per_term[:3] / 3, per_term[3:] / 3], "expand", bias=True)
    whole = batch_factors([x], [per_term / 6], "expand", bias=True)
    torch.testing.assert_close(pooled[0], whole[0])
    torch.testing.assert_close(pooled[1], whole[1])


@pytest.mark.parametrize("damping", [1e-3, 0.3])
def test_eigen_precondition_is_the_damped_kronecker_solve(damping):
    A, G = spd(4, 0), spd(3, 1)
    grad = torch.randn(3, 4, dtype=torch.float64)
    (QA, lA), (QG, lG) = decompose([A], "eigh")[0], decompose([G], "eigh")[0]
    update = eigen_precondition(grad, QG, QA, 1 / (lG[:, None] * lA[None, :] + damping))
    dense = torch.kron(G, A) + damping * torch.eye(12, dtype=torch.float64)  # row-major [W | b] order
    torch.testing.assert_close(update.flatten(), torch.linalg.solve(dense, grad.flatten()), rtol=1e-10, atol=1e-12)


def test_inverse_precondition_with_factored_damping_is_the_kronecker_solve():
    A, G = spd(4, 2), spd(3, 3)
    grad = torch.randn(2, 3, 4, dtype=torch.float64)  # two layers of equal shape, one batched call
    Ad, Gd = factored_damping(A, G, 0.01)
    pi = math.sqrt((A.trace() / 4) / (G.trace() / 3))
    torch.testing.assert_close(Ad, A + pi * 0.1 * torch.eye(4, dtype=torch.float64))
    A_inv, G_inv = decompose([Ad], "cholesky")[0], decompose([Gd], "cholesky")[0]
    update = inverse_precondition(grad, G_inv, A_inv)
    for k in range(2):
        expected = torch.linalg.solve(torch.kron(Gd, Ad), grad[k].flatten())
        torch.testing.assert_close(update[k].flatten(), expected, rtol=1e-10, atol=1e-12)


def test_decompose_fails_soft():
    good, bad = spd(3, 4), spd(3, 5)
    bad[0, 0] = math.nan
    results = decompose([good, bad, good], "eigh")
    assert results[1] is None and all(r is not None for r in (results[0], results[2]))
    not_pd = -torch.eye(3, dtype=torch.float64)
    assert decompose([good, not_pd], "cholesky")[1] is None
    lam = decompose([torch.zeros(3, 3, dtype=torch.float64) - 1e-18 * torch.eye(3, dtype=torch.float64)], "eigh")
    assert (lam[0][1] >= 0).all()  # round-off negatives are clamped: 1 / (lG lA + damping) stays finite
