"""Compile a ``GateProgram`` into a simulation plan: a few wide steps instead of many gates.

The torch simulator (``hybrid.sim.statevector``) keeps a batch of N states as one (2^n, N) tensor,
basis index first and wire 0 its most significant bit, and runs the plan's steps on it:

    state_0 = kron_w v_w                      the leading one-qubit gates as a product state
    Kron      state <- (kron_w M_w) state     shared one-qubit gates on many wires, as a few
                                              block GEMMs (M_block @ state viewed (2^a, 2^k, -1))
    Diag      state[k, b] *= prod_w d_w(k_w, b)   data rotations, one elementwise pass
    Monomial  state[k] <- sign[k] * state[perm[k]] CNOT, SWAP, CZ: one gather
    Fused     state <- U @ state              a run of Kron and Monomial steps as one unitary,
                                              built by running the run on the identity
    out       = readout(|state|^2)            trailing Monomial and Diag steps fold into it

A data rotation R_P(x) = V diag(e^{-ix/2}, e^{ix/2}) V^dag is a Diag between the fixed gates
V^dag and V, which merge into the neighbouring Kron steps. Gates move back past steps on other
wires (they commute) to join the earliest step of their kind, so a layer of rotations becomes
one step and a ring of CNOTs one gather. Everything here is NumPy: no torch, no device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from circuits import GateProgram
from circuits.gates import GATES, PAULIS

_H = np.array([[1, 1], [1, -1]]) / math.sqrt(2)
_S = np.diag([1, 1j])
_FIXED = {
    "Hadamard": _H, "PauliX": np.array([[0, 1], [1, 0]]), "PauliY": np.array([[0, -1j], [1j, 0]]),
    "PauliZ": np.diag([1, -1]), "S": _S, "T": np.diag([1, np.exp(1j * math.pi / 4)]),
    "SX": np.array([[1 + 1j, 1 - 1j], [1 - 1j, 1 + 1j]]) / 2,
}  # fmt: skip
# V with P = V Z V^dag for each generator Pauli P (None: Z itself).
_EIGENBASIS = {"X": _H, "Y": _S @ _H, "Z": None}
MONOMIAL_GATES = ("CNOT", "SWAP", "CZ")


def data_rotation(name: str) -> tuple[np.ndarray | None, tuple[float, float]]:
    """A parametric gate exp(-i x G), G = P/2 + c I (``circuits.GATES``), as
    V diag(exp(i c0 x), exp(i c1 x)) V^dag: (V or None, (c0, c1)) with c0 = -(c + 1/2), c1 = 1/2 - c."""
    spec = GATES[name]
    return _EIGENBASIS[spec.pauli], (-(spec.phase + 0.5), 0.5 - spec.phase)


@dataclass(frozen=True)
class OneQubit:
    """A shared one-qubit gate: M = cos(scale * angle) A + sin(scale * angle) B + C, 2x2 complex."""

    angle: int  # index into the shared angles; -1 for a fixed gate
    scale: float
    A: np.ndarray
    B: np.ndarray
    C: np.ndarray

    @staticmethod
    def of(name: str, angle: int | None) -> OneQubit:
        zero = np.zeros((2, 2))
        spec = GATES[name]
        if not spec.parametric:
            return OneQubit.fixed(_FIXED[name])
        pauli = PAULIS[spec.pauli]
        if spec.phase == 0:  # exp(-i angle/2 P) = cos(angle/2) I - i sin(angle/2) P
            return OneQubit(angle, 0.5, np.eye(2), -1j * pauli, zero)
        if abs(spec.phase) == 0.5:  # G = sign Pi, Pi = (I + sign P)/2: keep + exp(-i sign angle) Pi
            sign = 1.0 if spec.phase > 0 else -1.0  # PhaseShift: G = -|1><1|, diag(1, exp(i angle))
            move = (np.eye(2) + sign * pauli) / 2
            return OneQubit(angle, 1.0, move, -1j * sign * move, np.eye(2) - move)
        raise ValueError(f"{name}: the simulator runs generators P/2 + c I with c in (0, +-1/2), not c={spec.phase}")

    @staticmethod
    def fixed(matrix: np.ndarray) -> OneQubit:
        zero = np.zeros((2, 2))
        return OneQubit(-1, 0.0, zero, zero, np.asarray(matrix, dtype=complex))


@dataclass
class Step:
    """One plan step. ``kind`` is "kron", "diag", "monomial" or "fused"; ``wires`` those it acts on.

    kron:     ``chains[w]`` lists ``Plan.gates`` indices applied to wire w, in time order;
              ``blocks`` the (first wire, size) blocks it is applied in.
    diag:     ``phases[w]`` lists (data angle, (c0, c1)): d_w(bit, b) = exp(i sum c_bit x_b).
    monomial: ``perm`` and ``sign`` (None where trivial); ``gates`` its gates in time order.
    fused:    ``run`` the Kron and Monomial steps that build its unitary.
    """

    kind: str
    wires: set = field(default_factory=set)
    chains: dict = field(default_factory=dict)
    blocks: tuple = ()
    phases: dict = field(default_factory=dict)
    gates: list = field(default_factory=list)
    perm: np.ndarray | None = None
    sign: np.ndarray | None = None
    run: tuple = ()


@dataclass(frozen=True, eq=False)
class Plan:
    """The steps of one program. ``steps[:prefix]`` build the product state; with a Z-basis
    readout, ``steps[tail:]`` (Monomial and Diag only) fold into it as a permutation."""

    program: GateProgram
    gates: tuple[OneQubit, ...]
    steps: tuple[Step, ...]
    prefix: int
    tail: int
    tail_perm: np.ndarray | None  # state after the tail = sign * state[tail_perm]

    @property
    def n_qubits(self) -> int:
        return self.program.n_qubits


# --- cost model ----------------------------------------------------------------------------
# Seconds per complex amplitude, a rough CPU roofline: one pass reads and writes the state
# (bandwidth), a block of k wires costs 2^k complex multiply-adds (8 flops) per amplitude at a
# GEMM rate that falls for small blocks; every torch op costs a fixed overhead (forward and
# backward). Only ratios matter: it chooses block sizes and whether fusing a run pays.
BANDWIDTH = 10e9  # bytes/s
GEMM_FLOPS = 40e9  # flop/s for blocks of 32 and more
OVERHEAD = 30e-6  # s per op
MAX_BLOCK = 6  # wires per Kron block
MAX_FUSED_QUBITS = 10  # a fused unitary holds 4^n amplitudes: 16 MiB in complex128 at 10 qubits


def step_work(kind: str, n: int, columns: float, itemsize: int, k: int = 0) -> tuple[float, float]:
    """(flops, bytes) a step must do on ``columns`` states, forward and backward together.

    Traffic counts compulsory passes over the (2^n, N) state: a GEMM block reads and writes it
    forward, then reads the gradient and writes the input gradient, and reads both again for
    the block's own gradient (6 passes; 3 GEMMs of 8 * 2^k flops per amplitude); a gather or
    an elementwise product reads and writes it each way (4 passes, 6 for a Diag, whose phase
    table is a second operand); building the product state writes it and reads its gradient.
    """
    amplitudes = 2.0**n * columns
    state = amplitudes * itemsize
    if kind in ("kron", "fused"):
        return 3 * 8 * 2**k * amplitudes, 6 * state
    if kind == "product":
        return 0.0, 2 * state
    if kind == "diag":
        return 6 * amplitudes, 6 * state
    return 0.0, 4 * state  # monomial, or the |psi|^2 of the readout


def block_seconds(k: int, amplitudes: float, itemsize: int) -> float:
    """Cost-model seconds of applying one 2^k x 2^k block to ``amplitudes`` complex numbers."""
    flops, traffic = step_work("kron", 0, amplitudes, itemsize, k)
    rate = GEMM_FLOPS * min(1.0, 2**k / 32)
    return OVERHEAD + max(flops / rate, traffic / BANDWIDTH)


def choose_blocks(touched: set, n: int, amplitudes: float, itemsize: int) -> tuple:
    """Contiguous wire blocks covering ``touched`` with the least ``block_seconds`` (a DP)."""
    best = [0.0] + [math.inf] * n  # best[i]: cost of covering touched wires below i
    choice: list = [None] * (n + 1)
    for i in range(1, n + 1):
        if (i - 1) not in touched and best[i - 1] < best[i]:
            best[i], choice[i] = best[i - 1], None  # wire i-1 left alone
        for k in range(1, min(MAX_BLOCK, i) + 1):
            cost = best[i - k] + block_seconds(k, amplitudes, itemsize)
            if cost < best[i]:
                best[i], choice[i] = cost, k
    blocks, i = [], n
    while i > 0:
        k = choice[i]
        if k is None:
            i -= 1
        else:
            blocks.append((i - k, k))
            i -= k
    return tuple(reversed(blocks))


def step_seconds(step: Step, n: int, columns: float, itemsize: int) -> float:
    """Cost-model seconds of one step on ``columns`` states (forward and backward)."""
    amplitudes = 2.0**n * columns
    if step.kind == "kron":
        return sum(block_seconds(k, amplitudes, itemsize) for _, k in step.blocks)
    if step.kind == "fused":
        return block_seconds(n, amplitudes, itemsize)
    _, traffic = step_work(step.kind, n, columns, itemsize)
    return OVERHEAD + traffic / BANDWIDTH


def plan_work(plan: Plan, columns: int, itemsize: int, z_basis: bool = True) -> list[tuple[str, float, float]]:
    """[(label, flops, bytes)] of every pass ``simulate`` makes over the state, forward and
    backward, for a roofline: time >= sum of max(flops / GEMM rate, bytes / bandwidth)."""
    n = plan.n_qubits
    work = [("product", *step_work("product", n, columns, itemsize))]
    stop = plan.tail if z_basis else len(plan.steps)
    for step in plan.steps[plan.prefix : stop]:
        if step.kind == "kron":
            work += [(f"kron{k}", *step_work("kron", n, columns, itemsize, k)) for _, k in step.blocks]
        elif step.kind == "fused":
            build = [w for s in step.run for w in plan_work_step(s, n, 2**n, itemsize)]
            work += build + [(f"fused{n}", *step_work("fused", n, columns, itemsize, n))]
        else:
            work.append((step.kind, *step_work(step.kind, n, columns, itemsize)))
    work.append(("readout", *step_work("readout", n, columns, itemsize)))
    return work


def plan_work_step(step: Step, n: int, columns: float, itemsize: int) -> list[tuple[str, float, float]]:
    if step.kind == "kron":
        return [(f"kron{k}", *step_work("kron", n, columns, itemsize, k)) for _, k in step.blocks]
    return [(step.kind, *step_work(step.kind, n, columns, itemsize))]


# --- compilation ---------------------------------------------------------------------------


@lru_cache(maxsize=64)
def compile_plan(program: GateProgram, columns: int = 1, itemsize: int = 8) -> Plan:
    """The plan of ``program`` for batches of about ``columns`` states of ``itemsize``-byte
    amplitudes: the cost model picks Kron block sizes and which runs of shared steps to fuse."""
    n, data = program.n_qubits, program.data_angles
    gates: list[OneQubit] = []
    steps: list[Step] = []
    for gate in program.gates:
        if gate.name in MONOMIAL_GATES:
            _place(steps, "monomial", set(gate.wires)).gates.append(gate)
            continue
        (w,) = gate.wires
        if gate.angle is None or not data[gate.angle]:
            _add_one_qubit(steps, gates, w, OneQubit.of(gate.name, gate.angle))
            continue
        basis, coefficients = data_rotation(gate.name)
        if basis is not None:
            _add_one_qubit(steps, gates, w, OneQubit.fixed(basis.conj().T))
        _place(steps, "diag", {w}).phases.setdefault(w, []).append((gate.angle, coefficients))
        if basis is not None:
            _add_one_qubit(steps, gates, w, OneQubit.fixed(basis))

    prefix = 0
    while prefix < len(steps) and steps[prefix].kind in ("kron", "diag"):
        prefix += 1
    tail = len(steps)
    while tail > prefix and steps[tail - 1].kind in ("monomial", "diag"):
        tail -= 1
    for step in steps:
        if step.kind == "kron":
            step.blocks = choose_blocks(set(step.chains), n, 2.0**n * columns, itemsize)
        if step.kind == "monomial":
            step.perm, step.sign = _monomial(step.gates, n)
    tail_perm = np.arange(2**n)
    for step in steps[tail:]:
        if step.kind == "monomial" and step.perm is not None:
            tail_perm = tail_perm[step.perm]
    middle = _fuse(steps[prefix:tail], n, columns, itemsize)
    steps = steps[:prefix] + middle + steps[tail:]
    tail = prefix + len(middle)
    return Plan(program, tuple(gates), tuple(steps), prefix, tail, tail_perm)


def _place(steps: list[Step], kind: str, wires: set) -> Step:
    """The step of ``kind`` a gate on ``wires`` joins: the earliest one it can move back to past
    steps on other wires, or the last step touching its wires if of that kind; else a new one."""
    target = None
    for step in reversed(steps):
        if step.wires & wires:
            if step.kind == kind:
                target = step
            break
        if step.kind == kind:
            target = step
    if target is None:
        target = Step(kind)
        steps.append(target)
    target.wires |= wires
    return target


def _add_one_qubit(steps: list[Step], gates: list[OneQubit], wire: int, gate: OneQubit) -> None:
    gates.append(gate)
    _place(steps, "kron", {wire}).chains.setdefault(wire, []).append(len(gates) - 1)


def _monomial(gates, n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Compose CNOT, SWAP and CZ gates: state after = sign * state[perm] (None where trivial)."""
    index = np.arange(2**n)
    bits = lambda w: (index >> (n - 1 - w)) & 1  # noqa: E731
    perm, sign = index.copy(), np.ones(2**n)
    for gate in gates:
        if gate.name == "CZ":
            sign = sign * (1 - 2 * (bits(gate.wires[0]) & bits(gate.wires[1])))
            continue
        if gate.name == "CNOT":
            c, t = gate.wires
            source = index ^ (bits(c) << (n - 1 - t))
        else:  # SWAP: exchange the two bits
            a, b = gate.wires
            differ = bits(a) ^ bits(b)
            source = index ^ (differ << (n - 1 - a)) ^ (differ << (n - 1 - b))
        perm, sign = perm[source], sign[source]
    trivial_perm = bool(np.all(perm == index))
    return (None if trivial_perm else perm), (None if np.all(sign == 1) else sign)


def _fuse(steps: list[Step], n: int, columns: int, itemsize: int) -> list[Step]:
    """Replace maximal runs of Kron and Monomial steps by Fused ones where cheaper: a fused run
    costs the run itself on 2^n identity columns (to build U) plus one 2^n-block GEMM."""
    out: list[Step] = []
    run: list[Step] = []
    for step in [*steps, Step("end")]:
        if step.kind in ("kron", "monomial"):
            run.append(step)
            continue
        separate = sum(step_seconds(s, n, columns, itemsize) for s in run)
        build = sum(step_seconds(s, n, 2**n, itemsize) for s in run)
        fused = Step("fused", set().union(*(s.wires for s in run)) if run else set(), run=tuple(run))
        if len(run) > 1 and n <= MAX_FUSED_QUBITS and build + step_seconds(fused, n, columns, itemsize) < separate:
            out.append(fused)
        else:
            out.extend(run)
        run = []
        if step.kind != "end":
            out.append(step)
    return out
