"""Tests for circuits/program.py: exact affine angle maps and what cannot compile."""

import numpy as np
import pennylane as qml
import pytest

import circuits
from circuits import UnsupportedCircuit, compile_circuit


class Custom:
    """A template built from a function, to exercise compile_circuit on arbitrary code."""

    def __init__(self, fn, n_qubits=2, n_inputs=2, weight_shape=(3,), observables=None):
        self.fn, self.n_qubits, self.n_inputs, self.weight_shape = fn, n_qubits, n_inputs, weight_shape
        self.observables = observables or [qml.Z(w) for w in range(n_qubits)]
        self.n_outputs = len(self.observables)

    def __call__(self, inputs, weights):
        self.fn(inputs, weights)
        return [qml.expval(o) for o in self.observables]


def test_strongly_entangling_angles_are_the_inputs_and_weights():
    c = circuits.StronglyEntangling(3, 2)
    program = compile_circuit(c)
    inputs, weights = c.example_arguments(seed=5)
    angles = program.angles(inputs, weights)
    # RX(x_i) first, then Rot(phi, theta, omega) = RZ(phi) RY(theta) RZ(omega) per wire.
    np.testing.assert_array_equal(angles[:3], inputs)
    np.testing.assert_allclose(angles[3:6], weights[0, 0])
    assert program.data_angles.sum() == 3


def test_affine_maps_with_scales_and_offsets_are_exact():
    c = Custom(lambda x, w: (qml.RY(np.pi * x[..., 0] + 0.5, wires=0), qml.RX(2 * w[1] - w[2], wires=1)))
    program = compile_circuit(c)
    inputs, weights = np.array([0.3, -1.2]), np.array([0.1, 0.7, -0.4])
    np.testing.assert_allclose(program.angles(inputs, weights), [np.pi * 0.3 + 0.5, 2 * 0.7 + 0.4], atol=1e-14)


def test_non_affine_angles_are_refused():
    c = Custom(lambda x, w: qml.RX(x[..., 0] ** 2 + w[0], wires=0))
    with pytest.raises(UnsupportedCircuit, match="not affine"):
        compile_circuit(c)


def test_value_dependent_gate_sequences_are_refused():
    def fn(x, w):
        qml.RX(w[0], wires=0)
        if float(w[1]) > 0.5:
            qml.CNOT(wires=[0, 1])

    with pytest.raises(UnsupportedCircuit, match="gate sequence changes"):
        compile_circuit(Custom(fn))


def test_probabilities_are_not_expectation_values():
    class Probs(Custom):
        def __call__(self, inputs, weights):
            qml.RX(inputs[..., 0], wires=0)
            return qml.probs(wires=[0, 1])

    with pytest.raises(UnsupportedCircuit, match="only expectation values"):
        compile_circuit(Probs(lambda x, w: None))


def test_equal_templates_share_one_compilation():
    assert compile_circuit(circuits.HardwareEfficient(2, 1)) is compile_circuit(circuits.HardwareEfficient(2, 1))
    assert compile_circuit(circuits.HardwareEfficient(2, 1)) is not compile_circuit(circuits.HardwareEfficient(2, 2))
