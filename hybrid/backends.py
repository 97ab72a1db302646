"""Backends are one lookup table: name -> how circuits run, how they are differentiated, and
how QNG's metric of their weights is computed.

    executor "statevector": the batched torch simulator (hybrid.sim), exact, autograd gradients,
                            CPU or CUDA; PennyLane's QNode is the fallback for circuits it
                            cannot compile.
    executor "qnode":       a PennyLane QNode on ``device`` with ``diff_method``.
    executor "qiskit":      EstimatorV2 jobs built from the compiled program (hybrid.ibm):
                            sampled expectation values, parameter-shift gradients; ``service``
                            says where the jobs run.

    metric "exact":     the state Jacobian on the torch simulator (hybrid.optim.metric)
    metric "pennylane": PennyLane's metric_tensor transform on ``device``
    metric "estimator": generator covariances estimated on the backend itself (hybrid.ibm.metric)

PennyLane's lightning devices do not broadcast: they run one circuit per input, so they are
never the default for layers applied to every token. Rows whose name ends in ``<device>``
are patterns: ``fake_manila`` resolves to the ``fake_<device>`` row with that name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hybrid.errors import InputError, check_choice, check_number
from hybrid.sim import statevector


@dataclass
class ExecutionConfig:
    """``[execution]``: how sampling backends (qiskit.aer, fake_*, ibm_*) run circuits.

    Exact simulators ignore every key but ``shots`` (0 there). See README "IBM Quantum hardware".
    """

    shots: int = 0  # 0: exact on simulators, 1024 on sampling backends; > 0: sampled there
    noise: str = ""  # qiskit.aer only: an IBM fake device whose noise model to use, e.g. fake_manila
    mode: str = "job"  # job, batch or session (one dedicated QPU window for the whole run)
    resilience_level: int = 1  # EstimatorV2 error mitigation on hardware: 0 none, 1 readout (TREX), 2 + ZNE
    twirling: bool = False  # Pauli twirling of gates and measurements, on hardware
    dd: str = ""  # dynamical decoupling of idle qubits on hardware: "" off, XX, XpXm or XY4
    optimization_level: int = 1  # preset pass manager level; circuits are transpiled once per run
    max_execution_time: int = 0  # QPU seconds one job may use; 0: the service's default (cap 10800)
    result_timeout: float = 3600.0  # seconds to wait for one job; the journal keeps it for --resume
    gradient: str = "parameter-shift"  # parameter-shift (1 + 2 x angles) or spsa (1 + 2 x resamplings)
    resamplings: int = 1  # spsa only: perturbation directions per input, averaged
    spsa_c: float = 0.1  # spsa only: perturbation size c in (0, pi]; angles are shifted by +-c per direction entry

    def validate(
        self, backend: Backend | None = None, n_qubits: int | None = None, prefix: str = "execution.",
    ) -> ExecutionConfig:  # fmt: skip
        """Ranges of every key; with ``backend``, also whether it can use them (noise on qiskit.aer
        only), and with ``n_qubits`` whether the circuit fits the fake device it simulates.

        Raises:
            InputError: naming the key and the fix.
        """
        check_number(f"{prefix}shots", self.shots, low=0, integer=True)
        check_choice(f"{prefix}gradient", self.gradient, ("parameter-shift", "spsa"))
        check_number(f"{prefix}resamplings", self.resamplings, low=1, integer=True)
        check_number(f"{prefix}spsa_c", self.spsa_c, low=0, low_open=True, high=math.pi)
        if self.gradient != "spsa" and (self.resamplings, self.spsa_c) != (1, 0.1):
            raise InputError(f"{prefix}resamplings and {prefix}spsa_c apply to {prefix}gradient='spsa' only; "
                             f"set {prefix}gradient=spsa (--gradient spsa) or drop them")  # fmt: skip
        if self.gradient == "spsa" and backend is not None and not backend.samples:
            raise InputError(f"{prefix}gradient='spsa' is for sampling backends (qiskit.aer, fake_*, ibm_*); "
                             f"{backend.name} differentiates exactly by autograd: drop --gradient spsa")  # fmt: skip
        from hybrid.ibm.jobs import ExecutionOptions  # plain data; no Qiskit import

        ExecutionOptions.from_config(self)
        if backend is not None:
            from hybrid.ibm.devices import check_noise, check_width

            check_noise(backend, self.noise)
            if n_qubits is not None:
                check_width(backend, self.noise, n_qubits)
        return self


def _run_statevector(layer, inputs: torch.Tensor) -> torch.Tensor:
    return statevector.simulate(layer.program, inputs, layer.weights)  # (N, n_outputs)


def _run_qiskit(layer, inputs: torch.Tensor) -> torch.Tensor:
    from hybrid.ibm.shots import expectation  # Qiskit runtime imports only where they are used

    return expectation(layer.executor, inputs, layer.weights)  # (N, n_outputs), one job


def _run_qnode(layer, inputs: torch.Tensor) -> torch.Tensor:
    return layer.run_qnode(inputs)  # (N, n_outputs)


@dataclass(frozen=True)
class Backend:
    name: str  # what the user asked for
    executor: str  # "statevector", "qnode" or "qiskit"
    device: str  # PennyLane device for QNode execution and metric-tensor transforms
    diff_method: str  # PennyLane gradient method on the QNode path
    metric: str  # how QNG's metric is computed: "exact", "pennylane" or "estimator"
    run: Callable = dataclasses.field(repr=False, compare=False)  # (layer, (N, n_inputs)) -> (N, n_outputs)
    exact: bool = True  # expectation values without shot noise
    service: str = ""  # qiskit executor: "aer" (in process), "local" (runtime local testing mode), "ibm"

    @property
    def samples(self) -> bool:
        """True when circuits run as sampled jobs (shots, noise and execution options apply)."""
        return self.executor == "qiskit"


# Shot-based rows keep default.qubit as their PennyLane device: the QNode is the exact
# reference there, never the execution path (PennyLane's qiskit.remote sends one job per circuit).
BACKENDS = {
    "default.qubit": Backend("default.qubit", "statevector", "default.qubit", "backprop", "exact", _run_statevector),
    "lightning.qubit": Backend("lightning.qubit", "qnode", "lightning.qubit", "adjoint", "pennylane", _run_qnode),
    "qiskit.aer": Backend("qiskit.aer", "qiskit", "default.qubit", "parameter-shift", "estimator", _run_qiskit,
                          False, "aer"),
    "fake_<device>": Backend("fake_<device>", "qiskit", "default.qubit", "parameter-shift", "estimator", _run_qiskit,
                             False, "local"),
    "ibm_<device>": Backend("ibm_<device>", "qiskit", "default.qubit", "parameter-shift", "estimator", _run_qiskit,
                            False, "ibm"),
}  # fmt: skip


def get_backend(name: str) -> Backend:
    """The ``BACKENDS`` row for ``name``; ``fake_<device>`` and ``ibm_<device>`` match by prefix.

    Raises:
        InputError: the name is unknown (the message lists the known ones), or names a fake
            device that ``qiskit_ibm_runtime.fake_provider`` does not have.
    """
    if name in BACKENDS and "<" not in name:
        return BACKENDS[name]
    for pattern, row in BACKENDS.items():
        prefix = pattern.partition("<")[0]
        if "<" in pattern and name.startswith(prefix) and len(name) > len(prefix):
            if row.service == "local":
                from hybrid.ibm.devices import fake_backend_class

                fake_backend_class(name)  # raises InputError for an unknown device
            return dataclasses.replace(row, name=name)
    known = ", ".join(k.replace("<device>", "<device> (e.g. fake_manila)") if k.startswith("fake") else k
                      for k in BACKENDS)  # fmt: skip
    raise InputError(f"unknown backend {name!r}; choose one of: {known}")
