r"""The block-diagonal metric tensor of the circuit weights, estimated on a device.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuits import GATES, GateProgram
from hybrid.ibm.jobs import JobResult
from hybrid.ibm.runtime import Pub, measurement_settings


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
