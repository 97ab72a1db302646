r"""The gate set: one row per gate, with every fact an executor needs about it.

A parametric gate is :math:`U(\theta) = e^{-i\theta G}` on one wire with

.. math:: G = \tfrac12 P + c\,I, \qquad P \in \{X, Y, Z\},

so its generator has eigenvalues :math:`c \pm \frac12`, one apart, and the two-term rule

.. math:: \partial_\theta \langle O \rangle = \tfrac12\big(\langle O \rangle_{\theta + \frac\pi2}
          - \langle O \rangle_{\theta - \frac\pi2}\big)

is exact (Schuld et al., Phys. Rev. A 99, 032331, 2019). ``c`` is 0 for
the Pauli rotations and :math:`-\frac12` for PhaseShift, whose
:math:`\mathrm{diag}(1, e^{i\theta})` is :math:`e^{-i\theta G}` with :math:`G = -|1\rangle\langle 1|`.
Plain data: NumPy only, no PennyLane, Qiskit or torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

PAULIS = {"X": np.array([[0, 1], [1, 0]]), "Y": np.array([[0, -1j], [1j, 0]]), "Z": np.diag([1, -1])}
TWO_TERM = ((0.5, math.pi / 2), (-0.5, -math.pi / 2))  # (coefficient, shift) pairs


@dataclass(frozen=True, eq=False)
class GateSpec:
    """One gate of the gate set.

    Attributes:
        name: PennyLane's name of the gate (``Gate.name`` in a ``GateProgram``).
        qiskit: the ``QuantumCircuit`` method that appends it (angle first, then qubits).
        n_wires: how many wires it acts on.
        pauli: parametric gates: ``P`` of the generator ``G = P/2 + c I``; None for fixed gates.
        phase: parametric gates: ``c`` of that generator.
        shift_rule: parametric gates: (coefficient, shift) pairs with
            ``d<O>/dtheta = sum coefficient * <O>(theta + shift)``; empty for fixed gates.
    """

    name: str
    qiskit: str
    n_wires: int = 1
    pauli: str | None = None
    phase: float = 0.0
    shift_rule: tuple[tuple[float, float], ...] = ()

    @property
    def parametric(self) -> bool:
        return self.pauli is not None

    @property
    def generator(self) -> np.ndarray:
        """``G`` (2, 2) complex, with the gate ``exp(-i theta G)``.

        Raises:
            ValueError: the gate has no angle.
        """
        if self.pauli is None:
            raise ValueError(f"{self.name} has no angle, so no generator")
        return PAULIS[self.pauli] / 2 + self.phase * np.eye(2, dtype=complex)


GATES = {
    spec.name: spec
    for spec in (
        GateSpec("RX", "rx", pauli="X", shift_rule=TWO_TERM),
        GateSpec("RY", "ry", pauli="Y", shift_rule=TWO_TERM),
        GateSpec("RZ", "rz", pauli="Z", shift_rule=TWO_TERM),
        GateSpec("PhaseShift", "p", pauli="Z", phase=-0.5, shift_rule=TWO_TERM),
        GateSpec("Hadamard", "h"),
        GateSpec("PauliX", "x"),
        GateSpec("PauliY", "y"),
        GateSpec("PauliZ", "z"),
        GateSpec("S", "s"),
        GateSpec("T", "t"),
        GateSpec("SX", "sx"),
        GateSpec("CNOT", "cx", n_wires=2),
        GateSpec("CZ", "cz", n_wires=2),
        GateSpec("SWAP", "swap", n_wires=2),
    )
}
