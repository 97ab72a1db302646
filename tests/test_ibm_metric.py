"""Tests for hybrid/ibm/metric.py: the block-diagonal metric tensor from EstimatorV2 jobs,
against PennyLane's ``qml.metric_tensor(approx="block-diag")`` on the autograd interface."""

import numpy as np
import pennylane as qml
import pytest
import torch
from pennylane import numpy as pnp

import circuits
from hybrid import QuantumLayer
from hybrid.ibm import LocalService, MetricEstimate, Runtime
from tests.conftest import ALL_TEMPLATES
from tests.ibm_doubles import exact_estimator


def pennylane_metric(circuit, inputs, weights) -> np.ndarray:
    """Mean over the rows of ``inputs`` of PennyLane's block-diagonal metric of the weights."""
    qnode = qml.QNode(circuit, qml.device("default.qubit"), interface="autograd")
    n = int(np.prod(circuit.weight_shape))
    blocks = [
        np.asarray(qml.metric_tensor(qnode, approx="block-diag")(
            pnp.array(x, requires_grad=False), pnp.array(weights, requires_grad=True))).reshape(n, n)
        for x in inputs
    ]  # fmt: skip
    return np.mean(blocks, axis=0)


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_metric_equals_pennylane_block_diag(monkeypatch, name):
    sent = exact_estimator(monkeypatch)
    circuit = circuits.make_circuit(name, 2, 2)
    layer = QuantumLayer(circuit, "qiskit.aer").double()
    inputs = np.random.default_rng(1).uniform(-np.pi, np.pi, (2, 2))  # the mean over inputs, too
    weights = layer.weights.detach().numpy()
    estimate = MetricEstimate(layer.program)
    metric = estimate.estimate(layer.executor, layer.program.angles(inputs, weights))
    np.testing.assert_allclose(metric, pennylane_metric(circuit, inputs, weights), atol=1e-10, rtol=0)
    assert len(sent) == 1 and len(sent[0]) == len(estimate.layers)  # one job, one PUB per layer


def test_metric_circuits_ride_in_the_training_job(monkeypatch):
    # What QNG will do: queue the metric's PUBs, and the next recorded forward carries them.
    sent = exact_estimator(monkeypatch)
    circuit = circuits.StronglyEntangling(2, 2)
    layer = QuantumLayer(circuit, "fake_manila").double()
    x = torch.rand(3, 2, dtype=torch.float64)
    riding, alone = MetricEstimate(layer.program), MetricEstimate(layer.program)
    layer.executor.extras.append(riding)
    layer(x).sum().backward()
    assert len(sent) == 1 and len(sent[0]) == 2 + len(riding.layers)  # forward, shifts, metric layers
    assert layer.executor.extras == []  # used once
    angles = layer.program.angles(x.numpy(), layer.weights.detach().numpy())
    np.testing.assert_allclose(riding.metric, alone.estimate(layer.executor, angles), atol=1e-12, rtol=0)
    np.testing.assert_allclose(riding.metric, pennylane_metric(circuit, x.numpy(), layer.weights.detach().numpy()),
                               atol=1e-10, rtol=0)  # fmt: skip


def test_sampled_metric_on_a_noiseless_fake_device_is_within_four_standard_errors():
    circuit = circuits.HardwareEfficient(2, 2)
    layer = QuantumLayer(circuit, "fake_manila", shots=20_000).double()
    inputs = np.random.default_rng(2).uniform(-np.pi, np.pi, (2, 2))
    weights = layer.weights.detach().numpy()
    estimate = MetricEstimate(layer.program)
    with Runtime(layer.options, local=LocalService(noiseless_devices=True)).active():
        metric = estimate.estimate(layer.executor, layer.program.angles(inputs, weights))
    reference = pennylane_metric(circuit, inputs, weights)
    nonzero = estimate.stderr > 0  # entries outside the blocks are 0 exactly
    assert np.all(np.abs(metric - reference)[nonzero] <= 4 * estimate.stderr[nonzero])
    assert np.all(metric[~nonzero] == 0) and estimate.stderr.max() < 0.01
