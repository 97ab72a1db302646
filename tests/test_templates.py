"""Tests for circuits/templates.py: shapes, drawing, Qiskit conversion."""

import numpy as np
import pennylane as qml
import pytest
from qiskit.quantum_info import Statevector

import circuits
from tests.conftest import ALL_TEMPLATES


@pytest.mark.parametrize("name", ALL_TEMPLATES)
@pytest.mark.parametrize("n_qubits", [1, 2, 3])
def test_shapes_and_outputs(name, n_qubits):
    c = circuits.make_circuit(name, n_qubits, 2)
    assert c.n_inputs == n_qubits and c.n_outputs == n_qubits
    inputs, weights = c.example_arguments()
    assert weights.shape == c.weight_shape
    out = qml.QNode(c, qml.device("default.qubit"))(inputs, weights)
    assert len(out) == c.n_outputs
    assert all(-1 <= float(v) <= 1 for v in out)


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_draw_names_every_wire(name):
    text = circuits.make_circuit(name, 3, 1).draw()
    assert all(f"{w}: " in text for w in range(3)) and "<Z>" in text


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_to_qiskit_matches_pennylane(name):
    c = circuits.make_circuit(name, 3, 2)
    inputs, weights = c.example_arguments(seed=3)
    expected = np.array(qml.QNode(c, qml.device("default.qubit"))(inputs, weights))
    program = circuits.compile_circuit(c)
    parametric = c.to_qiskit()
    assert parametric.num_parameters == c.n_inputs + int(np.prod(c.weight_shape))
    bound = c.to_qiskit(inputs, weights)
    state = Statevector(bound)
    got = np.array([state.expectation_value(obs).real for obs in circuits.qiskit_observables(program)])
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_unknown_template_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown circuit 'nope'; choose one of: data_reuploading"):
        circuits.make_circuit("nope", 2, 1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_sizes_must_be_positive_integers(bad):
    with pytest.raises(ValueError, match="n_qubits must be a positive integer"):
        circuits.StronglyEntangling(bad, 1)
