"""The three circuit metrics against independent oracles (PennyLane, dense torch autograd), float64."""

import pennylane as qml
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pennylane import numpy as pnp

import circuits
import hybrid
from hybrid.optim.circuit_fisher import classical_fisher, pullback_metric, quantum_fisher
from tests.conftest import dense_pullback

TEMPLATES = sorted(circuits.TEMPLATES)


def _layer(name, n_qubits=3, n_layers=2, seed=0):
    torch.manual_seed(seed)
    return hybrid.QuantumLayer(circuits.TEMPLATES[name](n_qubits, n_layers)).double()


def _qnode(circuit, x, measure, device="default.qubit"):
    """The circuit's gates at input ``x`` as an autograd QNode of the weights (any shape), then ``measure()``."""

    @qml.qnode(qml.device(device, wires=circuit.n_qubits + 1), interface="autograd", diff_method="parameter-shift")
    def f(w):
        for op in qml.tape.make_qscript(circuit)(x, w.reshape(circuit.weight_shape)).operations:
            qml.apply(op)
        return measure()

    return f


@pytest.mark.parametrize("name", TEMPLATES)
def test_quantum_fisher_is_four_times_pennylane_metric_and_its_qfi(name):
    layer = _layer(name)
    x = torch.rand(1, layer.n_inputs, dtype=torch.float64)
    qfi = quantum_fisher(layer, x)
    w = pnp.array(layer.weights.detach().numpy(), requires_grad=True)
    # lightning.qubit: quantum_fisher then takes PennyLane's Hadamard-test metric (default.qubit's adjoint
    # metric needs a matrix for every template op, which the templates' inner layers lack)
    device = qml.device("default.qubit", wires=layer.circuit.n_qubits + 1)
    metric = qml.QNode(lambda w: layer.circuit(x[0].numpy(), w), device, interface="autograd")
    fisher = _qnode(layer.circuit, x[0].numpy(), lambda: qml.expval(qml.PauliZ(0)), "lightning.qubit")
    fs = torch.as_tensor(qml.metric_tensor(metric, approx=None)(w)).reshape(qfi.shape)
    torch.testing.assert_close(qfi, 4 * fs, atol=1e-10, rtol=0)
    if name != "strongly_entangling":  # its (L, n, 3) template weights break quantum_fisher's contraction (0.45)
        ref = torch.as_tensor(qml.gradients.quantum_fisher(fisher)(w.flatten()))
        torch.testing.assert_close(qfi, ref, atol=1e-10, rtol=0)


@pytest.mark.parametrize("name", TEMPLATES)
def test_classical_fisher_matches_pennylane(name):
    layer = _layer(name)
    xs = torch.rand(2, layer.n_inputs, dtype=torch.float64)
    cfi = classical_fisher(layer, xs)
    w = pnp.array(layer.weights.detach().numpy(), requires_grad=True)
    n = layer.circuit.n_qubits
    refs = [
        torch.as_tensor(
            qml.gradients.classical_fisher(_qnode(layer.circuit, x.numpy(), lambda: qml.probs(range(n))))(w)
        )
        for x in xs
    ]
    torch.testing.assert_close(cfi, torch.stack(refs).mean(0).reshape(cfi.shape), atol=1e-10, rtol=0)


def test_pullback_matches_dense_jacobian_product():
    torch.manual_seed(0)
    model = hybrid.HybridGPT(hybrid.ModelConfig(quantum="head"), vocab_size=11).double()
    layer = next(m for m in model.modules() if isinstance(m, hybrid.QuantumLayer))
    x = torch.randint(0, 11, (2, 5))
    metric = pullback_metric(model, layer, x)
    ref = dense_pullback(model, layer, x)
    n = layer.weights.numel()
    assert metric.dtype == torch.float64 and metric.shape == (n, n)
    torch.testing.assert_close(metric, ref, atol=1e-8, rtol=0)


@settings(max_examples=8, deadline=None)
@given(
    name=st.sampled_from(TEMPLATES),
    n_qubits=st.integers(1, 3),
    n_layers=st.integers(1, 2),
    seed=st.integers(0, 2**16),
    n_inputs=st.integers(1, 3),
)
def test_braunstein_caves_cfi_below_qfi(name, n_qubits, n_layers, seed, n_inputs):
    try:
        layer = _layer(name, n_qubits, n_layers, seed)
    except (ValueError, hybrid.InputError):
        return  # a size the template does not take
    xs = torch.rand(n_inputs, layer.n_inputs, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 6
    gap = quantum_fisher(layer, xs) - classical_fisher(layer, xs)
    assert torch.linalg.eigvalsh(gap).min() >= -1e-10


def test_classical_fisher_refuses_sampling_backend():
    layer = hybrid.QuantumLayer(circuits.TEMPLATES["strongly_entangling"](2, 1), backend="qiskit.aer", shots=64)
    with pytest.raises(hybrid.InputError, match="probabilities"):
        classical_fisher(layer, torch.zeros(1, layer.n_inputs))
