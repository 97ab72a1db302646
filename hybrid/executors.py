"""Executors: how one ``QuantumLayer``'s circuits run and how the metric of its weights is
measured. A ``hybrid.backends.Backend`` row builds one; the layer, ``metric_tensor`` and QNG
ask it and never the row's type.

    StatevectorExecutor  the batched torch simulator (hybrid.sim), exact, autograd gradients;
                         PennyLane's QNode for circuits it cannot compile.
    QNodeExecutor        a PennyLane QNode on the row's device with its diff_method.
    QiskitExecutor       EstimatorV2 jobs (hybrid.ibm.shots), parameter-shift or SPSA gradients;
                         QNG's metric circuits ride on the next training job.

Every executor has the verbs of ``Executor``. Metric methods (``estimator`` argument of
``metric``): ``"exact"`` (state Jacobian on the simulator), ``"pennylane"`` (``qml.metric_tensor``)
and ``"estimator"`` (generator covariances measured on the Qiskit backend itself).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import pennylane as qml
import torch
from pennylane import numpy as pnp

from circuits import GateProgram, UnsupportedCircuit, compile_circuit
from hybrid.errors import InputError
from hybrid.ibm.jobs import ExecutionOptions
from hybrid.ibm.metric import FidelityEstimate, MetricEstimate
from hybrid.ibm.runtime import Cost, Pub, Runtime, measurement_settings
from hybrid.ibm.shots import Gradient, ShotExecutor, expectation
from hybrid.sim import statevector
from hybrid.sim.metric import check_approx, exact_metric
from hybrid.sim.statevector import available_bytes, state_bytes

__all__ = ["Executor", "StatevectorExecutor", "QNodeExecutor", "QiskitExecutor", "pennylane_metric",
           "available_bytes", "state_bytes"]  # fmt: skip

METHODS = ("exact", "pennylane", "estimator")


class Executor(Protocol):
    """What a ``QuantumLayer`` asks of the engine its backend row names."""

    samples: bool  # circuits run as sampled jobs (shots, noise and execution options apply)
    batched: bool  # one call evaluates every input at once (memory grows with the batch)
    shots: int  # shots per circuit; 0 on exact executors
    options: ExecutionOptions | None  # job options of a sampling executor; None on exact ones

    def run(self, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(N, n_inputs) angles, ``weight_shape`` weights -> (N, n_outputs) expectation values."""

    def metric(self, inputs: torch.Tensor, weights: torch.Tensor, approx: str | None,
               estimator: str | None = None) -> torch.Tensor:  # fmt: skip
        """The (P, P) float64 Fubini-Study metric averaged over (N, n_inputs) float64 inputs,
        by method ``estimator`` (None: ``default_metric``)."""

    @property
    def default_metric(self) -> str:
        """The metric method used when none is asked for."""

    def qng_method(self, metric: str, method: str | None, approx: str | None) -> str:
        """The metric method QNG's ``optim.qng.metric`` setting uses here; raises InputError
        when the setting cannot run on this executor."""

    def estimates(self, metric: str, method: str) -> bool:
        """True when QNG's refreshes measure their circuits on the backend (then they are queued)."""

    def queue_metric(self, samples: int, generator, fidelity_step: float | None = None) -> None:
        """Queue the next refresh's metric circuits on the next recorded job (no-op when exact)."""

    def take_metric(self) -> np.ndarray | None:
        """The (P, P) metric a queued estimate brought back, or None."""

    def memory_bytes(self, batch: int, dtype: torch.dtype) -> int:
        """Estimated peak bytes of a forward and backward pass over ``batch`` inputs."""


def _compute_dtype(weights: torch.Tensor) -> torch.dtype:
    return torch.float64 if weights.dtype == torch.float64 else torch.float32


class _Verbs:
    """The verbs every executor shares: PennyLane fallbacks, the exact and PennyLane metrics."""

    samples, batched, shots, options = False, False, 0, None

    def _setup(self, circuit, program: GateProgram | None, backend) -> None:
        self.circuit, self.program, self.backend = circuit, program, backend

    @property
    def default_metric(self) -> str:
        return "pennylane"

    def qnode(self) -> qml.QNode:
        """The circuit as a PennyLane QNode on the backend's device (torch interface)."""
        device = qml.device(self.backend.device, wires=self.circuit.n_qubits)
        return qml.QNode(self.circuit, device, interface="torch", diff_method=self.backend.diff_method)

    def run_qnode(self, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """(N, n_inputs) -> (N, n_outputs) through PennyLane (broadcast over the rows)."""
        dtype = _compute_dtype(weights)
        results = self.qnode()(inputs.to(dtype), weights.to(dtype))
        out = torch.stack([torch.as_tensor(r).reshape(-1) for r in results], dim=-1)  # (N, n_outputs)
        return out.to(dtype)

    def memory_bytes(self, batch: int, dtype: torch.dtype) -> int:
        # PennyLane keeps a few complex128 states per broadcast row.
        return 4 * state_bytes(self.circuit.n_qubits, batch, torch.float64)

    def metric(self, inputs, weights, approx, estimator=None) -> torch.Tensor:
        method = estimator or self.default_metric
        if method == "exact":
            if self.program is None:
                raise InputError(
                    f"{self.circuit!r} does not compile into a gate program, so it has no exact metric; "
                    "use method='pennylane'"
                )
            return exact_metric(self.program, inputs, weights, approx)
        if method == "estimator":
            return self.estimator_metric(inputs, weights, approx)
        device = qml.device(self.backend.device, wires=self.circuit.n_qubits + (approx is None))
        return pennylane_metric(self.circuit, inputs, weights, approx, device)

    def estimator_metric(self, inputs, weights, approx) -> torch.Tensor:
        raise InputError(
            f"method='estimator' runs on a Qiskit backend (qiskit.aer, fake_*, ibm_*), not {self.backend.name}; "
            "use method='exact' or 'pennylane'"
        )

    def qng_method(self, metric: str, method: str | None, approx: str | None) -> str:
        if metric == "estimator":
            raise InputError(f"optim.qng.metric='estimator' runs on Qiskit backends (qiskit.aer, fake_*, ibm_*), "
                             f"not {self.backend.name}; use metric='exact' or 'qnspsa'")  # fmt: skip
        return method or self.default_metric

    def estimates(self, metric: str, method: str) -> bool:
        return False

    def queue_metric(self, samples: int, generator, fidelity_step: float | None = None) -> None:
        """Exact executors compute the metric when it is due: nothing rides on a job."""

    def take_metric(self) -> np.ndarray | None:
        return None


class StatevectorExecutor(_Verbs):
    """The batched torch simulator; circuits that do not compile run as a PennyLane QNode."""

    batched = True

    def __init__(self, circuit, program: GateProgram | None, backend, execution=None):
        self._setup(circuit, program, backend)

    @property
    def default_metric(self) -> str:
        return "exact" if self.program is not None else "pennylane"

    def run(self, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.program is None:
            return self.run_qnode(inputs, weights)  # (N, n_outputs)
        return statevector.simulate(self.program, inputs, weights)  # (N, n_outputs)

    def memory_bytes(self, batch: int, dtype: torch.dtype) -> int:
        if self.program is None:
            return super().memory_bytes(batch, dtype)
        return statevector.estimate_bytes(self.program, batch, dtype)


class QNodeExecutor(_Verbs):
    """A PennyLane QNode on the row's device (one circuit per input on lightning devices)."""

    def __init__(self, circuit, program: GateProgram | None, backend, execution=None):
        self._setup(circuit, program, backend)

    def run(self, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.run_qnode(inputs, weights)  # (N, n_outputs)


class QiskitExecutor(_Verbs, ShotExecutor):
    """EstimatorV2 jobs on the row's Qiskit service (``hybrid.ibm.shots.ShotExecutor``), with
    QNG's metric circuits riding on the next recorded training job.

    Attributes:
        riding_metric: the estimate ``queue_metric`` queued, until taken or dropped.
    """

    samples = True

    def __init__(self, circuit, program: GateProgram | None, backend, execution=None):
        if program is None:
            raise InputError(f"{circuit!r} does not compile to gates, so it cannot run on {backend.name}; "
                             "use a template from circuits.TEMPLATES")  # fmt: skip
        options = ExecutionOptions.from_config(execution)
        ShotExecutor.__init__(self, program, backend, options, execution.noise, Gradient.from_config(execution))
        self._setup(circuit, program, backend)
        self.riding_metric = None

    @property
    def shots(self) -> int:
        return self.options.shots

    @property
    def default_metric(self) -> str:
        return "estimator"

    def run(self, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return expectation(self, inputs, weights)  # (N, n_outputs), one job

    def estimator_metric(self, inputs, weights, approx) -> torch.Tensor:
        """The (block-)diagonal metric estimated in one job on this backend: (P, P) float64."""
        if approx is None:
            raise InputError(
                "the estimator method gives the block-diagonal metric only; use approx='block-diag' or 'diag', "
                "or method='pennylane' with a device that has an auxiliary wire"
            )
        angles = self.program.angles(inputs.cpu().numpy(), weights.detach().double().cpu().numpy())
        metric = torch.from_numpy(MetricEstimate(self.program).estimate(self, angles))
        metric = metric.diag().diag() if approx == "diag" else metric
        return metric.to(weights.device)

    def fidelity_metric(self, angles: np.ndarray, step: float, generator) -> np.ndarray:
        """QN-SPSA's (P, P) estimate at (M, n_angles) angles, in a job of its own."""
        return FidelityEstimate(self.program, step, None, generator).estimate(self, angles)

    # -- what submit's preview prints ------------------------------------------------------------

    def job_cost(self, runtime: Runtime, inputs: int, per_input: int) -> Cost:
        """One job of ``inputs`` circuit inputs with ``per_input`` parameter sets each."""
        isa = self.isa(runtime)
        settings = measurement_settings(isa.observables(self.observables))
        return runtime.cost([Pub("preview", isa, [], np.zeros((inputs, per_input, 1, 0)), settings)])

    def step_cost(self, runtime: Runtime, inputs: int, gradient: Gradient | None = None) -> Cost:
        """One recorded training step's job over ``inputs`` inputs: forward and the gradient's
        shifted circuits (``gradient``: this executor's by default), without QNG's metric."""
        program = self.program
        shifted = int(((program.input_coeffs != 0).any(axis=1) | (program.weight_coeffs != 0).any(axis=1)).sum())
        return self.job_cost(runtime, inputs, (gradient or self.gradient).circuits_per_input(shifted))

    def metric_cost(self, runtime: Runtime, inputs: int, fidelity_step: float | None = None) -> Cost:
        """The circuits one QNG metric refresh at ``inputs`` inputs adds: the block-diagonal
        estimate, or with ``fidelity_step`` QN-SPSA's fidelities."""
        zeros = np.zeros((inputs, self.program.n_angles))
        estimate = (FidelityEstimate(self.program, fidelity_step, None, torch.Generator().manual_seed(0))
                    if fidelity_step is not None else MetricEstimate(self.program))  # fmt: skip
        return runtime.cost(estimate.pubs(self, runtime, zeros))

    def qng_method(self, metric: str, method: str | None, approx: str | None) -> str:
        if metric == "pullback":
            raise InputError(f"optim.qng.metric='pullback' needs the exact circuit Jacobian, not {self.backend.name}'s "
                             "samples; use metric='exact', 'estimator' or 'qnspsa' there")  # fmt: skip
        method = "estimator" if metric == "estimator" else (method or self.default_metric)
        if method == "estimator" and approx is None and metric != "qnspsa":
            raise InputError(
                f"QNG's full metric cannot be estimated on {self.backend.name}: "
                "use approx='block-diag' (or 'diag') there, or metric='qnspsa'"
            )
        return method

    def estimates(self, metric: str, method: str) -> bool:
        return metric == "qnspsa" or method == "estimator"

    def queue_metric(self, samples: int, generator, fidelity_step: float | None = None) -> None:
        """Queue the block-diagonal metric circuits (or, with ``fidelity_step``, QN-SPSA's
        fidelity circuits) on the next recorded forward job, at ``samples`` of its inputs
        drawn with ``generator``; ``take_metric`` collects the result."""
        self.drop_metric()
        if fidelity_step is None:
            self.riding_metric = MetricEstimate(self.program, samples, generator)
        else:
            self.riding_metric = FidelityEstimate(self.program, fidelity_step, samples, generator)
        self.extras.append(self.riding_metric)

    def take_metric(self) -> np.ndarray | None:
        """The (P, P) metric the queued estimate brought back, or None when none rode in a job
        (none was queued, or the job has not been sent: then it is unqueued)."""
        estimate, self.riding_metric = self.riding_metric, None
        if estimate is not None and estimate.metric is not None:
            return estimate.metric
        if estimate is not None and estimate in self.extras:
            self.extras.remove(estimate)
        return None

    def drop_metric(self) -> None:
        """Unqueue a metric estimate that has not been sent."""
        self.take_metric()


# --- pennylane: qml.metric_tensor on the autograd interface --------------------------------


def pennylane_metric(circuit, inputs: torch.Tensor, weights: torch.Tensor, approx: str | None, device, shots=None):
    """The metric through PennyLane's transform on ``device``, one input row at a time -> (P, P).

    The QNode uses the autograd interface with the inputs as constants: ``qml.metric_tensor``
    then differentiates the weights only (on the torch interface it fails on data inputs).
    """


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


