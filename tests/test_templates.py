"""Tests for circuits/templates.py: shapes, drawing, Qiskit conversion, entangle=False."""

import numpy as np
import pennylane as qml
import pytest
import torch
from qiskit.quantum_info import Statevector

import circuits
from hybrid.sim.statevector import final_state
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


def single_qubit_purities(states: torch.Tensor, n_qubits: int) -> torch.Tensor:
    """tr(rho_q^2) of each wire's reduced state: (N, 2^n) states (wire 0 = MSB) -> (N, n)."""
    psi = states.reshape(-1, *[2] * n_qubits)  # (N, 2, ..., 2)
    purities = []
    for q in range(n_qubits):
        rows = psi.movedim(1 + q, 1).reshape(psi.shape[0], 2, -1)  # (N, 2, 2^(n-1))
        rho = rows @ rows.conj().transpose(1, 2)  # (N, 2, 2)
        purities.append((rho @ rho).diagonal(dim1=1, dim2=2).sum(-1).real)
    return torch.stack(purities, dim=-1)


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_without_entanglers_the_program_has_no_two_qubit_gate(name):
    entangled = circuits.compile_circuit(circuits.make_circuit(name, 3, 2))
    product = circuits.compile_circuit(circuits.make_circuit(name, 3, 2, entangle=False))
    assert any(len(g.wires) > 1 for g in entangled.gates)
    assert all(len(g.wires) == 1 for g in product.gates)
    assert product.weight_shape == entangled.weight_shape and product.n_inputs == entangled.n_inputs


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_without_entanglers_every_wire_stays_pure(name):
    n = 4
    x = torch.rand(8, n, dtype=torch.float64) * 2 * np.pi
    purity = {}
    for entangle in (True, False):
        c = circuits.make_circuit(name, n, 2, measure="ZZ", entangle=entangle)
        w = torch.rand(c.weight_shape, dtype=torch.float64) * 2 * np.pi
        purity[entangle] = single_qubit_purities(final_state(circuits.compile_circuit(c), x, w), n)
    torch.testing.assert_close(purity[False], torch.ones_like(purity[False]), atol=1e-10, rtol=0)
    assert purity[True].min() < 0.99  # a generic draw entangles


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_without_entanglers_the_simulator_matches_pennylane(name):
    c = circuits.make_circuit(name, 3, 2, entangle=False)
    x = torch.rand(2, 3, dtype=torch.float64) * 6
    w = torch.rand(c.weight_shape, dtype=torch.float64) * 6
    qnode = qml.QNode(lambda a, b: (c.gates(a, b), qml.state())[1], qml.device("default.qubit"), interface="torch")
    torch.testing.assert_close(final_state(circuits.compile_circuit(c), x, w), qnode(x, w), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_entangle_is_in_the_repr_and_the_compile_cache_key(name):
    product, entangled = circuits.make_circuit(name, 2, 1, entangle=False), circuits.make_circuit(name, 2, 1)
    assert "entangle=False" in repr(product) and "entangle" not in repr(entangled)
    assert circuits.compile_circuit(product) is not circuits.compile_circuit(entangled)


def test_options_other_than_the_default_are_in_the_repr():
    assert (
        repr(circuits.StronglyEntangling(2, 1, rotation="Y"))
        == "StronglyEntangling(n_qubits=2, n_layers=1, rotation='Y')"
    )
    assert repr(circuits.HardwareEfficient(2, 1, "CZ", entangle=False)) == (
        "HardwareEfficient(n_qubits=2, n_layers=1, entangler='CZ', entangle=False)"
    )


def test_a_template_without_entanglers_refuses_to_drop_them():
    class Rotations(circuits.HardwareEfficient):
        has_entanglers = False

    assert Rotations(2, 1).entangle
    with pytest.raises(ValueError, match="Rotations has no two-qubit gates.*leave entangle=True"):
        Rotations(2, 1, entangle=False)
    with pytest.raises(ValueError, match="entangle must be True or False"):
        circuits.make_circuit("hardware_efficient", 2, 1, entangle="no")
