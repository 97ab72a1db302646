"""A gate added as one row of ``circuits.GATES`` runs everywhere gate facts are read: the
simulator's plan (hybrid/sim/plan.py), the exact metric (hybrid/sim/metric.py) and the
parameter-shift rule of Qiskit jobs (hybrid/ibm/shots.py ``shift_table``), each checked
against PennyLane on default.qubit in float64.

The row is PennyLane's ``U1`` (diag(1, e^{i theta}), generator -|1><1| = Z/2 - I/2) with a
wide-shift rule d<O> = (<O>(theta + s) - <O>(theta - s)) / (2 sin s), s = pi/4, instead of
the table's pi/2 two-term rule: a wrong shift or a forgotten phase shows at once.
"""

import dataclasses
import math

import numpy as np
import pennylane as qml
import pytest
import torch

import circuits
from circuits.gates import GateSpec
from hybrid.ibm.shots import shift_table
from hybrid.optim.metric import metric_tensor
from hybrid.quantum import QuantumLayer
from hybrid.sim import statevector

S = math.pi / 4
WIDE = ((1 / (2 * math.sin(S)), S), (-1 / (2 * math.sin(S)), -S))


class U1Circuit:
    """Two qubits; U1 on data angles and on weights, between rotations and an entangler."""

    n_qubits, n_inputs, n_outputs, weight_shape = 2, 2, 2, (3, 2)

    def __call__(self, inputs, weights):
        self.gates(inputs, weights)
        return [qml.expval(qml.PauliZ(w)) for w in range(2)]

    @staticmethod
    def gates(inputs, weights):
        for w in range(2):
            qml.RY(inputs[..., w], wires=w)
            qml.U1(inputs[..., w], wires=w)
            qml.RX(weights[0, w], wires=w)
            qml.U1(weights[1, w], wires=w)
        qml.CNOT(wires=[0, 1])
        for w in range(2):
            qml.RY(weights[2, w], wires=w)

    def __repr__(self):
        return "U1Circuit()"


@pytest.fixture
def layer(monkeypatch):
    monkeypatch.setitem(circuits.GATES, "U1", GateSpec("U1", "p", pauli="Z", phase=-0.5, shift_rule=WIDE))
    torch.manual_seed(0)
    layer = QuantumLayer(U1Circuit()).double()
    assert layer.uses_simulator and "U1" in {g.name for g in layer.program.gates}
    return layer


@pytest.fixture
def inputs():
    return torch.rand(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 - 1.5


def qnode(diff_method="backprop"):
    return qml.QNode(U1Circuit(), qml.device("default.qubit", wires=2), interface="torch", diff_method=diff_method)


def test_simulator_runs_the_new_row_like_pennylane(layer, inputs):
    out = layer(inputs)  # (5, 2)
    ref = torch.stack([torch.stack(list(qnode()(x, layer.weights.detach()))) for x in inputs])
    torch.testing.assert_close(out.detach(), ref, atol=1e-12, rtol=0)


def test_exact_metric_of_the_new_row_matches_pennylane(layer, inputs):
    for approx in ("diag", "block-diag"):
        exact = metric_tensor(layer, inputs, approx=approx, method="exact")
        reference = metric_tensor(layer, inputs, approx=approx, method="pennylane")
        torch.testing.assert_close(exact, reference, atol=1e-10, rtol=0)
    # The full metric from PennyLane's state Jacobian (its own full transform mishandles projector generators).
    full = metric_tensor(layer, inputs, approx=None, method="exact")
    state = qml.QNode(lambda x, w: (U1Circuit.gates(x, w), qml.state())[1], qml.device("default.qubit", wires=2),
                      interface="torch")  # fmt: skip
    w = layer.weights.detach().reshape(-1)
    g = torch.zeros(6, 6, dtype=torch.float64)
    for x in inputs:
        f = lambda v, x=x: torch.view_as_real(state(x, v.reshape(3, 2)))  # noqa: E731
        jac = torch.autograd.functional.jacobian(f, w)  # (4, 2, 6)
        d = torch.complex(jac[:, 0], jac[:, 1])  # (4, 6)
        psi = state(x, w.reshape(3, 2))
        overlap = d.conj().T @ psi  # (6,)
        g += (d.conj().T @ d - torch.outer(overlap, overlap.conj())).real
    torch.testing.assert_close(full, g / len(inputs), atol=1e-10, rtol=0)


def test_shift_rule_of_the_new_row_gives_pennylanes_gradient(layer, inputs):
    program = layer.program
    w = layer.weights.detach()
    angles = program.angles(inputs.numpy(), w.numpy())  # (N, n_angles)
    shifted = np.flatnonzero(program.weight_angles)
    coefficients, moves = shift_table(program, shifted)  # (T, S), (T, S, n_angles)
    u1 = [k for k, a in enumerate(shifted) if program.gates[[g.angle for g in program.gates].index(a)].name == "U1"]
    assert u1 and np.allclose(moves[0, u1].max(axis=-1), S)  # the row's rule, not the table's default
    # The program with every gate angle an input, evaluated exactly at the shifted angles.
    direct = dataclasses.replace(program, n_inputs=program.n_angles, input_coeffs=np.eye(program.n_angles),
                                 weight_coeffs=np.zeros_like(program.weight_coeffs),
                                 offsets=np.zeros(program.n_angles))  # fmt: skip
    at = torch.as_tensor(angles[:, None, None, :] + moves)  # (N, T, S, n_angles)
    evs = statevector.simulate(direct, at.reshape(-1, program.n_angles), w).reshape(*at.shape[:3], -1)
    jacobian = np.einsum("ts,ntso->nos", coefficients, evs.numpy())  # (N, n_outputs, S)
    by_weights = jacobian @ program.weight_coeffs[shifted]  # (N, n_outputs, P)
    for n, x in enumerate(inputs):
        ref = torch.autograd.functional.jacobian(lambda v, x=x: torch.stack(list(qnode("parameter-shift")(x, v))), w)
        np.testing.assert_allclose(by_weights[n], ref.reshape(2, -1).numpy(), atol=1e-10, rtol=0)
