"""Backends are one lookup table: name -> how circuits run and how they are differentiated.

    engine "statevector": the batched torch simulator (hybrid.sim.statevector), exact, autograd
                          gradients, CPU or CUDA; PennyLane's QNode is the fallback for
                          circuits it cannot compile.
    engine "qnode":       a PennyLane QNode on ``device`` with ``diff_method``.
    engine "qiskit":      EstimatorV2 jobs built from the compiled program (hybrid.ibm):
                          sampled expectation values, parameter-shift gradients; ``service``
                          says where the jobs run.

PennyLane's lightning devices do not broadcast: they run one circuit per input, so they are
never the default for layers applied to every token. Rows whose name ends in ``<device>``
are patterns: ``fake_manila`` resolves to the ``fake_<device>`` row with that name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hybrid.errors import InputError


@dataclass(frozen=True)
class Backend:
    name: str  # what the user asked for
    engine: str  # "statevector", "qnode" or "qiskit"
    device: str  # PennyLane device for QNode execution and metric-tensor transforms
    diff_method: str  # PennyLane gradient method on the QNode path
    exact: bool = True  # expectation values without shot noise
    service: str = ""  # qiskit engine: "aer" (in process), "local" (runtime local testing mode), "ibm"


# Shot-based rows keep default.qubit as their PennyLane device: the QNode is the exact
# reference there, never the execution path (PennyLane's qiskit.remote sends one job per circuit).
BACKENDS = {
    "default.qubit": Backend("default.qubit", "statevector", "default.qubit", "backprop"),
    "lightning.qubit": Backend("lightning.qubit", "qnode", "lightning.qubit", "adjoint"),
    "qiskit.aer": Backend("qiskit.aer", "qiskit", "default.qubit", "parameter-shift", False, "aer"),
    "fake_<device>": Backend("fake_<device>", "qiskit", "default.qubit", "parameter-shift", False, "local"),
    "ibm_<device>": Backend("ibm_<device>", "qiskit", "default.qubit", "parameter-shift", False, "ibm"),
}


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
