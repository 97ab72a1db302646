"""Batched statevector simulation of a ``circuits.GateProgram`` in torch, differentiable by autograd.

One call runs N circuits that share their weights and differ in their inputs:

    psi_0  = product state of the leading data-encoding rotations     # (N, 2^n), no matrix work
    psi   <- psi @ U_k^T   for each run of data-independent gates     # U_k: (2^n, 2^n), built once
    psi   <- gate(psi)     for each data-dependent gate               # one sweep, per-row angles
    out    = |psi|^2 @ E   for diagonal observables                   # E: (2^n, n_outputs) eigenvalues

Wire 0 is the most significant bit of the basis index, as in PennyLane. The complex dtype
follows the real dtype of the weights (float32 -> complex64, float64 -> complex128).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from circuits import GateProgram

# Runs of data-independent gates are fused into one unitary up to this many qubits: building
# U costs 2^n * 2^n per gate, applying it N * 4^n; past this size gate-by-gate sweeps win.
FUSE_MAX_QUBITS = 10

COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def simulate(program: GateProgram, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Expectation values of ``program`` for a batch of inputs.

    Args:
        program: the compiled circuit.
        inputs: (N, n_inputs) real angles in radians.
        weights: ``program.weight_shape`` real angles in radians.

    Returns:
        (N, n_outputs) expectation values, real, in the dtype of ``weights``.
    """
    tables = _tables(program, weights.device, weights.dtype)
    return _expectations(final_state(program, inputs, weights), tables)


def final_state(program: GateProgram, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The state each input prepares, before measurement: (N, 2^n) complex, wire 0 = MSB.

    Same arguments as ``simulate``; differentiable with respect to inputs and weights.
    """
    n, N = program.n_qubits, inputs.shape[0]
    cdtype = COMPLEX[weights.dtype]
    tables = _tables(program, weights.device, weights.dtype)
    inputs = inputs.to(weights.dtype)
    # Angles: shared ones depend only on the weights, data ones vary by row.
    shared = tables.weight_coeffs @ weights.reshape(-1) + tables.offsets  # (n_angles,)
    data = inputs @ tables.input_coeffs.T + shared  # (N, n_angles)

    gates = list(program.gates)
    data_angle = program.data_angles
    state, start = _product_state(gates, data, data_angle, n, N, cdtype)
    i = start
    while i < len(gates):
        gate = gates[i]
        if gate.angle is not None and data_angle[gate.angle]:
            state = _apply(state, gate, data[:, gate.angle], n)  # per-row angle, (N,)
            i += 1
            continue
        j = i  # gates[i:j] is a run of data-independent gates
        while j < len(gates) and not (gates[j].angle is not None and data_angle[gates[j].angle]):
            j += 1
        run = gates[i:j]
        if n <= FUSE_MAX_QUBITS and len(run) > 1:
            unitary_t = _identity(n, weights.device, cdtype)  # rows become U^T e_k = (U e_k)^T
            for g in run:
                unitary_t = _apply(unitary_t, g, _angle(shared, g), n)
            state = state @ unitary_t  # (N, 2^n)
        else:
            for g in run:
                state = _apply(state, g, _angle(shared, g), n)
        i = j
    return state


def _angle(shared: torch.Tensor, gate) -> torch.Tensor | None:
    return None if gate.angle is None else shared[gate.angle]


def _product_state(gates, data, data_angle, n, N, cdtype):
    """Start state after the leading data rotations on distinct wires (as a product state).

    Returns (state (N, 2^n), index of the first gate not yet applied).
    """
    columns = {}  # wire -> (N, 2) first column of its rotation, i.e. the rotated |0>
    i = 0
    while i < len(gates):
        g = gates[i]
        if g.angle is None or not data_angle[g.angle] or len(g.wires) != 1 or g.wires[0] in columns:
            break
        (m00, _), (m10, _) = _one_qubit(g.name, data[:, g.angle], cdtype)
        column = [torch.as_tensor(m, dtype=cdtype, device=data.device).expand(N) for m in (m00, m10)]
        columns[g.wires[0]] = torch.stack(column, dim=-1)  # (N, 2)
        i += 1
    device = data.device
    zero = torch.zeros(N, 2, dtype=cdtype, device=device)
    zero[:, 0] = 1
    state = torch.ones(N, 1, dtype=cdtype, device=device)
    for w in range(n):
        col = columns.get(w, zero)  # (N, 2)
        state = (state[:, :, None] * col[:, None, :]).reshape(N, -1)  # (N, 2^(w+1))
    return state, i


@lru_cache(maxsize=16)
def _identity(n: int, device, cdtype) -> torch.Tensor:
    return torch.eye(2**n, dtype=cdtype, device=device)


def _apply(state: torch.Tensor, gate, angle: torch.Tensor | None, n: int) -> torch.Tensor:
    """Apply one gate to every row of ``state`` (R, 2^n); ``angle`` is a scalar or (R,)."""
    name, wires = gate.name, gate.wires
    R = state.shape[0]
    if name in _PERMUTATIONS:
        return state[:, _permutation(name, wires, n, state.device)]
    if name == "CZ":
        return state * _cz_signs(wires, n, state.device, state.dtype)
    (m00, m01), (m10, m11) = _one_qubit(name, angle, state.dtype)
    w = wires[0]
    v = state.view(R, 2**w, 2, 2 ** (n - w - 1))  # (R, left, 2, right)
    if angle is not None and angle.dim() == 1:
        m00, m01, m10, m11 = (m.view(R, 1, 1) if torch.is_tensor(m) else m for m in (m00, m01, m10, m11))
    a, b = v[:, :, 0, :], v[:, :, 1, :]
    if name in _DIAGONAL:
        return torch.stack((m00 * a, m11 * b), dim=2).view(R, -1)
    return torch.stack((m00 * a + m01 * b, m10 * a + m11 * b), dim=2).view(R, -1)


_DIAGONAL = ("RZ", "PhaseShift", "PauliZ", "S", "T")
_PERMUTATIONS = ("PauliX", "CNOT", "SWAP")
_SQRT_HALF = 1 / math.sqrt(2)
_FIXED = {  # name -> ((m00, m01), (m10, m11))
    "Hadamard": ((_SQRT_HALF, _SQRT_HALF), (_SQRT_HALF, -_SQRT_HALF)),
    "PauliY": ((0, -1j), (1j, 0)),
    "PauliZ": ((1, 0), (0, -1)),
    "S": ((1, 0), (0, 1j)),
    "T": ((1, 0), (0, complex(math.cos(math.pi / 4), math.sin(math.pi / 4)))),
    "SX": ((0.5 + 0.5j, 0.5 - 0.5j), (0.5 - 0.5j, 0.5 + 0.5j)),
}


def _one_qubit(name: str, angle, cdtype):
    """2x2 matrix of a one-qubit gate as nested pairs of scalars or (R,) tensors."""
    if name in _FIXED:
        return _FIXED[name]
    half = angle / 2
    c, s = torch.cos(half).to(cdtype), torch.sin(half).to(cdtype)
    if name == "RX":
        return (c, -1j * s), (-1j * s, c)
    if name == "RY":
        return (c, -s), (s, c)
    if name == "RZ":
        return (c - 1j * s, 0), (0, c + 1j * s)
    if name == "PhaseShift":
        return (1, 0), (0, torch.polar(torch.ones_like(angle), angle).to(cdtype))
    raise ValueError(f"gate {name} is not simulated here")


@lru_cache(maxsize=256)
def _permutation(name: str, wires: tuple[int, ...], n: int, device) -> torch.Tensor:
    """Index p with new_state = state[:, p] for a basis permutation gate."""
    bits = np.arange(2**n)[:, None] >> (n - 1 - np.arange(n)) & 1  # (2^n, n), wire 0 = MSB
    if name == "PauliX":
        bits[:, wires[0]] ^= 1
    elif name == "CNOT":
        bits[:, wires[1]] ^= bits[:, wires[0]]
    elif name == "SWAP":
        bits[:, list(wires)] = bits[:, list(wires[::-1])]
    index = bits @ (1 << (n - 1 - np.arange(n)))
    return torch.as_tensor(index, device=device)


@lru_cache(maxsize=256)
def _cz_signs(wires: tuple[int, ...], n: int, device, cdtype) -> torch.Tensor:
    bits = np.arange(2**n)[:, None] >> (n - 1 - np.array(wires)) & 1  # (2^n, 2)
    return torch.as_tensor(1.0 - 2.0 * (bits[:, 0] & bits[:, 1]), device=device).to(cdtype)


def _expectations(state: torch.Tensor, tables) -> torch.Tensor:
    """(N, n_outputs) = sum over Pauli words of coeff * <psi| word |psi>."""
    out = None
    for rotation, eigvals in tables.measurements:  # one entry per measurement basis
        rotated = state
        for gate in rotation:
            rotated = _apply(rotated, gate, None, tables.n_qubits)
        probs = rotated.real**2 + rotated.imag**2  # (N, 2^n)
        term = probs @ eigvals  # (N, n_outputs)
        out = term if out is None else out + term
    return out


class _Tables:
    """Tensors derived from a program once per (device, dtype)."""

    def __init__(self, program: GateProgram, device, dtype):
        def t(a):
            return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

        self.n_qubits = program.n_qubits
        self.input_coeffs = t(program.input_coeffs)
        self.weight_coeffs = t(program.weight_coeffs)
        self.offsets = t(program.offsets)
        self.measurements = [(rot, t(eig)) for rot, eig in _measurement_bases(program)]


@lru_cache(maxsize=64)
def _tables(program: GateProgram, device, dtype) -> _Tables:
    return _Tables(program, device, dtype)


def _measurement_bases(program: GateProgram):
    """Group Pauli words by the basis they are diagonal in.

    Returns a list of (rotation gates, eigenvalue matrix (2^n, n_outputs)): rotating the state
    by the gates makes every word of that group diagonal, with the given eigenvalues.
    """
    from circuits import Gate

    n = program.n_qubits
    bits = np.arange(2**n)[:, None] >> (n - 1 - np.arange(n)) & 1  # (2^n, n)
    signs = 1 - 2 * bits  # Z eigenvalue of each wire in each basis state
    groups: dict[tuple, np.ndarray] = {}
    for k, terms in enumerate(program.observables):
        for word, coeff in terms.items():
            basis = tuple((w, p) for w, p in word if p != "Z")  # X or Y wires need a rotation
            eig = groups.setdefault(basis, np.zeros((2**n, len(program.observables))))
            eig[:, k] += coeff * np.prod(signs[:, [w for w, _ in word]], axis=1)
    bases = []
    for basis, eig in groups.items():
        rotation = []
        for w, p in basis:  # X = H Z H;  Y = (H S^dag)^dag Z (H S^dag)
            if p == "Y":
                rotation += [Gate("PauliZ", (w,)), Gate("S", (w,))]  # S^dag = Z S
            rotation.append(Gate("Hadamard", (w,)))
        bases.append((tuple(rotation), eig))
    return bases


def state_bytes(n_qubits: int, batch: int, dtype: torch.dtype) -> int:
    """Bytes of one batch of statevectors: batch * 2^n complex numbers."""
    itemsize = torch.empty((), dtype=COMPLEX.get(dtype, dtype)).element_size()
    return batch * 2**n_qubits * itemsize


def estimate_bytes(program: GateProgram, batch: int, dtype: torch.dtype) -> int:
    """Peak memory of one forward and backward pass, in bytes (an estimate, about +-2x).

    Autograd keeps one batch of states per data-dependent gate and per fused run, plus the
    fused unitaries and their build-up (one 4^n matrix per gate in the run).
    """
    data = program.data_angles
    kept = 3 + sum(1 for g in program.gates if g.angle is not None and data[g.angle])
    runs = sum(1 for g in program.gates if g.angle is None or not data[g.angle])
    fused = state_bytes(2 * program.n_qubits, 1, dtype) * runs if program.n_qubits <= FUSE_MAX_QUBITS else 0
    return kept * state_bytes(program.n_qubits, batch, dtype) + fused


def available_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: CUDA's free memory, or the OS's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
