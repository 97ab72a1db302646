"""Variational circuit templates: plain PennyLane quantum functions with a shape companion.

A template is called as ``template(inputs, weights)`` inside a QNode (or any PennyLane
recording context). It applies its gates and returns one ``qml.expval`` per observable.

    inputs:  (..., n_inputs) rotation angles in radians; leading dimensions broadcast.
    weights: ``weight_shape`` rotation angles in radians.
    returns: list of ``n_outputs`` expectation values, each in [-1, 1].

This module imports PennyLane and NumPy only, never torch: the same template runs on
PennyLane devices, on the torch simulator in ``hybrid`` and, converted by
``circuits.program``, on Qiskit backends.
"""

from __future__ import annotations

import functools
import inspect
import itertools

import numpy as np
import pennylane as qml

ENTANGLERS = {"CNOT": qml.CNOT, "CZ": qml.CZ}
MEASUREMENTS = ("Z", "ZZ", "all")
MAX_QUBITS_MEASURE_ALL = 12  # 4095 outputs; the readout matrix alone grows as 4^n


def z_observables(wires: tuple[int, ...], measure: str) -> tuple:
    """The Pauli-Z strings a template measures, in output order.

    ``"Z"``: Z on each wire (n outputs). ``"ZZ"``: those plus Z_i Z_{i+1} on the ring of
    neighbours (2n outputs for n > 2). ``"all"``: every non-empty Z string (2^n - 1 outputs),
    the same information as the full computational-basis distribution. All are diagonal in
    one basis, so hardware measures them with a single circuit setting.
    """
    if measure not in MEASUREMENTS:
        raise ValueError(f"measure must be one of {', '.join(MEASUREMENTS)}, got {measure!r}")
    n = len(wires)
    if measure == "all" and n > MAX_QUBITS_MEASURE_ALL:
        raise ValueError(
            f"measure='all' on {n} qubits means 2^{n} - 1 outputs; use measure='Z' or 'ZZ', "
            f"or at most {MAX_QUBITS_MEASURE_ALL} qubits"
        )
    if measure == "Z":
        subsets = [(w,) for w in wires]
    elif measure == "ZZ":
        pairs = [(wires[i], wires[(i + 1) % n]) for i in range(n if n > 2 else n - 1)]
        subsets = [(w,) for w in wires] + pairs
    else:
        subsets = [s for k in range(1, n + 1) for s in itertools.combinations(wires, k)]
    return tuple(functools.reduce(lambda a, b: a @ b, [qml.Z(w) for w in s]) for s in subsets)


class Circuit:
    """Common shape bookkeeping and conversions of the templates below.

    Subclasses define ``weight_shape`` and ``gates(inputs, weights)``. ``measure`` picks
    the observables (see ``z_observables``); the default, Pauli-Z on each wire, gives
    ``n_outputs == n_qubits``. ``entangle=False`` drops the template's two-qubit gates,
    leaving a product-state circuit with the same weights: the baseline that tells whether
    entanglement matters. A subclass with no two-qubit gates sets ``has_entanglers = False``
    and refuses it.
    """

    name = "circuit"
    has_entanglers = True  # whether there are two-qubit gates for entangle=False to drop

    def __init__(self, n_qubits: int, n_layers: int, measure: str = "Z", entangle: bool = True):
        for label, value in (("n_qubits", n_qubits), ("n_layers", n_layers)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        if not isinstance(entangle, (bool, np.bool_)):
            raise ValueError(f"entangle must be True or False, got {entangle!r}")
        if not entangle and not self.has_entanglers:
            raise ValueError(
                f"{type(self).__name__} has no two-qubit gates, so entangle=False has nothing to drop; "
                "leave entangle=True (its states are product states already)"
            )
        self.entangle = bool(entangle)
        self.n_qubits = int(n_qubits)
        self.n_layers = int(n_layers)
        self.wires = tuple(range(self.n_qubits))
        self.measure = measure
        # Built once, outside any recording context, so calling the template never queues them.
        self.observables = z_observables(self.wires, measure)

    @property
    def n_inputs(self) -> int:
        """Number of data angles per circuit evaluation: one per qubit."""
        return self.n_qubits

    @property
    def n_outputs(self) -> int:
        """Number of expectation values the template returns."""
        return len(self.observables)

    @property
    def weight_shape(self) -> tuple[int, ...]:
        """Shape of the trainable weight tensor."""
        raise NotImplementedError

    def gates(self, inputs, weights) -> None:
        """Apply the template's gates (no measurements)."""
        raise NotImplementedError

    def __call__(self, inputs, weights) -> list:
        self.gates(inputs, weights)
        return [qml.expval(obs) for obs in self.observables]

    def __repr__(self) -> str:
        # Every option that differs from its default, so caches keyed on the repr tell templates apart.
        options = [
            f", {p.name}={getattr(self, p.name)!r}"
            for p in list(inspect.signature(type(self).__init__).parameters.values())[3:]
            if p.default is not p.empty and getattr(self, p.name, p.default) != p.default
        ]
        return f"{type(self).__name__}(n_qubits={self.n_qubits}, n_layers={self.n_layers}{''.join(options)})"

    def example_arguments(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Random ``(inputs, weights)`` of the right shapes, angles uniform in [0, 2pi)."""
        rng = np.random.default_rng(seed)
        inputs = rng.uniform(0, 2 * np.pi, self.n_inputs)
        weights = rng.uniform(0, 2 * np.pi, self.weight_shape)
        return inputs, weights

    def draw(self, inputs=None, weights=None, decimals: int | None = 2) -> str:
        """Text drawing of the circuit (random angles when none are given)."""
        example = self.example_arguments()
        inputs = example[0] if inputs is None else inputs
        weights = example[1] if weights is None else weights
        qnode = qml.QNode(self, qml.device("default.qubit", wires=self.n_qubits))
        return qml.draw(qnode, decimals=decimals, level="device")(inputs, weights)

    def to_qiskit(self, inputs=None, weights=None):
        """This template as a Qiskit ``QuantumCircuit`` (see ``circuits.program.to_qiskit``)."""
        from circuits.program import compile_circuit, to_qiskit

        return to_qiskit(compile_circuit(self), inputs, weights)


class StronglyEntangling(Circuit):
    """``AngleEmbedding`` of the inputs, then ``StronglyEntanglingLayers``.

    Weights: (n_layers, n_qubits, 3), the angles of one ``Rot`` per wire and layer,
    followed by a ring of CNOTs whose range grows with the layer (PennyLane's default; the
    ``Rot`` gates alone with ``entangle=False``).
    """

    name = "strongly_entangling"

    def __init__(self, n_qubits: int, n_layers: int, rotation: str = "X", measure: str = "Z", entangle: bool = True):
        super().__init__(n_qubits, n_layers, measure, entangle)
        if rotation not in ("X", "Y", "Z"):
            raise ValueError(f"rotation must be 'X', 'Y' or 'Z', got {rotation!r}")
        self.rotation = rotation

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return tuple(qml.StronglyEntanglingLayers.shape(self.n_layers, self.n_qubits))

    def gates(self, inputs, weights) -> None:
        qml.AngleEmbedding(inputs, wires=self.wires, rotation=self.rotation)
        if self.entangle:
            qml.StronglyEntanglingLayers(weights, wires=self.wires)
            return
        for layer in range(self.n_layers):  # StronglyEntanglingLayers without its CNOTs
            for w in self.wires:
                qml.Rot(*(weights[..., layer, w, k] for k in range(3)), wires=w)


class HardwareEfficient(Circuit):
    """RY encoding of the inputs, then layers of RY, RZ on every wire and a ring of entanglers.

    Weights: (n_layers, n_qubits, 2), the RY and RZ angles of each wire in each layer.
    The ring is CNOT(i, i+1 mod n) (or CZ) for every wire; a single qubit, or
    ``entangle=False``, has no ring.
    These gates run natively on IBM devices after basis translation.
    """

    name = "hardware_efficient"

    def __init__(
        self, n_qubits: int, n_layers: int, entangler: str = "CNOT", measure: str = "Z", entangle: bool = True
    ):
        super().__init__(n_qubits, n_layers, measure, entangle)
        if entangler not in ENTANGLERS:
            raise ValueError(f"entangler must be one of {sorted(ENTANGLERS)}, got {entangler!r}")
        self.entangler = entangler

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.n_layers, self.n_qubits, 2)

    def gates(self, inputs, weights) -> None:
        qml.AngleEmbedding(inputs, wires=self.wires, rotation="Y")
        for layer in range(self.n_layers):
            for w in self.wires:
                qml.RY(weights[..., layer, w, 0], wires=w)
                qml.RZ(weights[..., layer, w, 1], wires=w)
            if self.entangle:
                ring(self.wires, ENTANGLERS[self.entangler])


class DataReuploading(Circuit):
    """Inputs encoded again in every layer (Perez-Salinas et al., Quantum 4, 226, 2020).

    Each layer: RX(input_i) on wire i, a trainable ``Rot`` per wire, a ring of CZ (none
    with ``entangle=False``).
    Weights: (n_layers, n_qubits, 3). Re-encoding makes the output a Fourier series in
    the inputs with frequencies up to ``n_layers``.
    """

    name = "data_reuploading"

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.n_layers, self.n_qubits, 3)

    def gates(self, inputs, weights) -> None:
        for layer in range(self.n_layers):
            qml.AngleEmbedding(inputs, wires=self.wires, rotation="X")
            for w in self.wires:
                qml.Rot(*(weights[..., layer, w, k] for k in range(3)), wires=w)
            if self.entangle:
                ring(self.wires, qml.CZ)


def ring(wires: tuple[int, ...], gate) -> None:
    """Entangle nearest neighbours on a ring: gate(i, i+1 mod n); nothing on one wire."""
    if len(wires) == 2:
        gate(wires=wires)
        return
    if len(wires) > 2:
        for i, w in enumerate(wires):
            gate(wires=[w, wires[(i + 1) % len(wires)]])


TEMPLATES = {cls.name: cls for cls in (StronglyEntangling, HardwareEfficient, DataReuploading)}


def make_circuit(name: str, n_qubits: int, n_layers: int, measure: str = "Z", entangle: bool = True) -> Circuit:
    """Build a template by its name in ``TEMPLATES``; ``entangle=False`` drops its two-qubit gates.

    Raises:
        ValueError: the name or ``measure`` is unknown (the message lists the known ones), or
            ``entangle=False`` on a template with no two-qubit gates.
    """
    if name not in TEMPLATES:
        raise ValueError(f"unknown circuit {name!r}; choose one of: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name](n_qubits, n_layers, measure=measure, entangle=entangle)
