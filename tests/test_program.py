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


# --- the gate table ------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(circuits.GATES))
def test_each_gate_row_matches_pennylane_and_qiskit(name):
    from qiskit import QuantumCircuit
    from qiskit.quantum_info import Operator

    spec, op_class = circuits.GATES[name], getattr(qml, name)
    theta = 0.7321
    args = [theta] if spec.parametric else []
    matrix = qml.matrix(op_class(*args, wires=range(spec.n_wires)))  # wire 0 = most significant bit
    assert op_class.num_wires == spec.n_wires and op_class.num_params == len(args)

    qc = QuantumCircuit(spec.n_wires)
    getattr(qc, spec.qiskit)(*args, *range(spec.n_wires))
    np.testing.assert_allclose(Operator(qc).reverse_qargs().data, matrix, atol=1e-12)  # qiskit: qubit 0 = LSB
    if not spec.parametric:
        assert spec.shift_rule == ()
        return

    # U = exp(-i theta G), with G = P/2 + c I.
    G = spec.generator
    eigvals, vecs = np.linalg.eigh(G)
    np.testing.assert_allclose(vecs @ np.diag(np.exp(-1j * theta * eigvals)) @ vecs.conj().T, matrix, atol=1e-12)
    np.testing.assert_allclose(G, circuits.gates.PAULIS[spec.pauli] / 2 + spec.phase * np.eye(2), atol=0)

    # The shift rule is exact: against central differences of <psi|U^dag O U|psi>.
    rng = np.random.default_rng(0)
    psi = rng.normal(size=2) + 1j * rng.normal(size=2)
    A = rng.normal(size=(2, 2)) + 1j * rng.normal(size=(2, 2))
    obs = A + A.conj().T

    def f(t):
        phi = qml.matrix(op_class(t, wires=0)) @ psi
        return float(np.real(phi.conj() @ obs @ phi))

    h = 1e-6
    np.testing.assert_allclose(
        sum(c * f(theta + s) for c, s in spec.shift_rule), (f(theta + h) - f(theta - h)) / (2 * h), atol=1e-8
    )


def test_the_gate_set_is_the_gate_table():
    assert circuits.GATE_SET == frozenset(circuits.GATES)


def test_both_qiskit_circuits_are_one_gate_loop():
    from qiskit.quantum_info import Operator

    from hybrid.ibm.isa import angle_circuit

    c = circuits.DataReuploading(3, 2)
    program = compile_circuit(c)
    inputs, weights = c.example_arguments(seed=2)
    angles = program.angles(inputs, weights)
    by_angles = angle_circuit(program).assign_parameters(angles)
    direct = circuits.qiskit_circuit(program, angles)
    bound = circuits.to_qiskit(program, inputs, weights)
    assert Operator(by_angles).equiv(Operator(bound)) and Operator(direct).equiv(Operator(bound))


def test_parametrized_layers_are_stored_at_compile_time():
    def fn(x, w):
        qml.RX(w[0], wires=0)  # gate 0, layer 0
        qml.RY(w[1], wires=1)  # gate 1, layer 0
        qml.CNOT(wires=[0, 1])  # gate 2
        qml.RZ(w[2], wires=0)  # gate 3, layer 1: depends on gates 0, 1, 2
        qml.RX(x[..., 0], wires=2)  # gate 4: data only, not trainable
        qml.PhaseShift(w[3], wires=2)  # gate 5, layer 1: depends on gate 4 only

    program = compile_circuit(Custom(fn, n_qubits=3, n_inputs=1, weight_shape=(4,)))
    assert program.layers == (circuits.Layer((0, 1), ()), circuits.Layer((3, 5), (0, 1, 2, 4)))
    np.testing.assert_array_equal(program.weight_angles, [True, True, True, False, True])
