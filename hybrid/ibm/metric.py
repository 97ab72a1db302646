r"""The metric tensor of the circuit weights, estimated on a device: block-diagonal, or QN-SPSA.

Within one layer of commuting rotations :math:`e^{-i\theta_j P_j/2}` (no gate of the layer
feeds another), the Fubini-Study metric in the gate angles is a covariance of the
generators on the state just before the layer,

.. math:: g_{jk} = \tfrac14\big(\langle P_j P_k \rangle - \langle P_j \rangle \langle P_k \rangle\big),

and the metric of the weights is :math:`G = \frac1N \sum_n W^\top g(x_n) W` with
``W = program.weight_coeffs`` (angles are affine in the weights), averaged over the N inputs.
Layers are PennyLane's parametrized layers, as compilation stored them in
``GateProgram.layers`` (the blocks of ``qml.metric_tensor(approx="block-diag")``).
Each layer is one PUB: the gates in the past light cone of the layer, measured on
:math:`P_j` and :math:`P_j P_k`; all layers go out in one job.

QN-SPSA (``FidelityEstimate``, Gacon et al., Quantum 5, 567, 2021) estimates the full metric
instead, from four fidelities per input at randomly perturbed weights: compute-uncompute
circuits :math:`U(w')^\dagger U(w)` measured on the all-zeros projector (2^n Z strings, one
measurement setting). Four circuits per input whatever the number of weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuits import GATES, GateProgram
from circuits.program import qiskit_circuit
from hybrid.ibm.jobs import JobResult
from hybrid.ibm.runtime import Pub, measurement_settings
from hybrid.ibm.shots import rademacher


@dataclass(frozen=True)
class MetricLayer:
    """One block: ``angles`` (indices into the program's angles), the Pauli ``generators``
    ``(wire, "X"|"Y"|"Z")`` of their gates, and ``gates``, the indices of the gates before
    them that they depend on, in order."""

    angles: tuple[int, ...]
    generators: tuple[tuple[int, str], ...]
    gates: tuple[int, ...]


def metric_layers(program: GateProgram) -> list[MetricLayer]:
    """The layers of the trainable rotations (angles that depend on the weights)."""
    # A gate's generator is P/2 plus a multiple of the identity, which no covariance sees.
    return [
        MetricLayer(
            angles=tuple(program.gates[i].angle for i in layer.gates),
            generators=tuple((program.gates[i].wires[0], GATES[program.gates[i].name].pauli) for i in layer.gates),
            gates=layer.before,
        )
        for layer in program.layers
    ]


def layer_observables(layer: MetricLayer, n_qubits: int) -> list:
    """``P_j`` for each generator, then ``P_j P_k`` for j < k, as ``SparsePauliOp``s."""
    from qiskit.quantum_info import SparsePauliOp

    gens = layer.generators
    terms = [[g] for g in gens] + [[gens[j], gens[k]] for j in range(len(gens)) for k in range(j + 1, len(gens))]
    return [SparsePauliOp.from_sparse_list([("".join(p for _, p in t), [w for w, _ in t], 1.0)], n_qubits)
            for t in terms]  # fmt: skip


def assemble(layers: list[MetricLayer], n_angles: int, result: JobResult) -> tuple[np.ndarray, np.ndarray]:
    """Per-input angle metrics (N, n_angles, n_angles) and their standard errors (first-order
    propagation of the estimator's), from one ``(N, n_obs)`` result per layer."""
    n = result.evs[0].shape[0]
    metric, var = np.zeros((n, n_angles, n_angles)), np.zeros((n, n_angles, n_angles))
    for layer, evs, stds in zip(layers, result.evs, result.stds, strict=True):
        k = len(layer.angles)
        single, single_sd = evs[:, :k], stds[:, :k]  # <P_j>, (N, k)
        block = np.zeros((n, k, k))
        block_var = np.zeros((n, k, k))
        j_idx, k_idx = np.triu_indices(k, 1)
        block[:, np.arange(k), np.arange(k)] = 0.25 * (1 - single**2)
        block_var[:, np.arange(k), np.arange(k)] = (0.5 * single * single_sd) ** 2
        pair, pair_sd = evs[:, k:], stds[:, k:]  # <P_j P_k>, (N, k(k-1)/2)
        cov = 0.25 * (pair - single[:, j_idx] * single[:, k_idx])
        cov_var = 0.0625 * (pair_sd**2 + (single[:, k_idx] * single_sd[:, j_idx]) ** 2
                            + (single[:, j_idx] * single_sd[:, k_idx]) ** 2)  # fmt: skip
        block[:, j_idx, k_idx] = block[:, k_idx, j_idx] = cov
        block_var[:, j_idx, k_idx] = block_var[:, k_idx, j_idx] = cov_var
        ix = np.ix_(range(n), layer.angles, layer.angles)
        metric[ix], var[ix] = block, block_var
    return metric, np.sqrt(var)


def weight_metric(program: GateProgram, angle_metric: np.ndarray, angle_stderr: np.ndarray | None = None):
    """The weights' metric (n_weights, n_weights), averaged over the inputs: ``mean_n W^T g_n W``;
    with ``angle_stderr`` also its standard error (inputs and entries taken as independent)."""
    w = program.weight_coeffs  # (n_angles, n_weights)
    metric = np.einsum("ai,nab,bj->ij", w, angle_metric, w) / angle_metric.shape[0]
    if angle_stderr is None:
        return metric
    var = np.einsum("ai,nab,bj->ij", w**2, angle_stderr**2, w**2) / angle_metric.shape[0] ** 2
    return metric, np.sqrt(var)


class MetricEstimate:
    """A ``PubProvider`` for the block-diagonal metric at a batch of inputs.

    Attach it to ``layer.executor.extras`` and the next recorded forward job carries its
    circuits; or call ``estimate(layer.executor, angles)`` for a job of its own. Afterwards
    ``metric`` (n_weights, n_weights) and ``stderr`` hold the estimate and ``angle_metric``
    (N, n_angles, n_angles) the per-input blocks.

    Args:
        program: the layer's compiled circuit.
        max_inputs: riding on a forward job, estimate at this many of its rows, drawn without
            replacement by ``generator`` (None: every row).
        generator: a ``torch.Generator`` for that draw.
    """

    def __init__(self, program: GateProgram, max_inputs: int | None = None, generator=None):
        self.program = program
        self.layers = metric_layers(program)
        self.max_inputs, self.generator = max_inputs, generator
        self.metric = self.stderr = self.angle_metric = None

    def pubs(self, executor, runtime, angles: np.ndarray) -> list[Pub]:
        if self.max_inputs is not None and angles.shape[0] > self.max_inputs:
            import torch

            rows = torch.randperm(angles.shape[0], generator=self.generator)[: self.max_inputs].numpy()
            angles = angles[rows]
        pubs = []
        for i, layer in enumerate(self.layers):
            isa = executor.isa(runtime, list(layer.gates), name=f"metric/{i}")
            observables = isa.observables(layer_observables(layer, self.program.n_qubits))
            values = isa.values(angles)[:, None, :]  # (N, 1, P)
            pubs.append(Pub(f"metric/{i}", isa, observables, values, measurement_settings(observables)))
        return pubs

    def receive(self, result: JobResult) -> None:
        self.angle_metric, angle_stderr = assemble(self.layers, self.program.n_angles, result)
        self.metric, self.stderr = weight_metric(self.program, self.angle_metric, angle_stderr)

    def estimate(self, executor, angles: np.ndarray) -> np.ndarray:
        """Send the metric circuits at ``angles`` (N, n_angles) as one job; returns ``metric``."""
        runtime = executor.runtime()
        self.receive(runtime.run(executor.backend, self.pubs(executor, runtime, angles), "metric", executor.noise))
        return self.metric


# --- QN-SPSA: the full metric from fidelities (Gacon et al., Quantum 5, 567, 2021) ------------


def qnspsa_shifts(d1: np.ndarray, d2: np.ndarray) -> np.ndarray:
    """The four weight perturbations per input, in units of the step: (M, P), (M, P) -> (M, 4, P):
    d1 + d2, d1, -d1 + d2, -d1."""
    return np.stack([d1 + d2, d1, -d1 + d2, -d1], axis=1)


def qnspsa_metric(fidelities: np.ndarray, d1: np.ndarray, d2: np.ndarray, step: float) -> np.ndarray:
    r"""QN-SPSA's metric estimate per input (M, P, P) from the fidelities (M, 4) at the four
    ``qnspsa_shifts`` and the Rademacher directions ``d1``, ``d2`` (M, P) (eq. 4 of the paper;
    PennyLane's ``QNSPSAOptimizer`` raw tensor):

    .. math:: \hat g = -\frac{\delta F}{8\epsilon^2}\,(\Delta_1\Delta_2^\top + \Delta_2\Delta_1^\top),

    .. math:: \delta F = F(\epsilon(\Delta_1+\Delta_2)) - F(\epsilon\Delta_1)
              - F(\epsilon(\Delta_2-\Delta_1)) + F(-\epsilon\Delta_1)

    with :math:`F(x) = |\langle\psi(w)|\psi(w + x)\rangle|^2 \approx 1 - x^\top g x`, so
    :math:`\delta F \approx -4\epsilon^2 \Delta_1^\top g \Delta_2` and :math:`E[\hat g] = g + O(\epsilon^2)`
    in PennyLane's convention (a quarter of the quantum Fisher information). Not PSD by itself:
    QNG averages it over inputs and refreshes and takes its absolute value (``hybrid.optim.qng``).
    """
    delta_f = fidelities[:, 0] - fidelities[:, 1] - fidelities[:, 2] + fidelities[:, 3]  # (M,)
    outer = d1[:, :, None] * d2[:, None, :]  # (M, P, P)
    return -delta_f[:, None, None] / (8 * step**2) * (outer + outer.transpose(0, 2, 1))


def overlap_circuit(program: GateProgram):
    """The compute-uncompute circuit U(phi)^dagger U(theta): its probability of all zeros is
    |<psi(phi)|psi(theta)>|^2. Parameters ``theta[j]`` (j < n_angles) are theta's angles,
    ``theta[n_angles + j]`` phi's, one ``ParameterVector`` so that ``IsaCircuit.columns`` indexes
    the concatenated (2 n_angles) values."""
    from qiskit.circuit import ParameterVector

    n = program.n_angles
    params = ParameterVector("theta", 2 * n)
    circuit = qiskit_circuit(program, params[:n])
    return circuit.compose(qiskit_circuit(program, params[n:]).inverse())


def zero_projector(n_qubits: int):
    """|0..0><0..0| = 2^-n sum over subsets S of Z_S, as one ``SparsePauliOp`` (one measurement setting)."""
    from itertools import combinations

    from qiskit.quantum_info import SparsePauliOp

    terms = [("Z" * k, list(wires), 2.0**-n_qubits) for k in range(n_qubits + 1)
             for wires in combinations(range(n_qubits), k)]  # fmt: skip
    return SparsePauliOp.from_sparse_list(terms, n_qubits)


class FidelityEstimate:
    """A ``PubProvider`` for QN-SPSA's metric of the weights at a batch of inputs: per input,
    four compute-uncompute circuits at weights perturbed by ``step`` times ``qnspsa_shifts``
    of fresh Rademacher directions, one PUB (M, 4) measured on the all-zeros projector.

    Afterwards ``metric`` (P, P) is the mean of the M per-input estimates (``qnspsa_metric``,
    not yet averaged over refreshes nor made PSD), ``stderr`` their standard error, and
    ``fidelities`` (M, 4), ``directions`` (M, 2, P) what it was made from.

    Args:
        program: the layer's compiled circuit.
        step: the perturbation size epsilon of the weights (PennyLane's ``finite_diff_step``).
        max_inputs, generator: as ``MetricEstimate``'s; ``generator`` draws the directions too.
    """

    def __init__(self, program: GateProgram, step: float, max_inputs: int | None = None, generator=None):
        self.program, self.step = program, step
        self.max_inputs, self.generator = max_inputs, generator
        self.metric = self.stderr = self.fidelities = self.directions = None

    def pubs(self, executor, runtime, angles: np.ndarray) -> list[Pub]:
        if self.max_inputs is not None and angles.shape[0] > self.max_inputs:
            import torch

            rows = torch.randperm(angles.shape[0], generator=self.generator)[: self.max_inputs].numpy()
            angles = angles[rows]
        m, n = angles.shape
        self.directions = rademacher((m, 2, self.program.n_weights), self.generator)  # (M, 2, P)
        shifts = qnspsa_shifts(self.directions[:, 0], self.directions[:, 1])  # (M, 4, P)
        moved = angles[:, None, :] + self.step * shifts @ self.program.weight_coeffs.T  # (M, 4, n_angles)
        both = np.concatenate([np.broadcast_to(angles[:, None, :], moved.shape), moved], axis=-1)  # (M, 4, 2n)
        label = f"{executor.label}/fidelity"
        isa = runtime.isa(executor.backend, executor.noise, overlap_circuit(self.program), label, executor.label)
        observables = isa.observables([zero_projector(self.program.n_qubits)])
        return [Pub("fidelity", isa, observables, isa.values(both)[..., None, :], 1)]

    def receive(self, result: JobResult) -> None:
        self.fidelities = result.evs[0][..., 0]  # (M, 4)
        d1, d2 = self.directions[:, 0], self.directions[:, 1]
        per_input = qnspsa_metric(self.fidelities, d1, d2, self.step)  # (M, P, P)
        self.metric = per_input.mean(axis=0)
        m = per_input.shape[0]
        self.stderr = per_input.std(axis=0, ddof=1) / np.sqrt(m) if m > 1 else np.full_like(self.metric, np.inf)

    def estimate(self, executor, angles: np.ndarray) -> np.ndarray:
        """Send the fidelity circuits at ``angles`` (N, n_angles) as one job; returns ``metric``."""
        runtime = executor.runtime()
        self.receive(runtime.run(executor.backend, self.pubs(executor, runtime, angles), "metric", executor.noise))
        return self.metric
