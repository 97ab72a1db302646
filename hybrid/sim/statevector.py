"""Batched statevector simulation of a ``circuits.GateProgram`` in torch, differentiable by autograd.

One call runs N circuits that share their weights and differ in their inputs. The batch is
one (2^n, N) tensor, basis index first (wire 0 = most significant bit) and batch last, so a
permutation moves whole rows and a block of wires is one GEMM. ``hybrid.sim.plan`` turns the gates
into a few wide steps; this module runs them:

    v_w    = leading one-qubit gates on |0>, per wire          # (n, 2, N), tiny
    psi_0  = kron_w v_w                                         # (2^n, N), one write
    psi   <- M_block @ psi  |  psi * d  |  sign * psi[perm]  |  U @ psi    per step
    out    = E'^T |psi|^2   or   rows of the Walsh-Hadamard transform of |psi|^2

Plain torch ops throughout: reverse and forward mode autograd work, on CPU and CUDA (every
table lives on the weights' device). The complex dtype follows the real dtype of the weights
(float32 -> complex64, float64 -> complex128); half-precision weights (float16, bfloat16, as in
a model cast with ``.half()`` or ``.to(torch.bfloat16)``) simulate in float32 and complex64, since
an 8-bit mantissa cannot hold a unit-norm state through many gates.
"""

from __future__ import annotations

import os
from functools import lru_cache

import numpy as np
import torch

from circuits import GateProgram
from hybrid.sim.plan import OneQubit, Plan, choose_blocks, compile_plan

# the weights' dtype -> the real and complex dtypes the simulation runs in
REAL = {torch.float16: torch.float32, torch.bfloat16: torch.float32, torch.float32: torch.float32,
        torch.float64: torch.float64}  # fmt: skip
COMPLEX = {torch.float16: torch.complex64, torch.bfloat16: torch.complex64, torch.float32: torch.complex64,
           torch.float64: torch.complex128}  # fmt: skip
_H = np.array([[1.0, 1.0], [1.0, -1.0]])  # unnormalized: the Walsh-Hadamard butterfly
_BASIS_CHANGE = {"X": np.array([[1, 1], [1, -1]]) / np.sqrt(2), "Y": np.array([[1, -1j], [1, 1j]]) / np.sqrt(2)}


def simulate(program: GateProgram, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Expectation values of ``program`` for a batch of inputs.

    Args:
        program: the compiled circuit.
        inputs: (N, n_inputs) real angles in radians.
        weights: ``program.weight_shape`` real angles in radians.

    Returns:
        (N, n_outputs) expectation values, real, in ``REAL[weights.dtype]`` (float32 for half weights).
    """
    weights = weights.to(REAL[weights.dtype])
    plan, tables = _prepare(program, inputs.shape[0], weights)
    if tables.z_basis:  # the trailing permutation and phases fold into the readout
        return _z_readout(_run(plan, tables, inputs, weights, stop=plan.tail), tables)
    state = _run(plan, tables, inputs, weights, stop=len(plan.steps))
    out = 0
    for blocks, eigvals in tables.bases:  # one basis change per group of Pauli words
        rotated = _apply_blocks(state, blocks, plan.n_qubits)
        out = out + _probabilities(rotated).T @ eigvals  # (N, n_outputs)
    return out


def final_state(program: GateProgram, inputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The state each input prepares, before measurement: (N, 2^n) complex, wire 0 = MSB.

    Same arguments as ``simulate``; differentiable with respect to inputs and weights.
    """
    weights = weights.to(REAL[weights.dtype])
    plan, tables = _prepare(program, inputs.shape[0], weights)
    state = _run(plan, tables, inputs, weights, stop=len(plan.steps))  # (2^n, N)
    return state.T.contiguous()  # (N, 2^n)


def _prepare(program: GateProgram, batch: int, weights: torch.Tensor):
    cdtype = COMPLEX[weights.dtype]
    itemsize = torch.empty((), dtype=cdtype).element_size()
    columns = 1 << max(0, int(batch) - 1).bit_length()  # plans differ by powers of two only
    plan = compile_plan(program, columns, itemsize)
    return plan, _tables(plan, weights.device, weights.dtype)


def _run(plan: Plan, t, inputs: torch.Tensor, weights: torch.Tensor, stop: int) -> torch.Tensor:
    """The state (2^n, N) after ``plan.steps[:stop]``."""
    n, N = plan.n_qubits, inputs.shape[0]
    shared = t.weight_coeffs @ weights.reshape(-1).to(t.dtype) + t.offsets  # (n_angles,)
    data = inputs.to(t.dtype) @ t.input_coeffs.T + shared[t.data_index]  # (N, n_data)
    shared = torch.cat([shared, shared.new_zeros(1)])  # index -1: fixed gates and padding
    theta = shared[t.gate_angle] * t.gate_scale  # (G,)
    gates = theta.cos().to(t.cdtype)[:, None, None] * t.A + theta.sin().to(t.cdtype)[:, None, None] * t.B + t.C
    mats = None
    if t.chains.shape[0]:  # per Kron step and wire, the product of its gates in time order
        chain = gates[t.chains]  # (depth, n_kron * n, 2, 2)
        mats = chain[0]
        for g in chain[1:]:
            mats = g @ mats
        mats = mats.view(-1, n, 2, 2)  # (n_kron, n, 2, 2)
    phases = None
    if t.diag_index.shape[0]:  # d_w(bit, b) = exp(i sum_j c_j x_j(b)) per Diag step and wire
        x = data.T[t.diag_index]  # (n_diag, n, J, N)
        angle = (t.diag_coef[..., None] * x[:, :, :, None]).sum(2)  # (n_diag, n, 2, N)
        phases = torch.complex(angle.cos(), angle.sin())

    # Product state from the leading one-qubit steps, then one kron over the wires.
    v = t.zero  # (n, 2, 1), |0> on every wire
    kron_i = diag_i = 0
    for step in plan.steps[: plan.prefix]:
        if step.kind == "kron":
            v, kron_i = mats[kron_i] @ v, kron_i + 1
        else:
            v, diag_i = phases[diag_i] * v, diag_i + 1  # (n, 2, N)
    state = _kron_columns(v).expand(2**n, N)  # (2^n, N)

    for step in plan.steps[plan.prefix : stop]:
        if step.kind == "kron":
            state, kron_i = _apply_blocks(state, _block_matrices(mats[kron_i], step.blocks), n), kron_i + 1
        elif step.kind == "diag":
            state, diag_i = state * _kron_columns(phases[diag_i]), diag_i + 1
        elif step.kind == "monomial":
            state = _apply_monomial(state, t, step)
        else:  # fused: U's columns are the run applied to the identity
            unitary = t.identity
            for inner in step.run:
                if inner.kind == "kron":
                    unitary = _apply_blocks(unitary, _block_matrices(mats[kron_i], inner.blocks), n)
                    kron_i += 1
                else:
                    unitary = _apply_monomial(unitary, t, inner)
            state = unitary @ state
    return state


def _kron_columns(v: torch.Tensor) -> torch.Tensor:
    """Column-wise Kronecker product over wires: (n, 2, N) -> (2^n, N), wire 0 most significant."""
    n = v.shape[0]
    halves = []
    for wires in (range(n // 2), range(n // 2, n)):  # two halves meet in one last product
        part = None
        for w in wires:
            part = v[w] if part is None else (part[:, None, :] * v[w][None, :, :]).flatten(0, 1)
        halves.append(part)
    left, right = halves
    if left is None:
        return right
    return (left[:, None, :] * right[None, :, :]).flatten(0, 1)  # (2^h, 2^(n-h), N) -> (2^n, N)


def _block_matrices(mats: torch.Tensor, blocks) -> list:
    """[(first wire, kron of the block's 2x2 matrices (2^k, 2^k))] for one Kron step."""
    out = []
    for first, k in blocks:
        m = mats[first]
        for w in range(first + 1, first + k):
            m = (m[:, None, :, None] * mats[w][None, :, None, :]).flatten(2, 3).flatten(0, 1)
        out.append((first, m))
    return out


def _apply_blocks(state: torch.Tensor, blocks, n: int) -> torch.Tensor:
    """Apply block matrices [(first wire, (2^k, 2^k))] to the state (2^n, N) or (2^n, N) real."""
    shape = state.shape
    for first, m in blocks:
        k = m.shape[0].bit_length() - 1
        if first == 0:  # one plain GEMM
            state = m @ state.reshape(2**k, -1)  # (2^k, 2^rest * N)
        else:  # bmm on an expanded view: matmul would transpose (copy) the state to fold it
            state = torch.bmm(m.expand(2**first, 2**k, 2**k), state.reshape(2**first, 2**k, -1))
    return state.reshape(shape)


def _apply_monomial(state: torch.Tensor, t, step) -> torch.Tensor:
    perm, inverse, sign = t.monomials[id(step)]
    if perm is not None:
        state = _Permute.apply(state, perm, inverse)
    if sign is not None:
        state = state * sign[:, None]
    return state


class _Permute(torch.autograd.Function):
    """Rows ``state[perm]``; the backward gathers with the inverse permutation instead of
    scattering (``index_select``'s backward is an ``index_add``, several times slower)."""

    generate_vmap_rule = True  # torch.func.jacfwd / vmap (the pullback metric's forward-mode Jacobian)

    @staticmethod
    def forward(state, perm, inverse):
        return state.index_select(0, perm)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.perm, ctx.inverse = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx, grad):
        return grad.index_select(0, ctx.inverse), None, None

    @staticmethod
    def jvp(ctx, tangent, _perm, _inverse):
        return tangent.index_select(0, ctx.perm)


class _Probabilities(torch.autograd.Function):
    """|state|^2 elementwise, (2^n, N) complex -> real. One pass each way: autograd through
    ``real``/``imag`` views would allocate and fill complex zeros for every partial gradient.

    Backward (PyTorch's convention for real losses of complex z): dL/dz = 2 g z.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(state):
        return state.real.square() + state.imag.square()

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        (state,) = ctx.saved_tensors
        # a real multiply on (re, im) pairs: complex * real would promote grad to complex first
        return torch.view_as_complex(torch.view_as_real(state) * (2 * grad)[..., None])

    @staticmethod
    def jvp(ctx, tangent):
        (state,) = ctx.saved_tensors
        return 2 * (state.conj() * tangent).real


def _probabilities(state: torch.Tensor) -> torch.Tensor:
    """|state|^2 elementwise: (2^n, N) complex -> (2^n, N) real."""
    return _Probabilities.apply(state)


def _z_readout(state: torch.Tensor, t) -> torch.Tensor:
    """(N, n_outputs) Z-string expectations of the state before the folded tail."""
    probs = _probabilities(state)  # (2^n, N)
    if t.walsh_rows is None:
        return probs.T @ t.eigvals  # (N, 2^n) @ (2^n, n_outputs)
    # Every output is one Walsh-Hadamard coefficient: transform with the two half-register
    # blocks, then pick rows (2^n x 2^(n/2) work instead of the 2^n x n_outputs matrix).
    walsh = _apply_blocks(probs, t.walsh_blocks, t.n_qubits)  # (2^n, N)
    return (walsh.index_select(0, t.walsh_rows) * t.walsh_coef[:, None]).T  # (N, n_outputs)


class _Tables:
    """Everything a plan needs on one device in one dtype, built once."""

    def __init__(self, plan: Plan, device, dtype):
        program, n = plan.program, plan.n_qubits
        self.n_qubits, self.dtype, self.cdtype = n, dtype, COMPLEX[dtype]

        def real(a):
            return torch.as_tensor(np.asarray(a, dtype=float), dtype=dtype, device=device)

        def cplx(a):
            return torch.as_tensor(np.asarray(a, dtype=complex), dtype=self.cdtype, device=device)

        def index(a):
            return torch.as_tensor(np.asarray(a, dtype=np.int64), device=device)

        self.data_index = index(np.flatnonzero(program.data_angles))
        position = {int(a): i for i, a in enumerate(np.flatnonzero(program.data_angles))}
        self.input_coeffs = real(program.input_coeffs[program.data_angles])
        self.weight_coeffs = real(program.weight_coeffs)
        self.offsets = real(program.offsets)
        gates = [*plan.gates, OneQubit.fixed(np.eye(2))]  # the last one pads chains
        self.gate_angle = index([g.angle for g in gates])
        self.gate_scale = real([g.scale for g in gates])
        self.A, self.B, self.C = (cplx(np.stack([getattr(g, m) for g in gates])) for m in "ABC")
        krons = [s for s in _all_steps(plan) if s.kind == "kron"]
        depth = max([len(c) for s in krons for c in s.chains.values()] + [0])
        chains = np.full((depth, len(krons) * n), len(gates) - 1)
        for i, s in enumerate(krons):
            for w, chain in s.chains.items():
                chains[: len(chain), i * n + w] = chain
        self.chains = index(chains)
        diags = [s for s in plan.steps if s.kind == "diag"]
        width = max([len(p) for s in diags for p in s.phases.values()] + [0])
        diag_index, diag_coef = np.zeros((len(diags), n, width)), np.zeros((len(diags), n, width, 2))
        for i, s in enumerate(diags):
            for w, terms in s.phases.items():
                for j, (angle, coef) in enumerate(terms):
                    diag_index[i, w, j], diag_coef[i, w, j] = position[angle], coef
        self.diag_index, self.diag_coef = index(diag_index), real(diag_coef)
        self.zero = cplx(np.tile([[1.0], [0.0]], (n, 1, 1)))  # (n, 2, 1)
        self.monomials = {
            id(s): (
                *((None, None) if s.perm is None else (index(s.perm), index(np.argsort(s.perm)))),
                None if s.sign is None else cplx(s.sign),
            )
            for s in _all_steps(plan)
            if s.kind == "monomial"
        }
        fused = any(s.kind == "fused" for s in plan.steps)
        self.identity = torch.eye(2**n, dtype=self.cdtype, device=device) if fused else None
        self._readout(plan, real, cplx, index)

    def _readout(self, plan: Plan, real, cplx, index) -> None:
        n = plan.n_qubits
        bases = _measurement_bases(plan.program)
        self.z_basis = len(bases) == 1 and not bases[0][0]
        self.walsh_rows = None
        if not self.z_basis:
            self.bases = []
            for basis, eig in bases:
                mats = np.tile(np.eye(2, dtype=complex), (n, 1, 1))
                for w, p in basis:
                    mats[w] = _BASIS_CHANGE[p]
                blocks = choose_blocks({w for w, _ in basis}, n, 2.0**n, 16)
                self.bases.append((_block_matrices(cplx(mats), blocks), real(eig)))
            return
        # out = sum_k probs_after_tail[k] E[k] = sum_j probs[j] E[tail_perm^-1[j]]
        inverse = np.argsort(plan.tail_perm)
        eig = bases[0][1][inverse]  # (2^n, n_outputs)
        self.eigvals = real(eig)
        if eig.shape[1] > 4 * 2 ** ((n + 1) // 2):  # many outputs: try the Walsh-Hadamard route
            coef = _walsh(eig) / 2**n  # eig = W @ coef with W_jk = (-1)^popcount(j & k)
            nonzero = np.abs(coef) > 1e-12
            if np.all(nonzero.sum(axis=0) == 1):
                rows = np.argmax(nonzero, axis=0)
                self.walsh_rows = index(rows)
                self.walsh_coef = real(coef[rows, np.arange(len(rows))])
                h = n // 2
                mats = real(np.tile(_H, (n, 1, 1)))
                self.walsh_blocks = _block_matrices(mats, [(0, h), (h, n - h)] if h else [(0, n)])


def _all_steps(plan: Plan):
    for step in plan.steps:
        yield from step.run if step.kind == "fused" else (step,)


def _walsh(a: np.ndarray) -> np.ndarray:
    """Unnormalized Walsh-Hadamard transform along axis 0 of a (2^n, m) array."""
    a = np.array(a, dtype=float)
    size = a.shape[0]
    h = 1
    while h < size:
        v = a.reshape(-1, 2, h, a.shape[1])
        a = np.stack([v[:, 0] + v[:, 1], v[:, 0] - v[:, 1]], axis=1).reshape(size, -1)
        h *= 2
    return a


@lru_cache(maxsize=64)
def _tables(plan: Plan, device, dtype) -> _Tables:
    return _Tables(plan, device, dtype)


def _measurement_bases(program: GateProgram):
    """Group Pauli words by the basis they are diagonal in.

    Returns a list of (((wire, "X"|"Y"), ...), eigenvalues (2^n, n_outputs)): changing the
    basis of those wires makes every word of the group diagonal, with the given eigenvalues.
    """
    n = program.n_qubits
    bits = np.arange(2**n)[:, None] >> (n - 1 - np.arange(n)) & 1  # (2^n, n)
    signs = 1 - 2 * bits  # Z eigenvalue of each wire in each basis state
    groups: dict[tuple, np.ndarray] = {}
    for k, terms in enumerate(program.observables):
        for word, coeff in terms.items():
            basis = tuple((w, p) for w, p in word if p != "Z")  # X or Y wires need a basis change
            eig = groups.setdefault(basis, np.zeros((2**n, len(program.observables))))
            eig[:, k] += coeff * np.prod(signs[:, [w for w, _ in word]], axis=1)
    return list(groups.items()) or [((), np.zeros((2**n, len(program.observables))))]


def state_bytes(n_qubits: int, batch: int, dtype: torch.dtype) -> int:
    """Bytes of one batch of statevectors: batch * 2^n complex numbers."""
    itemsize = torch.empty((), dtype=COMPLEX.get(dtype, dtype)).element_size()
    return batch * 2**n_qubits * itemsize


def estimate_bytes(program: GateProgram, batch: int, dtype: torch.dtype) -> int:
    """Peak memory of one forward and backward pass of ``simulate``, in bytes (within about 30%).

    Autograd keeps the input of every GEMM block and fused unitary, both factors of every Diag
    product, and the state the readout squares; the backward pass holds two more states
    (a gradient in and one out) and the forward pass's last step one more.
    """
    cdtype = COMPLEX.get(dtype, dtype)
    itemsize = torch.empty((), dtype=cdtype).element_size()
    plan = compile_plan(program, 1 << max(0, int(batch) - 1).bit_length(), itemsize)
    kept = 1.0  # the state the readout squares
    fused = 0
    for step in plan.steps[plan.prefix :]:
        if step.kind == "kron":
            kept += len(step.blocks)
        elif step.kind == "diag":
            kept += 2
        elif step.kind == "fused":
            kept += 1
            fused = max(fused, (len(step.run) + 2) * state_bytes(2 * program.n_qubits, 1, dtype))
    return int((kept + 3) * state_bytes(program.n_qubits, batch, dtype) + fused)


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
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
