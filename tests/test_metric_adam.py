"""Tests for hybrid/optim/metric_adam.py: Adam on the rotated weights with a fixed metric eigenbasis, moments
carried across a refresh (by hand), exact resume, and no NaN at the defaults."""

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch.func import functional_call

import circuits
import hybrid
from hybrid import InputError, QuantumLayer
from hybrid.optim.metric_adam import MetricAdam, MetricAdamSettings
from tests.test_qng import NoData

NEVER = 10**9


def step_inputs(step, n=8):
    g = torch.Generator().manual_seed(100 + step)
    return torch.rand(n, 2, generator=g, dtype=torch.float64) * 6, torch.randn(n, 1, generator=g, dtype=torch.float64)


def layer(seed=0):
    torch.manual_seed(seed)
    return QuantumLayer(circuits.StronglyEntangling(2, 1)).double()


def backward(model, step):
    x, probe = step_inputs(step)
    model.weights.grad = None
    (model(x)[:, :1] * probe).sum().backward()


def test_a_fixed_basis_is_adam_on_the_rotated_weights():
    ours = QuantumLayer(NoData()).double()
    reference = copy.deepcopy(ours)
    optimizer = MetricAdam([ours], lr=0.05, curvature_every=NEVER, beta2=0.95)
    x = torch.zeros(1, 1, dtype=torch.float64)
    rotated = oracle = Q = None
    for _ in range(12):
        optimizer.zero_grad()
        ours(x).sum().backward()
        optimizer.step()
        if Q is None:  # the basis of the first step's metric, kept since
            Q = optimizer.metric_adam.bases[0]
            metric = hybrid.metric_tensor(reference, x, "block-diag")
            D = Q.T @ metric @ Q
            torch.testing.assert_close(D, torch.diag(torch.linalg.eigvalsh(metric)), atol=1e-12, rtol=0)
            rotated = (Q.T @ reference.weights.detach().reshape(-1)).requires_grad_()
            oracle = torch.optim.Adam([rotated], lr=0.05, betas=(0.9, 0.95), eps=1e-8)
        oracle.zero_grad()
        weights = (Q @ rotated).view_as(reference.weights)
        functional_call(reference, {"weights": weights}, (x,)).sum().backward()
        oracle.step()
        torch.testing.assert_close(ours.weights.detach().reshape(-1), Q @ rotated.detach(), atol=1e-10, rtol=0)
    assert (ours.weights - reference.weights).abs().max() > 0.1  # it moved


def test_moments_are_carried_into_the_new_basis():
    model = layer()
    b1, b2, eps = 0.9, 0.95, 1e-8
    optimizer = MetricAdam([model], lr=0.05, curvature_every=2, beta1=b1, beta2=b2, eps=eps, metric_samples=100)
    pc = optimizer.metric_adam
    for step in range(4):
        backward(model, step)
        optimizer.step()
    Q_old, (m_old, v_old, t) = pc.bases[0].clone(), [s.clone() if torch.is_tensor(s) else s for s in pc.moments[0]]
    backward(model, 4)
    grad = model.weights.grad.reshape(-1, 1).clone()
    optimizer.step()  # refreshes the metric at step 4
    Q = pc.bases[0]
    metric = hybrid.metric_tensor(model, step_inputs(4)[0], "block-diag")  # all rows of step 4's inputs
    torch.testing.assert_close(Q.T @ metric @ Q, torch.diag(torch.linalg.eigvalsh(metric)), atol=1e-10, rtol=0)
    R = Q.T @ Q_old
    g = Q.T @ grad
    m = b1 * (R @ m_old) + (1 - b1) * g
    v = b2 * ((R**2) @ v_old) + (1 - b2) * g**2
    torch.testing.assert_close(pc.moments[0][0], m, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(pc.moments[0][1], v, atol=1e-14, rtol=1e-12)
    direction = Q @ ((m / (1 - b1 ** (t + 1))) / ((v / (1 - b2 ** (t + 1))).sqrt() + eps))
    torch.testing.assert_close(model.weights.grad.reshape(-1, 1), direction, atol=1e-12, rtol=0)
    assert (b1 * m_old + (1 - b1) * g - m).abs().max() > 1e-3  # left in the old basis it would differ


def test_state_round_trip_continues_the_same_trajectory():
    def run(model, optimizer, steps):
        for step in steps:
            backward(model, step)
            optimizer.step()

    settings = {"lr": 0.05, "curvature_every": 3, "metric_samples": 4, "seed": 3}
    a = layer()
    opt_a = MetricAdam([a], **settings)
    run(a, opt_a, range(4))
    saved_weights, saved = a.weights.detach().clone(), copy.deepcopy(opt_a.state_dict())
    run(a, opt_a, range(4, 9))
    b = layer(seed=1)
    with torch.no_grad():
        b.weights.copy_(saved_weights)
    opt_b = MetricAdam([b], **settings)
    opt_b.load_state_dict(saved)
    run(b, opt_b, range(4, 9))
    assert torch.equal(a.weights, b.weights)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_settings_but_lr_stay_finite_and_learn(seed):
    model = layer(seed)
    optimizer = MetricAdam([model], lr=0.05)
    losses = []
    target = torch.linspace(-0.5, 0.5, 8, dtype=torch.float64)[:, None]
    x, _ = step_inputs(seed)  # one fixed batch: a target the circuit can fit
    for _ in range(60):
        loss = ((model(x)[:, :1] - target) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and torch.isfinite(model.weights).all()
    assert optimizer.stats()["metric_adam_fallbacks"] == 0
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_settings_are_validated():
    kwargs = dataclasses.asdict(MetricAdamSettings(approx="full", curvature_every=3))
    optimizer = MetricAdam([layer()], **kwargs)
    assert optimizer.metric_adam.qng.approx is None and optimizer.metric_adam.qng.curvature_every == 3
    for bad in ({"beta2": 1.0}, {"eps": -1.0}, {"approx": "x"}, {"curvature_every": 0}):
        with pytest.raises(InputError, match=next(iter(bad))):
            MetricAdamSettings(**bad).validate()
        with pytest.raises(InputError):
            MetricAdam([layer()], **bad)
