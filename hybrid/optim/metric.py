"""Fubini-Study metric tensors of a ``QuantumLayer``'s weights, in PennyLane's convention.

For the state |psi(x, w)> a layer prepares from input x, the metric with respect to the
flattened weights w (C order) is the real part of the quantum geometric tensor, a quarter
of the quantum Fisher information (what ``qml.metric_tensor`` returns), averaged over inputs:

    g_ij = mean_x [ Re<d_i psi|d_j psi> - Re(<d_i psi|psi><psi|d_j psi>) ]       # (P, P)

``approx`` keeps PennyLane's structure: ``"diag"`` the diagonal, ``"block-diag"`` the blocks
of one parametrized layer each (see ``layer_labels``), ``None`` (or ``"full"``) everything.
Two methods, one answer:

    "exact":     the state Jacobian on the batched torch simulator (``statevector.final_state``),
                 every input at once; the default wherever the layer's backend is exact.
    "pennylane": ``qml.metric_tensor`` on the autograd interface, one input at a time, on any
                 PennyLane device (shot-based simulators, hardware); inputs are bound as
                 constants, which avoids the torch interface's failure on data inputs.
    "estimator": the layer's own Qiskit backend (``qiskit.aer``, ``fake_*``, ``ibm_*``): the
                 block-diagonal metric from generator covariances, every input and layer of
                 the metric in one EstimatorV2 job (``hybrid.ibm.metric``); the default there.

QNG's ``metric`` setting picks among them: ``"exact"`` is the backend row's default method
(the two above), ``"estimator"`` forces the estimator, ``"qnspsa"`` is Gacon et al.'s
QN-SPSA estimate of the full metric from fidelities (``qnspsa_sample``: exact overlaps on the
simulator; on a Qiskit backend, compute-uncompute circuits in the training job), which QNG
averages over refreshes (``hybrid.optim.qng``).
"""

from __future__ import annotations

import dataclasses
import math
from functools import lru_cache

import numpy as np
import pennylane as qml
import torch

from circuits import GATES, GateProgram, UnsupportedCircuit, compile_circuit
from hybrid.errors import InputError
from hybrid.sim.statevector import final_state

APPROXIMATIONS = ("diag", "block-diag", None)
METHODS = ("exact", "pennylane", "estimator")
METRICS = ("exact", "estimator", "qnspsa")  # QNG's optim.qng.metric: how G is obtained (see above)
MAX_CHUNK_AMPLITUDES = 2**24  # states held at once by the exact method (256 MiB of complex128)


def metric_tensor(layer, inputs, approx: str | None = "block-diag", method: str | None = None, device=None, shots=None):
    """The Fubini-Study metric of ``layer.weights``, averaged over the rows of ``inputs``.

    Args:
        layer: a ``QuantumLayer``.
        inputs: (N, n_inputs) data angles in radians (tensor or array).
        approx: ``"diag"``, ``"block-diag"`` or ``None`` (full; ``"full"`` is accepted too),
            with PennyLane's meaning of each.
        method: ``"exact"`` (statevector), ``"pennylane"`` (the transform) or ``"estimator"``
            (the layer's Qiskit backend, with its shots and noise; ``diag`` and ``block-diag``
            only). None picks pennylane when a ``device`` or ``shots`` is given, estimator on
            a Qiskit backend, exact where the circuit compiles and the backend is exact, else
            pennylane.
        device: PennyLane device for the pennylane method (default: the layer's backend device,
            with one auxiliary wire for the full metric).
        shots: shots per circuit for the pennylane method (None: the device's default).

    Returns:
        (P, P) float64 tensor on the weights' device, P = ``layer.weights.numel()``, rows and
        columns in the C-order flattening of the weights.

    Raises:
        InputError: an unknown ``approx`` or ``method``, inputs of the wrong shape or not finite,
            the exact method on a circuit that does not compile or with a device or shots, a
            device with no free wire for the full metric, or PennyLane's full metric of a
            trainable PhaseShift (wrong in PennyLane 0.45).
    """
    approx = check_approx(approx)
    if method not in (None, *METHODS):
        raise InputError(f"method must be one of {', '.join(METHODS)} or None, got {method!r}")
    inputs = torch.as_tensor(inputs).detach().to(device=layer.weights.device, dtype=torch.float64)
    if inputs.dim() != 2 or inputs.shape[0] < 1 or inputs.shape[1] != layer.n_inputs:
        raise InputError(
            f"inputs must have shape (N, {layer.n_inputs}) with N >= 1 for {layer.circuit!r}, "
            f"got {tuple(inputs.shape)}; pass one row of angles per circuit evaluation"
        )
    if not torch.isfinite(inputs).all():
        raise InputError("inputs contain NaN or Inf; the metric needs finite angles")
    on_device = device is not None or shots is not None
    if method is None:
        method = default_method(layer) if not on_device else "pennylane"
    if method != "pennylane" and on_device:
        raise InputError("a device or shots apply to method='pennylane' only; drop them or use that method")
    weights = layer.weights.detach().to(torch.float64)
    if method == "exact":
        if layer.program is None:
            raise InputError(
                f"{layer.circuit!r} does not compile into a gate program, so it has no exact metric; "
                "use method='pennylane'"
            )
        return exact_metric(layer.program, inputs, weights, approx)
    if method == "estimator":
        return estimator_metric(layer, inputs, approx)
    if device is None:
        device = qml.device(layer.backend.device, wires=layer.circuit.n_qubits + (approx is None))
    return pennylane_metric(layer.circuit, inputs, weights, approx, device, shots)


def default_method(layer) -> str:
    """The method ``metric_tensor`` uses for ``layer`` when none is given: its backend row's,
    or PennyLane's transform for a circuit the simulator cannot compile."""
    return "pennylane" if layer.program is None and layer.backend.metric == "exact" else layer.backend.metric


def estimator_metric(layer, inputs: torch.Tensor, approx: str | None) -> torch.Tensor:
    """The (block-)diagonal metric estimated in one job on the layer's Qiskit backend: (P, P) float64."""
    if layer.backend.metric != "estimator":
        raise InputError(
            f"method='estimator' runs on a Qiskit backend (qiskit.aer, fake_*, ibm_*), not {layer.backend.name}; "
            "use method='exact' or 'pennylane'"
        )
    if approx is None:
        raise InputError(
            "the estimator method gives the block-diagonal metric only; use approx='block-diag' or 'diag', "
            "or method='pennylane' with a device that has an auxiliary wire"
        )
    from hybrid.ibm.metric import MetricEstimate  # Qiskit runtime imports only where they are used

    angles = layer.program.angles(inputs.cpu().numpy(), layer.weights.detach().double().cpu().numpy())
    metric = torch.from_numpy(MetricEstimate(layer.program).estimate(layer.executor, angles))
    metric = metric.diag().diag() if approx == "diag" else metric
    return metric.to(layer.weights.device)


def check_approx(approx: str | None) -> str | None:
    """``approx`` in PennyLane's spelling (``"full"`` becomes None).

    Raises:
        InputError: it is none of ``"diag"``, ``"block-diag"``, ``"full"``, None.
    """
    approx = None if approx == "full" else approx
    if approx not in APPROXIMATIONS:
        raise InputError(f"approx must be 'diag', 'block-diag' or None (full), got {approx!r}")
    return approx


# --- exact: the state Jacobian on the statevector simulator ------------------------------


def exact_metric(program: GateProgram, inputs: torch.Tensor, weights: torch.Tensor, approx: str | None) -> torch.Tensor:
    """The metric from exact states: (N, n_inputs) inputs, ``weight_shape`` weights -> (P, P).

    Each weight-dependent gate R(theta) = exp(-i theta G) has d/dtheta R(theta) = R(theta + pi) / 2
    for Pauli rotations (G = P/2) and i (R(theta) - R(theta + pi)) / 2 for PhaseShift, so the
    Jacobian over gate angles is a combination of shifted states; all N * (K + 1) of them run as
    one batch. The metric over angles maps to the weights through the affine map's Jacobian C:
    g_w = C^T g_theta C. Computed in complex128.
    """
    approx = check_approx(approx)
    device = weights.device
    trainable, shifted, is_phase, labels = _shift_program(program)
    K, N = len(trainable), inputs.shape[0]
    if K == 0:  # no gate depends on the weights
        return torch.zeros(program.n_weights, program.n_weights, dtype=torch.float64, device=device)
    g = torch.zeros(K, K, dtype=torch.float64, device=device)
    shifts = torch.zeros(K + 1, K, dtype=torch.float64, device=device)
    shifts[1:] = math.pi * torch.eye(K, dtype=torch.float64, device=device)  # row 0: no shift
    is_phase = torch.as_tensor(is_phase, device=device)
    chunk = max(1, MAX_CHUNK_AMPLITUDES // ((K + 1) * 2**program.n_qubits))
    for rows in inputs.to(device, torch.float64).split(chunk):  # chunks of samples, each one batch
        n = rows.shape[0]
        batch = torch.cat([rows[:, None, :].expand(n, K + 1, -1), shifts.expand(n, -1, -1)], dim=-1)
        states = final_state(shifted, batch.reshape(n * (K + 1), -1), weights.to(torch.float64))
        states = states.reshape(n, K + 1, -1)  # (n, 1 + K, 2^n_qubits)
        psi, moved = states[:, 0], states[:, 1:]  # (n, D), (n, K, D)
        dpsi = torch.where(is_phase[:, None], 0.5j * (psi[:, None] - moved), 0.5 * moved)  # (n, K, D)
        overlap = torch.einsum("nkd,nd->nk", dpsi.conj(), psi)  # <d_k psi|psi>
        gram = torch.einsum("nkd,nld->kl", dpsi.conj(), dpsi)  # sum_n <d_k psi|d_l psi>
        g += (gram - torch.einsum("nk,nl->kl", overlap, overlap.conj())).real
    g /= N
    if approx == "diag":
        g = torch.diag(torch.diagonal(g))
    elif approx == "block-diag":
        # PennyLane computes a block as the covariance of the layer's generators on the state
        # before the layer; the gates of a layer commute, so that is this block of the full metric.
        same = torch.as_tensor(labels[:, None] == labels[None, :], device=device)
        g = torch.where(same, g, torch.zeros_like(g))
    C = torch.as_tensor(program.weight_coeffs[trainable], dtype=torch.float64, device=device)  # (K, P)
    return C.T @ g @ C


@lru_cache(maxsize=64)
def _shift_program(program: GateProgram):
    """The program with one extra input per weight-dependent angle (the shift), and facts about
    those angles: (angle indices (K,), shifted program, is PhaseShift (K,), layer labels (K,)).

    "Is PhaseShift": the gate's generator P/2 + c I has c != 0 (``circuits.GATES``), so its
    derivative from the state shifted by pi is i (R - R(theta + pi)) / 2, not R(theta + pi) / 2.
    """
    trainable = np.flatnonzero(program.weight_angles)
    K = len(trainable)
    select = np.zeros((program.n_angles, K))
    select[trainable, np.arange(K)] = 1.0
    shifted = dataclasses.replace(
        program,
        n_inputs=program.n_inputs + K,
        input_coeffs=np.hstack([program.input_coeffs, select]),
        observables=(),
    )
    phase_of = {g.angle: GATES[g.name].phase for g in program.gates if g.angle is not None}
    is_phase = np.array([phase_of[a] != 0 for a in trainable], dtype=bool)
    return trainable, shifted, is_phase, layer_labels(program, trainable)


def layer_labels(program: GateProgram, trainable: np.ndarray) -> np.ndarray:
    """PennyLane's parametrized layers (``GateProgram.layers``, grouped at compile time): the
    label (K,) of each of the weight-dependent angles ``trainable`` (K,), in gate order.

    Gates of one layer act on disjoint wires, so their generators commute and their block of
    the metric is a covariance on the state before the layer.
    """
    label_of = {program.gates[i].angle: k for k, layer in enumerate(program.layers) for i in layer.gates}
    return np.array([label_of[int(angle)] for angle in trainable], dtype=int)


# --- pennylane: qml.metric_tensor on the autograd interface --------------------------------


def pennylane_metric(circuit, inputs: torch.Tensor, weights: torch.Tensor, approx: str | None, device, shots=None):
    """The metric through PennyLane's transform on ``device``, one input row at a time -> (P, P).

    The QNode uses the autograd interface with the inputs as constants: ``qml.metric_tensor``
    then differentiates the weights only (on the torch interface it fails on data inputs).
    """
    from pennylane import numpy as pnp

    approx = check_approx(approx)
    n_wires = circuit.n_qubits + (approx is None)
    if device.wires is not None and len(device.wires) < n_wires:
        need = "one auxiliary wire for the full metric" if approx is None else "a wire per qubit"
        raise InputError(
            f"device {device.name} has {len(device.wires)} wires but the metric of {circuit!r} needs "
            f"{n_wires} ({need}); create the device with wires={n_wires}"
        )
    if approx is None and _has_trainable_phase_shift(circuit):
        raise InputError(
            f"PennyLane's full metric tensor is wrong for {circuit!r}: its Hadamard tests treat the "
            "projector generator of a trainable PhaseShift as unitary; use method='exact' or approx='block-diag'"
        )
    kwargs = {} if shots is None else {"shots": shots}
    qnode = qml.QNode(circuit, device, interface="autograd", diff_method="parameter-shift", **kwargs)
    transform = qml.metric_tensor(qnode, approx=approx)
    w = pnp.array(weights.detach().cpu().numpy(), requires_grad=True)
    P = w.size
    total = np.zeros((P, P))
    for row in inputs.detach().cpu().numpy():
        total += np.reshape(transform(pnp.array(row, requires_grad=False), w), (P, P))
    return torch.as_tensor(total / len(inputs), dtype=torch.float64, device=weights.device)


def _has_trainable_phase_shift(circuit) -> bool:
    # Checked against finite differences and qml.adjoint_metric_tensor on PennyLane 0.45.1.
    try:
        program = compile_circuit(circuit)
    except UnsupportedCircuit:
        return False  # cannot tell; PennyLane decides
    weighted = np.any(program.weight_coeffs != 0, axis=1)
    return any(g.name == "PhaseShift" and weighted[g.angle] for g in program.gates)


# --- qnspsa: QN-SPSA's estimate from exact overlaps on the statevector simulator ----------


def qnspsa_sample(program: GateProgram, inputs: torch.Tensor, weights: torch.Tensor, step: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One QN-SPSA estimate per row of ``inputs`` (fresh directions from ``generator``), with the
    four fidelities computed exactly on the simulator; returns their mean (P, P) and standard
    error (P, P), float64. The estimator is ``hybrid.ibm.metric.qnspsa_metric``, the same one the
    Qiskit backends use on measured fidelities; its mean is the metric up to O(step^2).
    """
    from hybrid.ibm.metric import qnspsa_metric, qnspsa_shifts  # numpy only: no Qiskit import

    device = weights.device
    trainable, shifted, _, _ = _shift_program(program)
    M, P = inputs.shape[0], program.n_weights
    directions = (torch.randint(0, 2, (M, 2, P), generator=generator, dtype=torch.float64) * 2 - 1).numpy()
    shifts = qnspsa_shifts(directions[:, 0], directions[:, 1])  # (M, 4, P)
    moves = step * shifts @ program.weight_coeffs[trainable].T  # (M, 4, K): shifts of the trainable angles
    moves = np.concatenate([np.zeros((M, 1, len(trainable))), moves], axis=1)  # (M, 5, K); row 0: unmoved
    rows = inputs.to(device, torch.float64)[:, None, :].expand(M, 5, -1)
    batch = torch.cat([rows, torch.as_tensor(moves, device=device)], dim=-1)  # (M, 5, n_inputs + K)
    states = final_state(shifted, batch.reshape(M * 5, -1), weights.to(torch.float64)).reshape(M, 5, -1)
    fidelities = torch.einsum("nd,nkd->nk", states[:, 0].conj(), states[:, 1:]).abs() ** 2  # (M, 4)
    per_input = qnspsa_metric(fidelities.cpu().numpy(), directions[:, 0], directions[:, 1], step)  # (M, P, P)
    stderr = per_input.std(axis=0, ddof=1) / math.sqrt(M) if M > 1 else np.full((P, P), np.inf)
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64, device=device)  # noqa: E731
    return as_tensor(per_input.mean(axis=0)), as_tensor(stderr)


def absolute(metric: torch.Tensor) -> torch.Tensor:
    """sqrt(G G): G with its eigenvalues replaced by their absolute values, the PSD matrix
    QN-SPSA preconditions with (Gacon et al., eq. 9, before the regularization + beta I, which
    is QNG's damping here)."""
    eigenvalues, vectors = torch.linalg.eigh((metric + metric.T) / 2)
    return (vectors * eigenvalues.abs()) @ vectors.T
