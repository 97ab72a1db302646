"""Tests for the QN-SPSA metric (hybrid/ibm/metric.py ``FidelityEstimate``, ``qnspsa_metric``;
hybrid/optim/metric.py ``qnspsa_sample``; ``optim.qng.metric = "qnspsa"``): the estimator's
closed form, its mean against the exact Fubini-Study metric, PennyLane's QNSPSAOptimizer raw
tensor, the compute-uncompute job path (exact estimator and sampled on Aer), and QNG's running
average, PSD regularization and checkpoint state."""

import numpy as np
import pennylane as qml
import pytest
import torch

import circuits
import hybrid
from hybrid import QuantumLayer
from hybrid.ibm import LocalService, Runtime
from hybrid.ibm.metric import FidelityEstimate, qnspsa_metric, qnspsa_shifts
from hybrid.optim.metric import qnspsa_sample
from hybrid.optim.qng import QNGPreconditioner, QNGSettings
from tests.ibm_doubles import exact_estimator


def test_qnspsa_metric_is_exact_on_a_quadratic_fidelity():
    # F(x) = 1 - x^T g x exactly: the estimate is 2 (d1^T g d2) sym(d1 d2^T), whose mean over
    # Rademacher directions is g; per draw it is the closed form.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    g = a @ a.T
    d = rng.choice([-1.0, 1.0], size=(5, 2, 3))
    shifts = 0.01 * qnspsa_shifts(d[:, 0], d[:, 1])  # (5, 4, 3)
    fidelities = 1 - np.einsum("mki,ij,mkj->mk", shifts, g, shifts)
    estimate = qnspsa_metric(fidelities, d[:, 0], d[:, 1], 0.01)
    bilinear = np.einsum("mi,ij,mj->m", d[:, 0], g, d[:, 1])
    outer = np.einsum("mi,mj->mij", d[:, 0], d[:, 1])
    np.testing.assert_allclose(estimate, bilinear[:, None, None] * (outer + outer.transpose(0, 2, 1)) / 2, atol=1e-10)


@pytest.mark.parametrize("name", ["hardware_efficient", "strongly_entangling"])
def test_mean_of_qnspsa_estimates_is_the_exact_metric_within_three_standard_errors(name):
    torch.manual_seed(0)
    circuit = circuits.make_circuit(name, 2, 2)
    layer = QuantumLayer(circuit).double()
    x = torch.rand(1, 2, dtype=torch.float64) * 3
    exact = hybrid.metric_tensor(layer, x, approx=None)  # PennyLane's convention, full
    draws = x.expand(6000, 2)  # one estimate per row, fresh directions each; exact overlaps
    mean, stderr = qnspsa_sample(layer.program, draws, layer.weights.detach(), 1e-3, torch.Generator().manual_seed(1))
    assert torch.all((mean - exact).abs() <= 3 * stderr), ((mean - exact) / stderr)
    assert stderr.max() < 0.1 * exact.abs().max()  # the test has power


def test_qnspsa_follows_pennylane_qnspsa_optimizer_raw_tensor():
    circuit = circuits.HardwareEfficient(2, 1)
    layer = QuantumLayer(circuit).double()
    x = np.array([0.4, -1.1])
    device = qml.device("default.qubit", wires=2)
    qnode = qml.QNode(lambda w: circuit(x, w), device, interface="autograd")
    from pennylane import numpy as pnp

    w = pnp.array(layer.weights.detach().numpy(), requires_grad=True)
    opt = qml.QNSPSAOptimizer(finite_diff_step=0.05, seed=4)
    tapes, directions = opt._get_tensor_tapes(qnode, (w,), {})
    theirs = opt._post_process_tensor(qml.execute(tapes, device), directions)
    # ours, at the same directions (weights in C order: PennyLane's flattening too)
    d1, d2 = (np.asarray(d)[None] for d in directions)
    program = layer.program
    from hybrid.sim.statevector import final_state

    def state(weights):
        return final_state(program, torch.as_tensor(x[None]), torch.as_tensor(weights)).numpy()[0]

    psi = state(np.asarray(w))
    shifts = qnspsa_shifts(d1, d2)[0].reshape(4, *w.shape)
    fidelities = np.array([[abs(np.vdot(psi, state(np.asarray(w) + 0.05 * s))) ** 2 for s in shifts]])
    np.testing.assert_allclose(qnspsa_metric(fidelities, d1, d2, 0.05)[0], np.asarray(theirs), atol=1e-10)


def test_fidelity_circuits_on_the_job_path_equal_the_simulator_estimate(monkeypatch):
    sent = exact_estimator(monkeypatch)
    layer = QuantumLayer(circuits.StronglyEntangling(2, 2), "fake_manila").double()
    x = torch.rand(5, 2, dtype=torch.float64)
    riding = FidelityEstimate(layer.program, 0.05, 3, torch.Generator().manual_seed(2))
    layer.executor.extras.append(riding)
    layer(x).sum().backward()
    assert len(sent) == 1 and [tuple(p[2].shape[:-2]) for p in sent[0]] == [(5,), (5, 2, 12), (3, 4)]
    rows = torch.randperm(5, generator=torch.Generator().manual_seed(2))[:3]  # the rows it drew, then directions
    generator = torch.Generator().manual_seed(2)
    torch.randperm(5, generator=generator)
    expected, _ = qnspsa_sample(layer.program, x[rows], layer.weights.detach(), 0.05, generator)
    np.testing.assert_allclose(riding.metric, expected.numpy(), atol=1e-10, rtol=0)


def test_sampled_fidelities_on_aer_agree_with_exact_overlaps():
    layer = QuantumLayer(circuits.HardwareEfficient(2, 2), "qiskit.aer", shots=20_000).double()
    inputs = torch.rand(3, 2, dtype=torch.float64)
    angles = layer.program.angles(inputs.numpy(), layer.weights.detach().numpy())
    estimate = FidelityEstimate(layer.program, 0.3, None, torch.Generator().manual_seed(1))
    with Runtime(layer.options, local=LocalService()).active():
        estimate.estimate(layer.executor, angles)
    generator = torch.Generator().manual_seed(1)
    expected, _ = qnspsa_sample(layer.program, inputs, layer.weights.detach(), 0.3, generator)
    # fidelities near 1: binomial noise sqrt(F (1 - F) / shots) is small; the metric follows
    assert np.all(estimate.fidelities <= 1 + 1e-9) and np.all(estimate.fidelities > 0.5)
    assert np.abs(estimate.metric - expected.numpy()).max() < 0.2 * np.abs(expected.numpy()).max() + 0.05


def test_qng_averages_qnspsa_estimates_over_refreshes_and_keeps_them_psd():
    layer = QuantumLayer(circuits.HardwareEfficient(2, 2)).double()
    x = torch.rand(8, 2, dtype=torch.float64)
    qng = QNGPreconditioner([layer], metric="qnspsa", approx="full", metric_samples=8, seed=3, fidelity_step=0.01)
    generator = torch.Generator().manual_seed(3)
    raws = []
    for _ in range(4):
        layer.weights.grad = None
        layer.last_inputs = x
        layer(x).sum().backward()
        rows = torch.randperm(8, generator=generator)[:8]
        raws.append(qnspsa_sample(layer.program, x[rows], layer.weights.detach(), 0.01, generator)[0])
        qng.precondition(lr=0.1)
    average = torch.stack(raws).mean(0)
    torch.testing.assert_close(qng.average[0], average, atol=1e-12, rtol=0)
    eigenvalues, vectors = torch.linalg.eigh(average)
    torch.testing.assert_close(qng.metrics[0], (vectors * eigenvalues.abs()) @ vectors.T, atol=1e-12, rtol=0)
    state = qng.state_dict()
    again = QNGPreconditioner([layer], metric="qnspsa", approx="full", metric_samples=8, seed=99)
    again.load_state_dict(state)
    assert again.refreshes == 4 and torch.equal(again.average[0], qng.average[0])


def test_qnspsa_block_diag_keeps_the_blocks_of_the_exact_metric():
    layer = QuantumLayer(circuits.HardwareEfficient(2, 2)).double()
    x = torch.rand(4, 2, dtype=torch.float64)
    qng = QNGPreconditioner([layer], metric="qnspsa", metric_samples=4, seed=0)  # approx block-diag
    layer(x).sum().backward()
    qng.precondition(lr=0.1)
    zero = hybrid.metric_tensor(layer, x, approx="block-diag") == 0
    full = hybrid.metric_tensor(layer, x, approx=None)
    assert torch.all(qng.metrics[0][zero & (full != 0)] == 0)


def test_bad_qnspsa_settings():
    with pytest.raises(hybrid.InputError, match="optim.qng.metric must be one of exact, estimator, qnspsa"):
        QNGSettings(metric="spsa").validate()
    with pytest.raises(hybrid.InputError, match="optim.qng.fidelity_step must lie in"):
        QNGSettings(fidelity_step=-1).validate()
