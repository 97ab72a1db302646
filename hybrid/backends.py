"""Backends are one lookup table: name -> how circuits run and how they are differentiated.

    engine "statevector": the batched torch simulator (hybrid.statevector), exact, autograd
                          gradients, CPU or CUDA; PennyLane's QNode is the fallback for
                          circuits it cannot compile.
    engine "qnode":       a PennyLane QNode on ``device`` with ``diff_method``.

PennyLane's lightning devices do not broadcast: they run one circuit per input, so they are
never the default for layers applied to every token.
"""

from __future__ import annotations

from dataclasses import dataclass

from hybrid.errors import InputError


@dataclass(frozen=True)
class Backend:
    name: str  # what the user asked for
    engine: str  # "statevector" or "qnode"
    device: str  # PennyLane device for QNode execution and metric-tensor transforms
    diff_method: str  # PennyLane gradient method on the QNode path
    exact: bool = True  # expectation values without shot noise


BACKENDS = {
    "default.qubit": Backend("default.qubit", "statevector", "default.qubit", "backprop"),
    "lightning.qubit": Backend("lightning.qubit", "qnode", "lightning.qubit", "adjoint"),
}


def get_backend(name: str) -> Backend:
    """The ``BACKENDS`` row for ``name``.

    Raises:
        InputError: the name is unknown (the message lists the known ones).
    """
    if name not in BACKENDS:
        raise InputError(f"unknown backend {name!r}; choose one of: {', '.join(BACKENDS)}")
    return BACKENDS[name]
