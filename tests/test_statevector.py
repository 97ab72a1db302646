"""Tests for hybrid/statevector.py against PennyLane's default.qubit (float64 / complex128)."""

import pennylane as qml
import pytest
import torch

import circuits
from hybrid.statevector import FUSE_MAX_QUBITS, estimate_bytes, simulate
from tests.conftest import ALL_TEMPLATES
from tests.test_program import Custom


def reference(circuit, inputs, weights):
    qnode = qml.QNode(circuit, qml.device("default.qubit"), interface="torch")
    return torch.stack([torch.as_tensor(r) for r in qnode(inputs, weights)], dim=-1)


def every_gate(x, w):
    """Every gate of circuits.GATE_SET, data-dependent and not, on three wires."""
    qml.RX(x[..., 0], wires=0)
    qml.RY(x[..., 1], wires=1)
    qml.Hadamard(wires=2)
    qml.PhaseShift(w[0], wires=2)
    qml.CNOT(wires=[2, 0])
    qml.RZ(x[..., 2], wires=2)
    qml.S(wires=0)
    qml.T(wires=1)
    qml.SX(wires=2)
    qml.PauliY(wires=0)
    qml.PauliX(wires=1)
    qml.SWAP(wires=[0, 2])
    qml.CZ(wires=[1, 2])
    qml.RY(w[1], wires=0)
    qml.PhaseShift(x[..., 0], wires=1)
    qml.PauliZ(wires=2)
    qml.Rot(w[2], w[0], w[1], wires=1)
    qml.CRX(w[2], wires=[0, 1])  # decomposes into RZ/RY/CNOT


OBSERVABLES = [
    qml.Z(0), qml.X(1), qml.Y(2), qml.X(0) @ qml.Z(2),
    0.5 * qml.Y(0) @ qml.Y(1) - 0.25 * qml.Z(1) + 0.1 * qml.X(2),
]  # fmt: skip


@pytest.mark.parametrize("batch", [1, 5])
def test_every_gate_and_pauli_observable_matches_pennylane(batch):
    c = Custom(every_gate, n_qubits=3, n_inputs=3, weight_shape=(3,), observables=OBSERVABLES)
    program = circuits.compile_circuit(c)
    x = torch.rand(batch, 3, dtype=torch.float64) * 6
    w = torch.rand(3, dtype=torch.float64) * 6
    torch.testing.assert_close(simulate(program, x, w), reference(c, x, w), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ALL_TEMPLATES)
@pytest.mark.parametrize("n_qubits", [1, 2, 4, FUSE_MAX_QUBITS + 1])
def test_templates_match_pennylane_fused_or_not(name, n_qubits):
    c = circuits.make_circuit(name, n_qubits, 2)
    x = torch.rand(3, n_qubits, dtype=torch.float64) * 6
    w = torch.rand(c.weight_shape, dtype=torch.float64) * 6
    got = simulate(circuits.compile_circuit(c), x, w)
    torch.testing.assert_close(got, reference(c, x, w), atol=1e-11, rtol=0)


def test_complex64_follows_float32_weights():
    c = circuits.StronglyEntangling(4, 2)
    x, w = torch.rand(6, 4) * 6, torch.rand(c.weight_shape) * 6
    out = simulate(circuits.compile_circuit(c), x, w)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(c, x.double(), w.double()), atol=1e-5, rtol=0)


def test_memory_estimate_grows_with_batch_and_qubits():
    small = circuits.compile_circuit(circuits.StronglyEntangling(4, 2))
    large = circuits.compile_circuit(circuits.StronglyEntangling(8, 2))
    assert estimate_bytes(small, 2048, torch.float32) > estimate_bytes(small, 1024, torch.float32)
    assert estimate_bytes(large, 1024, torch.float32) > 16 * estimate_bytes(small, 1024, torch.float32) / 2
    assert estimate_bytes(small, 1024, torch.float64) > estimate_bytes(small, 1024, torch.float32)
