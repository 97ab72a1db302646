"""Tests for hybrid/optim/metric.py: both methods against qml.metric_tensor (autograd), finite
differences of qml.state(), and Aer with shots; float64 throughout."""

import numpy as np
import pennylane as qml
import pytest
import torch
from pennylane import numpy as pnp

import circuits
import hybrid
from hybrid import InputError, QuantumLayer
from hybrid.optim.metric import layer_labels
from tests.conftest import ALL_TEMPLATES
from tests.test_program import Custom
from tests.test_statevector import every_gate

APPROX = ["diag", "block-diag", None]


def reference(circuit, inputs, weights, approx):
    """``qml.metric_tensor`` on the autograd interface, averaged over the rows of ``inputs``: (P, P)."""
    device = qml.device("default.qubit", wires=circuit.n_qubits + 1)  # the full metric's auxiliary wire
    transform = qml.metric_tensor(qml.QNode(circuit, device, interface="autograd"), approx=approx)
    w = pnp.array(weights.detach().numpy(), requires_grad=True)
    return np.mean(
        [np.reshape(transform(pnp.array(x.numpy(), requires_grad=False), w), (w.size, w.size)) for x in inputs],
        axis=0,
    )


def finite_difference_metric(fn, n_qubits, x, weights, h=1e-5):
    """g_ij = Re<d_i psi|d_j psi> - Re(<d_i psi|psi><psi|d_j psi>), d_i psi by central differences."""

    @qml.qnode(qml.device("default.qubit", wires=n_qubits))
    def state(w):
        fn(x, w)
        return qml.state()

    w = np.asarray(weights, dtype=float)
    steps = h * np.eye(w.size).reshape(w.size, *w.shape)
    dpsi = np.array([(state(w + e) - state(w - e)) / (2 * h) for e in steps])  # (P, 2^n)
    overlap = dpsi.conj() @ state(w)  # <d_i psi|psi>
    return (dpsi.conj() @ dpsi.T - np.outer(overlap, overlap.conj())).real


def random_layer(circuit, backend="default.qubit", n_inputs=2, seed=0):
    torch.manual_seed(seed)
    layer = QuantumLayer(circuit, backend).double()
    return layer, torch.rand(n_inputs, circuit.n_inputs, dtype=torch.float64) * 2 * np.pi


@pytest.mark.parametrize("approx", APPROX)
@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_both_methods_give_pennylanes_metric_averaged_over_inputs(name, approx):
    # The full metric runs quadratically many Hadamard tests in PennyLane: 2 qubits keep it fast.
    circuit = circuits.make_circuit(name, 2 if approx is None else 3, 2, measure="ZZ")
    layer, inputs = random_layer(circuit, "lightning.qubit")
    expected = reference(circuit, inputs, layer.weights, approx)

    exact = hybrid.metric_tensor(layer, inputs, approx)  # the default here: the circuit compiles
    transform = hybrid.metric_tensor(layer, inputs, approx, method="pennylane")  # on lightning.qubit
    P = layer.weights.numel()
    assert exact.shape == transform.shape == (P, P) and exact.dtype == torch.float64
    np.testing.assert_allclose(exact.numpy(), expected, atol=1e-8, rtol=0)
    np.testing.assert_allclose(transform.numpy(), expected, atol=1e-8, rtol=0)
    assert np.abs(expected).max() > 0.05  # a real metric, not zeros


@pytest.mark.parametrize("name", ALL_TEMPLATES)
def test_blocks_are_pennylanes_parametrized_layers(name):
    from pennylane.gradients.metric_tensor import _expand_metric_tensor  # the tape the transform splits

    circuit = circuits.make_circuit(name, 3, 2)
    x, w = circuit.example_arguments(seed=1)
    qnode = qml.QNode(circuit, qml.device("default.qubit", wires=3), interface="autograd")
    tape = qml.workflow.construct_tape(qnode)(pnp.array(x, requires_grad=False), pnp.array(w, requires_grad=True))
    [expanded], _ = _expand_metric_tensor(tape)
    expected = [len(layer.param_inds) for layer in expanded.graph.parametrized_layers]

    program = circuits.compile_circuit(circuit)
    labels = layer_labels(program, np.flatnonzero(np.any(program.weight_coeffs != 0, axis=1)))
    assert np.bincount(labels).tolist() == expected
    assert max(expected) > 1  # some layers hold several gates


def no_crx(x, w):
    """Every parametric gate kind, trainable and data-dependent, with shared and scaled weights."""
    qml.RX(x[..., 0], wires=0)
    qml.RY(x[..., 1], wires=1)
    qml.Hadamard(wires=2)
    qml.PhaseShift(w[0], wires=2)
    qml.CNOT(wires=[2, 0])
    qml.RZ(x[..., 2], wires=2)
    qml.SX(wires=2)
    qml.CZ(wires=[1, 2])
    qml.RY(w[1], wires=0)
    qml.PhaseShift(x[..., 0] + w[2], wires=1)
    qml.Rot(w[2], 2 * w[0], w[1], wires=1)
    qml.SWAP(wires=[0, 2])
    qml.RX(w[0] - 0.3, wires=2)


@pytest.mark.parametrize("approx", ["diag", "block-diag"])
def test_every_gate_kind_matches_pennylanes_approximations(approx):
    circuit = Custom(no_crx, n_qubits=3, n_inputs=3, weight_shape=(3,))
    layer, inputs = random_layer(circuit, n_inputs=3)
    expected = reference(circuit, inputs, layer.weights, approx)
    np.testing.assert_allclose(hybrid.metric_tensor(layer, inputs, approx).numpy(), expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize(
    "circuit",
    [circuits.make_circuit(name, 3, 2) for name in ALL_TEMPLATES]
    + [Custom(every_gate, n_qubits=3, n_inputs=3, weight_shape=(3,)), Custom(no_crx, 3, 3, (3,))],
    ids=[*ALL_TEMPLATES, "every_gate", "phase_shifts"],
)
def test_full_metric_equals_finite_differences_of_the_state(circuit):
    layer, inputs = random_layer(circuit, n_inputs=2)
    fn = circuit.gates if hasattr(circuit, "gates") else circuit.fn
    expected = np.mean(
        [finite_difference_metric(fn, circuit.n_qubits, x.numpy(), layer.weights.detach().numpy()) for x in inputs],
        axis=0,
    )
    np.testing.assert_allclose(hybrid.metric_tensor(layer, inputs, approx=None).numpy(), expected, atol=1e-8, rtol=0)


def test_pennylanes_full_metric_is_refused_for_trainable_phase_shifts():
    # PennyLane 0.45.1's Hadamard tests get these wrong (the exact method above agrees with
    # finite differences); qml.adjoint_metric_tensor agrees with the exact method.
    circuit = Custom(lambda x, w: (qml.Hadamard(0), qml.PhaseShift(w[0], wires=0), qml.RY(w[1], wires=0)), 2, 1, (2,))
    layer, inputs = random_layer(circuit, n_inputs=1)
    with pytest.raises(InputError, match="PhaseShift.*method='exact'"):
        hybrid.metric_tensor(layer, inputs, None, method="pennylane")
    qnode = qml.QNode(lambda w: circuit(inputs[0].numpy(), w), qml.device("default.qubit", wires=2))
    adjoint = qml.adjoint_metric_tensor(qnode)(pnp.array(layer.weights.detach().numpy(), requires_grad=True))
    np.testing.assert_allclose(hybrid.metric_tensor(layer, inputs, None).numpy(), adjoint, atol=1e-12)


def test_a_circuit_that_does_not_compile_uses_pennylane():
    circuit = Custom(lambda x, w: (qml.RX(x[..., 0], wires=0), qml.RY(w[0] ** 2, wires=0), qml.CNOT([0, 1]),
                                   qml.RX(w[1], wires=1)), 2, 1, (2,))  # fmt: skip
    layer, inputs = random_layer(circuit)
    assert layer.program is None
    expected = reference(circuit, inputs, layer.weights, "block-diag")
    np.testing.assert_allclose(hybrid.metric_tensor(layer, inputs).numpy(), expected, atol=1e-8, rtol=0)
    with pytest.raises(InputError, match="does not compile.*method='pennylane'"):
        hybrid.metric_tensor(layer, inputs, method="exact")


def test_large_input_batches_are_chunked_without_changing_the_result(monkeypatch):
    layer, inputs = random_layer(circuits.DataReuploading(3, 2), n_inputs=7)
    whole = hybrid.metric_tensor(layer, inputs, None)
    monkeypatch.setattr("hybrid.sim.metric.MAX_CHUNK_AMPLITUDES", 1)  # one input per chunk
    torch.testing.assert_close(hybrid.metric_tensor(layer, inputs, None), whole, atol=1e-14, rtol=0)


def test_float32_layers_get_a_float64_metric():
    torch.manual_seed(0)
    layer = QuantumLayer(circuits.StronglyEntangling(2, 1))
    metric = hybrid.metric_tensor(layer, torch.rand(3, 2))
    assert metric.dtype == torch.float64
    torch.testing.assert_close(metric, metric.T)


def test_bad_arguments_are_input_errors_before_any_work():
    layer, inputs = random_layer(circuits.StronglyEntangling(2, 1))
    with pytest.raises(InputError, match="approx must be"):
        hybrid.metric_tensor(layer, inputs, approx="kfac")
    with pytest.raises(InputError, match="method must be"):
        hybrid.metric_tensor(layer, inputs, method="adjoint")
    with pytest.raises(InputError, match=r"shape \(N, 2\)"):
        hybrid.metric_tensor(layer, inputs[:, :1])
    with pytest.raises(InputError, match=r"shape \(N, 2\)"):
        hybrid.metric_tensor(layer, inputs[:0])
    with pytest.raises(InputError, match="NaN"):
        hybrid.metric_tensor(layer, torch.full((1, 2), float("nan")))
    with pytest.raises(InputError, match="method='pennylane' only"):
        hybrid.metric_tensor(layer, inputs, method="exact", shots=100)
    with pytest.raises(InputError, match="auxiliary wire.*wires=3"):
        hybrid.metric_tensor(layer, inputs, None, method="pennylane", device=qml.device("default.qubit", wires=2))


def test_block_diag_on_aer_with_shots_lies_within_three_standard_errors():
    pytest.importorskip("pennylane_qiskit")
    # The ring's CNOT entangles before the second layer: its blocks have off-diagonal covariances.
    circuit = circuits.HardwareEfficient(2, 2, measure="ZZ")
    layer, inputs = random_layer(circuit, n_inputs=1, seed=3)
    shots = 20_000
    device = qml.device("qiskit.aer", wires=2, seed_simulator=11)
    sampled = hybrid.metric_tensor(layer, inputs, "block-diag", method="pennylane", device=device, shots=shots)
    exact = hybrid.metric_tensor(layer, inputs, "block-diag")

    # Standard error of PennyLane's estimator: its tapes measure probabilities, so draw each
    # tape's counts from the exact distribution (multinomial, `shots` draws) and push every
    # draw through the transform's own post-processing.
    x = pnp.array(inputs[0].numpy(), requires_grad=False)
    w = pnp.array(layer.weights.detach().numpy(), requires_grad=True)
    qnode = qml.QNode(circuit, qml.device("default.qubit", wires=2), interface="autograd")
    tapes, post = qml.workflow.construct_batch(qml.metric_tensor(qnode, approx="block-diag"), level="device")(x, w)
    probs = [np.clip(p, 0, None) / np.clip(p, 0, None).sum() for p in qml.execute(tapes, qnode.device)]
    # These tapes' parameters are the weights in C order (the classical Jacobian is the identity):
    np.testing.assert_allclose(post(probs)[0], exact.numpy(), atol=1e-12)
    rng = np.random.default_rng(0)
    draws = [post([rng.multinomial(shots, p) / shots for p in probs])[0] for _ in range(1000)]
    standard_error = np.std(draws, axis=0)  # (P, P)

    deviation = np.abs(sampled.numpy() - exact.numpy())
    off_diagonal = standard_error - np.diag(np.diag(standard_error))
    assert off_diagonal.max() > 1e-3  # shot noise is there, off the diagonal too
    assert np.all(deviation <= 3 * standard_error + 1e-12), np.max(deviation / (standard_error + 1e-300))
