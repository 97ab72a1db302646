"""Backends are one lookup table: name -> the executor that runs circuits, differentiates them
and computes QNG's metric of their weights.

    StatevectorExecutor: the batched torch simulator (hybrid.sim), exact, autograd gradients,
                         CPU or CUDA, exact metric; PennyLane's QNode is the fallback for
                         circuits it cannot compile.
    QNodeExecutor:       a PennyLane QNode on ``device`` with ``diff_method``; PennyLane's
                         metric_tensor transform.
    QiskitExecutor:      EstimatorV2 jobs built from the compiled program (hybrid.ibm):
                         sampled expectation values, parameter-shift gradients, the metric from
                         generator covariances on the backend itself; ``service`` says where
                         the jobs run.

Each row's ``engine`` (a class in ``hybrid.executors``) owns both verbs, running circuits and
measuring the metric; ``Backend.build`` makes the one a layer holds.

PennyLane's lightning devices do not broadcast: they run one circuit per input, so they are
never the default for layers applied to every token. Rows whose name ends in ``<device>``
are patterns: ``fake_manila`` resolves to the ``fake_<device>`` row with that name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from hybrid.errors import InputError, check_choice, check_number
from hybrid.executors import Executor, QiskitExecutor, QNodeExecutor, StatevectorExecutor
from hybrid.ibm.devices import check_noise, check_width, fake_backend_class
from hybrid.ibm.jobs import ExecutionOptions


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
        ExecutionOptions.from_config(self)
        if backend is not None:
            check_noise(backend, self.noise)
            if n_qubits is not None:
                check_width(backend, self.noise, n_qubits)
        return self


@dataclass(frozen=True)
class Backend:
    name: str  # what the user asked for
    engine: type  # the executor class (hybrid.executors) that runs this row's circuits
    device: str  # PennyLane device for QNode execution and metric-tensor transforms
    diff_method: str  # PennyLane gradient method on the QNode path
    exact: bool = True  # expectation values without shot noise
    service: str = ""  # Qiskit engine: "aer" (in process), "local" (runtime local testing mode), "ibm"

    @property
    def samples(self) -> bool:
        """True when circuits run as sampled jobs (shots, noise and execution options apply)."""
        return self.engine.samples

    def build(self, circuit, program, execution: ExecutionConfig) -> Executor:
        """This row's executor for ``circuit`` (its compiled ``program``, or None) and ``execution``.

        Raises:
            InputError: a sampling engine gets a circuit that does not compile to gates.
        """
        return self.engine(circuit, program, self, execution)


# Shot-based rows keep default.qubit as their PennyLane device: the QNode is the exact
# reference there, never the execution path (PennyLane's qiskit.remote sends one job per circuit).
BACKENDS = {
    "default.qubit": Backend("default.qubit", StatevectorExecutor, "default.qubit", "backprop"),
    "lightning.qubit": Backend("lightning.qubit", QNodeExecutor, "lightning.qubit", "adjoint"),
    "qiskit.aer": Backend("qiskit.aer", QiskitExecutor, "default.qubit", "parameter-shift", False, "aer"),
    "fake_<device>": Backend("fake_<device>", QiskitExecutor, "default.qubit", "parameter-shift", False, "local"),
    "ibm_<device>": Backend("ibm_<device>", QiskitExecutor, "default.qubit", "parameter-shift", False, "ibm"),
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
                fake_backend_class(name)  # raises InputError for an unknown device
            return dataclasses.replace(row, name=name)
    known = ", ".join(k.replace("<device>", "<device> (e.g. fake_manila)") if k.startswith("fake") else k
                      for k in BACKENDS)  # fmt: skip
    raise InputError(f"unknown backend {name!r}; choose one of: {known}")
