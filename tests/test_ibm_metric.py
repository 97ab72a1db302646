"""Tests for hybrid/ibm/metric.py: the block-diagonal metric tensor from EstimatorV2 jobs,
against PennyLane's ``qml.metric_tensor(approx="block-diag")`` on the autograd interface."""

import numpy as np
import pennylane as qml
import pytest
import torch
from pennylane import numpy as pnp

import circuits
import hybrid
import hybrid.optim
from hybrid import QuantumLayer
from hybrid.errors import InputError
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


def test_metric_tensor_on_a_qiskit_backend_is_the_estimator_metric(monkeypatch):
    sent = exact_estimator(monkeypatch)
    circuit = circuits.DataReuploading(2, 2)
    layer = QuantumLayer(circuit, "qiskit.aer").double()
    exact = QuantumLayer(circuit).double()
    exact.load_state_dict(layer.state_dict())
    inputs = torch.rand(3, 2, dtype=torch.float64) * 2 * np.pi
    for approx in ("block-diag", "diag"):
        torch.testing.assert_close(
            hybrid.metric_tensor(layer, inputs, approx), hybrid.metric_tensor(exact, inputs, approx), atol=1e-10, rtol=0
        )
    assert len(sent) == 2  # one job each
    with pytest.raises(InputError, match="block-diagonal metric only"):
        hybrid.metric_tensor(layer, inputs, None)
    with pytest.raises(InputError, match="Qiskit backend"):
        hybrid.metric_tensor(exact, inputs, method="estimator")


def test_qng_on_a_fake_device_sends_one_job_per_step_and_follows_the_statevector_trajectory(monkeypatch):
    # The metric circuits of step k+1 ride in step k+1's training job (forward, shifts, metric):
    # one job per step after the first, whose metric goes out alone. With every input in the
    # metric sample, each step's metric is the exact one at that step's weights and inputs.
    sent = exact_estimator(monkeypatch)
    circuit = circuits.StronglyEntangling(2, 2)
    hardware, simulator = QuantumLayer(circuit, "fake_manila").double(), QuantumLayer(circuit).double()
    simulator.load_state_dict(hardware.state_dict())
    optimizers = [hybrid.optim.QNG([layer], lr=0.1, damping=1e-3, metric_samples=8) for layer in (hardware, simulator)]
    targets = torch.tensor([0.3, -0.2], dtype=torch.float64)
    for step in range(4):
        x = torch.rand(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(step)) * np.pi
        for layer, optimizer in zip((hardware, simulator), optimizers, strict=True):
            optimizer.zero_grad()
            ((layer(x) - targets) ** 2).mean().backward()
            optimizer.step()
        assert len(sent) == step + 2  # step 0: training job + metric job; then one job per step
        torch.testing.assert_close(hardware.weights, simulator.weights, atol=1e-10, rtol=0)
    assert [len(pubs) for pubs in sent[2:]] == [2 + len(MetricEstimate(hardware.program).layers)] * 3
    with pytest.raises(InputError, match="full metric cannot be estimated on fake_manila"):
        hybrid.optim.QNG([hardware], lr=0.1, approx=None)


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_estimator_and_exact_metric_share_one_layer_grouping(name):
    from hybrid.ibm.metric import metric_layers
    from hybrid.optim.metric import layer_labels

    program = circuits.compile_circuit(circuits.make_circuit(name, 3, 2))
    trainable = np.flatnonzero(program.weight_angles)
    labels = layer_labels(program, trainable)
    layers = metric_layers(program)
    assert [list(layer.angles) for layer in layers] == [trainable[labels == k].tolist() for k in range(len(layers))]
    assert [layer.gates for layer in layers] == [layer.before for layer in program.layers]
