"""Circuits for a device: one Qiskit parameter per gate angle, transpiled once, bound per job.

    circuit = angle_circuit(program)                        # theta[j] is gate angle j
    isa = transpile(circuit, backend, layout=None)          # ISA circuit for backend.target
    pub = (isa.circuit, [isa.observables(ops)], isa.values(angles)[:, None, :])

Angles, not inputs and weights, are the circuit's parameters: every angle is one rotation
(RX, RY, RZ, PhaseShift), so parameter shifts (``circuits.GATES[name].shift_rule``) act on
single parameters and the chain rule back to inputs and weights, ``angles = inputs @
input_coeffs.T + weights @ weight_coeffs.T + offsets``, is a matrix product in torch. The
transpiler may reorder or drop parameters: ``IsaCircuit.columns`` maps the circuit's
parameters back to angle indices.

The first transpile picks the physical qubits; later ones (other circuits of the same layer,
a resumed run) pass them as ``layout``, so every job of a run uses the same qubits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuits.program import GateProgram, qiskit_circuit


def angle_circuit(program: GateProgram, gates: list[int] | None = None):
    """``program``'s gates (or the subset with indices ``gates``, in order) as a
    ``QuantumCircuit`` whose angle ``j`` is ``ParameterVector("theta", n_angles)[j]``."""
    from qiskit.circuit import ParameterVector

    return qiskit_circuit(program, ParameterVector("theta", program.n_angles), gates)


@dataclass(frozen=True)
class IsaCircuit:
    """A circuit transpiled for one backend.

    Attributes:
        circuit: the ISA circuit; its parameters are ``theta[j]`` of the angles it uses.
        columns: (n_parameters,) angle index of each of ``circuit.parameters``, in order.
        layout: physical qubit of each wire.
        shot_seconds: estimated time of one shot on the device (repetition delay, gates,
            readout), 0 where the backend has no timing (simulators).
    """

    circuit: object
    columns: np.ndarray
    layout: tuple[int, ...]
    shot_seconds: float

    def values(self, angles: np.ndarray) -> np.ndarray:
        """(..., n_angles) angles -> (..., n_parameters) values in ``circuit.parameters`` order."""
        return np.asarray(angles, dtype=np.float64)[..., self.columns]

    def observables(self, ops: list) -> list:
        """``SparsePauliOp``s on the program's wires -> the same on the ISA circuit's qubits."""
        return [op.apply_layout(self.circuit.layout) for op in ops]


def transpile(circuit, backend, layout: tuple[int, ...] | None = None, optimization_level: int = 1,
              seed: int = 0) -> IsaCircuit:  # fmt: skip
    """Transpile ``circuit`` for ``backend.target`` with a preset pass manager (seeded, so a
    rerun picks the same qubits), on ``layout``'s physical qubits when given."""
    from qiskit.transpiler import generate_preset_pass_manager

    target = backend.target  # read once: Aer builds a new Target on every access
    if target.build_coupling_map() is None:
        layout = None  # all-to-all simulator: a layout would only widen the circuit to every qubit
    manager = generate_preset_pass_manager(
        optimization_level=optimization_level, target=target, seed_transpiler=seed,
        initial_layout=list(layout) if layout is not None else None,
    )  # fmt: skip
    isa = manager.run(circuit)
    chosen = (
        tuple(isa.layout.initial_index_layout(filter_ancillas=True)) if isa.layout else tuple(range(circuit.num_qubits))
    )
    columns = np.array([int(p.index) for p in isa.parameters], dtype=np.int64)
    return IsaCircuit(isa, columns, chosen, _shot_seconds(isa, backend, target, chosen))


def _shot_seconds(isa, backend, target, layout: tuple[int, ...]) -> float:
    try:
        gates = isa.estimate_duration(target, unit="s")
        readout = max(target["measure"][(q,)].duration or 0.0 for q in layout)
    except Exception:  # simulators carry no durations
        return 0.0
    rep_delay = getattr(getattr(backend, "configuration", lambda: None)(), "default_rep_delay", None) or 0.0
    return float(gates + readout + rep_delay)
