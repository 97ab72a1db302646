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

import math

import numpy as np
import pennylane as qml
import torch

from circuits import GateProgram
from hybrid.errors import InputError
from hybrid.executors import METHODS, pennylane_metric
from hybrid.ibm.metric import qnspsa_metric, qnspsa_shifts
from hybrid.sim.metric import APPROXIMATIONS, _shift_program, check_approx, exact_metric, layer_labels
from hybrid.sim.statevector import final_state

__all__ = ["APPROXIMATIONS", "METHODS", "METRICS", "metric_tensor", "default_method", "check_approx",
           "exact_metric", "pennylane_metric", "layer_labels", "qnspsa_sample", "absolute"]  # fmt: skip
METRICS = ("exact", "estimator", "qnspsa", "pullback")  # QNG's optim.qng.metric: how G is obtained (hybrid.optim.qng)


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
    if on_device:
        if device is None:
            device = qml.device(layer.backend.device, wires=layer.circuit.n_qubits + (approx is None))
        return pennylane_metric(layer.circuit, inputs, weights, approx, device, shots)
    return layer.executor.metric(inputs, weights, approx, method)


def default_method(layer) -> str:
    """The method ``metric_tensor`` uses for ``layer`` when none is given: its executor's."""
    return layer.executor.default_metric


# --- qnspsa: QN-SPSA's estimate from exact overlaps on the statevector simulator ----------


def qnspsa_sample(program: GateProgram, inputs: torch.Tensor, weights: torch.Tensor, step: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """One QN-SPSA estimate per row of ``inputs`` (fresh directions from ``generator``), with the
    four fidelities computed exactly on the simulator; returns their mean (P, P) and standard
    error (P, P), float64. The estimator is ``hybrid.ibm.metric.qnspsa_metric``, the same one the
    Qiskit backends use on measured fidelities; its mean is the metric up to O(step^2).
    """
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
