"""Tests for Momentum-QNG (``QNG(..., momentum=rho)`` in hybrid/optim/qng.py): PennyLane's
MomentumQNGOptimizer trajectory, block-diagonal and full metric, float64."""

import numpy as np
import pennylane as qml
import pytest
import torch
from pennylane import numpy as pnp

from hybrid import QuantumLayer
from hybrid.optim import QNG
from tests.test_qng import NoData


@pytest.mark.parametrize("approx", ["block-diag", None])
def test_twenty_steps_follow_pennylanes_momentum_qng_optimizer(approx):
    """torch's SGD momentum on the QNG direction, b <- rho b + P(g), theta -= lr b, is PennyLane's
    a <- rho a + lr P(g), theta -= a with a = lr b."""
    lr, rho, damping = 0.05, 0.7, 0.01
    w0 = np.random.default_rng(2).uniform(0, 2 * np.pi, NoData.weight_shape)

    qnode = qml.QNode(NoData(), qml.device("default.qubit", wires=3), interface="autograd")
    reference = qml.MomentumQNGOptimizer(stepsize=lr, momentum=rho, lam=damping, approx=approx)
    x, w = pnp.zeros(1, requires_grad=False), pnp.array(w0, requires_grad=True)

    layer = QuantumLayer(NoData()).double()
    with torch.no_grad():
        layer.weights.copy_(torch.as_tensor(w0))
    optimizer = QNG([layer], lr=lr, momentum=rho, damping=damping, approx=approx)
    plain = qml.QNGOptimizer(stepsize=lr, lam=damping, approx=approx)  # the same steps without momentum
    w_plain = pnp.array(w0, requires_grad=True)
    for _ in range(20):
        x, w = reference.step(qnode, x, w)
        _, w_plain = plain.step(qnode, x, w_plain)
        optimizer.zero_grad()
        layer(torch.zeros(1, 1, dtype=torch.float64)).sum().backward()
        optimizer.step()
        np.testing.assert_allclose(layer.weights.detach().numpy(), w, atol=1e-8, rtol=0)
    assert layer.weights.dtype == torch.float64
    assert np.abs(w - w0).max() > 0.1  # it moved
    assert np.abs(w - w_plain).max() > 0.05  # and momentum mattered
