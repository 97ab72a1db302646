"""Compile a template into a gate program: gates plus affine maps from data and weights to angles.

A ``GateProgram`` is the circuit as executors see it:

    angles = inputs @ input_coeffs.T + weights.ravel() @ weight_coeffs.T + offsets   # (..., n_angles)

and a flat list of gates from ``GATE_SET`` (the rows of ``circuits.gates.GATES``), each with
at most one angle. The torch simulator in ``hybrid`` and the Qiskit converter below both run
from it, so a template's gates are written once, in PennyLane. Compilation also groups the
trainable gates into PennyLane's parametrized layers (``GateProgram.layers``), the blocks of
the block-diagonal metric tensor.

Compilation traces the template with PennyLane, decomposes it into ``GATE_SET``, and reads
the affine maps exactly by probing: one trace with a batch of unit inputs, one trace per
weight entry, then one random point that must match the affine prediction. A template whose
gate sequence depends on the angle values, or whose angles are not affine in inputs and
weights, raises ``UnsupportedCircuit`` (executors then fall back to PennyLane).
"""

from __future__ import annotations

import functools
import operator
import types
from dataclasses import dataclass

import numpy as np
import pennylane as qml

from circuits.gates import GATES

# Gates with at most one angle that every executor knows; PennyLane decomposes the rest.
GATE_SET = frozenset(GATES)
IGNORED = ("GlobalPhase", "Identity")  # no effect on expectation values


class UnsupportedCircuit(ValueError):
    """The template cannot be compiled into a ``GateProgram`` (the message says why)."""


@dataclass(frozen=True)
class Gate:
    """One gate of a program: a ``GATE_SET`` name, its wires, and its angle index (or None)."""

    name: str
    wires: tuple[int, ...]
    angle: int | None = None


@dataclass(frozen=True)
class Layer:
    """One of PennyLane's parametrized layers: ``gates``, the indices of its trainable gates
    in gate order (on disjoint wires, so their generators commute), and ``before``, the
    indices of every earlier gate they depend on (their past light cone), in order."""

    gates: tuple[int, ...]
    before: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class GateProgram:
    """A compiled template. Shapes: ``input_coeffs`` (n_angles, n_inputs),
    ``weight_coeffs`` (n_angles, n_weights), ``offsets`` (n_angles,); ``observables`` holds
    one Pauli sentence per output as ``{((wire, "X"|"Y"|"Z"), ...): coefficient}``;
    ``layers`` the parametrized layers of the trainable gates (see ``parametrized_layers``)."""

    n_qubits: int
    n_inputs: int
    weight_shape: tuple[int, ...]
    gates: tuple[Gate, ...]
    input_coeffs: np.ndarray
    weight_coeffs: np.ndarray
    offsets: np.ndarray
    observables: tuple[dict, ...]
    layers: tuple[Layer, ...]

    @property
    def n_angles(self) -> int:
        return len(self.offsets)

    @property
    def n_weights(self) -> int:
        return int(np.prod(self.weight_shape))

    @property
    def data_angles(self) -> np.ndarray:
        """Boolean mask (n_angles,): which angles depend on the inputs."""
        return np.any(self.input_coeffs != 0, axis=1)

    @property
    def weight_angles(self) -> np.ndarray:
        """Boolean mask (n_angles,): which angles depend on the weights (the trainable ones)."""
        return np.any(self.weight_coeffs != 0, axis=1)

    def angles(self, inputs: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Gate angles (..., n_angles) for inputs (..., n_inputs) and weights ``weight_shape``."""
        fixed = self.weight_coeffs @ np.ravel(weights) + self.offsets
        return np.asarray(inputs) @ self.input_coeffs.T + fixed


def compile_circuit(circuit) -> GateProgram:
    """Compile a template (anything with ``n_qubits``, ``n_inputs``, ``weight_shape`` and
    ``__call__(inputs, weights)``) into a ``GateProgram``. Template objects are cached by
    class and configuration, so equal templates compile once.

    Raises:
        UnsupportedCircuit: the template cannot be expressed as a gate program.
    """
    if isinstance(circuit, types.FunctionType) or not hasattr(circuit, "__dict__"):
        return _compile(circuit)  # a bare function has no configuration to key a cache on
    key = (type(circuit), tuple(sorted((k, repr(v)) for k, v in vars(circuit).items())))
    if key not in _CACHE:
        _CACHE[key] = _compile(circuit)
    return _CACHE[key]


_CACHE: dict = {}


def _trace(circuit, inputs, weights):
    """Gate list and measurements of one evaluation, decomposed into ``GATE_SET``."""
    tape = qml.tape.make_qscript(circuit)(inputs, weights)
    [tape], _ = qml.transforms.decompose(tape, gate_set=set(GATES) | set(IGNORED))  # read now: rows may be added
    ops = [op for op in tape.operations if op.name not in IGNORED]
    return ops, tape.measurements


def _compile(circuit) -> GateProgram:
    n_qubits, n_inputs = int(circuit.n_qubits), int(circuit.n_inputs)
    weight_shape = tuple(int(s) for s in circuit.weight_shape)
    n_weights = int(np.prod(weight_shape))

    # Probe the inputs in one broadcast trace: row 0 all zeros, row 1 + k the unit vector e_k.
    input_probe = np.vstack([np.zeros(n_inputs), np.eye(n_inputs)])  # (1 + n_inputs, n_inputs)
    ops, measurements = _trace(circuit, input_probe, np.zeros(weight_shape))
    structure = [(op.name, tuple(op.wires)) for op in ops]
    for name, wires in structure:
        if name not in GATES:
            raise UnsupportedCircuit(f"gate {name} does not decompose into {sorted(GATES)}")
        if any(not isinstance(w, (int, np.integer)) or not 0 <= w < n_qubits for w in wires):
            raise UnsupportedCircuit(f"wires must be 0..{n_qubits - 1}, found {wires} on {name}")
    parametric = [i for i, op in enumerate(ops) if op.num_params == 1]
    angle_of = {op_index: j for j, op_index in enumerate(parametric)}
    probe = np.stack([_broadcast(ops[i].data[0], 1 + n_inputs) for i in parametric], axis=-1)
    offsets = probe[0] if parametric else np.zeros(0)  # (n_angles,)
    input_coeffs = (probe[1:] - offsets).T if parametric else np.zeros((0, n_inputs))

    # Probe the weights one entry at a time (weights need not broadcast in user templates).
    weight_coeffs = np.zeros((len(parametric), n_weights))
    for k in range(n_weights):
        unit = np.zeros(n_weights)
        unit[k] = 1.0
        angles = _angles(circuit, np.zeros(n_inputs), unit.reshape(weight_shape), structure)
        weight_coeffs[:, k] = angles - offsets

    gates = tuple(Gate(name, wires, angle_of.get(i)) for i, (name, wires) in enumerate(structure))
    program = GateProgram(
        n_qubits=n_qubits,
        n_inputs=n_inputs,
        weight_shape=weight_shape,
        gates=gates,
        input_coeffs=input_coeffs,
        weight_coeffs=weight_coeffs,
        offsets=offsets,
        observables=tuple(_pauli_sentence(m) for m in measurements),
        layers=parametrized_layers(gates, np.any(weight_coeffs != 0, axis=1)),
    )
    # Check affinity at a random point: the maps above must predict every angle exactly.
    inputs, weights = _random_point(n_inputs, weight_shape)
    actual = _angles(circuit, inputs, weights, structure)
    if not np.allclose(actual, program.angles(inputs, weights), rtol=0, atol=1e-9):
        raise UnsupportedCircuit("gate angles are not affine functions of the inputs and weights")
    return program


def parametrized_layers(gates: tuple[Gate, ...], trainable: np.ndarray) -> tuple[Layer, ...]:
    """PennyLane's parametrized layers of the gates whose angle is ``trainable`` (n_angles,) bool.

    As ``CircuitGraph.parametrized_layers`` builds them for ``qml.metric_tensor(approx=
    "block-diag")``: walk the trainable gates in order and start a new layer when the gate
    depends (through a path on the wires) on a gate of the current one.
    """
    ancestors: list[int] = []  # bit mask of the earlier gates each gate depends on
    last_on_wire: dict[int, int] = {}
    for i, gate in enumerate(gates):
        mask = 0
        for w in gate.wires:
            if w in last_on_wire:
                mask |= ancestors[last_on_wire[w]] | (1 << last_on_wire[w])
        ancestors.append(mask)
        for w in gate.wires:
            last_on_wire[w] = i
    blocks: list[list[int]] = []
    current = 0  # bit mask of the gates in blocks[-1]
    for i, gate in enumerate(gates):
        if gate.angle is None or not trainable[gate.angle]:
            continue
        if not blocks or ancestors[i] & current:
            blocks.append([])
            current = 0
        blocks[-1].append(i)
        current |= 1 << i
    layers = []
    for block in blocks:
        before = functools.reduce(operator.or_, (ancestors[i] for i in block))
        layers.append(Layer(tuple(block), tuple(j for j in range(before.bit_length()) if before >> j & 1)))
    return tuple(layers)


def _angles(circuit, inputs, weights, structure) -> np.ndarray:
    ops, _ = _trace(circuit, inputs, weights)
    if [(op.name, tuple(op.wires)) for op in ops] != structure:
        raise UnsupportedCircuit("the gate sequence changes with the input or weight values")
    return np.array([float(op.data[0]) for op in ops if op.num_params == 1])


def _broadcast(value, batch: int) -> np.ndarray:
    value = np.asarray(value, dtype=float)
    return np.broadcast_to(value, (batch,)) if value.ndim == 0 else value


def _random_point(n_inputs: int, weight_shape: tuple[int, ...]):
    rng = np.random.default_rng(1234)
    return rng.uniform(-np.pi, np.pi, n_inputs), rng.uniform(-np.pi, np.pi, weight_shape)


def _pauli_sentence(measurement) -> dict:
    if not isinstance(measurement, qml.measurements.ExpectationMP) or measurement.obs is None:
        raise UnsupportedCircuit(f"only expectation values are supported, found {measurement}")
    try:
        sentence = qml.pauli.pauli_sentence(measurement.obs)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise UnsupportedCircuit(f"observable {measurement.obs} is not a Pauli sentence") from error
    terms = {}
    for word, coeff in sentence.items():
        if abs(np.imag(coeff)) > 1e-12:
            raise UnsupportedCircuit(f"observable {measurement.obs} is not Hermitian")
        terms[tuple(sorted((int(w), p) for w, p in word.items()))] = float(np.real(coeff))
    return terms


# --- Qiskit -------------------------------------------------------------------------------


def qiskit_circuit(program: GateProgram, angles, gates: list[int] | None = None):
    """``program``'s gates (or those with indices ``gates``, in that order) as a Qiskit
    ``QuantumCircuit`` without measurements, gate angle ``j`` set to ``angles[j]`` (a number,
    a ``Parameter`` or a parameter expression). Wire ``i`` is Qiskit qubit ``i``."""
    from qiskit.circuit import QuantumCircuit

    qc = QuantumCircuit(program.n_qubits)
    for index in range(len(program.gates)) if gates is None else gates:
        gate = program.gates[index]
        args = [] if gate.angle is None else [angles[gate.angle]]
        getattr(qc, GATES[gate.name].qiskit)(*args, *gate.wires)
    return qc


def to_qiskit(program: GateProgram, inputs=None, weights=None):
    """The program as a Qiskit ``QuantumCircuit`` without measurements.

    With ``inputs`` and ``weights`` None, gate angles are expressions in the parameter
    vectors ``x`` (n_inputs) and ``w`` (n_weights, C-order flattening of the weights), ready
    to transpile once and bind per evaluation. Given values are bound before returning.
    Wire ``i`` is Qiskit qubit ``i``; measure with ``qiskit_observables(program)``.
    """
    from qiskit.circuit import ParameterVector

    x = ParameterVector("x", program.n_inputs)
    w = ParameterVector("w", program.n_weights)
    qc = qiskit_circuit(program, [_expression(program, j, x, w) for j in range(program.n_angles)])
    if inputs is None and weights is None:
        return qc
    if inputs is None or weights is None:
        raise ValueError("give both inputs and weights, or neither for a parametric circuit")
    values = dict(zip(x, np.asarray(inputs, dtype=float).ravel(), strict=True))
    values.update(zip(w, np.asarray(weights, dtype=float).ravel(), strict=True))
    return qc.assign_parameters({p: values[p] for p in qc.parameters})


def _expression(program: GateProgram, j: int, x, w):
    expr = float(program.offsets[j])
    for k in np.flatnonzero(program.input_coeffs[j]):
        expr = expr + float(program.input_coeffs[j, k]) * x[k]
    for k in np.flatnonzero(program.weight_coeffs[j]):
        expr = expr + float(program.weight_coeffs[j, k]) * w[k]
    return expr


def qiskit_observables(program: GateProgram) -> list:
    """One ``SparsePauliOp`` per output, on ``program.n_qubits`` qubits (wire i = qubit i)."""
    from qiskit.quantum_info import SparsePauliOp

    return [
        SparsePauliOp.from_sparse_list(
            [("".join(p for _, p in word), [w for w, _ in word], c) for word, c in terms.items()] or [("", [], 0.0)],
            num_qubits=program.n_qubits,
        )
        for terms in program.observables
    ]
