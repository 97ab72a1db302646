"""Tests for hybrid/quantum.py: QuantumLayer against PennyLane with parameter-shift, float64."""

import pennylane as qml
import pytest
import torch

import circuits
from hybrid import InputError, QuantumLayer
from tests.conftest import ALL_TEMPLATES
from tests.test_program import Custom


def parameter_shift_reference(circuit, inputs, weights):
    """PennyLane's outputs (N, n_outputs) with parameter-shift gradients to the returned leaves.

    One QNode call per row: parameter-shift cannot differentiate broadcast inputs.
    """
    x = inputs.detach().clone().requires_grad_(True)
    w = weights.detach().clone().requires_grad_(True)
    qnode = qml.QNode(circuit, qml.device("default.qubit"), interface="torch", diff_method="parameter-shift")
    out = torch.stack([torch.stack([torch.as_tensor(r) for r in qnode(row, w)]) for row in x])
    return out, x, w


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_outputs_and_gradients_equal_parameter_shift(name):
    circuit = circuits.make_circuit(name, 3, 2)
    layer = QuantumLayer(circuit).double()
    inputs = (torch.rand(4, circuit.n_inputs, dtype=torch.float64) * 6).requires_grad_(True)
    probe = torch.randn(4, circuit.n_outputs, dtype=torch.float64)

    out = layer(inputs)
    (out * probe).sum().backward()
    ref, x, w = parameter_shift_reference(circuit, inputs, layer.weights)
    (ref * probe).sum().backward()

    torch.testing.assert_close(out, ref, atol=1e-8, rtol=0)
    torch.testing.assert_close(inputs.grad, x.grad, atol=1e-8, rtol=0)
    torch.testing.assert_close(layer.weights.grad, w.grad, atol=1e-8, rtol=0)


def test_leading_dimensions_are_one_batch():
    layer = QuantumLayer(circuits.StronglyEntangling(3, 1)).double()
    x = torch.rand(2, 5, 3, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (2, 5, 3)
    torch.testing.assert_close(out.reshape(10, 3), layer(x.reshape(10, 3)))
    assert layer.last_inputs.shape == (10, 3)  # kept for QNG, flattened


def test_weights_are_one_parameter_named_weights():
    layer = QuantumLayer(circuits.DataReuploading(3, 2))
    assert [n for n, _ in layer.named_parameters()] == ["weights"]
    assert layer.weights.shape == (2, 3, 3)


def test_inputs_are_kept_only_when_training_with_gradients():
    layer = QuantumLayer(circuits.StronglyEntangling(2, 1))
    layer.eval()
    layer(torch.rand(4, 2))
    assert layer.last_inputs is None
    layer.train()
    with torch.no_grad():
        layer(torch.rand(4, 2))
    assert layer.last_inputs is None
    layer(torch.rand(4, 2))
    assert layer.last_inputs.shape == (4, 2)


def test_lightning_adjoint_matches_the_simulator():
    circuit = circuits.StronglyEntangling(3, 2)
    exact = QuantumLayer(circuit).double()
    lightning = QuantumLayer(circuit, backend="lightning.qubit").double()
    lightning.load_state_dict(exact.state_dict())
    assert not lightning.uses_simulator
    x = torch.rand(3, 3, dtype=torch.float64)
    out_a, out_b = exact(x), lightning(x)
    out_a.sum().backward()
    out_b.sum().backward()
    # PennyLane 0.45's torch interface converts lightning's Python-float results with
    # torch.as_tensor, i.e. to the default dtype float32: lightning agrees to float32 precision.
    torch.testing.assert_close(out_a, out_b.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(exact.weights.grad, lightning.weights.grad, atol=1e-6, rtol=0)


def test_uncompilable_circuits_fall_back_to_pennylane():
    circuit = Custom(lambda x, w: (qml.RX(x[..., 0] ** 2, wires=0), qml.RY(w[0], wires=1), qml.CNOT([0, 1])))
    layer = QuantumLayer(circuit).double()
    assert not layer.uses_simulator
    x = torch.rand(5, 2, dtype=torch.float64)
    ref, _, _ = parameter_shift_reference(circuit, x, layer.weights)
    torch.testing.assert_close(layer(x), ref, atol=1e-10, rtol=0)


def test_wrong_input_width_names_both_sizes():
    layer = QuantumLayer(circuits.StronglyEntangling(3, 1))
    with pytest.raises(
        ValueError, match="takes 3 input angles per evaluation, but the last dimension of the input is 4"
    ):
        layer(torch.rand(2, 4))


def test_not_a_template_is_refused():
    with pytest.raises(InputError, match="is not a circuit template: it lacks n_qubits"):
        QuantumLayer(lambda x, w: None)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(InputError, match="unknown backend 'qpu9'; choose one of: default.qubit"):
        QuantumLayer(circuits.StronglyEntangling(2, 1), backend="qpu9")


def test_too_many_qubits_says_how_much_memory_it_needs():
    with pytest.raises(InputError, match=r"needs about .* for its 50-qubit states but .* is free; use fewer qubits"):
        QuantumLayer(circuits.StronglyEntangling(50, 1))
    layer = QuantumLayer(circuits.StronglyEntangling(16, 1))
    with pytest.raises(InputError, match=r"on 100000000 inputs needs about [0-9.]+ (TiB|PiB)"):
        layer.check_memory(100_000_000)
